"""The reward function: per-split cost normalisers, and a round trip through verl's naive reward manager."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from routerops.candidates.types import QuestionInfo
from routerops.config import load_params
from routerops.cost_calibration import CalibrationError, read_calibration, training_calibration, write_calibration
from routerops.training.verl.reward import BREAKDOWN_KEYS, compute_score, process_scorer, reset_reward_state


def test_cost_normalisers_are_separate_per_split(tmp_path: Path, raw_params: dict[str, Any], candidate_name: str,
                                                  valid_response: str, route_call: Callable[..., dict[str, Any]]) -> None:
    Q, VALID, _call = candidate_name, valid_response, route_call
    raw = raw_params
    raw["rewards"].update(alpha=0.5, window=4, normalizer="sliding")
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


def _worker_scores(kw: dict[str, str], Q: str, VALID: str, call: Callable[..., dict[str, Any]],
                   seen: list[int], probe: int) -> float:
    """A fresh reward-worker process (empty caches) that scores `seen` trajectories, then `probe`."""
    reset_reward_state()
    for tokens in seen:
        compute_score("nq", VALID, ["Paris"], {"split": "train", "route_calls": json.dumps([call(Q, tokens)])}, **kw)
    return compute_score("nq", VALID, ["Paris"], {"split": "train", "route_calls": json.dumps([call(Q, probe)])},
                         **kw)["score"]


def test_calibrated_bounds_give_a_cost_the_same_reward_in_every_worker(
        tmp_path: Path, raw_params: dict[str, Any], candidate_name: str, valid_response: str,
        route_call: Callable[..., dict[str, Any]], pool: Any) -> None:
    """verl picks one of reward.num_workers processes at random per trajectory. Two workers that
    saw different trajectories score the same 100-token call: Router-R1's sliding windows give it
    different rewards, the bounds calibrated before launch the same one."""
    raw = raw_params
    raw["rewards"].update(alpha=0.6, window=1000)
    seen_a, seen_b = [10, 20, 40], [1000, 2000, 4000]
    rewards = {}
    for mode in ("sliding", "calibrated"):
        raw["rewards"]["normalizer"] = mode
        (tmp_path / f"{mode}.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
        kw = {"params_path": str(tmp_path / f"{mode}.yaml")}
        if mode == "calibrated":
            questions = [QuestionInfo(str(i), f"question {i}?") for i in range(50)]
            kw["cost_bounds_path"] = str(write_calibration(
                tmp_path / "bounds.json", training_calibration(load_params(tmp_path / f"{mode}.yaml"), pool, questions)))
        rewards[mode] = [_worker_scores(kw, candidate_name, valid_response, route_call, seen, 100)
                         for seen in (seen_a, seen_b)]
    reset_reward_state()
    assert rewards["sliding"][0] != pytest.approx(rewards["sliding"][1], abs=0.05)  # the defect, kept as an option
    assert rewards["calibrated"][0] == rewards["calibrated"][1]
    bounds = read_calibration(tmp_path / "bounds.json")
    expected = 1 - 0.6 * min(1.0, max(0.0, (math.sqrt(100 * 0.30 / 1e6) - bounds.p5) / (bounds.p95 - bounds.p5)))
    assert rewards["calibrated"][0] == pytest.approx(expected)


CALIBRATION_CASES = [
    # (what the reward worker is given, the exact error)
    (None, "rewards.normalizer is 'calibrated' but reward_kwargs has no cost_bounds_path: launch through routerops "
           "(its dry run calibrates the bounds and names the file), or set normalizer: sliding"),
    ("missing", "{path}: no cost calibration (rewards.normalizer is 'calibrated': the launch writes it)"),
    ("{", "{path}: not JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"),
    ("[1]", "{path}: expected a JSON object, got list"),
    ('{"schema": 2}', "{path}: schema 2, expected 1"),
    ('{"schema": 1, "p5_sqrt_usd": 0.0}', "{path}: malformed (KeyError('p95_sqrt_usd'))"),
    ('{"schema": 1, "p5_sqrt_usd": 0.02, "p95_sqrt_usd": 0.01, "questions": 1, "reference_costs": 6}',
     "{path}: bounds must be finite with 0 <= p5 <= p95, got 0.02, 0.01"),
]


@pytest.mark.parametrize(("content", "message"), CALIBRATION_CASES)
def test_a_calibrated_reward_without_good_bounds_is_an_error(
        tmp_path: Path, raw_params: dict[str, Any], content: str | None, message: str, valid_response: str,
        candidate_name: str, route_call: Callable[..., dict[str, Any]]) -> None:
    raw_params["rewards"]["normalizer"] = "calibrated"
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw_params), encoding="utf-8")
    path = tmp_path / "bounds.json"
    if content not in (None, "missing"):
        path.write_text(str(content), encoding="utf-8")
    kw = {"params_path": str(tmp_path / "p.yaml"), **({} if content is None else {"cost_bounds_path": str(path)})}
    reset_reward_state()
    with pytest.raises(CalibrationError) as info:
        compute_score("nq", valid_response, ["Paris"],
                      {"split": "train", "route_calls": json.dumps([route_call(candidate_name, 10)])}, **kw)
    reset_reward_state()
    assert str(info.value) == message.format(path=path)


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
