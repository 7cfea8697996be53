"""Stage: package the evaluated router as a versioned BentoML model and a self-contained Bento,
with its lineage record.

`python -m stages.package_router`. `run` assembles the package (router weights and tokenizer, the
params and pool it was evaluated with, the prompt template, the replay data), its lineage record
(`routerops.lineage`: the raw data, dataset, validation, checkpoint, router and evaluation hashes
from dvc.lock and data.dvc, the prices, the params each stage read, the code commit, the
environment) and its `PackageRecord`. The version is the lineage record's content hash. `write`
registers the model in BentoML's store with the record in its metadata (`bentoml.models.create`:
registered only when the block ends cleanly), builds the Bento from `services/` with the
`[tool.bentoml.build]` config of pyproject.toml, and exports both as archives under
`package_router.out_dir` beside `lineage.json` (pushed to S3 by `dvc push`; `bentoml import`
restores them). A version already in the store is kept as it is, record included: re-running with
the same inputs changes nothing.

Code that differs from HEAD (the paths in `CODE_PATHS`) is refused: such a version could not be
proved from git. `ROUTEROPS_ALLOW_DIRTY=1` packages it anyway and the record says so, with the
dirty files' names and a hash of their contents.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from routerops.codebase import import_closure
from routerops.config import Params, load_params
from routerops.io import atomic_dir, write_text_atomic
from routerops.lineage import (
    LINEAGE_FILE,
    ArtifactRef,
    CodeInfo,
    ConfigInfo,
    DataInfo,
    EnvironmentInfo,
    EvaluationInfo,
    LineageError,
    LineageRecord,
    ModelInfo,
    PricesInfo,
    RemoteUnavailable,
    lock_artifact,
    lock_stage_params,
    parse_record,
    version_id,
)
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
    runtime_env_names,
)
from routerops.paths import default_params_file, default_pool_file, project_root
from routerops.pool import Pool, load_pool
from routerops.registry import GitRepo, Registry, RegistryError
from routerops.remote import read_remote_config
from routerops.rl_dataset import read_questions

__all__ = ["ALLOW_DIRTY_ENV", "BUNDLED_CODE", "CODE_PATHS", "Inputs", "Outputs", "main", "run", "write"]

SCHEMA_VERSION = 1
# Code the Bento carries besides this stage's own: the service and everything it imports.
BUNDLED_CODE = ("services.router_service",)
# The key of the Bento build config (`[tool.bentoml]` of pyproject.toml) in the record's code hashes.
BUILD_CONFIG_KEY = "pyproject.toml:tool.bentoml"
# What counts as code for the dirty-tree check: everything that runs or builds the pipeline.
CODE_PATHS = ("routerops", "stages", "services", "flows", "infra", "templates", "requirements", "pyproject.toml",
              "dvc.yaml")
ALLOW_DIRTY_ENV = "ROUTEROPS_ALLOW_DIRTY"
# Versions of what made and runs the router (distribution names; None when not installed).
ENVIRONMENT_PACKAGES = ("torch", "transformers", "verl", "bentoml", "dvc", "vllm")
LOCK_FILE = "requirements/lock.txt"
STAGE = "package_router"


@dataclass(frozen=True)
class Inputs:
    pool: Pool
    pool_file: Path
    params_file: Path
    root: Path  # the project: code, templates, dvc.lock, git
    allow_dirty: bool = False

    @classmethod
    def of_project(cls, root: Path, params: Params) -> Inputs:
        pool_file = default_pool_file(root)
        return cls(load_pool(pool_file), pool_file, default_params_file(root), root,
                   os.environ.get(ALLOW_DIRTY_ENV, "") not in ("", "0"))


@dataclass(frozen=True)
class Outputs:
    record: PackageRecord
    lineage: LineageRecord
    files: Mapping[str, bytes]  # the model directory, record included
    summary: str
    runtime_envs: tuple[str, ...]  # env vars the service must be given (declared on the Bento)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise LineageError(f"{path}: missing (run `dvc repro`)")
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _code_info(root: Path, code: dict[str, str], allow_dirty: bool) -> CodeInfo:
    git = GitRepo(root)
    commit = git.head()
    if commit is None:
        raise PackageError(f"{root} is not a git checkout with a commit: a version's code must be a commit")
    dirty = git.dirty(CODE_PATHS)
    if dirty and not allow_dirty:
        raise PackageError(f"code differs from HEAD {commit[:12]} in {len(dirty)} file(s) ({', '.join(dirty[:5])}"
                           f"{', ...' if len(dirty) > 5 else ''}): commit it, or package anyway with "
                           f"{ALLOW_DIRTY_ENV}=1 (recorded as dirty)")
    h = hashlib.sha256()
    for rel in dirty:
        p = root / rel
        h.update(rel.encode() + b"\0" + (p.read_bytes() if p.is_file() else b"<deleted>") + b"\0")
    return CodeInfo(commit=commit, dirty=bool(dirty), dirty_files=dirty, dirty_sha256=h.hexdigest() if dirty else None,
                    files=code)


def _environment(root: Path) -> EnvironmentInfo:
    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    lock = root / LOCK_FILE
    return EnvironmentInfo(lock_sha256=_sha256(lock) if lock.is_file() else "none", python=platform.python_version(),
                           packages={d: version(d) for d in ENVIRONMENT_PACKAGES})


def _parent(root: Path, artifact: str) -> str | None:
    try:
        champion = Registry(root, artifact).champion()
    except (RegistryError, LineageError):
        return None
    return None if champion is None else champion.router_version


def _remote_url(root: Path) -> str | None:
    try:
        return read_remote_config(root).url
    except RemoteUnavailable:
        return None  # no DVC remote configured: the record names hashes only


def _headline(metrics_file: Path) -> dict[str, float | bool | None]:
    m = json.loads(metrics_file.read_text())
    router = m["average"]["router"]
    verdict = m.get("verdict") or {}
    return {"em": router["em"], "f1": router["f1"], "usd_per_question": router["usd_per_question"],
            "calls_per_question": router["calls_per_question"], "format_valid": router["format_valid"],
            "dominates_random": verdict.get("dominates_random"),
            "em_vs_random_significant": verdict.get("em_vs_random_significant"),
            "oracle_em_gap": verdict.get("oracle_em_gap")}


def _lineage(params: Params, inputs: Inputs, files: Mapping[str, str], code: dict[str, str]) -> LineageRecord:
    """The record of what `run` packages (its version id filled in last)."""
    root, pool = inputs.root, inputs.pool
    lock = _read_yaml(root / "dvc.lock")
    raw_out = next((o for o in _read_yaml(root / "data.dvc").get("outs", []) if o.get("md5")), None)
    if raw_out is None:
        raise LineageError(f"{root / 'data.dvc'}: no hashed output (run `routerops data seed`)")
    bd, vd, tr, ev = params.build_dataset, params.validate_dataset, params.train_router, params.evaluate_router
    ckpt = next((o for o in (lock.get("stages", {}).get("train_router") or {}).get("outs", [])
                 if o.get("path") == tr.checkpoint_dir), None)
    overrides_file = root / tr.checkpoint_dir / "verl" / "overrides.txt"
    verl_overrides = (tuple(overrides_file.read_text(encoding="utf-8").splitlines())
                      if tr.backend == "verl" and overrides_file.is_file() else None)
    validation = json.loads((root / vd.metrics).read_text())
    stages = {s: v for s, v in lock_stage_params(lock).items() if s != STAGE and v}
    record = LineageRecord(
        schema_version=1, version="", created_at=datetime.now(UTC).replace(microsecond=0),
        parent=_parent(root, params.package_router.model_name), remote=_remote_url(root),
        code=_code_info(root, code, inputs.allow_dirty),
        data=DataInfo(raw=ArtifactRef(path=raw_out["path"], stage=None, md5=raw_out["md5"], size=raw_out.get("size"),
                                      nfiles=raw_out.get("nfiles")),
                      dataset=lock_artifact(lock, "build_dataset", bd.out_dir),
                      validation=lock_artifact(lock, "validate_dataset", vd.out_dir),
                      validation_success=bool(validation.get("success"))),
        prices=PricesInfo(pool_sha256=_sha256(inputs.pool_file), snapshot_id=pool.snapshot_id,
                          pricing_id=pool.pricing.id, label=pool.pricing.label,
                          effective_date=pool.pricing.effective_date.isoformat(), source=pool.pricing.source,
                          usd_per_mtok={c.name: {"input": c.price.input_usd_per_mtok,
                                                 "output": c.price.output_usd_per_mtok} for c in pool}),
        config=ConfigInfo(params_sha256=_sha256(inputs.params_file), stages=stages, training_backend=tr.backend,
                          verl_overrides=verl_overrides),
        model=ModelInfo(router=lock_artifact(lock, "train_router", tr.out_dir),
                        checkpoint=None if ckpt is None else lock_artifact(lock, "train_router", tr.checkpoint_dir),
                        model_tag="", bento_tag="", package_files=dict(files)),
        evaluation=EvaluationInfo(artifact=lock_artifact(lock, "evaluate_router", ev.out_dir),
                                  metrics=_headline(root / ev.metrics)),
        environment=_environment(root))
    pp = params.package_router
    # The BentoML tags are named after the version (and outside its hash): set once it is known.
    version = version_id(record)
    return record.model_copy(update={"version": version, "model": record.model.model_copy(
        update={"model_tag": f"{pp.model_name}:{version}", "bento_tag": f"{pp.bento_name}:{version}"})})


def run(params: Params, inputs: Inputs) -> Outputs:
    root = inputs.root
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
    lineage = _lineage(params, inputs, file_hashes(files), code)
    version = lineage.version
    labels = {"version": version, "code_commit": lineage.code.commit, "code_dirty": str(lineage.code.dirty).lower(),
              "pool_snapshot": inputs.pool.snapshot_id, "pricing_id": inputs.pool.pricing.id,
              "pricing_label": inputs.pool.pricing.label, "profile": params.profile,
              "training_backend": params.train_router.backend, "dataset_md5": lineage.data.dataset.md5,
              "router_md5": lineage.model.router.md5, "evaluation_md5": lineage.evaluation.artifact.md5}
    record = PackageRecord(schema_version=SCHEMA_VERSION, version=version, model_tag=lineage.model.model_tag,
                           bento_tag=lineage.model.bento_tag, labels=labels, evaluation=lineage.evaluation.metrics,
                           files=file_hashes(files), code=code)
    files[PACKAGE_RECORD] = (record.model_dump_json(indent=2) + "\n").encode()
    return Outputs(record, lineage, files, _summary(record, lineage), runtime_env_names(params, inputs.pool))


def _build_config(root: Path) -> dict[str, Any]:
    with (root / "pyproject.toml").open("rb") as f:
        config: dict[str, Any] = tomllib.load(f)["tool"]["bentoml"]
    return config


def _summary(record: PackageRecord, lineage: LineageRecord) -> str:
    ev = record.evaluation
    lines = ["# Router package", "", "| field | value |", "|---|---|",
             f"| version | {record.version} |", f"| BentoML model | `{record.model_tag}` |",
             f"| Bento | `{record.bento_tag}` |",
             *(f"| {k} | {v} |" for k, v in record.labels.items() if k != "version"),
             f"| parent (champion when packaged) | {lineage.parent or 'none'} |",
             f"| evaluation EM / USD per question | {ev['em']:.3f} / {float(ev['usd_per_question'] or 0):.8f} |",
             f"| files / service code files | {len(record.files)} / {len(record.code)} |", "",
             f"Serve it: `routerops serve --bento {record.bento_tag}`. Its lineage: "
             f"`routerops lineage show {record.version}` once registered (`routerops lineage register`).", ""]
    return "\n".join(lines)


def _service_args(params: Params, out: Outputs) -> dict[str, Any]:
    s = params.serve
    return {"model": out.record.model_tag, "max_concurrency": s.max_concurrency, "retry_after_s": s.retry_after_s,
            "timeout_s": s.timeout_s, "auth": s.auth, "runtime_envs": list(out.runtime_envs)}


def write(out: Outputs, params: Params, root: Path, out_dir: Path) -> LineageRecord:
    """Model and Bento into BentoML's store (kept when the version is already there), then both
    exported with the records and summary into one atomically swapped directory. Returns the
    lineage record as stored (the first one written for this version: same content, its time)."""
    os.environ["BENTOML_HOME"] = str(bentoml_home(params, root))  # before bentoml reads it
    import bentoml
    from bentoml.exceptions import NotFound

    record, lineage = out.record, out.lineage
    try:
        stored = bentoml.models.get(record.model_tag)
        kept = stored.info.metadata.get("routerops_lineage")
        try:
            lineage = parse_record(kept if isinstance(kept, str) else "", f"BentoML model {record.model_tag}")
        except LineageError as exc:
            home = bentoml_home(params, root)
            raise PackageError(f"{exc}: the store holds this version without a readable lineage record (an older "
                               f"RouterOps made it); remove it with `BENTOML_HOME={home} bentoml models delete -y "
                               f"{record.model_tag}` (and its Bento) and package again") from None
    except NotFound:
        with bentoml.models.create(record.model_tag, labels=record.labels, metadata={
                "routerops_package": record.model_dump(mode="json"),
                # As JSON text: BentoML metadata holds no None, and the text is the record exactly.
                "routerops_lineage": lineage.model_dump_json()}) as model:
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
        write_text_atomic(tmp / LINEAGE_FILE, lineage.model_dump_json(indent=2) + "\n")
        (tmp / "summary.md").write_text(out.summary)
    return lineage


def main() -> None:
    root = project_root()
    params = load_params(default_params_file(root))
    try:
        out = run(params, Inputs.of_project(root, params))
    except (PackageError, LineageError, FileNotFoundError) as exc:
        sys.stderr.write(f"package_router: {exc}\n")
        raise SystemExit(1) from None
    try:
        write(out, params, root, root / params.package_router.out_dir)
    except PackageError as exc:
        sys.stderr.write(f"package_router: {exc}\n")
        raise SystemExit(1) from None
    sys.stdout.write(out.summary)


if __name__ == "__main__":
    main()
