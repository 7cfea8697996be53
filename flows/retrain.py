"""The retrain flow (`python -m flows.retrain --pricing-id ID`; the `retrain` deployment runs it
on each `routerops.prices.changed` event): build what a price change calls for, and promote it
only when it earns it. Orchestration only: the stages decide and write every number.

prepare the workspace (`stages/prepare_challenger.py`: a git worktree at the champion's lineage
commit with the new prices; a superseded change stops here) -> `dvc repro` there (retrain: every
stage the prices reach; reprice: evaluation and packaging of the same weights) -> for a retrain,
compare the challenger with the champion under the new prices (`stages/compare_challenger.py`),
emit `routerops.challenger.evaluated`, and stop with `routerops.router.rejected` unless it is
better beyond the interval -> push the workspace's outputs, register its version (parent: the
champion), switch the running service to it (`infra/local/service.py`: no request fails, the old
backend stays up), promote it (the old champion archived in the same transaction; on failure the
service switches back), retire the old backend, and emit `routerops.router.promoted` or
`routerops.router.repriced`. Every step before the promotion
writes only in the workspace and the run folder: a failure anywhere (a killed training, the S3
store down at the push) leaves champion and registry as they were, and a re-run resumes in the
same workspace.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from prefect import flow

from flows.tasks import dvc_push, emit, layout, publish_file, read_metrics, run_in_workspace, run_stage, service
from routerops.paths import project_root


@flow(name="routerops-retrain")
def retrain(pricing_id: str, repo: Path | None = None) -> dict[str, Any]:
    """`pricing_id` is the new pricing (the event's resource); `repo` defaults to this project."""
    repo = repo or project_root()
    out = layout(repo).retrain_dir / pricing_id
    run_stage("prepare_challenger", repo, ("--pricing-id", pricing_id))
    plan = read_metrics(out / "plan.json")
    if not plan["repro"]:
        return plan  # superseded by a newer price change, or nothing to build
    ws = Path(plan["workspace"])
    run_in_workspace(f"{plan['action']}-repro", plan["repro"], ws)
    if plan["action"] == "retrain":
        run_stage("compare_challenger", repo, ("--pricing-id", pricing_id))
        verdict = read_metrics(out / "comparison.json")
        publish_file(out / "comparison.md", "challenger", "The challenger against the champion under the new prices")
        emit(verdict["event"])
        if verdict["rejected_event"] is not None:
            emit(verdict["rejected_event"])
            return verdict
    dvc_push(ws)
    run_in_workspace("register", ["routerops.cli", "lineage", "register"], ws)
    # The running service (when the stack serves one) moves first and can move back: the old
    # backend answers its requests in flight and keeps running until the registry agrees.
    service("switch", repo, read_metrics(Path(plan["package_record"]))["version"])
    try:
        run_stage("promote_router", repo, ("--pricing-id", pricing_id))
    except Exception:
        service("revert", repo)
        raise
    service("commit", repo)
    promotion = read_metrics(out / "promotion.json")
    emit(promotion["event"])
    return promotion


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m flows.retrain",
                                 description="Build what a price change calls for; promote it only when it earns it.")
    ap.add_argument("--pricing-id", required=True)
    retrain(ap.parse_args().pricing_id)


if __name__ == "__main__":
    main()
