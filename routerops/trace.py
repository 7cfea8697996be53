"""Readable and JSON views of one routing episode: the policy's text, each call with tokens and
dollars, the answer and why the episode ended. Used by the CLI, the stages and the service."""

from __future__ import annotations

from typing import Any

from routerops.rollout import Trajectory

__all__ = ["render_trace", "trajectory_json"]


def render_trace(traj: Trajectory) -> str:
    """A readable trace: the policy's text, each call with tokens and dollars, the total."""
    out = [f"Q: {traj.question.text}"]
    if traj.question.golden_answers:
        out.append(f"gold: {' | '.join(traj.question.golden_answers)}")
    out.append("--- trace ---")
    out.append(traj.response_text.strip())
    out.append("--- calls ---")
    for c in traj.calls:
        if c.ok:
            status = "ok"
        elif c.failure is not None:
            status = f"FAILED ({c.failure.value}: {c.failure_detail})"
        else:
            status = f"not called ({c.origin.value})"
        out.append(f"turn {c.turn}: {c.model:<24} {c.completion_tokens:>4} completion tok  "
                   f"${c.cost_usd:.8f}  [{c.origin.value}] {status}")
    if not traj.calls:
        out.append("(no calls)")
    out.append(f"answer: {traj.answer!r}  stop: {traj.stop_reason}  turns: {traj.turns}  "
               f"cost: ${traj.cost_usd:.8f} ({traj.cost_usd * 1e6:.1f} micro-USD)")
    return "\n".join(out)


def trajectory_json(traj: Trajectory) -> dict[str, Any]:
    """The episode as plain JSON values (enums as their strings)."""
    return {
        "question": traj.question.text, "question_id": traj.question.id, "data_source": traj.question.data_source,
        "golden_answers": list(traj.question.golden_answers), "response": traj.response_text,
        "answer": traj.answer, "stop_reason": traj.stop_reason, "turns": traj.turns, "actions": traj.actions,
        "cost_usd": traj.cost_usd,
        "calls": [{"turn": c.turn, "model": c.model, "query": c.query, "ok": c.ok, "reply": c.reply,
                   "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                   "cost_usd": c.cost_usd, "origin": c.origin.value, "attempts": c.attempts,
                   "failure": None if c.failure is None else c.failure.value, "failure_detail": c.failure_detail}
                  for c in traj.calls],
    }
