"""The verl training backend: GPU training of the router with verl 0.9.1 and vLLM/SGLang rollouts.

This is the only module of the project that imports verl, and it does so lazily (inside
functions, and through a module `__getattr__` for the agent-loop class), so importing it, or any
other routerops module, never pulls verl, ray or torch's CUDA stack in.

What it provides
----------------
* `RouterAgentLoop` (registered as params `build_dataset.agent_name`, "router_agent"): a verl
  agent loop that runs OUR episode loop (`routerops.rollout.run_episode`) against verl's LLM
  server manager. Policy tokens get response_mask 1, information blocks 0; the route's cost and
  calls travel in `extra_fields`, which verl hands to the reward function inside `extra_info`.
* `compute_score`: the reward function for `reward.custom_reward_function.{path,name}`. It scores
  with `routerops.rewards` and returns "score" plus the breakdown (acc = em, format, em, f1,
  cost_usd, cost_norm, num_calls), which verl reports per data source in validation metrics. It also
  appends one JSON line per scored trajectory to a cost log (`summarize_training_costs` reads it
  back per step), because verl aggregates no extra fields during training.
* `build_overrides`, `compose_config`, `validate`: Hydra overrides generated from the typed
  params, composed with verl's own `ppo_trainer` config and checked with verl's own validation,
  all on CPU; `launch_command`, `export_command`, `dry_run` and `dry_run_report` for the CLI.

Where the agent loop and the reward function get their settings
---------------------------------------------------------------
Both run in Ray worker processes started by verl. They read our params from, in order: the
`params_path` keyword (written by `dry_run` into the agent-loop YAML and into
`reward.custom_reward_function.reward_kwargs`), else the file named by `$ROUTEROPS_PARAMS`, else
the repository's params.yaml. The pool file works the same way (`pool_path`, `$ROUTEROPS_POOL`,
pool.yaml); the replay data directory is `$ROUTEROPS_SHARED_DATA` or ../shared/data.

Cost normalisation
------------------
verl calls the reward function once per trajectory, in several reward-worker processes
(`reward.num_workers`). Each process keeps one normaliser per data split (`extra_info.split`:
train, validation, test), so validation costs never move the training normaliser and the other
way round. `sliding` is Router-R1's window of recent costs, updated one trajectory at a time (the
original updates per batch); `frozen` behaves as `sliding` until the window holds `window`
costs of that split and then freezes its p5/p95 bounds for the rest of the process. Normaliser
state lives in the process (it is not in verl's checkpoints), so a resumed run starts a fresh
window; with Router-R1's main setting (alpha = 0) cost never enters the reward at all.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shlex
import sys
import threading
import time
import uuid
import warnings
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import yaml

from routerops.candidates.budget import RequestBudget
from routerops.candidates.types import CallContext, CallResult, CandidateBackend, QuestionInfo
from routerops.config import Params, RolloutParams, load_params
from routerops.paths import REPO_ROOT, default_pool_file
from routerops.pool import Candidate, Pool, load_pool
from routerops.rewards import (
    CallUsage,
    CostNormalizer,
    FrozenBoundsNormalizer,
    RewardBreakdown,
    ScoreItem,
    SlidingWindowNormalizer,
    score_batch,
)
from routerops.rollout import Generation, RolloutLimits, Trajectory, run_episode

if TYPE_CHECKING:  # only for annotations: importing omegaconf at runtime is left to the functions
    from omegaconf import DictConfig

    from routerops.runtime import Backends

__all__ = [
    "AGENT_LOOP_FILE",
    "COST_LOG_FILE",
    "MODULE",
    "OVERRIDES_FILE",
    "PARAMS_ENV",
    "REWARD_FN_NAME",
    "CostSummary",
    "DryRun",
    "ServerGenerator",
    "StepCosts",
    "VerlConfigError",
    "agent_loop_entries",
    "build_overrides",
    "compose_config",
    "compute_score",
    "dry_run",
    "dry_run_report",
    "export_command",
    "grpo_advantages",
    "kl_loss",
    "launch_command",
    "policy_loss",
    "route_extra_fields",
    "summarize_training_costs",
    "validate",
]

MODULE = "routerops.training.verl_backend"
REWARD_FN_NAME = "compute_score"
AGENT_LOOP_CLASS = "RouterAgentLoop"
PARAMS_ENV = "ROUTEROPS_PARAMS"
POOL_ENV = "ROUTEROPS_POOL"
AGENT_LOOP_FILE = "agent_loop.yaml"
OVERRIDES_FILE = "overrides.txt"
CONFIG_FILE = "verl_config.yaml"
LAUNCH_FILE = "launch.sh"
COST_LOG_FILE = "route_costs.jsonl"
# Telemetry off in every process verl starts (Ray usage stats, wandb, vLLM usage reports).
TELEMETRY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "WANDB_MODE": "disabled", "DO_NOT_TRACK": "1",
                 "VLLM_NO_USAGE_STATS": "1", "TOKENIZERS_PARALLELISM": "false"}


class VerlConfigError(ValueError):
    """verl (or Hydra) rejected the generated configuration; the message is theirs."""


# ---------------------------------------------------------------------------------------------
# Per-process runtime: params, pool and candidate backend, shared by every episode of a worker
# ---------------------------------------------------------------------------------------------


def resolve_params_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """`explicit`, else `$ROUTEROPS_PARAMS`, else the repository's params.yaml."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(PARAMS_ENV)
    return Path(env) if env else REPO_ROOT / "params.yaml"


def resolve_pool_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """`explicit`, else `$ROUTEROPS_POOL`, else the repository's pool.yaml."""
    return Path(explicit) if explicit else default_pool_file()


@dataclass
class _Runtime:
    params: Params
    pool: Pool
    backends: Backends


_T = TypeVar("_T")
_RUNTIMES: dict[tuple[str, str], _Runtime] = {}
_RUNTIME_LOCK = threading.Lock()


def _per_process(cache: dict[tuple[str, str], _T], lock: threading.Lock, params_path: str | None,
                 pool_path: str | None, build: Callable[[Params, Pool], _T]) -> _T:
    """Build once per (params file, pool file) pair and process, then reuse."""
    pp, pl = resolve_params_path(params_path).resolve(), resolve_pool_path(pool_path).resolve()
    key = (str(pp), str(pl))
    with lock:
        if key not in cache:
            cache[key] = build(load_params(pp), load_pool(pl))
        return cache[key]


def _runtime(params_path: str | None, pool_path: str | None) -> _Runtime:
    """One runtime per (params, pool) file pair and process.

    verl instantiates an agent loop per trajectory; loading the quality matrix (~8 MB of JSON)
    or opening an HTTP client per trajectory would dominate rollout time, so they are built once.
    """
    from routerops.runtime import build_backend

    def build(params: Params, pool: Pool) -> _Runtime:
        backends = build_backend(params.candidates, include_prompt_cost=params.rewards.include_prompt_cost)
        return _Runtime(params, pool, backends)

    return _per_process(_RUNTIMES, _RUNTIME_LOCK, params_path, pool_path, build)


def episode_limits(rollout: RolloutParams, prompt_tokens: int, response_length: int) -> RolloutLimits:
    """Our limits, tightened so the response always fits verl's `rollout.response_length`.

    verl pads every response to `response_length` tokens and left-truncates prompts to
    `prompt_length`, so the episode's context is capped at prompt + response_length.
    """
    ctx = min(rollout.max_context_tokens, prompt_tokens + max(1, response_length))
    return RolloutLimits(rollout.max_turns, rollout.max_tokens_per_turn, rollout.max_obs_tokens,
                         min(rollout.max_prompt_tokens, ctx - 1), ctx)


# ---------------------------------------------------------------------------------------------
# TokenGenerator over verl's LLM server manager
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# The agent loop
# ---------------------------------------------------------------------------------------------


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
    `entry` is our agent-loop YAML entry, so its extra keys (`params_path`, `pool_path`) arrive
    here as keyword arguments, next to verl's own (trainer_config, server_manager, tokenizer...).
    """

    # Provided by verl's AgentLoopBase (annotations only: no attribute may shadow the base's).
    rollout_config: Any
    server_manager: Any
    tokenizer: Any
    ct_build_initial_tokens: Callable[..., Awaitable[list[int]]]

    def __init__(self, *args: Any, params_path: str | None = None, pool_path: str | None = None,
                 name: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        self.agent_name = name
        self.runtime = _runtime(params_path, pool_path)

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> Any:
        from verl.experimental.agent_loop.agent_loop import AgentLoopMetrics, AgentLoopOutput

        rt = self.runtime
        question = question_from_row(kwargs)
        # verl's tokenisation path (chat template + its kwargs), capped at rollout.prompt_length.
        prompt_ids = list(await self.ct_build_initial_tokens(list(_plain(kwargs["raw_prompt"]))))
        response_length = int(self.rollout_config.response_length)
        limits = episode_limits(rt.params.rollout, len(prompt_ids), response_length)
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
        from verl.experimental.agent_loop.agent_loop import AgentLoopBase, register

        cls = type(AGENT_LOOP_CLASS, (_RouterAgentLoopImpl, AgentLoopBase), {
            "__module__": MODULE, "__qualname__": AGENT_LOOP_CLASS,
            "__doc__": "verl agent loop running routerops' multi-round routing episode (see module docs).",
        })
        # In-process registration (tests, single-process use); verl's workers register it from
        # agent_loop.yaml under the dataset's agent name instead.
        register("router_agent")(cls)
        _AGENT_LOOP_CLASS = cls
    return _AGENT_LOOP_CLASS


def __getattr__(name: str) -> Any:
    # PEP 562: `RouterAgentLoop` subclasses a verl class, so it is only built when asked for
    # (by hydra's `_target_` lookup inside verl's workers, or by tests).
    if name == AGENT_LOOP_CLASS:
        return _build_agent_loop_class()
    raise AttributeError(f"module {MODULE!r} has no attribute {name!r}")


def agent_loop_entries(agent_name: str, *, params_path: str | None = None,
                       pool_path: str | None = None) -> list[dict[str, str]]:
    """The agent-loop YAML verl reads from `rollout.agent.agent_loop_config_path`."""
    entry = {"name": agent_name, "_target_": f"{MODULE}.{AGENT_LOOP_CLASS}"}
    if params_path:
        entry["params_path"] = str(params_path)
    if pool_path:
        entry["pool_path"] = str(pool_path)
    return [entry]


# ---------------------------------------------------------------------------------------------
# Reward function
# ---------------------------------------------------------------------------------------------

BREAKDOWN_KEYS = ("acc", "format", "em", "f1", "cost_usd", "cost_norm", "num_calls")


class SplitNormalizers:
    """One cost normaliser per data split, owned explicitly (see the module docstring)."""

    def __init__(self, mode: str, window: int) -> None:
        self.mode, self.window = mode, window
        self._by_split: dict[str, CostNormalizer] = {}
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()  # verl scores in executor threads

    def get(self, split: str) -> CostNormalizer:
        return self._by_split.get(split) or SlidingWindowNormalizer(self.window)

    def score(self, split: str, items: Sequence[ScoreItem], pool: Pool, alpha: float, outcome: Literal["em", "f1"],
              include_prompt: bool) -> list[RewardBreakdown]:
        with self._lock:
            out, nxt = score_batch(items, pool, alpha, self.get(split), outcome, include_prompt)
            self._seen[split] += len(items)
            if (self.mode == "frozen" and isinstance(nxt, SlidingWindowNormalizer)
                    and self._seen[split] >= self.window):
                nxt = FrozenBoundsNormalizer.calibrate([x * x for x in nxt.history])  # history holds sqrt(cost)
            self._by_split[split] = nxt
            return out

    def state_dict(self) -> dict[str, Any]:
        with self._lock:
            return {s: n.state_dict() for s, n in self._by_split.items()}


@dataclass
class _Scorer:
    params: Params
    pool: Pool
    normalizers: SplitNormalizers


_SCORERS: dict[tuple[str, str], _Scorer] = {}
_SCORER_LOCK = threading.Lock()


def _scorer(params_path: str | None, pool_path: str | None) -> _Scorer:
    return _per_process(_SCORERS, _SCORER_LOCK, params_path, pool_path, lambda params, pool: _Scorer(
        params, pool, SplitNormalizers(params.rewards.normalizer, params.rewards.window)))


def reset_reward_state() -> None:
    """Forget every cached scorer (and so every normaliser) of this process; for tests."""
    with _SCORER_LOCK:
        _SCORERS.clear()


def _calls_from(extra: Mapping[str, Any]) -> list[dict[str, Any]]:
    raw = extra.get("route_calls")
    if raw is None:
        raise ValueError(
            "extra_info has no 'route_calls': the response was not produced by the router agent loop "
            "(dataset rows must carry agent_name 'router_agent') or verl did not pass the agent loop's "
            "extra fields to the reward (they arrive only with streaming, rule-based rewards)")
    calls = json.loads(raw) if isinstance(raw, str) else list(raw)
    return [dict(c) for c in calls]


def _append_jsonl(path: str, record: Mapping[str, Any]) -> None:
    """One `write` on an O_APPEND descriptor: lines from concurrent reward workers never interleave."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
    fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: Mapping[str, Any] | None = None,
                  *, params_path: str | None = None, pool_path: str | None = None,
                  cost_log_path: str | None = None, **_: Any) -> dict[str, float]:
    """verl's custom reward function: Router-R1's format -> outcome -> cost hierarchy.

    verl 0.9.1's reward manager calls it with data_source, solution_str (the response decoded
    with special tokens skipped), ground_truth (`reward_model.ground_truth`) and extra_info (the
    row's extra_info updated with the agent loop's extra fields), plus the keyword arguments in
    `reward.custom_reward_function.reward_kwargs`. Every value returned becomes a per-sample
    metric, so only numbers are returned; the answer and the calls go to the cost log.
    """
    extra = dict(extra_info or {})
    scorer = _scorer(params_path, pool_path)
    rewards = scorer.params.rewards
    calls = _calls_from(extra)
    usages = [CallUsage(str(c["model"]), int(c["completion_tokens"]), int(c.get("prompt_tokens", 0)))
              for c in calls if c.get("ok")]
    split = str(extra.get("split") or "train")
    item = ScoreItem(solution_str, golden_answers(ground_truth), usages)
    (b,) = scorer.normalizers.score(split, [item], scorer.pool, rewards.alpha, rewards.outcome,
                                    rewards.include_prompt_cost)
    # "acc" is the key verl's validation treats as the core metric (val-core/<source>/acc/mean@N):
    # exact match, Router-R1's headline number; the reward itself stays under "score".
    result = {"score": float(b.reward), "acc": float(b.em), "format": float(b.format), "em": float(b.em),
              "f1": float(b.f1), "cost_usd": float(b.cost_usd), "cost_norm": float(b.cost_norm),
              "num_calls": float(len(calls))}
    if cost_log_path:
        step = _plain(extra.get("global_step", -1))
        _append_jsonl(cost_log_path, {
            "t": round(time.time(), 3), "pid": os.getpid(), "split": split,
            "step": int(step) if step is not None else -1, "index": _plain(extra.get("index")),
            "id": extra.get("id"), "data_source": str(_plain(data_source)), **result,
            "route_cost_usd": float(extra.get("route_cost_usd", b.cost_usd)),
            "calls_per_model": dict(Counter(str(c["model"]) for c in calls)), "answer": b.answer,
            "violations": [v.value for v in b.violations], "stop_reason": extra.get("stop_reason"),
        })
    return result


# ---------------------------------------------------------------------------------------------
# Training cost metrics from the cost log
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepCosts:
    split: str
    step: int
    trajectories: int
    reward_mean: float
    em_mean: float
    f1_mean: float
    format_valid_share: float
    cost_usd_mean: float
    cost_usd_total: float
    calls_mean: float
    calls_per_model: dict[str, int]

    def as_row(self) -> dict[str, Any]:
        row = {k: getattr(self, k) for k in ("split", "step", "trajectories", "reward_mean", "em_mean", "f1_mean",
                                             "format_valid_share", "cost_usd_mean", "cost_usd_total", "calls_mean")}
        row.update({f"calls_{m}": n for m, n in sorted(self.calls_per_model.items())})
        return row


@dataclass(frozen=True)
class CostSummary:
    steps: tuple[StepCosts, ...]
    skipped_lines: int = 0  # unreadable lines, e.g. a half-written last line of a live run

    def for_split(self, split: str) -> list[StepCosts]:
        return [s for s in self.steps if s.split == split]


def summarize_training_costs(path: str | os.PathLike[str]) -> CostSummary:
    """Aggregate the reward function's cost log per (split, step).

    Training steps are verl's global step; validation lines carry the step whose weights were
    validated. A run resumed from a checkpoint re-scores the steps after that checkpoint, and
    those steps then count the trajectories of both attempts.
    """
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    skipped = 0
    p = Path(path)
    if p.exists():
        with p.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    key = (str(rec["split"]), int(rec["step"]))
                    float(rec["score"]), float(rec["cost_usd"])
                except (ValueError, KeyError, TypeError):
                    skipped += 1
                    continue
                groups[key].append(rec)

    def mean(rs: list[dict[str, Any]], k: str) -> float:
        return sum(float(r.get(k, 0.0)) for r in rs) / len(rs)

    steps = []
    for (split, step), rs in sorted(groups.items()):
        per_model: Counter[str] = Counter()
        for r in rs:
            per_model.update({str(m): int(n) for m, n in (r.get("calls_per_model") or {}).items()})
        steps.append(StepCosts(
            split, step, len(rs), mean(rs, "score"), mean(rs, "em"), mean(rs, "f1"),
            sum(1 for r in rs if float(r.get("format", -1.0)) == 0.0) / len(rs),
            mean(rs, "cost_usd"), sum(float(r["cost_usd"]) for r in rs), mean(rs, "num_calls"), dict(per_model)))
    return CostSummary(tuple(steps), skipped)


# ---------------------------------------------------------------------------------------------
# Hydra overrides from the typed params
# ---------------------------------------------------------------------------------------------

_BARE = re.compile(r"^[A-Za-z_/.][A-Za-z0-9_.\-/:@]*$")  # what Hydra parses as a plain string
_RESERVED = {"true", "false", "null", "none", "nan", "inf"}


def hydra_value(value: Any) -> str:
    """Format a Python value as a Hydra override value (strings quoted unless plainly safe)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot pass {value} to Hydra")
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    s = str(value)
    if _BARE.match(s) and s.lower() not in _RESERVED:
        return s
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _ov(key: str, value: Any) -> str:
    return f"{key}={hydra_value(value)}"


def build_overrides(params: Params, *, dataset_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                    checkpoint_dir: str | os.PathLike[str], params_path: str | os.PathLike[str] | None = None,
                    pool_path: str | os.PathLike[str] | None = None, val_split: str = "validation",
                    extra: Sequence[str] = ()) -> list[str]:
    """verl Hydra overrides, every value derived from `params` (never hand-written per run).

    `out_dir` holds the generated agent-loop YAML; `checkpoint_dir` becomes
    trainer.default_local_dir (and holds the cost log, so it survives resumes). `extra` is
    appended last, so it wins (Hydra applies overrides in order).
    """
    tr = params.require("train_router")
    v = tr.verl
    agent_name = params.build_dataset.agent_name if params.build_dataset else "router_agent"
    data, out, ckpt = Path(dataset_dir).resolve(), Path(out_dir).resolve(), Path(checkpoint_dir).resolve()
    pp = resolve_params_path(params_path).resolve()
    pl = resolve_pool_path(pool_path).resolve()
    grpo = v.algorithm == "grpo"
    micro = v.ppo_micro_batch_size_per_gpu
    gpus = v.nnodes * v.n_gpus_per_node

    o: list[str] = [
        # data: our RL parquet (stages/build_dataset.py)
        _ov("data.train_files", str(data / "train.parquet")),
        _ov("data.val_files", str(data / f"{val_split}.parquet")),
        _ov("data.prompt_key", "prompt"),
        _ov("data.train_batch_size", v.train_batch_size),
        _ov("data.max_prompt_length", params.rollout.max_prompt_tokens),
        _ov("data.max_response_length", v.max_response_length),
        _ov("data.filter_overlong_prompts", True),
        _ov("data.truncation", "error"),
        _ov("data.return_raw_chat", True),
        _ov("data.seed", tr.seed),
        # policy
        _ov("actor_rollout_ref.model.path", v.model_path),
        _ov("actor_rollout_ref.actor.optim.lr", v.actor_lr),
        _ov("actor_rollout_ref.actor.ppo_mini_batch_size", v.ppo_mini_batch_size),
        _ov("actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu", micro),
        _ov("actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu", micro),
        _ov("actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu", micro),
        # rollout engine and sampling
        _ov("actor_rollout_ref.rollout.name", v.rollout_name),
        _ov("actor_rollout_ref.rollout.mode", "async"),
        _ov("actor_rollout_ref.rollout.n", v.group_size if grpo else 1),
        _ov("actor_rollout_ref.rollout.temperature", v.temperature),
        _ov("actor_rollout_ref.rollout.top_p", v.top_p),
        _ov("actor_rollout_ref.rollout.gpu_memory_utilization", v.gpu_memory_utilization),
        _ov("actor_rollout_ref.rollout.tensor_model_parallel_size", v.tensor_model_parallel_size),
        _ov("actor_rollout_ref.rollout.max_model_len", params.rollout.max_prompt_tokens + v.max_response_length),
        _ov("actor_rollout_ref.rollout.seed", tr.seed),
        _ov("actor_rollout_ref.rollout.calculate_log_probs", True),
        # SGLang only applies stop strings with its tokenizer loaded (vLLM always loads it).
        _ov("actor_rollout_ref.rollout.skip_tokenizer_init", False),
        # multi-turn: our agent loop, one agent-loop worker per GPU
        _ov("actor_rollout_ref.rollout.agent.num_workers", gpus),
        _ov("actor_rollout_ref.rollout.agent.default_agent_loop", agent_name),
        _ov("actor_rollout_ref.rollout.agent.agent_loop_config_path", str(out / AGENT_LOOP_FILE)),
        # reward: ours, with its settings and the cost log
        _ov("reward.custom_reward_function.path", f"pkg://{MODULE}"),
        _ov("reward.custom_reward_function.name", REWARD_FN_NAME),
        _ov("+reward.custom_reward_function.reward_kwargs.params_path", str(pp)),
        _ov("+reward.custom_reward_function.reward_kwargs.pool_path", str(pl)),
        _ov("+reward.custom_reward_function.reward_kwargs.cost_log_path", str(ckpt / COST_LOG_FILE)),
    ]
    if grpo:
        o += [
            _ov("algorithm.adv_estimator", "grpo"),
            _ov("algorithm.norm_adv_by_std_in_grpo", True),
            _ov("algorithm.use_kl_in_reward", False),
            _ov("actor_rollout_ref.actor.use_kl_loss", True),
            _ov("actor_rollout_ref.actor.kl_loss_coef", v.kl_coef),
            _ov("actor_rollout_ref.actor.kl_loss_type", "low_var_kl"),
            _ov("critic.enable", False),
        ]
    else:
        # Router-R1 (after Search-R1): PPO, GAE critic, KL to the reference in the reward.
        o += [
            _ov("algorithm.adv_estimator", "gae"),
            _ov("algorithm.gamma", v.gamma),
            _ov("algorithm.lam", v.lam),
            _ov("algorithm.use_kl_in_reward", True),
            _ov("algorithm.kl_ctrl.type", "fixed"),
            _ov("algorithm.kl_ctrl.kl_coef", v.kl_coef),
            _ov("actor_rollout_ref.actor.use_kl_loss", False),
            _ov("critic.enable", True),
            _ov("critic.model.path", v.model_path),
            _ov("critic.optim.lr", v.critic_lr),
            _ov("critic.ppo_mini_batch_size", v.ppo_mini_batch_size),
            _ov("critic.ppo_micro_batch_size_per_gpu", micro),
        ]
    o += [
        _ov("trainer.logger", list(v.logger)),
        _ov("trainer.project_name", v.project_name),
        _ov("trainer.experiment_name", v.experiment_name),
        _ov("trainer.nnodes", v.nnodes),
        _ov("trainer.n_gpus_per_node", v.n_gpus_per_node),
        _ov("trainer.total_training_steps", v.total_training_steps),
        # Every epoch has at least one step, so epochs never end training before the step count.
        _ov("trainer.total_epochs", v.total_training_steps),
        _ov("trainer.save_freq", v.save_freq),
        _ov("trainer.test_freq", v.test_freq),
        _ov("trainer.default_local_dir", str(ckpt)),
        _ov("trainer.resume_mode", "auto"),
        _ov("trainer.val_before_train", v.test_freq > 0),
        _ov("trainer.log_val_generations", 0),
    ]
    env = {**TELEMETRY_ENV, PARAMS_ENV: str(pp), POOL_ENV: str(pl)}
    if os.environ.get("ROUTEROPS_SHARED_DATA"):
        env["ROUTEROPS_SHARED_DATA"] = str(Path(os.environ["ROUTEROPS_SHARED_DATA"]).resolve())
    # verl merges ray_kwargs.ray_init.runtime_env into the env of every Ray worker it starts.
    o += [_ov(f"+ray_kwargs.ray_init.runtime_env.env_vars.{k}", val) for k, val in sorted(env.items())]
    return o + list(extra)


# ---------------------------------------------------------------------------------------------
# Compose and validate with verl's own config and checks
# ---------------------------------------------------------------------------------------------


def verl_config_dir() -> Path:
    """verl's packaged Hydra config directory (trainer/config of the installed wheel)."""
    import importlib.util

    spec = importlib.util.find_spec("verl")
    if spec is None or not spec.submodule_search_locations:
        raise VerlConfigError("verl is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "trainer" / "config"


_HYDRA_LOCK = threading.Lock()  # Hydra's GlobalHydra is process-global


def compose_config(overrides: Sequence[str], config_name: str = "ppo_trainer") -> DictConfig:
    """Compose verl's own `ppo_trainer` config with the overrides, as `main_ppo` would."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    with _HYDRA_LOCK:
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(verl_config_dir()), version_base=None):
                return compose(config_name=config_name, overrides=list(overrides))
        except (HydraException, OmegaConfBaseException, ValueError) as exc:
            raise VerlConfigError(f"{type(exc).__name__}: {exc}") from exc
        finally:
            GlobalHydra.instance().clear()


def _check_agent_loop_file(cfg: DictConfig, agent_name: str | None) -> None:
    path = cfg.actor_rollout_ref.rollout.agent.agent_loop_config_path
    if not path:
        return
    p = Path(str(path))
    if not p.is_file():
        raise VerlConfigError(f"agent loop config {p} does not exist")
    entries = yaml.safe_load(p.read_text(encoding="utf-8")) or []
    names = [e.get("name") for e in entries if isinstance(e, dict)]
    wanted = agent_name or str(cfg.actor_rollout_ref.rollout.agent.default_agent_loop)
    if wanted not in names:
        raise VerlConfigError(f"agent loop config {p} registers {names}, not {wanted!r}")


_STUB_MODEL: Path | None = None


def stub_model_dir() -> Path:
    """A tiny local HF model directory (Qwen2 config + word-level tokenizer), built once per process.

    verl converts model configs with `HFModelConfig`, which loads the tokenizer and the HF config
    from the model path. On a CPU machine without the hub, `validate` points the model paths at
    this stub so that everything else verl checks in those configs still runs; the real model is
    then not checked (see `validate`).
    """
    global _STUB_MODEL
    if _STUB_MODEL is None or not (_STUB_MODEL / "config.json").is_file():
        import atexit
        import shutil
        import tempfile

        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast, Qwen2Config

        d = Path(tempfile.mkdtemp(prefix="routerops-verl-stub-"))
        atexit.register(shutil.rmtree, d, ignore_errors=True)
        vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
        tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>",
                                unk_token="<unk>").save_pretrained(d)
        # Smallest valid Qwen2 shapes: the config is read, never instantiated as a model.
        Qwen2Config(vocab_size=len(vocab), hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                    num_attention_heads=1, num_key_value_heads=1, architectures=["Qwen2ForCausalLM"]).save_pretrained(d)
        _STUB_MODEL = d
    return _STUB_MODEL


def validate(cfg: DictConfig, *, agent_name: str | None = None, use_stub_model: bool | None = None) -> list[str]:
    """Run verl's own config validation on CPU; returns what was checked.

    Mirrors what `verl.trainer.main_ppo` and its workers do before touching a GPU:
    `verl.utils.config.validate_config` (batch divisibility, micro-batch settings, conversion of
    the actor config, and of the critic config with its model when a critic is used, and their
    `validate`), plus `omega_conf_to_dataclass` of the algorithm, rollout (as the agent-loop
    workers do), checkpoint-engine and actor model configs. verl's reward-manager config cannot be
    converted on its own in 0.9.1 (verl never does), so it is left out.

    Model configs load the tokenizer and HF config from the model path. When that path is not a
    local directory (a hub id) or `use_stub_model` is True, the check runs against
    `stub_model_dir()` instead, so nothing is downloaded and the real model is not checked.
    Errors are raised as `VerlConfigError` carrying verl's message.
    """
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    checked: list[str] = []
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))  # never mutate the caller's config
    sink = io.StringIO()  # verl prints progress lines; keep the caller's stdout clean
    try:
        with contextlib.redirect_stdout(sink), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            OmegaConf.resolve(cfg)  # as verl's TaskRunner does before building anything
            checked.append("interpolations resolve")
            model_path = str(cfg.actor_rollout_ref.model.path)
            stub = use_stub_model if use_stub_model is not None else not Path(model_path).expanduser().is_dir()
            if stub:
                for section in (cfg.actor_rollout_ref.model, cfg.critic.model):
                    section.path = str(stub_model_dir())
                    section.tokenizer_path = None
                    section.hf_config_path = None
                checked.append(f"model configs against a local stub (not {model_path})")
            use_critic, use_ref = need_critic(cfg), need_reference_policy(cfg)
            validate_config(config=cfg, use_reference_policy=use_ref, use_critic=use_critic)
            checked.append(f"verl.utils.config.validate_config (critic={use_critic}, reference={use_ref})")
            for key in ("algorithm", "actor_rollout_ref.rollout", "actor_rollout_ref.rollout.checkpoint_engine",
                        "actor_rollout_ref.model"):
                omega_conf_to_dataclass(OmegaConf.select(cfg, key))
                checked.append(f"omega_conf_to_dataclass({key})")
    except VerlConfigError:
        raise
    except (AssertionError, ValueError, TypeError, KeyError, AttributeError, OmegaConfBaseException,
            HydraException, OSError, RuntimeError, ImportError) as exc:
        msg = str(exc) or repr(exc)
        raise VerlConfigError(f"verl rejected the config: {type(exc).__name__}: {msg}") from exc
    _check_agent_loop_file(cfg, agent_name)
    checked.append("agent loop config names the dataset's agent")
    reward = cfg.reward.custom_reward_function
    if reward.path:
        try:
            from verl.utils.import_utils import load_extern_object

            fn = load_extern_object(module_path=str(reward.path), object_name=str(reward.name))
        except (ImportError, AttributeError, FileNotFoundError, RuntimeError) as exc:
            raise VerlConfigError(f"reward function {reward.path}:{reward.name} cannot be loaded: {exc}") from exc
        if not callable(fn):
            raise VerlConfigError(f"reward function {reward.path}:{reward.name} is not callable")
        checked.append("reward function loads")
    return checked


# ---------------------------------------------------------------------------------------------
# Launch and export commands
# ---------------------------------------------------------------------------------------------

# Paths never uploaded with the Ray working directory (environments, data, outputs).
# gitignore syntax, relative to the repository root (a leading "/" anchors at the root).
_RAY_EXCLUDES = ["/.venv", "/.git", "/artifacts", "/checkpoints", "/data", "/runs", "/plots", "/.routerops",
                 "__pycache__", "*.parquet", "*.safetensors", "*.pt"]


def runtime_env(params: Params, *, params_path: str | os.PathLike[str] | None = None,
                pool_path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Ray runtime env for `ray job submit`: our code as working_dir, settings as env vars.

    Secrets (candidate API keys) are never put here: set them in the cluster nodes' env.
    """
    env = {**TELEMETRY_ENV, PARAMS_ENV: str(resolve_params_path(params_path).resolve()),
           POOL_ENV: str(resolve_pool_path(pool_path).resolve())}
    if os.environ.get("ROUTEROPS_SHARED_DATA"):
        env["ROUTEROPS_SHARED_DATA"] = str(Path(os.environ["ROUTEROPS_SHARED_DATA"]).resolve())
    return {"working_dir": str(REPO_ROOT), "excludes": list(_RAY_EXCLUDES), "env_vars": env}


def launch_command(params: Params, overrides: Sequence[str], *, python: str = "python",
                   params_path: str | os.PathLike[str] | None = None,
                   pool_path: str | os.PathLike[str] | None = None) -> list[str]:
    """The command that trains: on this node, or submitted to `train_router.verl.ray_address`.

    Re-running the same command resumes from the latest checkpoint (trainer.resume_mode=auto).
    """
    v = params.require("train_router").verl
    base = [python, "-m", "verl.trainer.main_ppo", *overrides]
    if not v.ray_address:
        return base
    env = json.dumps(runtime_env(params, params_path=params_path, pool_path=pool_path), sort_keys=True)
    return ["ray", "job", "submit", "--address", v.ray_address, "--runtime-env-json", env, "--", *base]


def latest_checkpoint_step(checkpoint_dir: str | os.PathLike[str]) -> int | None:
    """The step in verl's tracker file (latest_checkpointed_iteration.txt), if any."""
    tracker = Path(checkpoint_dir) / "latest_checkpointed_iteration.txt"
    try:
        return int(tracker.read_text(encoding="utf-8").strip())
    except (FileNotFoundError, ValueError):
        return None


def export_command(checkpoint_dir: str | os.PathLike[str], step: int | None, target_dir: str | os.PathLike[str],
                   *, python: str = "python", backend: str = "fsdp") -> list[str]:
    """verl's model merger: sharded actor checkpoint of `step` (None: latest) to a HF directory."""
    if step is None:
        step = latest_checkpoint_step(checkpoint_dir)
        if step is None:
            raise FileNotFoundError(f"{checkpoint_dir}: no latest_checkpointed_iteration.txt; pass a step")
    actor = Path(checkpoint_dir) / f"global_step_{int(step)}" / "actor"
    return [python, "-m", "verl.model_merger", "merge", "--backend", backend,
            "--local_dir", str(actor), "--target_dir", str(target_dir)]


# ---------------------------------------------------------------------------------------------
# Dry run
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DryRun:
    out_dir: Path
    files: tuple[Path, ...]
    overrides: tuple[str, ...]
    command: tuple[str, ...]
    checked: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    error: str | None = None  # verl's message when the config is invalid
    config: Any = None  # the composed DictConfig, when it composed

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def command_line(self) -> str:
        return shlex.join(self.command)


def default_checkpoint_dir(params: Params) -> Path:
    """`<train_router.checkpoint_dir>/verl/<experiment_name>` (kept apart from the local backend's)."""
    tr = params.require("train_router")
    base = Path(tr.checkpoint_dir)
    return (base if base.is_absolute() else REPO_ROOT / base) / "verl" / tr.verl.experiment_name


def default_dataset_dir(params: Params) -> Path:
    out = Path(params.build_dataset.out_dir if params.build_dataset else "artifacts/dataset")
    return (out if out.is_absolute() else REPO_ROOT / out) / "rl"


def dry_run(params: Params, *, out_dir: str | os.PathLike[str], params_path: str | os.PathLike[str] | None = None,
            pool_path: str | os.PathLike[str] | None = None, dataset_dir: str | os.PathLike[str] | None = None,
            checkpoint_dir: str | os.PathLike[str] | None = None, extra_overrides: Sequence[str] = (),
            raise_on_error: bool = True) -> DryRun:
    """Write the generated files, compose + validate the config, return the launch command.

    Files (in `out_dir`): agent_loop.yaml (verl's agent-loop registry entry), overrides.txt (one
    Hydra override per line), verl_config.yaml (the composed config, only when it composes) and
    launch.sh (the exact command). With `raise_on_error=False` an invalid config is reported in
    `DryRun.error` instead of raising `VerlConfigError`.
    """
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    pp, pl = resolve_params_path(params_path).resolve(), resolve_pool_path(pool_path).resolve()
    data = Path(dataset_dir).resolve() if dataset_dir else default_dataset_dir(params)
    ckpt = Path(checkpoint_dir).resolve() if checkpoint_dir else default_checkpoint_dir(params)
    agent_name = params.build_dataset.agent_name if params.build_dataset else "router_agent"
    v = params.require("train_router").verl

    notes: list[str] = []
    for split in ("train", "validation"):
        if not (data / f"{split}.parquet").is_file():
            notes.append(f"{data / f'{split}.parquet'} does not exist (run the build_dataset stage)")
    if v.ray_address and not Path(params.require("train_router").checkpoint_dir).is_absolute():
        notes.append("cluster run with a relative checkpoint_dir: use a path on storage shared by all nodes")

    files = [out / AGENT_LOOP_FILE, out / OVERRIDES_FILE]
    files[0].write_text(yaml.safe_dump(agent_loop_entries(agent_name, params_path=str(pp), pool_path=str(pl)),
                                       sort_keys=False), encoding="utf-8")
    overrides = build_overrides(params, dataset_dir=data, out_dir=out, checkpoint_dir=ckpt, params_path=pp,
                                pool_path=pl, extra=extra_overrides)
    files[1].write_text("\n".join(overrides) + "\n", encoding="utf-8")
    command = launch_command(params, overrides, params_path=pp, pool_path=pl)
    launch = out / LAUNCH_FILE
    launch.write_text("#!/usr/bin/env bash\n# Generated by routerops (verl backend); re-run to resume.\n"
                      f"set -euo pipefail\ncd {shlex.quote(str(REPO_ROOT))}\n{shlex.join(command)}\n",
                      encoding="utf-8")
    launch.chmod(0o755)
    files.append(launch)

    error: str | None = None
    checked: list[str] = []
    cfg = None
    try:
        cfg = compose_config(overrides)
        from omegaconf import OmegaConf

        config_file = out / CONFIG_FILE
        config_file.write_text(OmegaConf.to_yaml(cfg), encoding="utf-8")
        files.append(config_file)
        checked = validate(cfg, agent_name=agent_name)
    except VerlConfigError as exc:
        if raise_on_error:
            raise
        error = str(exc)
    return DryRun(out, tuple(files), tuple(overrides), tuple(command), tuple(checked), tuple(notes), error, cfg)


def dry_run_report(params_path: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                   extra_overrides: Sequence[str] = ()) -> tuple[int, str]:
    """`routerops train --backend verl --dry-run`: (exit code, printable report)."""
    from routerops.config import ParamsError

    try:
        params = load_params(params_path)
        params.require("train_router")
    except ParamsError as exc:
        return 2, f"invalid params: {exc}\n"
    try:
        result = dry_run(params, out_dir=out_dir, params_path=params_path, extra_overrides=extra_overrides,
                         raise_on_error=False)
    except (OSError, ValueError) as exc:
        return 2, f"dry run failed: {exc}\n"
    lines = [f"verl dry run ({params.require('train_router').verl.algorithm}) -> {result.out_dir}", "",
             "generated files:"]
    lines += [f"  {f}" for f in result.files]
    lines += ["", "launch command (re-run it to resume from the latest checkpoint):", f"  {result.command_line}"]
    if result.warnings:
        lines += ["", "warnings:"] + [f"  - {w}" for w in result.warnings]
    if result.error is not None:
        lines += ["", "INVALID CONFIG - verl says:", f"  {result.error}"]
        return 1, "\n".join(lines) + "\n"
    lines += ["", "checked on CPU:"] + [f"  - {c}" for c in result.checked]
    lines += ["", "not checked without GPUs: model download/loading, vLLM/SGLang engine start, GPU memory, "
                  "Ray cluster resources, candidate endpoints"]
    return 0, "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m routerops.training.verl_backend PARAMS OUT_DIR`: the dry run without the CLI."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m routerops.training.verl_backend PARAMS_YAML OUT_DIR", file=sys.stderr)
        return 2
    code, text = dry_run_report(args[0], args[1])
    print(text, end="")
    return code


if __name__ == "__main__":
    raise SystemExit(main())


# ---------------------------------------------------------------------------------------------
# verl's RL math for the local CPU backend (the same functions the GPU trainer runs)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PolicyLossConfig:
    """The fields verl's vanilla policy loss reads from an ActorConfig, and nothing else."""

    clip_ratio: float
    clip_ratio_low: float | None = None
    clip_ratio_high: float | None = None
    clip_ratio_c: float = 3.0
    global_batch_info: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)


def grpo_advantages(token_level_rewards: Any, response_mask: Any, index: Any) -> Any:
    """Group-relative outcome advantages: verl's compute_grpo_outcome_advantage (std-normalised)."""
    from verl.trainer.ppo import core_algos

    advantages, _ = core_algos.compute_grpo_outcome_advantage(
        token_level_rewards=token_level_rewards, response_mask=response_mask, index=index,
        norm_adv_by_std_in_grpo=True)
    return advantages


def policy_loss(old_log_prob: Any, log_prob: Any, advantages: Any, response_mask: Any,
                clip_ratio: float, loss_agg_mode: str = "token-mean") -> tuple[Any, dict[str, Any]]:
    """verl's clipped (dual-clip) PPO policy loss, token-mean aggregated."""
    from verl.trainer.ppo import core_algos

    cfg = _PolicyLossConfig(clip_ratio=clip_ratio)
    return core_algos.compute_policy_loss_vanilla(  # type: ignore[no-any-return]
        old_log_prob=old_log_prob, log_prob=log_prob, advantages=advantages, response_mask=response_mask,
        loss_agg_mode=loss_agg_mode, config=cfg)  # type: ignore[arg-type]


def kl_loss(log_prob: Any, ref_log_prob: Any, response_mask: Any, kind: str = "low_var_kl") -> Any:
    """verl's KL estimator against the reference policy, aggregated like the actor's KL loss."""
    from verl.trainer.ppo import core_algos

    kld = core_algos.kl_penalty(logprob=log_prob, ref_logprob=ref_log_prob, kl_penalty=kind)
    return core_algos.agg_loss(loss_mat=kld, loss_mask=response_mask, loss_agg_mode="token-mean")
