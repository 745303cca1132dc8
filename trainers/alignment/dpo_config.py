"""``OneRecDPOConfig``: ``trl.DPOConfig`` plus ``ntp_weight``, ``dpo_weight``, the history/session knobs and a
``cdpo`` loss type (conservative DPO, which TRL 1.16 lacks: its ``sigmoid`` ignores ``label_smoothing``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

import torch
from trl import DPOConfig

logger = logging.getLogger(__name__)


SMOOTHED_LOSS_TYPES = {"robust", "exo_pair", "aot", "aot_unpaired", "cdpo"}  # those that read label_smoothing


@dataclass
class OneRecDPOConfig(DPOConfig):
    """``trl.DPOConfig`` for OneRec. Every DPOConfig field applies (``beta``, ``loss_type``, ``loss_weights``,
    ``label_smoothing``, ``precompute_ref_log_probs``, ``ld_alpha``, ``f_divergence_type``, ...); ``max_length``,
    ``truncation_mode``, ``padding_free`` and ``pad_to_multiple_of`` are not used (sessions are fixed-layout token
    lists, histories are cut by item count). Defaults that differ from DPOConfig are marked.

    The training loss is ``dpo_weight * L_DPO + ntp_weight * L_NTP(target) + router terms`` (paper: L_NTP + λ L_DPO),
    where L_DPO is TRL's loss for ``loss_type`` and the router terms are the model's own
    ``router_aux_loss_coef * aux + router_z_loss_coef * z`` (of the target pass; of the chosen/rejected pass when
    the batch has no targets).

    ``loss_type`` also accepts ``"cdpo"``, conservative DPO (Mitchell's note, the paper's cDPO row):
    ``(1 - ε) * -log σ(βΔ) + ε * -log σ(-βΔ)`` with ``ε = label_smoothing``. TRL 1.16 has no such loss (its
    ``sigmoid`` ignores ``label_smoothing``); it is computed as TRL's ``sigmoid`` loss plus ``ε β mean(Δ)``, the same
    value. ``robust`` is rDPO. A ``label_smoothing`` that no chosen loss type reads is an error, not silently ignored.
    """

    ntp_weight: float = field(
        default=1.0,
        metadata={
            "help": "Weight of the next-token loss on the real next session ('target' column) of each preference row."
        },
    )
    dpo_weight: float = field(default=1.0, metadata={"help": "λ of the paper: weight of the preference loss."})
    max_history_items: Optional[int] = field(
        default=None,
        metadata={
            "help": "History items the encoder reads (newest kept); default the model's config.max_history_items."
        },
    )
    session_length: Optional[int] = field(
        default=None,
        metadata={
            "help": "Target sessions are cut to this many items for the NTP term; default the model's "
            "config.session_length."
        },
    )
    # Overridden defaults
    learning_rate: float = field(
        default=2e-4,
        metadata={
            "help": "DPOConfig: 1e-6. Here the paper's 2e-4 (§5.1): IPA keeps training the model with NTP + λ DPO."
        },
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "The collator reads history/target/chosen/rejected item-id columns."}
    )
    gradient_checkpointing: Optional[bool] = field(
        default=None,
        metadata={
            "help": "DPOConfig: True. None here, so activation checkpointing stays off (transformers' default): sessions "
            "are short (m*(L+1)+1 tokens) and checkpointing would save little and cost time. (Deprecated alias of "
            "activation_checkpointing in transformers 5.)"
        },
    )
    bf16: Optional[bool] = field(
        default=None,
        metadata={
            "help": "None (default): bf16 mixed precision only on a CUDA device that supports it (DPOConfig turns it on "
            "everywhere, which fails on CPU)."
        },
    )

    def __post_init__(self):
        if self.bf16 is None:
            self.bf16 = bool(
                not self.fp16 and not self.use_cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
            )
        if self.ntp_weight < 0 or self.dpo_weight < 0:
            raise ValueError(f"ntp_weight and dpo_weight must be >= 0, got {self.ntp_weight} and {self.dpo_weight}.")
        if self.ntp_weight == 0 and self.dpo_weight == 0:
            raise ValueError("ntp_weight and dpo_weight are both 0: nothing would be trained.")
        if self.max_history_items is not None and self.max_history_items < 1:
            raise ValueError(f"max_history_items must be >= 1 or None, got {self.max_history_items}.")
        if self.session_length is not None and self.session_length < 1:
            raise ValueError(f"session_length must be >= 1 or None, got {self.session_length}.")
        super().__post_init__()  # turns a single loss_type string into a list
        if self.label_smoothing and not set(self.loss_type) & SMOOTHED_LOSS_TYPES:
            raise ValueError(
                f"label_smoothing={self.label_smoothing} has no effect with loss_type={self.loss_type} "
                f"(TRL's 'sigmoid' ignores it): use loss_type='cdpo' (conservative DPO) or 'robust' "
                f"(rDPO), or label_smoothing=0."
            )
        if "cdpo" in self.loss_type:
            if not 0 <= self.label_smoothing < 0.5:
                raise ValueError(f"loss_type 'cdpo' needs label_smoothing in [0, 0.5), got {self.label_smoothing}.")
            if self.f_divergence_type != "reverse_kl" or self.ld_alpha is not None or self.use_weighting:
                raise ValueError(
                    "loss_type 'cdpo' supports only f_divergence_type='reverse_kl', ld_alpha=None and "
                    "use_weighting=False."
                )
