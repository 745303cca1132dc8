"""Preference alignment of OneRec (paper §3.3): the session reward model, DPO on TRL, and Iterative Preference
Alignment (IPA) with self-hard negatives.

- `reward_model`: the session reward model's data collator, trainer and scorer;
- `session_scoring`: per-token and per-session log-probabilities of OneRec (what every preference loss reads);
- `dpo_config` / `dpo_collator` / `dpo_trainer`: `OneRecDPOConfig`, `PreferenceDataCollator`, `OneRecDPOTrainer`
  on TRL's `DPOTrainer` (encoder-decoder path);
- `ipa`: mining preference pairs with the reward model and the IPA loop;
- `policy_losses`: GRPO / ECPO / GBPO clipped-surrogate losses, group advantages and the k3 KL term (plain torch,
  the pieces of on-policy alignment);
- `rollouts`: groups of sessions under the trie (beam search or sampling) and the policy's log-probability;
- `rewards`: TRL reward functions (the session reward model, the real next items of the training split);
- `grpo_config` / `grpo_trainer`: `OneRecGRPOConfig`, `OneRecGRPOTrainer` on TRL's `GRPOTrainer` (GRPO, ECPO, GBPO).
"""

from .dpo_collator import PreferenceDataCollator
from .dpo_config import OneRecDPOConfig
from .dpo_trainer import OneRecDPOTrainer, disable_stochastic_layers
from .grpo_config import OneRecGRPOConfig
from .grpo_trainer import OneRecGRPOTrainer
from .ipa import IPAConfig, IPAResult, PreferencePairs, SessionRewardFn, mine_preference_pairs, run_ipa
from .policy_losses import ecpo_loss, gbpo_loss, group_advantages, grpo_loss, kl_penalty
from .reward_model import (
    RewardDataCollator,
    RewardItemVocabulary,
    RewardModelTrainer,
    RewardModelTrainingConfig,
    SessionRewardScorer,
)
from .rewards import NextItemsReward, SessionRewardModelReward
from .rollouts import SessionGroups, constrained_token_log_probs, session_groups
from .session_scoring import CodeTokenScores, SessionScorer, code_token_scores, session_log_probs

__all__ = [
    "CodeTokenScores",
    "IPAConfig",
    "IPAResult",
    "NextItemsReward",
    "OneRecDPOConfig",
    "OneRecDPOTrainer",
    "OneRecGRPOConfig",
    "OneRecGRPOTrainer",
    "PreferenceDataCollator",
    "PreferencePairs",
    "RewardDataCollator",
    "RewardItemVocabulary",
    "RewardModelTrainer",
    "RewardModelTrainingConfig",
    "SessionGroups",
    "SessionRewardFn",
    "SessionRewardModelReward",
    "SessionRewardScorer",
    "SessionScorer",
    "code_token_scores",
    "constrained_token_log_probs",
    "disable_stochastic_layers",
    "ecpo_loss",
    "gbpo_loss",
    "group_advantages",
    "grpo_loss",
    "kl_penalty",
    "mine_preference_pairs",
    "run_ipa",
    "session_groups",
    "session_log_probs",
]
