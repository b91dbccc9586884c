"""GRPO from scratch: group-relative advantages, clipped surrogate, k3 KL, rollouts, rewards, tasks."""

from lmlab.rl.config import GRPOConfig
from lmlab.rl.grpo import (
    LOSS_TYPES,
    aggregate,
    clip_fraction,
    group_advantages,
    k3_kl,
    policy_loss,
    token_logprobs,
)
from lmlab.rl.rewards import RewardError, combine_rewards
from lmlab.rl.rollout import Rollout, rollout
from lmlab.rl.trainer import GRPOTrainer

__all__ = [
    "LOSS_TYPES",
    "GRPOConfig",
    "GRPOTrainer",
    "RewardError",
    "Rollout",
    "aggregate",
    "clip_fraction",
    "combine_rewards",
    "group_advantages",
    "k3_kl",
    "policy_loss",
    "rollout",
    "token_logprobs",
]
