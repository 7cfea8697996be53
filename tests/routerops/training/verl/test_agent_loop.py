"""The agent loop inside verl's agent-loop worker (fake LLM server, real replay pool), scored by
verl's reward worker with our reward function."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from routerops.candidates.types import QuestionInfo
from routerops.config import Params, load_params
from routerops.pool import Pool
from routerops.prompt import build_messages
from routerops.protocol import render_observation
from routerops.training.verl.costs import COST_LOG_FILE, summarize_training_costs
from routerops.training.verl.launch import DryRun
from routerops.training.verl.runtime import process_runtime

STEP = 3  # the global step the fake server reports, as verl's rollout servers do


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
                                                                   small_run: DryRun, pool: Pool,
                                                                   candidate_name: str) -> None:
    import torch
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker
    from verl.protocol import DataProto

    Q = candidate_name
    params_file = str(small_run.out_dir.parent / "params.yaml")
    params = load_params(params_file)
    runtime = process_runtime(params_file, None)  # the same per-process runtime the agent loop uses
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
    (step,) = summarize_training_costs(small_run.out_dir.parent / "ckpt" / COST_LOG_FILE).for_split("train")
    assert (step.step, step.trajectories, step.calls_per_model) == (STEP, 3, {Q: 2})
    assert step.cost_usd_total == pytest.approx(sum(costs))
    # every call was charged to the run's one ledger (the dry run named it in agent_loop.yaml),
    # which every agent-loop worker process of the run shares and a resumed run reads back
    ledger = json.loads((small_run.out_dir.parent / "ckpt" / "run_budget.json").read_text())
    assert ledger["calls"] == 2 and ledger["spent_usd"] == pytest.approx(sum(costs)), ledger
