"""Lineage records without git or S3: the version id, DVC's hashes restated, diff, rendering and
refusing malformed records."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest
from dvc_data.hashfile.tree import Tree

from routerops.lineage import (
    LineageError,
    diff_records,
    dvc_dir_md5,
    flatten,
    lock_artifact,
    lock_stage_params,
    parse_record,
    render_diff,
    render_html,
    render_tree,
    version_id,
)


def test_our_directory_hash_is_dvcs() -> None:
    entries = {"b/x.bin": "0cc175b9c0f1b6a831c399e269772661", "a.txt": "92eb5ffee6ae2fec3ad71c777531578f",
               "b/y z.txt": "4a8a08f09d37b73795649038408b5f33"}
    tree = Tree.from_list([{"relpath": k, "md5": v} for k, v in entries.items()], hash_name="md5")
    tree.digest()
    assert dvc_dir_md5(entries) == tree.hash_info.value
    assert dvc_dir_md5(dict(reversed(entries.items()))) == dvc_dir_md5(entries)


def test_the_version_is_the_content_not_the_time_the_parent_or_the_commit(make_record) -> None:
    r = make_record()
    assert r.version == version_id(r) and re.fullmatch(r"[0-9a-f]{16}", r.version)
    moved = r.model_copy(update={"created_at": datetime(2030, 1, 1, tzinfo=UTC), "parent": "f" * 16, "remote": None,
                                 "code": r.code.model_copy(update={"commit": "1" * 40})})
    assert version_id(moved) == r.version
    changed = {make_record(output_price=2.4).version, make_record(em=0.3).version, make_record(weights="b").version,
               make_record(params={"train_router": {"seed": 1}}).version, r.version}
    assert len(changed) == 5


def test_diff_of_a_price_change_shows_the_price_and_the_metrics_only(make_record) -> None:
    old, new = make_record(), make_record(output_price=2.4)
    d = diff_records(old, new)
    assert [(c.key, c.old, c.new) for c in d.prices] == [("Mixtral-8x22B-Instruct.output_usd_per_mtok", 1.2, 2.4)]
    assert [c.key for c in d.metrics] == ["usd_per_question"]
    assert d.params == d.data == d.code == d.artifacts == d.environment == () and d.commits == ()
    text = render_diff(d)
    assert "  Mixtral-8x22B-Instruct.output_usd_per_mtok: 1.2 -> 2.4" in text
    assert "  usd_per_question: 2.4e-05 -> 4.8e-05  (+2.4e-05)" in text
    assert "params: unchanged" in text and "data: unchanged" in text and "code: unchanged" in text
    assert json.loads(json.dumps(d.as_json()))["prices"][0]["new"] == 2.4


def test_diff_of_params_goes_key_by_key(make_record) -> None:
    d = diff_records(make_record(params={"train_router": {"seed": 0, "local": {"steps": 2}}}),
                     make_record(params={"train_router": {"seed": 0, "local": {"steps": 5}}}))
    assert [(c.key, c.old, c.new) for c in d.params] == [("train_router.local.steps", 2, 5)]


def test_lock_parsing(make_record) -> None:
    lock = {"stages": {"train_router": {"params": {"params.yaml": {"seed": 0}}, "outs": [
        {"path": "artifacts/router", "hash": "md5", "md5": "a" * 32 + ".dir", "size": 5, "nfiles": 2}]}}}
    ref = lock_artifact(lock, "train_router", "artifacts/router")
    assert (ref.md5, ref.size, ref.nfiles, ref.stage) == ("a" * 32 + ".dir", 5, 2, "train_router")
    assert lock_stage_params(lock) == {"train_router": {"seed": 0}}
    with pytest.raises(LineageError, match=r"^dvc\.lock: stage 'evaluate_router' has no locked output "
                                           r"'artifacts/evaluation' \(run `dvc repro evaluate_router`\)$"):
        lock_artifact(lock, "evaluate_router", "artifacts/evaluation")
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a.b": 1, "a.c": [1, 2], "d": None}


@pytest.mark.parametrize(("mutate", "error"), [
    (lambda d: d.pop("version"), r"^lineage\.json: not a lineage record \(1 errors; first: version: Field required\)$"),
    (lambda d: d.update(schema_version=2), r"first: schema_version: Input should be 1\)$"),
    (lambda d: d["data"]["raw"].pop("md5"), r"first: data\.raw\.md5: Field required\)$"),
    (lambda d: d.update(surprise=1), r"first: surprise: Extra inputs are not permitted\)$"),
    (lambda d: d["evaluation"].update(metrics="high"), r"first: evaluation\.metrics: Input should be an object\)$"),
])
def test_malformed_records_are_refused_with_the_field_named(make_record, mutate, error) -> None:
    data = make_record().model_dump(mode="json")
    mutate(data)
    with pytest.raises(LineageError, match=error):
        parse_record(json.dumps(data), "lineage.json")
    with pytest.raises(LineageError, match=r"^lineage\.json: not a lineage record \(1 errors; first: : Invalid JSON"):
        parse_record("{", "lineage.json")


def test_the_tree_and_the_page_show_the_whole_chain(make_record) -> None:
    r = make_record()
    tree = render_tree(r, registry={"registry version": "v0.1.0", "stage": "champion"})
    lines = tree.splitlines()
    order = [next(i for i, ln in enumerate(lines) if what in ln) for what in
             ("Bento routerops-router-service:", "BentoML model routerops-router:", "router weights artifacts/router",
              "evaluation artifacts/evaluation", "dataset artifacts/dataset", "raw data data")]
    assert order == sorted(order)
    assert "registry: registry version v0.1.0, stage champion" in tree
    assert f"at s3://bucket/dvc/files/md5/77/{'7' * 30}.dir" in tree  # under the recorded remote
    assert "Mixtral-8x22B-Instruct     in   1.200  out   1.200  USD/1M tokens" in tree
    assert "registry: not registered" in render_tree(r)
    page = render_html(r, registry={"stage": "champion"}, pareto_png=b"\x89PNG fake")
    assert page.startswith("<!doctype html>") and f"Router {r.version}" in page
    assert 'src="data:image/png;base64,iVBORyBmYWtl"' in page
    assert f"s3://bucket/dvc/files/md5/22/{'2' * 30}.dir" in page
    assert "http://" not in page and "https://" not in page  # self-contained
