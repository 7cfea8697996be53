"""The built RL dataset: verl parquet rows, one file per split, written by `build_dataset` and
read by training, evaluation and validation. The row schema lives here, writer and reader side.

Row: `data_source`, `prompt` (chat messages), `ability`, `reward_model` {style: rule,
ground_truth: every gold alias}, `extra_info` {index (unique across splits: verl groups GRPO
rollouts by it), split, id, agent_name, question}, `agent_name` (which verl agent loop runs it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from routerops.candidates.types import QuestionInfo
from routerops.datasets import CanonicalRow, Split

__all__ = ["RL_DIR", "read_questions", "split_path", "verl_row"]

RL_DIR = "rl"  # the splits' folder inside the dataset directory


def split_path(dataset_dir: Path, split: Split) -> Path:
    return dataset_dir / RL_DIR / f"{split}.parquet"


def verl_row(row: CanonicalRow, index: int, messages: Sequence[Mapping[str, str]], *, ability: str,
             agent_name: str) -> dict[str, Any]:
    return {
        "data_source": row.data_source,
        "prompt": [dict(m) for m in messages],
        "ability": ability,
        "reward_model": {"style": "rule", "ground_truth": list(row.golden_answers)},
        "extra_info": {"index": index, "split": row.split, "id": row.id, "agent_name": agent_name,
                       "question": row.question},
        "agent_name": agent_name,
    }


def read_questions(dataset_dir: Path, split: Split) -> list[QuestionInfo]:
    """The questions of one split with their gold aliases, in file order."""
    path = split_path(dataset_dir, split)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run the build_dataset stage first")
    return [QuestionInfo(r["extra_info"]["id"], r["extra_info"]["question"], r["data_source"],
                         tuple(r["reward_model"]["ground_truth"])) for r in pq.read_table(path).to_pylist()]
