"""The reward function: per-split cost normalisers, and a round trip through verl's naive reward manager."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from routerops.training.verl.reward import BREAKDOWN_KEYS, compute_score, process_scorer, reset_reward_state


def test_cost_normalisers_are_separate_per_split(tmp_path: Path, raw_params: dict[str, Any], candidate_name: str,
                                                  valid_response: str, route_call: Callable[..., dict[str, Any]]) -> None:
    Q, VALID, _call = candidate_name, valid_response, route_call
    raw = raw_params
    raw["rewards"].update(alpha=0.5, window=4)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    reset_reward_state()
    kw = {"params_path": str(tmp_path / "p.yaml")}

    def score(split: str, tokens: int) -> dict[str, float]:
        extra = {"split": split, "route_calls": json.dumps([_call(Q, tokens)])}
        return compute_score("nq", VALID, np.array(["Paris"], dtype=object), extra, **kw)

    for tokens in (10, 100, 1000, 10000):
        score("train", tokens)
    # The validation normaliser has seen nothing: a lone cost is degenerate (0.5), not ranked
    # against the training window, where the same cost is the cheapest seen.
    val = score("validation", 10)
    assert val["cost_norm"] == 0.5 and val["score"] == pytest.approx(0.75)
    assert score("train", 10)["cost_norm"] == 1.0
    state = process_scorer(kw["params_path"], None).normalizers.state_dict()
    assert set(state) == {"train", "validation"} and len(state["validation"]["history"]) == 1
    reset_reward_state()


def test_frozen_normaliser_freezes_after_its_window(tmp_path: Path, raw_params: dict[str, Any], candidate_name: str,
                                                     valid_response: str,
                                                     route_call: Callable[..., dict[str, Any]]) -> None:
    Q, VALID, _call = candidate_name, valid_response, route_call
    raw = raw_params
    raw["rewards"].update(alpha=1.0, window=3, normalizer="frozen")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    reset_reward_state()
    kw = {"params_path": str(tmp_path / "p.yaml")}
    for tokens in (10, 100, 1000):
        compute_score("nq", VALID, ["Paris"], {"split": "train", "route_calls": json.dumps([_call(Q, tokens)])}, **kw)
    frozen = process_scorer(kw["params_path"], None).normalizers.get("train")
    assert frozen.mode == "frozen"
    compute_score("nq", VALID, ["Paris"], {"split": "train", "route_calls": json.dumps([_call(Q, 10**6)])}, **kw)
    assert process_scorer(kw["params_path"], None).normalizers.get("train") == frozen
    reset_reward_state()


def test_reward_needs_the_agent_loops_fields(valid_response: str) -> None:
    with pytest.raises(ValueError, match="route_calls"):
        compute_score("nq", valid_response, ["Paris"], {"split": "train"})


@pytest.mark.slow
def test_reward_round_trips_through_verls_naive_reward_manager(resolved_config: Any, tokenizer: Any,
                                                                candidate_name: str, valid_response: str,
                                                                route_call: Callable[..., dict[str, Any]]) -> None:
    import torch
    from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager
    from verl.protocol import DataProto
    from verl.trainer.ppo.reward import load_reward_manager

    Q, VALID, _call = candidate_name, valid_response, route_call
    calls = json.dumps([_call(Q, 100)])
    cases = [(VALID, calls, 1.0, 0.0, 1.0), ("<answer>Paris</answer>", "[]", -1.0, -1.0, 1.0),
             ("<think>hm</think><answer>London</answer>", "[]", 0.0, 0.0, 0.0)]

    async def score_all() -> list[dict[str, Any]]:
        manager = load_reward_manager(resolved_config, tokenizer)  # reads reward.custom_reward_function
        assert isinstance(manager, NaiveRewardManager)
        results = []
        for text, route_calls, *_ in cases:
            prompt = tokenizer.encode("<|user|>\nq\n<|assistant|>\n", add_special_tokens=False)
            resp = tokenizer.encode(text, add_special_tokens=False)
            pad = [tokenizer.pad_token_id] * 4  # right padding, as verl pads responses
            data = DataProto.from_dict(
                tensors={"prompts": torch.tensor([prompt]), "responses": torch.tensor([resp + pad]),
                         "attention_mask": torch.tensor([[1] * (len(prompt) + len(resp)) + [0] * 4])},
                non_tensors={"data_source": np.array(["nq"], dtype=object),
                             "reward_model": np.array([{"ground_truth": np.array(["Paris"], dtype=object)}]),
                             "extra_info": np.array([{"split": "validation", "index": 0}]),
                             "tool_extra_fields": np.array([{"route_calls": route_calls}])})
            results.append(await manager.run_single(data))
        return results

    results = asyncio.run(score_all())
    for (_, _, reward, fmt, em), res in zip(cases, results, strict=True):
        info = res["reward_extra_info"]
        assert res["reward_score"] == reward and info["score"] == reward
        assert (info["format"], info["em"]) == (fmt, em)
        assert set(info) == {"score", *BREAKDOWN_KEYS}
    first = results[0]["reward_extra_info"]
    assert first["cost_usd"] == pytest.approx(100 * 0.30 / 1e6) and first["num_calls"] == 1.0
