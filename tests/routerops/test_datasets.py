from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from routerops.datasets import DatasetFileError, LoadReport, dedup_key, load_file, parse_flashrag_row, sample_rows

# ---------------------------------------------------------------------------------------------
# each loader on the real shared files
# ---------------------------------------------------------------------------------------------

def test_nq_open_loader(shared_data) -> None:
    rows, rep = load_file(shared_data / "nq/nq_open_efficientqa_dev.jsonl", "nq_open", "train", "nq")
    assert len(rows) == 1800 and rep.rows_read == 1800 and not rep.rejected
    assert rows[0].question == "the last time la dodgers won the world series?"
    assert rows[0].golden_answers == ("1988",) and rows[0].id.startswith("nq:train:")
    assert rows[2].golden_answers == ("Salzburg, Austria", "Austria")


def test_hotpot_simplified_loader(shared_data) -> None:
    rows, rep = load_file(shared_data / "hotpotqa/hotpot_dev_v1_simplified.json", "hotpot_simplified", "train",
                          "hotpotqa")
    assert len(rows) == 7405 and not rep.rejected
    assert rows[0].question == "Were Scott Derrickson and Ed Wood of the same nationality?"
    assert rows[0].golden_answers == ("yes",)


def test_r1searcher_loader(shared_data) -> None:
    rows, _ = load_file(shared_data / "hotpotqa/r1searcher_stage2_train.jsonl", "r1searcher", "train", "multihopqa")
    assert len(rows) == 8148 and rows[0].id == "multihopqa:train:r1s1" and rows[0].golden_answers == ("filmmaker",)


def test_verl_parquet_loader_splits_aliases(shared_data) -> None:
    rows, rep = load_file(shared_data / "eval/deepresearcher_test.parquet", "verl_parquet", "test")
    assert len(rows) == 3197 and not rep.rejected
    by_source: dict[str, int] = {}
    for r in rows:
        by_source[r.data_source] = by_source.get(r.data_source, 0) + 1
    assert by_source == {"2wikimultihopqa": 512, "popqa": 512, "triviaqa": 512, "hotpotqa": 512, "nq": 512,
                         "musique": 512, "bamboogle": 125}
    dev, _ = load_file(shared_data / "eval/deepresearcher_dev.parquet", "verl_parquet", "validation")
    turkey = next(r for r in dev if r.id == "triviaqa:validation:tq_qg_3477")
    assert "turkey" in turkey.golden_answers and len(turkey.golden_answers) == 26
    assert all("<|answer_split|>" not in a for r in dev for a in r.golden_answers)


def test_llmrouter_queries_loader_keeps_the_qa_tasks(shared_data) -> None:
    rows, rep = load_file(shared_data / "pool/llmrouter_queries_train.jsonl", "llmrouter_queries", "train")
    by_source = {s: sum(r.data_source == s for r in rows) for s in ("nq", "triviaqa")}
    assert by_source == {"nq": 500, "triviaqa": 500} and rep.skipped == 5616 - 1000 and not rep.rejected
    nq = next(r for r in rows if r.question == "who wrote i will follow you into the dark?")
    assert nq.golden_answers == ("Ben Gibbard",)
    only_nq, _ = load_file(shared_data / "pool/llmrouter_queries_train.jsonl", "llmrouter_queries", "train", "nq")
    assert {r.data_source for r in only_nq} == {"nq"}


def test_flashrag_loader_on_hub_schema_sample(shared_data) -> None:
    rows, _ = load_file(shared_data / "flashrag/nq_test_sample.jsonl", "flashrag", "test", "nq")
    # 17 rows, test_0..test_16 (the data README says 16: the last line has no newline)
    assert len(rows) == 17 and rows[0].id == "nq:test:test_0"
    assert rows[0].golden_answers == ("Wilhelm Conrad Röntgen",)


def test_hotpot_dev_contains_all_512_hotpot_test_questions(shared_data) -> None:
    test, _ = load_file(shared_data / "eval/deepresearcher_test.parquet", "verl_parquet", "test")
    dev, _ = load_file(shared_data / "hotpotqa/hotpot_dev_v1_simplified.json", "hotpot_simplified", "train",
                       "hotpotqa")
    hotpot_test = {dedup_key(r.question) for r in test if r.data_source == "hotpotqa"}
    assert len(hotpot_test) == 512
    assert len(hotpot_test & {dedup_key(r.question) for r in dev}) == 512


# ---------------------------------------------------------------------------------------------
# bad input: row by row, counted
# ---------------------------------------------------------------------------------------------

BAD_ROWS = [
    ("malformed-json", b'{"question": "q", "answer": ["a"]', "malformed_json"),
    ("invalid-utf8", b'{"question": "\xff\xfe", "answer": ["a"]}', "invalid_utf8"),
    ("not-an-object", b'["q", ["a"]]', "not_an_object"),
    ("missing-question", b'{"answer": ["a"]}', "missing_question"),
    ("blank-question", b'{"question": "   ", "answer": ["a"]}', "missing_question"),
    ("missing-answer", b'{"question": "q"}', "malformed_answers"),
    ("empty-answers", b'{"question": "q", "answer": []}', "empty_answers"),
    ("blank-answers", b'{"question": "q", "answer": ["", "  "]}', "empty_answers"),
    ("answer-not-string", b'{"question": "q", "answer": [1, 2]}', "malformed_answers"),
]


@pytest.mark.parametrize(("case", "line", "reason"), BAD_ROWS, ids=[c[0] for c in BAD_ROWS])
def test_bad_rows_are_rejected_with_reason(tmp_path, case, line, reason) -> None:
    p = tmp_path / "nq.jsonl"
    p.write_bytes(b'{"question": "good one", "answer": ["yes"]}\n' + line + b"\n")
    rows, rep = load_file(p, "nq_open", "train", "nq")
    assert [r.question for r in rows] == ["good one?"]
    assert dict(rep.rejected) == {reason: 1} and rep.rows_read == 2 and rep.rows_kept == 1


def test_duplicate_ids_rejected_across_files(tmp_path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text('{"id": "1", "question": "q1", "golden_answers": ["x"]}\n')
    b.write_text('{"id": "1", "question": "q2", "golden_answers": ["y"]}\n{"id": "", "question": "q", "golden_answers": ["y"]}\n')
    seen: set[str] = set()
    load_file(a, "flashrag", "test", "nq", seen)
    rows, rep = load_file(b, "flashrag", "test", "nq", seen)
    assert rows == [] and dict(rep.rejected) == {"duplicate_id": 1, "missing_id": 1}


UNUSABLE = [
    ("missing-file", None, "nq_open", "file not found"),
    ("empty-file", b"", "nq_open", "file is empty"),
    ("all-garbage", b"not json\nstill not\n", "nq_open", "x.jsonl:1: no line is a JSON object"),
    ("hotpot-not-list", b'{"question": "q"}', "hotpot_simplified", "expected a JSON list"),
    ("hotpot-bad-json", b'[{"question": "q",\n', "hotpot_simplified", "x.jsonl:2: invalid JSON"),
    ("hotpot-not-utf8", b'["\xff"]', "hotpot_simplified", "not valid UTF-8"),
    ("parquet-garbage", b"PAR1 not really", "verl_parquet", "not a readable parquet file"),
    ("unknown-format", b"{}", "csv", "unknown format 'csv'"),
]


@pytest.mark.parametrize(("case", "content", "fmt", "message"), UNUSABLE, ids=[c[0] for c in UNUSABLE])
def test_unusable_files_fail_naming_the_file(tmp_path, case, content, fmt, message) -> None:
    p = tmp_path / "x.jsonl"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(DatasetFileError) as info:
        load_file(p, fmt, "train", "nq")
    assert str(p) in str(info.value) and message in str(info.value)


def test_parquet_missing_columns(tmp_path) -> None:
    p = tmp_path / "x.parquet"
    pq.write_table(pa.table({"data_source": ["nq"]}), p)
    with pytest.raises(DatasetFileError, match="missing column"):
        load_file(p, "verl_parquet", "test")


def test_unknown_source_and_split(tmp_path) -> None:
    p = tmp_path / "x.jsonl"
    p.write_text('{"question": "q", "answer": ["a"]}\n')
    with pytest.raises(DatasetFileError, match="unknown data source 'webqa'"):
        load_file(p, "nq_open", "train", "webqa")
    with pytest.raises(DatasetFileError, match="unknown split 'dev'"):
        load_file(p, "nq_open", "dev", "nq")


def test_flashrag_row_parser() -> None:
    rep = LoadReport("hub")
    row = parse_flashrag_row({"id": 7, "question": " who? ", "golden_answers": ["A", "A", " B "]}, "nq", "train",
                             rep, set())
    assert row is not None and row.id == "nq:train:7" and row.question == "who?" and row.golden_answers == ("A", "B")


# ---------------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------------

def test_sampling_is_seeded_and_per_source_stable(shared_data) -> None:
    rows, _ = load_file(shared_data / "eval/deepresearcher_dev.parquet", "verl_parquet", "validation")
    a = sample_rows(rows, {"nq": 10, "popqa": 5}, 0, "validation")
    assert sample_rows(rows, {"nq": 10, "popqa": 5}, 0, "validation") == a
    assert sample_rows(rows, {"nq": 10, "popqa": 5}, 1, "validation") != a
    # changing one source's count leaves the other source's sample alone
    b = sample_rows(rows, {"nq": 10, "popqa": 7}, 0, "validation")
    assert [r for r in a if r.data_source == "nq"] == [r for r in b if r.data_source == "nq"]
    with pytest.raises(ValueError, match="validation/nq: asked for 500 rows, only 125 available"):
        sample_rows(rows, {"nq": 500}, 0, "validation")
