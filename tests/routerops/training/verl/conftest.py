"""Shared set-up of the verl package's tests, as fixtures (test modules never import each other).

Everything that needs verl shares one module-scoped set-up: a tiny HF model directory (byte-level
BPE trained here, Qwen2 config) and params files in a temporary directory. The one test that
trains for real needs a GPU, vLLM and a local model (`ROUTEROPS_VERL_TEST_MODEL`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from routerops.config import Params, load_params
from routerops.pool import Pool
from routerops.prompt import build_messages
from routerops.training.verl.launch import DryRun, dry_run

CANDIDATE = "Qwen2.5-7B-Instruct"
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def rl_dataset(root: Path) -> Path:
    """A dataset folder as the launch reads it (rl/train.parquet, rl/validation.parquet): two rows
    per split in the RL schema's columns a dry run reads (the cost calibration reads the training
    questions)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "rl").mkdir(parents=True, exist_ok=True)
    for split in ("train", "validation"):
        rows = [{"data_source": "nq", "reward_model": {"ground_truth": [answer]},
                 "extra_info": {"id": f"{split}-{i}", "question": question, "split": split}}
                for i, (question, answer) in enumerate((("capital of France?", "Paris"), ("Who wrote Hamlet?",
                                                                                           "Shakespeare")))]
        pq.write_table(pa.Table.from_pylist(rows), root / "rl" / f"{split}.parquet")
    return root


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return rl_dataset(tmp_path / "dataset")


@pytest.fixture(scope="session")
def candidate_name() -> str:
    """A candidate of the repository's pool (0.30 USD per million completion tokens)."""
    return CANDIDATE


@pytest.fixture(scope="session")
def valid_response() -> str:
    """A valid trajectory with one call to `candidate_name` and the answer "Paris"."""
    return (f"<think>ask</think><search>{CANDIDATE}: capital of France?</search>\n\n<information>It is Paris."
            "</information>\n\n<think>ok</think><answer>Paris</answer>")


@pytest.fixture(scope="session")
def route_call() -> Callable[..., dict[str, Any]]:
    """One executed call as the agent loop reports it in `route_calls`."""

    def call(model: str, tokens: int, ok: bool = True) -> dict[str, Any]:
        return {"model": model, "completion_tokens": tokens, "prompt_tokens": 20, "ok": ok}

    return call


@pytest.fixture
def raw_params(repo_root: Path) -> dict[str, Any]:
    """The repository's params.yaml as a fresh dict."""
    return yaml.safe_load((repo_root / "params.yaml").read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def write_params(repo_root: Path) -> Callable[..., Path]:
    def write(path: Path, *, alpha: float = 0.0, normalizer: str | None = None, **verl: Any) -> Path:
        """The repo's params with train_router.verl updated and Router-R1's main cost weight (alpha 0:
        a valid correct answer scores exactly 1, whatever it cost), and `normalizer` when given (a
        reward scored outside a launch has no calibration file: "sliding"); returns the file written."""
        raw = yaml.safe_load((repo_root / "params.yaml").read_text(encoding="utf-8"))
        raw["rewards"]["alpha"] = alpha
        if normalizer is not None:
            raw["rewards"]["normalizer"] = normalizer
        raw["train_router"]["verl"].update(verl)
        path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
        return path

    return write


@pytest.fixture(scope="session")
def with_verl() -> Callable[..., Params]:
    def replace(params: Params, **kw: Any) -> Params:
        """Params with train_router.verl fields replaced WITHOUT pydantic validation (to reach verl)."""
        tr = params.train_router
        return params.model_copy(update={"train_router": tr.model_copy(update={"verl": tr.verl.model_copy(update=kw)})})

    return replace


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, pool: Pool) -> Path:
    """A local HF model directory: byte-level BPE trained on our prompts + a tiny Qwen2 config."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config

    d = tmp_path_factory.mktemp("tiny-model")
    texts = [build_messages(q, pool)[0]["content"] for q in ("Who wrote Hamlet?", "capital of France?")]
    texts += ["<think></think><search></search><information></information><answer></answer>"] * 3
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=700, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    hf.chat_template = CHAT_TEMPLATE
    hf.save_pretrained(d)
    Qwen2Config(vocab_size=len(hf), hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=1,
                num_key_value_heads=1, architectures=["Qwen2ForCausalLM"]).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, write_params: Callable[..., Path]) -> DryRun:
    """A validated dry run on one GPU with the tiny model (config for the in-process workers)."""
    d = tmp_path_factory.mktemp("small-run")
    params_file = write_params(d / "params.yaml", model_path=str(tiny_model), n_gpus_per_node=1, group_size=2,
                               train_batch_size=4, ppo_mini_batch_size=4, ppo_micro_batch_size_per_gpu=1)
    return dry_run(load_params(params_file), out_dir=d / "out", params_path=params_file,
                   dataset_dir=rl_dataset(d / "data"), checkpoint_dir=d / "ckpt")


@pytest.fixture(scope="module")
def resolved_config(small_run: DryRun) -> Any:
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(OmegaConf.to_container(small_run.config, resolve=True))  # as verl's TaskRunner
    return cfg
