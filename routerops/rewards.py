"""Rewards and metrics: outcome (EM/F1), cost, cost normalisation, combination. Pure functions.

Router-R1's reward hierarchy: an invalid format gives -1 whatever else happened; a valid
response with a wrong or missing answer gives 0; a correct one gives (1 - alpha) + alpha *
cost_norm, where cost_norm is 1 for the cheapest trajectories and 0 for the most expensive.

The cost normaliser is an explicit value, not a module global: training and validation each hold
their own, and its state is saved in checkpoints, so the result never depends on which batches
happened to run before in the same process (a defect of the original code).
"""

from __future__ import annotations

import re
import string
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from routerops.pool import Pool
from routerops.protocol import ROUTER_R1, FormatRules, Segment, ViolationCode, check_format, extract_answer

__all__ = [
    "CallUsage",
    "CostNormalizer",
    "FrozenBoundsNormalizer",
    "RewardBreakdown",
    "ScoreItem",
    "SlidingWindowNormalizer",
    "combine",
    "cost_usd",
    "exact_match",
    "f1_score",
    "normalize_answer",
    "normalizer_from_state",
    "score_batch",
]

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation and articles, fold white space."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str | None, golds: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised gold alias."""
    if prediction is None:
        return 0.0
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in golds))


# Router-R1's (HotpotQA's) F1: a yes/no answer earns nothing unless it is exactly the gold.
_YES_NO = frozenset({"yes", "no", "noanswer"})


def f1_score(prediction: str | None, golds: Sequence[str]) -> float:
    """Best token-level F1 over gold aliases, as Router-R1's `f1_score` (SQuAD tokens; yes, no
    and noanswer only match themselves; an empty side scores 0)."""
    if prediction is None:
        return 0.0
    pred = normalize_answer(prediction)
    pred_toks = pred.split()
    best = 0.0
    for gold in golds:
        g = normalize_answer(gold)
        if (pred in _YES_NO or g in _YES_NO) and pred != g:
            continue
        gold_toks = g.split()
        overlap = sum((Counter(pred_toks) & Counter(gold_toks)).values())
        if overlap == 0:
            continue
        precision, recall = overlap / len(pred_toks), overlap / len(gold_toks)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


# ---------------------------------------------------------------------------------------------
# Cost
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CallUsage:
    """One executed candidate call as far as cost is concerned."""

    model: str
    completion_tokens: int
    prompt_tokens: int = 0

    def __post_init__(self) -> None:
        if self.completion_tokens < 0 or self.prompt_tokens < 0:
            raise ValueError(f"token counts must be >= 0 (model {self.model!r})")


def cost_usd(calls: Sequence[CallUsage], pool: Pool, include_prompt: bool = False) -> float:
    """Dollars of a trajectory: completion tokens x output price (+ prompt x input price).

    Router-R1 ignores prompt tokens and reports micro-dollars (tokens x USD per 1M); we keep USD.
    A model that is not in the pool raises KeyError: a call was executed, so it must be priced.
    """
    return sum(pool.get(c.model).cost_usd(c.completion_tokens, c.prompt_tokens, include_prompt) for c in calls)


@dataclass(frozen=True)
class SlidingWindowNormalizer:
    """Router-R1's normaliser: p5/p95 of sqrt(cost) over the last `window` costs seen.

    `update` appends the batch and then normalises it against the updated window, as the
    original does; it returns the new normaliser instead of mutating anything.
    """

    window: int = 1000
    history: tuple[float, ...] = ()
    mode: Literal["sliding"] = "sliding"

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")

    def update(self, costs: Sequence[float]) -> tuple[list[float], SlidingWindowNormalizer]:
        hist: deque[float] = deque(self.history, maxlen=self.window)
        hist.extend(float(np.sqrt(max(c, 0.0))) for c in costs)
        nxt = SlidingWindowNormalizer(self.window, tuple(hist))
        return _normalise(costs, *_bounds(nxt.history)), nxt

    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "window": self.window, "history": list(self.history)}


@dataclass(frozen=True)
class FrozenBoundsNormalizer:
    """Fixed p5/p95 of sqrt(cost), calibrated once on a reference set (e.g. validation)."""

    p5: float
    p95: float
    mode: Literal["frozen"] = "frozen"

    @classmethod
    def calibrate(cls, reference_costs: Sequence[float]) -> FrozenBoundsNormalizer:
        if not reference_costs:
            raise ValueError("cannot calibrate cost bounds on an empty reference set")
        lo, hi = _bounds(tuple(float(np.sqrt(max(c, 0.0))) for c in reference_costs))
        return cls(lo, hi)

    def update(self, costs: Sequence[float]) -> tuple[list[float], FrozenBoundsNormalizer]:
        return _normalise(costs, self.p5, self.p95), self

    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "p5": self.p5, "p95": self.p95}


CostNormalizer = SlidingWindowNormalizer | FrozenBoundsNormalizer


def normalizer_from_state(state: Mapping[str, Any]) -> CostNormalizer:
    mode = state.get("mode")
    if mode == "sliding":
        return SlidingWindowNormalizer(int(state["window"]), tuple(float(x) for x in state["history"]))
    if mode == "frozen":
        return FrozenBoundsNormalizer(float(state["p5"]), float(state["p95"]))
    raise ValueError(f"unknown normaliser mode {mode!r} (expected 'sliding' or 'frozen')")


def _bounds(sqrt_costs: tuple[float, ...]) -> tuple[float, float]:
    if not sqrt_costs:
        return 0.0, 0.0
    arr = np.asarray(sqrt_costs)
    return float(np.percentile(arr, 5)), float(np.percentile(arr, 95))


def _normalise(costs: Sequence[float], p5: float, p95: float) -> list[float]:
    if p95 - p5 <= 1e-12:
        return [0.5] * len(costs)  # degenerate window: no cost signal either way
    out = []
    for c in costs:
        z = (float(np.sqrt(max(c, 0.0))) - p5) / (p95 - p5)
        out.append(1.0 - min(max(z, 0.0), 1.0))
    return out


# ---------------------------------------------------------------------------------------------
# Combination
# ---------------------------------------------------------------------------------------------


def combine(format_valid: bool, outcome: float, cost_norm: float, alpha: float) -> float:
    """Router-R1's hierarchy: format -1 first; then outcome x ((1 - alpha) + alpha x cost_norm)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if not format_valid:
        return -1.0
    if outcome <= 0.0:
        return 0.0
    return outcome * ((1.0 - alpha) + alpha * cost_norm)


@dataclass(frozen=True)
class ScoreItem:
    """One response to score: flat text or segments, gold aliases, executed calls."""

    response: str | Sequence[Segment]
    golden_answers: Sequence[str]
    calls: Sequence[CallUsage] = ()


@dataclass(frozen=True)
class RewardBreakdown:
    format: float  # 0 when valid, -1 when not (Router-R1's format score)
    em: float
    f1: float
    cost_usd: float
    cost_norm: float
    reward: float
    answer: str | None
    violations: tuple[ViolationCode, ...] = field(default=())

    @property
    def format_valid(self) -> bool:
        return self.format == 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": self.format, "em": self.em, "f1": self.f1, "cost_usd": self.cost_usd,
            "cost_norm": self.cost_norm, "reward": self.reward, "answer": self.answer,
            "violations": [v.value for v in self.violations],
        }


def score_batch(
    items: Sequence[ScoreItem],
    pool: Pool,
    alpha: float | Sequence[float],
    normalizer: CostNormalizer,
    outcome: Literal["em", "f1"] = "em",
    include_prompt: bool = False,
    rules: FormatRules = ROUTER_R1,
) -> tuple[list[RewardBreakdown], CostNormalizer]:
    """Score a batch. Returns the breakdowns and the normaliser after seeing this batch.

    `alpha` is one cost weight for all items or one per item; `rules` are the format rules the
    episodes ran under (`RolloutLimits.rules`).
    """
    if outcome not in ("em", "f1"):
        raise ValueError(f"outcome must be 'em' or 'f1', got {outcome!r}")
    alphas = [float(alpha)] * len(items) if isinstance(alpha, (int, float)) else list(alpha)
    if len(alphas) != len(items):
        raise ValueError(f"{len(alphas)} alphas for {len(items)} items")
    costs = [cost_usd(it.calls, pool, include_prompt) for it in items]
    norms, nxt = normalizer.update(costs)
    out: list[RewardBreakdown] = []
    for it, c, cn, a in zip(items, costs, norms, alphas, strict=True):
        fmt = check_format(it.response, pool, rules)
        answer = extract_answer(it.response)
        em = exact_match(answer, it.golden_answers)
        f1 = f1_score(answer, it.golden_answers)
        reward = combine(fmt.valid, em if outcome == "em" else f1, cn, a)
        out.append(
            RewardBreakdown(0.0 if fmt.valid else -1.0, em, f1, c, cn, reward, answer,
                            tuple(v.code for v in fmt.violations))
        )
    return out, nxt
