"""Stage: answer a few real NQ questions with the scripted router and the replay pool.

Shows the whole routing machinery before a router is trained: prompt, protocol, candidate
calls, rewards, cost. Outputs (under `runs/route_samples/`): traces (JSONL), a summary with EM,
dollars and the share of calls replayed from recorded scores (JSON), and the same in words
(`summary.md`). `python -m stages.route_samples`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from routerops.config import Params, load_params
from routerops.io import write_json_atomic, write_text_atomic
from routerops.paths import default_params_file, default_pool_file, project_root, runs_dir
from routerops.policy import ScriptedRouter
from routerops.pool import Pool, load_pool
from routerops.rewards import ScoreItem, SlidingWindowNormalizer, score_batch
from routerops.runtime import build_backend, route_questions
from routerops.tokens import ByteTokenizer
from routerops.trace import render_trace, trajectory_json

__all__ = ["Inputs", "Outputs", "main", "run", "write"]


@dataclass(frozen=True)
class Inputs:
    pool: Pool
    data_dir: Path  # the raw snapshot (the replay pool's quality matrix under pool/)

    @classmethod
    def of_project(cls, root: Path, params: Params) -> Inputs:
        return cls(load_pool(default_pool_file()), root / params.build_dataset.raw_dir)


@dataclass(frozen=True)
class Outputs:
    traces: tuple[Mapping[str, Any], ...]
    summary: Mapping[str, Any]
    rendered: tuple[str, ...]
    markdown: str


def _markdown(s: Mapping[str, Any]) -> str:
    rows = [("questions", s["questions"]), ("exact match", f"{s['em']:.3f}"),
            ("format valid", f"{s['format_valid']:.3f}"), ("USD per question", f"{s['usd_per_question']:.8f}"),
            ("calls per question", f"{s['calls_per_question']:.2f}"),
            ("recorded scores, as recorded", f"{s['replay']['recorded_as_is']} of {s['replay']['calls']}"),
            ("recorded, changed by calibration", s["replay"]["recorded_changed_by_calibration"]),
            ("drawn from priors", s["replay"]["drawn_from_priors"]),
            ("pool snapshot / prices", f"{s['pool_snapshot']} / {s['prices_id']}")]
    return "\n".join(["# Scripted router on real NQ questions (replay pool)", "", "| metric | value |", "|---|---|",
                      *(f"| {k} | {v} |" for k, v in rows), ""])


def run(params: Params, inputs: Inputs) -> Outputs:
    candidates = params.candidates.model_copy(update={"backend": "replay"})
    backends = build_backend(candidates, data_dir=inputs.data_dir)
    replay = backends.replay
    assert replay is not None and replay.matrix is not None  # backend "replay" always builds both
    nq = sorted((q for q in replay.matrix.questions.values() if q.data_source == "nq"), key=lambda q: q.id)
    questions = random.Random(params.demo.seed).sample(nq, params.demo.questions)
    for name in params.demo.route_to:
        inputs.pool.get(name)  # KeyError naming the pool when demo.route_to names no candidate
    tok = ByteTokenizer()
    router = ScriptedRouter(tok, params.demo.route_to)
    # The scripted router writes full protocol turns and the byte tokenizer spends one token per
    # byte: give prompts and context byte-sized room.
    limits = dataclasses.replace(params.rollout.limits(), max_prompt_tokens=4096, max_context_tokens=8192)
    trajs = asyncio.run(route_questions(questions, params=params, pool=inputs.pool, tokenizer=tok,
                                        generator=router, backends=backends, limits=limits))
    scores, _ = score_batch([ScoreItem(t.segments, t.question.golden_answers, t.usages()) for t in trajs],
                            inputs.pool, params.rewards.alpha, SlidingWindowNormalizer(params.rewards.window),
                            params.rewards.outcome, params.rewards.include_prompt_cost, limits.rules)
    traces = tuple(trajectory_json(t) | {"score": s.as_dict()} for t, s in zip(trajs, scores, strict=True))
    n = len(trajs)
    summary = {
        "questions": n,
        "em": sum(s.em for s in scores) / n,
        "format_valid": sum(s.format_valid for s in scores) / n,
        "usd_per_question": sum(t.cost_usd for t in trajs) / n,
        "calls_per_question": sum(len(t.calls) for t in trajs) / n,
        "pool_snapshot": inputs.pool.snapshot_id,
        "prices_id": inputs.pool.pricing.id,
        "replay": replay.stats.summary(),
    }
    return Outputs(traces, summary, tuple(render_trace(t) for t in trajs), _markdown(summary))


def write(out: Outputs, out_dir: Path) -> None:
    write_text_atomic(out_dir / "traces.jsonl", "".join(json.dumps(t) + "\n" for t in out.traces))
    write_json_atomic(out_dir / "summary.json", dict(out.summary))
    write_text_atomic(out_dir / "summary.md", out.markdown)


def main() -> None:
    params = load_params(default_params_file())
    out = run(params, Inputs.of_project(project_root(), params))
    write(out, runs_dir() / "route_samples")
    for text in out.rendered:
        sys.stdout.write(text + "\n\n")
    sys.stdout.write(out.markdown)


if __name__ == "__main__":
    main()
