"""params.yaml as typed, frozen models: one source of values, every bad file a precise error."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from routerops import config
from routerops.config import Params, ParamsError, load_params, parse_params

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def raw() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_the_project_params_load(raw) -> None:
    params = load_params(ROOT / "params.yaml")
    assert params.profile == "local" and params.rewards.alpha == raw["rewards"]["alpha"]
    assert params.train_router.local.num_heads == raw["train_router"]["local"]["num_heads"]
    with pytest.raises(Exception, match="frozen"):
        params.rewards.alpha = 0.1  # type: ignore[misc]


def _drop(raw: dict, dotted: str) -> dict:
    *parents, leaf = dotted.split(".")
    node = raw
    for p in parents:
        node = node[p]
    del node[leaf]
    return raw


def _set(raw: dict, dotted: str, value) -> dict:
    *parents, leaf = dotted.split(".")
    node = raw
    for p in parents:
        node = node[p]
    node[leaf] = value
    return raw


BAD = [
    ("missing section", lambda r: _drop(r, "train_router"), "p.yaml: train_router: Field required"),
    ("missing key", lambda r: _drop(r, "rewards.alpha"), "p.yaml: rewards.alpha: Field required"),
    ("missing nested key", lambda r: _drop(r, "train_router.local.num_heads"),
     "p.yaml: train_router.local.num_heads: Field required"),
    ("unknown key", lambda r: _set(r, "rewards.beta", 1), "p.yaml: rewards.beta: Extra inputs are not permitted"),
    ("alpha out of range", lambda r: _set(r, "rewards.alpha", 1.5),
     "p.yaml: rewards.alpha: Input should be less than or equal to 1"),
    ("unknown profile", lambda r: _set(r, "profile", "tpu"), "p.yaml: profile: Input should be 'local' or 'gpu'"),
    ("template for one profile only", lambda r: _drop(r, "prompt.template.gpu"),
     "p.yaml: prompt: Value error, template needs an entry for every profile; missing: gpu"),
    ("policy for one profile only", lambda r: _drop(r, "evaluate_router.policy.local"),
     "p.yaml: evaluate_router: Value error, policy needs an entry for every profile; missing: local"),
    ("prompt longer than context", lambda r: _set(r, "rollout.max_prompt_tokens", 5000),
     "p.yaml: rollout: Value error, max_prompt_tokens must be below max_context_tokens"),
    ("heads do not divide", lambda r: _set(r, "train_router.local.num_heads", 3),
     "p.yaml: train_router.local: Value error, hidden_size must divide by num_heads, and num_heads by num_kv_heads"),
    ("negative size", lambda r: _set(r, "build_dataset.sizes.local.train.nq", -1),
     "p.yaml: build_dataset: Value error, sizes.local.train.nq must be >= 0, got -1"),
    ("input without source", lambda r: r["build_dataset"]["inputs"]["local"][1].pop("source"),
     "p.yaml: build_dataset.inputs.local.1: Value error, hotpotqa/hotpot_dev_v1_simplified.json: format "
     "hotpot_simplified needs a 'source'"),
    ("bad env var name", lambda r: _set(r, "evaluate_router.policy_base_url_env", "lower-case"),
     "p.yaml: evaluate_router.policy_base_url_env: String should match pattern '^[A-Z_][A-Z0-9_]*$'"),
    ("mini batch above batch", lambda r: _set(r, "train_router.verl.ppo_mini_batch_size", 128),
     "p.yaml: train_router.verl: Value error, ppo_mini_batch_size must not exceed train_batch_size"),
]


@pytest.mark.parametrize(("case", "mutate", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_params_name_the_key(raw, case, mutate, message) -> None:
    mutate(raw)
    with pytest.raises(ParamsError) as err:
        parse_params(raw, "p.yaml")
    assert str(err.value) == message


@pytest.mark.parametrize(("text", "message"), [
    ("profile: [", "invalid YAML"),
    ("", "profile: Field required"),
])
def test_unreadable_files(tmp_path, text, message) -> None:
    p = tmp_path / "params.yaml"
    p.write_text(text)
    with pytest.raises(ParamsError, match=rf"^{p}: {message}"):
        load_params(p)
    with pytest.raises(ParamsError, match=rf"^{tmp_path / 'none.yaml'}: file not found$"):
        load_params(tmp_path / "none.yaml")


def _models() -> list[type[BaseModel]]:
    return [v for v in vars(config).values()
            if isinstance(v, type) and issubclass(v, BaseModel) and v.__module__ == config.__name__ and v is not
            config._Section]


def test_no_value_has_a_default_in_code() -> None:
    """params.yaml is the one source of values: a code default could silently disagree with it."""
    optional = {("DatasetInput", "source")}  # only for formats whose rows carry no source of their own
    with_default = [(m.__name__, name) for m in _models() for name, f in m.model_fields.items()
                    if not f.is_required()]
    assert with_default == sorted(optional)


def test_router_limits_use_the_local_policys_turn_cap_only_when_it_is_trained() -> None:
    params = load_params(ROOT / "params.yaml")
    local = params.router_limits()
    assert local.max_tokens_per_turn == params.train_router.local.max_tokens_per_turn
    assert local.max_turns == params.rollout.max_turns and local.max_obs_tokens == params.rollout.max_obs_tokens
    verl = params.model_copy(update={"train_router": params.train_router.model_copy(update={"backend": "verl"})})
    assert verl.router_limits() == params.rollout.limits()


def _string_constants(path: Path) -> set[str]:
    return {n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant)
            and isinstance(n.value, str)}


def test_no_candidate_name_is_a_literal_in_code(pool) -> None:
    names = {n.casefold() for c in pool for n in (c.name, *c.aliases)}
    hits = [(p.relative_to(ROOT).as_posix(), s) for tree in ("routerops", "stages", "flows", "infra")
            for p in sorted((ROOT / tree).rglob("*.py")) for s in _string_constants(p) if s.casefold() in names]
    assert hits == []


def test_params_sections_are_typed_attributes() -> None:
    assert not hasattr(Params, "require")
    hints = {name: f.annotation for name, f in Params.model_fields.items()}
    assert hints["train_router"] is config.TrainRouterParams and hints["build_dataset"] is config.BuildDatasetParams
