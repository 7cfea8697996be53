"""Candidate pool and price table: typed, validated, content-addressed.

`pool.yaml` is the one versioned place for candidate names, endpoints and prices. Every error
names the file, the model and the field, because a pool is edited by hand on a schedule (prices
move) and a vague error at training time is expensive.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = [
    "Candidate",
    "Endpoint",
    "Pool",
    "PoolError",
    "Price",
    "PricingSnapshot",
    "ReplayProfile",
    "Sampling",
    "load_pool",
    "parse_pool",
]


class PoolError(ValueError):
    """A pool file is unusable. Carries the file, the model (if any) and the field at fault."""

    def __init__(self, file: str, model: str | None, field: str | None, message: str) -> None:
        self.file = file
        self.model = model
        self.field = field
        self.message = message
        where = file
        if model is not None:
            where += f": model {model!r}"
        if field is not None:
            where += f": field {field!r}"
        super().__init__(f"{where}: {message}")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Endpoint(_Frozen):
    """Names of the env vars that hold the base URL and API key; never the values themselves."""

    base_url_env: str = Field(pattern=r"^[A-Z_][A-Z0-9_]*$")
    api_key_env: str = Field(pattern=r"^[A-Z_][A-Z0-9_]*$")


class Sampling(_Frozen):
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = 42


class Price(_Frozen):
    """USD per one million tokens."""

    input_usd_per_mtok: float
    output_usd_per_mtok: float

    @field_validator("input_usd_per_mtok", "output_usd_per_mtok")
    @classmethod
    def _non_negative(cls, v: float) -> float:
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"price must be a finite number >= 0, got {v}")
        return v


class ReplayProfile(_Frozen):
    """How the offline replay pool imitates this candidate (local profile only)."""

    matrix_model: str | None = None
    mean_completion_tokens: int = Field(gt=0, le=4096)
    prior_accuracy: dict[str, float]

    @field_validator("prior_accuracy")
    @classmethod
    def _probabilities(cls, v: dict[str, float]) -> dict[str, float]:
        if "default" not in v:
            raise ValueError("prior_accuracy needs a 'default' entry")
        for source, p in v.items():
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"prior_accuracy[{source}] must be in [0, 1], got {p}")
        return v

    def prior_for(self, data_source: str) -> float:
        return self.prior_accuracy.get(data_source, self.prior_accuracy["default"])


class Candidate(_Frozen):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")
    aliases: tuple[str, ...] = ()
    provider_model_id: str = Field(min_length=1)
    endpoint: Endpoint
    descriptor: str
    price: Price
    sampling: Sampling
    max_tokens: int = Field(gt=0, le=32768)
    replay: ReplayProfile | None = None

    @field_validator("descriptor")
    @classmethod
    def _descriptor_not_empty(cls, v: str) -> str:
        v = " ".join(v.split())
        if not v:
            raise ValueError("descriptor must not be empty: the router chooses by it")
        return v

    @field_validator("aliases")
    @classmethod
    def _aliases_not_blank(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for a in v:
            if not a.strip() or ":" in a:
                raise ValueError(f"alias {a!r} must be non-blank and contain no ':'")
        return v

    def cost_usd(self, completion_tokens: int, prompt_tokens: int = 0, include_prompt: bool = False) -> float:
        """Dollars for one call under this candidate's price."""
        usd = completion_tokens * self.price.output_usd_per_mtok / 1e6
        if include_prompt:
            usd += prompt_tokens * self.price.input_usd_per_mtok / 1e6
        return usd


class PricingSnapshot(_Frozen):
    label: str = Field(min_length=1)
    effective_date: date
    source: str = Field(min_length=1)
    # Provenance of a pulled price list (`routerops prices pull`): when it was read, and the
    # sha256 of the bytes it was read from. Absent for prices written by hand.
    retrieved_at: datetime | None = None
    source_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    id: str = Field(description="content hash of the prices; set by the loader")


class Pool(_Frozen):
    """A validated pool. `snapshot_id` hashes everything; `pricing.id` hashes only the prices."""

    candidates: tuple[Candidate, ...]
    pricing: PricingSnapshot
    snapshot_id: str
    source_file: str
    # price source format ("litellm", "openrouter") -> candidate name -> that source's model id
    price_sources: dict[str, dict[str, str]] = Field(default_factory=dict)

    def __iter__(self) -> Iterator[Candidate]:  # type: ignore[override]
        return iter(self.candidates)

    def __len__(self) -> int:
        return len(self.candidates)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.candidates)

    def resolve(self, written: str) -> Candidate | None:
        """Exact, case-insensitive match on a name or alias; never a substring match."""
        key = " ".join(written.split()).casefold()
        for c in self.candidates:
            if key == c.name.casefold() or any(key == a.casefold() for a in c.aliases):
                return c
        return None

    def get(self, name: str) -> Candidate:
        c = self.resolve(name)
        if c is None:
            raise KeyError(f"{name!r} is not in pool {self.source_file} ({', '.join(self.names)})")
        return c

    def restricted(self, names: Iterable[str]) -> Pool:
        """The same pool (ids and prices) offering only `names` to the router, in pool order; a
        name that resolves to no candidate raises KeyError naming the pool."""
        keep = {self.get(n).name for n in names}
        if not keep:
            raise ValueError("a restricted pool needs at least one candidate")
        return self.model_copy(update={"candidates": tuple(c for c in self.candidates if c.name in keep)})

    def prices(self) -> dict[str, Price]:
        return {c.name: c.price for c in self.candidates}


def _hash(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _field_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) if loc else "<root>"


def parse_pool(raw: Any, file: str = "<memory>") -> Pool:
    """Validate an already-parsed pool document (as read from YAML)."""
    if not isinstance(raw, Mapping):
        raise PoolError(file, None, None, "top level must be a mapping with 'pricing' and 'candidates'")
    unknown = set(raw) - {"pricing", "defaults", "candidates", "price_sources"}
    if unknown:
        raise PoolError(file, None, sorted(unknown)[0], "unknown top-level key")
    for key in ("pricing", "candidates"):
        if key not in raw:
            raise PoolError(file, None, key, "missing")
    pricing = raw["pricing"]
    if not isinstance(pricing, Mapping):
        raise PoolError(file, None, "pricing", "must be a mapping")
    unknown = set(pricing) - {"label", "effective_date", "source", "retrieved_at", "source_sha256", "prices"}
    if unknown:
        raise PoolError(file, None, f"pricing.{sorted(unknown)[0]}", "unknown key")
    prices = pricing.get("prices")
    if not isinstance(prices, Mapping) or not prices:
        raise PoolError(file, None, "pricing.prices", "must be a non-empty mapping of name -> price")
    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, Mapping):
        raise PoolError(file, None, "defaults", "must be a mapping")
    unknown = set(defaults) - {"endpoint", "sampling", "max_tokens"}
    if unknown:
        raise PoolError(file, None, f"defaults.{sorted(unknown)[0]}", "unknown key")
    entries = raw["candidates"]
    if not isinstance(entries, list) or not entries:
        raise PoolError(file, None, "candidates", "must be a non-empty list")

    candidates: list[Candidate] = []
    seen: dict[str, str] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise PoolError(file, f"#{i}", None, "each candidate must be a mapping")
        name = entry.get("name")
        label = str(name) if name else f"#{i}"
        if not name:
            raise PoolError(file, label, "name", "missing")
        price = prices.get(name)
        if price is None:
            raise PoolError(file, label, "price", f"no entry in pricing.prices for {name!r}")
        merged = {**{k: v for k, v in defaults.items()}, **dict(entry), "price": price}
        try:
            cand = Candidate.model_validate(merged)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = _field_path(tuple(err["loc"]))
            raise PoolError(file, label, loc, err["msg"]) from None
        for written in (cand.name, *cand.aliases):
            key = written.casefold()
            if key in seen:
                raise PoolError(
                    file, label, "aliases" if written != cand.name else "name",
                    f"{written!r} duplicates a name or alias of model {seen[key]!r}",
                )
            seen[key] = cand.name
        candidates.append(cand)

    names = {c.name for c in candidates}
    for priced in prices:
        if priced not in names:
            raise PoolError(file, str(priced), "price", "priced in pricing.prices but not a candidate")

    price_sources = _price_sources(raw.get("price_sources"), names, file)
    prices_id = _hash({c.name: c.price.model_dump() for c in candidates})
    try:
        snapshot = PricingSnapshot.model_validate(
            {k: v for k, v in pricing.items() if k != "prices"} | {"id": prices_id}
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        raise PoolError(file, None, "pricing." + _field_path(tuple(err["loc"])), err["msg"]) from None
    # Provenance joins the hash only when present, so a pool written by hand keeps its id; the
    # price sources (where to look prices up, not what the router uses) stay out of it.
    hashed: dict[str, Any] = {"candidates": [c.model_dump(mode="json") for c in candidates],
                              "pricing": snapshot.model_dump(mode="json", exclude_none=True)}
    return Pool(candidates=tuple(candidates), pricing=snapshot, snapshot_id=_hash(hashed), source_file=file,
                price_sources=price_sources)


def _price_sources(raw: Any, names: set[str], file: str) -> dict[str, dict[str, str]]:
    """`price_sources: {FORMAT: {CANDIDATE: SOURCE_MODEL_ID}}`: each candidate's key in a price list."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise PoolError(file, None, "price_sources", "must be a mapping of source format -> {candidate: model id}")
    out: dict[str, dict[str, str]] = {}
    for fmt, ids in raw.items():
        if not isinstance(ids, Mapping):
            raise PoolError(file, None, f"price_sources.{fmt}", "must be a mapping of candidate -> model id")
        for name, model_id in ids.items():
            if name not in names:
                raise PoolError(file, str(name), f"price_sources.{fmt}", "not a candidate")
            if not isinstance(model_id, str) or not model_id.strip():
                raise PoolError(file, str(name), f"price_sources.{fmt}", "model id must be a non-empty string")
        out[str(fmt)] = {str(k): str(v) for k, v in ids.items()}
    return out


def load_pool(path: str | Path) -> Pool:
    """Read and validate a pool file; every failure is a PoolError naming the file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PoolError(str(p), None, None, "file not found") from None
    except UnicodeDecodeError as exc:
        raise PoolError(str(p), None, None, f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PoolError(str(p), None, None, f"invalid YAML: {exc}") from None
    return parse_pool(raw, str(p))
