"""The price watch (`python -m flows.price_watch`; the `price-watch` deployment in `prefect.yaml`
runs it daily): read the current price list, measure a change against the champion with zero
candidate calls, publish the impact and the decision, and emit `routerops.prices.changed`
(carrying the new pricing id and the decision) when a price moved. Orchestration only:
`stages/watch_prices.py` computes and writes every number.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from flows.tasks import emit, layout, publish_file, read_metrics, run_stage
from routerops.paths import project_root


@flow(name="routerops-price-watch")
def price_watch(repo: Path | None = None) -> dict[str, Any]:
    """`repo` defaults to the project this runs in."""
    repo = repo or project_root()
    paths = layout(repo)
    run_stage("watch_prices", repo)
    watch = read_metrics(paths.price_watch_dir / "watch.json")
    publish_file(paths.price_watch_dir / "impact.md", "price-impact", "What the current prices do to the champion")
    if watch["event"] is not None:
        emit(watch["event"])
    return watch


if __name__ == "__main__":
    price_watch()
