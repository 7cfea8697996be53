"""The champion's prices and evaluation from its lineage: the pinned pool.yaml and dvc.lock, the
trajectories from the DVC cache by md5, or from the remote when the cache lacks them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from routerops.candidates.types import CallOrigin
from routerops.champion import LocalFirstObjects, cache_path, read_champion
from routerops.evaluation import KNN_FILES, Call, EvalRecord, KnnEvidence
from routerops.lineage import ArtifactRef, LineageError, ObjectMissing, dvc_dir_md5
from routerops.registry import Registry

ROOT = Path(__file__).resolve().parents[2]
ARTIFACT = "routerops-router"
PACKAGE = ArtifactRef(path="artifacts/package", stage="package_router", md5="9" * 32 + ".dir", size=10, nfiles=3)


class DictObjects:
    """A remote holding some objects in memory; counts what it served."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects, self.served = objects, 0

    def get(self, md5: str) -> bytes:
        if md5 not in self.objects:
            raise ObjectMissing(md5)
        self.served += 1
        return self.objects[md5]

    def download(self, md5: str, target: Path) -> None:
        target.write_bytes(self.get(md5))

    def url(self, md5: str) -> str:
        return f"mem://{md5}"

    def check(self) -> None: ...


def _champion_repo(git_repo, make_record, trajectories: bytes, extra: dict[str, bytes] | None = None
                   ) -> tuple[Path, dict[str, bytes]]:
    """A registry whose champion pins a lock naming an evaluation holding `trajectories` (and the
    `extra` files); returns the root and the evaluation's objects (listing and files), not yet in
    any cache."""
    files = {"trajectories.parquet": trajectories, **(extra or {})}
    md5s = {name: hashlib.md5(data, usedforsecurity=False).hexdigest() for name, data in files.items()}
    dir_md5 = dvc_dir_md5({**md5s, "summary.md": "0" * 32})
    listing = json.dumps([{"md5": "0" * 32, "relpath": "summary.md"},
                          *({"md5": m, "relpath": n} for n, m in sorted(md5s.items()))]).encode()
    lock = {"schema": "2.0", "stages": {"evaluate_router": {"outs": [{"path": "artifacts/evaluation",
                                                                          "md5": dir_md5, "nfiles": len(files) + 1}]}}}
    pool = (ROOT / "pool.yaml").read_text().replace("label: router-r1-together-list", "label: champion-prices")
    registry = Registry(git_repo.root, ARTIFACT)
    registry.register(make_record(commit=git_repo("rev-parse", "HEAD").strip()), PACKAGE,
                      {"dvc.lock": yaml.safe_dump(lock).encode(), "pool.yaml": pool.encode(), "params.yaml": b"p\n"})
    registry.promote("v0.1.0")
    return git_repo.root, {dir_md5: listing, **{md5s[n]: data for n, data in files.items()}}


def test_the_champion_is_read_from_the_local_cache(git_repo, make_record, tmp_path) -> None:
    root, objects = _champion_repo(git_repo, make_record, b"PAR1 champion's trajectories")
    for md5, data in objects.items():
        cache_path(root, md5).parent.mkdir(parents=True, exist_ok=True)
        cache_path(root, md5).write_bytes(data)
    remote = DictObjects({})
    state = read_champion(root, ARTIFACT, "artifacts/evaluation", tmp_path / "scratch",
                          LocalFirstObjects(root, lambda: remote))
    assert (state.semver, state.pool.pricing.label) == ("v0.1.0", "champion-prices")
    assert state.described == f"champion v0.1.0 ({state.router_version})"
    assert state.trajectories.read_bytes() == b"PAR1 champion's trajectories" and remote.served == 0
    # the workspace's pool.yaml is not what the champion was priced with, and is not read
    assert (root / "pool.yaml").read_text() == "pool.yaml v1\n"


def test_a_cache_without_the_objects_falls_back_to_the_remote(git_repo, make_record, tmp_path) -> None:
    root, objects = _champion_repo(git_repo, make_record, b"PAR1 from the remote")
    # a corrupt cached copy is not trusted either
    md5 = next(m for m in objects if not m.endswith(".dir"))
    cache_path(root, md5).parent.mkdir(parents=True, exist_ok=True)
    cache_path(root, md5).write_bytes(b"bit rot")
    remote = DictObjects(objects)
    state = read_champion(root, ARTIFACT, "artifacts/evaluation", tmp_path / "scratch",
                          LocalFirstObjects(root, lambda: remote))
    assert state.trajectories.read_bytes() == b"PAR1 from the remote" and remote.served == 2
    assert state.knn is None  # an evaluation from before the kNN evidence was kept


def test_the_champions_knn_evidence_comes_with_its_trajectories(git_repo, make_record, tmp_path) -> None:
    evidence = KnnEvidence(0.5, ({"Mixtral-8x22B-Instruct": EvalRecord(
        "single:Mixtral-8x22B-Instruct", "t0", "nq", "q?", ("Paris",), "Paris", True,
        (Call("Mixtral-8x22B-Instruct", CallOrigin.HTTP, 17),))},), {"q1": (0,)})
    evidence.write(tmp_path)
    extra = {name: (tmp_path / name).read_bytes() for name in KNN_FILES}
    root, objects = _champion_repo(git_repo, make_record, b"PAR1 with kNN evidence", extra)
    state = read_champion(root, ARTIFACT, "artifacts/evaluation", tmp_path / "scratch",
                          LocalFirstObjects(root, lambda: DictObjects(objects)))
    assert state.trajectories.name == "trajectories.parquet" and state.knn == evidence


def test_an_evaluation_missing_everywhere_is_an_error(git_repo, make_record, tmp_path) -> None:
    root, _ = _champion_repo(git_repo, make_record, b"PAR1")
    with pytest.raises(ObjectMissing):
        read_champion(root, ARTIFACT, "artifacts/evaluation", tmp_path / "s",
                      LocalFirstObjects(root, lambda: DictObjects({})))


def test_a_lock_without_the_evaluation_names_the_stage_to_run(git_repo, make_record, tmp_path) -> None:
    root, _ = _champion_repo(git_repo, make_record, b"PAR1")
    with pytest.raises(LineageError, match=r"^dvc\.lock: stage 'evaluate_router' has no locked output "
                                           r"'artifacts/other' \(run `dvc repro evaluate_router`\)$"):
        read_champion(root, ARTIFACT, "artifacts/other", tmp_path / "s",
                      LocalFirstObjects(root, lambda: DictObjects({})))
