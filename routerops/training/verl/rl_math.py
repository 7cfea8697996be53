"""verl's RL math for both backends: the local CPU trainer runs the same functions the GPU trainer runs.

GRPO advantages, the clipped PPO policy loss and the KL loss against the reference policy, each a
thin call into `verl.trainer.ppo.core_algos`, imported inside the functions so that importing this
module never pulls verl (or torch) in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from torch import Tensor

__all__ = ["grpo_advantages", "kl_loss", "policy_loss"]


@dataclass(frozen=True)
class _PolicyLossConfig:
    """The fields verl's vanilla policy loss reads from an ActorConfig, and nothing else."""

    clip_ratio: float
    clip_ratio_low: float | None = None
    clip_ratio_high: float | None = None
    clip_ratio_c: float = 3.0
    global_batch_info: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)


def grpo_advantages(token_level_rewards: Tensor, response_mask: Tensor, index: np.ndarray[Any, Any], *,
                    norm_by_std: bool) -> Tensor:
    """Group-relative outcome advantages: verl's compute_grpo_outcome_advantage, each reward less
    its group's mean and, with `norm_by_std`, divided by the group's standard deviation (GRPO as
    published; without it Dr. GRPO's unbiased form); `index` holds each row's group id (its
    question)."""
    from verl.trainer.ppo import core_algos

    advantages: Tensor
    advantages, _ = core_algos.compute_grpo_outcome_advantage(
        token_level_rewards=token_level_rewards, response_mask=response_mask, index=index,
        norm_adv_by_std_in_grpo=norm_by_std)
    return advantages


def policy_loss(old_log_prob: Tensor, log_prob: Tensor, advantages: Tensor, response_mask: Tensor,
                clip_ratio: float, loss_agg_mode: str = "token-mean") -> tuple[Tensor, dict[str, Any]]:
    """verl's clipped (dual-clip) PPO policy loss, token-mean aggregated."""
    from verl.trainer.ppo import core_algos

    # verl registers the function through a decorator whose type hides the signature; the
    # config it reads is duck-typed (`get` and attributes), which `_PolicyLossConfig` provides.
    loss_fn: Callable[..., tuple[Tensor, dict[str, Any]]] = core_algos.compute_policy_loss_vanilla
    return loss_fn(old_log_prob=old_log_prob, log_prob=log_prob, advantages=advantages, response_mask=response_mask,
                   loss_agg_mode=loss_agg_mode, config=_PolicyLossConfig(clip_ratio=clip_ratio))


def kl_loss(log_prob: Tensor, ref_log_prob: Tensor, response_mask: Tensor, kind: str = "low_var_kl") -> Tensor:
    """verl's KL estimator against the reference policy, aggregated like the actor's KL loss."""
    from verl.trainer.ppo import core_algos

    # verl annotates `torch.FloatTensor`, the legacy name of a float32 Tensor, which log-probs are.
    kl_fn: Callable[..., Tensor] = core_algos.kl_penalty
    kld = kl_fn(logprob=log_prob, ref_logprob=ref_log_prob, kl_penalty=kind)
    loss: Tensor = core_algos.agg_loss(loss_mat=kld, loss_mask=response_mask, loss_agg_mode="token-mean")
    return loss
