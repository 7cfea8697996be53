"""Copy fidelity and multi-round figures over hand-made router records."""

from __future__ import annotations

from routerops.behaviour import after_decline_headroom, first_declined_ids, information_blocks, router_behaviour
from routerops.candidates.types import CallOrigin
from routerops.evaluation import Call, EvalRecord

A, B = "Mixtral-8x22B-Instruct", "LLaMA-3.1-70B-Instruct"


def rec(qid: str, replies: list[tuple[str, str]], answer: str, gold: str = "Paris", system: str = "router",
        valid: bool = True, failed: bool = False) -> EvalRecord:
    response = "".join(f"<think>ask</think><search>{m}: q</search>\n\n<information>{text}</information>\n\n"
                       for m, text in replies) + f"<think>ok</think><answer>{answer}</answer>"
    return EvalRecord(system, qid, "nq", "q?", (gold,), answer, valid,
                      tuple(Call(m, CallOrigin.FAILED if failed else CallOrigin.REPLAY_RECORDED, 10)
                            for m, _ in replies), response=response)


def test_copy_fidelity_and_multi_round_figures() -> None:
    records = [
        rec("copied", [(A, "The answer is Paris.")], "Paris"),
        rec("miscopied", [(A, "The answer is Paris.")], "Pari"),
        rec("bad-format", [(A, "It is Paris.")], "Paris", valid=False),  # EM counts valid formats only
        rec("declined-then-other", [(A, "I am not sure."), (B, "It is Paris.")], "Paris"),
        rec("declined-then-same", [(A, "I cannot say."), (A, "I am not sure.")], "unknown"),
        rec("declined-stopped", [(A, "I don't know.")], "unknown"),
        rec("no-call", [], "Paris"),
        rec("failed-first", [(A, "None")], "unknown", failed=True),  # a refused call is no decline
        rec("baseline", [(A, "The answer is Paris.")], "Paris", system="single:" + A),  # not the router's
    ]
    b = router_behaviour(records)
    assert (b.episodes, b.with_calls, b.gold_in_reply) == (8, 7, 4)
    assert b.copy_fidelity == 2 / 4  # copied, declined-then-other; not miscopied nor the invalid format
    assert (b.first_failed, b.first_declined, b.asked_again, b.asked_other_model) == (1, 3, 2 / 3, 1 / 3)
    assert b.em_after_decline == 1 / 3
    assert b.multi_call == 2 / 8 and b.reasked_same_model == 1 / 8 and b.calls_per_episode == 9 / 8


def test_no_router_records_give_counts_of_zero_and_no_shares() -> None:
    b = router_behaviour([rec("baseline", [(A, "It is Paris.")], "Paris", system="oracle")])
    assert (b.episodes, b.gold_in_reply, b.first_failed, b.first_declined) == (0, 0, 0, 0)
    assert b.copy_fidelity is None and b.asked_again is None and b.multi_call is None


def test_information_blocks_are_the_replies_in_order() -> None:
    r = rec("x", [(A, " one "), (B, "two")], "two")
    assert information_blocks(r.response) == ["one", "two"]


def test_after_decline_headroom_scores_every_system_on_the_routers_declined_questions() -> None:
    records = [
        rec("q1", [(A, "I am not sure."), (B, "It is Paris.")], "Paris"),
        rec("q2", [(A, "I cannot say."), (A, "I am not sure.")], "unknown"),
        rec("q3", [(A, "The answer is Paris.")], "Paris"),  # answered at once: not counted
        rec("q4", [(A, "None")], "unknown", failed=True),  # a failed call is no decline
        rec("q1", [(B, "Answer: Paris")], "Paris", system="single:" + B),
        rec("q2", [(B, "Answer: Rome")], "Rome", system="single:" + B),
        rec("q3", [(B, "Answer: Paris")], "Paris", system="single:" + B),
        rec("q2", [(B, "Answer: Paris")], "Paris", system="oracle"),
    ]
    assert first_declined_ids(records) == {"q1", "q2"}
    assert after_decline_headroom(records) == {"oracle": (1, 1), "router": (2, 1), "single:" + B: (2, 1)}
    assert after_decline_headroom([]) == {}
