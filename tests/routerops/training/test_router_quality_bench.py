"""bench/router_quality.py's plan, pool and tables, and bench/router_probes.py's two probes on a tiny
untrained policy: what they count, not how well a policy scores. Training itself is the stages'."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest

from routerops.config import load_params
from routerops.runtime import encode_prompt
from routerops.training.tiny_policy import build_model, train_tokenizer


def _load(repo_root: Path, file: str) -> ModuleType:
    name = f"routerops_bench_{file.removesuffix('.py')}"
    spec = importlib.util.spec_from_file_location(name, repo_root / "bench" / file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rq(repo_root: Path) -> ModuleType:
    return _load(repo_root, "router_quality.py")


@pytest.fixture(scope="module")
def pv(repo_root: Path) -> ModuleType:
    return _load(repo_root, "pool_variants.py")


@pytest.fixture(scope="module")
def ro(repo_root: Path) -> ModuleType:
    return _load(repo_root, "reward_optimum.py")


@pytest.fixture(scope="module")
def probes(repo_root: Path) -> ModuleType:
    return _load(repo_root, "router_probes.py")


def test_the_plan_is_the_seeds_then_the_other_alphas_then_the_unseen_model(rq) -> None:
    plan = rq.configs([3, 1], [0.0, 0.6, 0.9], 0.6, unseen=True)
    assert [(c.name, c.seed, c.alpha, c.unseen, c.trains) for c in plan] == [
        ("seed3-alpha0.6", 3, 0.6, False, "seed3-alpha0.6"), ("seed1-alpha0.6", 1, 0.6, False, "seed1-alpha0.6"),
        ("seed3-alpha0", 3, 0.0, False, "seed3-alpha0"), ("seed3-alpha0.9", 3, 0.9, False, "seed3-alpha0.9"),
        ("seed3-alpha0.6-unseen", 3, 0.6, True, "seed3-alpha0.6")]
    assert [c.name for c in rq.configs([0], [], 0.6, unseen=False)] == ["seed0-alpha0.6"]


def test_warm_start_folders_serve_the_seeds_in_order(rq, tmp_path: Path) -> None:
    a, b, empty = tmp_path / "a", tmp_path / "b", tmp_path / "empty"
    for f in (a, b):
        (f / "sft").mkdir(parents=True)
        (f / "sft" / "_COMPLETE").touch()
    empty.mkdir()
    assert rq.warm_starts([2, 0, 1], [a, b]) == {2: a, 0: b}  # seed 1 trains its own
    assert rq.warm_starts([0], []) == {}
    with pytest.raises(ValueError, match=r"^2 warm-start folders for 1 seeds$"):
        rq.warm_starts([0], [a, b])
    with pytest.raises(ValueError, match=r"^no complete warm start \(sft/_COMPLETE\) in .*empty$"):
        rq.warm_starts([0, 1], [a, empty])


def test_an_unseen_model_configuration_reuses_the_router_it_evaluates(rq, repo_root: Path, pool, tmp_path: Path) -> None:
    trained = tmp_path / "routers" / "seed0-alpha0.6"
    trained.mkdir(parents=True)
    (trained / "routerops.json").write_text("{}")
    unseen = rq.Config("seed0-alpha0.6-unseen", 0, 0.6, unseen=True)
    # A finished router is returned as is: nothing is trained, no checkpoint folder is made.
    assert rq.train(load_params(repo_root / "params.yaml"), unseen, pool, tmp_path, {}) == trained
    assert not (tmp_path / "checkpoints").exists()


def test_params_for_changes_seed_alpha_and_steps_only(rq, repo_root: Path) -> None:
    base = load_params(repo_root / "params.yaml")
    p = rq.params_for(base, rq.Config("x", 5, 0.9), 7)
    assert (p.train_router.seed, p.rewards.alpha, p.train_router.local.grpo_steps) == (5, 0.9, 7)
    assert p.train_router.local.model_copy(update={"grpo_steps": base.train_router.local.grpo_steps}) == \
        base.train_router.local
    assert rq.params_for(base, rq.Config("x", 0, 0.6), None).train_router.local == base.train_router.local


def test_the_unseen_model_is_priced_and_described_but_never_recorded(pv, repo_root: Path, pool) -> None:
    extended = pv.with_unseen(repo_root / "pool.yaml")
    assert extended.names == (*pool.names, pv.UNSEEN_NAME)
    new = extended.get(pv.UNSEEN_NAME)
    assert new.price.output_usd_per_mtok == 0.18 and "72B" in new.descriptor
    assert new.replay is not None and new.replay.matrix_model is None  # its replies follow its prior only
    assert extended.snapshot_id != pool.snapshot_id


def test_a_repriced_pool_multiplies_those_prices_only(pv, repo_root: Path, pool) -> None:
    name = "Mixtral-8x22B-Instruct"
    repriced = pv.pool_variant(repo_root / "pool.yaml", {name: 5.0})
    assert repriced.names == pool.names and repriced.snapshot_id != pool.snapshot_id
    for c in pool:
        factor = 5.0 if c.name == name else 1.0
        got = repriced.get(c.name).price
        assert (got.input_usd_per_mtok, got.output_usd_per_mtok) == pytest.approx(
            (c.price.input_usd_per_mtok * factor, c.price.output_usd_per_mtok * factor))
    both = pv.pool_variant(repo_root / "pool.yaml", {name: 5.0}, unseen=True)
    assert both.names == (*pool.names, pv.UNSEEN_NAME) and both.get(name).price == repriced.get(name).price


@pytest.mark.parametrize(("items", "error"), [
    (["Mixtral-8x22B-Instruct"], "--reprice 'Mixtral-8x22B-Instruct': expected NAME=FACTOR"),
    (["=2"], "--reprice '=2': expected NAME=FACTOR"),
    (["GPT-9=2"], "--reprice 'GPT-9=2': 'GPT-9' is not a candidate (pool: A, B)"),
    (["A=2", "A=3"], "--reprice 'A=3': 'A' is repriced twice"),
    (["A=cheap"], "--reprice 'A=cheap': factor 'cheap' is not a number"),
    (["A=0"], "--reprice 'A=0': factor must be a positive finite number"),
    (["A=-1"], "--reprice 'A=-1': factor must be a positive finite number"),
    (["A=inf"], "--reprice 'A=inf': factor must be a positive finite number"),
    (["A=nan"], "--reprice 'A=nan': factor must be a positive finite number"),
])
def test_malformed_reprice_items_are_refused(pv, items, error) -> None:
    with pytest.raises(ValueError) as info:
        pv.parse_reprice(items, ["A", "B"])
    assert str(info.value) == error


def test_reprice_items_parse_to_factors(pv) -> None:
    assert pv.parse_reprice(["A=5", "B=0.5"], ["A", "B"]) == {"A": 5.0, "B": 0.5}
    assert pv.parse_reprice([], ["A"]) == {}


def _row(name: str, seed: int, alpha: float, em: float, beaten: list[str], unseen: bool = False) -> dict:
    return {"config": name, "seed": seed, "alpha": alpha, "unseen": unseen, "em": em, "usd_per_question": 20e-6,
            "calls_per_question": 1.2, "format_valid": 0.97, "call_share": {}, "unseen_share": 0.0 if unseen else None,
            "dominated_by": beaten, "dominated_beyond_ci": beaten, "copy_fidelity": 0.8, "gold_in_reply": 100,
            "first_declined": 70, "asked_other_model": 0.1, "em_after_decline": None, "reasked_same_model": 0.15}


def test_the_report_gives_mean_and_range_over_seeds_and_who_dominates(rq) -> None:
    rows = [_row("seed0-alpha0.6", 0, 0.6, 0.20, ["knn"]), _row("seed1-alpha0.6", 1, 0.6, 0.30, []),
            _row("seed0-alpha0.9", 0, 0.9, 0.10, ["knn", "random"]),
            _row("seed0-alpha0.6-unseen", 0, 0.6, 0.25, [], unseen=True)]
    baselines = {"router": {"em": 0.2, "usd_per_question": 1e-6}, "knn": {"em": 0.267, "usd_per_question": 8.7e-6}}
    text = rq.report(rows, 0.6, baselines, 60, 120.0, {f"single:{rq.UNSEEN_NAME}": {"em": 0.31, "usd_per_question": 1e-6}})
    assert "| EM | 0.250 (0.200..0.300) |" in text
    assert "| EM after a decline | - |" in text  # no seed had a decline to measure
    assert "| seeds dominated beyond the interval | 1 of 2 (knn) |" in text
    assert "| knn | 0.267 | 8.7 |" in text and "| router |" not in text.split("## Baselines")[1]
    assert f"## Unseen candidate {rq.UNSEEN_NAME}" in text and "Its call share 0.000" in text and f"Single {rq.UNSEEN_NAME}: EM 0.310." in text
    assert "Pool:" not in text
    shares = [{**r, "call_share": {"Mixtral-8x22B-Instruct": 0.7, "Mistral-7B-Instruct": 0.3}} for r in rows]
    text = rq.report(shares, 0.6, baselines, 60, 120.0, None, {"Mixtral-8x22B-Instruct": 5.0})
    assert "Pool: pool.yaml with Mixtral-8x22B-Instruct's prices x5 (training and evaluation)." in text
    assert text.count("| Mixtral-8x22B 0.70 |") == 4
    best = [{**r, "reward_best_model": "Mixtral-8x22B-Instruct", "reward_best_margin": 0.057} for r in shares]
    assert rq.report(best, 0.6, baselines, 60, 120.0).count("| Mixtral-8x22B 0.70 | Mixtral-8x22B (0.057) |") == 4


def _optimum(alpha: float, best: str, reward: float, margin: float):
    from routerops.reward_optimum import ORACLE, Optimum, PolicyValue

    return Optimum(alpha, PolicyValue(best, alpha, reward, 0.3, 20e-6),
                   PolicyValue("Other-Instruct", alpha, reward - margin, 0.2, 5e-6), PolicyValue(ORACLE, alpha, 0.4, 0.45, 9e-6))


def test_the_reward_optimum_table_names_where_the_best_model_changes(ro) -> None:
    same = [_optimum(0.0, "Mixtral-8x22B-Instruct", 0.299, 0.034), _optimum(0.6, "Mixtral-8x22B-Instruct", 0.236, 0.057)]
    text = ro.report(same, "pool.yaml", 1000)
    assert "| 0.6 | Mixtral-8x22B | 0.236 | 0.057 | Other | 0.300 | 20.0 | 0.400 |" in text
    assert "over the 1000 training questions" in text
    assert "The best model changes: never (one point is all an alpha sweep can reach)." in text
    moved = [*same, _optimum(0.9, "Gemma-2-27B-Instruct", 0.14, 0.009)]
    assert ("The best model changes: Mixtral-8x22B -> Gemma-2-27B between alpha 0.6 and 0.9."
            in ro.report(moved, "pool.yaml, Mixtral-8x22B-Instruct x5", 1000))
    assert ro.to_json(moved, {"Mixtral-8x22B-Instruct": 5.0})["rows"][2]["best"]["policy"] == "Gemma-2-27B-Instruct"


def test_the_probes_count_every_sampled_turn_and_every_copy(probes, repo_root: Path, pool) -> None:
    params = load_params(repo_root / "params.yaml")
    questions = ["who wrote the novel about rivers?", "when was the bridge opened?"]
    tok = train_tokenizer([*questions, "Paris", "George VI"], 300)
    model = build_model(params.train_router.local, len(tok), tok.eos_token_id, 0)
    model.eval()
    prompts = [encode_prompt(q, pool, tok, params) for q in questions]
    table = probes.after_decline(model, tok, prompts, pool, 3)
    assert list(table) == list(pool.names)
    for counts in table.values():
        assert sum(counts.values()) == 6 and set(counts) <= {*pool.names, "answer", "other"}
    opening = probes.first_calls(model, tok, prompts, pool, 4, 0.95)
    assert sum(opening.values()) == 8 and set(opening) <= {*pool.names, "answer", "other"}
    answers = [(questions[0], "Paris"), (questions[1], "George VI")]
    by_len = probes.copies(model, tok, lambda q: encode_prompt(q, pool, tok, params), answers, list(pool.names),
                           random.Random(0))
    assert sorted(by_len) == sorted({len(tok.encode(f" {a}", add_special_tokens=False)) for _, a in answers})
    assert all(v in (0, 1) for vs in by_len.values() for v in vs) and sum(map(len, by_len.values())) == 2


@pytest.mark.parametrize(("answer", "kind"), [("1444", "digit"), ("E20", "digit"), ("Puzzzle", "repeat"),
                                              ("Paris", "other")])
def test_the_copy_probe_sorts_answers_by_kind(probes, answer, kind) -> None:
    tok = train_tokenizer(["Paris is a city."] * 5, 400)
    assert probes.kind(tok, answer) == kind
