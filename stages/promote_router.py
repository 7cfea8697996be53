"""Stage: make a price change's new version the champion.

`python -m stages.promote_router --pricing-id ID` (the retrain flow's last step, after the
workspace's package is pushed and registered as a candidate; not a DVC stage). `run` works out
the promotion from the plan, the workspace's `lineage.json` and the registry as it stands: who
replaces whom, and the event to emit (`routerops.router.promoted` after a retrain,
`routerops.router.repriced` after a reprice). `write` promotes the version in the registry, which
archives the previous champion in the same git transaction, and writes `promotion.json` beside
the plan. A registry error changes nothing: the promotion is one `git update-ref` transaction;
one that lands on a registry another promotion changed since `run` read it is refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from routerops.config import Params, load_params
from routerops.io import write_json_atomic
from routerops.lineage import LINEAGE_FILE, LineageError, parse_record
from routerops.paths import default_params_file, project_root, runs_dir
from routerops.registry import Entry, Registry, RegistryError

__all__ = ["EVENTS", "Inputs", "Outputs", "main", "run", "write"]

OUT_DIR = "retrain"
EVENTS = {"retrain": "routerops.router.promoted", "reprice": "routerops.router.repriced"}


@dataclass(frozen=True)
class Inputs:
    pricing_id: str
    action: str  # the plan's: retrain or reprice
    candidate: Entry  # the workspace's version, as registered
    champion: Entry | None  # the registry's champion now

    @classmethod
    def of_project(cls, root: Path, params: Params, pricing_id: str) -> Inputs:
        plan = json.loads((runs_dir(root) / OUT_DIR / pricing_id / "plan.json").read_text())
        record_file = Path(plan["workspace"]) / params.package_router.out_dir / LINEAGE_FILE
        version = parse_record(record_file.read_bytes(), str(record_file)).version
        registry = Registry(root, params.package_router.model_name)
        return cls(plan["pricing_id"], plan["action"], registry.resolve(version), registry.champion())


@dataclass(frozen=True)
class Outputs:
    version: str  # the router version to promote
    replaces: str | None  # the champion's semver it replaces
    result: dict[str, Any]  # promotion.json


def run(params: Params, inputs: Inputs) -> Outputs:
    new, old = inputs.candidate, inputs.champion
    if new.stage == "champion":
        raise RegistryError(f"{new.semver} ({new.router_version}) is already the champion")
    if inputs.action not in EVENTS:
        raise RegistryError(f"the plan for {inputs.pricing_id} is {inputs.action!r}: nothing to promote")
    replaced = None if old is None else old.semver
    result = {"pricing_id": inputs.pricing_id, "action": inputs.action, "champion": new.semver,
              "router_version": new.router_version, "lineage_commit": new.commit, "replaced": replaced,
              "event": {"event": EVENTS[inputs.action],
                        "resource": {"prefect.resource.id": f"routerops.router.{new.router_version}"},
                        "payload": {"pricing_id": inputs.pricing_id, "semver": new.semver, "replaced": replaced,
                                    "replaced_router_version": None if old is None else old.router_version}}}
    return Outputs(new.router_version, replaced, result)


def write(out: Outputs, registry: Registry, out_dir: Path) -> None:
    current = registry.champion()
    now = None if current is None else current.semver
    if now != out.replaces:
        raise RegistryError(f"the champion is {now or 'none'} now, {out.replaces or 'none'} when the promotion of "
                            f"{out.result['champion']} was planned; re-run it")
    registry.promote(out.version)
    write_json_atomic(out_dir / "promotion.json", out.result)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m stages.promote_router", description=__doc__.split("\n\n")[0])
    ap.add_argument("--pricing-id", required=True)
    args = ap.parse_args()
    root = project_root()
    params = load_params(default_params_file(root))
    try:
        out = run(params, Inputs.of_project(root, params, args.pricing_id))
        write(out, Registry(root, params.package_router.model_name), runs_dir(root) / OUT_DIR / args.pricing_id)
    except (RegistryError, LineageError, FileNotFoundError) as exc:
        sys.stderr.write(f"promote_router: {exc}\n")
        raise SystemExit(1) from None
    r = out.result
    sys.stdout.write(f"{r['champion']} (router {r['router_version']}) is champion"
                     + (f"; {r['replaced']} archived\n" if r["replaced"] else "\n"))


if __name__ == "__main__":
    main()
