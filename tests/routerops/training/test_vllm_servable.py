"""The local router's shape must be one vLLM serves (the gpu profile's policy backend)."""

from __future__ import annotations

from pathlib import Path

from routerops.config import load_params
from routerops.training.tiny_policy import VLLM_HEAD_DIMS


def test_configured_policy_head_dim_is_servable_by_vllm(repo_root: Path) -> None:
    p = load_params(repo_root / "params.yaml").train_router.local
    assert p.hidden_size % p.num_heads == 0 and p.num_heads % p.num_kv_heads == 0, (
        f"train_router.local: hidden_size {p.hidden_size}, num_heads {p.num_heads}, num_kv_heads {p.num_kv_heads}: "
        "heads must divide the width and kv heads the heads")
    head_dim = p.hidden_size // p.num_heads
    assert head_dim in VLLM_HEAD_DIMS, (
        f"train_router.local: head_dim {head_dim} (hidden_size {p.hidden_size} / num_heads {p.num_heads}) is not "
        f"served by vLLM on CPU and GPU; it serves {list(VLLM_HEAD_DIMS)}")
