"""Cost bounds fixed before training (`rewards.normalizer: calibrated`).

Router-R1 normalises a trajectory's cost by p5/p95 of sqrt(cost) over a sliding window of recent
costs. That window lives in a process: verl scores in `reward.num_workers` processes and picks
one at random per trajectory, so with alpha > 0 the same cost earns different rewards, and a
resumed run starts an empty window. Calibrated bounds are computed once, before training, from
the pool and the training questions, written with the run, and read by every process.

The reference set, per training question: answering with no call (cost 0) and one call to each
candidate, at the completion length the candidate backend would bill (the replay pool's
deterministic length for that question; a live endpoint's candidates at their profile's mean
length, else `max_tokens`). With 5 candidates a sixth of the reference is 0, so p5 is 0 and p95
is near the dearest candidate's single call: a correct answer without a call keeps its whole
reward, one through the dearest candidate keeps (1 - alpha) of it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from routerops.candidates.replay import ReplayPool
from routerops.candidates.types import QuestionInfo, candidate_messages
from routerops.config import Params
from routerops.io import write_json_atomic
from routerops.pool import Candidate, Pool
from routerops.rewards import FrozenBoundsNormalizer

__all__ = ["CALIBRATION_FILE", "CalibrationError", "CostCalibration", "calibrate_costs", "read_calibration",
           "training_calibration", "write_calibration"]

CALIBRATION_FILE = "cost_bounds.json"
SCHEMA = 1
METHOD = "p5/p95 of sqrt(usd) over each training question with no call and one call to each candidate"


class CalibrationError(ValueError):
    """A calibration that cannot be computed or read."""


@dataclass(frozen=True)
class CostCalibration:
    p5: float  # of sqrt(usd)
    p95: float
    questions: int
    reference_costs: int
    mean_call_usd: Mapping[str, float] = field(default_factory=dict)  # per candidate, for the record
    include_prompt_cost: bool = False
    method: str = METHOD
    pool_snapshot: str = ""  # the pool (prices included) the bounds were calibrated under

    def matches(self, pool: Pool, questions: int, include_prompt_cost: bool) -> str | None:
        """Why these bounds are not this run's (another pool, question set size or cost rule), or None."""
        if self.pool_snapshot != pool.snapshot_id:
            return f"calibrated under pool snapshot {self.pool_snapshot or '(none)'}, the run's is {pool.snapshot_id}"
        if self.questions != questions:
            return f"calibrated on {self.questions} questions, the run trains on {questions}"
        if self.include_prompt_cost != include_prompt_cost:
            return f"calibrated with include_prompt_cost={self.include_prompt_cost}, the run has {include_prompt_cost}"
        return None

    def normalizer(self) -> FrozenBoundsNormalizer:
        return FrozenBoundsNormalizer(self.p5, self.p95)

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "p5_sqrt_usd": self.p5, "p95_sqrt_usd": self.p95, "questions": self.questions,
                "reference_costs": self.reference_costs, "mean_call_usd": dict(sorted(self.mean_call_usd.items())),
                "include_prompt_cost": self.include_prompt_cost, "method": self.method,
                "pool_snapshot": self.pool_snapshot}

    @classmethod
    def from_json(cls, raw: Any, where: str = "calibration") -> CostCalibration:
        if not isinstance(raw, dict):
            raise CalibrationError(f"{where}: expected a JSON object, got {type(raw).__name__}")
        if raw.get("schema") != SCHEMA:
            raise CalibrationError(f"{where}: schema {raw.get('schema')!r}, expected {SCHEMA}")
        try:
            p5, p95 = float(raw["p5_sqrt_usd"]), float(raw["p95_sqrt_usd"])
            out = cls(p5, p95, int(raw["questions"]), int(raw["reference_costs"]),
                      {str(k): float(v) for k, v in dict(raw.get("mean_call_usd", {})).items()},
                      bool(raw.get("include_prompt_cost", False)), str(raw.get("method", METHOD)),
                      str(raw.get("pool_snapshot", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise CalibrationError(f"{where}: malformed ({exc!r})") from exc
        if not (math.isfinite(p5) and math.isfinite(p95) and 0.0 <= p5 <= p95):
            raise CalibrationError(f"{where}: bounds must be finite with 0 <= p5 <= p95, got {p5!r}, {p95!r}")
        return out


def calibrate_costs(pool: Pool, questions: Sequence[QuestionInfo],
                    completion_tokens: Callable[[Candidate, QuestionInfo], int], *,
                    prompt_tokens: Callable[[Candidate, QuestionInfo], int] | None = None,
                    include_prompt_cost: bool = False) -> CostCalibration:
    """Bounds over the reference set of the module docstring. `completion_tokens` (and, with
    `include_prompt_cost`, `prompt_tokens`) give what one call to a candidate on a question bills."""
    import numpy as np

    if not questions:
        raise CalibrationError("cannot calibrate cost bounds without training questions")
    if include_prompt_cost and prompt_tokens is None:
        raise CalibrationError("include_prompt_cost needs the prompt tokens of a call")
    sqrt_costs = [0.0] * len(questions)
    mean: dict[str, float] = {}
    for c in pool:
        usd = [c.cost_usd(completion_tokens(c, q), prompt_tokens(c, q) if prompt_tokens else 0, include_prompt_cost)
               for q in questions]
        mean[c.name] = sum(usd) / len(usd)
        sqrt_costs += [math.sqrt(max(u, 0.0)) for u in usd]
    arr = np.asarray(sqrt_costs)
    return CostCalibration(float(np.percentile(arr, 5)), float(np.percentile(arr, 95)), len(questions),
                           len(sqrt_costs), mean, include_prompt_cost, pool_snapshot=pool.snapshot_id)


def training_calibration(params: Params, pool: Pool, questions: Sequence[QuestionInfo]) -> CostCalibration:
    """The cost bounds of `rewards.normalizer: calibrated` (`routerops.cost_calibration`), over the
    training `questions`: a call bills what the replay pool bills for it (the candidate's measured
    mean length with the replay's per-question jitter; `max_tokens` for a candidate without a
    replay profile), and, with `include_prompt_cost`, the words of the candidate's message as its
    prompt tokens, as the replay pool counts them."""
    lengths = ReplayPool(None, seed=params.candidates.replay_seed)

    def completion(c: Candidate, q: QuestionInfo) -> int:
        return lengths.completion_tokens(c, q, q.text) if c.replay is not None else c.max_tokens

    def prompt(c: Candidate, q: QuestionInfo) -> int:
        return sum(len(m["content"].split()) for m in candidate_messages(q.text))

    return calibrate_costs(pool, questions, completion, prompt_tokens=prompt,
                           include_prompt_cost=params.rewards.include_prompt_cost)


def write_calibration(path: str | os.PathLike[str], calibration: CostCalibration) -> Path:
    return write_json_atomic(Path(path), calibration.to_json())


def read_calibration(path: str | os.PathLike[str]) -> CostCalibration:
    p = Path(path)
    if not p.is_file():
        raise CalibrationError(f"{p}: no cost calibration (rewards.normalizer is 'calibrated': the launch writes it)")
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CalibrationError(f"{p}: not JSON ({exc})") from exc
    return CostCalibration.from_json(raw, str(p))
