"""Promotion of a price change's version: planned from the registry as it stands, refused when
the registry moved since, and one transaction when it lands."""

from __future__ import annotations

import json

import pytest

from routerops.config import load_params
from routerops.lineage import ArtifactRef
from routerops.registry import Registry, RegistryError
from stages.promote_router import Inputs, run, write

ARTIFACT = "routerops-router"
PACKAGE = ArtifactRef(path="artifacts/package", stage="package_router", md5="9" * 32 + ".dir", size=10, nfiles=3)
FILES = {"dvc.lock": b"lock\n", "params.yaml": b"params\n", "pool.yaml": b"pool\n"}


@pytest.fixture
def registry(git_repo, make_record) -> Registry:
    """v0.1.0 champion (old prices), v0.2.0 a candidate (new prices)."""
    reg = Registry(git_repo.root, ARTIFACT)
    head = git_repo("rev-parse", "HEAD").strip()
    reg.register(make_record(commit=head), PACKAGE, FILES)
    reg.register(make_record(commit=head, output_price=2.4), PACKAGE, FILES)
    reg.promote("v0.1.0")
    return reg


@pytest.fixture
def params(repo_root):
    return load_params(repo_root / "params.yaml")


@pytest.mark.parametrize(("action", "event"), [("retrain", "routerops.router.promoted"),
                                               ("reprice", "routerops.router.repriced")])
def test_the_promotion_is_planned_from_the_registry(params, registry, action, event) -> None:
    new, old = registry.resolve("v0.2.0"), registry.champion()
    out = run(params, Inputs("p2", action, new, old))
    assert (out.version, out.replaces) == (new.router_version, "v0.1.0")
    assert out.result["event"] == {
        "event": event, "resource": {"prefect.resource.id": f"routerops.router.{new.router_version}"},
        "payload": {"pricing_id": "p2", "semver": "v0.2.0", "replaced": "v0.1.0",
                    "replaced_router_version": old.router_version}}
    assert (out.result["champion"], out.result["lineage_commit"]) == ("v0.2.0", new.commit)


@pytest.mark.parametrize(("ref", "action", "error"), [
    ("v0.1.0", "retrain", r"^v0\.1\.0 \([0-9a-f]+\) is already the champion$"),
    ("v0.2.0", "superseded", r"^the plan for p2 is 'superseded': nothing to promote$"),
])
def test_what_cannot_be_promoted_is_refused(params, registry, ref, action, error) -> None:
    with pytest.raises(RegistryError, match=error):
        run(params, Inputs("p2", action, registry.resolve(ref), registry.champion()))


def test_writing_promotes_archives_and_records(params, registry, tmp_path) -> None:
    out = run(params, Inputs("p2", "retrain", registry.resolve("v0.2.0"), registry.champion()))
    write(out, registry, tmp_path)
    assert [(e.semver, e.stage) for e in registry.entries()] == [("v0.1.0", "archived"), ("v0.2.0", "champion")]
    assert json.loads((tmp_path / "promotion.json").read_text()) == out.result


def test_a_registry_that_moved_since_the_plan_is_left_alone(params, registry, git_repo, tmp_path) -> None:
    out = run(params, Inputs("p2", "retrain", registry.resolve("v0.2.0"), registry.champion()))
    registry.archive("v0.1.0")  # someone else acted in between: no champion now
    tags = git_repo.tags()
    with pytest.raises(RegistryError, match=r"^the champion is none now, v0\.1\.0 when the promotion of v0\.2\.0 "
                                            r"was planned; re-run it$"):
        write(out, registry, tmp_path)
    assert git_repo.tags() == tags and not (tmp_path / "promotion.json").exists()
