from __future__ import annotations

import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from routerops.config import load_params
from routerops.datasets import DatasetFileError
from stages.build_dataset import Inputs, run, write


@pytest.fixture(scope="module")
def params(repo_root):
    return load_params(repo_root / "params.yaml")


@pytest.fixture(scope="module")
def built(params, pool, shared_data):
    return run(params, Inputs(pool, shared_data))


def test_local_profile_sizes_and_dedup_counts(built, params) -> None:
    card = built.card
    sizes = params.build_dataset.sizes_for("local")
    for split in ("train", "validation", "test"):
        assert card["rows"][split] == {k: v for k, v in sorted(sizes[split].items())}
    assert card["hotpotqa_train_rows_in_hotpotqa_eval"] == 512
    assert card["files"]["pool/llmrouter_queries_train.jsonl"]["rows_kept"] == 1000  # 500 NQ + 500 TriviaQA
    assert card["duplicates_removed"]["train"]["hotpotqa:overlaps_evaluation"] == 512
    # Bamboogle's dev rows are the test rows: none survive in validation
    assert card["duplicates_removed"]["validation"]["bamboogle:overlaps_evaluation"] == 125
    assert "bamboogle" not in card["available_after_dedup"]["validation"]


def test_verl_rows_have_unique_index_and_chat_prompt(built, pool) -> None:
    rows = [r for split in built.rl.values() for r in split]
    assert len({r["extra_info"]["index"] for r in rows}) == len(rows)
    assert len({r["extra_info"]["id"] for r in rows}) == len(rows)
    r = built.rl["train"][0]
    assert r["prompt"][0]["role"] == "user" and r["prompt"][0]["content"].endswith(r["extra_info"]["question"])
    assert all(c.name in r["prompt"][0]["content"] for c in pool)
    assert isinstance(r["reward_model"]["ground_truth"], list) and r["agent_name"] == "router_agent"
    assert {x["extra_info"]["split"] for x in built.rl["test"]} == {"test"}


def test_no_train_question_in_evaluation(built) -> None:
    from routerops.datasets import dedup_key

    test_keys = {dedup_key(r["extra_info"]["question"]) for r in built.rl["test"]}
    for split in ("train", "validation"):
        assert not any(dedup_key(r["extra_info"]["question"]) in test_keys for r in built.rl[split])


def test_build_is_deterministic(built, params, pool, shared_data) -> None:
    again = run(params, Inputs(pool, shared_data))
    assert (again.rl, again.canonical, again.card, again.summary) == (built.rl, built.canonical, built.card,
                                                                        built.summary)


def test_summary_states_the_card_in_words(built, pool) -> None:
    removed = sum(n for split in built.card["duplicates_removed"].values() for n in split.values())
    assert built.summary.splitlines() == [
        "# Dataset", "",
        "| split | rows per source |", "|---|---|",
        "| train | hotpotqa 400, nq 400, triviaqa 200 |",
        "| validation | 2wikimultihopqa 25, hotpotqa 25, musique 25, nq 25, popqa 25, triviaqa 25 |",
        "| test | 2wikimultihopqa 60, bamboogle 60, hotpotqa 60, musique 60, nq 60, popqa 60, triviaqa 60 |",
        "", f"Duplicates removed: {removed}; raw rows rejected: 0; pool snapshot {pool.snapshot_id}."]


def test_outputs_written_atomically(built, tmp_path) -> None:
    out = tmp_path / "dataset"
    write(built, out, tmp_path / "card.json")
    assert (out / "_COMPLETE").is_file()
    assert pq.read_table(out / "rl" / "train.parquet").num_rows == len(built.rl["train"])
    before = sorted(p.name for p in out.rglob("*"))

    assert (out / "summary.md").read_text() == built.summary
    broken = type(built)(rl={"train": [{"x": object()}]}, canonical=[], card={}, summary="")  # unserialisable
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        write(broken, out, tmp_path / "card2.json")
    assert sorted(p.name for p in out.rglob("*")) == before  # previous output untouched
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".dataset.")]  # no temp dirs left
    assert not (tmp_path / "card2.json").exists()


def test_unusable_raw_file_fails_clearly(params, pool, shared_data, tmp_path) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(shared_data, raw)
    (raw / "pool" / "llmrouter_queries_train.jsonl").write_text("")
    with pytest.raises(DatasetFileError, match=r"llmrouter_queries_train\.jsonl: file is empty"):
        run(params, Inputs(pool, raw))


def test_asking_for_more_rows_than_exist_fails(params, pool, shared_data) -> None:
    bp = params.build_dataset
    big = bp.model_copy(update={"sizes": {"local": {**bp.sizes["local"], "train": {"nq": 5000}}}})
    with pytest.raises(ValueError, match="train/nq: asked for 5000 rows, only 500 available"):
        run(params.model_copy(update={"build_dataset": big}), Inputs(pool, shared_data))
