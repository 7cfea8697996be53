"""The registry: git tags in GTO's format, written atomically, read back by us and by GTO itself."""

from __future__ import annotations

import gto.api
import pytest

from routerops.lineage import ArtifactRef
from routerops.registry import Registry, RegistryError

ARTIFACT = "routerops-router"
PACKAGE = ArtifactRef(path="artifacts/package", stage="package_router", md5="9" * 32 + ".dir", size=10, nfiles=3)


def _files(text: str) -> dict[str, bytes]:
    return {"dvc.lock": f"lock {text}\n".encode(), "params.yaml": b"params\n", "pool.yaml": f"pool {text}\n".encode()}


@pytest.fixture
def registry(git_repo) -> Registry:
    return Registry(git_repo.root, ARTIFACT)


def _head(git_repo) -> str:
    return git_repo("rev-parse", "HEAD").strip()


def test_register_makes_a_candidate_on_its_own_lineage_commit(git_repo, registry, make_record) -> None:
    head = _head(git_repo)
    status = git_repo("status", "--porcelain")
    record = make_record(commit=head)
    entry, created = registry.register(record, PACKAGE, _files("one"))
    assert created and (entry.semver, entry.stage, entry.router_version) == ("v0.1.0", "candidate", record.version)
    assert entry.record == record and entry.package == PACKAGE
    # the lineage commit is the packaging commit plus the pinned files; no branch, index or file moved
    assert git_repo("rev-parse", f"{entry.commit}^").strip() == head
    assert git_repo("show", f"{ARTIFACT}@v0.1.0:dvc.lock") == "lock one\n"
    assert git_repo("show", f"{ARTIFACT}@v0.1.0:data.dvc") == "data.dvc v1\n"  # not pinned: as committed
    assert _head(git_repo) == head and git_repo("status", "--porcelain") == status
    assert git_repo.tags() == [f"{ARTIFACT}#candidate#1", f"{ARTIFACT}@v0.1.0"]
    # registering the same version again changes nothing
    again, created = registry.register(record, PACKAGE, _files("one"))
    assert not created and again == entry and len(git_repo.tags()) == 2


def test_two_versions_of_one_code_commit_both_register_and_gto_reads_them(git_repo, registry, make_record) -> None:
    head = _head(git_repo)
    a, _ = registry.register(make_record(commit=head), PACKAGE, _files("a"))
    b, _ = registry.register(make_record(commit=head, output_price=2.4), PACKAGE, _files("b"))
    assert (a.semver, b.semver) == ("v0.1.0", "v0.2.0") and a.commit != b.commit
    assert gto.api.show(str(git_repo.root))[ARTIFACT]["stage"] == {"candidate": "v0.2.0"}
    assert {v["version"] for v in gto.api.show(str(git_repo.root), ARTIFACT)} == {"v0.1.0", "v0.2.0"}


def test_promotion_archives_the_old_champion_and_gto_agrees(git_repo, registry, make_record) -> None:
    head = _head(git_repo)
    registry.register(make_record(commit=head), PACKAGE, _files("a"))
    registry.register(make_record(commit=head, output_price=2.4), PACKAGE, _files("b"))
    new, old = registry.promote("v0.1.0")
    assert (new.stage, old) == ("champion", None)
    new, old = registry.promote("candidate")
    assert (new.semver, new.stage) == ("v0.2.0", "champion")
    assert old is not None and (old.semver, old.stage) == ("v0.1.0", "archived")
    assert [(e.semver, e.stage) for e in registry.entries()] == [("v0.1.0", "archived"), ("v0.2.0", "champion")]
    assert registry.champion() == registry.resolve("v0.2.0") == registry.resolve(new.router_version[:8])
    shown = gto.api.show(str(git_repo.root))[ARTIFACT]["stage"]
    assert shown == {"champion": "v0.2.0", "archived": "v0.1.0"}
    # rolling back is a promotion of the archived version
    back, replaced = registry.promote("v0.1.0")
    assert (back.stage, replaced and replaced.stage) == ("champion", "archived")
    assert gto.api.show(str(git_repo.root))[ARTIFACT]["stage"] == {"champion": "v0.1.0", "archived": "v0.2.0"}


def test_archive(git_repo, registry, make_record) -> None:
    registry.register(make_record(commit=_head(git_repo)), PACKAGE, _files("a"))
    assert registry.archive("v0.1.0").stage == "archived"
    with pytest.raises(RegistryError, match=r"^v0\.1\.0 is already archived$"):
        registry.archive("v0.1.0")
    assert gto.api.show(str(git_repo.root))[ARTIFACT]["stage"] == {"archived": "v0.1.0"}


# Promoting v0.2.0 over v0.1.0 writes #5 (v0.2.0 leaves candidate), #6 (v0.2.0 champion), #7 (v0.1.0
# leaves champion) and #8 (v0.1.0 archived): fail at the first, in the middle, and at the transaction.
@pytest.mark.parametrize("step", ["object routerops-router#candidate!#5", "object routerops-router#champion!#7",
                                  "transaction"])
def test_a_promotion_failing_midway_leaves_the_registry_as_it_was(git_repo, make_record, step) -> None:
    head = _head(git_repo)
    ok = Registry(git_repo.root, ARTIFACT)
    ok.register(make_record(commit=head), PACKAGE, _files("a"))
    ok.register(make_record(commit=head, output_price=2.4), PACKAGE, _files("b"))
    ok.promote("v0.1.0")
    before_tags, before = git_repo.tags(), ok.entries()

    def fault(at: str) -> None:
        if at == step:
            raise OSError(f"injected failure at {at}")

    with pytest.raises(OSError, match="injected failure"):
        Registry(git_repo.root, ARTIFACT, fault=fault).promote("v0.2.0")
    assert git_repo.tags() == before_tags and ok.entries() == before
    assert gto.api.show(str(git_repo.root))[ARTIFACT]["stage"] == {"champion": "v0.1.0", "candidate": "v0.2.0"}
    # and the same promotion then succeeds
    assert ok.promote("v0.2.0")[0].stage == "champion"


def test_a_concurrent_writer_aborts_the_whole_transaction(git_repo, make_record) -> None:
    head = _head(git_repo)
    registry = Registry(git_repo.root, ARTIFACT)
    registry.register(make_record(commit=head), PACKAGE, _files("a"))
    registry.register(make_record(commit=head, output_price=2.4), PACKAGE, _files("b"))
    registry.promote("v0.1.0")

    def other_writer(at: str) -> None:
        # Another writer takes the last counter this promotion uses (#8) after we read the tags
        # and before we write them: git refuses the transaction, and none of our four tags appears.
        if at == "transaction":
            git_repo("tag", "-a", "-m", "someone else", f"{ARTIFACT}#archived#8", head)

    before = [*git_repo.tags(), f"{ARTIFACT}#archived#8"]
    with pytest.raises(RegistryError, match=r"^the registry changed while writing \(nothing was written; retry\)"):
        Registry(git_repo.root, ARTIFACT, fault=other_writer).promote("v0.2.0")
    assert git_repo.tags() == sorted(before)


@pytest.mark.parametrize(("ref", "error"), [
    ("v9.9.9", r"^'v9\.9\.9': no such version of routerops-router \(known: v0\.1\.0 [0-9a-f]{16}\)$"),
    ("champion", r"^no version of routerops-router is champion$"),
    ("abc", r"^'abc': no such version"),  # under 6 digits: never a prefix match
])
def test_unknown_references_are_refused(git_repo, registry, make_record, ref, error) -> None:
    registry.register(make_record(commit=_head(git_repo)), PACKAGE, _files("a"))
    with pytest.raises(RegistryError, match=error):
        registry.resolve(ref)


def test_empty_registry_and_bad_registrations(git_repo, registry, make_record) -> None:
    with pytest.raises(RegistryError, match=r"^the registry of routerops-router is empty"):
        registry.resolve("latest")
    with pytest.raises(RegistryError, match=r"^the record's code commit f{40} is not in this repository$"):
        registry.register(make_record(commit="f" * 40), PACKAGE, _files("a"))
    entry, _ = registry.register(make_record(commit=_head(git_repo)), PACKAGE, _files("a"))
    assert entry.stage == "candidate"
    registry.promote("v0.1.0")
    with pytest.raises(RegistryError, match=r"^v0\.1\.0 \(.+\) is already the champion$"):
        registry.promote("v0.1.0")
