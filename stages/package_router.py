"""Stage: package the evaluated router as a versioned BentoML model and a self-contained Bento.

`python -m stages.package_router`. `run` assembles the package (router weights and tokenizer, the
params and pool it was evaluated with, the prompt template, the replay data) and its
`PackageRecord`: a version that is a content hash of all of it and of the service code, labels
(code commit, pool snapshot and pricing ids, the dataset, router and evaluation hashes from
dvc.lock) and the headline evaluation metrics. `write` registers the model in BentoML's store
(`bentoml.models.create`: registered only when the block ends cleanly), builds the Bento from
`services/` with the `[tool.bentoml.build]` config of pyproject.toml, and exports both as archives
under `package_router.out_dir` (pushed to S3 by `dvc push`; `bentoml import` restores them). A
version already in the store is kept as it is: re-running with the same inputs changes nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from routerops.codebase import import_closure
from routerops.config import Params, load_params
from routerops.io import atomic_dir, write_text_atomic
from routerops.packaging import (
    BENTO_ARCHIVE,
    MODEL_ARCHIVE,
    PACKAGE_RECORD,
    RECORD_FILE,
    PackageError,
    PackageRecord,
    bentoml_home,
    file_hashes,
    package_files,
    package_version,
    runtime_env_names,
)
from routerops.paths import default_params_file, default_pool_file, project_root
from routerops.pool import Pool, load_pool
from routerops.rl_dataset import read_questions

__all__ = ["BUNDLED_CODE", "Inputs", "Outputs", "main", "run", "write"]

SCHEMA_VERSION = 1
# Code the Bento carries besides this stage's own: the service and everything it imports.
BUNDLED_CODE = ("services.router_service",)
# The key of the Bento build config (`[tool.bentoml]` of pyproject.toml) in the record's code hashes.
BUILD_CONFIG_KEY = "pyproject.toml:tool.bentoml"
# (stage, output path) of dvc.lock whose hash each label carries.
LOCK_LABELS = {"dataset_md5": ("build_dataset", "artifacts/dataset"),
               "router_md5": ("train_router", "artifacts/router"),
               "evaluation_md5": ("evaluate_router", "artifacts/evaluation")}


@dataclass(frozen=True)
class Inputs:
    pool: Pool
    pool_file: Path
    params_file: Path
    root: Path  # the project: code, templates, dvc.lock, git

    @classmethod
    def of_project(cls, root: Path, params: Params) -> Inputs:
        pool_file = default_pool_file(root)
        return cls(load_pool(pool_file), pool_file, default_params_file(root), root)


@dataclass(frozen=True)
class Outputs:
    record: PackageRecord
    files: Mapping[str, bytes]  # the model directory, record included
    summary: str
    runtime_envs: tuple[str, ...]  # env vars the service must be given (declared on the Bento)


def _commit(root: Path) -> str:
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else "unknown"


def _lock_hashes(root: Path) -> dict[str, str]:
    lock_file = root / "dvc.lock"
    stages = (yaml.safe_load(lock_file.read_text()) or {}).get("stages", {}) if lock_file.is_file() else {}
    out = {}
    for label, (stage, path) in LOCK_LABELS.items():
        outs = {o["path"]: o.get("md5", "") for o in stages.get(stage, {}).get("outs", [])}
        out[label] = outs.get(path, "unknown")
    return out


def _build_config(root: Path) -> dict[str, Any]:
    with (root / "pyproject.toml").open("rb") as f:
        config: dict[str, Any] = tomllib.load(f)["tool"]["bentoml"]
    return config


def _headline(metrics_file: Path) -> dict[str, float | bool | None]:
    m = json.loads(metrics_file.read_text())
    router = m["average"]["router"]
    verdict = m.get("verdict") or {}
    return {"em": router["em"], "f1": router["f1"], "usd_per_question": router["usd_per_question"],
            "calls_per_question": router["calls_per_question"], "format_valid": router["format_valid"],
            "dominates_random": verdict.get("dominates_random"),
            "em_vs_random_significant": verdict.get("em_vs_random_significant"),
            "oracle_em_gap": verdict.get("oracle_em_gap")}


def run(params: Params, inputs: Inputs) -> Outputs:
    root, pp = inputs.root, params.package_router
    dataset = root / params.build_dataset.out_dir
    # The questions the evaluation's replay pool knew, in its order (test, then the kNN fit).
    questions = [*read_questions(dataset, "test"),
                 *read_questions(dataset, "train")[: params.evaluate_router.knn_train_questions]]
    template = params.prompt.template_for(params.profile)
    files = package_files(params_file=inputs.params_file, params=params, pool_file=inputs.pool_file,
                          router_dir=root / params.train_router.out_dir,
                          template=None if template is None else root / template,
                          matrix_dir=root / params.build_dataset.raw_dir / "pool", questions=questions)
    code = file_hashes({rel: (root / rel).read_bytes() for rel in import_closure(BUNDLED_CODE, root)})
    # The Bento's build config (what it includes, what its image installs) is part of the version.
    code[BUILD_CONFIG_KEY] = file_hashes({"": json.dumps(_build_config(root), sort_keys=True).encode()})[""]
    version = package_version(file_hashes(files), code)
    labels = {"version": version, "code_commit": _commit(root), "pool_snapshot": inputs.pool.snapshot_id,
              "pricing_id": inputs.pool.pricing.id, "pricing_label": inputs.pool.pricing.label,
              "profile": params.profile, "training_backend": params.train_router.backend, **_lock_hashes(root)}
    record = PackageRecord(schema_version=SCHEMA_VERSION, version=version, model_tag=f"{pp.model_name}:{version}",
                           bento_tag=f"{pp.bento_name}:{version}", labels=labels,
                           evaluation=_headline(root / params.evaluate_router.metrics), files=file_hashes(files),
                           code=code)
    files[PACKAGE_RECORD] = (record.model_dump_json(indent=2) + "\n").encode()
    return Outputs(record, files, _summary(record), runtime_env_names(params, inputs.pool))


def _summary(record: PackageRecord) -> str:
    ev = record.evaluation
    lines = ["# Router package", "", "| field | value |", "|---|---|",
             f"| version | {record.version} |", f"| BentoML model | `{record.model_tag}` |",
             f"| Bento | `{record.bento_tag}` |",
             *(f"| {k} | {v} |" for k, v in record.labels.items() if k != "version"),
             f"| evaluation EM / USD per question | {ev['em']:.3f} / {float(ev['usd_per_question'] or 0):.8f} |",
             f"| files / service code files | {len(record.files)} / {len(record.code)} |", "",
             f"Serve it: `routerops serve --bento {record.bento_tag}`.", ""]
    return "\n".join(lines)


def _service_args(params: Params, out: Outputs) -> dict[str, Any]:
    s = params.serve
    return {"model": out.record.model_tag, "max_concurrency": s.max_concurrency, "retry_after_s": s.retry_after_s,
            "timeout_s": s.timeout_s, "auth": s.auth, "runtime_envs": list(out.runtime_envs)}


def write(out: Outputs, params: Params, root: Path, out_dir: Path) -> None:
    """Model and Bento into BentoML's store (kept when the version is already there), then both
    exported with the record and summary into one atomically swapped directory."""
    os.environ["BENTOML_HOME"] = str(bentoml_home(params, root))  # before bentoml reads it
    import bentoml
    from bentoml.exceptions import NotFound

    record = out.record
    try:
        bentoml.models.get(record.model_tag)
    except NotFound:
        with bentoml.models.create(record.model_tag, labels=record.labels,
                                   metadata={"routerops_package": record.model_dump(mode="json")}) as model:
            for rel, data in out.files.items():
                target = Path(model.path) / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
    try:
        bentoml.bentos.get(record.bento_tag)
    except NotFound:
        bentoml.bentos.build_bentofile(str(root / "pyproject.toml"), build_ctx=str(root),
                                       name=params.package_router.bento_name, version=record.version,
                                       labels=record.labels, args=_service_args(params, out))
    with atomic_dir(out_dir) as tmp:
        bentoml.models.export_model(record.model_tag, str(tmp / MODEL_ARCHIVE))
        bentoml.bentos.export_bento(record.bento_tag, str(tmp / BENTO_ARCHIVE))
        write_text_atomic(tmp / RECORD_FILE, record.model_dump_json(indent=2) + "\n")
        (tmp / "summary.md").write_text(out.summary)


def main() -> None:
    root = project_root()
    params = load_params(default_params_file(root))
    try:
        out = run(params, Inputs.of_project(root, params))
    except (PackageError, FileNotFoundError) as exc:
        sys.stderr.write(f"package_router: {exc}\n")
        raise SystemExit(1) from None
    write(out, params, root, root / params.package_router.out_dir)
    sys.stdout.write(out.summary)


if __name__ == "__main__":
    main()
