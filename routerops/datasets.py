"""Raw question-answering files into one canonical row; sampling and de-duplication.

Canonical row: `id` (source-prefixed, globally unique), `data_source`, `split`, `question`
(normalised: stripped, one space, trailing '?'), `golden_answers` (every alias, in file order).
A bad row is rejected with a counted reason and the file goes on; a file that cannot be read at
all fails with an error naming the file (and the line, for line-oriented formats).
"""

from __future__ import annotations

import json
import random
import re
import string
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from routerops.prompt import normalize_question

__all__ = [
    "ANSWER_SPLIT",
    "SOURCES",
    "SPLITS",
    "CanonicalRow",
    "DatasetFileError",
    "Format",
    "LoadReport",
    "Split",
    "dedup_key",
    "load_file",
    "parse_flashrag_row",
    "sample_rows",
]

ANSWER_SPLIT = "<|answer_split|>"
# FlashRAG config names: the data sources this project knows. `multihopqa` marks R1-Searcher's
# training file, whose HotpotQA and 2WikiMultihopQA questions cannot be told apart.
SOURCES = ("nq", "triviaqa", "popqa", "hotpotqa", "2wikimultihopqa", "musique", "bamboogle", "multihopqa")
_SOURCE_ALIASES = {"tq": "triviaqa", "2wiki": "2wikimultihopqa", "Bamboogle": "bamboogle", "bamboogle": "bamboogle"}
Format = Literal["flashrag", "nq_open", "hotpot_simplified", "r1searcher", "verl_parquet", "llmrouter_queries"]
FORMATS: tuple[str, ...] = get_args(Format)
# LLMRouter's task names for the QA sources whose per-model quality the replay matrix records.
LLMROUTER_TASKS = {"natural_qa": "nq", "trivia_qa": "triviaqa"}
Split = Literal["train", "validation", "test"]
SPLITS: tuple[Split, ...] = ("train", "validation", "test")


class DatasetFileError(ValueError):
    """A raw file is unusable as a whole."""

    def __init__(self, file: str | Path, message: str, line: int | None = None) -> None:
        where = f"{file}:{line}" if line is not None else str(file)
        super().__init__(f"{where}: {message}")
        self.file, self.line = str(file), line


@dataclass(frozen=True)
class CanonicalRow:
    id: str
    data_source: str
    split: str
    question: str
    golden_answers: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "data_source": self.data_source, "split": self.split,
                "question": self.question, "golden_answers": list(self.golden_answers)}


@dataclass
class LoadReport:
    """Per-file outcome: rows kept and rejected rows counted by reason."""

    file: str
    rows_read: int = 0
    rows_kept: int = 0
    skipped: int = 0  # rows of no interest by design (e.g. non-QA tasks), not errors
    rejected: Counter[str] = field(default_factory=Counter)

    def reject(self, reason: str) -> None:
        self.rejected[reason] += 1


_PUNCT_RE = re.compile(f"[{re.escape(string.punctuation)}]")


def dedup_key(question: str) -> str:
    """Key under which two questions count as the same: case, punctuation and space folded."""
    return " ".join(_PUNCT_RE.sub(" ", question.casefold()).split())


def _aliases(value: Any) -> list[str] | None:
    """Gold aliases from a list, a string, or a string joined with <|answer_split|>."""
    if isinstance(value, str):
        items: list[Any] = value.split(ANSWER_SPLIT)
    elif isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
        items = list(value.tolist() if hasattr(value, "tolist") else value)
    else:
        return None
    out: list[str] = []
    for a in items:
        if not isinstance(a, str):
            return None
        a = " ".join(a.split())
        if a and a not in out:
            out.append(a)
    return out


def _make_row(report: LoadReport, *, id_: str, source: str, split: str, question: Any, answers: Any,
              seen_ids: set[str]) -> CanonicalRow | None:
    if not isinstance(question, str) or not question.strip():
        report.reject("missing_question")
        return None
    golds = _aliases(answers)
    if golds is None:
        report.reject("malformed_answers")
        return None
    if not golds:
        report.reject("empty_answers")
        return None
    if id_ in seen_ids:
        report.reject("duplicate_id")
        return None
    seen_ids.add(id_)
    report.rows_kept += 1
    return CanonicalRow(id_, source, split, normalize_question(question), tuple(golds))


def _json_lines(path: Path, report: LoadReport) -> Iterator[tuple[int, dict[str, Any]]]:
    """Parse JSON lines; bad lines are counted, not fatal."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetFileError(path, f"cannot read ({exc.strerror})") from None
    lines = raw.splitlines()
    if not any(line.strip() for line in lines):
        raise DatasetFileError(path, "file is empty")
    good = 0
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        report.rows_read += 1
        try:
            obj = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            report.reject("invalid_utf8")
            continue
        except json.JSONDecodeError:
            report.reject("malformed_json")
            continue
        if not isinstance(obj, dict):
            report.reject("not_an_object")
            continue
        good += 1
        yield n, obj
    if good == 0:
        raise DatasetFileError(path, "no line is a JSON object; is this the right format?", line=1)


def parse_flashrag_row(obj: Mapping[str, Any], source: str, split: str, report: LoadReport,
                       seen_ids: set[str]) -> CanonicalRow | None:
    """One row of RUC-NLPIR/FlashRAG_datasets: {id, question, golden_answers}."""
    raw_id = obj.get("id")
    if raw_id is None or str(raw_id).strip() == "":
        report.reject("missing_id")
        return None
    return _make_row(report, id_=f"{source}:{split}:{raw_id}", source=source, split=split,
                     question=obj.get("question"), answers=obj.get("golden_answers"), seen_ids=seen_ids)


def load_file(path: str | Path, fmt: str, split: str, source: str | None = None,
              seen_ids: set[str] | None = None) -> tuple[list[CanonicalRow], LoadReport]:
    """Load one raw file into canonical rows. `source` is required except for verl parquet,
    whose rows carry their own `data_source`."""
    p = Path(path)
    if fmt not in FORMATS:
        raise DatasetFileError(p, f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if split not in ("train", "validation", "test"):
        raise DatasetFileError(p, f"unknown split {split!r}")
    if fmt not in ("verl_parquet", "llmrouter_queries") and source not in SOURCES:
        raise DatasetFileError(p, f"unknown data source {source!r}; expected one of {', '.join(SOURCES)}")
    if not p.is_file():
        raise DatasetFileError(p, "file not found")
    seen = seen_ids if seen_ids is not None else set()
    report = LoadReport(str(p))
    rows: list[CanonicalRow] = []

    def keep(row: CanonicalRow | None) -> None:
        if row is not None:
            rows.append(row)

    assert source is not None or fmt in ("verl_parquet", "llmrouter_queries")
    if fmt == "llmrouter_queries":
        # Only the QA tasks are questions for a router; the rest (maths, code, ...) are skipped,
        # counted apart from rejects.
        for n, obj in _json_lines(p, report):
            task_source = LLMROUTER_TASKS.get(str(obj.get("task_name")))
            if task_source is None or (source is not None and task_source != source):
                report.rows_read -= 1
                report.skipped += 1
                continue
            keep(_make_row(report, id_=f"{task_source}:{split}:{p.stem}:{n}", source=task_source, split=split,
                           question=obj.get("query"), answers=obj.get("ground_truth"), seen_ids=seen))
    elif fmt == "flashrag":
        for _, obj in _json_lines(p, report):
            keep(parse_flashrag_row(obj, source, split, report, seen))  # type: ignore[arg-type]
    elif fmt == "nq_open":
        for n, obj in _json_lines(p, report):
            keep(_make_row(report, id_=f"{source}:{split}:{p.stem}:{n}", source=source, split=split,  # type: ignore[arg-type]
                           question=obj.get("question"), answers=obj.get("answer"), seen_ids=seen))
    elif fmt == "r1searcher":
        for _, obj in _json_lines(p, report):
            idx = obj.get("idx")
            if idx is None:
                report.reject("missing_id")
                continue
            keep(_make_row(report, id_=f"{source}:{split}:r1s{idx}", source=source, split=split,  # type: ignore[arg-type]
                           question=obj.get("question"), answers=obj.get("answer"), seen_ids=seen))
    elif fmt == "hotpot_simplified":
        try:
            data = json.loads(p.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise DatasetFileError(p, f"not valid UTF-8 at byte {exc.start}") from None
        except json.JSONDecodeError as exc:
            raise DatasetFileError(p, f"invalid JSON ({exc.msg})", line=exc.lineno) from None
        if not isinstance(data, list):
            raise DatasetFileError(p, "expected a JSON list of {question, answer, type} objects")
        for i, obj in enumerate(data):
            report.rows_read += 1
            if not isinstance(obj, dict):
                report.reject("not_an_object")
                continue
            keep(_make_row(report, id_=f"{source}:{split}:{p.stem}:{i}", source=source, split=split,  # type: ignore[arg-type]
                           question=obj.get("question"), answers=obj.get("answer"), seen_ids=seen))
    else:
        rows.extend(_load_verl_parquet(p, split, report, seen))
    return rows, report


def _load_verl_parquet(p: Path, split: str, report: LoadReport, seen: set[str]) -> Iterator[CanonicalRow]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(p)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise DatasetFileError(p, f"not a readable parquet file ({type(exc).__name__}: {exc})") from None
    needed = {"data_source", "prompt", "reward_model", "extra_info"}
    missing = needed - set(table.column_names)
    if missing:
        raise DatasetFileError(p, f"missing column(s) {', '.join(sorted(missing))}")
    for i, rec in enumerate(table.to_pylist()):
        report.rows_read += 1
        source = _SOURCE_ALIASES.get(rec["data_source"], rec["data_source"])
        if source not in SOURCES:
            report.reject("unknown_data_source")
            continue
        prompt = rec.get("prompt") or []
        question = next((m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"), None)
        extra = rec.get("extra_info") or {}
        raw_id = extra.get("index", i)
        yield from filter(None, [_make_row(
            report, id_=f"{source}:{split}:{raw_id}", source=source, split=split, question=question,
            answers=(rec.get("reward_model") or {}).get("ground_truth"), seen_ids=seen)])


def sample_rows(rows: Sequence[CanonicalRow], counts: Mapping[str, int], seed: int,
                where: str) -> list[CanonicalRow]:
    """Seeded sample of `counts[source]` rows per source; a source short of rows is an error."""
    by_source: dict[str, list[CanonicalRow]] = {}
    for r in rows:
        by_source.setdefault(r.data_source, []).append(r)
    out: list[CanonicalRow] = []
    for source in sorted(counts):
        want = counts[source]
        have = sorted(by_source.get(source, []), key=lambda r: r.id)
        if want > len(have):
            raise ValueError(f"{where}/{source}: asked for {want} rows, only {len(have)} available after "
                             f"de-duplication; lower the count or seed more data (routerops data seed --from-hub)")
        # Per-source RNG so that changing one source's count leaves the others' samples alone.
        out.extend(random.Random(f"{seed}:{where}:{source}").sample(have, want))
    return out


def iter_questions(rows: Iterable[CanonicalRow]) -> Iterator[str]:
    for r in rows:
        yield r.question
