"""package_router's code check: a dirty tree is refused, naming the files, unless asked for; then
the record says so. (Packaging itself runs end to end in tests/services/.)"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from routerops.packaging import PackageError
from stages.package_router import _code_info


def _git(root: Path, *args: str) -> None:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@routerops.invalid", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@routerops.invalid"}
    subprocess.run(["git", *args], cwd=root, env=env, check=True, capture_output=True, timeout=60)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "routerops").mkdir(parents=True)
    (root / "routerops" / "a.py").write_text("A = 1\n")
    (root / "params.yaml").write_text("x: 1\n")
    _git(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "first")
    return root


def test_a_clean_tree_is_recorded_clean_and_params_are_not_code(repo) -> None:
    (repo / "params.yaml").write_text("x: 2\n")  # pinned by the lineage commit, not code
    info = _code_info(repo, {"routerops/a.py": "h"}, allow_dirty=False)
    assert (info.dirty, info.dirty_files, info.dirty_sha256, len(info.commit)) == (False, (), None, 40)


def test_a_dirty_tree_is_refused_naming_the_files_unless_asked(repo) -> None:
    (repo / "routerops" / "a.py").write_text("A = 2\n")
    (repo / "routerops" / "new.py").write_text("B = 1\n")
    with pytest.raises(PackageError, match=r"^code differs from HEAD [0-9a-f]{12} in 2 file\(s\) \(routerops/a\.py, "
                                           r"routerops/new\.py\): commit it, or package anyway with "
                                           r"ROUTEROPS_ALLOW_DIRTY=1 \(recorded as dirty\)$"):
        _code_info(repo, {}, allow_dirty=False)
    info = _code_info(repo, {}, allow_dirty=True)
    assert info.dirty and info.dirty_files == ("routerops/a.py", "routerops/new.py")
    expected = hashlib.sha256(b"routerops/a.py\0A = 2\n\0routerops/new.py\0B = 1\n\0").hexdigest()
    assert info.dirty_sha256 == expected


def test_outside_git_there_is_no_version(tmp_path) -> None:
    with pytest.raises(PackageError, match=r"is not a git checkout with a commit: a version's code must be a commit$"):
        _code_info(tmp_path, {}, allow_dirty=True)
