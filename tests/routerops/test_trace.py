"""Readable and JSON traces of an episode, with every kind of call."""

from __future__ import annotations

from routerops.candidates.types import CallOrigin, FailureKind, QuestionInfo
from routerops.protocol import Segment
from routerops.rollout import CallRecord, Trajectory
from routerops.trace import render_trace, trajectory_json


def trajectory() -> Trajectory:
    t = Trajectory(QuestionInfo("q1", "capital of France?", "nq", ("Paris",)), [1, 2])
    t.segments = [Segment("policy", "<think>a</think><answer>Paris</answer>")]
    t.calls = [
        CallRecord(0, "Qwen2.5-7B-Instruct", "q", "It is Paris.", 20, 81, 81 * 0.3e-6, CallOrigin.REPLAY_PRIOR, 0.0, 1),
        CallRecord(1, "Mixtral-8x22B-Instruct", "q", None, 0, 0, 0.0, CallOrigin.FAILED, 0.2, 5,
                   FailureKind.TIMEOUT, "ReadTimeout"),
        CallRecord(2, "qwen-72b", "q", None, 0, 0, 0.0, CallOrigin.UNKNOWN_MODEL, 0.0, 0),
    ]
    t.turns, t.stop_reason = 4, "answer"
    return t


def test_render_trace_names_every_call_and_its_outcome() -> None:
    lines = render_trace(trajectory()).splitlines()
    assert lines[:4] == ["Q: capital of France?", "gold: Paris", "--- trace ---",
                         "<think>a</think><answer>Paris</answer>"]
    assert lines[5:8] == [
        "turn 0: Qwen2.5-7B-Instruct        81 completion tok  $0.00002430  [replay:prior] ok",
        "turn 1: Mixtral-8x22B-Instruct      0 completion tok  $0.00000000  [failed] FAILED (timeout: ReadTimeout)",
        "turn 2: qwen-72b                    0 completion tok  $0.00000000  [unknown_model] not called (unknown_model)",
    ]
    assert lines[-1] == "answer: 'Paris'  stop: answer  turns: 4  cost: $0.00002430 (24.3 micro-USD)"


def test_trajectory_json_holds_plain_values() -> None:
    out = trajectory_json(trajectory())
    assert (out["answer"], out["stop_reason"], out["turns"], out["golden_answers"]) == ("Paris", "answer", 4, ["Paris"])
    assert [(c["origin"], c["failure"], c["ok"]) for c in out["calls"]] == [
        ("replay:prior", None, True), ("failed", "timeout", False), ("unknown_model", None, False)]
    assert out["calls"][1]["failure_detail"] == "ReadTimeout"
    assert all(type(c["origin"]) is str for c in out["calls"])  # JSON-ready, not enums
