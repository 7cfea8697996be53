"""Time of the key store's calls on the service's path: authentication and the charge after a reply.

    python bench/keys.py [--calls 500] [--dir DIR]

`KeyStore` keeps one connection per thread; the "connection per call" rows open and close one
around each statement, as the store first did, to show what that cost (closing the last
connection of a WAL file checkpoints it). Both run on a file in `--dir` (default: a temporary
directory; put it on the filesystem a deployment would use: fsync time is the filesystem's).
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere, without installing
    sys.path.insert(0, str(REPO_ROOT))

from routerops.keys import KeyStore  # noqa: E402


def timed(fn: Callable[[], object], calls: int) -> tuple[float, float]:
    fn()
    samples = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    samples.sort()
    return statistics.median(samples) * 1e3, samples[int(0.95 * (len(samples) - 1))] * 1e3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--dir", type=Path, default=None)
    a = ap.parse_args(argv)
    if a.calls < 1:
        ap.error("--calls must be at least 1")
    with tempfile.TemporaryDirectory(dir=a.dir, prefix="routerops-keys-") as d:
        store = KeyStore(Path(d) / "keys.sqlite")
        key = store.create("bench")
        key_id = key.record.key_id

        def per_call(sql: str, params: tuple[object, ...]) -> Callable[[], object]:
            def run() -> object:
                conn = sqlite3.connect(store.path, timeout=30, isolation_level=None)
                try:
                    conn.execute("PRAGMA busy_timeout = 30000")
                    return conn.execute(sql, params).fetchone()
                finally:
                    conn.close()
            return run

        rows = [
            ("authenticate", timed(lambda: store.authenticate(key.secret), a.calls)),
            ("charge", timed(lambda: store.charge(key_id, 1e-6), a.calls)),
            ("authenticate, connection per call", timed(per_call(
                "SELECT * FROM api_keys WHERE key_id = ?", (key_id,)), a.calls)),
            ("charge, connection per call", timed(per_call(
                "UPDATE api_keys SET spent_usd = spent_usd + ?, requests = requests + 1 WHERE key_id = ? RETURNING *",
                (1e-6, key_id)), a.calls)),
        ]
        store.close()
    print(f"\n{a.calls} calls each\n\n| call | p50 (ms) | p95 (ms) |\n|---|---|---|")
    for name, (p50, p95) in rows:
        print(f"| {name} | {p50:.3f} | {p95:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
