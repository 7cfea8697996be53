from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from routerops.config import load_params
from routerops.tokens import ByteTokenizer
from stages.build_dataset import Inputs, write
from stages.build_dataset import run as build
from stages.validate_dataset import run as validate


@pytest.fixture(scope="module")
def params(repo_root):
    return load_params(repo_root / "params.yaml")


@pytest.fixture(scope="module")
def dataset_dir(params, pool, shared_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("ds") / "dataset"
    write(build(params, Inputs(pool, shared_data)), d, d.parent / "card.json")
    return d


@pytest.mark.slow
def test_suite_passes_on_the_built_dataset(params, dataset_dir, tmp_path) -> None:
    out = validate(params, dataset_dir, tmp_path / "validation", ByteTokenizer())
    assert out.success, out.failures
    assert out.metrics["expectations"] == 18 and out.metrics["failed"] == 0
    assert (tmp_path / "validation" / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html").is_file()


def _corrupt(src, dst, mutate) -> None:
    import shutil

    shutil.copytree(src, dst)
    path = dst / "rl" / "train.parquet"
    rows = pq.read_table(path).to_pylist()
    mutate(rows)
    pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.mark.slow
def test_suite_fails_on_crafted_bad_data_with_examples(params, dataset_dir, tmp_path) -> None:
    test_q = pq.read_table(dataset_dir / "rl" / "test.parquet").to_pylist()[0]["extra_info"]["question"]

    def mutate(rows):
        rows[0]["reward_model"]["ground_truth"] = []                      # empty answers
        rows[1]["extra_info"]["id"] = rows[2]["extra_info"]["id"]          # duplicate id
        rows[3]["extra_info"]["question"] = test_q                         # leaked evaluation question
        rows[4]["data_source"] = "webqa"                                   # unknown source
        rows[5]["prompt"][0]["content"] = "x" * 5000                       # prompt too long

    bad = tmp_path / "bad"
    _corrupt(dataset_dir, bad, mutate)
    out = validate(params, bad, tmp_path / "validation", ByteTokenizer())
    assert not out.success
    failed = {f["expectation"]: f for f in out.failures}
    assert set(failed) >= {"expect_column_values_to_be_between", "expect_column_values_to_be_unique",
                           "expect_column_values_to_be_in_set", "expect_column_pair_values_to_be_equal"}
    dup = failed["expect_column_values_to_be_unique"]
    assert dup["unexpected_count"] == 2 and dup["examples"][0]["id"]
    in_set = [f for f in out.failures if f["expectation"] == "expect_column_values_to_be_in_set"]
    assert {f["kwargs"]["column"] for f in in_set} == {"data_source", "overlaps_evaluation"}
    between = [f for f in out.failures if f["expectation"] == "expect_column_values_to_be_between"]
    assert {f["kwargs"]["column"] for f in between} == {"n_answers", "prompt_tokens"}
    assert out.metrics["success"] is False
