"""Offline replay pool: candidate replies without a network, grounded in measured quality.

For a (model, question) pair found in the real quality matrix (../shared/data/pool/, nine
NIM-served models scored per question) the record decides: a score >= 0.5 is correct (NQ/TriviaQA
rows there are F1-style, mostly 0 or 1). Otherwise correctness is drawn at the candidate's
per-source prior in pool.yaml, deterministically from hashes of (model, question, seed), through
a latent difficulty every candidate shares on that question, fitted on the matrix so that models
agree as the matrix's do (`routerops.candidates.latent`; on matrix questions the latent is
inferred from the records). Correctness is keyed on the episode's question, not the router's
sub-question: the sub-question is the router's paraphrase of the same need.

Calibration (on by default). The recorded scores are F1-style and far more lenient than the
exact match the priors (Router-R1's per-benchmark numbers) measure: on NQ the three recorded
models score 0.35-0.46 against priors of 0.14-0.24. Mixed raw, they hand the recorded models a
2x edge over the unrecorded ones on matrix questions only, so a router trained there learns a
ranking that is wrong everywhere else. Calibrated, each recorded (model, source) keeps its
records' choice of *which* questions it gets right, but a recorded success stands with
probability prior / recorded rate (or a recorded failure is lifted with the complementary
probability when the prior is higher), so every model's rate per source equals its prior; which
successes go is decided by the latent difficulty (the hardest first), not by independent coins,
so calibrated models keep agreeing with one another.

Provenance. Each reply says where its outcome came from (`CallOrigin`): a recorded score as
is, a recorded score that calibration changed (that outcome is a coin flip, not a record), or
a draw from the prior; `ReplayStats` counts the three.

A correct reply to a router's call states a gold alias in a sentence; a wrong one states another
answer of the same source or declines. Completion tokens follow the candidate's mean (Router-R1's
implied tokens per helper call) with deterministic +/-25 % jitter, so cost is realistic even
though the reply text is one sentence. A baseline's direct-answer call (`CallTask.DIRECT`) gets
`Answer: X` (X a gold alias when correct, another answer or `unknown` when not) and is billed for
the tokens of that line: a short answer is what the instruction asks for. The priors are
Router-R1's measured single-model exact match, so an extractable answer on every correct reply
reproduces them; how real replies are read is `routerops.evaluation.direct_answer`'s job.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from routerops.candidates.client import approx_token_count
from routerops.candidates.latent import FactorFit, LatentOutcomes, fit_loadings, threshold
from routerops.candidates.types import (
    CallContext,
    CallOrigin,
    CallResult,
    CallTask,
    CandidateFailure,
    CandidateReply,
    FailureKind,
    QuestionInfo,
    candidate_messages,
)
from routerops.pool import Candidate

__all__ = ["CORRECT_TEMPLATES", "DECLINE_TEMPLATES", "WRONG_TEMPLATES", "QualityMatrix", "ReplayPool", "ReplayStats",
           "question_key"]

# The matrix's task names for the sources this project uses.
_TASK_TO_SOURCE = {"natural_qa": "nq", "trivia_qa": "triviaqa"}
CORRECT_THRESHOLD = 0.5

# The answer always follows a space: byte-level BPE then gives it the same tokens as in a router's
# `<answer> X</answer>`, so answering is a token-for-token copy (see policy.answer_turn).
CORRECT_TEMPLATES = (
    "The answer is {a}.",
    "It is {a}.",
    "That would be {a}.",
    "As far as I know, the answer is {a}.",
    "I am fairly sure it is {a}.",
)
WRONG_TEMPLATES = (
    "The answer is {a}.",
    "I believe it is {a}.",
    "It is most likely {a}.",
)
DECLINE_TEMPLATES = (
    "I am not certain about this and cannot give a reliable answer.",
    "I do not have enough information to answer that.",
)


def question_key(text: str) -> str:
    """Matching key for questions across files: case- and space-folded, no trailing '?'."""
    return " ".join(text.split()).casefold().rstrip("?").strip()


def _below(y: float, prior: float) -> bool:
    """Correct: y under the prior's threshold (exactly never at 0, always at 1)."""
    return prior >= 1.0 or (prior > 0.0 and y < threshold(prior))


# One fit per loaded matrix (it takes about half a second): keyed by identity, the matrix kept.
_FITS: dict[int, tuple[QualityMatrix, dict[str, FactorFit]]] = {}


def _fits(matrix: QualityMatrix) -> dict[str, FactorFit]:
    hit = _FITS.get(id(matrix))
    if hit is None or hit[0] is not matrix:
        hit = _FITS[id(matrix)] = (matrix, matrix.fit())
    return hit[1]


def _unit(*parts: object) -> float:
    """A deterministic number in [0, 1) from the parts (SHA-256, first 8 bytes)."""
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


@dataclass(frozen=True)
class QualityMatrix:
    """Recorded correctness per (matrix model, question key), and each question's source."""

    scores: Mapping[str, Mapping[str, float]]
    sources: Mapping[str, str]
    questions: Mapping[str, QuestionInfo]  # the matrix's own questions with their gold answer
    splits: Mapping[str, str]  # the matrix's split of each question: train or test

    @classmethod
    def load(cls, pool_dir: str | Path) -> QualityMatrix:
        d = Path(pool_dir)
        task_of: dict[str, str] = {}
        infos: dict[str, QuestionInfo] = {}
        split_of: dict[str, str] = {}
        for split in ("train", "test"):
            path = d / f"llmrouter_queries_{split}.jsonl"
            with path.open(encoding="utf-8") as fh:
                for lineno, line in enumerate(fh, 1):
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise ValueError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
                    source = _TASK_TO_SOURCE.get(row.get("task_name", ""))
                    if source:
                        key = question_key(row["query"])
                        task_of[key] = source
                        split_of[key] = split
                        infos[key] = QuestionInfo(f"llmrouter-{split}-{lineno}", row["query"], source,
                                                  (str(row["ground_truth"]),))
        scores: dict[str, dict[str, float]] = {}
        for split in ("train", "test"):
            path = d / f"llmrouter_quality_{split}.json"
            for row in json.loads(path.read_text(encoding="utf-8")):
                key = question_key(row["question"])
                if key in task_of:
                    scores[key] = {m: float(s) for m, s in row["scores"].items()}
        return cls(scores, {k: task_of[k] for k in scores}, {k: infos[k] for k in scores},
                   {k: split_of[k] for k in scores})

    def held_out(self) -> list[QuestionInfo]:
        """The matrix's test-split questions (by source, then key): an evaluation slice where
        recorded outcomes decide, never used for training or for the fit."""
        keys = sorted((k for k, s in self.splits.items() if s == "test"), key=lambda k: (self.sources[k], k))
        return [self.questions[k] for k in keys]

    def outcomes(self, source: str, split: str = "train") -> tuple[tuple[str, ...], np.ndarray]:
        """The models and the correct/incorrect table (questions x models) of one source's split,
        over the questions every model was scored on."""
        keys = [k for k in sorted(self.scores) if self.sources[k] == source and self.splits[k] == split]
        models = tuple(sorted({m for k in keys for m in self.scores[k]}))
        rows = [[self.scores[k][m] >= CORRECT_THRESHOLD for m in models] for k in keys
                if all(m in self.scores[k] for m in models)]
        return models, np.array(rows, dtype=bool).reshape(len(rows), len(models))

    def fit(self) -> dict[str, FactorFit]:
        """The latent-difficulty loadings per source, fitted on the train split (`latent`)."""
        out: dict[str, FactorFit] = {}
        for source in sorted(set(self.sources.values())):
            models, table = self.outcomes(source)
            if table.shape[0] >= 2 and len(models) >= 2:
                out[source] = fit_loadings(source, models, table)
        return out

    def recorded(self, matrix_model: str, question: str) -> float | None:
        row = self.scores.get(question_key(question))
        return None if row is None else row.get(matrix_model)

    def __len__(self) -> int:
        return len(self.scores)


@dataclass
class ReplayStats:
    recorded: int = 0  # a recorded score's outcome, as recorded
    calibrated: int = 0  # a recorded score's outcome changed by calibration
    prior: int = 0  # drawn from the prior
    per_model: Counter[str] = field(default_factory=Counter)

    @property
    def calls(self) -> int:
        return self.recorded + self.calibrated + self.prior

    @property
    def replayed_share(self) -> float:
        """Share of calls whose outcome is a recorded score's, unchanged."""
        return self.recorded / self.calls if self.calls else 0.0

    def count(self, origin: CallOrigin) -> None:
        if origin is CallOrigin.REPLAY_RECORDED:
            self.recorded += 1
        elif origin is CallOrigin.REPLAY_CALIBRATED:
            self.calibrated += 1
        else:
            self.prior += 1

    def by_origin(self) -> dict[str, int]:
        """The counts under the `CallOrigin` values the evaluation's provenance uses."""
        return {CallOrigin.REPLAY_RECORDED.value: self.recorded, CallOrigin.REPLAY_CALIBRATED.value: self.calibrated,
                CallOrigin.REPLAY_PRIOR.value: self.prior}

    def summary(self) -> dict[str, object]:
        return {"calls": self.calls, "recorded_as_is": self.recorded, "recorded_changed_by_calibration":
                self.calibrated, "drawn_from_priors": self.prior, "replayed_share": round(self.replayed_share, 4),
                "per_model": dict(self.per_model)}


class ReplayPool:
    """A CandidateBackend that answers from recorded quality and priors; never touches a network.

    `distractors` maps a data source to answers of that source, used for plausible wrong replies.
    """

    def __init__(self, matrix: QualityMatrix | None, distractors: Mapping[str, Sequence[str]] | None = None,
                 seed: int = 0, decline_share: float = 0.25, calibrate: bool = True, correlated: bool = True) -> None:
        """`correlated`: outcomes share each question's latent difficulty, fitted on the matrix
        (`routerops.candidates.latent`); False draws every (model, question) independently."""
        if not 0.0 <= decline_share <= 1.0:
            raise ValueError(f"decline_share must be in [0, 1], got {decline_share}")
        self.matrix = matrix
        self.distractors = {k: tuple(v) for k, v in (distractors or {}).items() if v}
        self.seed = seed
        self.decline_share = decline_share
        self.calibrate = calibrate
        self.correlated = correlated
        self.stats = ReplayStats()
        self._rates: dict[tuple[str, str], float] = {}
        self.fits = _fits(matrix) if matrix is not None and correlated else {}
        self.latent = LatentOutcomes(self.fits, seed)

    @staticmethod
    def distractors_from(questions: Iterable[QuestionInfo]) -> dict[str, list[str]]:
        bank: dict[str, list[str]] = {}
        for q in questions:
            if q.golden_answers:
                bank.setdefault(q.data_source, []).append(q.golden_answers[0])
        return bank

    def correct(self, candidate: Candidate, question: QuestionInfo) -> tuple[bool, CallOrigin]:
        """(is the reply correct, where that came from: a record as is, a record calibration
        changed, or a draw from the prior). See the module docstring and `latent`."""
        profile = candidate.replay
        if profile is None:
            raise ValueError(f"candidate {candidate.name!r} has no replay profile in the pool file")
        key = question_key(question.text)
        row = self.matrix.scores.get(key) if self.matrix is not None else None
        source = self.matrix.sources[key] if row is not None and self.matrix is not None else question.data_source
        records = None if row is None else {m: s >= CORRECT_THRESHOLD for m, s in row.items()}
        z = self.latent.latent(key, _unit("latent", key, self.seed), records, source)
        loading = self.latent.loading(profile.matrix_model, source)
        prior = profile.prior_for(source)
        if records is not None and profile.matrix_model in records:
            recorded = records[profile.matrix_model]
            if not self.calibrate:
                return recorded, CallOrigin.REPLAY_RECORDED
            rate = self.recorded_rate(profile.matrix_model, source)
            y = LatentOutcomes.noise_given_record(loading, z, rate, recorded,
                                                  _unit("calibrate", candidate.name, key, self.seed))
            ok = _below(y, prior)
            return ok, CallOrigin.REPLAY_RECORDED if ok == recorded else CallOrigin.REPLAY_CALIBRATED
        y = LatentOutcomes.noise(loading, z, _unit("correct", candidate.name, key, self.seed))
        return _below(y, prior), CallOrigin.REPLAY_PRIOR

    def recorded_rate(self, matrix_model: str, source: str) -> float:
        """Share of the matrix's `source` questions where `matrix_model` scored as correct."""
        if (matrix_model, source) not in self._rates:
            assert self.matrix is not None
            rows = [row[matrix_model] for k, row in self.matrix.scores.items()
                    if self.matrix.sources[k] == source and matrix_model in row]
            self._rates[(matrix_model, source)] = (
                sum(v >= CORRECT_THRESHOLD for v in rows) / len(rows) if rows else 0.0)
        return self._rates[(matrix_model, source)]

    def reply_text(self, candidate: Candidate, question: QuestionInfo, correct: bool,
                   task: CallTask = CallTask.HELP) -> str:
        key = question_key(question.text)
        u = _unit("text", candidate.name, key, self.seed)
        direct = task is CallTask.DIRECT
        if correct and question.golden_answers:
            gold = question.golden_answers[int(u * len(question.golden_answers))]
            return f"Answer: {gold}" if direct else CORRECT_TEMPLATES[int(u * 997) % len(CORRECT_TEMPLATES)].format(
                a=gold)
        bank = [a for a in self.distractors.get(question.data_source, ())
                if a not in question.golden_answers]
        if bank and _unit("decline", candidate.name, key, self.seed) >= self.decline_share:
            wrong = bank[int(_unit("wrong", candidate.name, key, self.seed) * len(bank))]
            return f"Answer: {wrong}" if direct else WRONG_TEMPLATES[int(u * 991) % len(WRONG_TEMPLATES)].format(
                a=wrong)
        return "Answer: unknown" if direct else DECLINE_TEMPLATES[int(u * 983) % len(DECLINE_TEMPLATES)]

    def completion_tokens(self, candidate: Candidate, question: QuestionInfo, query: str) -> int:
        assert candidate.replay is not None
        jitter = 0.75 + 0.5 * _unit("tokens", candidate.name, question_key(question.text), query, self.seed)
        return max(1, min(candidate.max_tokens, round(candidate.replay.mean_completion_tokens * jitter)))

    async def call(self, candidate: Candidate, query: str, context: CallContext | None = None) -> CallResult:
        budget = context.budget if context else None
        if budget is not None:
            refusal = budget.check()
            if refusal:
                return CandidateFailure(candidate.name, FailureKind.BUDGET, None, 0, refusal)
        question = context.question if context and context.question else QuestionInfo(id=query, text=query)
        task = context.task if context else CallTask.HELP
        correct, origin = self.correct(candidate, question)
        self.stats.count(origin)
        self.stats.per_model[candidate.name] += 1
        text = self.reply_text(candidate, question, correct, task)
        # Word count stands in for the candidate's prompt tokens: Router-R1's cost ignores them,
        # and they only matter with include_prompt, where a real endpoint reports them.
        prompt_tokens = sum(len(m["content"].split()) for m in candidate_messages(query, task))
        # A direct answer is billed for its line (plus the end token), a helper reply for the
        # candidate's measured mean length.
        completion = (approx_token_count(text) + 1 if task is CallTask.DIRECT
                      else self.completion_tokens(candidate, question, query))
        if budget is not None:
            budget.charge(candidate.cost_usd(completion, prompt_tokens))
        return CandidateReply(candidate.name, text, prompt_tokens, completion, 0.0, 1, False, origin)
