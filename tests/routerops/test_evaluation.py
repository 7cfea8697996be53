from __future__ import annotations

import dataclasses

import pytest

from routerops.candidates.types import CallOrigin, CandidateFailure, CandidateReply, FailureKind
from routerops.evaluation import (
    Call,
    EvalRecord,
    KnnEvidence,
    PairedDifference,
    SystemMetrics,
    Verdict,
    aggregate,
    baseline_choice,
    comparison_baselines,
    contains_gold,
    direct_answer,
    dominated_beyond_interval,
    dominates,
    oracle_choice,
    paired_difference,
    reprice_records,
    verdict,
    with_baselines,
)
from routerops.pool import parse_pool
from routerops.rollout import CallRecord

Q7, MIX = "Qwen2.5-7B-Instruct", "Mixtral-8x22B-Instruct"
HTTP = CallOrigin.HTTP


def rec(system, qid, source, answer, golds, calls, latency=0.0, fmt=True) -> EvalRecord:
    return EvalRecord(system, qid, source, f"q {qid}?", tuple(golds), answer, fmt, tuple(calls), latency)


FIXTURE = [
    # router on nq: one right (1 Qwen call, 100 tokens), one wrong (2 calls), one bad format (no call)
    rec("router", "a", "nq", "Paris", ["Paris"], [Call(Q7, HTTP, 100)], 1.0),
    rec("router", "b", "nq", "Lyon", ["Rome"], [Call(Q7, HTTP, 50), Call(MIX, HTTP, 10)], 2.0),
    rec("router", "c", "nq", None, ["Oslo"], [], 3.0, fmt=False),
    # router on popqa: right, with a failed call that costs nothing
    rec("router", "d", "popqa", "the Beatles", ["Beatles"], [Call(MIX, CallOrigin.FAILED, failure=FailureKind.TIMEOUT, failure_detail="read"), Call(MIX, HTTP, 20)], 4.0),
]


def test_metrics_on_a_hand_computed_fixture(pool) -> None:
    by = {(m.system, m.data_source): m for m in aggregate(FIXTURE, pool)}
    nq, pop, avg = by[("router", "nq")], by[("router", "popqa")], by[("router", "average")]
    assert nq.questions == 3 and nq.em == pytest.approx(1 / 3) and nq.format_valid == pytest.approx(2 / 3)
    assert nq.usd_per_question == pytest.approx((100 * 0.30 + 50 * 0.30 + 10 * 1.20) / 1e6 / 3)
    assert nq.calls_per_question == pytest.approx(1.0)
    assert nq.call_share == {MIX: pytest.approx(1 / 3), Q7: pytest.approx(2 / 3)}
    assert nq.latency_p50_s == 2.0 and nq.latency_p95_s == pytest.approx(2.9)
    assert pop.em == 1.0 and pop.candidate_failures == 1 and pop.usd_per_question == pytest.approx(20 * 1.2e-6)
    assert avg.em == pytest.approx((1 / 3 + 1) / 2)  # macro over benchmarks
    assert avg.candidate_failures == 1 and avg.questions == 4
    assert avg.call_share[MIX] == pytest.approx((1 / 3 + 1) / 2)


def test_em_counts_a_correct_answer_only_when_the_format_is_valid(pool) -> None:
    # the router answered "Oslo" correctly but broke the format: the reward gives it -1, so the
    # headline EM does not count it; Router-R1's EM (any format) does
    records = [*FIXTURE[:2], rec("router", "c", "nq", "Oslo", ["Oslo"], [], 3.0, fmt=False)]
    assert (records[2].em, records[2].f1, records[2].em_any_format) == (0.0, 0.0, 1.0)
    nq = {(m.system, m.data_source): m for m in aggregate(records, pool)}[("router", "nq")]
    assert (nq.em, nq.em_any_format) == (pytest.approx(1 / 3), pytest.approx(2 / 3))


def _scaled(pool, model: str, factor: float):
    """The pool with `model`'s output price times `factor`."""
    raw = pool.model_dump(mode="json")
    return parse_pool({
        "pricing": {**{k: raw["pricing"][k] for k in ("label", "effective_date", "source")},
                    "prices": {c.name: {"input_usd_per_mtok": c.price.input_usd_per_mtok,
                                        "output_usd_per_mtok": c.price.output_usd_per_mtok * (factor if c.name == model
                                                                                              else 1)}
                               for c in pool}},
        "candidates": [{k: v for k, v in c.items() if k != "price"} for c in raw["candidates"]]})


def test_reprice_uses_stored_tokens_only(pool) -> None:
    cheaper = _scaled(pool, MIX, 0.1)
    old = {(m.system, m.data_source): m for m in aggregate(FIXTURE, pool)}
    new = {(m.system, m.data_source): m for m in reprice_records(FIXTURE, cheaper, seed=0)}
    assert new[("router", "popqa")].usd_per_question == pytest.approx(old[("router", "popqa")].usd_per_question / 10)
    assert new[("router", "nq")].em == old[("router", "nq")].em


MIS = "Mistral-7B-Instruct"


def _singles(qid: str, right: set[str], pool) -> list[EvalRecord]:
    """One question's single calls: every candidate once, 100 completion tokens, right where asked."""
    return [rec(f"single:{m}", qid, "nq", "Paris" if m in right else "Lyon", ["Paris"], [Call(m, HTTP, 100)])
            for m in pool.names]


def test_repricing_chooses_the_price_based_baselines_again(pool, tmp_path) -> None:
    # LLaMA-3.1-8B is the cheapest per token (0.18) and answers q1; Mixtral (1.20, the priciest)
    # answers both. At ten times its price LLaMA-3.1-8B (1.80) is the priciest, Mistral (0.20) the
    # cheapest, and on q1 Mixtral's call (100 tokens: 120 micro-USD) is the cheapest correct one.
    L8 = "LLaMA-3.1-8B-Instruct"
    records = [*_singles("q1", {L8, MIX}, pool), *_singles("q2", {MIX}, pool)]
    train = tuple({r.system.removeprefix("single:"): r for r in _singles(f"t{i}", {L8, MIX}, pool)} for i in range(3))
    knn = KnnEvidence(cost_weight=0.5, train=train, neighbors={"q1": (0, 1), "q2": (1, 2)})
    pricier = _scaled(pool, L8, 10)

    def picks(rs) -> dict[tuple[str, str], str]:
        return {(r.system, r.question_id): r.calls[0].model for r in rs if not r.system.startswith("single:")}

    before = picks(with_baselines(records, pool, seed=0, knn=knn))
    after = picks(with_baselines(records, pricier, seed=0, knn=knn))
    assert {k: v for k, v in before.items() if k[0] != "random"} == {
        ("cheapest", "q1"): L8, ("cheapest", "q2"): L8, ("most_expensive", "q1"): MIX,
        ("most_expensive", "q2"): MIX, ("oracle", "q1"): L8, ("oracle", "q2"): MIX,
        ("knn", "q1"): L8, ("knn", "q2"): L8}
    assert {k: v for k, v in after.items() if k[0] != "random"} == {
        ("cheapest", "q1"): MIS, ("cheapest", "q2"): MIS, ("most_expensive", "q1"): L8,
        ("most_expensive", "q2"): L8, ("oracle", "q1"): MIX, ("oracle", "q2"): MIX,
        ("knn", "q1"): MIX, ("knn", "q2"): MIX}
    assert {k: v for k, v in after.items() if k[0] == "random"} == {k: v for k, v in before.items() if k[0] == "random"}
    # the metrics follow the new choices: the new cheapest answers neither question
    old = {m.system: m for m in reprice_records(records, pool, seed=0, knn=knn) if m.data_source == "average"}
    avg = {m.system: m for m in reprice_records(records, pricier, seed=0, knn=knn) if m.data_source == "average"}
    assert (old["cheapest"].em, avg["cheapest"].em, avg["oracle"].em) == (0.5, 0.0, 1.0)
    # without the kNN evidence (an older evaluation) the records' own kNN choices stay
    old_knn = [r for r in with_baselines(records, pool, seed=0, knn=knn) if r.system == "knn"]
    kept = with_baselines([*records, *old_knn], pricier, seed=0)
    assert picks(r for r in kept if r.system == "knn") == {("knn", "q1"): L8, ("knn", "q2"): L8}
    # the evidence survives its files
    knn.write(tmp_path)
    assert KnnEvidence.read(tmp_path) == knn and KnnEvidence.read(tmp_path / "none") is None


def test_repricing_without_a_price_for_a_called_model_is_an_error(pool) -> None:
    records = _singles("q1", {MIX}, pool)
    smaller = pool.restricted([n for n in pool.names if n != MIS])
    with pytest.raises(ValueError, match=r"no price for model\(s\) Mistral-7B-Instruct that the evaluation called$"):
        with_baselines(records, smaller, seed=0)


def test_record_row_round_trip() -> None:
    r = FIXTURE[3]
    assert EvalRecord.from_row(r.as_row()) == r


def test_baseline_choices(pool) -> None:
    # by price per output token: a baseline's short answer is a few tokens from any model
    assert baseline_choice("cheapest", pool, "q", 0) == "LLaMA-3.1-8B-Instruct"  # 0.18
    assert baseline_choice("most_expensive", pool, "q", 0) == "Mixtral-8x22B-Instruct"  # 1.20
    picks = {baseline_choice("random", pool, f"q{i}", 0) for i in range(200)}
    assert picks == set(pool.names)
    assert baseline_choice("random", pool, "q1", 0) == baseline_choice("random", pool, "q1", 0)
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline_choice("best", pool, "q", 0)


def test_oracle_is_the_cheapest_correct_candidate(pool) -> None:
    single = {
        Q7: rec(f"single:{Q7}", "a", "nq", "x", ["Paris"], [Call(Q7, HTTP, 100)]),       # wrong
        MIX: rec(f"single:{MIX}", "a", "nq", "Paris", ["Paris"], [Call(MIX, HTTP, 17)]),  # right, 20.4 u$
        "LLaMA-3.1-8B-Instruct": rec("s", "a", "nq", "Paris", ["Paris"], [Call("LLaMA-3.1-8B-Instruct", HTTP, 164)]),
    }
    assert oracle_choice(single, pool) == MIX
    single[MIX] = rec(f"single:{MIX}", "a", "nq", "no", ["Paris"], [Call(MIX, HTTP, 17)])
    assert oracle_choice(single, pool) == "LLaMA-3.1-8B-Instruct"
    none_right = {m: rec("s", "a", "nq", "no", ["Paris"], [Call(m, HTTP, 10)]) for m in (Q7, MIX)}
    assert oracle_choice(none_right, pool) == Q7  # cheapest call when nobody is right


# Paired fixture: on nq the router is right on a and b, random only on a; on popqa both are right on d.
# Router calls Qwen (100 tokens = 30 micro-USD), random calls Mixtral (17 tokens = 20.4 micro-USD).
PAIRED = [
    *(rec("router", q, "nq", "Paris", ["Paris"], [Call(Q7, HTTP, 100)]) for q in ("a", "b")),
    rec("router", "d", "popqa", "Oslo", ["Oslo"], [Call(Q7, HTTP, 100)]),
    rec("random", "a", "nq", "Paris", ["Paris"], [Call(MIX, HTTP, 17)]),
    rec("random", "b", "nq", "Lyon", ["Paris"], [Call(MIX, HTTP, 17)]),
    rec("random", "d", "popqa", "Oslo", ["Oslo"], [Call(MIX, HTTP, 17)]),
    rec("router", "z", "nq", "x", ["y"], []),  # random never answered z: not paired, not counted
]


def test_paired_difference_on_a_hand_computed_fixture(pool) -> None:
    d = paired_difference(PAIRED, pool, "router", "random", samples=500, seed=3)
    assert d.questions == 3
    assert d.em == pytest.approx((0.5 + 0.0) / 2)  # macro: nq +0.5, popqa 0
    assert d.usd_per_question == pytest.approx((30 - 20.4) * 1e-6)
    # Resampling nq's two deltas (+1, 0) gives nq means of 0, 0.5 or 1: macro EM 0 .. 0.5.
    assert d.em_ci[0] == pytest.approx(0.0) and d.em_ci[1] == pytest.approx(0.5)
    assert d.usd_ci == (pytest.approx(9.6e-6), pytest.approx(9.6e-6))  # every question costs the same
    assert paired_difference(PAIRED, pool, "router", "random", samples=500, seed=3) == d  # seeded


def test_paired_difference_of_identical_answers_is_exactly_zero(pool) -> None:
    twin = [dataclasses.replace(r, system="twin") for r in FIXTURE]
    d = paired_difference([*FIXTURE, *twin], pool, "router", "twin", samples=200)
    assert (d.em, d.em_ci, d.usd_per_question, d.usd_ci) == (0.0, (0.0, 0.0), 0.0, (0.0, 0.0))


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"samples": 0}, "samples must be >= 1, got 0"),
    ({"confidence": 1.0}, r"confidence must be in \(0, 1\), got 1.0"),
    ({"confidence": 0}, r"confidence must be in \(0, 1\), got 0"),
    ({"baseline": "knn"}, "no question was answered by both 'router' and 'knn'"),
    ({"baseline": "router"}, "system and baseline are both 'router': nothing to compare"),
])
def test_paired_difference_rejects_bad_input(pool, kwargs, error) -> None:
    args = {"system": "router", "baseline": "random", **kwargs}
    with pytest.raises(ValueError, match=error):
        paired_difference(PAIRED, pool, **args)


def avg(system: str, em: float, micro_usd: float) -> SystemMetrics:
    return SystemMetrics(system, "average", 10, em, em, 1.0, micro_usd * 1e-6, 1.0, em, em)


@pytest.mark.parametrize(("a", "b", "expected"), [
    ((0.30, 10.0), (0.20, 20.0), True),    # better and cheaper
    ((0.30, 20.0), (0.20, 20.0), True),    # better at equal cost
    ((0.20, 10.0), (0.20, 20.0), False),   # equal EM is not dominance
    ((0.30, 20.1), (0.20, 20.0), False),   # better but dearer
    ((0.10, 10.0), (0.20, 20.0), False),
])
def test_dominates(a, b, expected) -> None:
    assert dominates(avg("a", *a), avg("b", *b)) is expected


def test_verdict_is_data() -> None:
    metrics = [avg("router", 0.24, 23.8), avg("random", 0.21, 46.4), avg("oracle", 0.80, 32.7),
               avg("single:Mixtral", 0.29, 20.4), avg("single:Llama70", 0.30, 154.9)]
    vs_random = PairedDifference("router", "random", 420, 0.03, (-0.02, 0.08), -22.6e-6, (-27e-6, -18e-6), 0.95, 2000)
    v = verdict(metrics, [vs_random])
    assert v == Verdict(dominates_random=True, router_em=0.24, router_usd_per_question=23.8e-6, random_em=0.21,
                        random_usd_per_question=pytest.approx(46.4e-6), em_vs_random_significant=False,
                        usd_vs_random_significant=True, oracle_em_gap=pytest.approx(0.56),
                        oracle_usd_gap=pytest.approx(8.9e-6), dominated_by=("single:Mixtral",))
    assert v.as_dict()["dominated_by"] == ["single:Mixtral"]
    no_interval = verdict(metrics)
    assert no_interval is not None and no_interval.em_vs_random_significant is None
    assert verdict([m for m in metrics if m.system != "oracle"]) is None  # nothing to judge against


@pytest.mark.parametrize(("em_ci", "usd_ci", "dominated"), [
    ((-0.10, -0.05), (2e-6, 15e-6), True),    # more accurate beyond noise, and cheaper
    ((-0.10, -0.05), (-3e-6, 4e-6), True),    # more accurate; the cost difference is unresolved
    ((-0.10, -0.05), (-9e-6, -1e-6), False),  # more accurate, but the router is cheaper beyond noise
    ((-0.10, 0.00), (2e-6, 15e-6), False),    # the EM interval reaches 0: not beyond noise
    ((0.01, 0.05), (2e-6, 15e-6), False),     # the router is more accurate
])
def test_dominated_beyond_interval(em_ci, usd_ci, dominated: bool) -> None:
    d = PairedDifference("router", "single:Mixtral", 420, sum(em_ci) / 2, em_ci, sum(usd_ci) / 2, usd_ci, 0.95, 2000)
    other = PairedDifference("challenger", "random", 420, -0.2, (-0.3, -0.1), 1e-6, (0.0, 2e-6), 0.95, 2000)
    assert dominated_beyond_interval([d, other]) == (("single:Mixtral",) if dominated else ())
    assert verdict([avg("router", 0.2, 20), avg("random", 0.1, 40), avg("oracle", 0.8, 30)],
                   [d]).dominated_beyond_ci == dominated_beyond_interval([d])


def test_comparison_baselines_are_the_fixed_ones_and_the_singles_pareto_front() -> None:
    metrics = [avg("router", 0.24, 23.8), avg("random", 0.21, 46.4), avg("knn", 0.28, 25.1),
               avg("cheapest", 0.20, 20.4), avg("single:Mistral", 0.20, 20.4),  # the same model as cheapest
               avg("single:Mixtral", 0.29, 20.4),  # on the front: best at the lowest cost
               avg("single:Llama70", 0.30, 154.9),  # on the front: most accurate
               avg("single:Gemma", 0.22, 42.6),  # dominated by Mixtral
               SystemMetrics("single:Gemma", "nq", 10, 0.9, 0.9, 1.0, 1e-6, 1.0, 0.9, 0.9)]  # per-benchmark rows ignored
    assert comparison_baselines(metrics) == ["random", "cheapest", "knn", "single:Mixtral", "single:Llama70"]
    assert comparison_baselines([m for m in metrics if m.system != "router"]) == []


def test_calls_keep_the_typed_outcome_of_each_kind_of_result() -> None:
    reply = CandidateReply(Q7, "It is Paris.", 20, 81, 0.5, origin=CallOrigin.REPLAY_PRIOR)
    failure = CandidateFailure(MIX, FailureKind.HTTP_STATUS, 503, 2, "503 Service Unavailable", 0.2)
    assert Call.of_result(reply) == Call(Q7, CallOrigin.REPLAY_PRIOR, 81, 20, 0.5)
    assert Call.of_result(failure) == Call(MIX, CallOrigin.FAILED, 0, 0, 0.2, FailureKind.HTTP_STATUS,
                                           "503 Service Unavailable")
    unknown = CallRecord(1, "qwen-72b", "q", None, 0, 0, 0.0, CallOrigin.UNKNOWN_MODEL, 0.0, 0)
    assert Call.of_record(unknown) == Call("qwen-72b", CallOrigin.UNKNOWN_MODEL)
    assert [c.ok for c in (Call.of_result(reply), Call.of_result(failure), Call.of_record(unknown))] == [
        True, False, False]
    # stored as plain strings, read back as the enums
    row = Call.of_result(failure).as_row()
    assert (row["origin"], row["failure"]) == ("failed", "http_status")
    assert Call.from_row(row) == Call.of_result(failure)


def test_unknown_model_calls_are_not_candidate_failures(pool) -> None:
    recs = [rec("router", "a", "nq", "x", ["y"], [Call("qwen-72b", CallOrigin.UNKNOWN_MODEL)]),
            rec("router", "b", "nq", "x", ["y"], [Call(MIX, CallOrigin.FAILED, failure=FailureKind.CONNECT)])]
    (nq, _avg) = aggregate(recs, pool)
    assert (nq.candidate_failures, nq.calls_per_question, nq.usd_per_question) == (1, 0.0, 0.0)


# Replies as real endpoints write them to the direct-answer instruction, and what is read from them.
DIRECT_REPLIES = [
    ("Answer: Paris", "Paris", 1.0),
    ("Answer: Paris.", "Paris.", 1.0),
    ("answer: paris", "paris", 1.0),
    ("**Answer:** Paris", "Paris", 1.0),
    ("**Answer: Paris**", "Paris", 1.0),
    ("Final answer: Paris", "Paris", 1.0),
    ('Answer: "Paris"', '"Paris"', 1.0),
    ("The capital of France is Paris.\nAnswer: Paris", "Paris", 1.0),
    ("Answer: Paris\n\nExplanation: Paris has been the capital since 987.", "Paris", 1.0),
    ("<answer>Paris</answer>", "Paris", 1.0),
    ("Paris", "Paris", 1.0),
    ("  Paris.\n", "Paris.", 1.0),
    # a sentence is not a short answer: exact match fails, the gold is still in the reply
    ("Paris is the capital of France.", "Paris is the capital of France.", 0.0),
    ("I'm not sure, but I think it is Paris.", "I'm not sure, but I think it is Paris.", 0.0),
    ("Answer: It is Paris.", "It is Paris.", 0.0),
    ("Answer: unknown", "unknown", 0.0),
    ("", None, 0.0),
    ("   \n ", None, 0.0),
]


@pytest.mark.parametrize(("reply", "answer", "em"), DIRECT_REPLIES, ids=[r[0][:30] or "empty" for r in DIRECT_REPLIES])
def test_a_baselines_answer_is_read_from_real_shaped_replies(reply: str, answer: str | None, em: float) -> None:
    assert direct_answer(reply) == answer
    r = rec("single:M", "q", "nq", direct_answer(reply), ["Paris"], [])
    assert r.em == em
    assert dataclasses.replace(r, response=reply).contains_gold == float("paris" in reply.lower())


@pytest.mark.parametrize(("text", "golds", "found"), [
    ("Paris is the capital of France.", ["Paris"], 1.0),
    ("the Beatles", ["Beatles"], 1.0),  # articles and punctuation normalised away
    ("Parisian cafes", ["Paris"], 0.0),  # whole words only
    ("in 1969, I think", ["1969"], 1.0),
    ("", ["Paris"], 0.0),
    (None, ["Paris"], 0.0),
    ("Paris", [""], 0.0),  # an empty alias matches nothing
    ("Answer: 🀐", ["mahjong", "🀐"], 1.0),  # symbols are words, not punctuation
])
def test_contains_gold(text, golds, found) -> None:
    assert contains_gold(text, golds) == found


def test_the_router_is_credited_for_its_answer_not_for_replies_in_its_trajectory() -> None:
    r = EvalRecord("router", "q", "nq", "q?", ("Paris",), "Lyon", True, (),
                   response="<information>It is Paris.</information><answer>Lyon</answer>")
    assert (r.em, r.contains_gold) == (0.0, 0.0)
