"""Stage: read the current price list, and if a price changed, measure what it does to the
champion with zero candidate calls and say what to do.

`python -m stages.watch_prices` (the scheduled price watch's step, `flows/price_watch.py`; not a
DVC stage: it reads the world, it builds nothing the pipeline depends on). The source and format
are params `retrain.price_source` and `retrain.price_format` (`routerops.prices`); the impact and
the decision come from `routerops.price_impact` on the current evaluation's trajectories. Outputs
under `runs/price_watch/`, swapped in atomically: `watch.json` (changed or not, the pricing ids,
the decision and its reason, the event to emit), `impact.md`, and when a price changed the new
`pool.yaml` (what a retrain or a repriced version would use; `pool.yaml` itself is untouched).
A source that cannot be read or fails validation fails the stage and writes nothing.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from routerops.champion import LocalFirstObjects, read_champion
from routerops.config import Params, load_params
from routerops.evaluation import KnnEvidence, read_records
from routerops.io import atomic_dir, write_json_atomic, write_text_atomic
from routerops.lineage import LineageError, ObjectMissing, RemoteUnavailable
from routerops.paths import default_params_file, project_root, runs_dir
from routerops.pool import Pool, parse_pool
from routerops.price_impact import RetrainRule, assess, render_impact
from routerops.prices import PriceSourceError, apply_to_pool_text, parse_prices, price_changes, read_source
from routerops.remote import DvcS3Remote, read_remote_config

__all__ = ["CHANGED_EVENT", "Inputs", "Outputs", "main", "run", "write"]

CHANGED_EVENT = "routerops.prices.changed"
OUT_DIR = "price_watch"
SCRATCH = ".routerops/cache/champion"  # the champion's evaluation, when fetched from the remote


@dataclass(frozen=True)
class Inputs:
    pool: Pool  # the champion's prices
    pool_text: str  # its pool.yaml, which the new prices are written into
    champion: str  # who the change is measured against, in words
    source: str  # file (relative to the project) or URL
    trajectories: Path  # the champion's evaluation
    now: datetime
    knn: KnnEvidence | None = None  # its kNN baseline's fit evidence (None: an evaluation without it)

    @classmethod
    def of_project(cls, root: Path, params: Params) -> Inputs:
        src = params.retrain.price_source
        source = src if src.startswith(("http://", "https://")) or Path(src).is_absolute() else str(root / src)
        champ = read_champion(root, params.package_router.model_name, params.evaluate_router.out_dir,
                              root / SCRATCH, LocalFirstObjects(root, lambda: DvcS3Remote(read_remote_config(root))))
        return cls(champ.pool, champ.pool_text, champ.described, source, champ.trajectories,
                   datetime.now(UTC).replace(microsecond=0), champ.knn)


@dataclass(frozen=True)
class Outputs:
    watch: dict[str, Any]
    impact_md: str
    new_pool_text: str | None  # None when no price changed


def run(params: Params, inputs: Inputs) -> Outputs:
    fmt = params.retrain.price_format
    pulled = parse_prices(read_source(inputs.source), fmt, inputs.pool, inputs.source, inputs.now)
    watch: dict[str, Any] = {"checked_at": inputs.now.isoformat(), "champion": inputs.champion,
                             "source": inputs.source, "format": fmt,
                             "source_sha256": pulled.sha256, "old_pricing_id": inputs.pool.pricing.id}
    changes = price_changes(inputs.pool, pulled)
    if not changes:
        watch.update(changed=False, new_pricing_id=inputs.pool.pricing.id, decision="none",
                     reason="no price changed", event=None)
        md = (f"# Price watch: no change\n\nMeasured against {inputs.champion}. {len(inputs.pool)} models checked "
              f"against {fmt}: {inputs.source} at "
              f"{inputs.now.isoformat()}; pricing {inputs.pool.pricing.id} holds. Nothing to do.\n")
        return Outputs(watch, md, None)
    text = apply_to_pool_text(inputs.pool_text, inputs.pool, pulled,
                              label=f"{fmt}-{inputs.now.date().isoformat()}", effective=inputs.now.date())
    new_pool = parse_pool(yaml.safe_load(text), inputs.pool.source_file)
    impact = assess(read_records(inputs.trajectories), inputs.pool, new_pool, alpha=params.rewards.alpha,
                    rule=RetrainRule.of(params.retrain), seed=params.evaluate_router.seed, knn=inputs.knn,
                    include_prompt=params.rewards.include_prompt_cost)
    watch.update(changed=True, new_pricing_id=new_pool.pricing.id, decision=impact.decision, reason=impact.reason,
                 changes=[{"model": c.model, "side": c.side, "old": c.old, "new": c.new} for c in changes],
                 impact=impact.as_json(),
                 event={"event": CHANGED_EVENT, "resource": {"prefect.resource.id": f"routerops.pricing."
                                                                                    f"{new_pool.pricing.id}",
                                                             "routerops.decision": impact.decision},
                        "payload": {"old_pricing_id": inputs.pool.pricing.id, "new_pricing_id": new_pool.pricing.id,
                                    "decision": impact.decision, "reason": impact.reason,
                                    "source": inputs.source}})
    md = render_impact(impact, inputs.pool.pricing.label, new_pool.pricing.label)
    md += f"\nMeasured against {inputs.champion}.\n"
    return Outputs(watch, md, text)


def write(out: Outputs, out_dir: Path) -> None:
    with atomic_dir(out_dir) as tmp:
        write_json_atomic(tmp / "watch.json", out.watch)
        write_text_atomic(tmp / "impact.md", out.impact_md)
        if out.new_pool_text is not None:
            write_text_atomic(tmp / "pool.yaml", out.new_pool_text)


def main() -> None:
    root = project_root()
    params = load_params(default_params_file(root))
    try:
        out = run(params, Inputs.of_project(root, params))
    except (PriceSourceError, LineageError, RemoteUnavailable, ObjectMissing, ValueError) as exc:
        sys.stderr.write(f"watch_prices: {exc}\n")
        raise SystemExit(1) from None
    write(out, runs_dir(root) / OUT_DIR)
    sys.stdout.write(out.impact_md)


if __name__ == "__main__":
    main()
