"""The RouterOps pipeline flow (`make demo` runs it on the embedded local profile).

validate the pool -> start the loopback S3 store and point DVC at it -> seed the raw snapshot
(checked against data.dvc) -> `dvc repro` (build and validate the dataset, train the router,
evaluate it against baselines; DVC decides what re-runs) -> gate on validation -> `dvc push` ->
answer sample questions with the scripted router -> print the evaluation table, the verdict against
random and the oracle, and the Pareto plot's path. Packaging joins this flow when it lands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from flows.tasks import (
    REPO_ROOT,
    dvc_push,
    dvc_repro,
    publish_markdown,
    read_metrics,
    run_stage,
    seed_data,
    start_local_s3,
    validate_pool,
)


class GateFailed(RuntimeError):
    pass


def _table(rows: list[tuple[str, Any]]) -> str:
    return "\n".join(["| metric | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def _data_card_markdown(card: dict[str, Any]) -> str:
    lines = ["| split | rows per source |", "|---|---|"]
    for split, counts in card["rows"].items():
        lines.append(f"| {split} | {', '.join(f'{k} {v}' for k, v in counts.items())} |")
    removed = sum(n for split in card["duplicates_removed"].values() for n in split.values())
    rejected = sum(n for f in card["files"].values() for n in f["rejected"].values())
    lines += ["", f"Duplicates removed: {removed}; raw rows rejected: {rejected}; "
              f"pool snapshot {card['pool_snapshot']}."]
    return "\n".join(lines)


@flow(name="routerops-pipeline")
def pipeline(repo: Path = REPO_ROOT, seed: bool = True, push: bool = True, samples: bool = True,
             start_store: bool = True) -> dict[str, Any]:
    """`start_store=False` when the DVC remote is already served (another store, or AWS S3)."""
    import os

    validate_pool(os.environ.get("ROUTEROPS_POOL", str(repo / "pool.yaml")))
    if push and start_store:
        start_local_s3(repo)
    if seed:
        seed_data(repo)
    dvc_repro(repo)
    validation = read_metrics("metrics/validation.json", repo)
    if not validation["success"]:  # dvc repro already fails on this; the gate guards the push
        raise GateFailed(f"dataset validation failed: {validation}")
    card = read_metrics("metrics/data_card.json", repo)
    publish_markdown("data-card", _data_card_markdown(card), "Rows per split and source, duplicates, rejects")
    print(_data_card_markdown(card))
    train = read_metrics("metrics/train.json", repo)
    if train.get("final") and train.get("start"):
        st, fi = train["start"], train["final"]
        table = _table([
            ("backend / GRPO steps", f"{train['backend']} / {train['steps']}"),
            ("reward (warm start -> final)", f"{st['reward']:.3f} -> {fi['reward']:.3f}"),
            ("format-valid", f"{st['format_valid']:.3f} -> {fi['format_valid']:.3f}"),
            ("exact match", f"{st['em']:.3f} -> {fi['em']:.3f}"),
            ("USD per question", f"{fi['usd_per_question']:.8f}"),
            ("calls per question", f"{fi['calls_per_question']:.2f}"),
            ("call share", ", ".join(f"{k.split('/', 1)[1]} {v:.2f}" for k, v in fi.items() if k.startswith("share/"))),
        ])
        publish_markdown("training", table, "Router training (start of RL vs final step)")
        print(table)
    evaluation = read_metrics("metrics/evaluation.json", repo)
    if push:
        dvc_push(repo)
    summary: dict[str, Any] = {"data_card": card, "validation": validation, "train": train,
                               "evaluation": evaluation}
    if samples:
        run_stage("route_samples", repo)
        import json

        runs = Path(os.environ.get("ROUTEROPS_RUNS_DIR", repo / "runs"))
        summary["route_samples"] = s = json.loads((runs / "route_samples" / "summary.json").read_text())
        table = _table([
            ("questions", s["questions"]), ("exact match", f"{s['em']:.3f}"),
            ("format valid", f"{s['format_valid']:.3f}"), ("USD per question", f"{s['usd_per_question']:.8f}"),
            ("calls per question", f"{s['calls_per_question']:.2f}"),
            ("calls replayed from recorded scores",
             f"{s['replay']['replayed_from_recorded']} of {s['replay']['calls']}"),
            ("pool snapshot / prices", f"{s['pool_snapshot']} / {s['prices_id']}"),
        ])
        publish_markdown("route-samples", table, "Scripted router on real NQ questions (replay pool)")
        print(table)
    # The evaluation comes last: it is the answer to "should I deploy this router?".
    report = repo / "artifacts" / "evaluation" / "report.md"
    if report.is_file():
        text = report.read_text()
        publish_markdown("evaluation", text.split("## Exact match per benchmark")[0]
                         + _section(text, "## Router minus each baseline"), "Router vs baselines, in dollars")
        print(text.split("## Exact match per benchmark")[0])
        print(_verdict(text))
        print(f"evaluation report: {report}\nPareto plot: {report.parent / 'pareto.png'}")
    return summary


def _section(markdown: str, heading: str) -> str:
    if heading not in markdown:
        return ""
    rest = markdown.split(heading, 1)[1]
    return heading + rest.split("\n## ", 1)[0].split("\n![", 1)[0]


def _verdict(markdown: str) -> str:
    """The report's sentences on dominance of random and distance from the oracle."""
    return "\n".join(line for line in markdown.splitlines()
                     if line.startswith(("The router ", "Distance from the oracle")))


if __name__ == "__main__":
    pipeline()
