"""``OneRecGRPOConfig``: ``trl.GRPOConfig`` plus the objective (GRPO / ECPO / GBPO), how groups are generated under
the trie, and the joint next-token loss."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from trl import GRPOConfig

OBJECTIVES = ("grpo", "ecpo", "gbpo")


@dataclass
class OneRecGRPOConfig(GRPOConfig):
    """``trl.GRPOConfig`` for OneRec. Every GRPOConfig field that concerns the loss and the schedule applies
    (``num_generations`` = the group size ``G``, ``num_iterations``, ``steps_per_generation``, ``epsilon``,
    ``epsilon_high``, ``beta``, ``loss_type``, ``scale_rewards``, ``reward_weights``, ``temperature``,
    ``multi_objective_aggregation``, ``log_completions``, ...). The generation settings of GRPOConfig (``use_vllm``,
    ``max_completion_length``, ``top_k``, ``top_p``, ``min_p``, ``repetition_penalty``, tools) are not used: a session's
    length is fixed by ``session_length`` and its tokens by the trie. Defaults that differ from GRPOConfig are marked.

    The training loss is ``objective's loss (+ beta * KL to the reference) + ntp_weight * NTP(target) + router terms``
    (OneRec trains the next-token loss on real sessions jointly with ECPO instead of a KL term).

    Groups never straddle processes: each process generates whole groups (``per_device_train_batch_size *
    steps_per_generation`` must be a multiple of ``num_generations``), so a beam search's ``G`` beams stay together.
    """

    objective: str = field(
        default="ecpo",
        metadata={
            "help": "'grpo' (TRL's clipped surrogate, its own _compute_loss), 'ecpo' (OneRec's early-clipped GRPO: "
            "the ratio of a negative advantage capped at 1 + epsilon + ecpo_delta) or 'gbpo' (OneRec-V2's "
            "gradient-bounded objective, no clipping)."
        },
    )
    ecpo_delta: float = field(default=0.1, metadata={"help": "ECPO's early-clip margin delta (OneRec: 0.1)."})
    rollout_strategy: str = field(
        default="beam",
        metadata={
            "help": "'beam': the G beams of the trie-constrained beam search (distinct; OneRec's choice). 'sample': G "
            "independent draws within the trie at `temperature` (a group may repeat a session)."
        },
    )
    search_backend: str = field(
        default="native",
        metadata={
            "help": "For rollout_strategy='beam': 'native' (the model's session beam search) or 'generate' "
            "(transformers' generate() with the tokenizer's prefix_allowed_tokens_fn; same sessions, slower)."
        },
    )
    ratio_level: str = field(
        default="token",
        metadata={
            "help": "Importance ratios per code token ('token', TRL's default) or per session ('session': the exact "
            "ratio pi(S)/pi_old(S), one per generated session). Only for objective 'ecpo' and 'gbpo'."
        },
    )
    ntp_weight: float = field(
        default=1.0,
        metadata={"help": "Weight of the next-token loss on each row's real next session ('target' column)."},
    )
    session_length: Optional[int] = field(
        default=None, metadata={"help": "Items per generated session m; default the model's config.session_length."}
    )
    exclude_history: bool = field(
        default=True, metadata={"help": "Generated sessions contain no item of the user's whole history."}
    )
    forbid_repeats: bool = field(default=True, metadata={"help": "No item twice in a generated session."})
    # Overridden defaults
    learning_rate: float = field(
        default=1e-4,
        metadata={"help": "GRPOConfig: 1e-6 (sized for LLMs). OneRec models are small and trained from scratch."},
    )
    disable_dropout: bool = field(
        default=True,
        metadata={
            "help": "GRPOConfig: False. True here: dropout, T5 attention dropout and router jitter off, so that the "
            "old, current and reference policies score a session alike."
        },
    )
    gradient_checkpointing: Optional[bool] = field(
        default=None,
        metadata={
            "help": "GRPOConfig: True. None here (off, transformers' default): sessions are a few tokens long, so "
            "checkpointing would save little memory and cost a second forward. (Deprecated alias of "
            "activation_checkpointing in transformers 5.)"
        },
    )
    bf16: Optional[bool] = field(
        default=None,
        metadata={"help": "None: bf16 mixed precision only on a CUDA device that supports it (GRPOConfig: always)."},
    )

    def __post_init__(self):
        if self.bf16 is None:
            self.bf16 = bool(
                not self.fp16 and not self.use_cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
            )
        choices = {
            "objective": OBJECTIVES,
            "rollout_strategy": ("beam", "sample"),
            "search_backend": ("native", "generate"),
            "ratio_level": ("token", "session"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}.")
        if self.ratio_level == "session" and self.objective == "grpo":
            raise ValueError(
                "ratio_level='session' is for objective 'ecpo' or 'gbpo'; 'grpo' is TRL's own loss, per token (its "
                "importance_sampling_level='sequence' is GSPO's geometric mean, a different ratio)."
            )
        if self.ntp_weight < 0:
            raise ValueError(f"ntp_weight must be >= 0, got {self.ntp_weight}.")
        if self.ecpo_delta < 0:
            raise ValueError(f"ecpo_delta must be >= 0, got {self.ecpo_delta}.")
        if self.session_length is not None and self.session_length < 1:
            raise ValueError(f"session_length must be >= 1 or None, got {self.session_length}.")
        if self.rollout_strategy == "beam" and self.num_generations < 2:
            raise ValueError(f"num_generations (the group size) must be >= 2, got {self.num_generations}.")
        super().__post_init__()
        local_batch = self.per_device_train_batch_size * self.steps_per_generation
        if local_batch % self.num_generations:
            raise ValueError(
                f"per_device_train_batch_size * steps_per_generation = {local_batch} is not a multiple of "
                f"num_generations = {self.num_generations}: a group would be split across processes (its beams come "
                f"from one search). Make per_device_train_batch_size a multiple of {self.num_generations}."
            )


__all__ = ["OBJECTIVES", "OneRecGRPOConfig"]
