"""The router registry: versions and stages as git tags in GTO's format.

GTO (installed with DVC) keeps a model registry in git tags; we write the same tags, so `gto show`
and `gto history` read this registry, but we write them ourselves because a promotion is several
tags (the new champion assigned, the old one unassigned and archived) and GTO writes one tag per
command: a failure between two of them would leave two champions or none. Here every change is
one `git update-ref --stdin` transaction: all of its tags appear, or none (git locks every ref
first and a `create` of a ref that already exists aborts the whole transaction, which also
catches a concurrent writer).

Tags, with `routerops-router` the artifact (`package_router.model_name`):

    routerops-router@v0.3.0            registration: points at the version's lineage commit; its
                                       message holds the lineage record and the package's hash
    routerops-router#champion#7        stage assignment (GTO's counter, one sequence per artifact)
    routerops-router#candidate!#8      stage unassignment

A lineage commit is the packaging commit plus the files that pin the version (dvc.lock,
params.yaml, pool.yaml, data.dvc) as they were when it was registered: `git show
routerops-router@v0.3.0:dvc.lock` is that version's lock, whatever the branch has since. It is
made with `git commit-tree`, so no branch, index or working tree changes, and the tag keeps it
reachable (`git push origin --tags` carries it). GTO allows one version per commit; each version
has its own lineage commit, so two versions packaged at the same code commit can both register.

Each version holds one stage at a time (`candidate` on registration, `champion`, `archived`).
Tag times are strictly increasing per artifact (a second later than the newest tag if the clock
has not moved on), because GTO orders events by tag time, which git keeps in whole seconds.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from routerops.lineage import ArtifactRef, LineageError, LineageRecord, parse_record

__all__ = ["LINEAGE_FILES", "STAGES", "Entry", "GitRepo", "Registry", "RegistryError"]

STAGES = ("candidate", "champion", "archived")
# The files that pin a version's lineage; copied into its lineage commit as they are at registration.
LINEAGE_FILES = ("dvc.lock", "params.yaml", "pool.yaml", "data.dvc")
MESSAGE_MARKER = "routerops-lineage-v1"
_SEMVER = re.compile(r"^v(\d+)\.(\d+)\.(\d+)$")
_FALLBACK_IDENT = ("RouterOps registry", "registry@routerops.invalid")


class RegistryError(RuntimeError):
    """A registry operation was refused or failed; the registry is as it was before it."""


class GitRepo:
    """The few git plumbing commands the registry and lineage verification use (`lineage.GitView`)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def run(self, *args: str, input: bytes | None = None, env: Mapping[str, str] | None = None,
            check: bool = True) -> str:
        proc = subprocess.run(["git", *args], cwd=self.root, input=input, capture_output=True, timeout=60,
                              env={**os.environ, **(env or {})})
        if check and proc.returncode != 0:
            raise RegistryError(f"git {' '.join(args[:3])} failed: {proc.stderr.decode(errors='replace').strip()}")
        return proc.stdout.decode(errors="replace")

    def commit_exists(self, commit: str) -> bool:
        return bool(commit) and subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=self.root,
                                               capture_output=True, timeout=30).returncode == 0

    def show(self, commit: str, path: str) -> bytes | None:
        proc = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=self.root, capture_output=True, timeout=60)
        return proc.stdout if proc.returncode == 0 else None

    def head(self) -> str | None:
        out = self.run("rev-parse", "--verify", "-q", "HEAD", check=False).strip()
        return out or None

    def dirty(self, paths: Sequence[str]) -> tuple[str, ...]:
        """Files under `paths` that differ from HEAD or are untracked (ignored files excluded)."""
        out = self.run("status", "--porcelain=v1", "-z", "--untracked-files=all", "--", *paths)
        return tuple(sorted(e[3:] for e in out.split("\0") if len(e) > 3))

    def log(self, old: str, new: str) -> tuple[str, ...]:
        if old == new:
            return ()
        return tuple(line for line in self.run("log", "--oneline", f"{old}..{new}").splitlines() if line)

    def files_touched(self, old: str, new: str) -> tuple[str, ...]:
        if old == new:
            return ()
        return tuple(line for line in self.run("diff", "--name-only", old, new).splitlines() if line)

    def identity(self) -> tuple[str, str]:
        """Who writes: git's configured user, else a fixed registry identity (CI has none)."""
        name = os.environ.get("GIT_COMMITTER_NAME") or self.run("config", "user.name", check=False).strip()
        email = os.environ.get("GIT_COMMITTER_EMAIL") or self.run("config", "user.email", check=False).strip()
        return (name, email) if name and email else _FALLBACK_IDENT


@dataclass(frozen=True)
class Entry:
    """One registered version as the tags say."""

    semver: str
    router_version: str
    commit: str  # the lineage commit
    created_at: datetime
    stage: str | None
    package: ArtifactRef  # artifacts/package as locked at registration
    record: LineageRecord
    tag: str


@dataclass(frozen=True)
class _Tag:
    name: str
    target: str  # commit
    time: int  # unix seconds
    message: str


@dataclass(frozen=True)
class _NewTag:
    name: str
    target: str
    message: str


def _semver_key(v: str) -> tuple[int, int, int]:
    m = _SEMVER.match(v)
    return (int(m[1]), int(m[2]), int(m[3])) if m else (-1, -1, -1)


class Registry:
    """Read and change the registry of one artifact in one git repository."""

    def __init__(self, root: Path, artifact: str, *, fault: Callable[[str], None] | None = None) -> None:
        self.git = GitRepo(root)
        self.artifact = artifact
        # Called before each write step with its name ("object <tag>", "transaction"); tests inject
        # failures through it to prove the atomicity.
        self._fault = fault or (lambda step: None)
        self._tag_re = re.compile(rf"^{re.escape(artifact)}(?:@(?P<version>v\d+\.\d+\.\d+)|#(?P<stage>[a-z0-9-]+)"
                                  rf"(?P<cancel>!?))(?:#(?P<counter>\d+))?$")

    # -- reading ---------------------------------------------------------------------------------

    def _tags(self) -> list[_Tag]:
        fmt = "%(refname:strip=2)%00%(objecttype)%00%(*objectname)%00%(taggerdate:unix)%00%(contents)%00%01"
        out = self.git.run("for-each-ref", f"--format={fmt}", f"refs/tags/{self.artifact}*")
        tags = []
        for rec in out.split("\x01"):
            parts = rec.lstrip("\n").split("\0")
            if len(parts) < 5 or parts[1] != "tag" or not self._tag_re.match(parts[0]):
                continue  # GTO also ignores lightweight tags
            tags.append(_Tag(parts[0], parts[2], int(parts[3] or 0), parts[4]))
        return sorted(tags, key=lambda t: (t.time, self._counter(t.name)))

    def _counter(self, name: str) -> int:
        m = self._tag_re.match(name)
        return int(m["counter"]) if m and m["counter"] else 0

    def entries(self) -> list[Entry]:
        """Every registered version, oldest semver first."""
        tags = self._tags()
        registered: dict[str, tuple[_Tag, str]] = {}  # commit -> (registration tag, semver)
        for t in tags:
            m = self._tag_re.match(t.name)
            if m and m["version"]:
                registered[t.target] = (t, m["version"])
        stages: dict[str, list[str]] = {}  # commit -> active stages, oldest assignment first
        for t in tags:
            m = self._tag_re.match(t.name)
            if not m or not m["stage"] or t.target not in registered:
                continue
            active = stages.setdefault(t.target, [])
            if m["stage"] in active:
                active.remove(m["stage"])
            if not m["cancel"]:
                active.append(m["stage"])
        out = []
        for commit, (t, semver) in registered.items():
            record, package = _parse_message(t.message, t.name)
            active = stages.get(commit, [])
            out.append(Entry(semver, record.version, commit, datetime.fromtimestamp(t.time, UTC),
                             active[-1] if active else None, package, record, t.name))
        return sorted(out, key=lambda e: _semver_key(e.semver))

    def resolve(self, ref: str) -> Entry:
        """`champion`, `candidate` (the newest), `latest`, a semver (`v0.2.0`) or a router version
        id (or a unique prefix of one, at least 6 hex digits)."""
        entries = self.entries()
        if not entries:
            raise RegistryError(f"the registry of {self.artifact} is empty (no {self.artifact}@v* tags); register a "
                                "version with `routerops lineage register`")
        if ref == "latest":
            return entries[-1]
        if ref in STAGES:
            in_stage = [e for e in entries if e.stage == ref]
            if not in_stage:
                raise RegistryError(f"no version of {self.artifact} is {ref}")
            return in_stage[-1]
        found = [e for e in entries if e.semver == ref or e.router_version == ref
                 or (len(ref) >= 6 and e.router_version.startswith(ref))]
        if len(found) == 1:
            return found[0]
        if not found:
            raise RegistryError(f"{ref!r}: no such version of {self.artifact} (known: "
                                + ", ".join(f"{e.semver} {e.router_version}" for e in entries) + ")")
        raise RegistryError(f"{ref!r} matches {len(found)} versions; give more digits")

    def champion(self) -> Entry | None:
        champs = [e for e in self.entries() if e.stage == "champion"]
        return champs[-1] if champs else None

    # -- writing ---------------------------------------------------------------------------------

    def register(self, record: LineageRecord, package: ArtifactRef, files: Mapping[str, bytes]) -> tuple[Entry, bool]:
        """Register `record` as a `candidate` (False when it was registered already). `files` are
        the lineage files to pin (`LINEAGE_FILES` as they are now)."""
        for e in self.entries():
            if e.router_version == record.version:
                return e, False
        base = record.code.commit
        if not self.git.commit_exists(base):
            raise RegistryError(f"the record's code commit {base} is not in this repository")
        entries = self.entries()
        semver = "v0.1.0"
        if entries:
            major, minor, _ = _semver_key(entries[-1].semver)
            semver = f"v{major}.{minor + 1}.0"
        commit = self._lineage_commit(base, files, f"{self.artifact} {semver}: router {record.version}\n\n"
                                                   f"Pins {', '.join(sorted(files))} of this version (lineage).")
        message = _message(self.artifact, semver, record, package)
        counter = self._next_counter()
        self._apply([_NewTag(f"{self.artifact}@{semver}", commit, message),
                     _NewTag(f"{self.artifact}#candidate#{counter}", commit, f"{semver} registered as candidate")])
        return self.resolve(semver), True

    def promote(self, ref: str) -> tuple[Entry, Entry | None]:
        """Make `ref` the champion and archive the previous one, in one transaction."""
        new = self.resolve(ref)
        if new.stage == "champion":
            raise RegistryError(f"{new.semver} ({new.router_version}) is already the champion")
        old = self.champion()
        n = self._next_counter()
        tags: list[_NewTag] = []
        if new.stage is not None:
            tags.append(_NewTag(f"{self.artifact}#{new.stage}!#{n}", new.commit, f"{new.semver} leaves {new.stage}"))
            n += 1
        tags.append(_NewTag(f"{self.artifact}#champion#{n}", new.commit, f"{new.semver} promoted to champion"
                            + (f", replacing {old.semver}" if old else "")))
        n += 1
        if old is not None:
            tags += [_NewTag(f"{self.artifact}#champion!#{n}", old.commit, f"{old.semver} replaced by {new.semver}"),
                     _NewTag(f"{self.artifact}#archived#{n + 1}", old.commit, f"{old.semver} archived")]
        self._apply(tags)
        return self.resolve(new.semver), None if old is None else self.resolve(old.semver)

    def archive(self, ref: str) -> Entry:
        entry = self.resolve(ref)
        if entry.stage == "archived":
            raise RegistryError(f"{entry.semver} is already archived")
        n = self._next_counter()
        tags = [] if entry.stage is None else [
            _NewTag(f"{self.artifact}#{entry.stage}!#{n}", entry.commit, f"{entry.semver} leaves {entry.stage}")]
        tags.append(_NewTag(f"{self.artifact}#archived#{n + len(tags)}", entry.commit, f"{entry.semver} archived"))
        self._apply(tags)
        return self.resolve(entry.semver)

    def _next_counter(self) -> int:
        return max((self._counter(t.name) for t in self._tags()), default=0) + 1

    def _lineage_commit(self, base: str, files: Mapping[str, bytes], message: str) -> str:
        name, email = self.git.identity()
        ident = {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email, "GIT_COMMITTER_NAME": name,
                 "GIT_COMMITTER_EMAIL": email}
        with tempfile.TemporaryDirectory(prefix="routerops-index-") as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index"), **ident}
            self.git.run("read-tree", base, env=env)
            for rel, data in sorted(files.items()):
                blob = self.git.run("hash-object", "-w", "--stdin", input=data).strip()
                self.git.run("update-index", "--add", "--cacheinfo", f"100644,{blob},{rel}", env=env)
            tree = self.git.run("write-tree", env=env).strip()
        return self.git.run("commit-tree", tree, "-p", base, "-m", message, env=ident).strip()

    def _apply(self, tags: Sequence[_NewTag]) -> None:
        """Tag objects first (unreferenced until the transaction; harmless if it never runs), then
        every ref in one transaction."""
        name, email = self.git.identity()
        last = max((t.time for t in self._tags()), default=0)
        objects: list[tuple[str, str]] = []
        for t in tags:
            self._fault(f"object {t.name}")
            last = max(int(time.time()), last + 1)
            body = (f"object {t.target}\ntype commit\ntag {t.name}\ntagger {name} <{email}> {last} +0000\n\n"
                    f"{t.message.rstrip()}\n")
            objects.append((t.name, self.git.run("mktag", input=body.encode()).strip()))
        self._fault("transaction")
        script = "start\n" + "".join(f"create refs/tags/{n} {sha}\n" for n, sha in objects) + "prepare\ncommit\n"
        try:
            self.git.run("update-ref", "--stdin", input=script.encode())
        except RegistryError as exc:
            raise RegistryError(f"the registry changed while writing (nothing was written; retry): {exc}") from None


def _message(artifact: str, semver: str, record: LineageRecord, package: ArtifactRef) -> str:
    m = record.evaluation.metrics
    em, usd = m.get("em"), m.get("usd_per_question")
    head = (f"{artifact} {semver}: router {record.version} ({record.prices.label}; EM "
            f"{em if em is None else f'{em:.3f}'}, USD/question {usd if usd is None else f'{usd:.8f}'})")
    body = json.dumps({"package": package.model_dump(mode="json"), "record": record.model_dump(mode="json")},
                      sort_keys=True)
    return f"{head}\n\n{MESSAGE_MARKER}\n{body}\n"


def _parse_message(message: str, tag: str) -> tuple[LineageRecord, ArtifactRef]:
    _, marker, body = message.partition(f"{MESSAGE_MARKER}\n")
    if not marker:
        raise LineageError(f"tag {tag}: its message has no lineage record ({MESSAGE_MARKER})")
    try:
        payload = json.loads(body)
        return parse_record(json.dumps(payload["record"]), f"tag {tag}"), ArtifactRef.model_validate(payload["package"])
    except (ValueError, KeyError, TypeError) as exc:
        raise LineageError(f"tag {tag}: unreadable lineage payload ({exc})") from None
