"""The RouterOps pipeline flow (`make demo` runs it on the embedded local profile).

Today it validates the pool and answers a handful of real questions with the scripted router and
the offline replay pool; later stages (dataset build and validation, training, evaluation,
packaging) join this same flow.
"""

from __future__ import annotations

import json

from prefect import flow

from flows.tasks import publish_markdown, run_stage, validate_pool
from routerops.paths import default_pool_file, runs_dir


def _summary_markdown(summary: dict) -> str:
    replay = summary["replay"]
    return "\n".join([
        "| metric | value |", "|---|---|",
        f"| questions | {summary['questions']} |",
        f"| exact match | {summary['em']:.3f} |",
        f"| format valid | {summary['format_valid']:.3f} |",
        f"| USD per question | {summary['usd_per_question']:.8f} |",
        f"| calls per question | {summary['calls_per_question']:.2f} |",
        f"| calls replayed from recorded scores | {replay['replayed_from_recorded']} of {replay['calls']} |",
        f"| pool snapshot / prices | {summary['pool_snapshot']} / {summary['prices_id']} |",
    ])


@flow(name="routerops-pipeline")
def pipeline() -> dict:
    validate_pool(str(default_pool_file()))
    run_stage("route_samples")
    summary = json.loads((runs_dir() / "route_samples" / "summary.json").read_text())
    publish_markdown("route-samples", _summary_markdown(summary), "Scripted router on real NQ questions (replay pool)")
    print(_summary_markdown(summary))
    return summary


if __name__ == "__main__":
    pipeline()
