"""Training cost metrics: the reward function's cost log read back per (split, step).

verl aggregates no extra fields during training, so `routerops.training.verl.reward.compute_score`
appends one JSON line per scored trajectory to `<trainer.default_local_dir>/route_costs.jsonl`
(`COST_LOG_FILE`); `summarize_training_costs` aggregates it per split and step.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["COST_LOG_FILE", "CostSummary", "StepCosts", "summarize_training_costs"]

COST_LOG_FILE = "route_costs.jsonl"


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
