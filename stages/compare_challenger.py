"""Stage: the challenger against the champion under the new prices, and the verdict.

`python -m stages.compare_challenger --pricing-id ID` (the retrain flow's step after the
challenger's `dvc repro`; not a DVC stage). Reads the plan (`runs/retrain/<id>/plan.json`), the
champion's evaluation from the registry (`routerops.champion`), the challenger's evaluation and
package from the plan's workspace, and compares them with `routerops.challenger.compare` under the
workspace's (new) prices, by params `retrain.min_objective_gain`, `rewards.alpha` and the
evaluation's bootstrap settings. Writes `comparison.json` (the numbers, the verdict, the
challenger's version, the `routerops.challenger.evaluated` event) and `comparison.md` beside the
plan. Zero candidate calls: both evaluations are read from disk.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from routerops.challenger import Comparison, ComparisonError, PromotionRule, compare, render_comparison
from routerops.champion import TRAJECTORIES, LocalFirstObjects, read_champion
from routerops.config import Params, load_params
from routerops.evaluation import EvalRecord, read_records
from routerops.io import write_json_atomic, write_text_atomic
from routerops.lineage import LINEAGE_FILE, LineageError, ObjectMissing, RemoteUnavailable, parse_record
from routerops.paths import default_params_file, project_root, runs_dir
from routerops.pool import Pool, load_pool
from routerops.remote import DvcS3Remote, read_remote_config

__all__ = ["EVALUATED_EVENT", "REJECTED_EVENT", "Inputs", "Outputs", "main", "run", "write"]

EVALUATED_EVENT = "routerops.challenger.evaluated"
REJECTED_EVENT = "routerops.router.rejected"
OUT_DIR = "retrain"
SCRATCH = ".routerops/cache/champion"


@dataclass(frozen=True)
class Inputs:
    pricing_id: str
    champion: str
    champion_records: list[EvalRecord]
    challenger_version: str
    challenger_records: list[EvalRecord]
    pool: Pool  # the new prices, as the challenger was trained and evaluated under

    @classmethod
    def of_project(cls, root: Path, params: Params, pricing_id: str) -> Inputs:
        plan = json.loads((runs_dir(root) / OUT_DIR / pricing_id / "plan.json").read_text())
        ws = Path(plan["workspace"])
        champ = read_champion(root, params.package_router.model_name, params.evaluate_router.out_dir,
                              root / SCRATCH, LocalFirstObjects(root, lambda: DvcS3Remote(read_remote_config(root))))
        record_file = ws / params.package_router.out_dir / LINEAGE_FILE
        record = parse_record(record_file.read_bytes(), str(record_file))
        return cls(pricing_id, champ.described, read_records(champ.trajectories), record.version,
                   read_records(ws / params.evaluate_router.out_dir / TRAJECTORIES), load_pool(ws / "pool.yaml"))


@dataclass(frozen=True)
class Outputs:
    comparison: Comparison
    result: dict[str, Any]
    markdown: str


def run(params: Params, inputs: Inputs) -> Outputs:
    if inputs.pool.pricing.id != inputs.pricing_id:
        raise ComparisonError(f"the challenger's workspace has pricing {inputs.pool.pricing.id}, not "
                              f"{inputs.pricing_id}")
    ev = params.evaluate_router
    c = compare(inputs.champion_records, inputs.challenger_records, inputs.pool, alpha=params.rewards.alpha,
                rule=PromotionRule(params.retrain.min_objective_gain, ev.bootstrap_samples, ev.confidence, ev.seed),
                include_prompt=params.rewards.include_prompt_cost)
    result: dict[str, Any] = {"pricing_id": inputs.pricing_id, "champion": inputs.champion,
              "challenger_version": inputs.challenger_version, "verdict": c.verdict, "reason": c.reason,
              "comparison": c.as_json(),
              "event": {"event": EVALUATED_EVENT,
                        "resource": {"prefect.resource.id": f"routerops.router.{inputs.challenger_version}",
                                     "routerops.verdict": c.verdict},
                        "payload": {"pricing_id": inputs.pricing_id, "verdict": c.verdict, "reason": c.reason,
                                    "gain": c.gain, "gain_ci": list(c.gain_ci)}}}
    # A rejection is final here; a promotion's event comes from stages/promote_router.py once done.
    result["rejected_event"] = None if c.verdict == "promote" else {
        "event": REJECTED_EVENT, "resource": {"prefect.resource.id": f"routerops.router.{inputs.challenger_version}"},
        "payload": {"pricing_id": inputs.pricing_id, "reason": c.reason, "champion": inputs.champion}}
    md = render_comparison(c, inputs.champion, inputs.challenger_version)
    return Outputs(c, result, md)


def write(out: Outputs, out_dir: Path) -> None:
    # The markdown first: the flow reads comparison.json as the stage's marker.
    write_text_atomic(out_dir / "comparison.md", out.markdown)
    write_json_atomic(out_dir / "comparison.json", out.result)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m stages.compare_challenger", description=__doc__.split("\n\n")[0])
    ap.add_argument("--pricing-id", required=True)
    args = ap.parse_args()
    root = project_root()
    params = load_params(default_params_file(root))
    try:
        out = run(params, Inputs.of_project(root, params, args.pricing_id))
    except (ComparisonError, LineageError, RemoteUnavailable, ObjectMissing, FileNotFoundError) as exc:
        sys.stderr.write(f"compare_challenger: {exc}\n")
        raise SystemExit(1) from None
    write(out, runs_dir(root) / OUT_DIR / args.pricing_id)
    sys.stdout.write(out.markdown)


if __name__ == "__main__":
    main()
