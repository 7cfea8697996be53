"""The champion as the registry holds it: its prices and its evaluation, read from its lineage.

A price change is measured against the router that is in production, not against whatever the
workspace holds: after a retrain promotes a challenger, the workspace still has the old prices,
and measuring against it would find the same change again every day. The registry's champion
pins `pool.yaml` and `dvc.lock` in its lineage commit (`routerops.registry`); the evaluation's
trajectories and kNN evidence are read by their md5 from the local DVC cache, or from the remote
when the cache lacks them (another machine, a fresh clone). With no champion registered yet, the workspace
stands in, and the state says so.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from routerops.evaluation import KNN_FILES, KnnEvidence
from routerops.lineage import LineageError, ObjectSource, digest_stream, lock_artifact
from routerops.pool import Pool, load_pool, parse_pool
from routerops.registry import GitRepo, Registry

__all__ = ["TRAJECTORIES", "ChampionState", "LocalFirstObjects", "read_champion"]

TRAJECTORIES = "trajectories.parquet"
EVAL_STAGE = "evaluate_router"


def cache_path(root: Path, md5: str) -> Path:
    """Where DVC 3 keeps an object in the project's default cache."""
    return root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


class LocalFirstObjects:
    """DVC objects from the local cache when present and intact, else from a remote, opened only
    when first needed (so a project whose cache holds everything never touches the network)."""

    def __init__(self, root: Path, remote: Callable[[], ObjectSource]) -> None:
        self.root = root
        self._open_remote = remote
        self._remote: ObjectSource | None = None

    def _cached(self, md5: str) -> Path | None:
        p = cache_path(self.root, md5)
        if not p.is_file():
            return None
        with p.open("rb") as f:
            return p if digest_stream(f).md5 == md5.removesuffix(".dir") else None

    def _store(self) -> ObjectSource:
        self._remote = self._remote or self._open_remote()
        return self._remote

    def get(self, md5: str) -> bytes:
        p = self._cached(md5)
        return p.read_bytes() if p is not None else self._store().get(md5)

    def path(self, md5: str, scratch: Path) -> Path:
        """A local file holding the object: the cache's, or a download into `scratch`."""
        p = self._cached(md5)
        if p is not None:
            return p
        target = scratch / md5
        target.parent.mkdir(parents=True, exist_ok=True)
        self._store().download(md5, target)
        return target


@dataclass(frozen=True)
class ChampionState:
    semver: str | None  # the registry's version; None when the workspace stands in
    router_version: str | None
    pool: Pool
    pool_text: str
    trajectories: Path  # the evaluation's records; its kNN evidence, when kept, lies beside

    @property
    def knn(self) -> KnnEvidence | None:
        return KnnEvidence.read(self.trajectories.parent)

    @property
    def described(self) -> str:
        if self.semver is None:
            return "the workspace (no champion registered: `routerops lineage promote` makes one)"
        return f"champion {self.semver} ({self.router_version})"


def read_champion(root: Path, artifact: str, eval_out_dir: str, scratch: Path,
                  objects: LocalFirstObjects) -> ChampionState:
    """The registry's champion's prices and evaluation; the workspace's when none is registered.
    `eval_out_dir` is params `evaluate_router.out_dir`. Errors are `LineageError` (with what to
    run) or the object source's `RemoteUnavailable`/`ObjectMissing`."""
    champion = Registry(root, artifact).champion()
    if champion is None:
        pool_file = root / "pool.yaml"
        trajectories = root / eval_out_dir / TRAJECTORIES
        if not trajectories.is_file():
            raise LineageError(f"{trajectories}: no evaluation to measure the change on; run `dvc repro "
                               f"{EVAL_STAGE}` first")
        return ChampionState(None, None, load_pool(pool_file), pool_file.read_text(encoding="utf-8"), trajectories)
    git = GitRepo(root)
    pool_bytes, lock_bytes = git.show(champion.commit, "pool.yaml"), git.show(champion.commit, "dvc.lock")
    if pool_bytes is None or lock_bytes is None:
        raise LineageError(f"champion {champion.semver}: its lineage commit {champion.commit[:12]} lacks pool.yaml "
                           "or dvc.lock")
    text = pool_bytes.decode("utf-8")
    where = f"pool.yaml at {champion.commit[:12]} (champion {champion.semver})"
    pool = parse_pool(yaml.safe_load(text), where)
    evaluation = lock_artifact(yaml.safe_load(lock_bytes), EVAL_STAGE, eval_out_dir)
    listing = {e["relpath"]: e["md5"] for e in json.loads(objects.get(evaluation.md5))}
    if TRAJECTORIES not in listing:
        raise LineageError(f"champion {champion.semver}: its evaluation {evaluation.md5} holds no {TRAJECTORIES}")
    # The files under their own names in one folder per evaluation, as `evaluate_router` wrote them.
    folder = scratch / evaluation.md5.removesuffix(".dir")
    folder.mkdir(parents=True, exist_ok=True)
    for name in (TRAJECTORIES, *KNN_FILES):
        if name in listing and not (folder / name).is_file():
            tmp = folder / f".{name}.tmp"
            shutil.copyfile(objects.path(listing[name], scratch), tmp)
            tmp.replace(folder / name)
    return ChampionState(champion.semver, champion.router_version, pool, text, folder / TRAJECTORIES)
