from __future__ import annotations

import math

import pytest

from routerops.rewards import (
    CallUsage,
    FrozenBoundsNormalizer,
    ScoreItem,
    SlidingWindowNormalizer,
    combine,
    cost_usd,
    exact_match,
    f1_score,
    normalize_answer,
    normalizer_from_state,
    score_batch,
)

Q = "Qwen2.5-7B-Instruct"


@pytest.mark.parametrize(("text", "norm"), [
    ("The Eiffel Tower!", "eiffel tower"),
    ("  an   Apple, a day ", "apple day"),
    ("Théâtre", "théâtre"),
    ("", ""),
])
def test_squad_normalisation(text: str, norm: str) -> None:
    assert normalize_answer(text) == norm


@pytest.mark.parametrize(("pred", "golds", "em"), [
    ("Paris", ["paris"], 1.0),
    ("the Paris", ["Paris, France", "Paris"], 1.0),
    ("Paris France", ["Paris"], 0.0),
    (None, ["Paris"], 0.0),
    ("Sammy Davis Jr.", ["Sammy Davis, Jr"], 1.0),
])
def test_exact_match_over_aliases(pred, golds, em) -> None:
    assert exact_match(pred, golds) == em


def test_f1_takes_best_alias() -> None:
    assert f1_score("Paris France", ["Paris", "Lyon"]) == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert f1_score("x", ["y"]) == 0.0 and f1_score(None, ["y"]) == 0.0


@pytest.mark.parametrize(("prediction", "golds", "f1"), [
    # Router-R1's f1_score: yes, no and noanswer match only themselves
    ("yes", ["yes it is"], 0.0),
    ("yes it is", ["yes"], 0.0),
    ("Yes.", ["yes"], 1.0),
    ("no", ["yes"], 0.0),
    # an empty side scores 0, even against an empty gold
    ("", ["Paris"], 0.0),
    ("the", [""], 0.0),
    ("Paris", [], 0.0),
])
def test_f1_follows_router_r1(prediction, golds, f1) -> None:
    assert f1_score(prediction, golds) == pytest.approx(f1)


def test_cost_is_completion_tokens_times_output_price(pool) -> None:
    calls = [CallUsage(Q, 100, 50), CallUsage("Mixtral-8x22B-Instruct", 10, 0)]
    assert cost_usd(calls, pool) == pytest.approx(100 * 0.30e-6 + 10 * 1.20e-6)
    assert cost_usd(calls, pool, include_prompt=True) == pytest.approx(100 * 0.30e-6 + 50 * 0.30e-6 + 10 * 1.20e-6)


def test_cost_of_unpriced_model_is_an_error(pool) -> None:
    with pytest.raises(KeyError, match="GPT-9"):
        cost_usd([CallUsage("GPT-9", 1)], pool)


def test_negative_tokens_rejected() -> None:
    with pytest.raises(ValueError, match="token counts"):
        CallUsage(Q, -1)


# Router-R1's hierarchy: format first, then correctness, then cost.
@pytest.mark.parametrize(("fmt", "outcome", "cost_norm", "alpha", "reward"), [
    (False, 1.0, 1.0, 0.0, -1.0),
    (False, 0.0, 0.0, 0.9, -1.0),
    (True, 0.0, 1.0, 0.9, 0.0),
    (True, 1.0, 0.0, 0.0, 1.0),
    (True, 1.0, 0.0, 0.6, 0.4),
    (True, 1.0, 1.0, 0.6, 1.0),
    (True, 1.0, 0.5, 0.9, 0.1 + 0.45),
    (True, 0.5, 1.0, 0.0, 0.5),  # F1 outcome scales the reward
])
def test_combine_hierarchy(fmt, outcome, cost_norm, alpha, reward) -> None:
    assert combine(fmt, outcome, cost_norm, alpha) == pytest.approx(reward)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, math.nan])
def test_combine_rejects_bad_alpha(alpha) -> None:
    with pytest.raises(ValueError, match="alpha"):
        combine(True, 1.0, 0.5, alpha)


def test_sliding_normaliser_is_explicit_and_deterministic() -> None:
    costs = [0.0, 1e-6, 4e-6, 9e-6, 16e-6]
    a, state_a = SlidingWindowNormalizer().update(costs)
    b, state_b = SlidingWindowNormalizer().update(costs)
    assert a == b and state_a == state_b
    assert a[0] == 1.0 and a[-1] == 0.0  # cheapest -> 1, dearest -> 0
    assert a == sorted(a, reverse=True)


def test_normaliser_has_no_hidden_shared_state() -> None:
    # Router-R1 kept one global window for training and validation; here each holds its own.
    train = SlidingWindowNormalizer()
    _, train = train.update([1e-3] * 50)
    val_fresh, _ = SlidingWindowNormalizer().update([1e-6, 2e-6])
    val_again, _ = SlidingWindowNormalizer().update([1e-6, 2e-6])
    assert val_fresh == val_again
    assert len(train.history) == 50


def test_sliding_window_forgets_old_costs() -> None:
    n = SlidingWindowNormalizer(window=3)
    _, n = n.update([1.0, 2.0, 3.0, 4.0])
    assert n.history == pytest.approx((math.sqrt(2), math.sqrt(3), 2.0))


def test_degenerate_window_gives_half() -> None:
    out, _ = SlidingWindowNormalizer().update([5e-6, 5e-6, 5e-6])
    assert out == [0.5, 0.5, 0.5]
    assert FrozenBoundsNormalizer(1.0, 1.0).update([3.0])[0] == [0.5]


def test_frozen_bounds_calibrated_once() -> None:
    norm = FrozenBoundsNormalizer.calibrate([0.0, 1e-6, 1e-4, 4e-4])
    first, same = norm.update([1e-4])
    assert same is norm and norm.update([1e-4])[0] == first
    with pytest.raises(ValueError, match="empty"):
        FrozenBoundsNormalizer.calibrate([])


def test_normaliser_state_round_trip() -> None:
    _, n = SlidingWindowNormalizer(window=10).update([1e-6, 3e-6])
    assert normalizer_from_state(n.state_dict()) == n
    f = FrozenBoundsNormalizer(0.001, 0.01)
    assert normalizer_from_state(f.state_dict()) == f
    with pytest.raises(ValueError, match="unknown normaliser mode"):
        normalizer_from_state({"mode": "global"})


def test_score_batch_breakdown(pool) -> None:
    good = f"<think>t</think><search>{Q}: q</search>\n\n<information>It is Paris.</information>\n\n<think>t</think><answer>Paris</answer>"
    items = [
        ScoreItem(good, ["Paris"], [CallUsage(Q, 100)]),
        ScoreItem(good, ["Paris"], [CallUsage("Mixtral-8x22B-Instruct", 1000)]),
        ScoreItem(good.replace("Paris</answer>", "Lyon</answer>"), ["Paris"], [CallUsage(Q, 10)]),
        ScoreItem("<answer>Paris</answer>", ["Paris"], []),
    ]
    out, state = score_batch(items, pool, 0.5, SlidingWindowNormalizer())
    assert [r.format for r in out] == [0.0, 0.0, 0.0, -1.0]
    assert [r.em for r in out] == [1.0, 1.0, 0.0, 1.0]
    assert out[0].reward > out[1].reward > 0.0  # same answer, cheaper route wins
    assert out[2].reward == 0.0 and out[3].reward == -1.0
    assert out[1].cost_usd == pytest.approx(1000 * 1.2e-6)
    assert len(state.history) == 4
    assert out[3].as_dict()["violations"] == ["not_start_with_think", "no_think"]


def test_score_batch_per_item_alpha(pool) -> None:
    good = "<think>t</think><answer>Paris</answer>"
    out, _ = score_batch([ScoreItem(good, ["Paris"])] * 2, pool, [0.0, 1.0], FrozenBoundsNormalizer(0.0, 1.0))
    assert [r.reward for r in out] == [1.0, 1.0]
    with pytest.raises(ValueError, match="alphas"):
        score_batch([ScoreItem(good, ["Paris"])], pool, [0.1, 0.2], SlidingWindowNormalizer())
