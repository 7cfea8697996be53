"""Stage: validate the built dataset with a code-first Great Expectations suite.

`python -m stages.validate_dataset`. Checks columns and types, non-null ids and questions,
non-empty answers, unique ids and indices, no train/validation question in any evaluation set,
prompt length within the policy's limit, known data sources, and per-source counts equal to
params. Writes the validation results, HTML data docs and a metrics file; on failure prints each
failing expectation with example rows and exits non-zero, which stops the pipeline.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from routerops.config import Params, load_params
from routerops.datasets import SOURCES, dedup_key
from routerops.io import atomic_dir, write_json_atomic
from routerops.paths import project_root
from routerops.prompt import apply_chat_template
from routerops.tokens import ByteTokenizer

SPLITS = ("train", "validation", "test")
COLUMNS = ["index", "id", "split", "data_source", "question", "n_answers", "prompt_tokens", "agent_name",
           "ability", "overlaps_evaluation"]
SUITE = "routerops_dataset"


@dataclass(frozen=True)
class Outputs:
    success: bool
    failures: list[dict[str, Any]]
    metrics: dict[str, Any]


def flatten(dataset_dir: Path, tokenizer: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per example with the columns the suite checks, plus per-(split, source) counts."""
    frames = []
    for split in SPLITS:
        path = dataset_dir / "rl" / f"{split}.parquet"
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
    sizes = params.require("build_dataset").sizes_for(params.profile)
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
        E.ExpectColumnValuesToBeInSet(column="agent_name", value_set=[params.require("build_dataset").agent_name]),
        E.ExpectTableRowCountToEqual(value=sum(n for counts in sizes.values() for n in counts.values() if n > 0)),
    ]:
        suite.add_expectation(e)
    return suite


def build_count_suite(gx: Any) -> Any:
    suite = gx.ExpectationSuite(name=f"{SUITE}_counts")
    suite.add_expectation(gx.expectations.ExpectColumnPairValuesToBeEqual(column_A="rows", column_B="expected"))
    return suite


def run(params: Params, dataset_dir: Path, out_dir: Path, tokenizer: Any) -> Outputs:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    rows, counts = flatten(dataset_dir, tokenizer)
    sizes = params.require("build_dataset").sizes_for(params.profile)
    expected = pd.DataFrame([{"split": s, "data_source": src, "expected": n}
                             for s, c in sizes.items() for src, n in c.items() if n > 0])
    counts = expected.merge(counts, on=["split", "data_source"], how="outer").fillna(0)
    counts[["rows", "expected"]] = counts[["rows", "expected"]].astype("int64")
    counts["key"] = counts["split"] + "/" + counts["data_source"]

    failures: list[dict[str, Any]] = []
    stats = {"evaluated": 0, "successful": 0}
    with atomic_dir(out_dir) as tmp:
        ctx = gx.get_context(mode="file", project_root_dir=str(tmp))
        ds = ctx.data_sources.add_pandas("routerops")
        checks = [("rows", rows, build_suite(gx, params), "id"), ("counts", counts, build_count_suite(gx), "key")]
        results = {}
        for name, frame, suite, id_col in checks:
            batch = ds.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
            vd = ctx.validation_definitions.add(gx.ValidationDefinition(
                name=f"{name}_validation", data=batch, suite=ctx.suites.add(suite)))
            checkpoint = ctx.checkpoints.add(gx.Checkpoint(
                name=f"{name}_checkpoint", validation_definitions=[vd],
                actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")],
                result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [id_col]}))
            res = checkpoint.run(batch_parameters={"dataframe": frame})
            for vr in res.run_results.values():
                results[name] = vr.to_json_dict()
                for r in vr.results:
                    stats["evaluated"] += 1
                    if r.success:
                        stats["successful"] += 1
                        continue
                    cfg = r.expectation_config
                    kwargs = {k: v for k, v in cfg.kwargs.items() if k not in ("batch_id", "value_set", "column_set")}
                    failures.append({
                        "expectation": cfg.type, "kwargs": kwargs,
                        "unexpected_count": r.result.get("unexpected_count"),
                        "observed_value": r.result.get("observed_value"),
                        "examples": (r.result.get("partial_unexpected_index_list") or [])[:5],
                    })
        write_json_atomic(tmp / "results.json", results)
    metrics = {"success": not failures, "expectations": stats["evaluated"], "failed": len(failures),
               "rows": len(rows), "max_prompt_tokens": int(rows["prompt_tokens"].max()) if len(rows) else 0}
    return Outputs(not failures, failures, metrics)


def _tokenizer(spec: str) -> Any:
    if spec == "bytes":
        return ByteTokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(spec, local_files_only=True)


def main() -> None:
    params = load_params(project_root() / "params.yaml")
    vp = params.require("validate_dataset")
    dataset_dir = project_root() / params.require("build_dataset").out_dir
    out = run(params, dataset_dir, project_root() / vp.out_dir, _tokenizer(vp.tokenizer))
    write_json_atomic(project_root() / vp.metrics, out.metrics)
    docs = project_root() / vp.out_dir / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
    if out.success:
        sys.stdout.write(f"validate_dataset: {out.metrics['expectations']} expectations passed on "
                         f"{out.metrics['rows']} rows; data docs: {docs}\n")
        return
    sys.stderr.write(f"validate_dataset: {len(out.failures)} expectation(s) FAILED (data docs: {docs})\n")
    for f in out.failures:
        sys.stderr.write(f"- {f['expectation']} {json.dumps(f['kwargs'], default=str)}: "
                         f"{f['unexpected_count'] if f['unexpected_count'] is not None else f['observed_value']}"
                         f" unexpected; examples: {json.dumps(f['examples'], default=str)}\n")
    raise SystemExit(1)


if __name__ == "__main__":
    main()
