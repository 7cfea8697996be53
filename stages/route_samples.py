"""Stage: answer a few real NQ questions with the scripted router and the replay pool.

Shows the whole routing machinery before a router is trained: prompt, protocol, candidate
calls, rewards, cost. Outputs: traces (JSONL) and a summary with EM, dollars and the share of
calls replayed from recorded scores. `python -m stages.route_samples`.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from routerops.cli import render_trace, trajectory_json
from routerops.config import Params, load_params
from routerops.io import write_json_atomic, write_text_atomic
from routerops.paths import default_pool_file, project_root, runs_dir, shared_data_dir
from routerops.policy import ScriptedRouter
from routerops.pool import Pool, load_pool
from routerops.rewards import ScoreItem, SlidingWindowNormalizer, score_batch
from routerops.runtime import build_backend, route_questions
from routerops.tokens import ByteTokenizer


@dataclass(frozen=True)
class Inputs:
    pool: Pool
    data_dir: Path


@dataclass(frozen=True)
class Outputs:
    traces: list[dict[str, Any]]
    summary: dict[str, Any]
    rendered: list[str]


def run(params: Params, inputs: Inputs) -> Outputs:
    backends = build_backend(params.candidates.model_copy(update={"backend": "replay"}), data_dir=inputs.data_dir)
    assert backends.replay is not None and backends.replay.matrix is not None
    nq = sorted((q for q in backends.replay.matrix.questions.values() if q.data_source == "nq"), key=lambda q: q.id)
    questions = random.Random(params.demo.seed).sample(nq, params.demo.questions)
    tok = ByteTokenizer()
    router = ScriptedRouter(tok, params.demo.route_to)
    # The byte tokenizer spends one token per byte: give the prompt byte-sized room.
    rollout = params.rollout.model_copy(update={"max_prompt_tokens": 4096, "max_context_tokens": 8192})
    trajs = asyncio.run(route_questions(questions, params=params.model_copy(update={"rollout": rollout}),
                                        pool=inputs.pool, tokenizer=tok, generator=router, backends=backends))
    scores, _ = score_batch([ScoreItem(t.segments, t.question.golden_answers, t.usages()) for t in trajs],
                            inputs.pool, params.rewards.alpha, SlidingWindowNormalizer(params.rewards.window),
                            params.rewards.outcome)
    traces = [trajectory_json(t) | {"score": s.as_dict()} for t, s in zip(trajs, scores, strict=True)]
    n = len(trajs)
    summary = {
        "questions": n,
        "em": sum(s.em for s in scores) / n,
        "format_valid": sum(s.format_valid for s in scores) / n,
        "usd_per_question": sum(t.cost_usd for t in trajs) / n,
        "calls_per_question": sum(len(t.calls) for t in trajs) / n,
        "pool_snapshot": inputs.pool.snapshot_id,
        "prices_id": inputs.pool.pricing.id,
        "replay": backends.replay.stats.summary(),
    }
    return Outputs(traces, summary, [render_trace(t) for t in trajs])


def main() -> None:
    params = load_params(project_root() / "params.yaml")
    out = run(params, Inputs(load_pool(default_pool_file()), shared_data_dir()))
    out_dir = runs_dir() / "route_samples"
    write_text_atomic(out_dir / "traces.jsonl", "".join(json.dumps(t) + "\n" for t in out.traces))
    write_json_atomic(out_dir / "summary.json", out.summary)
    for text in out.rendered:
        sys.stdout.write(text + "\n\n")
    sys.stdout.write(json.dumps(out.summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
