"""Price lists from where prices are published, into the pool's pricing block.

Three formats, read as a user downloads them:

- `litellm`: LiteLLM's `model_prices_and_context_window.json`: one object per model key
  (provider-prefixed, e.g. `together_ai/...`) with `input_cost_per_token` and
  `output_cost_per_token` in USD per token (numbers);
- `openrouter`: OpenRouter's `GET /api/v1/models`: `{"data": [{"id", "pricing": {"prompt",
  "completion", ...}}]}`, USD per token as decimal strings;
- `pool`: our own pool format (a pool file, or a document with a `pricing.prices` block), USD
  per 1M tokens.

Each candidate is found in a source by its id in `pool.yaml`'s `price_sources.<format>` (the
`pool` format uses the candidate's name). Prices become USD per 1M tokens, are validated like any
pool, and replace the pricing block of `pool.yaml` with their provenance (source, retrieval time,
sha256 of the bytes read). A candidate missing from the source, a price that is not a number or
is negative, an unreadable or malformed file: `PriceSourceError` naming the model and the field,
and nothing is written.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

import yaml

from routerops.pool import Pool, PoolError, Price, parse_pool

__all__ = ["FORMATS", "PriceChange", "PriceSourceError", "PulledPrices", "apply_to_pool_text", "parse_prices",
           "price_changes", "read_source"]

SourceFormat = Literal["litellm", "openrouter", "pool"]
FORMATS: tuple[SourceFormat, ...] = ("litellm", "openrouter", "pool")
PER_MTOK = Decimal(1_000_000)


class PriceSourceError(ValueError):
    """A price list cannot be used; the message names the source, and the model and field at fault."""


@dataclass(frozen=True)
class PulledPrices:
    prices: dict[str, Price]  # candidate name -> USD per 1M tokens
    source: str  # the file or URL
    format: SourceFormat
    retrieved_at: datetime
    sha256: str  # of the bytes read


@dataclass(frozen=True)
class PriceChange:
    model: str
    side: Literal["input", "output"]
    old: float
    new: float


def read_source(source: str, *, timeout_s: float = 30.0) -> bytes:
    """A file's bytes, or an http(s) URL's body (one GET; a non-200 is an error)."""
    if re.match(r"^https?://", source):
        import httpx

        try:
            r = httpx.get(source, timeout=timeout_s, follow_redirects=True)
        except httpx.HTTPError as exc:
            raise PriceSourceError(f"{source}: cannot be read: {exc}") from None
        if r.status_code != 200:
            raise PriceSourceError(f"{source}: HTTP {r.status_code}")
        return r.content
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        raise PriceSourceError(f"{source}: cannot be read: {exc.strerror or exc}") from None


def _usd(value: Any, where: str, *, per_token: bool, strings: bool) -> float:
    """A price as USD per 1M tokens; refuses booleans, non-numbers (strings unless `strings`),
    NaN, infinities and negatives."""
    if isinstance(value, bool) or not (isinstance(value, int | float) or (strings and isinstance(value, str))):
        raise PriceSourceError(f"{where}: not a number ({value!r})")
    try:
        d = Decimal(str(value).strip())
    except InvalidOperation:
        raise PriceSourceError(f"{where}: not a number ({value!r})") from None
    if not d.is_finite():
        raise PriceSourceError(f"{where}: not a finite number ({value!r})")
    if d < 0:
        raise PriceSourceError(f"{where}: negative ({value!r})")
    usd = float(d * PER_MTOK) if per_token else float(d)
    if not math.isfinite(usd):
        raise PriceSourceError(f"{where}: out of range ({value!r})")
    return round(usd, 9)  # decimal strings like "0.0000009" land on 0.9, not 0.8999999999999999


def _source_id(pool: Pool, fmt: SourceFormat, name: str, source: str) -> str:
    if fmt == "pool":
        return name
    ids = pool.price_sources.get(fmt, {})
    if name not in ids:
        raise PriceSourceError(f"{source}: model {name!r}: pool.yaml has no price_sources.{fmt} id for it")
    return ids[name]


def parse_prices(data: bytes, fmt: SourceFormat, pool: Pool, source: str,
                 retrieved_at: datetime | None = None) -> PulledPrices:
    """Every candidate of `pool` priced from `data` (extra models in the source are ignored)."""
    if fmt not in FORMATS:
        raise PriceSourceError(f"{source}: unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    try:
        doc = yaml.safe_load(data.decode("utf-8")) if fmt == "pool" else json.loads(data)
    except (UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        raise PriceSourceError(f"{source}: not valid {'YAML' if fmt == 'pool' else 'JSON'} ({exc})") from None
    entries: Mapping[str, Any]
    if fmt == "litellm":
        if not isinstance(doc, Mapping):
            raise PriceSourceError(f"{source}: a LiteLLM price file is a JSON object of model -> prices")
        entries = doc
    elif fmt == "openrouter":
        rows = doc.get("data") if isinstance(doc, Mapping) else None
        if not isinstance(rows, list):
            raise PriceSourceError(f"{source}: an OpenRouter model list is {{\"data\": [...]}}")
        entries = {str(r.get("id")): r for r in rows if isinstance(r, Mapping)}
    else:
        pricing = doc.get("pricing") if isinstance(doc, Mapping) else None
        entries = pricing.get("prices") if isinstance(pricing, Mapping) else None  # type: ignore[assignment]
        if not isinstance(entries, Mapping):
            raise PriceSourceError(f"{source}: a pool price list has a pricing.prices mapping")
    prices: dict[str, Price] = {}
    for c in pool:
        key = _source_id(pool, fmt, c.name, source)
        entry = entries.get(key)
        where = f"{source}: model {c.name!r} ({fmt} id {key!r})"
        if not isinstance(entry, Mapping):
            raise PriceSourceError(f"{where}: not in the source")
        if fmt == "litellm":
            fields = {"input": "input_cost_per_token", "output": "output_cost_per_token"}
            values, per_token, strings = entry, True, False
        elif fmt == "openrouter":
            fields = {"input": "prompt", "output": "completion"}
            raw_pricing = entry.get("pricing")
            if not isinstance(raw_pricing, Mapping):
                raise PriceSourceError(f"{where}: field 'pricing': missing")
            values, per_token, strings = raw_pricing, True, True
        else:
            fields = {"input": "input_usd_per_mtok", "output": "output_usd_per_mtok"}
            values, per_token, strings = entry, False, False
        usd: dict[str, float] = {}
        for side, f in fields.items():
            if f not in values:
                raise PriceSourceError(f"{where}: field {f!r}: missing")
            usd[side] = _usd(values[f], f"{where}: field {f!r}", per_token=per_token, strings=strings)
        prices[c.name] = Price(input_usd_per_mtok=usd["input"], output_usd_per_mtok=usd["output"])
    return PulledPrices(prices, source, fmt, retrieved_at or datetime.now(UTC).replace(microsecond=0),
                        hashlib.sha256(data).hexdigest())


def price_changes(pool: Pool, pulled: PulledPrices) -> list[PriceChange]:
    out = []
    for c in pool:
        new = pulled.prices[c.name]
        for side, old_v, new_v in (("input", c.price.input_usd_per_mtok, new.input_usd_per_mtok),
                                   ("output", c.price.output_usd_per_mtok, new.output_usd_per_mtok)):
            if old_v != new_v:
                out.append(PriceChange(c.name, side, old_v, new_v))  # type: ignore[arg-type]
    return out


def _pricing_block(pulled: PulledPrices, label: str, effective: date, names: list[str]) -> str:
    def q(s: str) -> str:
        return json.dumps(s)  # a JSON string is a valid YAML scalar, quoting included

    lines = ["pricing:",
             "  # Human label of this price list; the content hash, not this label, identifies it in lineage.",
             f"  label: {q(label)}",
             "  # Day these prices took effect (ISO date).",
             f'  effective_date: "{effective.isoformat()}"',
             "  # Where the numbers come from, when they were read and the sha256 of what was read",
             "  # (written by `routerops prices pull`).",
             f"  source: {q(f'{pulled.format}: {pulled.source}')}",
             f'  retrieved_at: "{pulled.retrieved_at.isoformat()}"',
             f'  source_sha256: "{pulled.sha256}"',
             "  # USD per 1M tokens, per candidate name.",
             "  prices:"]
    for name in names:
        p = pulled.prices[name]
        lines.append(f"    {name}: {{input_usd_per_mtok: {p.input_usd_per_mtok!r}, "
                     f"output_usd_per_mtok: {p.output_usd_per_mtok!r}}}")
    return "\n".join(lines) + "\n"


def apply_to_pool_text(text: str, pool: Pool, pulled: PulledPrices, *, label: str, effective: date) -> str:
    """`pool.yaml`'s text with its pricing block replaced (the rest, comments included, kept
    byte for byte), validated as a pool before it is returned."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.startswith("pricing:")), None)
    if start is None:
        raise PriceSourceError(f"{pool.source_file}: no top-level 'pricing:' block to replace")
    # The block ends at the next top-level key; the comments just above that key belong to it.
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"^[A-Za-z_]", lines[i])), len(lines))
    while end - 1 > start and (lines[end - 1].startswith("#") or not lines[end - 1].strip()):
        end -= 1
    # The comment lines directly above `pricing:` describe the file, not the block: kept.
    new = "".join(lines[:start]) + _pricing_block(pulled, label, effective, list(pool.names)) + "".join(lines[end:])
    try:
        parse_pool(yaml.safe_load(new), pool.source_file)
    except (PoolError, yaml.YAMLError) as exc:
        raise PriceSourceError(f"the new pricing block does not validate: {exc}") from None
    return new
