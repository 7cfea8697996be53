"""verl's RL math as both backends call it, on small hand-made tensors with hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from routerops.training.verl import rl_math

torch = pytest.importorskip("torch")


def test_grpo_advantages_are_group_relative_and_masked() -> None:
    from verl.trainer.ppo import core_algos

    # Outcome rewards on the last valid token; groups "a" (1, 0), "b" (1, 1: equal rewards), "c" (one sample).
    rewards = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.5, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 1], [1, 0, 0], [1, 1, 0]], dtype=torch.float32)
    index = np.array(["a", "a", "b", "b", "c"], dtype=object)
    adv = rl_math.grpo_advantages(rewards.clone(), mask, index, norm_by_std=True)

    spread = 0.5 / math.sqrt(0.5)  # (1 - 0.5) / std([1, 0]) (unbiased std, as torch.std)
    expected = torch.tensor([[spread, spread, 0.0], [-spread, -spread, -spread], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0],
                             [0.5, 0.5, 0.0]])  # a lone sample keeps its reward (mean 0, std 1)
    assert torch.allclose(adv, expected, atol=1e-5)
    assert torch.count_nonzero(adv[2:4]) == 0  # a group with equal rewards learns nothing
    ref, _ = core_algos.compute_grpo_outcome_advantage(rewards.clone(), mask, index, norm_adv_by_std_in_grpo=True)
    assert torch.equal(adv, ref)


def test_grpo_advantages_without_the_std_keep_the_rewards_scale() -> None:
    # Group "a": every rollout wrong, rewards apart only by a cost term of 0.02; group "b": one
    # right. Divided by the std, the cost gap weighs as much as the right answer (both +-0.71);
    # without it each keeps its size (Dr. GRPO).
    rewards = torch.tensor([[0.0, -0.01], [0.0, -0.03], [0.0, 1.0], [0.0, 0.0]])
    mask = torch.ones(4, 2)
    index = np.array(["a", "a", "b", "b"], dtype=object)
    plain = rl_math.grpo_advantages(rewards.clone(), mask, index, norm_by_std=False)
    scaled = rl_math.grpo_advantages(rewards.clone(), mask, index, norm_by_std=True)
    assert torch.allclose(plain[:, 0], torch.tensor([0.01, -0.01, 0.5, -0.5]), atol=1e-6)
    assert torch.allclose(scaled[:, 0], torch.tensor([1.0, -1.0, 1.0, -1.0]) / math.sqrt(2), atol=1e-4)


def test_policy_loss_clips_the_ratio() -> None:
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    adv = torch.tensor([[1.0, -2.0, 5.0]])
    old = torch.tensor([[-1.0, -1.0, -1.0]])

    # Unchanged policy: ratio 1 everywhere, loss = -token-mean(advantage) over the mask.
    loss, metrics = rl_math.policy_loss(old, old.clone(), adv, mask, clip_ratio=0.2)
    assert loss.item() == pytest.approx(-(1.0 - 2.0) / 2)
    assert metrics["actor/pg_clipfrac"] == 0.0 and metrics["actor/ppo_kl"] == 0.0

    # Ratio e^0.5 on the first token (positive advantage: clipped at 1.2), e^-0.5 on the second
    # (negative advantage: clipped at 0.8, which costs more than the unclipped ratio).
    new = old + torch.tensor([[0.5, -0.5, 3.0]])
    loss, metrics = rl_math.policy_loss(old, new, adv, mask, clip_ratio=0.2)
    assert loss.item() == pytest.approx((-1.0 * 1.2 + 2.0 * 0.8) / 2)
    assert metrics["actor/pg_clipfrac"] == pytest.approx(1.0)


def test_kl_loss_is_verls_low_variance_estimator() -> None:
    from verl.trainer.ppo import core_algos

    log_prob = torch.tensor([[-1.0, -2.0, -3.0]])
    ref = torch.tensor([[-1.5, -2.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    kl = rl_math.kl_loss(log_prob, ref, mask)
    assert kl.item() == pytest.approx((math.exp(-0.5) + 0.5 - 1.0 + 0.0) / 2)  # k3: e^d - d - 1, d = ref - logp
    expected = core_algos.agg_loss(core_algos.kl_penalty(log_prob, ref, "low_var_kl"), mask, "token-mean")
    assert kl.item() == pytest.approx(expected.item())
    assert rl_math.kl_loss(log_prob, log_prob.clone(), mask).item() == 0.0
