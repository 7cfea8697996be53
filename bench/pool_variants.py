"""Pool variants the benches train and evaluate on: pool.yaml with some candidates' prices
multiplied (`--reprice NAME=FACTOR`, as after a price change) and, optionally, one candidate the
router was never trained with (given by name, descriptor and price only)."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from routerops.pool import Pool, load_pool, parse_pool

# The unseen candidate: priced like the cheapest 8B model, described as strong at recall; its
# replayed answers follow the prior accuracies below (LLaMA-3.1-70B's), so its descriptor and
# price say what its replies bear out: as accurate as the 70B model at a fifth of its price.
UNSEEN_NAME = "Qwen2.5-72B-Instruct"
UNSEEN: dict[str, Any] = {
    "name": UNSEEN_NAME, "aliases": ["qwen2.5-72b"], "provider_model_id": "qwen/qwen2.5-72b-instruct",
    "descriptor": ("Alibaba's 72B instruction model; broad world knowledge and strong recall of facts, "
                   "priced like a small model."),
    "replay": {"mean_completion_tokens": 120,
               "prior_accuracy": {"nq": 0.280, "popqa": 0.342, "hotpotqa": 0.260, "2wikimultihopqa": 0.270,
                                  "default": 0.288}},
}
UNSEEN_PRICE = {"input_usd_per_mtok": 0.18, "output_usd_per_mtok": 0.18}


def parse_reprice(items: Sequence[str], names: Sequence[str]) -> dict[str, float]:
    """`NAME=FACTOR` items into {name: factor}; a candidate named twice, one not in the pool, or a
    factor that is not a positive finite number is refused."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, factor = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--reprice {item!r}: expected NAME=FACTOR")
        if name not in names:
            raise ValueError(f"--reprice {item!r}: {name!r} is not a candidate (pool: {', '.join(names)})")
        if name in out:
            raise ValueError(f"--reprice {item!r}: {name!r} is repriced twice")
        try:
            value = float(factor)
        except ValueError:
            raise ValueError(f"--reprice {item!r}: factor {factor!r} is not a number") from None
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"--reprice {item!r}: factor must be a positive finite number")
        out[name] = value
    return out


def pool_variant(pool_file: Path, reprice: Mapping[str, float], unseen: bool = False) -> Pool:
    """pool.yaml with `reprice`'s prices multiplied and, if `unseen`, the unseen candidate added."""
    raw = yaml.safe_load(pool_file.read_text())
    prices = raw["pricing"]["prices"]
    for name, factor in reprice.items():
        prices[name] = {k: v * factor for k, v in prices[name].items()}
        raw["pricing"]["label"] += f"+{name}x{factor:g}"
    if unseen:
        prices[UNSEEN_NAME] = dict(UNSEEN_PRICE)
        raw["pricing"]["label"] += "+unseen"
        raw["candidates"].append(json.loads(json.dumps(UNSEEN)))
    label = ", ".join([*(f"{n} x{f:g}" for n, f in reprice.items()), *([f"+ {UNSEEN_NAME}"] if unseen else [])])
    return parse_pool(raw, f"{pool_file} ({label})" if label else str(pool_file))


def with_unseen(pool_file: Path) -> Pool:
    return pool_variant(pool_file, {}, unseen=True)


def repriced_pool(ap: argparse.ArgumentParser, items: Sequence[str], pool_file: Path) -> tuple[dict[str, float], Pool]:
    """`--reprice` items parsed against `pool_file`'s candidates (a malformed one ends the command
    with its error) and the pool they give."""
    try:
        reprice = parse_reprice(items, load_pool(pool_file).names)
    except ValueError as exc:
        ap.error(str(exc))
    return reprice, pool_variant(pool_file, reprice)
