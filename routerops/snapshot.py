"""The raw data snapshot (`data/`, tracked by `data.dvc`): seeding it offline or from the hub.

Offline, `data/` is a byte-for-byte copy of `../shared/data`. With the hub reachable it is
filled from `RUC-NLPIR/FlashRAG_datasets` instead (one JSONL per config and split, FlashRAG's
own row schema). Whether the result is the recorded data version is DVC's call: the CLI asks
`dvc status` rather than re-implementing DVC's hashing here.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from routerops.io import write_text_atomic

__all__ = ["FLASHRAG_CONFIGS", "HUB_DATASET", "SeedResult", "seed_from_hub", "seed_from_shared"]

HUB_DATASET = "RUC-NLPIR/FlashRAG_datasets"
# Config -> splits Router-R1 draws on (train for NQ and HotpotQA; test or dev for evaluation).
FLASHRAG_CONFIGS: Mapping[str, tuple[str, ...]] = {
    "nq": ("train", "test"), "triviaqa": ("test",), "popqa": ("test",), "hotpotqa": ("train", "dev"),
    "2wikimultihopqa": ("dev",), "musique": ("dev",), "bamboogle": ("test",),
}


@dataclass(frozen=True)
class SeedResult:
    files: int
    bytes: int
    copied: int  # files written (the rest were already identical)


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def seed_from_shared(shared: Path, dest: Path) -> SeedResult:
    """Mirror `shared` into `dest` (identical files are left alone; extra files are removed)."""
    if not shared.is_dir():
        raise FileNotFoundError(f"{shared}: shared data folder not found (expected ../shared/data beside the repo)")
    dest.mkdir(parents=True, exist_ok=True)
    wanted = {p.relative_to(shared) for p in shared.rglob("*") if p.is_file()}
    copied = total = 0
    for rel in sorted(wanted):
        src, dst = shared / rel, dest / rel
        total += src.stat().st_size
        if dst.is_file() and dst.stat().st_size == src.stat().st_size and _md5(dst) == _md5(src):
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.tmp")
        shutil.copyfile(src, tmp)
        tmp.replace(dst)
        copied += 1
    for p in sorted(dest.rglob("*"), reverse=True):
        if p.is_file() and p.relative_to(dest) not in wanted:
            p.unlink()
        elif p.is_dir() and not any(p.iterdir()):
            p.rmdir()
    return SeedResult(len(wanted), total, copied)


def flashrag_rows(rows: Iterable[Mapping[str, Any]]) -> str:
    """FlashRAG rows as JSONL, keeping exactly the fields the loaders read."""
    return "".join(json.dumps({"id": r["id"], "question": r["question"],
                               "golden_answers": list(r["golden_answers"])}, ensure_ascii=False) + "\n" for r in rows)


def seed_from_hub(dest: Path, load: Callable[..., Iterable[Mapping[str, Any]]] | None = None,
                  configs: Mapping[str, tuple[str, ...]] = FLASHRAG_CONFIGS) -> SeedResult:
    """Download FlashRAG configs into `dest/flashrag/<config>/<split>.jsonl`.

    `load(name, config, split=...)` defaults to `datasets.load_dataset`; it is a parameter so
    the parsing and layout can be tested offline.
    """
    if load is None:
        from datasets import load_dataset  # only here: importing it is slow and the hub is optional

        load = load_dataset
    files = total = 0
    for config, splits in configs.items():
        for split in splits:
            try:
                rows = load(HUB_DATASET, config, split=split)
            except Exception as exc:  # the hub raises many types; all mean "could not fetch"
                raise ConnectionError(f"could not load {HUB_DATASET} config {config!r} split {split!r}: {exc}") from exc
            text = flashrag_rows(rows)
            write_text_atomic(dest / "flashrag" / config / f"{split}.jsonl", text)
            files += 1
            total += len(text.encode())
    return SeedResult(files, total, files)
