"""The challenger's comparison with the champion: promote only beyond the paired interval."""

from __future__ import annotations

from pathlib import Path

import pytest

from routerops.candidates.types import CallOrigin
from routerops.challenger import ComparisonError, PromotionRule, compare, render_comparison
from routerops.evaluation import Call, EvalRecord
from routerops.pool import load_pool

POOL = load_pool(Path(__file__).resolve().parents[2] / "pool.yaml")
RULE = PromotionRule(min_objective_gain=0.0, samples=500, confidence=0.95, seed=0)
_BY_PRICE = sorted(POOL, key=lambda c: c.price.output_usd_per_mtok)
CHEAP, DEAR = _BY_PRICE[0].name, _BY_PRICE[-1].name


def _router(q: int, right: bool, model: str = CHEAP, source: str = "nq", valid: bool = True) -> EvalRecord:
    return EvalRecord("router", f"{source}:{q}", source, "q?", ("Paris",), "Paris" if right else "Rome", valid,
                      (Call(model, CallOrigin.HTTP, 20),))


def _eval(n: int, wrong: set[int] = frozenset(), model: str = CHEAP) -> list[EvalRecord]:  # type: ignore[assignment]
    return [_router(q, q not in wrong, model, src) for src in ("nq", "hotpotqa") for q in range(n)]


def test_the_same_router_is_rejected_with_a_zero_gain() -> None:
    c = compare(_eval(30, {1, 2}), _eval(30, {1, 2}), POOL, alpha=0.6, rule=RULE)
    assert (c.verdict, c.questions, c.gain, c.gain_ci) == ("reject", 60, 0.0, (0.0, 0.0))
    assert c.reason == ("the challenger's objective differs by +0.0000 (95% interval +0.0000 to +0.0000): not above "
                        "the threshold +0.0000 beyond the interval")


def test_a_challenger_right_on_more_questions_is_promoted() -> None:
    c = compare(_eval(40, set(range(12))), _eval(40, {0}), POOL, alpha=0.6, rule=RULE)
    assert c.verdict == "promote" and c.gain_ci[0] > 0
    assert c.champion_em == pytest.approx(28 / 40) and c.challenger_em == pytest.approx(39 / 40)
    assert c.em_gain == pytest.approx(11 / 40) and c.usd_gain == 0.0
    assert "**Verdict: promote**" in render_comparison(c, "v0.1.0", "abc")


def test_the_same_answers_at_a_lower_price_are_promoted_at_alpha_but_not_at_zero() -> None:
    dear, cheap = _eval(40, {0, 1}, DEAR), _eval(40, {0, 1}, CHEAP)
    c = compare(dear, cheap, POOL, alpha=0.6, rule=RULE)
    assert c.verdict == "promote" and c.usd_gain < 0 and c.em_gain == 0.0
    # at alpha 0 cost earns nothing: the same EM is no gain
    assert compare(dear, cheap, POOL, alpha=0.0, rule=RULE).verdict == "reject"


def test_a_small_gain_within_the_noise_is_rejected() -> None:
    champion = _eval(40, {0, 5, 9, 14})
    challenger = _eval(40, {5, 9, 20})  # fixes two, breaks one: one question better per benchmark
    c = compare(champion, challenger, POOL, alpha=0.6, rule=RULE)
    assert c.verdict == "reject" and c.gain > 0 and c.gain_ci[0] <= 0


def test_a_threshold_above_the_interval_rejects_a_clear_gain() -> None:
    rule = PromotionRule(min_objective_gain=0.5, samples=500, confidence=0.95, seed=0)
    assert compare(_eval(40, set(range(12))), _eval(40, {0}), POOL, alpha=0.6, rule=rule).verdict == "reject"


def test_format_failures_score_minus_one() -> None:
    champion = [_router(q, True, valid=q >= 20) for q in range(40)]
    c = compare(champion, _eval(40)[:40], POOL, alpha=0.6, rule=RULE)
    assert c.verdict == "promote" and c.gain == pytest.approx(20 / 40 * (1 + 0.4 + 0.6 * 1.0), abs=0.3)


@pytest.mark.parametrize(("champion", "challenger", "message"), [
    (_eval(5), _eval(6), r"^the two evaluations answered different questions \(10 vs 12; e\.g\. hotpotqa/hotpotqa:5, "
                         r"nq/nq:5\): compare on the same test split$"),
    ([], _eval(5), r"^the champion's evaluation has no 'router' records$"),
    (_eval(5), [], r"^the challenger's evaluation has no 'router' records$"),
])
def test_evaluations_that_cannot_be_compared(champion, challenger, message) -> None:
    with pytest.raises(ComparisonError, match=message):
        compare(champion, challenger, POOL, alpha=0.6, rule=RULE)
