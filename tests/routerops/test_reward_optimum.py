"""The reward of fixed single-model policies: hand-computed values, where the best model moves with
alpha, the replayed outcomes billed as the cost calibration bills them, and every bad input an exact error."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from routerops.candidates.replay import ReplayPool
from routerops.candidates.types import QuestionInfo
from routerops.config import load_params
from routerops.cost_calibration import training_calibration
from routerops.pool import parse_pool
from routerops.reward_optimum import ORACLE, ModelOutcomes, optimum, policy_values, replay_outcomes
from routerops.rewards import FrozenBoundsNormalizer

# A: right on q0 and q1, 100 micro-USD a call (the top of the bounds: cost_norm 0).
# B: right on q0 and q2, 25 micro-USD a call (sqrt halfway: cost_norm 0.5).
A = ModelOutcomes("A", (True, True, False, False), (100e-6,) * 4)
B = ModelOutcomes("B", (True, False, True, False), (25e-6,) * 4)
BOUNDS = FrozenBoundsNormalizer(0.0, math.sqrt(100e-6))


def _approx(values):
    return [(v.policy, pytest.approx(v.reward), pytest.approx(v.em), pytest.approx(v.usd_per_question))
            for v in values]


def test_values_by_hand_best_first_then_the_oracle() -> None:
    # alpha 0.5: A earns 0.5 x (0.5 + 0.5 x 0) on two of four, B 0.5 x (0.5 + 0.5 x 0.5) on two.
    assert _approx(policy_values([A, B], BOUNDS, 0.5)) == [
        ("B", 0.375, 0.5, 25e-6), ("A", 0.25, 0.5, 100e-6),
        # oracle: B on q0 (0.75, the cheaper of two right), A on q1 (0.5), B on q2 (0.75), no call on q3
        (ORACLE, 0.5, 0.75, 37.5e-6)]


def test_without_a_cost_term_equal_accuracy_ties_and_names_break_the_tie() -> None:
    best = optimum([B, A], BOUNDS, 0.0)
    assert (best.best.policy, best.runner_up.policy if best.runner_up else None, best.margin) == ("A", "B", 0.0)


def test_the_best_model_moves_to_the_cheap_one_as_alpha_rises() -> None:
    # C is right on three questions at the dearest price; B on two at a quarter of it.
    c = ModelOutcomes("C", (True, True, True, False), (100e-6,) * 4)
    picks = {a: optimum([c, B], BOUNDS, a) for a in (0.0, 0.2, 0.6, 1.0)}
    assert {a: o.best.policy for a, o in picks.items()} == {0.0: "C", 0.2: "C", 0.6: "B", 1.0: "B"}
    assert picks[0.0].margin == pytest.approx(0.25)  # 3/4 against 2/4
    assert picks[1.0].margin == pytest.approx(0.25)  # 2/4 x 0.5 against 3/4 x 0


def test_one_candidate_has_no_runner_up() -> None:
    o = optimum([A], BOUNDS, 0.6)
    assert (o.best.policy, o.runner_up, o.margin) == ("A", None, 0.0)


@pytest.mark.parametrize(("outcomes", "alpha", "error", "message"), [
    ([], 0.6, ValueError, "no candidates to value"),
    ([A, A], 0.6, ValueError, "a candidate is given twice: ['A']"),
    ([A, ModelOutcomes("B", (True,), (1e-6,))], 0.6, ValueError,
     "candidates are valued on different question counts: [1, 4]"),
    ([ModelOutcomes("A", (), ())], 0.6, ValueError, "no questions to value the candidates on"),
    ([A, B], 1.5, ValueError, "alpha must be in [0, 1], got 1.5"),
    ([A, B], -0.1, ValueError, "alpha must be in [0, 1], got -0.1"),
])
def test_malformed_inputs_are_refused(outcomes, alpha, error, message) -> None:
    with pytest.raises(error) as exc:
        policy_values(outcomes, BOUNDS, alpha)
    assert str(exc.value) == message


@pytest.mark.parametrize(("correct", "usd", "message"), [
    ((True, False), (1e-6,), "A: 2 outcomes but 1 costs"),
    ((True,), (-1e-6,), "A: a call cannot cost less than 0 USD"),
])
def test_malformed_outcomes_are_refused(correct, usd, message) -> None:
    with pytest.raises(ValueError) as exc:
        ModelOutcomes("A", correct, usd)
    assert str(exc.value) == message


QUESTIONS = [QuestionInfo(f"q{i}", f"who founded the town number {i}?", "nq", (f"Founder {i}",)) for i in range(120)]


def test_replayed_outcomes_are_the_replays_and_cost_what_the_calibration_bills(repo_root: Path, pool) -> None:
    params = load_params(repo_root / "params.yaml")
    replay = ReplayPool(None, seed=params.candidates.replay_seed)
    outcomes = replay_outcomes(pool, QUESTIONS, replay)
    assert [o.model for o in outcomes] == list(pool.names)
    cal = training_calibration(params, pool, QUESTIONS)
    for o in outcomes:
        assert o.correct == tuple(replay.correct(pool.get(o.model), q)[0] for q in QUESTIONS)
        assert sum(o.usd) / len(o.usd) == pytest.approx(cal.mean_call_usd[o.model])
    # Every replayed candidate is right on some questions and wrong on others (priors 0.14-0.30).
    assert all(0 < sum(o.correct) < len(QUESTIONS) for o in outcomes)


def test_a_candidate_without_a_replay_profile_is_refused(repo_root: Path) -> None:
    raw = yaml.safe_load((repo_root / "pool.yaml").read_text())
    name = raw["candidates"][0]["name"]
    del raw["candidates"][0]["replay"]
    with pytest.raises(ValueError) as exc:
        replay_outcomes(parse_pool(raw, "test pool"), QUESTIONS[:2], ReplayPool(None))
    assert str(exc.value) == f"candidate {name!r} has no replay profile in the pool file"
