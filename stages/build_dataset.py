"""Stage: raw snapshot -> Router-R1's RL datasets (verl parquet), canonical parquet, data card.

`python -m stages.build_dataset`. Reads the raw files listed in params `build_dataset.inputs`,
drops train/validation rows whose question appears in any evaluation set (and repeats within a
split), samples per source and split with a seed, renders prompts from the pool, and writes
everything atomically: a failed run leaves the previous outputs untouched. The data card goes
to the metrics file and, in words, to `summary.md` beside the parquet files.
"""

from __future__ import annotations

import statistics
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from routerops.config import Params, load_params
from routerops.datasets import (
    SPLITS,
    CanonicalRow,
    DatasetFileError,
    LoadReport,
    Split,
    dedup_key,
    load_file,
    sample_rows,
)
from routerops.io import atomic_dir, write_json_atomic
from routerops.paths import default_params_file, default_pool_file, project_root
from routerops.pool import Pool, PoolError, load_pool
from routerops.rl_dataset import RL_DIR, verl_row
from routerops.runtime import router_messages

__all__ = ["Inputs", "Outputs", "main", "run", "summary_markdown", "write"]


@dataclass(frozen=True)
class Inputs:
    pool: Pool
    raw_dir: Path

    @classmethod
    def of_project(cls, root: Path, params: Params) -> Inputs:
        return cls(load_pool(default_pool_file()), root / params.build_dataset.raw_dir)


@dataclass(frozen=True)
class Outputs:
    rl: Mapping[Split, list[dict[str, Any]]]  # split -> verl rows
    canonical: list[dict[str, Any]]
    card: dict[str, Any]  # metrics/data_card.json
    summary: str  # summary.md: the card in words


def _dedup(rows_by_split: Mapping[Split, list[CanonicalRow]]) -> tuple[dict[Split, list[CanonicalRow]], dict[str, Any]]:
    """Evaluation questions are the reference: validation loses rows seen in test, train loses
    rows seen in test or validation, and every split loses repeats within itself."""
    removed: dict[Split, Counter[str]] = {s: Counter() for s in SPLITS}
    eval_keys = {dedup_key(r.question) for r in rows_by_split["test"]}
    reference: set[str] = set(eval_keys)
    out: dict[Split, list[CanonicalRow]] = {}
    order: tuple[Split, ...] = ("test", "validation", "train")
    for split in order:
        seen: set[str] = set()
        kept = []
        for r in rows_by_split[split]:
            k = dedup_key(r.question)
            if split != "test" and k in reference:
                removed[split][f"{r.data_source}:overlaps_evaluation" if k in eval_keys
                               else f"{r.data_source}:overlaps_validation"] += 1
                continue
            if k in seen:
                removed[split][f"{r.data_source}:repeated_in_split"] += 1
                continue
            seen.add(k)
            kept.append(r)
        out[split] = kept
        if split != "test":
            reference |= seen
    return out, {s: dict(sorted(c.items())) for s, c in removed.items()}


def _answer_stats(rows: list[CanonicalRow]) -> dict[str, float]:
    if not rows:
        return {"rows": 0}
    aliases = [len(r.golden_answers) for r in rows]
    chars = [len(a) for r in rows for a in r.golden_answers]
    return {"rows": len(rows), "aliases_mean": round(statistics.fmean(aliases), 3), "aliases_max": max(aliases),
            "answer_chars_mean": round(statistics.fmean(chars), 2), "answer_chars_max": max(chars),
            "question_chars_mean": round(statistics.fmean(len(r.question) for r in rows), 2)}


def summary_markdown(card: Mapping[str, Any]) -> str:
    """The data card in words: rows per split and source, duplicates removed, rows rejected."""
    lines = ["# Dataset", "", "| split | rows per source |", "|---|---|"]
    for split, counts in card["rows"].items():
        lines.append(f"| {split} | {', '.join(f'{k} {v}' for k, v in counts.items())} |")
    removed = sum(n for split in card["duplicates_removed"].values() for n in split.values())
    rejected = sum(n for f in card["files"].values() for n in f["rejected"].values())
    lines += ["", f"Duplicates removed: {removed}; raw rows rejected: {rejected}; "
              f"pool snapshot {card['pool_snapshot']}.", ""]
    return "\n".join(lines)


def run(params: Params, inputs: Inputs) -> Outputs:
    bp = params.build_dataset
    sizes = bp.sizes_for(params.profile)

    loaded: dict[Split, list[CanonicalRow]] = {s: [] for s in SPLITS}
    reports: list[LoadReport] = []
    seen_ids: set[str] = set()
    for spec in bp.inputs_for(params.profile):
        rows, report = load_file(inputs.raw_dir / spec.path, spec.format, spec.split, spec.source, seen_ids)
        loaded[spec.split].extend(rows)
        reports.append(report)

    clean, removed = _dedup(loaded)
    sampled = {split: sample_rows(clean[split], sizes.get(split, {}), bp.seed, split) for split in SPLITS}

    rl: dict[Split, list[dict[str, Any]]] = {}
    index = 0
    for split in SPLITS:
        rl[split] = []
        for row in sampled[split]:
            rl[split].append(verl_row(row, index, router_messages(row.question, inputs.pool, params),
                                      ability=bp.ability, agent_name=bp.agent_name))
            index += 1
    canonical = [r.as_dict() for split in SPLITS for r in sampled[split]]

    hotpot_eval = {dedup_key(r.question) for r in loaded["test"] if r.data_source == "hotpotqa"}
    hotpot_dev = [r for r in loaded["train"] if r.data_source == "hotpotqa"]
    card = {
        "profile": params.profile,
        "seed": bp.seed,
        "pool_snapshot": inputs.pool.snapshot_id,
        "prices_in_prompt": params.prompt.show_prices,
        "rows": {split: dict(sorted(Counter(r.data_source for r in sampled[split]).items())) for split in SPLITS},
        "available_after_dedup": {split: dict(sorted(Counter(r.data_source for r in clean[split]).items()))
                                  for split in SPLITS},
        "duplicates_removed": removed,
        "hotpotqa_train_rows_in_hotpotqa_eval": sum(dedup_key(r.question) in hotpot_eval for r in hotpot_dev),
        "files": {Path(rep.file).relative_to(inputs.raw_dir).as_posix(): {
            "rows_read": rep.rows_read, "rows_kept": rep.rows_kept, "skipped": rep.skipped,
            "rejected": dict(sorted(rep.rejected.items()))}
            for rep in reports},
        "answers": {split: _answer_stats(sampled[split]) for split in SPLITS},
    }
    return Outputs(rl, canonical, card, summary_markdown(card))


def write(out: Outputs, out_dir: Path, card_path: Path) -> None:
    """Parquet outputs and the summary into one atomically swapped directory; the card after it."""
    with atomic_dir(out_dir) as tmp:
        (tmp / RL_DIR).mkdir()
        for split, rows in out.rl.items():
            pq.write_table(pa.Table.from_pylist(rows), tmp / RL_DIR / f"{split}.parquet")
        pq.write_table(pa.Table.from_pylist(out.canonical), tmp / "canonical.parquet")
        (tmp / "summary.md").write_text(out.summary)
    write_json_atomic(card_path, out.card)


def main() -> None:
    root = project_root()
    params = load_params(default_params_file())
    bp = params.build_dataset
    try:
        out = run(params, Inputs.of_project(root, params))
    except (DatasetFileError, PoolError, ValueError) as exc:
        sys.stderr.write(f"build_dataset: {exc}\n")
        raise SystemExit(1) from None
    write(out, root / bp.out_dir, root / bp.data_card)
    rows = out.card["rows"]
    sys.stdout.write(f"build_dataset: {sum(len(v) for v in out.rl.values())} rows "
                     f"({', '.join(f'{s}: {sum(rows[s].values())}' for s in SPLITS)}) -> {bp.out_dir}\n")


if __name__ == "__main__":
    main()
