from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from routerops.config import load_params
from routerops.tokens import ByteTokenizer
from stages.build_dataset import Inputs, write
from stages.build_dataset import run as build
from stages.validate_dataset import Inputs as ValidateInputs
from stages.validate_dataset import run as validate
from stages.validate_dataset import write as write_validation


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
    out = validate(params, ValidateInputs(dataset_dir, ByteTokenizer()))
    assert out.success, out.failures
    assert out.metrics == {"success": True, "expectations": 18, "failed": 0, "rows": 1570,
                           "max_prompt_tokens": out.metrics["max_prompt_tokens"]}
    assert 0 < out.metrics["max_prompt_tokens"] <= params.rollout.max_prompt_tokens
    assert not list(tmp_path.iterdir())  # run() writes nothing; write() does
    write_validation(out, tmp_path / "validation", tmp_path / "docs", tmp_path / "validation.json")
    assert sorted(p.name for p in (tmp_path / "validation").iterdir()) == ["_COMPLETE", "results.json", "summary.md"]
    assert (tmp_path / "docs" / "index.html").read_text().startswith("<!DOCTYPE html>")
    assert (tmp_path / "validation" / "summary.md").read_text().startswith(
        "# Dataset validation\n\n18 Great Expectations expectations on 1570 rows: passed.")


@pytest.mark.slow
def test_results_are_byte_identical_between_runs_and_docs_are_the_volatile_part(params, dataset_dir,
                                                                                tmp_path) -> None:
    for i in (1, 2):
        out = validate(params, ValidateInputs(dataset_dir, ByteTokenizer()))
        write_validation(out, tmp_path / f"v{i}", tmp_path / f"docs{i}", tmp_path / f"m{i}.json")
    for name in ("results.json", "summary.md", "_COMPLETE"):
        assert (tmp_path / "v1" / name).read_bytes() == (tmp_path / "v2" / name).read_bytes(), name
    pages = sorted(p.relative_to(tmp_path / "docs1").as_posix() for p in (tmp_path / "docs1").rglob("*.html"))
    assert any(p.startswith("validations/") for p in pages)  # named by the run's time: differs run to run


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
    out = validate(params, ValidateInputs(bad, ByteTokenizer()))
    assert not out.success
    assert sorted((f.expectation, f.kwargs.get("column", f.kwargs.get("column_A"))) for f in out.failures) == [
        ("expect_column_pair_values_to_be_equal", "rows"),
        ("expect_column_values_to_be_between", "n_answers"),
        ("expect_column_values_to_be_between", "prompt_tokens"),
        ("expect_column_values_to_be_in_set", "data_source"),
        ("expect_column_values_to_be_in_set", "overlaps_evaluation"),
        ("expect_column_values_to_be_unique", "id"),
    ]
    dup = next(f for f in out.failures if f.expectation == "expect_column_values_to_be_unique")
    assert dup.unexpected_count == 2 and [e["id"] for e in dup.examples] == [dup.examples[0]["id"]] * 2
    assert (out.metrics["success"], out.metrics["failed"]) == (False, 6)
    assert "FAILED (6 expectations)" in out.summary and dup.line() in out.summary
