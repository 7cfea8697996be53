"""What Router-R1's reward asks for on a pool, before any training: the reward of fixed policies.

A fixed single-model policy asks one candidate once and answers with what its reply states,
copied exactly in a valid format. On each training question it earns Router-R1's reward
`combine(True, correct, cost_norm, alpha)`: its candidate's outcome on that question, and the
cost of that one call normalised by the run's calibrated bounds. Its mean over the training
questions is the reward a router that always picks that model would reach, and the best such
model at each alpha is the reward's own answer to "which model is worth its price". A trained
router whose calls go mostly to another model missed it; an alpha sweep can only sit at distinct
points where that best model changes with alpha.

The per-question oracle (the best reward any one call earns on each question, 0 where no
candidate is right) bounds what routing question by question could add.

Outcomes come from whatever backend decides correctness (the replay pool for the local profile,
`replay_outcomes`); the functions here only combine them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from routerops.candidates.replay import ReplayPool
from routerops.candidates.types import QuestionInfo, candidate_messages
from routerops.pool import Pool
from routerops.rewards import FrozenBoundsNormalizer, combine

__all__ = ["ORACLE", "ModelOutcomes", "Optimum", "PolicyValue", "optimum", "optimum_of", "policy_values",
           "replay_outcomes"]

ORACLE = "per-question oracle"


@dataclass(frozen=True)
class ModelOutcomes:
    """One candidate's outcome and one call's cost (USD) on each question, in question order."""

    model: str
    correct: tuple[bool, ...]
    usd: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.correct) != len(self.usd):
            raise ValueError(f"{self.model}: {len(self.correct)} outcomes but {len(self.usd)} costs")
        if any(u < 0 for u in self.usd):
            raise ValueError(f"{self.model}: a call cannot cost less than 0 USD")


@dataclass(frozen=True)
class PolicyValue:
    """A fixed policy's mean reward, exact match and cost per question at one alpha."""

    policy: str  # a candidate's name, or ORACLE
    alpha: float
    reward: float
    em: float
    usd_per_question: float


@dataclass(frozen=True)
class Optimum:
    """The best single-model policy at one alpha, how far ahead of the next it is, and the oracle."""

    alpha: float
    best: PolicyValue
    runner_up: PolicyValue | None
    oracle: PolicyValue

    @property
    def margin(self) -> float:
        """Reward the best model earns above the runner-up (0 with one candidate)."""
        return self.best.reward - self.runner_up.reward if self.runner_up else 0.0


def _check(outcomes: Sequence[ModelOutcomes]) -> int:
    if not outcomes:
        raise ValueError("no candidates to value")
    names = [o.model for o in outcomes]
    if len(set(names)) != len(names):
        raise ValueError(f"a candidate is given twice: {sorted(n for n in set(names) if names.count(n) > 1)}")
    sizes = {len(o.correct) for o in outcomes}
    if len(sizes) != 1:
        raise ValueError(f"candidates are valued on different question counts: {sorted(sizes)}")
    n = sizes.pop()
    if n == 0:
        raise ValueError("no questions to value the candidates on")
    return n


def policy_values(outcomes: Sequence[ModelOutcomes], normalizer: FrozenBoundsNormalizer,
                  alpha: float) -> list[PolicyValue]:
    """Every single-model policy's value at `alpha`, best first (ties by name), then the oracle."""
    n = _check(outcomes)
    per_question: list[list[float]] = []
    values: list[PolicyValue] = []
    for o in outcomes:
        normed, _ = normalizer.update(o.usd)
        rewards = [combine(True, float(ok), c, alpha) for ok, c in zip(o.correct, normed, strict=True)]
        per_question.append(rewards)
        values.append(PolicyValue(o.model, alpha, sum(rewards) / n, sum(o.correct) / n, sum(o.usd) / n))
    values.sort(key=lambda v: (-v.reward, v.policy))
    # The oracle's call per question: the highest reward, then the cheaper call (a question no
    # candidate answers costs nothing: the oracle would not ask).
    best_reward, best_em, best_usd = 0.0, 0.0, 0.0
    for q in range(n):
        options = [(per_question[i][q], -o.usd[q], i) for i, o in enumerate(outcomes) if o.correct[q]]
        if options:
            reward, neg_usd, _ = max(options)
            best_reward, best_em, best_usd = best_reward + reward, best_em + 1.0, best_usd - neg_usd
    return [*values, PolicyValue(ORACLE, alpha, best_reward / n, best_em / n, best_usd / n)]


def optimum(outcomes: Sequence[ModelOutcomes], normalizer: FrozenBoundsNormalizer, alpha: float) -> Optimum:
    return optimum_of(policy_values(outcomes, normalizer, alpha))


def optimum_of(values: Sequence[PolicyValue]) -> Optimum:
    """The optimum in `policy_values`' output (best first, the oracle last)."""
    singles, oracle = values[:-1], values[-1]
    return Optimum(oracle.alpha, singles[0], singles[1] if len(singles) > 1 else None, oracle)


def replay_outcomes(pool: Pool, questions: Sequence[QuestionInfo], replay: ReplayPool,
                    include_prompt: bool = False) -> list[ModelOutcomes]:
    """Each candidate's replayed outcome on each question, and one call's cost as the training run's
    cost calibration bills it (`routerops.cost_calibration.training_calibration`: the replay's
    length for the question). A router's own sub-question draws another +/-25 % length jitter
    around the same mean, so its cost per call differs from these by that jitter, not on average."""
    out = []
    # Words of the candidate's message stand in for its prompt tokens, as the replay pool counts them.
    prompt = [sum(len(m["content"].split()) for m in candidate_messages(q.text)) for q in questions]
    for c in pool:
        correct = tuple(replay.correct(c, q)[0] for q in questions)
        usd = tuple(c.cost_usd(replay.completion_tokens(c, q, q.text), p, include_prompt)
                    for q, p in zip(questions, prompt, strict=True))
        out.append(ModelOutcomes(c.name, correct, usd))
    return out
