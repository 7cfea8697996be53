from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from routerops.candidates.budget import RequestBudget
from routerops.candidates.replay import QualityMatrix, ReplayPool, question_key
from routerops.candidates.types import (
    CallContext,
    CallOrigin,
    CallTask,
    CandidateFailure,
    CandidateReply,
    FailureKind,
    QuestionInfo,
    candidate_messages,
)


@pytest.fixture(scope="module")
def matrix(shared_data) -> QualityMatrix:
    return QualityMatrix.load(shared_data / "pool")


def call(rp: ReplayPool, cand, q: QuestionInfo, query: str | None = None, budget=None):
    return asyncio.run(rp.call(cand, query or q.text, CallContext(question=q, budget=budget)))


def test_matrix_holds_the_nq_and_triviaqa_questions(matrix) -> None:
    sources = Counter(matrix.sources.values())
    assert sources == {"nq": 550, "triviaqa": 550}  # 500 train + 50 test each
    q = matrix.questions[question_key("who wrote i will follow you into the dark")]
    assert q.golden_answers == ("Ben Gibbard",) and q.data_source == "nq"


def test_recorded_scores_decide_correctness(matrix, pool) -> None:
    rp = ReplayPool(matrix, ReplayPool.distractors_from(matrix.questions.values()), calibrate=False)
    mistral, qwen = pool.get("Mistral-7B-Instruct"), pool.get("Qwen2.5-7B-Instruct")
    nq = [q for q in matrix.questions.values() if q.data_source == "nq"][:60]
    for q in nq:
        for cand in (mistral, qwen):
            recorded = matrix.recorded(cand.replay.matrix_model, q.text)
            reply = call(rp, cand, q)
            assert isinstance(reply, CandidateReply) and reply.origin == "replay:recorded"
            states_gold = any(g in reply.text for g in q.golden_answers)
            assert states_gold == (recorded >= 0.5), (q.text, reply.text, recorded)
    assert rp.stats.prior == 0 and rp.stats.replayed_share == 1.0


def test_calibration_matches_priors_and_keeps_the_records_choice(matrix, pool) -> None:
    """Recorded NQ rates (F1-style) are ~2x the exact-match priors; calibrated, each recorded
    model's rate equals its prior, and a question it gets right was right in the records."""
    raw, cal = ReplayPool(matrix, calibrate=False), ReplayPool(matrix)
    nq = [q for q in matrix.questions.values() if q.data_source == "nq"]
    for name in ("Qwen2.5-7B-Instruct", "LLaMA-3.1-8B-Instruct", "Mistral-7B-Instruct"):
        cand = pool.get(name)
        before = [raw.correct(cand, q)[0] for q in nq]
        after = [cal.correct(cand, q)[0] for q in nq]
        prior = cand.replay.prior_for("nq")
        assert sum(before) / len(nq) > 1.5 * prior  # the leniency being corrected
        assert sum(after) / len(nq) == pytest.approx(prior, abs=0.04)
        assert all(b for a, b in zip(after, before, strict=True) if a)  # only ever drops successes
        assert cal.recorded_rate(cand.replay.matrix_model, "nq") == pytest.approx(sum(before) / len(nq))
        # an outcome calibration changed is a coin flip and says so; one it kept is the record's
        origins = [cal.correct(cand, q)[1] for q in nq]
        assert [o is CallOrigin.REPLAY_CALIBRATED for o in origins] == [a != b for a, b in
                                                                        zip(after, before, strict=True)]
        assert set(origins) == {CallOrigin.REPLAY_RECORDED, CallOrigin.REPLAY_CALIBRATED}


def test_stats_count_each_provenance(matrix, pool) -> None:
    rp = ReplayPool(matrix)
    nq = [q for q in matrix.questions.values() if q.data_source == "nq"][:100]
    replies = [call(rp, c, q) for q in nq for c in (pool.get("Mistral-7B-Instruct"), pool.get("Gemma-2-27B-Instruct"))]
    by = Counter(r.origin for r in replies)
    assert rp.stats.by_origin() == {"replay:recorded": by[CallOrigin.REPLAY_RECORDED],
                                    "replay:calibrated": by[CallOrigin.REPLAY_CALIBRATED],
                                    "replay:prior": by[CallOrigin.REPLAY_PRIOR]}
    assert by[CallOrigin.REPLAY_PRIOR] == 100  # Gemma is not in the matrix
    assert by[CallOrigin.REPLAY_CALIBRATED] > 0 and rp.stats.calls == 200


def test_calibration_lifts_recorded_failures_when_the_prior_is_higher(matrix, pool) -> None:
    cand = pool.get("Mistral-7B-Instruct")
    high = cand.model_copy(update={"replay": cand.replay.model_copy(
        update={"prior_accuracy": {**cand.replay.prior_accuracy, "nq": 0.9}})})
    nq = [q for q in matrix.questions.values() if q.data_source == "nq"]
    raw, cal = ReplayPool(matrix, calibrate=False), ReplayPool(matrix)
    before = [raw.correct(high, q)[0] for q in nq]
    after = [cal.correct(high, q)[0] for q in nq]
    assert sum(after) / len(nq) == pytest.approx(0.9, abs=0.04)
    assert all(a for a, b in zip(after, before, strict=True) if b)  # only ever adds successes


def test_models_outside_the_matrix_use_priors(matrix, pool) -> None:
    rp = ReplayPool(matrix)
    big = pool.get("LLaMA-3.1-70B-Instruct")
    assert big.replay.matrix_model is None
    q = next(iter(matrix.questions.values()))
    reply = call(rp, big, q)
    assert reply.origin == "replay:prior" and rp.stats.summary()["drawn_from_priors"] == 1


def test_prior_rate_matches_pool_prior(pool) -> None:
    rp = ReplayPool(None)
    cand = pool.get("Mixtral-8x22B-Instruct")
    qs = [QuestionInfo(f"h{i}", f"synthetic question {i}", "hotpotqa", ("gold",)) for i in range(4000)]
    share = sum(rp.correct(cand, q)[0] for q in qs) / len(qs)
    assert share == pytest.approx(cand.replay.prior_for("hotpotqa"), abs=0.02)
    unknown = [QuestionInfo(f"u{i}", f"other {i}", "musique", ("gold",)) for i in range(4000)]
    share_default = sum(rp.correct(cand, q)[0] for q in unknown) / len(unknown)
    assert share_default == pytest.approx(cand.replay.prior_for("default"), abs=0.02)


def test_replay_is_deterministic_and_seeded(pool) -> None:
    cand = pool.get("Gemma-2-27B-Instruct")
    qs = [QuestionInfo(f"q{i}", f"question number {i}", "nq", (f"gold {i}",)) for i in range(50)]
    bank = {"nq": [f"other {i}" for i in range(20)]}
    a = [call(ReplayPool(None, bank, seed=1), cand, q) for q in qs]
    b = [call(ReplayPool(None, bank, seed=1), cand, q) for q in qs]
    c = [call(ReplayPool(None, bank, seed=2), cand, q) for q in qs]
    assert a == b and a != c


def test_wrong_replies_state_a_same_source_answer_or_decline(pool) -> None:
    rp = ReplayPool(None, {"nq": ["Lisbon", "Oslo", "Paris"]}, decline_share=0.25)
    cand = pool.get("Qwen2.5-7B-Instruct")
    texts = []
    for i in range(300):
        q = QuestionInfo(f"q{i}", f"q {i}", "nq", ("Paris",))
        if not rp.correct(cand, q)[0]:
            texts.append(call(rp, cand, q).text)
    assert texts and not any("Paris" in t for t in texts)
    declined = sum("not" in t for t in texts) / len(texts)
    # A share of hash draws, not a fixed count: the bound checks decline_share=0.25 is honoured
    # without pinning the hash function (a sample of ~200 wrong replies; sd about 0.03).
    assert 0.1 < declined < 0.4
    assert any("Lisbon" in t or "Oslo" in t for t in texts)


def test_completion_tokens_jitter_around_the_mean(pool) -> None:
    rp = ReplayPool(None)
    cand = pool.get("LLaMA-3.1-8B-Instruct")
    tokens = [call(rp, cand, QuestionInfo(f"q{i}", f"q {i}", "nq", ("a",))).completion_tokens for i in range(200)]
    mean = cand.replay.mean_completion_tokens
    # Deterministic hash jitter in [0.75, 1.25) x mean, rounded: bounds, and a mean near the mean.
    assert min(tokens) >= 0.75 * mean - 1 and max(tokens) <= 1.25 * mean + 1
    assert sum(tokens) / len(tokens) == pytest.approx(mean, rel=0.05)


def test_a_direct_answer_call_gets_a_short_answer_billed_for_its_length(pool) -> None:
    rp = ReplayPool(None, {"nq": ["Lisbon", "Oslo"]})
    cand = pool.get("Qwen2.5-7B-Instruct")
    for i in range(40):
        q = QuestionInfo(f"q{i}", f"q {i}", "nq", ("Paris",))
        ok = rp.correct(cand, q)[0]
        reply = asyncio.run(rp.call(cand, q.text, CallContext(question=q, task=CallTask.DIRECT)))
        assert isinstance(reply, CandidateReply)
        assert reply.text == "Answer: Paris" if ok else reply.text in {"Answer: Lisbon", "Answer: Oslo",
                                                                        "Answer: unknown"}
        # the line's tokens plus the end token: far below the helper reply's mean
        assert reply.completion_tokens == -(-len(reply.text.encode()) // 4) + 1
        assert reply.prompt_tokens == sum(len(m["content"].split()) for m in candidate_messages(q.text, CallTask.DIRECT))


def test_budget_refusal_makes_no_draw(pool) -> None:
    rp = ReplayPool(None)
    budget = RequestBudget(0.0)
    out = call(rp, pool.get("Qwen2.5-7B-Instruct"), QuestionInfo("q", "q", "nq", ("a",)), budget=budget)
    assert isinstance(out, CandidateFailure) and out.kind is FailureKind.BUDGET and rp.stats.calls == 0


def test_candidate_without_replay_profile_is_an_error(pool) -> None:
    bare = pool.get("Qwen2.5-7B-Instruct").model_copy(update={"replay": None})
    with pytest.raises(ValueError,
                       match=r"^candidate 'Qwen2\.5-7B-Instruct' has no replay profile in the pool file$"):
        call(ReplayPool(None), bare, QuestionInfo("q", "q"))


def test_bad_decline_share() -> None:
    with pytest.raises(ValueError, match=r"^decline_share must be in \[0, 1\], got 2\.0$"):
        ReplayPool(None, decline_share=2.0)
