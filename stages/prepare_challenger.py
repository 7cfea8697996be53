"""Stage: the workspace a price change's challenger (or repriced version) is built in.

`python -m stages.prepare_challenger --pricing-id ID` (the retrain flow's first step; not a DVC
stage: it makes a workspace, it is not part of one). It reads the latest price watch
(`runs/price_watch/`): when the watch has since seen other prices, this change is superseded and
nothing is built (the newer change has its own event and its own retrain). Otherwise it makes a
git worktree under params `retrain.workspaces`, named by the pricing id, at the champion's
lineage commit (the champion's code, params, data and lock; HEAD when no champion is registered),
writes the new `pool.yaml` there and, when params `retrain.budget_usd` is set, makes it the
workspace's `candidates.run_budget_usd`. The worktree shares this project's DVC cache and remote,
so checking out the champion's outputs copies files, and `dvc repro` there re-runs only what the
prices touch. The champion's workspace is never written. A worktree that already exists (a retrain
killed mid-run) is reused as it is: its persisted training checkpoint resumes.

What to run there is in `runs/retrain/<pricing id>/plan.json`: `retrain` re-runs every stage the
prices reach (training, evaluation, packaging); `reprice` keeps the champion's weights and re-runs
only the evaluation and the packaging under the new prices (`dvc repro --single-item`), so the
lock still records the prices the weights were trained under.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from routerops.config import Params, load_params
from routerops.io import write_json_atomic, write_text_atomic
from routerops.packaging import RECORD_FILE
from routerops.paths import default_params_file, project_root, runs_dir
from routerops.registry import Registry

__all__ = ["Inputs", "Outputs", "PrepareError", "main", "prepare_workspace", "run", "write"]

WATCH_DIR = "price_watch"
OUT_DIR = "retrain"
PREPARED = ".dvc/tmp/routerops-prepared"  # DVC's git-ignored scratch folder
REPRO = {"retrain": ["dvc", "repro"],
         "reprice": ["dvc", "repro", "--single-item", "evaluate_router", "package_router"]}


class PrepareError(RuntimeError):
    pass


@dataclass(frozen=True)
class Inputs:
    pricing_id: str
    watch: dict[str, Any]  # runs/price_watch/watch.json
    new_pool_text: str | None  # runs/price_watch/pool.yaml
    champion: str | None  # registry version
    base_commit: str  # the champion's lineage commit, else HEAD
    workspace: Path

    @classmethod
    def of_project(cls, root: Path, params: Params, pricing_id: str) -> Inputs:
        watch_dir = runs_dir(root) / WATCH_DIR
        try:
            watch = json.loads((watch_dir / "watch.json").read_text())
        except FileNotFoundError:
            raise PrepareError(f"{watch_dir / 'watch.json'}: no price watch has run (`python -m "
                               "flows.price_watch`)") from None
        pool = watch_dir / "pool.yaml"
        champion = Registry(root, params.package_router.model_name).champion()
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        return cls(pricing_id, watch, pool.read_text(encoding="utf-8") if pool.is_file() else None,
                   None if champion is None else champion.semver,
                   head.stdout.strip() if champion is None else champion.commit,
                   root / params.retrain.workspaces / pricing_id)


@dataclass(frozen=True)
class Outputs:
    """The plan (`plan.json`)."""

    pricing_id: str
    action: str  # retrain, reprice, or superseded / none (nothing to build)
    reason: str
    champion: str | None
    base_commit: str
    workspace: str
    repro: list[str]
    run_budget_usd: float | None
    package_record: str  # where the workspace's packaging writes the version's record

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def run(params: Params, inputs: Inputs) -> Outputs:
    w = inputs.watch
    action, reason = w.get("decision", "none"), str(w.get("reason", ""))
    if w.get("new_pricing_id") != inputs.pricing_id:
        action, reason = "superseded", (f"the latest price watch ({w.get('checked_at')}) found pricing "
                                        f"{w.get('new_pricing_id')}, not {inputs.pricing_id}: that change has its own "
                                        "retrain")
    elif action in REPRO and inputs.new_pool_text is None:
        raise PrepareError(f"the price watch decided {action} for {inputs.pricing_id} but wrote no pool.yaml")
    return Outputs(inputs.pricing_id, action, reason, inputs.champion, inputs.base_commit, str(inputs.workspace),
                REPRO.get(action, []), params.retrain.budget_usd,
                str(inputs.workspace / params.package_router.out_dir / RECORD_FILE))


def _git(root: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise PrepareError(f"git {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def _dvc(ws: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=ws, capture_output=True, text=True, timeout=1800)


def prepare_workspace(root: Path, plan: Outputs, new_pool_text: str) -> bool:
    """Make (or find) the plan's worktree and set it up; True when it already existed."""
    ws = Path(plan.workspace)
    marker = ws / PREPARED  # written last: a workspace without it is remade from the start
    existed = marker.is_file()
    if not existed:
        if ws.exists():  # half made by a killed run
            shutil.rmtree(ws)
        _git(root, "worktree", "prune")
        ws.parent.mkdir(parents=True, exist_ok=True)
        _git(root, "worktree", "add", "--detach", str(ws), plan.base_commit)
    # The champion's remote (endpoint and keys live in the untracked config.local) and cache.
    local = root / ".dvc" / "config.local"
    config = local.read_text() if local.is_file() else ""
    write_text_atomic(ws / ".dvc" / "config.local", f"{config}\n[cache]\n    dir = {root / '.dvc' / 'cache'}\n")
    if not existed:
        # Written once: a later watch of the same prices writes another retrieval time into its
        # pool.yaml, which as a stage param would re-run a finished (or resuming) training.
        write_text_atomic(ws / "pool.yaml", new_pool_text)
        if plan.run_budget_usd is not None:
            p = ws / "params.yaml"
            raw = yaml.safe_load(p.read_text(encoding="utf-8"))
            raw["candidates"]["run_budget_usd"] = plan.run_budget_usd
            write_text_atomic(p, yaml.safe_dump(raw, sort_keys=False))
        out = _dvc(ws, "checkout", "--quiet")
        if out.returncode != 0:  # the local cache lacks some of the champion's outputs
            out = _dvc(ws, "pull", "--quiet")
            if out.returncode != 0:
                raise PrepareError(f"{ws}: neither the cache nor the remote has the champion's outputs: "
                                   f"{(out.stderr or out.stdout).strip()[-2000:]}")
        write_text_atomic(marker, plan.pricing_id)
    return existed


def write(plan: Outputs, root: Path, new_pool_text: str | None) -> bool:
    """Prepare the plan's workspace when it builds anything, then write `plan.json` (last: the
    flow reads it as the stage's marker). True when the workspace already existed (a resume)."""
    resumed = prepare_workspace(root, plan, new_pool_text or "") if plan.repro else False
    out_dir = runs_dir(root) / OUT_DIR / plan.pricing_id
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "plan.json", plan.as_json())
    return resumed


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m stages.prepare_challenger", description=__doc__.split("\n\n")[0])
    ap.add_argument("--pricing-id", required=True, help="the new pricing id (the event's payload)")
    args = ap.parse_args()
    root = project_root()
    params = load_params(default_params_file(root))
    try:
        inputs = Inputs.of_project(root, params, args.pricing_id)
        plan = run(params, inputs)
        resumed = write(plan, root, inputs.new_pool_text)
    except PrepareError as exc:
        sys.stderr.write(f"prepare_challenger: {exc}\n")
        raise SystemExit(1) from None
    sys.stdout.write(f"{plan.action} for pricing {plan.pricing_id}: {plan.reason}\n"
                     + (f"workspace {plan.workspace} ({'resumed' if resumed else 'new'}, at {plan.base_commit[:12]}); "
                        f"run there: {' '.join(plan.repro)}\n" if plan.repro else ""))


if __name__ == "__main__":
    main()
