"""Preference alignment of OneRec (paper §3.3): the session reward model, DPO on TRL, and Iterative Preference
Alignment (IPA) with self-hard negatives.

- `reward_model`: the session reward model's data collator, trainer and scorer;
- `session_scoring`: per-token and per-session log-probabilities of OneRec (what every preference loss reads);
- `dpo_config` / `dpo_collator` / `dpo_trainer`: `OneRecDPOConfig`, `PreferenceDataCollator`, `OneRecDPOTrainer`
  on TRL's `DPOTrainer` (encoder-decoder path);
- `ipa`: mining preference pairs with the reward model and the IPA loop;
- `policy_losses`: GRPO / ECPO / GBPO clipped-surrogate losses, group advantages and the k3 KL term (plain torch,
  the pieces of on-policy alignment).
"""

from .dpo_collator import PreferenceDataCollator
from .dpo_config import OneRecDPOConfig
from .dpo_trainer import OneRecDPOTrainer, disable_stochastic_layers
from .ipa import IPAConfig, IPAResult, PreferencePairs, SessionRewardFn, mine_preference_pairs, run_ipa
from .policy_losses import ecpo_loss, gbpo_loss, group_advantages, grpo_loss, kl_penalty
from .reward_model import (
    RewardDataCollator,
    RewardItemVocabulary,
    RewardModelTrainer,
    RewardModelTrainingConfig,
    SessionRewardScorer,
)
from .session_scoring import CodeTokenScores, SessionScorer, code_token_scores, session_log_probs

__all__ = [
    "CodeTokenScores",
    "IPAConfig",
    "IPAResult",
    "OneRecDPOConfig",
    "OneRecDPOTrainer",
    "PreferenceDataCollator",
    "PreferencePairs",
    "RewardDataCollator",
    "RewardItemVocabulary",
    "RewardModelTrainer",
    "RewardModelTrainingConfig",
    "SessionRewardFn",
    "SessionRewardScorer",
    "SessionScorer",
    "code_token_scores",
    "disable_stochastic_layers",
    "ecpo_loss",
    "gbpo_loss",
    "group_advantages",
    "grpo_loss",
    "kl_penalty",
    "mine_preference_pairs",
    "run_ipa",
    "session_log_probs",
]
