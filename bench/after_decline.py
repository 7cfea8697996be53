"""What a second round could gain: every system's exact match on the questions whose first router
reply declined, read from an evaluation's trajectories (no calls, no training).

On those questions the first model gave nothing, so the router's EM there is what its later rounds
earned; each single model asked alone and the oracle (any candidate that answers) bound what a
better fallback could earn.

Usage: python bench/after_decline.py [--evaluation artifacts/evaluation]
Needs an evaluation's output (`make demo` writes artifacts/evaluation).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script, without installing

from routerops.behaviour import after_decline_headroom
from routerops.config import load_params
from routerops.evaluation import read_records
from routerops.paths import project_root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--evaluation", type=Path, default=None,
                    help="evaluation folder (default: evaluate_router.out_dir)")
    args = ap.parse_args()
    root = project_root()
    folder = args.evaluation or root / load_params(root / "params.yaml").evaluate_router.out_dir
    path = folder / "trajectories.parquet"
    if not path.is_file():
        sys.exit(f"no trajectories at {path}: run `make demo` (or the evaluate_router stage) first")
    table = after_decline_headroom(read_records(path))
    n = table.get("router", (0, 0))[0]
    print(f"## The {n} questions whose first router reply declined\n")
    print("| system | EM there | correct |")
    print("|---|---|---|")
    for system, (count, em) in sorted(table.items(), key=lambda kv: (-kv[1][1], kv[0])):
        print(f"| {system} | {em / count:.3f} | {em} of {count} |")


if __name__ == "__main__":
    main()
