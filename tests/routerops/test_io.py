"""Atomic writes: a reader sees the old artifact or the new one, never half of either."""

from __future__ import annotations

import json

import pytest

from routerops.io import atomic_dir, write_json_atomic, write_text_atomic


def test_text_and_json_replace_the_target_and_leave_no_temp_file(tmp_path) -> None:
    target = tmp_path / "sub" / "out.json"
    write_json_atomic(target, {"b": 1, "a": [1, 2]})
    assert target.read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'  # sorted keys, newline
    write_text_atomic(target, "new")
    assert target.read_text() == "new" and sorted(p.name for p in target.parent.iterdir()) == ["out.json"]


def test_a_failed_json_write_keeps_the_old_file(tmp_path) -> None:
    target = tmp_path / "out.json"
    write_json_atomic(target, {"v": 1})
    with pytest.raises(TypeError, match="not JSON serializable"):
        write_json_atomic(target, {"v": object()})
    assert json.loads(target.read_text()) == {"v": 1} and [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_dir_writes_the_marker_last_and_swaps_the_directory_in(tmp_path) -> None:
    target = tmp_path / "artifact"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("a")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text("b")
        assert not target.exists()  # nothing visible until the block ends
    assert json.loads((target / "_COMPLETE").read_text()) == {"complete": True, "files": ["a.txt", "sub/b.txt"]}
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]


def test_atomic_dir_keeps_the_previous_version_when_the_block_fails(tmp_path) -> None:
    target = tmp_path / "artifact"
    with atomic_dir(target) as tmp:
        (tmp / "v1.txt").write_text("1")
    with pytest.raises(RuntimeError, match=r"^half way$"), atomic_dir(target) as tmp:
        (tmp / "v2.txt").write_text("2")
        raise RuntimeError("half way")
    assert sorted(p.name for p in target.iterdir()) == ["_COMPLETE", "v1.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]  # the temp dir is gone
