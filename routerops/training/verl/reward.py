"""The reward function verl calls per trajectory: `compute_score`.

`compute_score` is the function for `reward.custom_reward_function.{path,name}`. It scores with
`routerops.rewards` and returns "score" plus the breakdown (acc = em, format, em, f1, cost_usd,
cost_norm, num_calls), which verl reports per data source in validation metrics. It also appends
one JSON line per scored trajectory to a cost log (`routerops.training.verl.costs` reads it back
per step), because verl aggregates no extra fields during training.

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

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from routerops.config import Params
from routerops.pool import Pool
from routerops.protocol import ROUTER_R1, FormatRules
from routerops.rewards import (
    CallUsage,
    CostNormalizer,
    FrozenBoundsNormalizer,
    RewardBreakdown,
    ScoreItem,
    SlidingWindowNormalizer,
    score_batch,
)
from routerops.training.verl.agent_loop import _plain, golden_answers
from routerops.training.verl.runtime import per_process

__all__ = ["BREAKDOWN_KEYS", "MODULE", "REWARD_FN_NAME", "SplitNormalizers", "compute_score", "process_scorer",
           "reset_reward_state"]

MODULE = __name__
REWARD_FN_NAME = "compute_score"
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
              include_prompt: bool, rules: FormatRules = ROUTER_R1) -> list[RewardBreakdown]:
        with self._lock:
            out, nxt = score_batch(items, pool, alpha, self.get(split), outcome, include_prompt, rules)
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


def process_scorer(params_path: str | None, pool_path: str | None) -> _Scorer:
    return per_process(_SCORERS, _SCORER_LOCK, params_path, pool_path, lambda params, pool: _Scorer(
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
    scorer = process_scorer(params_path, pool_path)
    rewards = scorer.params.rewards
    calls = _calls_from(extra)
    usages = [CallUsage(str(c["model"]), int(c["completion_tokens"]), int(c.get("prompt_tokens", 0)))
              for c in calls if c.get("ok")]
    split = str(extra.get("split") or "train")
    item = ScoreItem(solution_str, golden_answers(ground_truth), usages)
    (b,) = scorer.normalizers.score(split, [item], scorer.pool, rewards.alpha, rewards.outcome,
                                    rewards.include_prompt_cost, scorer.params.rollout.format.rules())
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
