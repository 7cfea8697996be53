"""Cost-aware evaluation: per-question records for the router and baselines, and their metrics.

Every system (the router, each single candidate, random, cheapest, most expensive, oracle, kNN)
produces one `EvalRecord` per question holding its calls with token counts. Metrics are pure
functions of records and a pool. Repricing is a fresh evaluation under the new prices with no
candidate call: the router's and the singles' calls are re-costed, and the systems that choose by
price (cheapest, most expensive, oracle, kNN) choose again from the recorded single calls
(`with_baselines`), as they would have if the evaluation had run under those prices.
"""

from __future__ import annotations

import json
import math
import random
import re
import statistics
import string
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from routerops.candidates.types import REPLY_ORIGINS, CallOrigin, CallResult, CandidateReply, FailureKind
from routerops.pool import Candidate, Pool
from routerops.rewards import exact_match, f1_score, normalize_answer
from routerops.rollout import CallRecord

__all__ = [
    "FIXED_BASELINES",
    "KNN_FILES",
    "PAPER",
    "PRICED_SYSTEMS",
    "SINGLE",
    "Call",
    "Decoding",
    "EvalRecord",
    "KnnEvidence",
    "PairedDifference",
    "SystemMetrics",
    "Verdict",
    "aggregate",
    "baseline_choice",
    "comparison_baselines",
    "contains_gold",
    "direct_answer",
    "dominated_beyond_interval",
    "dominates",
    "oracle_choice",
    "paired_difference",
    "provenance",
    "read_records",
    "reprice_records",
    "verdict",
    "with_baselines",
]

# Baselines that call one candidate chosen without looking at the question's outcome.
FIXED_BASELINES = ("random", "cheapest", "most_expensive")
KNN_FILES = ("knn_fit.parquet", "knn.json")  # KnnEvidence, beside the trajectories
# Systems whose choice depends on prices: under new prices they choose again.
PRICED_SYSTEMS = ("cheapest", "most_expensive", "oracle", "knn")
SINGLE = "single:"

# Router-R1's reported exact match (the brief's table), shown beside ours and labelled as theirs.
PAPER: Mapping[str, Mapping[str, float]] = {
    "Router-R1-Qwen (paper, alpha=0)": {"nq": .388, "triviaqa": .706, "popqa": .384, "hotpotqa": .352,
                                        "2wikimultihopqa": .434, "musique": .138, "bamboogle": .512},
    "Router-R1-Llama (paper)": {"nq": .416, "triviaqa": .680, "popqa": .432, "hotpotqa": .322,
                                "2wikimultihopqa": .368, "musique": .128, "bamboogle": .520},
    "best baseline (paper, largest LLM)": {"nq": .296, "triviaqa": .578, "popqa": .354, "hotpotqa": .278,
                                           "2wikimultihopqa": .274, "musique": .104, "bamboogle": .480},
}
PAPER_NQ_COST_MICRO_USD = {"alpha=0": 150.6, "alpha=0.6": 150.0, "alpha=0.9": 5.5}


# `Answer: X` as a line of its own (any case, markdown bold around the label allowed), the format
# the direct-answer instruction asks for; `<answer>X</answer>` as some models write instead.
_ANSWER_LINE = re.compile(r"^\s*(?:\*\*)?(?:final\s+)?answer(?:\*\*)?\s*:\s*(?:\*\*)?\s*(.+?)\s*$",
                          re.IGNORECASE | re.MULTILINE)
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)


def direct_answer(reply: str) -> str | None:
    """The short answer a baseline's reply states: its `Answer:` line, else an `<answer>` block,
    else its first non-empty line as written (a sentence then fails exact match, as it would for
    a user reading it); None for an empty reply."""
    m = _ANSWER_LINE.search(reply) or _ANSWER_TAG.search(reply)
    if m is not None:
        return m.group(1).strip().strip("*").strip() or None
    first = next((line.strip() for line in reply.splitlines() if line.strip()), "")
    return first or None


_PUNCT_RE = re.compile(f"[{re.escape(string.punctuation)}]")  # SQuAD's punctuation; symbols such as 🀐 stay


def _words(text: str) -> str:
    # SQuAD normalisation, with punctuation read as a word break: `<answer>Paris</answer>` and
    # "Paris." both hold the word "paris" (SQuAD's removal would glue "answerparisanswer").
    return normalize_answer(_PUNCT_RE.sub(" ", text))


def contains_gold(text: str | None, golds: Sequence[str]) -> float:
    """1.0 when a gold alias appears as whole words in the text, both normalised (Router-R1's
    `subem_check`, on word boundaries)."""
    if not text:
        return 0.0
    padded = f" {_words(text)} "
    return float(any(g and f" {g} " in padded for g in (_words(a) for a in golds)))


@dataclass(frozen=True)
class Call:
    """One candidate call as the evaluation keeps it: token counts (so it can be repriced), never
    dollars."""

    model: str
    origin: CallOrigin
    completion_tokens: int = 0
    prompt_tokens: int = 0
    latency_s: float = 0.0
    failure: FailureKind | None = None
    failure_detail: str | None = None

    @property
    def ok(self) -> bool:
        return self.origin in REPLY_ORIGINS

    @classmethod
    def of_record(cls, c: CallRecord) -> Call:
        return cls(c.model, c.origin, c.completion_tokens, c.prompt_tokens, c.latency_s, c.failure, c.failure_detail)

    @classmethod
    def of_result(cls, r: CallResult) -> Call:
        if isinstance(r, CandidateReply):
            return cls(r.model, r.origin, r.completion_tokens, r.prompt_tokens, r.latency_s)
        return cls(r.model, CallOrigin.FAILED, 0, 0, r.latency_s, r.kind, r.detail)

    def as_row(self) -> dict[str, Any]:
        return {"model": self.model, "origin": self.origin.value, "completion_tokens": self.completion_tokens,
                "prompt_tokens": self.prompt_tokens, "latency_s": self.latency_s,
                "failure": None if self.failure is None else self.failure.value,
                "failure_detail": self.failure_detail}

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Call:
        failure = row.get("failure")
        return cls(str(row["model"]), CallOrigin(row["origin"]), int(row["completion_tokens"]),
                   int(row["prompt_tokens"]), float(row["latency_s"]),
                   None if failure is None else FailureKind(failure), row.get("failure_detail"))


@dataclass(frozen=True)
class EvalRecord:
    system: str
    question_id: str
    data_source: str
    question: str
    golden_answers: tuple[str, ...]
    answer: str | None
    format_valid: bool
    calls: tuple[Call, ...] = ()
    latency_s: float = 0.0
    response: str = ""
    # Router turns whose token ids were re-encoded from a completions server's text because it
    # returned none (`Generation.reencoded`): such an episode may differ from the router's own.
    reencoded_turns: int = 0

    # EM and F1 count only a format-valid response, as the reward does (an invalid one scores
    # -1 there): what a user relying on the protocol gets. Router-R1's reported EM reads the last
    # answer whatever the format; that is `em_any_format`, reported beside.
    @property
    def em(self) -> float:
        return exact_match(self.answer, self.golden_answers) if self.format_valid else 0.0

    @property
    def f1(self) -> float:
        return f1_score(self.answer, self.golden_answers) if self.format_valid else 0.0

    @property
    def em_any_format(self) -> float:
        return exact_match(self.answer, self.golden_answers)

    @property
    def contains_gold(self) -> float:
        """A gold alias appears in what the system hands its user: the router's answer, or a
        single call's whole reply (so a baseline that answers in a sentence is not lost)."""
        return contains_gold(self.answer if self.system == "router" else self.response, self.golden_answers)

    def cost_usd(self, pool: Pool, include_prompt: bool = False) -> float:
        return sum(pool.get(c.model).cost_usd(c.completion_tokens, c.prompt_tokens, include_prompt)
                   for c in self.calls if c.ok)

    def as_row(self) -> dict[str, Any]:
        row = asdict(self)
        row["golden_answers"] = list(self.golden_answers)
        row["calls"] = [c.as_row() for c in self.calls]
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> EvalRecord:
        calls = tuple(Call.from_row(c) for c in row.get("calls") or [])
        fields = {k: row[k] for k in ("system", "question_id", "data_source", "question", "answer",
                                      "format_valid", "latency_s", "response")}
        # Records written before the field existed had no re-encoded turns to count.
        return cls(**fields, golden_answers=tuple(row["golden_answers"]), calls=calls,
                   reencoded_turns=int(row.get("reencoded_turns") or 0))


@dataclass(frozen=True)
class SystemMetrics:
    system: str
    data_source: str  # a benchmark, or "average" (macro over benchmarks)
    questions: int
    em: float  # format-valid and correct (see `EvalRecord.em`)
    f1: float
    format_valid: float
    usd_per_question: float
    calls_per_question: float
    em_any_format: float  # correct whatever the format (Router-R1's reported EM)
    contains_gold: float  # a gold alias appears in the answer (router) or the reply (single calls)
    call_share: dict[str, float] = field(default_factory=dict)
    latency_p50_s: float = 0.0
    latency_p95_s: float = 0.0
    candidate_failures: int = 0


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _metrics(system: str, source: str, recs: Sequence[EvalRecord], pool: Pool,
             include_prompt: bool) -> SystemMetrics:
    n = len(recs)
    calls = Counter(c.model for r in recs for c in r.calls if c.ok)
    total = sum(calls.values())
    return SystemMetrics(
        system, source, n,
        em=sum(r.em for r in recs) / n, f1=sum(r.f1 for r in recs) / n,
        format_valid=sum(r.format_valid for r in recs) / n,
        usd_per_question=sum(r.cost_usd(pool, include_prompt) for r in recs) / n,
        calls_per_question=total / n,
        em_any_format=sum(r.em_any_format for r in recs) / n,
        contains_gold=sum(r.contains_gold for r in recs) / n,
        call_share={m: calls[m] / total for m in sorted(calls)} if total else {},
        latency_p50_s=_percentile([r.latency_s for r in recs], 0.5),
        latency_p95_s=_percentile([r.latency_s for r in recs], 0.95),
        candidate_failures=sum(1 for r in recs for c in r.calls if c.origin is CallOrigin.FAILED),
    )


def aggregate(records: Iterable[EvalRecord], pool: Pool, include_prompt: bool = False) -> list[SystemMetrics]:
    """Metrics per (system, benchmark), plus each system's macro average over benchmarks."""
    groups: dict[tuple[str, str], list[EvalRecord]] = defaultdict(list)
    for r in records:
        groups[(r.system, r.data_source)].append(r)
    out: list[SystemMetrics] = []
    for system in sorted({s for s, _ in groups}):
        per = [_metrics(system, src, groups[(system, src)], pool, include_prompt)
               for src in sorted(src for s, src in groups if s == system)]
        out.extend(per)
        shares: Counter[str] = Counter()
        for m in per:
            shares.update({k: v / len(per) for k, v in m.call_share.items()})
        out.append(SystemMetrics(
            system, "average", sum(m.questions for m in per),
            em=statistics.fmean(m.em for m in per), f1=statistics.fmean(m.f1 for m in per),
            format_valid=statistics.fmean(m.format_valid for m in per),
            usd_per_question=statistics.fmean(m.usd_per_question for m in per),
            calls_per_question=statistics.fmean(m.calls_per_question for m in per),
            em_any_format=statistics.fmean(m.em_any_format for m in per),
            contains_gold=statistics.fmean(m.contains_gold for m in per),
            call_share=dict(sorted(shares.items())),
            latency_p50_s=statistics.fmean(m.latency_p50_s for m in per),
            latency_p95_s=statistics.fmean(m.latency_p95_s for m in per),
            candidate_failures=sum(m.candidate_failures for m in per)))
    return out


@dataclass(frozen=True)
class PairedDifference:
    """`system` minus `baseline` on the questions both answered, with percentile bootstrap intervals."""

    system: str
    baseline: str
    questions: int
    em: float
    em_ci: tuple[float, float]
    usd_per_question: float
    usd_ci: tuple[float, float]
    confidence: float
    samples: int

    @property
    def em_significant(self) -> bool:
        """The EM interval excludes 0: the data tell the two systems apart."""
        return not self.em_ci[0] <= 0 <= self.em_ci[1]

    @property
    def usd_significant(self) -> bool:
        return not self.usd_ci[0] <= 0 <= self.usd_ci[1]


def paired_difference(records: Iterable[EvalRecord], pool: Pool, system: str, baseline: str, *,
                      samples: int = 2000, confidence: float = 0.95, seed: int = 0,
                      include_prompt: bool = False) -> PairedDifference:
    """EM and cost differences, macro-averaged over benchmarks like `aggregate`, with a paired
    bootstrap stratified by benchmark: each resample draws questions with replacement within each
    benchmark and keeps both systems' answers to a question together. Pairing matters when the two
    systems often agree: on the local run's 420 questions the router-minus-Mixtral EM interval is
    0.043 wide paired and 0.119 unpaired; against random (little agreement) 0.110 and 0.114."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if system == baseline:
        raise ValueError(f"system and baseline are both {system!r}: nothing to compare")
    by_key: dict[tuple[str, str], dict[str, EvalRecord]] = defaultdict(dict)
    for r in records:
        if r.system in (system, baseline):
            by_key[(r.data_source, r.question_id)][r.system] = r
    deltas: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for (source, _), pair in sorted(by_key.items()):
        if len(pair) == 2:
            a, b = pair[system], pair[baseline]
            deltas[source].append((a.em - b.em, a.cost_usd(pool, include_prompt) - b.cost_usd(pool, include_prompt)))
    if not deltas:
        raise ValueError(f"no question was answered by both {system!r} and {baseline!r}")

    (em, usd), (em_ci, usd_ci) = stratified_bootstrap(deltas, samples=samples, confidence=confidence, seed=seed)
    return PairedDifference(system, baseline, sum(len(g) for g in deltas.values()), em, em_ci, usd, usd_ci,
                            confidence, samples)


def stratified_bootstrap(deltas: Mapping[str, Sequence[Sequence[float]]], *, samples: int, confidence: float,
                         seed: int) -> tuple[tuple[float, ...], tuple[tuple[float, float], ...]]:
    """Means of paired per-question differences, macro-averaged over benchmarks (the keys), and
    their percentile intervals from a bootstrap that resamples questions within each benchmark.
    Each question's tuple (one value per measure) stays together, so measures keep their pairing."""
    if not deltas or any(not g for g in deltas.values()):
        raise ValueError("stratified_bootstrap needs at least one question per benchmark")
    width = len(next(iter(next(iter(deltas.values())))))

    def macro(groups: Mapping[str, Sequence[Sequence[float]]]) -> tuple[float, ...]:
        return tuple(statistics.fmean(statistics.fmean(d[i] for d in g) for g in groups.values())
                     for i in range(width))

    rng = random.Random(seed)
    draws = [macro({src: rng.choices(g, k=len(g)) for src, g in deltas.items()}) for _ in range(samples)]
    tail = (1 - confidence) / 2
    cis = tuple((_percentile([d[i] for d in draws], tail), _percentile([d[i] for d in draws], 1 - tail))
                for i in range(width))
    return macro(deltas), cis


def provenance(calls: Iterable[Call]) -> dict[str, int]:
    """Calls per origin (`CallOrigin` values; every origin present, zeros included): where each
    outcome came from, a recorded score as is, one calibration changed, a draw, an endpoint."""
    counts = Counter(c.origin.value for c in calls)
    return {o.value: counts[o.value] for o in CallOrigin}


def read_records(path: str | Path) -> list[EvalRecord]:
    """An evaluation's records back from its trajectories.parquet."""
    import pyarrow.parquet as pq

    return [EvalRecord.from_row(r) for r in pq.read_table(path).to_pylist()]


@dataclass(frozen=True)
class KnnEvidence:
    """What the kNN baseline needs to choose again under other prices with no call: each training
    question's single calls, and each test question's nearest training questions (similarity does
    not depend on prices). Written beside the trajectories as `knn_fit.parquet` + `knn.json`."""

    cost_weight: float
    train: tuple[Mapping[str, EvalRecord], ...]  # per training question: candidate -> its single call
    neighbors: Mapping[str, tuple[int, ...]]  # test question id -> indices into `train`

    def choices(self, pool: Pool, include_prompt: bool = False) -> dict[str, str]:
        from routerops.knn_router import outcome_scores, pick

        names, scores = outcome_scores([{m: (r.em, r.cost_usd(pool, include_prompt)) for m, r in t.items()}
                                        for t in self.train], self.cost_weight)
        qids = sorted(self.neighbors)
        return dict(zip(qids, pick(names, scores, [self.neighbors[q] for q in qids]), strict=True))

    def write(self, directory: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = [r.as_row() for t in self.train for r in t.values()]
        pq.write_table(pa.Table.from_pylist(rows), directory / KNN_FILES[0])
        order = [next(iter(t.values())).question_id for t in self.train]
        (directory / KNN_FILES[1]).write_text(json.dumps({"cost_weight": self.cost_weight, "train_questions": order,
                                                        "neighbors": {q: list(n) for q, n in self.neighbors.items()}},
                                                       sort_keys=True) + "\n")

    @classmethod
    def read(cls, directory: Path) -> KnnEvidence | None:
        """None for an evaluation written before the evidence was kept."""
        fit, meta = (directory / f for f in KNN_FILES)
        if not (meta.is_file() and fit.is_file()):
            return None
        m = json.loads(meta.read_text())
        by_q: dict[str, dict[str, EvalRecord]] = defaultdict(dict)
        for r in read_records(fit):
            by_q[r.question_id][r.system.removeprefix(SINGLE)] = r
        return cls(float(m["cost_weight"]), tuple(by_q[q] for q in m["train_questions"]),
                   {q: tuple(n) for q, n in m["neighbors"].items()})


def with_baselines(records: Iterable[EvalRecord], pool: Pool, *, seed: int, knn: KnnEvidence | None = None,
                   include_prompt: bool = False) -> list[EvalRecord]:
    """The router's and the singles' records, plus the baselines chosen under `pool` from the
    singles: cheapest, most expensive, oracle, kNN when its evidence is given (else the records'
    own kNN choices are kept, and the caller should say so), and random (seeded per question;
    prices do not move it, so recorded random choices are kept). The price-based baselines'
    records already in `records` are replaced."""
    records = list(records)
    present = {r.system for r in records}
    # Random's choice does not depend on prices: a recorded one stays (under the evaluation's seed).
    kept = present & ({"random"} if knn is not None else {"random", "knn"})
    out = [r for r in records if r.system not in ("random", *PRICED_SYSTEMS) or r.system in kept]
    singles: dict[str, dict[str, EvalRecord]] = defaultdict(dict)
    order: list[EvalRecord] = []
    for r in records:
        if r.system.startswith(SINGLE):
            if r.question_id not in singles:
                order.append(r)
            singles[r.question_id][r.system.removeprefix(SINGLE)] = r
    knn_pick = knn.choices(pool, include_prompt) if knn is not None else {}
    for first in order:
        per = singles[first.question_id]
        missing = sorted(set(per) - set(pool.names))
        if missing:
            raise ValueError(f"{pool.source_file}: no price for model(s) {', '.join(missing)} that the evaluation "
                             "called")
        # Choose among the candidates the evaluation called: a model added to the pool since has no record.
        evaluated = pool.restricted(per)
        for kind in FIXED_BASELINES:
            if kind not in kept:
                out.append(replace(per[baseline_choice(kind, evaluated, first.question_id, seed)], system=kind))
        out.append(replace(per[oracle_choice(per, pool, include_prompt)], system="oracle"))
        if knn is not None:
            out.append(replace(per[knn_pick[first.question_id]], system="knn"))
    return out


def reprice_records(records: Iterable[EvalRecord], new_pool: Pool, include_prompt: bool = False, *, seed: int,
                    knn: KnnEvidence | None = None) -> list[SystemMetrics]:
    """Metrics under new prices from stored token counts: no candidate is called. The price-based
    systems choose again under the new prices (`with_baselines`)."""
    return aggregate(with_baselines(records, new_pool, seed=seed, knn=knn, include_prompt=include_prompt), new_pool,
                     include_prompt)


def baseline_choice(kind: str, pool: Pool, question_id: str, seed: int) -> str:
    """The candidate a fixed baseline calls: random (seeded per question), cheapest, most expensive.

    Cheapest and most expensive rank by price per output token (then per input token): a
    baseline asks for a short answer, a few tokens from any model, so the price per token is what
    sets what a user pays for it. (The helper replies' mean lengths in `pool.yaml` would rank
    Mistral, 0.20 x 101 tokens, below LLaMA-3.1-8B, 0.18 x 127, for calls the baseline never makes.)
    """
    def expected(c: Candidate) -> tuple[float, float, str]:
        return c.price.output_usd_per_mtok, c.price.input_usd_per_mtok, c.name

    if kind == "random":
        return random.Random(f"{seed}:random:{question_id}").choice(pool.names)
    if kind == "cheapest":
        return min(pool, key=expected).name
    if kind == "most_expensive":
        return max(pool, key=expected).name
    raise ValueError(f"unknown baseline {kind!r}")


def oracle_choice(single: Mapping[str, EvalRecord], pool: Pool, include_prompt: bool = False) -> str:
    """Cheapest candidate whose single call answered correctly; the cheapest call if none did."""
    correct = [m for m, r in single.items() if r.em > 0]
    pick_from = correct or list(single)
    return min(pick_from, key=lambda m: (single[m].cost_usd(pool, include_prompt), m))


def dominates(a: SystemMetrics, b: SystemMetrics) -> bool:
    """a has higher EM at lower or equal cost than b."""
    return a.em > b.em and a.usd_per_question <= b.usd_per_question


def dominated_beyond_interval(differences: Iterable[PairedDifference], system: str = "router") -> tuple[str, ...]:
    """Baselines that beat `system` beyond noise: its EM minus theirs has an interval wholly below
    0, and its cost is not lower beyond the interval (the cost interval's upper end is >= 0, so a
    cost difference the data cannot resolve counts against `system`)."""
    return tuple(sorted(d.baseline for d in differences
                        if d.system == system and d.em_ci[1] < 0 and d.usd_ci[1] >= 0))


def comparison_baselines(metrics: Sequence[SystemMetrics]) -> list[str]:
    """The baselines the router is tested against: the fixed ones, kNN, and every single candidate
    on the singles' Pareto front (no other single is at least as accurate and as cheap): those are
    the ones to beat before a router is worth deploying. A single whose averages equal a fixed
    baseline's (cheapest is one of the singles) is not listed twice."""
    avg = {m.system: m for m in metrics if m.data_source == "average"}
    if "router" not in avg:
        return []
    fixed = [s for s in (*FIXED_BASELINES, "knn") if s in avg]
    singles = [m for s, m in avg.items() if s.startswith("single:")]
    front = [m for m in singles
             if not any(o.em >= m.em and o.usd_per_question <= m.usd_per_question
                        and (o.em, o.usd_per_question) != (m.em, m.usd_per_question) for o in singles)]
    seen = {(avg[s].em, avg[s].usd_per_question) for s in fixed}
    return fixed + [m.system for m in sorted(front, key=lambda m: m.usd_per_question)
                    if (m.em, m.usd_per_question) not in seen]


@dataclass(frozen=True)
class Decoding:
    """How the router decoded during the evaluation (recorded with the results)."""

    mode: Literal["greedy", "sampled"]
    seed: int
    temperature: float
    top_p: float


@dataclass(frozen=True)
class Verdict:
    """What the evaluation says about deploying the router, as data (the report words it)."""

    dominates_random: bool       # higher EM than random at lower or equal cost (macro averages)
    router_em: float
    router_usd_per_question: float
    random_em: float
    random_usd_per_question: float
    em_vs_random_significant: bool | None   # None when no paired difference against random was computed
    usd_vs_random_significant: bool | None
    oracle_em_gap: float         # oracle minus router: how far routing is from the upper bound
    oracle_usd_gap: float
    dominated_by: tuple[str, ...]  # systems with higher EM at lower or equal cost (point estimates)
    # baselines whose EM is higher beyond the paired interval while the router is not cheaper
    # beyond it (`dominated_beyond_interval`); issue 14's bar
    dominated_beyond_ci: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "dominated_by": list(self.dominated_by),
                "dominated_beyond_ci": list(self.dominated_beyond_ci)}


def verdict(metrics: Sequence[SystemMetrics], differences: Sequence[PairedDifference] = ()) -> Verdict | None:
    """The verdict on the router, or None when the metrics hold no router, random and oracle."""
    avg = {m.system: m for m in metrics if m.data_source == "average"}
    if not {"router", "random", "oracle"} <= avg.keys():
        return None
    r, rnd, o = avg["router"], avg["random"], avg["oracle"]
    vs_random = next((d for d in differences if d.system == "router" and d.baseline == "random"), None)
    return Verdict(
        dominates_random=dominates(r, rnd), router_em=r.em, router_usd_per_question=r.usd_per_question,
        random_em=rnd.em, random_usd_per_question=rnd.usd_per_question,
        em_vs_random_significant=None if vs_random is None else vs_random.em_significant,
        usd_vs_random_significant=None if vs_random is None else vs_random.usd_significant,
        oracle_em_gap=o.em - r.em, oracle_usd_gap=o.usd_per_question - r.usd_per_question,
        dominated_by=tuple(sorted(s for s, m in avg.items() if s != "router" and dominates(m, r))),
        dominated_beyond_ci=dominated_beyond_interval(differences))
