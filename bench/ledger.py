"""Time of one charge against the run budget: in memory (`RunBudget`) and in the shared ledger file
(`SharedRunBudget`, what a training run's every call pays), from one process and from several.

    python bench/ledger.py [--calls 2000] [--processes 4] [--dir DIR]

The ledger file goes in `--dir` (default: a temporary directory; put it where a run's checkpoint
folder would be: the cost is the filesystem's lock and rename).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere, without installing
    sys.path.insert(0, str(REPO_ROOT))

from routerops.candidates.budget import RunBudget, SharedRunBudget  # noqa: E402

CHARGER = """
import sys, time
sys.path.insert(0, sys.argv[3])
from routerops.candidates.budget import SharedRunBudget
ledger = SharedRunBudget(1e9, sys.argv[1])  # a limit, so check() reads the file as a run's does
t0 = time.perf_counter()
for _ in range(int(sys.argv[2])):
    ledger.check()
    ledger.charge(1e-6)
print(time.perf_counter() - t0)
"""


def per_call_us(budget: RunBudget, calls: int) -> tuple[float, float]:
    samples = []
    for _ in range(calls):
        t0 = time.perf_counter()
        budget.check()
        budget.charge(1e-6)
        samples.append(time.perf_counter() - t0)
    samples.sort()
    return statistics.median(samples) * 1e6, samples[int(0.95 * (len(samples) - 1))] * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--processes", type=int, default=4)
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.calls < 1 or args.processes < 1:
        ap.error("--calls and --processes must be >= 1")
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        # A finite limit: with none, check() returns without reading the ledger.
        rows = [("RunBudget (memory), 1 process", *per_call_us(RunBudget(1e9), args.calls))]
        rows.append(("SharedRunBudget (file), 1 process",
                     *per_call_us(SharedRunBudget(1e9, Path(d) / "one.json"), args.calls)))
        path = Path(d) / "many.json"
        procs = [subprocess.Popen([sys.executable, "-c", CHARGER, str(path), str(args.calls), str(REPO_ROOT)],
                                  stdout=subprocess.PIPE, text=True) for _ in range(args.processes)]
        try:
            outs = [p.communicate(timeout=600) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        if any(p.returncode for p in procs):
            print("a charging process failed", file=sys.stderr)
            return 1
        seconds = [float(out) for out, _ in outs]
        total = SharedRunBudget(None, path).calls
    print(f"{'budget':<44} {'median us':>10} {'p95 us':>10}")
    for name, median, p95 in rows:
        print(f"{name:<44} {median:>10.1f} {p95:>10.1f}")
    mean_us = statistics.mean(seconds) / args.calls * 1e6
    print(f"{f'SharedRunBudget (file), {args.processes} processes at once':<44} {mean_us:>10.1f} {'(mean)':>10}")
    print(f"\ncharges recorded by the {args.processes} processes: {total} of {args.processes * args.calls}")
    return 0 if total == args.processes * args.calls else 1


if __name__ == "__main__":
    raise SystemExit(main())
