from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from routerops.pool import PoolError, load_pool, parse_pool

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def raw() -> dict:
    return yaml.safe_load((ROOT / "pool.yaml").read_text())


def test_default_pool_is_router_r1s_six(pool) -> None:
    assert pool.names == ("Qwen2.5-7B-Instruct", "LLaMA-3.1-8B-Instruct", "LLaMA-3.1-70B-Instruct",
                          "Mistral-7B-Instruct", "Mixtral-8x22B-Instruct", "Gemma-2-27B-Instruct")
    assert {c.name: c.price.output_usd_per_mtok for c in pool} == {
        "Qwen2.5-7B-Instruct": 0.30, "LLaMA-3.1-8B-Instruct": 0.18, "LLaMA-3.1-70B-Instruct": 0.88,
        "Mistral-7B-Instruct": 0.20, "Mixtral-8x22B-Instruct": 1.20, "Gemma-2-27B-Instruct": 0.80}


def test_snapshot_id_is_a_content_hash(raw) -> None:
    a, b = parse_pool(raw, "a.yaml"), parse_pool(copy.deepcopy(raw), "b.yaml")
    assert a.snapshot_id == b.snapshot_id and a.pricing.id == b.pricing.id
    raw["pricing"]["prices"]["Qwen2.5-7B-Instruct"]["output_usd_per_mtok"] = 0.31
    c = parse_pool(raw, "a.yaml")
    assert c.snapshot_id != a.snapshot_id and c.pricing.id != a.pricing.id
    raw2 = yaml.safe_load((ROOT / "pool.yaml").read_text())
    raw2["candidates"][0]["descriptor"] = "Another description."
    d = parse_pool(raw2)
    assert d.snapshot_id != a.snapshot_id and d.pricing.id == a.pricing.id  # prices unchanged


def test_resolution_is_exact_never_substring(pool) -> None:
    assert pool.resolve("qwen2.5-7b-instruct").name == "Qwen2.5-7B-Instruct"
    assert pool.resolve("  MIXTRAL-8x22b ").name == "Mixtral-8x22B-Instruct"
    for lookalike in ("qwen", "qwen-72b", "any qwen", "llama", "Qwen2.5-7B-Instruct-Turbo", "7B"):
        assert pool.resolve(lookalike) is None


def _mutate(raw: dict, path: str, value) -> dict:
    raw = copy.deepcopy(raw)
    keys = path.split("/")
    node = raw
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]
    last = keys[-1]
    if value is _DELETE:
        del node[int(last) if isinstance(node, list) else last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return raw


_DELETE = object()
QWEN_PRICE = "pricing/prices/Qwen2.5-7B-Instruct"

# (case, path, new value, expected model, expected field, message fragment)
ERROR_CASES = [
    ("unknown-top-key", "owner", "me", None, "owner", "unknown top-level key"),
    ("unknown-candidate-key", "candidates/0/temprature", 0.5, "Qwen2.5-7B-Instruct", "temprature", "Extra inputs"),
    ("missing-output-price", f"{QWEN_PRICE}/output_usd_per_mtok", _DELETE, "Qwen2.5-7B-Instruct",
     "price.output_usd_per_mtok", "Field required"),
    ("negative-price", f"{QWEN_PRICE}/output_usd_per_mtok", -0.1, "Qwen2.5-7B-Instruct",
     "price.output_usd_per_mtok", ">= 0"),
    ("nan-price", f"{QWEN_PRICE}/input_usd_per_mtok", float("nan"), "Qwen2.5-7B-Instruct",
     "price.input_usd_per_mtok", "finite"),
    ("string-price", f"{QWEN_PRICE}/input_usd_per_mtok", "cheap", "Qwen2.5-7B-Instruct",
     "price.input_usd_per_mtok", "valid number"),
    ("model-without-price", QWEN_PRICE, _DELETE, "Qwen2.5-7B-Instruct", "price", "no entry in pricing.prices"),
    ("price-without-model", "pricing/prices/GPT-9", {"input_usd_per_mtok": 1, "output_usd_per_mtok": 1},
     "GPT-9", "price", "not a candidate"),
    ("duplicate-name", "candidates/1/name", "Qwen2.5-7B-Instruct", "Qwen2.5-7B-Instruct", "price", None),
    ("duplicate-alias", "candidates/1/aliases", ["qwen2.5-7b"], "LLaMA-3.1-8B-Instruct", "aliases", "duplicates"),
    ("alias-equals-other-name", "candidates/1/aliases", ["mistral-7b-instruct"], "Mistral-7B-Instruct", "name",
     "duplicates"),
    ("empty-descriptor", "candidates/2/descriptor", "   ", "LLaMA-3.1-70B-Instruct", "descriptor", "must not be empty"),
    ("missing-descriptor", "candidates/2/descriptor", _DELETE, "LLaMA-3.1-70B-Instruct", "descriptor", "Field required"),
    ("colon-in-alias", "candidates/0/aliases", ["qwen:7b"], "Qwen2.5-7B-Instruct", "aliases", "no ':'"),
    ("name-with-space", "candidates/0/name", "Qwen 7B", "Qwen 7B", "price", "no entry"),
    ("missing-name", "candidates/0/name", _DELETE, "#0", "name", "missing"),
    ("secret-like-env", "candidates/0/endpoint", {"base_url_env": "https://x", "api_key_env": "K"},
     "Qwen2.5-7B-Instruct", "endpoint.base_url_env", "pattern"),
    ("bad-temperature", "candidates/0/sampling", {"temperature": 5.0}, "Qwen2.5-7B-Instruct",
     "sampling.temperature", "less than or equal to 2"),
    ("zero-max-tokens", "candidates/0/max_tokens", 0, "Qwen2.5-7B-Instruct", "max_tokens", "greater than 0"),
    ("prior-out-of-range", "candidates/0/replay/prior_accuracy/nq", 1.5, "Qwen2.5-7B-Instruct",
     "replay.prior_accuracy", "[0, 1]"),
    ("prior-without-default", "candidates/0/replay/prior_accuracy", {"nq": 0.1}, "Qwen2.5-7B-Instruct",
     "replay.prior_accuracy", "'default'"),
    ("bad-effective-date", "pricing/effective_date", "last tuesday", None, "pricing.effective_date", "date"),
    ("empty-candidates", "candidates", [], None, "candidates", "non-empty list"),
    ("missing-pricing", "pricing", _DELETE, None, "pricing", "missing"),
    ("price-source-for-no-candidate", "price_sources/litellm/GPT-9", "openai/gpt-9", "GPT-9",
     "price_sources.litellm", "not a candidate"),
    ("empty-price-source-id", "price_sources/openrouter/Qwen2.5-7B-Instruct", " ", "Qwen2.5-7B-Instruct",
     "price_sources.openrouter", "non-empty string"),
    ("price-sources-not-a-mapping", "price_sources", ["litellm"], None, "price_sources", "must be a mapping"),
    ("bad-source-sha256", "pricing/source_sha256", "abc", None, "pricing.source_sha256", "pattern"),
]


@pytest.mark.parametrize(("case", "path", "value", "model", "field", "message"), ERROR_CASES,
                         ids=[c[0] for c in ERROR_CASES])
def test_pool_errors_name_file_model_and_field(raw, case, path, value, model, field, message) -> None:
    if case == "duplicate-name":
        raw = _mutate(raw, "candidates/1/name", "Qwen2.5-7B-Instruct")
        with pytest.raises(PoolError) as info:
            parse_pool(raw, "pool.yaml")
        # Both entries are priced under the same key; the second is caught as a duplicate name.
        assert info.value.model == "Qwen2.5-7B-Instruct" and "duplicates" in info.value.message
        return
    with pytest.raises(PoolError) as info:
        parse_pool(_mutate(raw, path, value), "pool.yaml")
    err = info.value
    assert err.file == "pool.yaml"
    assert err.model == model
    assert err.field == field
    if message:
        assert message in err.message, err.message
    assert str(err).startswith("pool.yaml")


def test_file_level_errors(tmp_path) -> None:
    with pytest.raises(PoolError, match="file not found"):
        load_pool(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("candidates: [\n")
    with pytest.raises(PoolError, match="invalid YAML"):
        load_pool(bad)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(PoolError, match="not valid UTF-8"):
        load_pool(binary)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(PoolError, match="top level must be a mapping"):
        load_pool(listy)


def test_candidate_cost(pool) -> None:
    mix = pool.get("mixtral-8x22b")
    assert mix.cost_usd(17) == pytest.approx(17 * 1.2e-6)
    assert mix.cost_usd(17, 100, include_prompt=True) == pytest.approx(117 * 1.2e-6)
    with pytest.raises(KeyError, match="not in pool"):
        pool.get("qwen")
