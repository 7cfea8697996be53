"""The verl backend on CPU: generated config against verl's own validation, the agent loop inside
verl's agent-loop worker (fake LLM server, real replay pool, verl's reward worker), the reward
function through verl's reward manager, the dry-run report, and the commands.

Everything that needs verl shares one module-scoped set-up: a tiny HF model directory (byte-level
BPE trained here, Qwen2 config) and params files in a temporary directory. The one test that
trains for real needs a GPU, vLLM and a local model (`ROUTEROPS_VERL_TEST_MODEL`).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from routerops.candidates.types import QuestionInfo
from routerops.config import Params, load_params
from routerops.pool import Pool
from routerops.prompt import build_messages
from routerops.protocol import render_observation
from routerops.training import verl_backend as vb

REPO = Path(__file__).resolve().parents[3]
Q = "Qwen2.5-7B-Instruct"
STEP = 3  # the global step the fake server reports, as verl's rollout servers do
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def _raw_params() -> dict[str, Any]:
    return yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))


def write_params(path: Path, *, alpha: float = 0.0, **verl: Any) -> Path:
    """The repo's params with train_router.verl updated and Router-R1's main cost weight (alpha 0:
    a valid correct answer scores exactly 1, whatever it cost); returns the file written."""
    raw = _raw_params()
    raw["rewards"]["alpha"] = alpha
    raw["train_router"]["verl"].update(verl)
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def with_verl(params: Params, **kw: Any) -> Params:
    """Params with train_router.verl fields replaced WITHOUT pydantic validation (to reach verl)."""
    tr = params.require("train_router")
    return params.model_copy(update={"train_router": tr.model_copy(update={"verl": tr.verl.model_copy(update=kw)})})


# ---------------------------------------------------------------------------------------------
# Pure helpers: no verl needed
# ---------------------------------------------------------------------------------------------


def test_importing_the_backend_does_not_import_verl() -> None:
    code = ("import sys, routerops.training.verl_backend as m; "
            "assert m.MODULE == 'routerops.training.verl_backend'; "
            "bad = [x for x in ('verl', 'ray', 'hydra', 'omegaconf', 'torch') if x in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)


@pytest.mark.parametrize(("value", "expected"), [
    (True, "true"), (None, "null"), (4, "4"), (1e-6, "1e-06"), (0.95, "0.95"),
    ("vllm", "vllm"), ("Qwen/Qwen2.5-3B-Instruct", "Qwen/Qwen2.5-3B-Instruct"),
    ("pkg://routerops.training.verl_backend", "pkg://routerops.training.verl_backend"),
    ("1", "'1'"), ("false", "'false'"), ("a b", "'a b'"), ("it's", "'it\\'s'"),
    (["console", "wandb"], "[console,wandb]"),
])
def test_hydra_values(value: Any, expected: str) -> None:
    assert vb.hydra_value(value) == expected


def test_overrides_are_generated_from_params(tmp_path: Path) -> None:
    params = load_params(write_params(tmp_path / "p.yaml", kl_coef=0.004, group_size=7, actor_lr=3.0e-6))
    ov = vb.build_overrides(params, dataset_dir=tmp_path / "ds", out_dir=tmp_path / "out",
                            checkpoint_dir=tmp_path / "ck", params_path=tmp_path / "p.yaml")
    d = dict(o.split("=", 1) for o in ov)
    assert d["algorithm.adv_estimator"] == "grpo" and d["actor_rollout_ref.actor.use_kl_loss"] == "true"
    assert d["actor_rollout_ref.actor.kl_loss_coef"] == "0.004" and d["actor_rollout_ref.rollout.n"] == "7"
    assert d["actor_rollout_ref.actor.optim.lr"] == "3e-06"
    assert d["data.max_prompt_length"] == str(params.rollout.max_prompt_tokens)
    assert d["data.train_files"] == str((tmp_path / "ds" / "train.parquet").resolve())
    assert d["actor_rollout_ref.rollout.agent.agent_loop_config_path"] == str((tmp_path / "out" / "agent_loop.yaml").resolve())
    assert d["trainer.default_local_dir"] == str((tmp_path / "ck").resolve()) and d["trainer.resume_mode"] == "auto"
    assert d["trainer.logger"] == "[console]"
    assert d["reward.custom_reward_function.path"] == "pkg://routerops.training.verl_backend"
    assert d["+reward.custom_reward_function.reward_kwargs.params_path"] == str((tmp_path / "p.yaml").resolve())
    ppo = dict(o.split("=", 1) for o in vb.build_overrides(
        with_verl(params, algorithm="ppo"), dataset_dir=tmp_path, out_dir=tmp_path, checkpoint_dir=tmp_path))
    assert ppo["algorithm.adv_estimator"] == "gae" and ppo["critic.enable"] == "true"
    assert ppo["algorithm.use_kl_in_reward"] == "true" and ppo["actor_rollout_ref.actor.use_kl_loss"] == "false"
    assert ppo["critic.optim.lr"] == "1e-05" and ppo["actor_rollout_ref.rollout.n"] == "1"


def test_launch_and_export_commands(tmp_path: Path) -> None:
    params = with_verl(load_params(REPO / "params.yaml"), ray_address=None)
    cmd = vb.launch_command(params, ["a=1"])
    assert cmd == ["python", "-m", "verl.trainer.main_ppo", "a=1"]
    cluster = vb.launch_command(with_verl(params, ray_address="http://head:8265"), ["a=1"])
    assert cluster[:5] == ["ray", "job", "submit", "--address", "http://head:8265"]
    assert cluster[cluster.index("--") + 1:] == cmd
    env = json.loads(cluster[cluster.index("--runtime-env-json") + 1])
    assert env["working_dir"] == str(REPO) and env["env_vars"]["WANDB_MODE"] == "disabled"
    assert env["env_vars"][vb.PARAMS_ENV] == str((REPO / "params.yaml").resolve())

    with pytest.raises(FileNotFoundError):
        vb.export_command(tmp_path, None, tmp_path / "hf")
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("50")
    assert vb.export_command(tmp_path, None, tmp_path / "hf") == [
        "python", "-m", "verl.model_merger", "merge", "--backend", "fsdp",
        "--local_dir", str(tmp_path / "global_step_50" / "actor"), "--target_dir", str(tmp_path / "hf")]
    assert vb.export_command(tmp_path, 25, "out")[7] == str(tmp_path / "global_step_25" / "actor")


def _call(model: str, tokens: int, ok: bool = True) -> dict[str, Any]:
    return {"model": model, "completion_tokens": tokens, "prompt_tokens": 20, "ok": ok}


VALID = (f"<think>ask</think><search>{Q}: capital of France?</search>\n\n<information>It is Paris."
         "</information>\n\n<think>ok</think><answer>Paris</answer>")


def test_cost_normalisers_are_separate_per_split(tmp_path: Path) -> None:
    raw = _raw_params()
    raw["rewards"].update(alpha=0.5, window=4)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    vb.reset_reward_state()
    kw = {"params_path": str(tmp_path / "p.yaml")}

    def score(split: str, tokens: int) -> dict[str, float]:
        extra = {"split": split, "route_calls": json.dumps([_call(Q, tokens)])}
        return vb.compute_score("nq", VALID, np.array(["Paris"], dtype=object), extra, **kw)

    for tokens in (10, 100, 1000, 10000):
        score("train", tokens)
    # The validation normaliser has seen nothing: a lone cost is degenerate (0.5), not ranked
    # against the training window, where the same cost is the cheapest seen.
    val = score("validation", 10)
    assert val["cost_norm"] == 0.5 and val["score"] == pytest.approx(0.75)
    assert score("train", 10)["cost_norm"] == 1.0
    state = vb._scorer(kw["params_path"], None).normalizers.state_dict()
    assert set(state) == {"train", "validation"} and len(state["validation"]["history"]) == 1
    vb.reset_reward_state()


def test_frozen_normaliser_freezes_after_its_window(tmp_path: Path) -> None:
    raw = _raw_params()
    raw["rewards"].update(alpha=1.0, window=3, normalizer="frozen")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    vb.reset_reward_state()
    kw = {"params_path": str(tmp_path / "p.yaml")}
    for tokens in (10, 100, 1000):
        vb.compute_score("nq", VALID, ["Paris"], {"split": "train", "route_calls": json.dumps([_call(Q, tokens)])}, **kw)
    frozen = vb._scorer(kw["params_path"], None).normalizers.get("train")
    assert frozen.mode == "frozen"
    vb.compute_score("nq", VALID, ["Paris"], {"split": "train", "route_calls": json.dumps([_call(Q, 10**6)])}, **kw)
    assert vb._scorer(kw["params_path"], None).normalizers.get("train") == frozen
    vb.reset_reward_state()


def test_reward_needs_the_agent_loops_fields() -> None:
    with pytest.raises(ValueError, match="route_calls"):
        vb.compute_score("nq", VALID, ["Paris"], {"split": "train"})


def test_cost_log_and_per_step_summary(tmp_path: Path) -> None:
    log = tmp_path / "costs.jsonl"
    vb.reset_reward_state()
    kw = {"params_path": str(write_params(tmp_path / "p.yaml")), "cost_log_path": str(log)}
    for step, tokens, text in [(1, 100, VALID), (1, 300, "<answer>Paris</answer>"), (2, 200, VALID)]:
        extra = {"split": "train", "global_step": step, "route_calls": json.dumps([_call(Q, tokens), _call("x", 0, False)])}
        vb.compute_score("nq", text, ["Paris"], extra, **kw)
    vb.compute_score("nq", VALID, ["Paris"], {"split": "validation", "global_step": 2,
                                             "route_calls": json.dumps([])}, **kw)
    with log.open("a") as fh:
        fh.write('{"split": "train", "step": 2, "score": \n')  # a half-written line of a live run
    summary = vb.summarize_training_costs(log)
    assert summary.skipped_lines == 1
    s1, s2 = summary.for_split("train")
    assert (s1.step, s1.trajectories, s2.step, s2.trajectories) == (1, 2, 2, 1)
    assert s1.reward_mean == pytest.approx(0.0) and s1.format_valid_share == 0.5  # 1 and -1
    assert s1.cost_usd_total == pytest.approx(400 * 0.30 / 1e6) and s1.calls_mean == 2.0
    assert s1.calls_per_model == {Q: 2, "x": 2} and s2.em_mean == 1.0
    (v,) = summary.for_split("validation")
    assert v.cost_usd_total == 0.0 and v.as_row()["split"] == "validation"
    assert vb.summarize_training_costs(tmp_path / "missing.jsonl").steps == ()


# ---------------------------------------------------------------------------------------------
# Shared verl set-up
# ---------------------------------------------------------------------------------------------


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
def small_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> vb.DryRun:
    """A validated dry run on one GPU with the tiny model (config for the in-process workers)."""
    d = tmp_path_factory.mktemp("small-run")
    params_file = write_params(d / "params.yaml", model_path=str(tiny_model), n_gpus_per_node=1, group_size=2,
                               train_batch_size=4, ppo_mini_batch_size=4, ppo_micro_batch_size_per_gpu=1)
    return vb.dry_run(load_params(params_file), out_dir=d / "out", params_path=params_file,
                      dataset_dir=d / "data", checkpoint_dir=d / "ckpt")


@pytest.fixture(scope="module")
def resolved_config(small_run: vb.DryRun) -> Any:
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(OmegaConf.to_container(small_run.config, resolve=True))  # as verl's TaskRunner
    return cfg


# ---------------------------------------------------------------------------------------------
# Config: compose with verl's own ppo_trainer and pass verl's validation
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_generated_overrides_compose_and_pass_verls_validation(tmp_path: Path, algorithm: str) -> None:
    params = load_params(write_params(tmp_path / "p.yaml", algorithm=algorithm))
    run = vb.dry_run(params, out_dir=tmp_path / "out", params_path=tmp_path / "p.yaml", dataset_dir=tmp_path)
    assert run.ok, run.error
    cfg = run.config
    v = params.require("train_router").verl
    assert cfg.algorithm.adv_estimator == ("grpo" if algorithm == "grpo" else "gae")
    assert cfg.actor_rollout_ref.rollout.n == (v.group_size if algorithm == "grpo" else 1)
    assert cfg.critic.enable is (algorithm == "ppo")
    assert cfg.actor_rollout_ref.actor.use_kl_loss is (algorithm == "grpo")
    assert cfg.actor_rollout_ref.rollout.prompt_length == params.rollout.max_prompt_tokens  # via verl's interpolation
    assert cfg.reward.custom_reward_function.reward_kwargs.params_path == str((tmp_path / "p.yaml").resolve())
    assert any(c.startswith("verl.utils.config.validate_config") for c in run.checked)
    assert f"critic={algorithm == 'ppo'}" in " ".join(run.checked)
    entries = yaml.safe_load((tmp_path / "out" / vb.AGENT_LOOP_FILE).read_text())
    assert entries == [{"name": "router_agent", "_target_": "routerops.training.verl_backend.RouterAgentLoop",
                        "params_path": str((tmp_path / "p.yaml").resolve()), "pool_path": str((REPO / "pool.yaml").resolve())}]


BAD_CASES = [
    # (params change that our pydantic model lets through or cannot see, extra overrides, verl's words)
    ({"train_batch_size": 64, "group_size": 5, "n_gpus_per_node": 3}, [],
     "real_train_batch_size (320) must be divisible by minimal possible batch size (3)"),
    ({"train_batch_size": 64, "ppo_mini_batch_size": 128}, [],
     "train_batch_size (64) must be >= actor.ppo_mini_batch_size (128)"),
    ({}, ["actor_rollout_ref.actor.loss_agg_mode=bogus"], "Invalid loss_agg_mode: bogus"),
    ({}, ["trainer.no_such_key=1"], "Could not override 'trainer.no_such_key'"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("change", "extra", "message"), BAD_CASES)
def test_bad_settings_fail_with_verls_message(tmp_path: Path, change: dict[str, Any], extra: list[str],
                                              message: str) -> None:
    params = with_verl(load_params(REPO / "params.yaml"), **change)  # no pydantic check: verl must catch it
    with pytest.raises(vb.VerlConfigError) as info:
        vb.dry_run(params, out_dir=tmp_path, dataset_dir=tmp_path, extra_overrides=extra)
    assert message in str(info.value)


# ---------------------------------------------------------------------------------------------
# The agent loop inside verl's agent-loop worker, with verl's reward worker
# ---------------------------------------------------------------------------------------------


class FakeServerManager:
    """Stands in for verl's LLMServerClient: scripted token ids per (episode, turn)."""

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


class LocalRewardHandle:
    """Stands in for a Ray actor handle of verl's RewardLoopWorker (`handle.compute_score.remote`)."""

    def __init__(self, worker: Any) -> None:
        outer = self

        class _Method:
            def remote(self, data: Any) -> Any:
                return outer.worker.compute_score(data)

        self.worker, self.compute_score = worker, _Method()


def _rows(questions: list[QuestionInfo], pool: Pool, params: Params) -> list[dict[str, Any]]:
    """Dataset rows in stages/build_dataset.py's schema; '#i' in the question tells the fake server the episode."""
    rows = []
    for i, q in enumerate(questions):
        messages = build_messages(f"#{i} {q.text}", pool, max_turns=params.rollout.max_turns)
        rows.append({"data_source": q.data_source, "raw_prompt": messages, "agent_name": "router_agent",
                     "reward_model": {"style": "rule", "ground_truth": np.array(q.golden_answers, dtype=object)},
                     "extra_info": {"index": i, "split": "train", "id": q.id, "agent_name": "router_agent",
                                    "question": q.text}, "index": i})
    return rows


@pytest.mark.slow
def test_agent_loop_runs_in_verls_worker_with_verls_reward_worker(resolved_config: Any, tokenizer: Any,
                                                                   small_run: vb.DryRun, pool: Pool) -> None:
    import torch
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker
    from verl.protocol import DataProto

    params_file = str(small_run.out_dir.parent / "params.yaml")
    params = load_params(params_file)
    runtime = vb._runtime(params_file, None)  # the same per-process runtime the agent loop uses
    replay = runtime.backends.replay
    assert replay is not None
    questions = [q for q in sorted(replay.matrix.questions.values(), key=lambda q: q.id) if q.data_source == "nq"][:3]
    questions = [QuestionInfo(q.id, q.text, "nq", q.golden_answers) for q in questions]
    sub_question = "who knows this?"

    def script(episode: int, turn: int) -> str:
        gold = questions[episode].golden_answers[0]
        if episode == 2:
            return f"<answer>{gold}</answer>"  # no <think>: invalid format, reward -1
        if turn == 0:  # text after the stop string must be cut by the episode loop
            return f"<think>I should ask.</think><search>{Q}: {sub_question}</search>more text"
        return f"<think>Got it.</think><answer>{gold if episode == 0 else 'certainly not this'}</answer>"

    server = FakeServerManager(tokenizer, script)
    rows = _rows(questions, pool, params)
    keys = ["data_source", "raw_prompt", "agent_name", "reward_model", "extra_info", "index"]
    non_tensors = {}
    for k in keys:
        arr = np.empty(len(rows), dtype=object)
        arr[:] = [r[k] for r in rows]
        non_tensors[k] = arr
    batch = DataProto.from_dict(tensors={"dummy_tensor": torch.zeros(len(rows), 1, dtype=torch.uint8)},
                                non_tensors=non_tensors, meta_info={"validate": False, "global_steps": STEP})

    async def main() -> Any:
        reward_worker = RewardLoopWorker(resolved_config)  # built on this loop, as in its own actor
        worker = AgentLoopWorker(resolved_config, server, None, [LocalRewardHandle(reward_worker)])
        return await worker.generate_sequences(batch)

    out = asyncio.run(main())
    nt, tb = out.non_tensor_batch, out.batch

    # What the replay pool charged for the one call of episodes 0 and 1.
    cand = pool.get(Q)
    tokens = [replay.completion_tokens(cand, q, sub_question) for q in questions[:2]]
    costs = [cand.cost_usd(t) for t in tokens]
    replies = [replay.reply_text(cand, q, replay.correct(cand, q)[0]) for q in questions[:2]]

    prompt_width = tb["prompts"].shape[1]
    for i in range(3):
        valid = tb["attention_mask"][i, prompt_width:].bool()
        resp, mask = tb["responses"][i][valid].tolist(), tb["response_mask"][i][valid].tolist()
        lps = tb["rollout_log_probs"][i][valid].tolist()
        if i == 2:
            assert mask == [1] * len(resp) and nt["num_calls"][i] == 0 and nt["route_cost_usd"][i] == 0.0
            continue
        obs = render_observation(replies[i], tokenizer, params.rollout.max_obs_tokens)
        turn1 = f"<think>I should ask.</think><search>{Q}: {sub_question}</search>"
        turn2 = f"<think>Got it.</think><answer>{script(i, 1).split('<answer>')[1]}"
        n1, n_obs = mask.index(0), mask.count(0)
        # policy | observation | policy, exactly: mask 1, then 0 for the information block, then 1
        assert mask == [1] * n1 + [0] * n_obs + [1] * (len(resp) - n1 - n_obs)
        assert tokenizer.decode(resp[:n1]) == turn1
        assert tokenizer.decode(resp[n1:n1 + n_obs]) == obs
        assert resp[n1:n1 + n_obs] == tokenizer.encode(obs, add_special_tokens=False)
        assert tokenizer.decode(resp[n1 + n_obs:]) == turn2
        assert all(lp == -0.25 for lp, m in zip(lps, mask, strict=True) if m) and not any(
            lp for lp, m in zip(lps, mask, strict=True) if not m)
        # extra fields: the cost and the calls the replay pool charged
        assert nt["route_cost_usd"][i] == pytest.approx(costs[i]) and nt["num_calls"][i] == 1
        assert json.loads(nt["calls_per_model"][i]) == {Q: 1}
        (call,) = json.loads(nt["route_calls"][i])
        assert (call["model"], call["completion_tokens"], call["ok"]) == (Q, tokens[i], True)
        assert nt["global_step"][i] == STEP and nt["max_global_steps"][i] == STEP
    assert list(nt["answer"]) == [questions[0].golden_answers[0], "certainly not this", questions[2].golden_answers[0]]

    # verl's reward worker scored them with our function: valid+correct 1, wrong 0, bad format -1
    assert tb["rm_scores"].sum(-1).tolist() == [1.0, 0.0, -1.0]
    assert {"score", "format", "em", "f1", "cost_usd", "cost_norm", "num_calls"} <= set(out.meta_info["reward_extra_keys"])
    assert list(nt["format"]) == [0.0, 0.0, -1.0] and list(nt["em"]) == [1.0, 0.0, 1.0]
    assert list(nt["cost_usd"]) == pytest.approx([*costs, 0.0])

    # the requests: stop strings kept in the output, per-turn budget, one request id per episode
    for _, _, sp in server.requests:
        assert sp["stop"] == ["</search>", "</answer>"] and sp["include_stop_str_in_output"] is True
        assert 1 <= sp["max_tokens"] <= params.rollout.max_tokens_per_turn and sp["logprobs"] is True
    assert sorted(server.turns.values()) == [0, 1, 1]
    first_prompt = server.requests[0][1]
    assert tokenizer.decode(first_prompt).startswith("<|user|>\n") and tokenizer.decode(first_prompt).endswith(
        "<|assistant|>\n")

    # the reward function's cost log, aggregated per step
    (step,) = vb.summarize_training_costs(small_run.out_dir.parent / "ckpt" / vb.COST_LOG_FILE).for_split("train")
    assert (step.step, step.trajectories, step.calls_per_model) == (STEP, 3, {Q: 2})
    assert step.cost_usd_total == pytest.approx(sum(costs))


@pytest.mark.slow
def test_reward_round_trips_through_verls_naive_reward_manager(resolved_config: Any, tokenizer: Any) -> None:
    import torch
    from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager
    from verl.protocol import DataProto
    from verl.trainer.ppo.reward import load_reward_manager

    calls = json.dumps([_call(Q, 100)])
    cases = [(VALID, calls, 1.0, 0.0, 1.0), ("<answer>Paris</answer>", "[]", -1.0, -1.0, 1.0),
             ("<think>hm</think><answer>London</answer>", "[]", 0.0, 0.0, 0.0)]

    async def score_all() -> list[dict[str, Any]]:
        manager = load_reward_manager(resolved_config, tokenizer)  # reads reward.custom_reward_function
        assert isinstance(manager, NaiveRewardManager)
        results = []
        for text, route_calls, *_ in cases:
            prompt = tokenizer.encode("<|user|>\nq\n<|assistant|>\n", add_special_tokens=False)
            resp = tokenizer.encode(text, add_special_tokens=False)
            pad = [tokenizer.pad_token_id] * 4  # right padding, as verl pads responses
            data = DataProto.from_dict(
                tensors={"prompts": torch.tensor([prompt]), "responses": torch.tensor([resp + pad]),
                         "attention_mask": torch.tensor([[1] * (len(prompt) + len(resp)) + [0] * 4])},
                non_tensors={"data_source": np.array(["nq"], dtype=object),
                             "reward_model": np.array([{"ground_truth": np.array(["Paris"], dtype=object)}]),
                             "extra_info": np.array([{"split": "validation", "index": 0}]),
                             "tool_extra_fields": np.array([{"route_calls": route_calls}])})
            results.append(await manager.run_single(data))
        return results

    results = asyncio.run(score_all())
    for (_, _, reward, fmt, em), res in zip(cases, results, strict=True):
        info = res["reward_extra_info"]
        assert res["reward_score"] == reward and info["score"] == reward
        assert (info["format"], info["em"]) == (fmt, em)
        assert set(vb.BREAKDOWN_KEYS) <= set(info)
    first = results[0]["reward_extra_info"]
    assert first["cost_usd"] == pytest.approx(100 * 0.30 / 1e6) and first["num_calls"] == 1.0


# ---------------------------------------------------------------------------------------------
# The dry-run report the CLI prints
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_dry_run_report_prints_the_command_and_lists_files(tmp_path: Path) -> None:
    code, text = vb.dry_run_report(write_params(tmp_path / "p.yaml", algorithm="grpo", ray_address=None), tmp_path)
    assert code == 0, text
    command_line = text.split("launch command")[1].splitlines()[1].strip()
    assert command_line.startswith("python -m verl.trainer.main_ppo ")
    assert (tmp_path / "launch.sh").read_text().rstrip().endswith(command_line)
    for name in (vb.AGENT_LOOP_FILE, vb.OVERRIDES_FILE, "launch.sh", "verl_config.yaml"):
        assert (tmp_path / name).is_file() and str(tmp_path / name) in text
    overrides = (tmp_path / vb.OVERRIDES_FILE).read_text().split()
    assert "algorithm.adv_estimator=grpo" in overrides and "trainer.resume_mode=auto" in overrides


@pytest.mark.slow
def test_dry_run_report_for_a_ray_cluster(tmp_path: Path) -> None:
    params_file = write_params(tmp_path / "p.yaml", ray_address="http://ray-head:8265")
    code, text = vb.dry_run_report(params_file, tmp_path / "out")
    assert code == 0, text
    assert "ray job submit --address http://ray-head:8265 --runtime-env-json " in text
    assert " -- python -m verl.trainer.main_ppo " in text
    assert "shared by all nodes" in text  # relative checkpoint_dir on a cluster is flagged


@pytest.mark.slow
def test_dry_run_report_fails_with_verls_message(tmp_path: Path) -> None:
    code, text = vb.dry_run_report(REPO / "params.yaml", tmp_path,
                                   extra_overrides=["actor_rollout_ref.rollout.log_prob_micro_batch_size=8"])
    assert code == 1
    assert "INVALID CONFIG" in text and "You have set both 'actor_rollout_ref.rollout.log_prob_micro_batch_size'" in text
    assert "python -m verl.trainer.main_ppo" in text and (tmp_path / vb.OVERRIDES_FILE).is_file()
    bad = write_params(tmp_path / "bad.yaml", n_gpus_per_node=3, train_batch_size=64, group_size=5)
    code, text = vb.dry_run_report(bad, tmp_path / "bad")
    assert code == 1 and "must be divisible by minimal possible batch size (3)" in text
    code, text = vb.dry_run_report(tmp_path / "missing.yaml", tmp_path / "m")
    assert code == 2 and "file not found" in text


# ---------------------------------------------------------------------------------------------
# A real two-step training: GPU, vLLM and a local model only
# ---------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_two_step_grpo_training_on_a_gpu(tmp_path: Path) -> None:
    import torch

    model = os.environ.get("ROUTEROPS_VERL_TEST_MODEL")
    if not model or not Path(model).is_dir():
        pytest.skip("set ROUTEROPS_VERL_TEST_MODEL to a local HF model directory (e.g. Qwen2.5-0.5B-Instruct)")
    pytest.importorskip("vllm")
    pytest.importorskip("transfer_queue")  # verl's default V1 trainer needs it (verl[verl-core])
    dataset = vb.default_dataset_dir(load_params(REPO / "params.yaml"))
    if not (dataset / "train.parquet").is_file():
        pytest.skip("build the dataset first (stages/build_dataset.py)")
    gpus = torch.cuda.device_count()
    params_file = write_params(tmp_path / "p.yaml", model_path=model, n_gpus_per_node=gpus, group_size=2,
                               train_batch_size=2 * gpus, ppo_mini_batch_size=2 * gpus, ppo_micro_batch_size_per_gpu=1,
                               total_training_steps=2, save_freq=2, test_freq=-1, max_response_length=1024,
                               gpu_memory_utilization=0.4)
    run = vb.dry_run(load_params(params_file), out_dir=tmp_path / "out", params_path=params_file,
                     checkpoint_dir=tmp_path / "ckpt",
                     extra_overrides=["data.val_max_samples=8", "reward.num_workers=1"])
    proc = subprocess.run(list(run.command), cwd=REPO, timeout=1700, capture_output=True, text=True,
                          env={**os.environ, **vb.TELEMETRY_ENV})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert vb.latest_checkpoint_step(tmp_path / "ckpt") == 2
    summary = vb.summarize_training_costs(tmp_path / "ckpt" / vb.COST_LOG_FILE)
    assert [s.step for s in summary.for_split("train")] == [1, 2]
