"""What a price change does to the champion, measured with zero candidate calls, and what to do.

From the champion's evaluation records (every system's calls with their token counts), under the
old and the new prices:

- EM and USD per question of every system (macro-averaged over benchmarks, as the evaluation
  reports), the price-based baselines (cheapest, most expensive, oracle, kNN) choosing again under
  the new prices from the recorded single calls;
- the champion's cost-aware objective: its mean Router-R1 reward (format -1, wrong 0, correct
  (1 - alpha) + alpha x cost_norm) with the cost normaliser's bounds calibrated on the costs of
  every system's records under the same prices. Router-R1's normaliser is relative, so prices
  scaled by one factor leave the objective as it was;
- the cheapest correct model per question (the oracle's choice, among the questions some single
  model answers): how many questions it changes on.

- how far the models the champion spends on moved in price relative to the pool: the
  spend-weighted mean |ln| change of each model's output price over the pool's geometric mean.
  It sees what the objective can miss: a champion already costlier than every baseline sits at
  the normaliser's ceiling, so its objective barely moves when its only model gets dearer.

The rule (params `retrain`): prices unchanged -> `none`; the cheapest correct model changes on at
least `min_cheapest_correct_changed` of those questions, or the objective falls by more than
`max_objective_drop`, or the relative price shift exceeds `max_relative_price_shift` ->
`retrain`; otherwise -> `reprice` (the same weights, packaged again under the new prices so
billing uses them). A uniform change moves no choice, no objective and no relative price: it
reprices, never retrains.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from routerops.config import RetrainParams
from routerops.evaluation import SINGLE, EvalRecord, KnnEvidence, aggregate, oracle_choice, with_baselines
from routerops.pool import Pool
from routerops.rewards import FrozenBoundsNormalizer, combine

__all__ = ["Decision", "Impact", "RetrainRule", "SystemImpact", "assess", "cost_aware_rewards", "relative_price_shift",
           "render_impact"]

Decision = Literal["none", "reprice", "retrain"]
ROUTER = "router"


@dataclass(frozen=True)
class RetrainRule:
    min_cheapest_correct_changed: float  # share of answerable questions
    max_objective_drop: float  # absolute, on the mean reward
    max_relative_price_shift: float = 0.1  # spend-weighted mean |ln| relative price change

    @classmethod
    def of(cls, params: RetrainParams) -> RetrainRule:
        return cls(params.min_cheapest_correct_changed, params.max_objective_drop, params.max_relative_price_shift)


@dataclass(frozen=True)
class SystemImpact:
    system: str
    em: float
    usd_before: float
    usd_after: float
    em_after: float  # differs from `em` only for a system that chose again


@dataclass(frozen=True)
class Impact:
    old_pricing: str  # pricing id
    new_pricing: str
    price_changes: int  # prices (a model's input or output price) that changed
    systems: tuple[SystemImpact, ...]
    objective_before: float
    objective_after: float
    answerable: int  # questions some single model answers correctly
    cheapest_correct_changed: int
    changed_examples: tuple[tuple[str, str, str], ...]  # (question id, old model, new model), a few
    decision: Decision
    reason: str
    relative_price_shift: float = 0.0

    @property
    def changed_share(self) -> float:
        return self.cheapest_correct_changed / self.answerable if self.answerable else 0.0

    def as_json(self) -> dict[str, Any]:
        return {"old_pricing": self.old_pricing, "new_pricing": self.new_pricing, "price_changes": self.price_changes,
                "systems": [vars(s) for s in self.systems], "objective_before": self.objective_before,
                "objective_after": self.objective_after, "answerable": self.answerable,
                "cheapest_correct_changed": self.cheapest_correct_changed, "changed_share": self.changed_share,
                "changed_examples": [list(x) for x in self.changed_examples], "decision": self.decision,
                "reason": self.reason, "relative_price_shift": self.relative_price_shift}


def cost_aware_rewards(records: Sequence[EvalRecord], reference: Sequence[EvalRecord], pool: Pool, alpha: float,
                       include_prompt: bool) -> list[float]:
    """Each record's Router-R1 reward under `pool`, the cost normaliser's bounds calibrated on the
    costs of `reference` (every system's records) under the same prices."""
    norm = FrozenBoundsNormalizer.calibrate([r.cost_usd(pool, include_prompt) for r in reference])
    normed, _ = norm.update([r.cost_usd(pool, include_prompt) for r in records])
    return [combine(r.format_valid, r.em, n, alpha) for r, n in zip(records, normed, strict=True)]


def _objective(records: Sequence[EvalRecord], reference: Sequence[EvalRecord], pool: Pool, alpha: float,
               include_prompt: bool) -> float:
    rewards = cost_aware_rewards(records, reference, pool, alpha, include_prompt)
    return sum(rewards) / len(rewards) if rewards else 0.0


def _cheapest_correct(records: Iterable[EvalRecord], pool: Pool) -> dict[str, str]:
    singles: dict[str, dict[str, EvalRecord]] = defaultdict(dict)
    for r in records:
        if r.system.startswith(SINGLE):
            singles[r.question_id][r.system.removeprefix(SINGLE)] = r
    return {q: oracle_choice(by_model, pool) for q, by_model in sorted(singles.items())
            if any(r.em > 0 for r in by_model.values())}


def relative_price_shift(records: Sequence[EvalRecord], old: Pool, new: Pool, include_prompt: bool = False) -> float:
    """The spend-weighted (under `old`) mean |ln| change of each model's output price relative to
    the pool's geometric mean output price, over the calls in `records`. Scale-free: 0 when every
    price moves by one factor; 0 when nothing was spent."""
    def relative(pool: Pool) -> dict[str, float]:
        logs = {c.name: math.log(c.price.output_usd_per_mtok) for c in pool if c.price.output_usd_per_mtok > 0}
        mean = sum(logs.values()) / len(logs) if logs else 0.0
        return {m: v - mean for m, v in logs.items()}

    before, after = relative(old), relative(new)
    spend: dict[str, float] = defaultdict(float)
    for r in records:
        for c in r.calls:
            if c.ok:
                spend[c.model] += old.get(c.model).cost_usd(c.completion_tokens, c.prompt_tokens, include_prompt)
    total = sum(spend.values())
    if total <= 0:
        return 0.0
    return sum(usd * abs(after.get(m, 0.0) - before.get(m, 0.0)) for m, usd in spend.items()) / total


def _price_changes(old: Pool, new: Pool) -> int:
    n = 0
    for c in old:
        p = new.get(c.name).price
        n += p.input_usd_per_mtok != c.price.input_usd_per_mtok
        n += p.output_usd_per_mtok != c.price.output_usd_per_mtok
    return n


def assess(records: Sequence[EvalRecord], old: Pool, new: Pool, *, alpha: float, rule: RetrainRule, seed: int,
           knn: KnnEvidence | None = None, include_prompt: bool = False) -> Impact:
    """The impact of moving from `old` to `new` prices on the evaluation in `records`, and the
    decision. Every number is recomputed from stored token counts: no candidate is called. `seed`
    and `knn` are the evaluation's (its random baseline's seed, the kNN fit evidence)."""
    missing = sorted({c.model for r in records for c in r.calls if c.ok} - set(new.names))
    if missing:
        raise ValueError(f"{new.source_file}: no price for model(s) {', '.join(missing)} that the evaluation called")
    old_records = with_baselines(records, old, seed=seed, knn=knn, include_prompt=include_prompt)
    new_records = with_baselines(records, new, seed=seed, knn=knn, include_prompt=include_prompt)
    before = {m.system: m for m in aggregate(old_records, old, include_prompt) if m.data_source == "average"}
    after = {m.system: m for m in aggregate(new_records, new, include_prompt) if m.data_source == "average"}
    systems = tuple(SystemImpact(s, before[s].em, before[s].usd_per_question, after[s].usd_per_question,
                                 after[s].em) for s in sorted(before))
    router = [r for r in records if r.system == ROUTER]
    obj_before = _objective(router, old_records, old, alpha, include_prompt)
    obj_after = _objective(router, new_records, new, alpha, include_prompt)
    choice_before, choice_after = _cheapest_correct(records, old), _cheapest_correct(records, new)
    changed = [(q, m, choice_after[q]) for q, m in choice_before.items() if choice_after[q] != m]
    n_prices = _price_changes(old, new)
    share = len(changed) / len(choice_before) if choice_before else 0.0
    drop = obj_before - obj_after
    shift = relative_price_shift(router, old, new, include_prompt)
    decision: Decision
    if n_prices == 0:
        decision, reason = "none", "no price changed"
    elif share >= rule.min_cheapest_correct_changed:
        decision, reason = "retrain", (f"the cheapest correct model changed on {share:.1%} of the answerable questions "
                                       f"(threshold {rule.min_cheapest_correct_changed:.1%})")
    elif drop > rule.max_objective_drop:
        decision, reason = "retrain", (f"the champion's cost-aware objective fell by {drop:.4f} (threshold "
                                       f"{rule.max_objective_drop:.4f})")
    elif shift > rule.max_relative_price_shift:
        decision, reason = "retrain", (f"the models the champion spends on moved {shift:.3f} in relative price "
                                       "(spend-weighted mean |ln| change; threshold "
                                       f"{rule.max_relative_price_shift:.3f})")
    else:
        decision, reason = "reprice", (f"{n_prices} price(s) changed, but the cheapest correct model changed on only "
                                       f"{share:.1%} of the answerable questions, the objective moved by "
                                       f"{round(-drop, 4) + 0.0:+.4f} and the champion's models {shift:.3f} in "
                                       "relative price: the same weights, repackaged under the new prices")
    return Impact(old.pricing.id, new.pricing.id, n_prices, systems, obj_before, obj_after, len(choice_before),
                  len(changed), tuple(changed[:5]), decision, reason, shift)


def render_impact(impact: Impact, old_label: str, new_label: str) -> str:
    """The impact as markdown: the decision first, then the table."""
    i = impact
    lines = [f"# Price change: {old_label} -> {new_label}", "",
             f"**Decision: {i.decision}**: {i.reason}.", "",
             f"- prices: {i.old_pricing} -> {i.new_pricing} ({i.price_changes} price(s) changed); computed from "
             "the champion's evaluation with 0 candidate calls",
             f"- champion's cost-aware objective: {i.objective_before:.4f} -> {i.objective_after:.4f} "
             f"({round(i.objective_after - i.objective_before, 4) + 0.0:+.4f})",
             f"- cheapest correct model changed on {i.cheapest_correct_changed} of {i.answerable} answerable "
             f"questions ({i.changed_share:.1%})",
             f"- the champion's models moved {i.relative_price_shift:.3f} in price relative to the pool "
             "(spend-weighted mean |ln| change)"]
    lines += [f"  - {q}: {a} -> {b}" for q, a, b in i.changed_examples]
    lines += ["", "Cheapest, most expensive, oracle and kNN choose again under the new prices; the router's "
              "and each single model's calls are re-costed.", "",
              "| system | EM before | after | micro-USD/question before | after | change |",
              "|---|---:|---:|---:|---:|---:|"]
    for s in i.systems:
        change = f"{(s.usd_after / s.usd_before - 1) * 100:+.1f}%" if s.usd_before else "n/a"
        lines.append(f"| {s.system} | {s.em:.3f} | {s.em_after:.3f} | {s.usd_before * 1e6:.2f} | "
                     f"{s.usd_after * 1e6:.2f} | {change} |")
    return "\n".join(lines) + "\n"
