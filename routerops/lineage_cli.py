"""`routerops lineage`: register, list, show, verify, diff, promote and archive router versions.

The registry is this repository's git tags (`routerops.registry`); the records are those tags'
messages, the package's `lineage.json` and the BentoML model's metadata; the artifacts are
fetched from the DVC remote by `verify` (`routerops.remote`). docs/lineage.md is the guide.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from routerops.champion import LocalFirstObjects
from routerops.config import Params, ParamsError, load_params
from routerops.lineage import (
    LINEAGE_FILE,
    ArtifactRef,
    Check,
    LineageError,
    LineageRecord,
    ModelFiles,
    ObjectMissing,
    RemoteUnavailable,
    diff_records,
    dvc_dir_md5,
    lock_artifact,
    md5_hex,
    parse_record,
    render_diff,
    render_html,
    render_tree,
    verify_record,
)
from routerops.paths import default_params_file, project_root
from routerops.registry import LINEAGE_FILES, Entry, Registry, RegistryError

__all__ = ["lineage_app"]

lineage_app = typer.Typer(no_args_is_help=True, help="Router versions: lineage records, the registry (git tags in "
                                                     "GTO's format) and their verification against the S3 remote.")
REF_HELP = "champion, candidate, latest, a registry version (v0.2.0) or a router version id (or 6+ digits of one)"


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _params() -> Params:
    try:
        return load_params(default_params_file())
    except ParamsError as exc:
        raise _fail(str(exc)) from None


def _registry(params: Params) -> Registry:
    return Registry(project_root(), params.package_router.model_name)


def _resolve(params: Params, ref: str) -> Entry:
    try:
        return _registry(params).resolve(ref)
    except (RegistryError, LineageError) as exc:
        raise _fail(str(exc)) from None


def _registry_view(e: Entry) -> dict[str, str]:
    return {"registry version": e.semver, "stage": e.stage or "none", "lineage commit": e.commit[:12],
            "registered": e.created_at.isoformat(timespec="seconds")}


def _dir_entries(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): md5_hex(p.read_bytes()) for p in sorted(folder.rglob("*")) if p.is_file()}


def _workspace_package(params: Params) -> tuple[LineageRecord, ArtifactRef]:
    """The record package_router wrote, and its package as dvc.lock holds it, refused unless the
    lock, params.yaml and pool.yaml still describe that package."""
    root = project_root()
    out_dir = params.package_router.out_dir
    record_file = root / out_dir / LINEAGE_FILE
    if not record_file.is_file():
        raise _fail(f"{record_file}: no lineage record; run `dvc repro package_router` (or `make demo`)")
    try:
        record = parse_record(record_file.read_bytes(), str(record_file))
        lock = yaml.safe_load((root / "dvc.lock").read_text(encoding="utf-8")) or {}
        package = lock_artifact(lock, "package_router", out_dir)
    except (LineageError, OSError) as exc:
        raise _fail(str(exc)) from None
    if dvc_dir_md5(_dir_entries(root / out_dir)) != package.md5:
        raise _fail(f"dvc.lock's {out_dir} ({package.md5}) is not the package on disk: run `dvc repro` first")
    for name, recorded in (("params.yaml", record.config.params_sha256), ("pool.yaml", record.prices.pool_sha256)):
        if hashlib.sha256((root / name).read_bytes()).hexdigest() != recorded:
            raise _fail(f"{name} changed since this version was packaged: run `dvc repro` first")
    return record, package


@lineage_app.command("register")
def register() -> None:
    """Register the version package_router wrote as a `candidate` (idempotent): a lineage commit
    pinning dvc.lock, params.yaml, pool.yaml and data.dvc, and its registry tags."""
    params = _params()
    record, package = _workspace_package(params)
    root = project_root()
    files = {f: (root / f).read_bytes() for f in LINEAGE_FILES if (root / f).is_file()}
    try:
        entry, created = _registry(params).register(record, package, files)
    except (RegistryError, LineageError) as exc:
        raise _fail(str(exc)) from None
    verb = "registered" if created else "already registered:"
    typer.echo(f"{verb} {entry.semver} = router {entry.router_version} ({entry.stage}), lineage commit "
               f"{entry.commit[:12]}, tag {entry.tag}")


def _metric(record: LineageRecord, key: str, fmt: str) -> str:
    v = record.evaluation.metrics.get(key)
    return "-" if v is None else format(float(v), fmt)


@lineage_app.command("list")
def list_versions(as_json: Annotated[bool, typer.Option("--json", help="one JSON object per version")] = False) -> None:
    """Every registered version: stage, date, EM, USD per question, pricing label."""
    params = _params()
    try:
        entries = _registry(params).entries()
    except (RegistryError, LineageError) as exc:
        raise _fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps([{"version": e.semver, "router_version": e.router_version, "stage": e.stage,
                                "registered": e.created_at.isoformat(), "commit": e.commit,
                                "metrics": e.record.evaluation.metrics, "pricing": e.record.prices.label}
                               for e in entries], indent=2))
        return
    if not entries:
        typer.echo("no registered versions (register one with `routerops lineage register`)")
        return
    typer.echo(f"{'version':<9} {'router':<17} {'stage':<10} {'registered':<11} {'EM':>6} "
               f"{'USD/question':>13}  pricing")
    for e in entries:
        typer.echo(f"{e.semver:<9} {e.router_version:<17} {e.stage or '-':<10} {e.created_at.date().isoformat():<11} "
                   f"{_metric(e.record, 'em', '.3f'):>6} {_metric(e.record, 'usd_per_question', '.8f'):>13}  "
                   f"{e.record.prices.label}")


def _service_version(url: str, api_key: str | None) -> str:
    import openai

    client = openai.OpenAI(base_url=url.rstrip("/") + "/v1", api_key=api_key or "none", max_retries=0, timeout=10)
    try:
        models = client.models.list().data
    except openai.OpenAIError as exc:
        raise _fail(f"{url}: could not ask the service which version it serves: {exc}") from None
    for m in models:
        extra = (m.model_extra or {}).get("routerops") or {}
        if extra.get("version"):
            return str(extra["version"])
    raise _fail(f"{url}: /v1/models names no RouterOps router version")


def _remote(root: Path) -> Any:
    from routerops.remote import DvcS3Remote, read_remote_config

    return DvcS3Remote(read_remote_config(root))


def _pareto(root: Path, record: LineageRecord) -> bytes | None:
    """The evaluation's Pareto plot, from the local DVC cache when its md5 matches, else the remote."""
    objects = LocalFirstObjects(root, lambda: _remote(root))

    try:
        listing = json.loads(objects.get(record.evaluation.artifact.md5))
        md5 = next(e["md5"] for e in listing if e["relpath"] == "pareto.png")
        return objects.get(md5)
    except (RemoteUnavailable, ObjectMissing, StopIteration, ValueError, KeyError):
        return None


@lineage_app.command("show")
def show(
    ref: Annotated[str | None, typer.Argument(help=f"{REF_HELP}; default: the package in the workspace")] = None,
    service: Annotated[str | None, typer.Option(help="a running service's URL: show the version it serves")] = None,
    api_key: Annotated[str | None, typer.Option(help="the service's API key (default $OPENAI_API_KEY)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="the record as JSON")] = False,
    html: Annotated[Path | None, typer.Option(help="also write a self-contained HTML lineage page here")] = None,
    markdown: Annotated[Path | None, typer.Option(help="also write the tree as a markdown file here")] = None,
) -> None:
    """The chain Bento -> model -> checkpoint -> dataset -> raw data, prices, code, config, metrics."""
    params = _params()
    root = project_root()
    entry: Entry | None = None
    if service is not None:
        served = _service_version(service, api_key or os.environ.get("OPENAI_API_KEY"))
        typer.echo(f"{service} serves router {served}")
        entry = _resolve(params, served)
        record = entry.record
    elif ref is not None:
        entry = _resolve(params, ref)
        record = entry.record
    else:
        record, _ = _workspace_package(params)
        try:
            entry = _registry(params).resolve(record.version)
        except (RegistryError, LineageError):
            entry = None  # packaged, not registered yet
    view = _registry_view(entry) if entry else None
    tree = render_tree(record, registry=view)
    if as_json:
        typer.echo(json.dumps({"registry": view, "record": record.model_dump(mode="json")}, indent=2))
    else:
        typer.echo(tree, nl=False)
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(f"# Router {record.version}: lineage\n\n```\n{tree}```\n", encoding="utf-8")
    if html is not None:
        html.parent.mkdir(parents=True, exist_ok=True)
        html.write_text(render_html(record, registry=view, pareto_png=_pareto(root, record)), encoding="utf-8")
        typer.echo(f"lineage page: {html}", err=as_json)


def _local_models(params: Params, record: LineageRecord, home: Path | None) -> list[tuple[str, ModelFiles]]:
    from routerops.packaging import bentoml_home

    store = home or bentoml_home(params, project_root())
    name, _, version = record.model.model_tag.partition(":")
    folder = store / "models" / name / version
    if not folder.is_dir():
        return []
    return [(f"BentoML store model {record.model.model_tag} ({folder})", ModelFiles.of_dir(folder))]


@lineage_app.command("verify")
def verify(
    ref: Annotated[str, typer.Argument(help=REF_HELP)],
    bentoml_home: Annotated[Path | None, typer.Option(help="also check the model in this BentoML store "
                                                           "(default: the project's)")] = None,
    keep: Annotated[Path | None, typer.Option(help="keep the fetched objects here instead of a temp dir")] = None,
) -> None:
    """Fetch every artifact the record names from the S3 remote (never the local cache), recompute
    each hash, check the BentoML model against the router weights and the commit and its dvc.lock
    against the record. One line per check; exits 1 naming every mismatch."""
    from routerops.packaging import MODEL_ARCHIVE
    from routerops.registry import GitRepo

    params = _params()
    root = project_root()
    entry = _resolve(params, ref)
    record = entry.record
    typer.echo(f"verifying {entry.semver} = router {record.version} ({entry.stage or 'no stage'})")
    started = time.perf_counter()
    try:
        store = _remote(root)
    except RemoteUnavailable as exc:
        raise _fail(str(exc)) from None
    with tempfile.TemporaryDirectory(prefix="routerops-verify-") as tmp:
        scratch = keep or Path(tmp)
        checks, fetched = verify_record(record, package=entry.package, lock_commit=entry.commit, store=store,
                                        git=GitRepo(root), scratch=scratch, model_archive=MODEL_ARCHIVE,
                                        local_models=_local_models(params, record, bentoml_home),
                                        progress=lambda c: typer.echo(c.line()))
    elapsed = time.perf_counter() - started
    total = sum(a.size or 0 for a in [*record.artifacts().values(), entry.package])
    failed: list[Check] = [c for c in checks if not c.ok]
    typer.echo(f"{len(checks)} checks, {len(failed)} failed; fetched {fetched.objects} objects, {fetched.bytes:,} "
               f"bytes (artifacts {total:,} bytes) in {elapsed:.1f} s")
    if failed:
        raise _fail(f"{entry.semver} does NOT verify: " + "; ".join(c.name for c in failed))
    typer.echo(f"{entry.semver} verifies")


@lineage_app.command("diff")
def diff(old: Annotated[str, typer.Argument(help=REF_HELP)], new: Annotated[str, typer.Argument(help=REF_HELP)],
         as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """What changed between two versions: prices, params, data, code, artifacts, environment, metrics."""
    from routerops.registry import GitRepo

    params = _params()
    a, b = _resolve(params, old), _resolve(params, new)
    git = GitRepo(project_root())
    c1, c2 = a.record.code.commit, b.record.code.commit
    both = git.commit_exists(c1) and git.commit_exists(c2)
    d = diff_records(a.record, b.record, commits=git.log(c1, c2) if both else (),
                     files_touched=git.files_touched(c1, c2) if both else ())
    typer.echo(json.dumps(d.as_json(), indent=2) if as_json else render_diff(d), nl=as_json)


@lineage_app.command("promote")
def promote(ref: Annotated[str, typer.Argument(help=REF_HELP)]) -> None:
    """Make a version the champion and archive the previous champion, atomically."""
    params = _params()
    try:
        new, old = _registry(params).promote(ref)
    except (RegistryError, LineageError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"{new.semver} (router {new.router_version}) is champion"
               + (f"; {old.semver} (router {old.router_version}) archived" if old else ""))


@lineage_app.command("archive")
def archive(ref: Annotated[str, typer.Argument(help=REF_HELP)]) -> None:
    """Archive a version (whatever its stage), atomically."""
    params = _params()
    try:
        entry = _registry(params).archive(ref)
    except (RegistryError, LineageError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"{entry.semver} (router {entry.router_version}) archived")
