"""Stage: raw snapshot -> Router-R1's RL datasets (verl parquet), canonical parquet, data card.

`python -m stages.build_dataset`. Reads the raw files listed in params `build_dataset.inputs`,
drops train/validation rows whose question appears in any evaluation set (and repeats within a
split), samples per source and split with a seed, renders prompts from the pool, and writes
everything atomically: a failed run leaves the previous outputs untouched.
"""

from __future__ import annotations

import statistics
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from routerops.config import BuildDatasetParams, Params, load_params
from routerops.datasets import CanonicalRow, DatasetFileError, LoadReport, dedup_key, load_file, sample_rows
from routerops.io import atomic_dir, write_json_atomic
from routerops.paths import default_pool_file, project_root
from routerops.pool import Pool, load_pool
from routerops.runtime import router_messages

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Inputs:
    pool: Pool
    raw_dir: Path


@dataclass(frozen=True)
class Outputs:
    rl: dict[str, list[dict[str, Any]]]  # split -> verl rows
    canonical: list[dict[str, Any]]
    card: dict[str, Any]


def _dedup(rows_by_split: dict[str, list[CanonicalRow]]) -> tuple[dict[str, list[CanonicalRow]], dict[str, Any]]:
    """Evaluation questions are the reference: validation loses rows seen in test, train loses
    rows seen in test or validation, and every split loses repeats within itself."""
    removed: dict[str, Counter[str]] = {s: Counter() for s in SPLITS}
    eval_keys = {dedup_key(r.question) for r in rows_by_split["test"]}
    reference: set[str] = set(eval_keys)
    out: dict[str, list[CanonicalRow]] = {}
    for split in ("test", "validation", "train"):
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


def _verl_row(row: CanonicalRow, index: int, params: Params, pool: Pool) -> dict[str, Any]:
    bp = params.require("build_dataset")
    messages = router_messages(row.question, pool, params)
    return {
        "data_source": row.data_source,
        "prompt": messages,
        "ability": bp.ability,
        "reward_model": {"style": "rule", "ground_truth": list(row.golden_answers)},
        "extra_info": {"index": index, "split": row.split, "id": row.id, "agent_name": bp.agent_name,
                       "question": row.question},
        "agent_name": bp.agent_name,
    }


def _answer_stats(rows: list[CanonicalRow]) -> dict[str, float]:
    if not rows:
        return {"rows": 0}
    aliases = [len(r.golden_answers) for r in rows]
    chars = [len(a) for r in rows for a in r.golden_answers]
    return {"rows": len(rows), "aliases_mean": round(statistics.fmean(aliases), 3), "aliases_max": max(aliases),
            "answer_chars_mean": round(statistics.fmean(chars), 2), "answer_chars_max": max(chars),
            "question_chars_mean": round(statistics.fmean(len(r.question) for r in rows), 2)}


def run(params: Params, inputs: Inputs) -> Outputs:
    bp: BuildDatasetParams = params.require("build_dataset")
    sizes = bp.sizes_for(params.profile)

    loaded: dict[str, list[CanonicalRow]] = {s: [] for s in SPLITS}
    reports: list[LoadReport] = []
    seen_ids: set[str] = set()
    for spec in bp.inputs_for(params.profile):
        rows, report = load_file(inputs.raw_dir / spec.path, spec.format, spec.split, spec.source, seen_ids)
        loaded[spec.split].extend(rows)
        reports.append(report)

    clean, removed = _dedup(loaded)
    sampled = {split: sample_rows(clean[split], sizes.get(split, {}), bp.seed, split) for split in SPLITS}

    rl: dict[str, list[dict[str, Any]]] = {}
    index = 0
    for split in SPLITS:
        rl[split] = []
        for row in sampled[split]:
            rl[split].append(_verl_row(row, index, params, inputs.pool))
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
    return Outputs(rl, canonical, card)


def write(out: Outputs, out_dir: Path, card_path: Path) -> None:
    """Parquet outputs into one atomically swapped directory; the data card after it."""
    with atomic_dir(out_dir) as tmp:
        (tmp / "rl").mkdir()
        for split, rows in out.rl.items():
            pq.write_table(pa.Table.from_pylist(rows), tmp / "rl" / f"{split}.parquet")
        pq.write_table(pa.Table.from_pylist(out.canonical), tmp / "canonical.parquet")
    write_json_atomic(card_path, out.card)


def main() -> None:
    params = load_params(project_root() / "params.yaml")
    bp = params.require("build_dataset")
    try:
        out = run(params, Inputs(load_pool(default_pool_file()), project_root() / bp.raw_dir))
    except (DatasetFileError, ValueError) as exc:
        sys.stderr.write(f"build_dataset: {exc}\n")
        raise SystemExit(1) from None
    write(out, project_root() / bp.out_dir, project_root() / bp.data_card)
    rows = out.card["rows"]
    sys.stdout.write(f"build_dataset: {sum(len(v) for v in out.rl.values())} rows "
                     f"({', '.join(f'{s}: {sum(rows[s].values())}' for s in SPLITS)}) -> {bp.out_dir}\n")


if __name__ == "__main__":
    main()
