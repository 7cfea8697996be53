"""The RouterOps pipeline flow (`make demo` runs it on the embedded local profile).

validate the pool -> start the loopback S3 store and point DVC at it -> seed the raw snapshot
(checked against data.dvc) -> `dvc repro` (build and validate the dataset, train the router,
evaluate it against baselines, package it as a BentoML model and Bento; DVC decides what re-runs)
-> gate on validation -> publish each stage's summary -> `dvc push` -> register the packaged version
(a candidate in the git-tag registry) and publish its lineage -> answer sample questions with
the scripted router -> serve the packaged Bento and ask it questions over HTTP -> publish the
evaluation's summary (its table, the verdict against random and the oracle) last -> say what is
left running. Orchestration only: every number and sentence comes from a file a stage wrote.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.tasks import (
    dvc_push,
    dvc_repro,
    gate,
    layout,
    publish_file,
    read_metrics,
    register_version,
    run_stage,
    running_services,
    seed_data,
    start_local_s3,
    validate_pool,
)
from routerops.paths import project_root


@flow(name="routerops-pipeline")
def pipeline(repo: Path | None = None, seed: bool = True, push: bool = True, samples: bool = True,
             start_store: bool = True, serve: bool = True) -> dict[str, Any]:
    """`repo` defaults to the project this runs in; `start_store=False` when the DVC remote is
    already served (another store, or AWS S3); `serve=False` skips asking the packaged service."""
    log = get_run_logger()
    repo = repo or project_root()
    paths = layout(repo)
    validate_pool(paths.pool_file, repo)
    if push and start_store:
        start_local_s3(repo)
    if seed:
        seed_data(repo)
    dvc_repro(repo)
    gate(paths.validation_metrics, "success")  # dvc repro already fails on it; the gate guards the push
    publish_file(paths.dataset_summary, "data-card", "Rows per split and source, duplicates, rejects")
    publish_file(paths.validation_summary, "validation", "Great Expectations suite on the built dataset")
    publish_file(paths.training_summary, "training", "Router training (start of RL vs final steps)")
    publish_file(paths.package_summary, "package", "The router's BentoML model and Bento")
    if push:
        dvc_push(repo)
    # The version's lineage: registered as a candidate (git tags), its tree and page published.
    register_version(repo, paths.lineage_dir)
    publish_file(paths.lineage_dir / "lineage.md", "lineage", "The router version's lineage (routerops lineage)")
    summary: dict[str, Any] = {"data_card": read_metrics(paths.data_card),
                               "validation": read_metrics(paths.validation_metrics),
                               "train": read_metrics(paths.train_metrics),
                               "evaluation": read_metrics(paths.evaluation_metrics)}
    if samples:
        run_stage("route_samples", repo)
        publish_file(paths.samples_dir / "summary.md", "route-samples",
                     "Scripted router on real NQ questions (replay pool)")
        summary["route_samples"] = read_metrics(paths.samples_dir / "summary.json")
    if serve:
        run_stage("ask_service", repo)
        publish_file(paths.service_dir / "summary.md", "service", "The packaged router asked over HTTP")
    # The evaluation comes last: it is the answer to "should I deploy this router?".
    publish_file(paths.evaluation_summary, "evaluation", "Router vs baselines, in dollars")
    left = running_services(repo)
    log.info(left if left else "Nothing left running.")
    return summary


if __name__ == "__main__":
    pipeline()
