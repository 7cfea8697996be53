"""The verl agent loop: OUR multi-round episode loop inside verl's agent-loop workers.

`RouterAgentLoop` (registered as params `build_dataset.agent_name`, "router_agent") is a verl
agent loop that runs `routerops.rollout.run_episode` against verl's LLM server manager. Policy
tokens get response_mask 1, information blocks 0; the route's cost and calls travel in
`extra_fields`, which verl hands to the reward function inside `extra_info`.

`RouterAgentLoop` subclasses verl's `AgentLoopBase`, so it is built on first access through the
module `__getattr__` (PEP 562): importing this module never imports verl. Its settings come from
the agent-loop YAML entry (`agent_loop_entries`), see `routerops.training.verl.runtime`.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal

from routerops.candidates.budget import RequestBudget
from routerops.candidates.types import CallContext, CallResult, CandidateBackend, QuestionInfo
from routerops.pool import Candidate
from routerops.rollout import Generation, RolloutLimits, Trajectory, run_episode
from routerops.training.verl.runtime import process_runtime

__all__ = [
    "AGENT_LOOP_CLASS",
    "AGENT_LOOP_FILE",
    "MODULE",
    "ServerGenerator",
    "agent_loop_entries",
    "episode_limits",
    "golden_answers",
    "question_from_row",
    "route_extra_fields",
]

MODULE = __name__
AGENT_LOOP_CLASS = "RouterAgentLoop"
AGENT_LOOP_FILE = "agent_loop.yaml"


def episode_limits(limits: RolloutLimits, prompt_tokens: int, response_length: int) -> RolloutLimits:
    """The router's limits (`Params.router_limits()`), tightened so the response always fits
    verl's `rollout.response_length`.

    verl pads every response to `response_length` tokens and left-truncates prompts to
    `prompt_length`, so the episode's context is capped at prompt + response_length.
    """
    ctx = min(limits.max_context_tokens, prompt_tokens + max(1, response_length))
    return dataclasses.replace(limits, max_prompt_tokens=min(limits.max_prompt_tokens, ctx - 1), max_context_tokens=ctx)


# verl's rollout servers keep these TokenOutput.extra_fields; the staleness filter of the V1
# trainer reads min/max_global_steps, so a multi-turn loop must carry them (as verl's own
# ToolAgentLoop does: first turn's fields, then the latest max_global_steps).
_LATEST_FIELDS = ("max_global_steps",)


class ServerGenerator:
    """`routerops.rollout.TokenGenerator` over verl's `LLMServerClient.generate`.

    Each turn sends the whole context (prompt + response so far) with the episode's request id,
    so verl routes every turn of an episode to the same server (prefix-cache hits). Stop strings
    are kept in the output (vLLM `include_stop_str_in_output`, SGLang `no_stop_trim`) so that
    the closing `</search>` / `</answer>` is part of the policy's tokens; `run_episode` cuts at
    the first stop string anyway. Also records timing, preemptions, the engine's extra fields
    and whether every turn came with log-probs.
    """

    def __init__(self, server_manager: Any, sampling_params: Mapping[str, Any], *, request_id: str,
                 engine: str = "vllm", eos_token_id: int | None = None, priority: int = 0) -> None:
        self.server_manager = server_manager
        self.base = dict(sampling_params)
        self.request_id = request_id
        self.engine = engine
        self.eos_token_id = eos_token_id
        self.priority = priority
        self.seconds = 0.0
        self.calls = 0
        self.num_preempted = -1  # verl's convention: -1 means the engine did not report it
        self.logprobs_complete = True
        self.engine_fields: dict[str, Any] = {}

    def sampling_params(self, max_new_tokens: int, stop: Sequence[str]) -> dict[str, Any]:
        params = dict(self.base)
        params["max_tokens"] = int(max_new_tokens)  # both vLLM and SGLang servers accept it
        params["stop"] = list(stop)
        if self.engine == "sglang":
            params["no_stop_trim"] = True
        else:
            params["include_stop_str_in_output"] = True
        return params

    async def generate(self, prompt_ids: list[int], *, max_new_tokens: int, stop: Sequence[str]) -> Generation:
        t0 = time.perf_counter()
        kwargs: dict[str, Any] = {"priority": self.priority} if self.priority else {}
        out = await self.server_manager.generate(
            request_id=self.request_id, prompt_ids=list(prompt_ids),
            sampling_params=self.sampling_params(max_new_tokens, stop), **kwargs)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        ids = [int(i) for i in out.token_ids]
        lps = [float(x) for x in out.log_probs] if out.log_probs else None
        if ids and (lps is None or len(lps) != len(ids)):
            self.logprobs_complete = False
        preempted = getattr(out, "num_preempted", None)
        if preempted is not None:
            self.num_preempted = max(self.num_preempted, 0) + int(preempted)
        fields = dict(getattr(out, "extra_fields", None) or {})
        if not self.engine_fields:
            self.engine_fields = fields
        else:
            for k in _LATEST_FIELDS:
                if fields.get(k) is not None:
                    self.engine_fields[k] = fields[k]
        finish: Literal["stop", "length", "eos"]
        if getattr(out, "stop_reason", None) == "aborted":
            finish = "length"  # the engine gave up mid-turn; the episode ends as truncated
        elif ids and self.eos_token_id is not None and ids[-1] == self.eos_token_id:
            finish = "eos"
        elif len(ids) >= max_new_tokens:
            finish = "length"
        else:
            finish = "stop"
        return Generation(ids, lps if lps is not None and len(lps) == len(ids) else None, finish)


class _TimedBackend:
    """Wraps the candidate backend to measure wall time spent waiting for candidates."""

    def __init__(self, inner: CandidateBackend) -> None:
        self.inner = inner
        self.seconds = 0.0

    async def call(self, candidate: Candidate, query: str, context: CallContext | None = None) -> CallResult:
        t0 = time.perf_counter()
        try:
            return await self.inner.call(candidate, query, context)
        finally:
            self.seconds += time.perf_counter() - t0


def _plain(value: Any) -> Any:
    """numpy scalars/arrays (how verl hands dataset fields over) to plain Python values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def golden_answers(ground_truth: Any) -> tuple[str, ...]:
    """The row's gold aliases: a list (our datasets) or one string."""
    gt = _plain(ground_truth)
    if gt is None:
        return ()
    if isinstance(gt, str):
        return (gt,)
    return tuple(str(g) for g in gt)


def question_from_row(kwargs: Mapping[str, Any]) -> QuestionInfo:
    """The episode's question from a verl dataset row (stages/build_dataset.py's schema)."""
    extra = _plain(kwargs.get("extra_info")) or {}
    text = extra.get("question")
    if not text:
        raise ValueError(f"dataset row {extra.get('id', '?')}: extra_info.question is missing; "
                         "rebuild the dataset with stages/build_dataset.py")
    reward_model = _plain(kwargs.get("reward_model")) or {}
    return QuestionInfo(id=str(extra.get("id", extra.get("index", ""))), text=str(text),
                        data_source=str(_plain(kwargs.get("data_source")) or "unknown"),
                        golden_answers=golden_answers(reward_model.get("ground_truth")))


def route_extra_fields(traj: Trajectory) -> dict[str, Any]:
    """What a trajectory hands the reward function and the rollout dumps, as plain values.

    Call lists are JSON strings: verl moves extra fields through numpy object arrays and (in
    the V1 trainer) TransferQueue, where nested lists of dicts are not reliably preserved.
    `answer` is "" when the policy wrote none.
    """
    calls = [{"model": c.model, "completion_tokens": c.completion_tokens, "prompt_tokens": c.prompt_tokens,
              "ok": c.ok, "cost_usd": c.cost_usd, "origin": c.origin} for c in traj.calls]
    per_model = Counter(c.model for c in traj.calls)
    return {
        "route_cost_usd": float(traj.cost_usd),
        "num_calls": len(traj.calls),
        "num_calls_ok": sum(1 for c in traj.calls if c.ok),
        "calls_per_model": json.dumps(dict(sorted(per_model.items()))),
        "route_calls": json.dumps(calls),
        "answer": traj.answer or "",
        "stop_reason": traj.stop_reason,
        "policy_turns": traj.turns,
    }


class _RouterAgentLoopImpl:
    """The body of `RouterAgentLoop`; combined with verl's `AgentLoopBase` on first use.

    verl instantiates the loop per trajectory with `hydra.utils.instantiate(entry, ...)`, where
    `entry` is our agent-loop YAML entry, so its extra keys (`params_path`, `pool_path`,
    `ledger_path`) arrive here as keyword arguments, next to verl's own (trainer_config,
    server_manager, tokenizer...).
    """

    # Provided by verl's AgentLoopBase (annotations only: no attribute may shadow the base's).
    rollout_config: Any
    server_manager: Any
    tokenizer: Any
    ct_build_initial_tokens: Callable[..., Awaitable[list[int]]]

    def __init__(self, *args: Any, params_path: str | None = None, pool_path: str | None = None,
                 ledger_path: str | None = None, name: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.agent_name = name
        self.runtime = process_runtime(params_path, pool_path, ledger_path)

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> Any:
        from verl.experimental.agent_loop.agent_loop import AgentLoopMetrics, AgentLoopOutput

        rt = self.runtime
        question = question_from_row(kwargs)
        # verl's tokenisation path (chat template + its kwargs), capped at rollout.prompt_length.
        prompt_ids = list(await self.ct_build_initial_tokens(list(_plain(kwargs["raw_prompt"]))))
        response_length = int(self.rollout_config.response_length)
        limits = episode_limits(rt.params.router_limits(), len(prompt_ids), response_length)
        priority = int(_plain(kwargs.get("priority", 0)) or 0)
        deterministic = bool(getattr(self.rollout_config, "full_determinism", False))
        generator = ServerGenerator(
            self.server_manager, sampling_params, request_id=f"det-{priority}" if deterministic else uuid.uuid4().hex,
            engine=str(self.rollout_config.name), eos_token_id=self.tokenizer.eos_token_id, priority=priority)
        backend = _TimedBackend(rt.backends.backend)
        budget = RequestBudget(rt.params.candidates.request_budget_usd, rt.backends.run_budget)
        traj = await run_episode(question, prompt_ids, generator=generator, tokenizer=self.tokenizer, pool=rt.pool,
                                 backend=backend, limits=limits, budget=budget)

        n = response_length
        extra: dict[str, Any] = dict(generator.engine_fields)
        extra.update(route_extra_fields(traj))
        step = _plain(kwargs.get("global_steps", extra.get("max_global_steps")))
        extra["global_step"] = int(step) if step is not None else -1
        # verl's own loops always carry these two keys; keep the batch schema uniform.
        extra.update({"turn_scores": [], "tool_rewards": []})
        observations = sum(1 for s in traj.segments if s.kind == "observation")
        return AgentLoopOutput(
            prompt_ids=traj.prompt_ids,
            response_ids=traj.response_ids[:n],
            response_mask=traj.loss_mask[:n],
            response_logprobs=traj.logprobs[:n] if generator.logprobs_complete and generator.calls else None,
            num_turns=1 + traj.turns + observations,  # user prompt + policy turns + information blocks
            metrics=AgentLoopMetrics(generate_sequences=generator.seconds, tool_calls=backend.seconds,
                                     num_preempted=generator.num_preempted),
            extra_fields=extra,
        )


_AGENT_LOOP_CLASS: type | None = None


def _build_agent_loop_class() -> type:
    """Create `RouterAgentLoop(AgentLoopBase)` and register it in verl's in-process registry."""
    global _AGENT_LOOP_CLASS
    if _AGENT_LOOP_CLASS is None:
        from verl.experimental.agent_loop.agent_loop import AgentLoopBase, _agent_loop_registry, register

        cls = type(AGENT_LOOP_CLASS, (_RouterAgentLoopImpl, AgentLoopBase), {
            "__module__": MODULE, "__qualname__": AGENT_LOOP_CLASS,
            "__doc__": "verl agent loop running routerops' multi-round routing episode (see module docs).",
        })
        # In-process registration (tests, single-process use) only where verl's worker has not
        # registered it from agent_loop.yaml: hydra builds this class while instantiating the
        # worker's first entry, and overwriting that entry here would drop its params, pool and
        # ledger paths for every later trajectory of the process.
        if "router_agent" not in _agent_loop_registry:
            register("router_agent")(cls)
        _AGENT_LOOP_CLASS = cls
    return _AGENT_LOOP_CLASS


def __getattr__(name: str) -> Any:
    # PEP 562: `RouterAgentLoop` subclasses a verl class, so it is only built when asked for
    # (by hydra's `_target_` lookup inside verl's workers, or by tests).
    if name == AGENT_LOOP_CLASS:
        return _build_agent_loop_class()
    raise AttributeError(f"module {MODULE!r} has no attribute {name!r}")


def agent_loop_entries(agent_name: str, *, params_path: str | None = None, pool_path: str | None = None,
                       ledger_path: str | None = None) -> list[dict[str, str]]:
    """The agent-loop YAML verl reads from `rollout.agent.agent_loop_config_path`."""
    entry = {"name": agent_name, "_target_": f"{MODULE}.{AGENT_LOOP_CLASS}"}
    for key, value in (("params_path", params_path), ("pool_path", pool_path), ("ledger_path", ledger_path)):
        if value:
            entry[key] = str(value)
    return [entry]
