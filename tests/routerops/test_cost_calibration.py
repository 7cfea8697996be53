"""Cost bounds calibrated before training: what they are computed over, and every bad file an exact error."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from routerops.candidates.types import QuestionInfo
from routerops.config import load_params
from routerops.cost_calibration import (
    CalibrationError,
    CostCalibration,
    calibrate_costs,
    read_calibration,
    training_calibration,
    write_calibration,
)

QUESTIONS = [QuestionInfo(f"q{i}", f"who founded the town number {i}?", "nq", (f"Founder {i}",)) for i in range(200)]


def test_bounds_span_no_call_to_the_dearest_single_call(repo_root: Path, pool) -> None:
    cal = training_calibration(load_params(repo_root / "params.yaml"), pool, QUESTIONS)
    n = len(list(pool))
    assert (cal.questions, cal.reference_costs) == (200, 200 * (n + 1))
    # One reference in n + 1 is "no call": more than 5 %, so p5 is exactly 0.
    assert cal.p5 == 0.0
    per_call = {c.name: c.replay.mean_completion_tokens * c.price.output_usd_per_mtok / 1e6 for c in pool}
    for name, usd in per_call.items():  # the replay bills 0.75-1.25 x the measured mean length
        assert 0.75 * usd * 0.99 <= cal.mean_call_usd[name] <= 1.25 * usd * 1.01
    dearest = max(per_call.values())
    assert math.sqrt(0.75 * dearest) <= cal.p95 <= math.sqrt(1.25 * dearest)
    # The normaliser: no call keeps the whole reward (cost_norm 1), the dearest call's top none.
    norms, _ = cal.normalizer().update([0.0, 1.25 * dearest])
    assert norms == [1.0, 0.0]


def test_the_same_inputs_give_the_same_bounds_and_the_file_round_trips(repo_root: Path, pool, tmp_path: Path) -> None:
    params = load_params(repo_root / "params.yaml")
    a, b = training_calibration(params, pool, QUESTIONS), training_calibration(params, pool, list(reversed(QUESTIONS)))
    assert (a.p5, a.p95) == (b.p5, b.p95)
    assert read_calibration(write_calibration(tmp_path / "cost_bounds.json", a)) == a


def test_a_candidate_without_a_replay_profile_is_billed_at_max_tokens(repo_root: Path, pool) -> None:
    bare = pool.model_copy(update={"candidates": tuple(c.model_copy(update={"replay": None}) for c in pool)})
    cal = training_calibration(load_params(repo_root / "params.yaml"), bare, QUESTIONS[:3])
    assert cal.mean_call_usd == {c.name: pytest.approx(c.max_tokens * c.price.output_usd_per_mtok / 1e6) for c in pool}


def test_calibration_needs_questions_and_prompt_lengths(pool) -> None:
    with pytest.raises(CalibrationError, match=r"^cannot calibrate cost bounds without training questions$"):
        calibrate_costs(pool, [], lambda c, q: 10)
    with pytest.raises(CalibrationError, match=r"^include_prompt_cost needs the prompt tokens of a call$"):
        calibrate_costs(pool, QUESTIONS[:1], lambda c, q: 10, include_prompt_cost=True)


def test_prompt_cost_is_counted_only_when_asked(pool) -> None:
    without = calibrate_costs(pool, QUESTIONS[:5], lambda c, q: 10, prompt_tokens=lambda c, q: 1000)
    with_prompt = calibrate_costs(pool, QUESTIONS[:5], lambda c, q: 10, prompt_tokens=lambda c, q: 1000,
                                  include_prompt_cost=True)
    assert with_prompt.p95 > without.p95 and with_prompt.include_prompt_cost and not without.include_prompt_cost


def test_bounds_from_json_refuse_inverted_bounds() -> None:
    with pytest.raises(CalibrationError) as info:
        CostCalibration.from_json({"schema": 1, "p5_sqrt_usd": "nan", "p95_sqrt_usd": 1, "questions": 1,
                                   "reference_costs": 2}, "here")
    assert str(info.value) == "here: bounds must be finite with 0 <= p5 <= p95, got nan, 1.0"


def test_bounds_say_when_they_are_not_this_runs(repo_root: Path, pool) -> None:
    cal = training_calibration(load_params(repo_root / "params.yaml"), pool, QUESTIONS)
    assert cal.pool_snapshot == pool.snapshot_id and cal.matches(pool, 200, False) is None
    assert cal.matches(pool, 199, False) == "calibrated on 200 questions, the run trains on 199"
    assert cal.matches(pool, 200, True) == "calibrated with include_prompt_cost=False, the run has True"
    other = CostCalibration(cal.p5, cal.p95, 200, cal.reference_costs, pool_snapshot="0123")
    assert other.matches(pool, 200, False) == f"calibrated under pool snapshot 0123, the run's is {pool.snapshot_id}"
