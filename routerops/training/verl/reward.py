"""The reward function verl calls per trajectory: `compute_score`.

`compute_score` is the function for `reward.custom_reward_function.{path,name}`. It scores with
`routerops.rewards` and returns "score" plus the breakdown (acc = em, format, em, f1, cost_usd,
cost_norm, num_calls), which verl reports per data source in validation metrics. It also appends
one JSON line per scored trajectory to a cost log (`routerops.training.verl.costs` reads it back
per step), because verl aggregates no extra fields during training.

Cost normalisation
------------------
verl calls the reward function once per trajectory, in several reward-worker processes
(`reward.num_workers`), and picks a worker at random. `rewards.normalizer: calibrated` (the
default) reads fixed bounds from the file the launch calibrated before training
(`reward_kwargs.cost_bounds_path`, `routerops.cost_calibration`): every worker, every split and a
resumed run give the same cost the same reward. `sliding` is Router-R1's window of recent costs,
one per data split (`extra_info.split`) and process, updated one trajectory at a time (the
original updates per batch). Caveat: with `sliding` and alpha > 0, each of the `num_workers`
processes has its own window, so the same cost earns different rewards depending on the worker
verl picks, and a resumed run starts empty windows; with Router-R1's main setting (alpha = 0) cost
never enters the reward at all.
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
from routerops.cost_calibration import CalibrationError, CostCalibration, read_calibration
from routerops.pool import Pool
from routerops.protocol import ROUTER_R1, FormatRules
from routerops.rewards import (
    CallUsage,
    CostNormalizer,
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
    """The cost normaliser of each data split, owned explicitly (see the module docstring): the
    calibration's fixed bounds for every split, or one sliding window per split."""

    def __init__(self, mode: str, window: int, calibration: CostCalibration | None = None) -> None:
        if mode == "calibrated" and calibration is None:
            raise CalibrationError("rewards.normalizer is 'calibrated' but no calibration was given")
        self.mode, self.window, self.calibration = mode, window, calibration
        self._by_split: dict[str, CostNormalizer] = {}
        self._lock = threading.Lock()  # verl scores in executor threads

    def get(self, split: str) -> CostNormalizer:
        if self.calibration is not None and self.mode == "calibrated":
            return self.calibration.normalizer()
        return self._by_split.get(split) or SlidingWindowNormalizer(self.window)

    def score(self, split: str, items: Sequence[ScoreItem], pool: Pool, alpha: float, outcome: Literal["em", "f1"],
              include_prompt: bool, rules: FormatRules = ROUTER_R1) -> list[RewardBreakdown]:
        with self._lock:
            out, nxt = score_batch(items, pool, alpha, self.get(split), outcome, include_prompt, rules)
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


_SCORERS: dict[tuple[str, ...], _Scorer] = {}
_SCORER_LOCK = threading.Lock()


def process_scorer(params_path: str | None, pool_path: str | None, cost_bounds_path: str | None = None) -> _Scorer:
    """This process's scorer for (params, pool, calibration file). With `rewards.normalizer:
    calibrated` a missing or unreadable calibration is a `CalibrationError` on the first score,
    never a silent fall-back to a per-process window."""
    def build(params: Params, pool: Pool) -> _Scorer:
        calibration = None
        if params.rewards.normalizer == "calibrated":
            if not cost_bounds_path:
                raise CalibrationError(
                    "rewards.normalizer is 'calibrated' but reward_kwargs has no cost_bounds_path: launch through "
                    "routerops (its dry run calibrates the bounds and names the file), or set normalizer: sliding")
            calibration = read_calibration(cost_bounds_path)
        return _Scorer(params, pool, SplitNormalizers(params.rewards.normalizer, params.rewards.window, calibration))

    return per_process(_SCORERS, _SCORER_LOCK, params_path, pool_path, build, str(cost_bounds_path or ""))


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
                  cost_log_path: str | None = None, cost_bounds_path: str | None = None, **_: Any) -> dict[str, float]:
    """verl's custom reward function: Router-R1's format -> outcome -> cost hierarchy.

    verl 0.9.1's reward manager calls it with data_source, solution_str (the response decoded
    with special tokens skipped), ground_truth (`reward_model.ground_truth`) and extra_info (the
    row's extra_info updated with the agent loop's extra fields), plus the keyword arguments in
    `reward.custom_reward_function.reward_kwargs`. Every value returned becomes a per-sample
    metric, so only numbers are returned; the answer and the calls go to the cost log.
    """
    extra = dict(extra_info or {})
    calls = _calls_from(extra)
    scorer = process_scorer(params_path, pool_path, cost_bounds_path)
    rewards = scorer.params.rewards
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
