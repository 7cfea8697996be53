"""Shared set-up of the verl package's tests, as fixtures (test modules never import each other).

Everything that needs verl shares one module-scoped set-up: a tiny HF model directory (byte-level
BPE trained here, Qwen2 config) and params files in a temporary directory. The one test that
trains for real needs a GPU, vLLM and a local model (`ROUTEROPS_VERL_TEST_MODEL`).

The agent-loop tests (verl's legacy worker and its V1 TransferQueue worker) share one scripted
scenario, `router_episodes`: a fake LLM server (`FakeServerManager`), three episodes over the
real replay pool, and the checks every worker's output must pass (`RouterEpisodes.check`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from routerops.candidates.budget import LEDGER_FILE
from routerops.candidates.types import QuestionInfo
from routerops.config import Params, load_params
from routerops.pool import Pool
from routerops.prompt import build_messages
from routerops.protocol import render_observation
from routerops.training.verl.costs import COST_LOG_FILE, summarize_training_costs
from routerops.training.verl.launch import DryRun, dry_run
from routerops.training.verl.runtime import process_runtime

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


# ---- the agent-loop scenario shared by the legacy and the V1 (TransferQueue) worker tests ----

STEP = 3  # the global step of the batch, and the one the fake server reports (as verl's servers do)


class FakeServerManager:
    """Stands in for verl's LLMServerClient: scripted token ids per (episode, turn).

    Plain data only (a tokenizer and a picklable script), so it can travel to a Ray actor as
    verl's real client does; there, the test reads `requests`/`turns` back with `__ray_call__`.
    """

    def __init__(self, tokenizer: Any, script: Callable[[int, int], str]) -> None:
        self.tokenizer, self.script = tokenizer, script
        self.requests: list[tuple[str, list[int], dict[str, Any]]] = []
        self.turns: dict[str, int] = {}

    async def generate(self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any],
                       **kwargs: Any) -> Any:
        from verl.workers.rollout.replica import TokenOutput

        self.requests.append((request_id, list(prompt_ids), dict(sampling_params)))
        turn = self.turns[request_id] = self.turns.get(request_id, -1) + 1
        first_prompt = next(p for r, p, _ in self.requests if r == request_id)
        episode = int(self.tokenizer.decode(first_prompt).split("Question: #")[1].split(" ")[0])
        ids = self.tokenizer.encode(self.script(episode, turn), add_special_tokens=False)
        return TokenOutput(token_ids=ids, log_probs=[-0.25] * len(ids), stop_reason="completed",
                           extra_fields={"global_steps": STEP, "min_global_steps": STEP, "max_global_steps": STEP})


@dataclass(frozen=True)
class EpisodeScript:
    """What the fake policy writes: episode 0 asks `candidate` once and answers right, episode 1
    asks once and answers wrong, episode 2 answers at once without <think> (invalid format)."""

    golds: tuple[str, ...]
    candidate: str
    sub_question: str = "who knows this?"

    def __call__(self, episode: int, turn: int) -> str:
        gold = self.golds[episode]
        if episode == 2:
            return f"<answer>{gold}</answer>"  # no <think>: invalid format, reward -1
        if turn == 0:  # text after the stop string must be cut by the episode loop
            return f"<think>I should ask.</think><search>{self.candidate}: {self.sub_question}</search>more text"
        return f"<think>Got it.</think><answer>{gold if episode == 0 else 'certainly not this'}</answer>"


@dataclass
class EpisodeView:
    """One trajectory as a worker delivered it, in a layout-free form: the response's real tokens
    (no padding), the agent loop's extra fields, the reward function's extra info, the score."""

    episode: int
    response: list[int]
    mask: list[int]
    logprobs: list[float]
    extra: Mapping[str, Any]
    reward: Mapping[str, Any]
    score: float


@dataclass
class RouterEpisodes:
    """Three nq questions of the replay pool, the script the fake server follows, what the
    replay pool charges for the one call of episodes 0 and 1, and the checks."""

    params: Params
    tokenizer: Any
    pool: Pool
    questions: list[QuestionInfo]
    script: EpisodeScript
    tokens: list[int]
    costs: list[float]
    replies: list[str]
    cost_log: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    step: int = STEP  # the global step to give the batch (the fake server reports the same)

    def non_tensors(self, keys: Sequence[str] = ("data_source", "raw_prompt", "agent_name", "reward_model",
                                                  "extra_info", "index")) -> dict[str, np.ndarray]:
        """The rows' fields as numpy object arrays, as verl's dataloader (collate_fn) hands them over."""
        out = {}
        for k in keys:
            arr = np.empty(len(self.rows), dtype=object)
            arr[:] = [r[k] for r in self.rows]
            out[k] = arr
        return out

    def check(self, views: Sequence[EpisodeView], requests: Sequence[tuple[str, list[int], dict[str, Any]]],
              turns: Mapping[str, int], *, sessions: int = 1) -> None:
        """What every worker must deliver for the scripted episodes (`sessions` rollouts each)."""
        Q, tok, params = self.script.candidate, self.tokenizer, self.params
        by_episode: dict[int, list[EpisodeView]] = defaultdict(list)
        for v in views:
            by_episode[v.episode].append(v)
        assert sorted(by_episode) == [0, 1, 2] and all(len(vs) == sessions for vs in by_episode.values())
        for i, vs in sorted(by_episode.items()):
            for v in vs:
                resp, mask, lps, extra = v.response, v.mask, v.logprobs, v.extra
                assert len(mask) == len(resp) == len(lps)
                if i == 2:
                    assert mask == [1] * len(resp) and extra["num_calls"] == 0 and extra["route_cost_usd"] == 0.0
                else:
                    obs = render_observation(self.replies[i], tok, params.rollout.max_obs_tokens)
                    turn1 = f"<think>I should ask.</think><search>{Q}: {self.script.sub_question}</search>"
                    turn2 = f"<think>Got it.</think><answer>{self.script(i, 1).split('<answer>')[1]}"
                    n1, n_obs = mask.index(0), mask.count(0)
                    # policy | observation | policy, exactly: mask 1, then 0 for the information block, then 1
                    assert mask == [1] * n1 + [0] * n_obs + [1] * (len(resp) - n1 - n_obs)
                    assert tok.decode(resp[:n1]) == turn1
                    assert tok.decode(resp[n1:n1 + n_obs]) == obs
                    assert resp[n1:n1 + n_obs] == tok.encode(obs, add_special_tokens=False)
                    assert tok.decode(resp[n1 + n_obs:]) == turn2
                    assert all(lp == -0.25 for lp, m in zip(lps, mask, strict=True) if m) and not any(
                        lp for lp, m in zip(lps, mask, strict=True) if not m)
                    # extra fields: the cost and the calls the replay pool charged
                    assert extra["route_cost_usd"] == pytest.approx(self.costs[i]) and extra["num_calls"] == 1
                    assert json.loads(extra["calls_per_model"]) == {Q: 1}
                    (call,) = json.loads(extra["route_calls"])
                    assert (call["model"], call["completion_tokens"], call["ok"]) == (Q, self.tokens[i], True)
                    assert extra["global_step"] == STEP and extra["max_global_steps"] == STEP
                # verl's reward worker scored it with our function: valid+correct 1, wrong 0, bad format -1
                assert v.score == [1.0, 0.0, -1.0][i]
                assert {"score", "format", "em", "f1", "cost_usd", "cost_norm", "num_calls"} <= set(v.reward)
                assert (v.reward["format"], v.reward["em"]) == ([0.0, 0.0, -1.0][i], [1.0, 0.0, 1.0][i])
                assert v.reward["cost_usd"] == pytest.approx([*self.costs, 0.0][i])
                assert extra["answer"] == [self.script.golds[0], "certainly not this", self.script.golds[2]][i]

        # the requests: stop strings kept in the output, per-turn budget, one request id per episode
        for _, _, sp in requests:
            assert sp["stop"] == ["</search>", "</answer>"] and sp["include_stop_str_in_output"] is True
            assert 1 <= sp["max_tokens"] <= params.rollout.max_tokens_per_turn and sp["logprobs"] is True
        assert sorted(turns.values()) == sorted([0, 1, 1] * sessions)
        for rid in turns:
            first_prompt = tok.decode(next(p for r, p, _ in requests if r == rid))
            assert first_prompt.startswith("<|user|>\n") and first_prompt.endswith("<|assistant|>\n")

        # the reward function's cost log, aggregated per step
        (step,) = summarize_training_costs(self.cost_log).for_split("train")
        assert (step.step, step.trajectories, step.calls_per_model) == (STEP, 3 * sessions, {Q: 2 * sessions})
        assert step.cost_usd_total == pytest.approx(sessions * sum(self.costs))
        # every call was charged to the run's one ledger (the dry run named it in agent_loop.yaml),
        # shared by every agent-loop worker process of the run and read back by a resumed run
        ledger = json.loads((self.cost_log.parent / LEDGER_FILE).read_text())
        assert ledger["calls"] == 2 * sessions and ledger["spent_usd"] == pytest.approx(sessions * sum(self.costs))


@pytest.fixture(scope="module")
def router_episodes(small_run: DryRun, tokenizer: Any, pool: Pool, candidate_name: str) -> RouterEpisodes:
    """The scripted scenario over the small run's params and the real replay pool."""
    params_file = str(small_run.out_dir.parent / "params.yaml")
    params = load_params(params_file)
    replay = process_runtime(params_file, None).backends.replay  # the per-process runtime the agent loop uses
    assert replay is not None
    questions = [q for q in sorted(replay.matrix.questions.values(), key=lambda q: q.id) if q.data_source == "nq"][:3]
    questions = [QuestionInfo(q.id, q.text, "nq", q.golden_answers) for q in questions]
    script = EpisodeScript(tuple(q.golden_answers[0] for q in questions), candidate_name)
    cand = pool.get(candidate_name)
    tokens = [replay.completion_tokens(cand, q, script.sub_question) for q in questions[:2]]
    replies = [replay.reply_text(cand, q, replay.correct(cand, q)[0]) for q in questions[:2]]
    # Dataset rows in stages/build_dataset.py's schema; '#i' in the question tells the fake server the episode.
    rows = []
    for i, q in enumerate(questions):
        messages = build_messages(f"#{i} {q.text}", pool, max_turns=params.rollout.max_turns)
        rows.append({"data_source": q.data_source, "raw_prompt": messages, "agent_name": "router_agent",
                     "reward_model": {"style": "rule", "ground_truth": np.array(q.golden_answers, dtype=object)},
                     "extra_info": {"index": i, "split": "train", "id": q.id, "agent_name": "router_agent",
                                    "question": q.text}, "index": i})
    return RouterEpisodes(params, tokenizer, pool, questions, script, tokens, [cand.cost_usd(t) for t in tokens],
                          replies, small_run.out_dir.parent / "ckpt" / COST_LOG_FILE, rows)


@pytest.fixture
def fake_server(router_episodes: RouterEpisodes) -> FakeServerManager:
    """A fresh fake LLM server following the scenario's script."""
    return FakeServerManager(router_episodes.tokenizer, router_episodes.script)


@pytest.fixture(scope="session")
def episode_view() -> type[EpisodeView]:
    """The class a test builds its worker's trajectories into for `RouterEpisodes.check`."""
    return EpisodeView
