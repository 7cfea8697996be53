"""Challenger against champion under the same (new) prices: promote only a better router.

Both routers answered the same test questions; the champion's calls are re-costed at the new
prices from their stored token counts (no candidate call), the challenger's were made under them.
Each question's Router-R1 reward (format -1, wrong 0, correct (1 - alpha) + alpha x cost_norm)
is computed with one cost normaliser for both, calibrated on every record of both evaluations at
the new prices, so a reward means the same thing on either side. The gain is the challenger's
mean reward minus the champion's, macro-averaged over benchmarks like the evaluation, with the
evaluation's paired bootstrap (questions resampled within each benchmark, the two answers to a
question kept together). Promotion needs the interval's lower end above `min_objective_gain`:
a challenger that is better only within the noise is rejected, with the numbers.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from routerops.evaluation import EvalRecord, stratified_bootstrap
from routerops.pool import Pool
from routerops.price_impact import ROUTER, cost_aware_rewards

__all__ = ["Comparison", "ComparisonError", "PromotionRule", "Verdict", "compare", "render_comparison"]

Verdict = Literal["promote", "reject"]


class ComparisonError(ValueError):
    """The two evaluations cannot be compared (different questions, no router records)."""


@dataclass(frozen=True)
class PromotionRule:
    min_objective_gain: float  # on the mean reward; the gain interval's lower end must exceed it
    samples: int
    confidence: float
    seed: int


@dataclass(frozen=True)
class Comparison:
    pricing_id: str
    questions: int
    champion_objective: float
    challenger_objective: float
    gain: float
    gain_ci: tuple[float, float]
    champion_em: float
    challenger_em: float
    em_gain: float
    em_ci: tuple[float, float]
    champion_usd: float  # per question, at the new prices
    challenger_usd: float
    usd_gain: float  # challenger minus champion; negative is cheaper
    usd_ci: tuple[float, float]
    confidence: float
    samples: int
    min_objective_gain: float
    verdict: Verdict
    reason: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _by_question(records: Sequence[EvalRecord], side: str) -> dict[tuple[str, str], EvalRecord]:
    out = {(r.data_source, r.question_id): r for r in records if r.system == ROUTER}
    if not out:
        raise ComparisonError(f"the {side}'s evaluation has no {ROUTER!r} records")
    return out


def compare(champion: Sequence[EvalRecord], challenger: Sequence[EvalRecord], pool: Pool, *, alpha: float,
            rule: PromotionRule, include_prompt: bool = False) -> Comparison:
    """The challenger minus the champion on the cost-aware objective, EM and USD under `pool`."""
    a, b = _by_question(champion, "champion"), _by_question(challenger, "challenger")
    if a.keys() != b.keys():
        only = sorted(a.keys() ^ b.keys())[:3]
        raise ComparisonError(f"the two evaluations answered different questions ({len(a)} vs {len(b)}; e.g. "
                              f"{', '.join(f'{s}/{q}' for s, q in only)}): compare on the same test split")
    keys = sorted(a)
    reference = [*champion, *challenger]
    ra = cost_aware_rewards([a[k] for k in keys], reference, pool, alpha, include_prompt)
    rb = cost_aware_rewards([b[k] for k in keys], reference, pool, alpha, include_prompt)
    # Per question: the three paired differences, then the champion's own values (their means
    # give the table's champion column; their intervals are not used).
    deltas: dict[str, list[tuple[float, ...]]] = defaultdict(list)
    for k, x, y in zip(keys, ra, rb, strict=True):
        ca, cb = a[k].cost_usd(pool, include_prompt), b[k].cost_usd(pool, include_prompt)
        deltas[k[0]].append((y - x, b[k].em - a[k].em, cb - ca, x, a[k].em, ca))
    means, cis = stratified_bootstrap(deltas, samples=rule.samples, confidence=rule.confidence, seed=rule.seed)
    gain, em, usd, champ, champ_em, champ_usd = means
    lo = cis[0][0]
    if lo > rule.min_objective_gain:
        verdict: Verdict = "promote"
        reason = (f"the challenger's objective is higher by {gain:+.4f} ({rule.confidence:.0%} interval "
                  f"{cis[0][0]:+.4f} to {cis[0][1]:+.4f}, above the threshold {rule.min_objective_gain:+.4f})")
    else:
        verdict = "reject"
        reason = (f"the challenger's objective differs by {gain:+.4f} ({rule.confidence:.0%} interval "
                  f"{cis[0][0]:+.4f} to {cis[0][1]:+.4f}): not above the threshold {rule.min_objective_gain:+.4f} "
                  "beyond the interval")
    return Comparison(pool.pricing.id, len(keys), champ, champ + gain, gain, cis[0], champ_em, champ_em + em, em,
                      cis[1], champ_usd, champ_usd + usd, usd, cis[2], rule.confidence, rule.samples,
                      rule.min_objective_gain, verdict, reason)


def render_comparison(c: Comparison, champion: str, challenger: str) -> str:
    """The comparison as markdown: the verdict first, then the paired differences."""
    level = f"{c.confidence:.0%}"
    return "\n".join([
        f"# Challenger {challenger} vs champion {champion} under pricing {c.pricing_id}", "",
        f"**Verdict: {c.verdict}**: {c.reason}.", "",
        f"Paired over the {c.questions} test questions both answered, macro-averaged over benchmarks; "
        f"{level} intervals from {c.samples} bootstrap resamples within each benchmark. The champion's calls are "
        "re-costed at the new prices (0 candidate calls).", "",
        "| measure | champion | challenger | challenger - champion | interval |", "|---|---:|---:|---:|---|",
        f"| cost-aware objective | {c.champion_objective:.4f} | {c.challenger_objective:.4f} | {c.gain:+.4f} | "
        f"{c.gain_ci[0]:+.4f} to {c.gain_ci[1]:+.4f} |",
        f"| EM | {c.champion_em:.3f} | {c.challenger_em:.3f} | {c.em_gain:+.3f} | "
        f"{c.em_ci[0]:+.3f} to {c.em_ci[1]:+.3f} |",
        f"| micro-USD per question | {c.champion_usd * 1e6:.2f} | {c.challenger_usd * 1e6:.2f} | "
        f"{c.usd_gain * 1e6:+.2f} | {c.usd_ci[0] * 1e6:+.2f} to "
        f"{c.usd_ci[1] * 1e6:+.2f} |", ""])
