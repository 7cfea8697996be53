"""Stage: make a price change's new version the champion.

`python -m stages.promote_router --pricing-id ID` (the retrain flow's last step, after the
workspace's package is pushed and registered as a candidate; not a DVC stage). Promotes the
workspace's version (its `lineage.json`) in the registry, which archives the previous champion in
the same git transaction, and writes `promotion.json` beside the plan: who replaced whom, and the
event to emit (`routerops.router.promoted` after a retrain, `routerops.router.repriced` after a
reprice). A registry error changes nothing: the promotion is one `git update-ref` transaction.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from routerops.config import load_params
from routerops.io import write_json_atomic
from routerops.lineage import LINEAGE_FILE, LineageError, parse_record
from routerops.paths import default_params_file, project_root, runs_dir
from routerops.registry import Registry, RegistryError

__all__ = ["EVENTS", "main", "promote"]

OUT_DIR = "retrain"
EVENTS = {"retrain": "routerops.router.promoted", "reprice": "routerops.router.repriced"}


def promote(root: Path, registry: Registry, plan: dict[str, Any], package_dir: Path) -> dict[str, Any]:
    record_file = package_dir / LINEAGE_FILE
    version = parse_record(record_file.read_bytes(), str(record_file)).version
    new, old = registry.promote(version)
    return {"pricing_id": plan["pricing_id"], "action": plan["action"], "champion": new.semver,
            "router_version": new.router_version, "lineage_commit": new.commit,
            "replaced": None if old is None else old.semver,
            "event": {"event": EVENTS[plan["action"]],
                      "resource": {"prefect.resource.id": f"routerops.router.{new.router_version}"},
                      "payload": {"pricing_id": plan["pricing_id"], "semver": new.semver,
                                  "replaced": None if old is None else old.semver,
                                  "replaced_router_version": None if old is None else old.router_version}}}


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m stages.promote_router", description=__doc__.split("\n\n")[0])
    ap.add_argument("--pricing-id", required=True)
    args = ap.parse_args()
    root = project_root()
    params = load_params(default_params_file(root))
    out_dir = runs_dir(root) / OUT_DIR / args.pricing_id
    plan = json.loads((out_dir / "plan.json").read_text())
    try:
        result = promote(root, Registry(root, params.package_router.model_name), plan,
                         Path(plan["workspace"]) / params.package_router.out_dir)
    except (RegistryError, LineageError) as exc:
        sys.stderr.write(f"promote_router: {exc}\n")
        raise SystemExit(1) from None
    write_json_atomic(out_dir / "promotion.json", result)
    sys.stdout.write(f"{result['champion']} (router {result['router_version']}) is champion"
                     + (f"; {result['replaced']} archived\n" if result["replaced"] else "\n"))


if __name__ == "__main__":
    main()
