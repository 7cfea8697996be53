"""Stage: validate the built dataset with a code-first Great Expectations suite.

`python -m stages.validate_dataset`. Checks columns and types, non-null ids and questions,
non-empty answers, unique ids and indices, no train/validation question in any evaluation set,
prompt length within the policy's limit, known data sources, and per-source counts equal to
params. `run` validates in an in-memory GX context and returns everything; `main` writes the
results and a summary (deterministic: the same dataset gives the same bytes), the HTML data docs
(volatile: GX stamps every page with the run's time and id, so they live in their own output) and
the metrics file; on failure it prints each failing expectation with example rows and exits
non-zero, which stops the pipeline.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from routerops.config import Params, load_params
from routerops.datasets import SOURCES, SPLITS, dedup_key
from routerops.io import atomic_dir, write_json_atomic
from routerops.paths import default_params_file, project_root
from routerops.prompt import apply_chat_template
from routerops.rl_dataset import split_path
from routerops.tokens import ByteTokenizer, Tokenizer

__all__ = ["ExpectationFailure", "Inputs", "Outputs", "build_suite", "flatten", "main", "run", "write"]

COLUMNS = ["index", "id", "split", "data_source", "question", "n_answers", "prompt_tokens", "agent_name",
           "ability", "overlaps_evaluation"]
SUITE = "routerops_dataset"
DOCS_INDEX = "index.html"
# Result fields that differ between two runs on the same data (run times, ids GX generates).
_VOLATILE_META = ("batch_markers", "validation_id", "checkpoint_id", "run_id", "validation_time")


@dataclass(frozen=True)
class Inputs:
    dataset_dir: Path
    tokenizer: Tokenizer  # measures prompt length against rollout.max_prompt_tokens

    @classmethod
    def of_project(cls, root: Path, params: Params) -> Inputs:
        return cls(root / params.build_dataset.out_dir, _tokenizer(params.validate_dataset.tokenizer))


@dataclass(frozen=True)
class ExpectationFailure:
    expectation: str
    kwargs: Mapping[str, Any]
    unexpected_count: int | None
    observed_value: Any
    examples: tuple[Any, ...]  # up to 5 failing rows' ids

    def line(self) -> str:
        found = self.unexpected_count if self.unexpected_count is not None else self.observed_value
        return (f"- {self.expectation} {json.dumps(dict(self.kwargs), default=str)}: {found} unexpected; "
                f"examples: {json.dumps(list(self.examples), default=str)}")


@dataclass(frozen=True)
class Outputs:
    success: bool
    failures: tuple[ExpectationFailure, ...]
    metrics: Mapping[str, Any]  # metrics/validation.json
    results: Mapping[str, Any]  # per check, GX's validation result without its volatile fields
    docs: Mapping[str, bytes]  # the data docs site: relative path -> content
    summary: str


def flatten(dataset_dir: Path, tokenizer: Tokenizer) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per example with the columns the suite checks, plus per-(split, source) counts."""
    frames = []
    for split in SPLITS:
        path = split_path(dataset_dir, split)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; run the build_dataset stage first")
        for rec in pq.read_table(path).to_pylist():
            extra = rec.get("extra_info") or {}
            prompt = rec.get("prompt") or []
            text = apply_chat_template(tokenizer, prompt) if prompt else ""
            frames.append({
                "index": extra.get("index"), "id": extra.get("id"), "split": extra.get("split"),
                "data_source": rec.get("data_source"), "question": extra.get("question"),
                "n_answers": len((rec.get("reward_model") or {}).get("ground_truth") or []),
                "prompt_tokens": len(tokenizer.encode(text, add_special_tokens=False)),
                "agent_name": rec.get("agent_name"), "ability": rec.get("ability"),
            })
    df = pd.DataFrame(frames, columns=[c for c in COLUMNS if c != "overlaps_evaluation"])
    eval_keys = {dedup_key(q) for q in df.loc[df["split"] == "test", "question"].dropna()}
    df["overlaps_evaluation"] = [
        split != "test" and isinstance(q, str) and dedup_key(q) in eval_keys
        for split, q in zip(df["split"], df["question"], strict=True)
    ]
    return df, df.groupby(["split", "data_source"]).size().rename("rows").reset_index()


def build_suite(gx: Any, params: Params) -> Any:
    """The expectations, in code; `gx` is the great_expectations module."""
    E = gx.expectations
    sizes = params.build_dataset.sizes_for(params.profile)
    suite = gx.ExpectationSuite(name=SUITE)
    for e in [
        E.ExpectTableColumnsToMatchSet(column_set=COLUMNS, exact_match=True),
        E.ExpectColumnValuesToBeOfType(column="index", type_="int64"),
        E.ExpectColumnValuesToBeOfType(column="n_answers", type_="int64"),
        E.ExpectColumnValuesToBeOfType(column="prompt_tokens", type_="int64"),
        E.ExpectColumnValuesToNotBeNull(column="id"),
        E.ExpectColumnValuesToNotBeNull(column="question"),
        E.ExpectColumnValuesToNotBeNull(column="index"),
        E.ExpectColumnValuesToBeUnique(column="id"),
        E.ExpectColumnValuesToBeUnique(column="index"),
        E.ExpectColumnValuesToBeBetween(column="n_answers", min_value=1),
        E.ExpectColumnValueLengthsToBeBetween(column="question", min_value=2),
        E.ExpectColumnValuesToBeInSet(column="data_source", value_set=list(SOURCES)),
        E.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
        E.ExpectColumnValuesToBeInSet(column="overlaps_evaluation", value_set=[False]),
        E.ExpectColumnValuesToBeBetween(column="prompt_tokens", min_value=1,
                                        max_value=params.rollout.max_prompt_tokens),
        E.ExpectColumnValuesToBeInSet(column="agent_name", value_set=[params.build_dataset.agent_name]),
        E.ExpectTableRowCountToEqual(value=sum(n for counts in sizes.values() for n in counts.values() if n > 0)),
    ]:
        suite.add_expectation(e)
    return suite


def build_count_suite(gx: Any) -> Any:
    suite = gx.ExpectationSuite(name=f"{SUITE}_counts")
    suite.add_expectation(gx.expectations.ExpectColumnPairValuesToBeEqual(column_A="rows", column_B="expected"))
    return suite


def _stable(result: Mapping[str, Any]) -> dict[str, Any]:
    """A validation result as JSON without what changes from run to run: the run's time and the
    ids GX generates (checkpoint, validation, expectation ids). The data fingerprint stays."""
    out = dict(result)
    out.pop("id", None)
    out["meta"] = {k: v for k, v in result.get("meta", {}).items() if k not in _VOLATILE_META}
    fingerprint = result.get("meta", {}).get("batch_markers", {}).get("pandas_data_fingerprint")
    if fingerprint is not None:
        out["meta"]["pandas_data_fingerprint"] = fingerprint
    out["results"] = [{**r, "expectation_config": {k: v for k, v in r["expectation_config"].items() if k != "id"}}
                      for r in result.get("results", [])]
    return out


def _read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run(params: Params, inputs: Inputs) -> Outputs:
    """Validate in an in-memory GX context; the data docs are built in a private temporary
    directory and returned as bytes."""
    import great_expectations as gx
    from great_expectations.checkpoint.actions import UpdateDataDocsAction
    from great_expectations.data_context.types.base import ProgressBarsConfig

    rows, counts = flatten(inputs.dataset_dir, inputs.tokenizer)
    sizes = params.build_dataset.sizes_for(params.profile)
    expected = pd.DataFrame([{"split": s, "data_source": src, "expected": n}
                             for s, c in sizes.items() for src, n in c.items() if n > 0])
    counts = expected.merge(counts, on=["split", "data_source"], how="outer").fillna(0)
    counts[["rows", "expected"]] = counts[["rows", "expected"]].astype("int64")
    counts["key"] = counts["split"] + "/" + counts["data_source"]

    failures: list[ExpectationFailure] = []
    stats = {"evaluated": 0, "successful": 0}
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="routerops-gx-docs-") as site:
        ctx = gx.get_context(mode="ephemeral")
        # GX's own per-metric bars would write hundreds of lines into a log.
        ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
        ctx.update_data_docs_site("local_site", {
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": site},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"}})
        ds = ctx.data_sources.add_pandas("routerops")
        checks = [("rows", rows, build_suite(gx, params), "id"), ("counts", counts, build_count_suite(gx), "key")]
        for name, frame, suite, id_col in checks:
            batch = ds.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
            vd = ctx.validation_definitions.add(gx.ValidationDefinition(
                name=f"{name}_validation", data=batch, suite=ctx.suites.add(suite)))
            checkpoint = ctx.checkpoints.add(gx.Checkpoint(
                name=f"{name}_checkpoint", validation_definitions=[vd],
                actions=[UpdateDataDocsAction(name="data_docs")],
                result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [id_col]}))
            res = checkpoint.run(batch_parameters={"dataframe": frame})
            for vr in res.run_results.values():
                results[name] = _stable(vr.to_json_dict())
                for r in vr.results:
                    stats["evaluated"] += 1
                    if r.success:
                        stats["successful"] += 1
                        continue
                    cfg = r.expectation_config
                    assert cfg is not None  # every result of a suite run carries its expectation
                    shown = {k: v for k, v in cfg.kwargs.items() if k not in ("batch_id", "value_set", "column_set")}
                    failures.append(ExpectationFailure(
                        cfg.type, shown,
                        r.result.get("unexpected_count"), r.result.get("observed_value"),
                        tuple((r.result.get("partial_unexpected_index_list") or [])[:5])))
        docs = _read_tree(Path(site))
    metrics = {"success": not failures, "expectations": stats["evaluated"], "failed": len(failures),
               "rows": len(rows), "max_prompt_tokens": int(rows["prompt_tokens"].max()) if len(rows) else 0}
    return Outputs(not failures, tuple(failures), metrics, results, docs, _summary(metrics, failures))


def _summary(metrics: Mapping[str, Any], failures: list[ExpectationFailure]) -> str:
    verdict = "passed" if metrics["success"] else f"FAILED ({metrics['failed']} expectations)"
    lines = ["# Dataset validation", "",
             f"{metrics['expectations']} Great Expectations expectations on {metrics['rows']} rows: {verdict}. "
             f"Longest prompt: {metrics['max_prompt_tokens']} tokens.", ""]
    return "\n".join(lines + [f.line() for f in failures] + ([""] if failures else []))


def write(out: Outputs, out_dir: Path, docs_dir: Path, metrics_path: Path) -> None:
    """Results and summary into one atomically swapped directory, the data docs into another."""
    with atomic_dir(out_dir) as tmp:
        write_json_atomic(tmp / "results.json", out.results)
        (tmp / "summary.md").write_text(out.summary)
    with atomic_dir(docs_dir) as tmp:
        for rel, data in out.docs.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)
    write_json_atomic(metrics_path, out.metrics)


def _tokenizer(spec: str) -> Tokenizer:
    if spec == "bytes":
        return ByteTokenizer()
    from transformers import AutoTokenizer

    tok: Tokenizer = AutoTokenizer.from_pretrained(spec, local_files_only=True)
    return tok


def main() -> None:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # before GX is imported: no usage reports
    root = project_root()
    params = load_params(default_params_file())
    vp = params.validate_dataset
    out = run(params, Inputs.of_project(root, params))
    write(out, root / vp.out_dir, root / vp.docs_dir, root / vp.metrics)
    docs = root / vp.docs_dir / DOCS_INDEX
    if out.success:
        sys.stdout.write(f"validate_dataset: {out.metrics['expectations']} expectations passed on "
                         f"{out.metrics['rows']} rows; data docs: {docs}\n")
        return
    sys.stderr.write(f"validate_dataset: {len(out.failures)} expectation(s) FAILED (data docs: {docs})\n")
    for f in out.failures:
        sys.stderr.write(f.line() + "\n")
    raise SystemExit(1)


if __name__ == "__main__":
    main()
