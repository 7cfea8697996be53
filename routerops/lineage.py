"""Router version lineage: one record per packaged version, and what proves it.

A `LineageRecord` says, for one router version, which raw data, dataset, validation, prices, code,
config, checkpoint, weights, evaluation and environment made it, each named by the hash DVC keeps
in `dvc.lock` (an md5; `<md5>.dir` for a directory) or by a sha256 of the file. `package_router`
writes it once; it is stored three ways that must stay equal: in the BentoML model's metadata, as
`artifacts/package/lineage.json` (a DVC output, so `dvc push` puts it in the S3 remote), and in the
registry's tag message (`routerops.registry`).

This module is pure: it builds records from parsed inputs, computes the version id, diffs two
records, renders them, and verifies one against sources it is handed (`ObjectSource` for the
remote's objects, `GitView` for commits). It imports no DVC, BentoML or git code; DVC's hashing is
restated here (`dvc_dir_md5`) so that verification recomputes every hash itself instead of
trusting DVC's cache or its index.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Literal, Protocol

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = ["LINEAGE_FILE", "SCHEMA_VERSION", "ArtifactRef", "Check", "CodeInfo", "ConfigInfo", "DataInfo", "Digest",
           "EnvironmentInfo", "EvaluationInfo", "GitView", "LineageDiff", "LineageError", "LineageRecord",
           "ModelFiles", "ModelInfo", "ObjectMissing", "ObjectSource", "PricesInfo", "RemoteUnavailable",
           "diff_records", "digest_stream", "dvc_dir_md5", "flatten", "lock_artifact", "lock_stage_params", "md5_hex",
           "model_checks", "parse_record", "render_diff", "render_html", "render_tree", "verify_record", "version_id"]

SCHEMA_VERSION = 1
LINEAGE_FILE = "lineage.json"


class LineageError(ValueError):
    """A lineage input or record is missing or malformed; the message names it."""


class RemoteUnavailable(RuntimeError):
    """The object store cannot be reached (the message names the endpoint and the error)."""


class ObjectMissing(LookupError):
    """An object the record names is not in the remote (the message is its URL)."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ArtifactRef(_Frozen):
    """One DVC-tracked artifact: where it lives in the workspace and by which hash."""

    path: str  # workspace path, as in dvc.yaml / data.dvc
    stage: str | None  # the dvc.yaml stage writing it; None for data.dvc
    md5: str  # DVC's hash: "<md5>" for a file, "<md5>.dir" for a directory
    size: int | None = None
    nfiles: int | None = None


class CodeInfo(_Frozen):
    commit: str  # HEAD when packaged
    dirty: bool  # code files differed from HEAD (packaging refuses unless asked; then recorded)
    dirty_files: tuple[str, ...] = ()
    dirty_sha256: str | None = None  # over the dirty files' names and bytes
    files: dict[str, str]  # the service code the Bento carries -> sha256


class PricesInfo(_Frozen):
    pool_sha256: str
    snapshot_id: str
    pricing_id: str
    label: str
    effective_date: str
    source: str
    usd_per_mtok: dict[str, dict[str, float]]  # model -> {"input": .., "output": ..}


class ConfigInfo(_Frozen):
    params_sha256: str
    # stage -> the params.yaml values it read, exactly as dvc.lock holds them (pool.yaml's keys
    # are the prices and pool, recorded under `prices`).
    stages: dict[str, dict[str, Any]]
    training_backend: str
    verl_overrides: tuple[str, ...] | None = None  # the generated Hydra overrides (verl backend)


class DataInfo(_Frozen):
    raw: ArtifactRef
    dataset: ArtifactRef
    validation: ArtifactRef
    validation_success: bool


class ModelInfo(_Frozen):
    router: ArtifactRef
    checkpoint: ArtifactRef | None
    model_tag: str
    bento_tag: str
    package_files: dict[str, str]  # file inside the BentoML model -> sha256


class EvaluationInfo(_Frozen):
    artifact: ArtifactRef
    metrics: dict[str, float | bool | None]


class EnvironmentInfo(_Frozen):
    lock_sha256: str
    python: str
    packages: dict[str, str | None]  # distribution -> version (None: not installed)


class LineageRecord(_Frozen):
    schema_version: Literal[1]
    version: str
    created_at: datetime
    parent: str | None  # the champion it was trained to replace
    # The DVC remote the artifacts were pushed to (`s3://bucket/prefix`); each artifact's object is
    # `object_url(md5)` there. Where, not what: outside the version id.
    remote: str | None
    code: CodeInfo
    data: DataInfo
    prices: PricesInfo
    config: ConfigInfo
    model: ModelInfo
    evaluation: EvaluationInfo
    environment: EnvironmentInfo

    def object_url(self, md5: str) -> str | None:
        """The S3 object DVC stores `md5` at under the recorded remote (DVC 3's layout)."""
        return None if self.remote is None else f"{self.remote.rstrip('/')}/files/md5/{md5[:2]}/{md5[2:]}"

    def artifacts(self) -> dict[str, ArtifactRef]:
        """Every DVC artifact the record names, by role, in pipeline order."""
        out = {"raw data": self.data.raw, "dataset": self.data.dataset, "validation": self.data.validation}
        if self.model.checkpoint is not None:
            out["checkpoint"] = self.model.checkpoint
        out["router"] = self.model.router
        out["evaluation"] = self.evaluation.artifact
        return out


# What the version id leaves out: when and where it was made, not what it is made of.
_NOT_CONTENT: dict[str, Any] = {"version": True, "created_at": True, "parent": True, "remote": True,
                                "code": {"commit": True, "dirty": True, "dirty_files": True, "dirty_sha256": True},
                                "model": {"model_tag": True, "bento_tag": True}}  # the tags are named after the version


def version_id(record: LineageRecord) -> str:
    """16 hex digits over the record's content: weights, package files, code, data, prices, config,
    evaluation and environment. Not the time, the parent, the remote, the commit (code counts by
    content) or the BentoML tags (named after the version)."""
    blob = json.dumps(record.model_dump(mode="json", exclude=_NOT_CONTENT), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def parse_record(text: str | bytes, where: str) -> LineageRecord:
    try:
        return LineageRecord.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise LineageError(f"{where}: not a lineage record ({exc.error_count()} errors; first: "
                           f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']})") from None


# ---------------------------------------------------------------------------------------------
# DVC's hashes, restated
# ---------------------------------------------------------------------------------------------


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def dvc_dir_md5(entries: Mapping[str, str]) -> str:
    """DVC's hash of a directory from {relpath: md5}: the md5 of its sorted JSON listing, + ".dir"
    (dvc-data's `Tree.as_bytes`). The listing is also the `.dir` object DVC stores."""
    return md5_hex(_dir_listing(entries)) + ".dir"


def _dir_listing(entries: Mapping[str, str]) -> bytes:
    rows = [{"md5": md5, "relpath": rel} for rel, md5 in sorted(entries.items())]
    return json.dumps(rows, sort_keys=True).encode("utf-8")


def lock_artifact(lock: Mapping[str, Any], stage: str, path: str) -> ArtifactRef:
    """The out `path` of `stage` in a parsed dvc.lock."""
    for out in (lock.get("stages", {}).get(stage) or {}).get("outs", []) or []:
        if out.get("path") == path and out.get("md5"):
            return ArtifactRef(path=path, stage=stage, md5=out["md5"], size=out.get("size"), nfiles=out.get("nfiles"))
    raise LineageError(f"dvc.lock: stage {stage!r} has no locked output {path!r} (run `dvc repro {stage}`)")


def lock_stage_params(lock: Mapping[str, Any], params_file: str = "params.yaml") -> dict[str, dict[str, Any]]:
    """stage -> the values of `params_file` it read, from a parsed dvc.lock."""
    return {name: dict((st.get("params") or {}).get(params_file) or {})
            for name, st in sorted((lock.get("stages") or {}).items())}


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested params as dotted keys (lists stay values)."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


# ---------------------------------------------------------------------------------------------
# diff
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    key: str
    old: Any
    new: Any

    def line(self) -> str:
        return f"{self.key}: {_fmt(self.old)} -> {_fmt(self.new)}"


@dataclass(frozen=True)
class LineageDiff:
    """What changed from `old` to `new`, by section; an empty section means nothing changed there."""

    old: str
    new: str
    prices: tuple[Change, ...]
    params: tuple[Change, ...]
    data: tuple[Change, ...]
    code: tuple[Change, ...]
    commits: tuple[str, ...]  # `git log --oneline old..new` of the code commits
    files_touched: tuple[str, ...]
    artifacts: tuple[Change, ...]  # the weights, checkpoint and evaluation the change produced
    environment: tuple[Change, ...]
    metrics: tuple[Change, ...]

    SECTIONS = ("prices", "params", "data", "code", "artifacts", "environment", "metrics")

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"old": self.old, "new": self.new}
        for s in self.SECTIONS:
            out[s] = [{"key": c.key, "old": c.old, "new": c.new} for c in getattr(self, s)]
        out["commits"], out["files_touched"] = list(self.commits), list(self.files_touched)
        return out


def _changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[Change, ...]:
    return tuple(Change(k, old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))


def _price_table(p: PricesInfo) -> dict[str, Any]:
    out: dict[str, Any] = {f"{m}.{side}_usd_per_mtok": v for m, sides in p.usd_per_mtok.items()
                           for side, v in sides.items()}
    out.update({"pricing.label": p.label, "pricing.effective_date": p.effective_date, "pricing.source": p.source})
    return out


def _all_params(c: ConfigInfo) -> dict[str, Any]:
    """Every params.yaml key any stage read (a key read by several stages has one value)."""
    out: dict[str, Any] = {}
    for values in c.stages.values():
        out.update(flatten(values))
    out["train_router.backend(recorded)"] = c.training_backend
    if c.verl_overrides is not None:
        out["verl.overrides"] = list(c.verl_overrides)
    return out


def diff_records(old: LineageRecord, new: LineageRecord, *, commits: Sequence[str] = (),
                 files_touched: Sequence[str] = ()) -> LineageDiff:
    """`commits` and `files_touched` come from git (the caller's `GitView`); the rest from the two
    records. Identifiers that only restate a change already listed (the pool snapshot and pricing
    ids, the files' hashes) are left out so each change shows once."""
    data = _changes({k: v.md5 for k, v in (("raw", old.data.raw), ("dataset", old.data.dataset),
                                           ("validation", old.data.validation))},
                    {k: v.md5 for k, v in (("raw", new.data.raw), ("dataset", new.data.dataset),
                                           ("validation", new.data.validation))})
    code = _changes({"commit": old.code.commit, "dirty": old.code.dirty, **old.code.files},
                    {"commit": new.code.commit, "dirty": new.code.dirty, **new.code.files})

    def arts(r: LineageRecord) -> dict[str, Any]:
        return {"router": r.model.router.md5, "checkpoint": r.model.checkpoint.md5 if r.model.checkpoint else None,
                "evaluation": r.evaluation.artifact.md5}

    env = _changes({"lock_sha256": old.environment.lock_sha256, "python": old.environment.python,
                    **old.environment.packages},
                   {"lock_sha256": new.environment.lock_sha256, "python": new.environment.python,
                    **new.environment.packages})
    metrics = tuple(Change(k, old.evaluation.metrics.get(k), new.evaluation.metrics.get(k))
                    for k in sorted(set(old.evaluation.metrics) | set(new.evaluation.metrics))
                    if old.evaluation.metrics.get(k) != new.evaluation.metrics.get(k))
    return LineageDiff(old.version, new.version, _changes(_price_table(old.prices), _price_table(new.prices)),
                       _changes(_all_params(old.config), _all_params(new.config)), data, code, tuple(commits),
                       tuple(files_touched), _changes(arts(old), arts(new)), env, metrics)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, str) and len(v) > 40:
        return v[:16] + "..."
    return json.dumps(v) if not isinstance(v, str) else v


def _delta(c: Change) -> str:
    if isinstance(c.old, int | float) and isinstance(c.new, int | float) and not isinstance(c.old, bool) \
            and not isinstance(c.new, bool):
        return f"  ({c.new - c.old:+.6g})"
    return ""


def render_diff(d: LineageDiff) -> str:
    lines = [f"diff {d.old} -> {d.new}"]
    for section in d.SECTIONS:
        changes: tuple[Change, ...] = getattr(d, section)
        extra = section == "code" and (d.commits or d.files_touched)
        if not changes and not extra:
            lines.append(f"{section}: unchanged")
            continue
        lines.append(f"{section}:")
        lines += [f"  {c.line()}{_delta(c) if section == 'metrics' else ''}" for c in changes]
        if section == "code":
            lines += [f"  commit {c}" for c in d.commits] + [f"  touched {f}" for f in d.files_touched]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# the chain, as a tree
# ---------------------------------------------------------------------------------------------


def _art(a: ArtifactRef) -> str:
    size = f", {a.size:,} bytes" if a.size is not None else ""
    files = f", {a.nfiles} files" if a.nfiles else ""
    return f"{a.path}  md5 {a.md5}{size}{files}"


def render_tree(record: LineageRecord, *, registry: Mapping[str, str] | None = None,
                object_url: Callable[[str], str | None] | None = None) -> str:
    """The chain Bento -> model -> checkpoint -> dataset -> raw data, then prices, code, config and
    metrics. `registry` adds the registry's view (version, stage, commit); each artifact's S3 object
    is `object_url(md5)`, by default under the recorded remote."""
    url = object_url or record.object_url

    def where(a: ArtifactRef) -> str:
        at = url(a.md5)
        return f"\n{pad}    at {at}" if at else ""

    r, m = record, record.model
    lines = [f"router {r.version}  created {r.created_at.isoformat(timespec='seconds')}"
             + (f"  parent {r.parent}" if r.parent else "")]
    lines.append("registry: " + (", ".join(f"{k} {v}" for k, v in registry.items()) if registry
                                 else "not registered (`routerops lineage register`)"))
    pad = ""
    lines.append(f"Bento {m.bento_tag}")
    pad = "  "
    lines.append(f"{pad}└─ BentoML model {m.model_tag}  ({len(m.package_files)} files)")
    pad = "     "
    lines.append(f"{pad}├─ router weights {_art(m.router)}{where(m.router)}")
    if m.checkpoint is not None:
        lines.append(f"{pad}├─ checkpoint {_art(m.checkpoint)}{where(m.checkpoint)}")
    lines.append(f"{pad}├─ evaluation {_art(r.evaluation.artifact)}{where(r.evaluation.artifact)}")
    lines.append(f"{pad}├─ validation {_art(r.data.validation)} (success: {r.data.validation_success})"
                 f"{where(r.data.validation)}")
    lines.append(f"{pad}├─ dataset {_art(r.data.dataset)}{where(r.data.dataset)}")
    lines.append(f"{pad}└─ raw data {_art(r.data.raw)}{where(r.data.raw)}")
    p = r.prices
    lines += ["prices", f"  {p.label} (effective {p.effective_date}, source {p.source})",
              f"  pricing {p.pricing_id}  pool snapshot {p.snapshot_id}  pool.yaml sha256 {p.pool_sha256[:16]}"]
    lines += [f"  {name:<26} in {sides['input']:>7.3f}  out {sides['output']:>7.3f}  USD/1M tokens"
              for name, sides in p.usd_per_mtok.items()]
    c = r.code
    lines += ["code", f"  commit {c.commit}" + ("  DIRTY: " + ", ".join(c.dirty_files) if c.dirty else "  (clean)"),
              f"  {len(c.files)} service code files hashed"]
    cfg = r.config
    lines += ["config", f"  backend {cfg.training_backend}  params.yaml sha256 {cfg.params_sha256[:16]}"]
    lines += [f"  {stage}: {len(flatten(values))} params" for stage, values in cfg.stages.items()]
    if cfg.verl_overrides is not None:
        lines.append(f"  verl overrides: {len(cfg.verl_overrides)}")
    lines.append("metrics")
    lines += [f"  {k}: {_fmt(v)}" for k, v in r.evaluation.metrics.items()]
    e = r.environment
    lines += ["environment", f"  python {e.python}  lock sha256 {e.lock_sha256[:16]}",
              "  " + "  ".join(f"{k} {v or '-'}" for k, v in e.packages.items())]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# verification
# ---------------------------------------------------------------------------------------------


class ObjectSource(Protocol):
    """A DVC remote's content-addressed objects."""

    def get(self, md5: str) -> bytes:
        """A small object's bytes (a directory listing); `ObjectMissing` when absent,
        `RemoteUnavailable` when the remote cannot be reached."""
        ...

    def download(self, md5: str, target: Path) -> None:
        """Stream the object into `target` (files may be gigabytes: a GPU checkpoint); same errors."""
        ...

    def url(self, md5: str) -> str: ...

    def check(self) -> None:
        """Raise `RemoteUnavailable` unless the remote answers."""
        ...


class GitView(Protocol):
    def commit_exists(self, commit: str) -> bool: ...

    def show(self, commit: str, path: str) -> bytes | None:
        """The file at that commit, None when absent."""
        ...


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.name}: {self.detail}"


@dataclass(frozen=True)
class Digest:
    md5: str
    sha256: str
    size: int


def digest_stream(stream: IO[bytes]) -> Digest:
    """md5 (DVC's) and sha256 (ours) of a stream, read in 1 MiB chunks."""
    md5, sha, size = hashlib.md5(usedforsecurity=False), hashlib.sha256(), 0
    for chunk in iter(lambda: stream.read(1 << 20), b""):
        md5.update(chunk)
        sha.update(chunk)
        size += len(chunk)
    return Digest(md5.hexdigest(), sha.hexdigest(), size)


@dataclass
class Fetched:
    """What verification fetched: per artifact role, each file's scratch path and digest."""

    files: dict[str, dict[str, tuple[Path, Digest]]] = field(default_factory=dict)
    bytes: int = 0
    objects: int = 0


def _fetch_artifact(store: ObjectSource, role: str, a: ArtifactRef, scratch: Path,
                    fetched: Fetched) -> Iterator[Check]:
    """Fetch one artifact's objects into `scratch` and recompute every hash."""
    def download(md5: str) -> tuple[Path, Digest]:
        target = scratch / md5[:2] / md5[2:]
        target.parent.mkdir(parents=True, exist_ok=True)
        store.download(md5, target)
        with target.open("rb") as f:
            d = digest_stream(f)
        fetched.bytes += d.size
        fetched.objects += 1
        return target, d

    name = f"{role} ({a.path})"
    try:
        if not a.md5.endswith(".dir"):
            path, d = download(a.md5)
            if d.md5 != a.md5:
                yield Check(name, False, f"object {store.url(a.md5)} has md5 {d.md5}, record says {a.md5}")
                return
            fetched.files[role] = {Path(a.path).name: (path, d)}
            yield Check(name, True, f"1 file, {d.size:,} bytes, md5 {a.md5}")
            return
        listing = store.get(a.md5)
        fetched.bytes += len(listing)
        fetched.objects += 1
        if md5_hex(listing) != a.md5.removesuffix(".dir"):
            yield Check(name, False, f"directory listing {store.url(a.md5)} has md5 {md5_hex(listing)}, record says "
                                     f"{a.md5}")
            return
        try:
            entries = {e["relpath"]: e["md5"] for e in json.loads(listing)}
        except (ValueError, KeyError, TypeError):
            yield Check(name, False, f"directory listing {store.url(a.md5)} is not DVC's JSON listing")
            return
        files: dict[str, tuple[Path, Digest]] = {}
        bad: list[str] = []
        for rel, md5 in sorted(entries.items()):
            try:
                files[rel] = download(md5)
            except ObjectMissing as exc:
                bad.append(f"{rel} missing at {exc}")
                continue
            if files[rel][1].md5 != md5:
                bad.append(f"{rel} at {store.url(md5)} has md5 {files[rel][1].md5}, listing says {md5}")
        if bad:
            yield Check(name, False, "; ".join(bad))
            return
        if dvc_dir_md5({rel: d.md5 for rel, (_, d) in files.items()}) != a.md5:
            yield Check(name, False, "recomputed directory hash differs from the record")
            return
        fetched.files[role] = files
        yield Check(name, True, f"{len(files)} files, {sum(d.size for _, d in files.values()):,} bytes, md5 {a.md5}")
    except ObjectMissing as exc:
        yield Check(name, False, f"missing from the remote: {exc}")


def _lock_checks(record: LineageRecord, lock_commit: str, package: ArtifactRef, git: GitView) -> Iterator[Check]:
    raw_lock = git.show(lock_commit, "dvc.lock")
    if raw_lock is None:
        yield Check("dvc.lock", False, f"no dvc.lock at commit {lock_commit}")
        return
    lock = yaml.safe_load(raw_lock) or {}
    bad: list[str] = []
    for role, a in {**record.artifacts(), "package": package}.items():
        if a.stage is None:
            continue
        try:
            locked = lock_artifact(lock, a.stage, a.path).md5
        except LineageError:
            locked = "absent"
        if locked != a.md5:
            bad.append(f"{role} {a.path}: lock has {locked}, record has {a.md5}")
    stage_params = lock_stage_params(lock)
    for stage, values in record.config.stages.items():
        if stage_params.get(stage) != values:
            bad.append(f"params of stage {stage} differ from the record")
    raw_dvc = git.show(lock_commit, "data.dvc")
    raw = yaml.safe_load(raw_dvc) if raw_dvc else {}
    raw_md5 = next((o.get("md5") for o in (raw or {}).get("outs", []) if o.get("path") == record.data.raw.path), None)
    if raw_md5 != record.data.raw.md5:
        bad.append(f"data.dvc: {raw_md5}, record has {record.data.raw.md5}")
    pool = git.show(lock_commit, "pool.yaml")
    if pool is None or hashlib.sha256(pool).hexdigest() != record.prices.pool_sha256:
        bad.append("pool.yaml differs from the record's")
    params = git.show(lock_commit, "params.yaml")
    if params is None or hashlib.sha256(params).hexdigest() != record.config.params_sha256:
        bad.append("params.yaml differs from the record's")
    if bad:
        yield Check("dvc.lock at registry commit", False, f"{lock_commit[:12]}: " + "; ".join(bad))
    else:
        yield Check("dvc.lock at registry commit", True,
                    f"{lock_commit[:12]}: every locked hash, stage params, data.dvc, pool.yaml and params.yaml agree")


def _code_checks(record: LineageRecord, git: GitView) -> Iterator[Check]:
    c = record.code
    if not git.commit_exists(c.commit):
        yield Check("code commit", False, f"{c.commit} does not exist in this repository")
        return
    differ = [rel for rel, digest in sorted(c.files.items()) if ":" not in rel
              and hashlib.sha256(git.show(c.commit, rel) or b"").hexdigest() != digest]
    if differ:
        note = " (packaged from a dirty tree, as recorded)" if c.dirty else ""
        yield Check("code commit", False, f"{c.commit[:12]}: {len(differ)} service code file(s) differ from the "
                                          f"commit{note}: {', '.join(differ)}")
    else:
        yield Check("code commit", True, f"{c.commit[:12]} exists; {len(c.files)} service code files match it")


@dataclass(frozen=True)
class ModelFiles:
    """A BentoML model's directory as verification sees it: its `model.yaml` and each file's digest."""

    model_yaml: bytes
    files: dict[str, Digest]

    @classmethod
    def of_dir(cls, folder: Path) -> ModelFiles:
        files = {}
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                with p.open("rb") as f:
                    files[p.relative_to(folder).as_posix()] = digest_stream(f)
        yaml_file = folder / "model.yaml"
        return cls(yaml_file.read_bytes() if yaml_file.is_file() else b"", files)

    @classmethod
    def of_archive(cls, archive: Path) -> ModelFiles:
        """An exported model (`bentoml models export`: a tar, xz-compressed, of the model's directory)."""
        files, model_yaml = {}, b""
        with tarfile.open(archive) as tar:
            for m in tar:
                f = tar.extractfile(m) if m.isfile() else None
                if f is None:
                    continue
                name = m.name.removeprefix("./")
                if name == "model.yaml":
                    model_yaml = f.read()
                    files[name] = digest_stream(io.BytesIO(model_yaml))
                else:
                    files[name] = digest_stream(f)
        return cls(model_yaml, files)


def model_checks(record: LineageRecord, model: ModelFiles, router: Mapping[str, tuple[Path, Digest]] | None,
                 what: str) -> Iterator[Check]:
    """A BentoML model: its metadata holds this record, its package files have the recorded
    hashes, and its `router/` files are the router artifact's, file for file."""
    meta = yaml.safe_load(model.model_yaml or b"") or {}
    stored = (meta.get("metadata") or {}).get("routerops_lineage")
    if not isinstance(stored, str):
        yield Check(f"{what} metadata", False, "model.yaml has no routerops_lineage metadata")
    else:
        try:
            same = parse_record(stored, what) == record
        except LineageError:
            same = False
        yield Check(f"{what} metadata", same, "equals the registry's record" if same
                    else "differs from the registry's record")
    missing = Digest("", "", 0)
    bad = [rel for rel, digest in sorted(record.model.package_files.items())
           if model.files.get(rel, missing).sha256 != digest]
    yield Check(f"{what} files", not bad, f"{len(record.model.package_files)} files match their recorded sha256"
                if not bad else "differ from the record: " + ", ".join(bad))
    if router is None:
        return
    prefix = "router/"
    in_model = {rel.removeprefix(prefix): d.md5 for rel, d in model.files.items() if rel.startswith(prefix)}
    artifact = {rel: d.md5 for rel, (_, d) in router.items() if rel != "_COMPLETE"}  # the stage's marker stays out
    differ = sorted(rel for rel in set(in_model) | set(artifact) if in_model.get(rel) != artifact.get(rel))
    yield Check(f"{what} weights", not differ, f"{len(artifact)} router files equal the router artifact's"
                if not differ else "differ from the router artifact: " + ", ".join(differ))


def verify_record(record: LineageRecord, *, package: ArtifactRef, lock_commit: str, store: ObjectSource,
                  git: GitView, scratch: Path, model_archive: str, lineage_file: str = LINEAGE_FILE,
                  local_models: Iterable[tuple[str, ModelFiles]] = (),
                  progress: Callable[[Check], None] | None = None) -> tuple[list[Check], Fetched]:
    """Every check of `record` (the registry's copy), in order; it verifies when all pass. Git
    first, then the remote (reachability before any object, so a dead store fails in seconds), then
    each artifact fetched into `scratch` and re-hashed, then the package's own copies of the record:
    its lineage.json and the BentoML model's metadata, which must equal the registry's.
    `local_models` are BentoML models found in local stores (label, files), checked the same way."""
    checks: list[Check] = []
    fetched = Fetched()

    def add(c: Check) -> None:
        checks.append(c)
        if progress is not None:
            progress(c)

    add(Check("version id", version_id(record) == record.version, f"recomputed {version_id(record)}"))
    for c in _code_checks(record, git):
        add(c)
    for c in _lock_checks(record, lock_commit, package, git):
        add(c)
    try:
        store.check()
    except RemoteUnavailable as exc:
        add(Check("S3 remote", False, str(exc)))
        return checks, fetched
    try:
        for role, a in {**record.artifacts(), "package": package}.items():
            for c in _fetch_artifact(store, role, a, scratch, fetched):
                add(c)
    except RemoteUnavailable as exc:  # went away midway
        add(Check("S3 remote", False, str(exc)))
        return checks, fetched
    pkg = fetched.files.get("package")
    if pkg is not None:
        stored = pkg.get(lineage_file)
        same = stored is not None and parse_record(stored[0].read_bytes(), lineage_file) == record
        add(Check(f"package {lineage_file}", same, "equals the registry's record" if same
                  else "differs from the registry's record"))
        archive = pkg.get(model_archive)
        if archive is None:
            add(Check("BentoML model archive", False, f"{model_archive} is not in the package"))
        else:
            try:
                model = ModelFiles.of_archive(archive[0])
            except tarfile.TarError as exc:
                add(Check("BentoML model archive", False, f"{model_archive}: not a readable archive ({exc})"))
            else:
                for c in model_checks(record, model, fetched.files.get("router"), f"model archive {model_archive}"):
                    add(c)
    for label, files in local_models:
        for c in model_checks(record, files, fetched.files.get("router"), label):
            add(c)
    return checks, fetched


# ---------------------------------------------------------------------------------------------
# the lineage page
# ---------------------------------------------------------------------------------------------


def render_html(record: LineageRecord, *, registry: Mapping[str, str] | None = None,
                pareto_png: bytes | None = None) -> str:
    """A self-contained page (no external asset): the chain, prices, config, metrics and, when
    given, the Pareto plot of this version's evaluation embedded as a data URI."""
    import base64
    import html

    def esc(v: Any) -> str:
        return html.escape(str(v))

    def table(head: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
        th = "".join(f"<th>{esc(h)}</th>" for h in head)
        body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
        return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"

    r, m = record, record.model
    chain = [("Bento", m.bento_tag, "", ""), ("BentoML model", m.model_tag, f"{len(m.package_files)} files", "")]
    for role, a in r.artifacts().items():
        chain.append((role, a.path, a.md5, record.object_url(a.md5) or ""))
    prices = [(name, f"{s['input']:.3f}", f"{s['output']:.3f}") for name, s in r.prices.usd_per_mtok.items()]
    metrics = [(k, _fmt(v)) for k, v in r.evaluation.metrics.items()]
    params = [(stage, k, json.dumps(v)) for stage, values in r.config.stages.items()
              for k, v in flatten(values).items()]
    env = [("python", r.environment.python), ("lock file sha256", r.environment.lock_sha256),
           *((k, v or "not installed") for k, v in r.environment.packages.items())]
    plot = (f'<img alt="EM against USD per question" src="data:image/png;base64,'
            f'{base64.b64encode(pareto_png).decode()}">' if pareto_png else "<p>(no Pareto plot available)</p>")
    reg = "".join(f"<li>{esc(k)}: {esc(v)}</li>" for k, v in (registry or {}).items())
    code = r.code
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>router {esc(r.version)}: lineage</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; color: #222; }}
table {{ border-collapse: collapse; margin: .5rem 0 1.5rem; }}
td, th {{ border: 1px solid #ccc; padding: .25rem .6rem; text-align: left; font-size: .9rem; }}
th {{ background: #f3f3f3; }} code, td:nth-child(3) {{ font-family: ui-monospace, monospace; }}
img {{ max-width: 100%; border: 1px solid #ddd; }}
</style></head><body>
<h1>Router {esc(r.version)}</h1>
<ul><li>created {esc(r.created_at.isoformat())}</li><li>parent: {esc(r.parent or "none")}</li>{reg}
<li>code: commit <code>{esc(code.commit)}</code>{" (DIRTY: " + esc(", ".join(code.dirty_files)) + ")" if code.dirty
                                                      else " (clean)"}</li>
<li>prices: {esc(r.prices.label)} (effective {esc(r.prices.effective_date)}, source {esc(r.prices.source)},
pricing id <code>{esc(r.prices.pricing_id)}</code>)</li></ul>
<h2>Chain</h2>{table(("what", "name", "hash", "object"), chain)}
<h2>Evaluation</h2>{table(("metric", "value"), metrics)}{plot}
<h2>Prices (USD per 1M tokens)</h2>{table(("model", "input", "output"), prices)}
<h2>Config (params each stage read)</h2><p>training backend: {esc(r.config.training_backend)}</p>
{table(("stage", "key", "value"), params)}
<h2>Environment</h2>{table(("what", "version"), env)}
</body></html>
"""
