"""OneRec session reward model R(u, S) (paper §3.3.1), used to pick preference pairs for DPO (§3.3.2).

For a user u (their history items) and a session S = {v_1, ..., v_m}:

1. target-aware item representations ``e_i = v_i ⊙ u``: each session item attends over the user's history
   (:class:`TargetAwareItemEncoder`);
2. the session items interact through self-attention layers, ``h_f = SelfAttention(h)`` (Eq. 5);
3. ``Sum(h_f)`` over the real session items feeds one tower per reward, ``r^xtr = Sigmoid(MLP(Sum(h_f)))`` (Eq. 6);
4. training minimises the binary cross-entropy summed over towers (Eq. 7, :func:`reward_bce_loss`).

Nothing uses item positions, so the reward is invariant to the order of the history and of the session.
Shapes: ``B`` batch, ``H`` history length, ``M`` session length, ``D`` hidden size, ``T`` number of rewards.
"""

from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_reward import REWARD_PAD_INDEX, OneRecRewardConfig
from .generation_onerec import eval_mode


@dataclass
class OneRecRewardOutput(ModelOutput):
    """Output of :class:`OneRecRewardModel`.

    Args:
        loss (`torch.FloatTensor` (a scalar), *optional*): Eq. (7), returned when ``labels`` are given.
        logits (`torch.FloatTensor` of shape ``[B, T]``): One logit per reward tower, in ``config.reward_names`` order.
        rewards (`torch.FloatTensor` of shape ``[B, T]``): ``sigmoid(logits)``, the estimated rewards ``r^xtr``.
    """

    loss: Optional[torch.FloatTensor] = None
    logits: Optional[torch.FloatTensor] = None
    rewards: Optional[torch.FloatTensor] = None


def reward_bce_loss(
    logits: torch.Tensor, labels: torch.Tensor, label_mask: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Eq. (7): binary cross-entropy summed over the reward towers, averaged over the batch.

    Args:
        logits (`torch.Tensor` of shape ``[B, T]``): Tower logits (before the sigmoid).
        labels (`torch.Tensor` of shape ``[B, T]``): Targets in ``[0, 1]``; soft labels (e.g. a normalised
            rating) are allowed.
        label_mask (`torch.Tensor` of shape ``[B, T]``, *optional*): 1 where the label exists, 0 where the sample
            lacks that target (its term is dropped). Default: every label exists.

    Returns:
        `torch.Tensor` (a scalar): ``sum_b sum_t mask * BCE(logits, labels) / B``.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (batch, num_rewards), got {tuple(logits.shape)}.")
    if labels.shape != logits.shape:
        raise ValueError(f"labels must have the shape of logits {tuple(logits.shape)}, got {tuple(labels.shape)}.")
    if label_mask is not None and label_mask.shape != logits.shape:
        raise ValueError(
            f"label_mask must have the shape of logits {tuple(logits.shape)}, got {tuple(label_mask.shape)}."
        )
    labels = labels.to(logits.dtype)
    terms = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    if label_mask is not None:
        # where() rather than a product: a missing label may hold any placeholder value.
        terms = torch.where(label_mask.bool(), terms, torch.zeros_like(terms))
    return terms.sum(dim=1).mean()


class TargetAwareItemEncoder(nn.Module):
    """``e_i = v_i ⊙ u``: each session item (query) attends over the user's history items (keys/values).

    The attended user vector ``u_i`` is specific to the item (target attention, as in DIN); ``e_i`` combines
    ``[v_i, u_i, v_i * u_i]`` through a linear layer, added to ``v_i`` (residual) and layer-normalised.
    Users without any history get ``u_i = 0``.
    """

    def __init__(self, hidden_size: int, num_heads: int, dropout: float):
        super().__init__()
        self.attention = nn.MultiheadAttention(hidden_size, num_heads, dropout=dropout, batch_first=True)
        self.combine = nn.Linear(3 * hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(hidden_size)

    def forward(
        self, session_embeds: torch.Tensor, history_embeds: torch.Tensor, history_mask: torch.Tensor
    ) -> torch.Tensor:
        """
        Args:
            session_embeds (`torch.Tensor` of shape ``[B, M, D]``): Item embeddings ``v_i``.
            history_embeds (`torch.Tensor` of shape ``[B, H, D]``): History item embeddings.
            history_mask (`torch.BoolTensor` of shape ``[B, H]``): True at real history items.

        Returns:
            `torch.Tensor` of shape ``[B, M, D]``: ``e_i``.
        """
        batch, length, width = session_embeds.shape
        has_history = history_mask.any(dim=1)  # [B]
        if history_embeds.shape[1] == 0:
            user = session_embeds.new_zeros(batch, length, width)
        else:
            # A row with no history would softmax over nothing (NaN): let it attend to its first (pad) slot,
            # then zero its result.
            ignore = ~history_mask
            ignore[:, 0] &= has_history
            user, _ = self.attention(
                session_embeds, history_embeds, history_embeds, key_padding_mask=ignore, need_weights=False
            )
            user = user * has_history[:, None, None].to(user.dtype)
        fused = self.combine(torch.cat([session_embeds, user, session_embeds * user], dim=-1))
        return self.norm(session_embeds + self.dropout(F.gelu(fused)))


class RewardTower(nn.Module):
    """``MLP(Sum(h_f)) -> logit`` for one reward (Eq. 6; the sigmoid is applied by the model)."""

    def __init__(self, hidden_size: int, tower_hidden_size: int, dropout: float):
        super().__init__()
        self.dense = nn.Linear(hidden_size, tower_hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(tower_hidden_size, 1)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` -> ``[B]`` logits."""
        return self.out(self.dropout(F.gelu(self.dense(pooled)))).squeeze(-1)


def masked_sum_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``Sum(h_f)`` over the real session items: ``[B, M, D]``, ``[B, M]`` bool -> ``[B, D]``. Padded slots add nothing
    whatever their hidden state holds."""
    return torch.where(mask[..., None], hidden, torch.zeros_like(hidden)).sum(dim=1)


class OneRecRewardModel(PreTrainedModel):
    """Session-wise reward model ``R(u, S)`` of OneRec (paper §3.3.1): target-aware item representations,
    session self-attention (Eq. 5), sum pooling and one tower per reward (Eq. 6), BCE loss (Eq. 7).

    Example::

        config = OneRecRewardConfig(num_items=vocab.num_indices, reward_names=("liked", "engaged"))
        model = OneRecRewardModel(config)
        out = model(history_ids=history, session_ids=session, labels=labels)   # out.loss, out.rewards [B, 2]
        model.score_sessions(history, candidate_sessions)                       # rewards [B, 2], no grad
    """

    config: OneRecRewardConfig
    config_class = OneRecRewardConfig
    base_model_prefix = "reward_model"
    main_input_name = "session_ids"

    def __init__(self, config: OneRecRewardConfig):
        super().__init__(config)
        width = config.hidden_size
        self.item_embeddings = nn.Embedding(config.num_items, width, padding_idx=REWARD_PAD_INDEX)
        self.item_encoder = TargetAwareItemEncoder(width, config.num_attention_heads, config.dropout)
        if config.num_session_layers > 0:
            layer = nn.TransformerEncoderLayer(
                width,
                config.num_attention_heads,
                config.session_intermediate_size,
                config.dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            # Pre-norm layers need a final norm; nested tensors stay off so that padded slots keep a defined state.
            self.session_encoder = nn.TransformerEncoder(
                layer, config.num_session_layers, norm=nn.LayerNorm(width), enable_nested_tensor=False
            )
        else:
            self.session_encoder = None
        self.towers = nn.ModuleDict(
            {name: RewardTower(width, config.tower_hidden_size, config.dropout) for name in config.reward_names}
        )
        self.post_init()

    def _init_weights(self, module):
        # transformers.initialization functions skip tensors already loaded by from_pretrained.
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
            # Slicing loses the "already loaded" flag: check it on the full weight.
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                init.zeros_(module.weight[module.padding_idx])
        elif isinstance(module, nn.MultiheadAttention):
            # Its q/k/v projection is a raw parameter, not an nn.Linear.
            init.normal_(module.in_proj_weight, mean=0.0, std=std)
            init.zeros_(module.in_proj_bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)

    # ------------------------------------------------------------------------------------------------

    def _check_inputs(
        self,
        history_ids: torch.Tensor,
        session_ids: torch.Tensor,
        labels: Optional[torch.Tensor],
        label_mask: Optional[torch.Tensor],
    ) -> None:
        config = self.config
        for name, ids, limit in (
            ("history_ids", history_ids, config.max_history_items),
            ("session_ids", session_ids, config.max_session_items),
        ):
            if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype not in (torch.long, torch.int32):
                raise ValueError(
                    f"{name} must be an integer tensor of shape (batch, length), got "
                    f"{type(ids).__name__} {tuple(getattr(ids, 'shape', ()))} "
                    f"{getattr(ids, 'dtype', '')}."
                )
            if ids.shape[1] > limit:
                raise ValueError(
                    f"{name} has {ids.shape[1]} positions, more than the config's limit {limit}; keep the "
                    f"newest {limit} items (the reward data collator does) or raise the config's limit."
                )
        if history_ids.shape[0] != session_ids.shape[0]:
            raise ValueError(
                f"history_ids has batch size {history_ids.shape[0]} but session_ids has "
                f"{session_ids.shape[0]}; pass one history per session."
            )
        expected = (session_ids.shape[0], config.num_rewards)
        for name, tensor in (("labels", labels), ("label_mask", label_mask)):
            if tensor is not None and tuple(tensor.shape) != expected:
                raise ValueError(
                    f"{name} must have shape (batch, num_rewards) = {expected} (rewards "
                    f"{list(config.reward_names)}), got {tuple(tensor.shape)}."
                )
        if label_mask is not None and labels is None:
            raise ValueError("label_mask was given without labels; pass labels too, or neither.")
        # Value checks: one device-to-host sync per forward; the details are only computed once something is wrong.
        flags = [
            ((history_ids < 0) | (history_ids >= config.num_items)).any(),
            ((session_ids < 0) | (session_ids >= config.num_items)).any(),
            (session_ids == REWARD_PAD_INDEX).all(dim=1).any(),
        ]
        if labels is not None:
            flags.append(((labels < 0) | (labels > 1)).any())
        if not bool(torch.stack(flags).any()):
            return
        for name, ids in (("history_ids", history_ids), ("session_ids", session_ids)):
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= config.num_items):
                raise ValueError(
                    f"{name} holds indices outside [0, num_items={config.num_items}) "
                    f"(min {int(ids.min())}, max {int(ids.max())}); map item ids with the "
                    "RewardItemVocabulary the model was trained with (0 = padding)."
                )
        empty = torch.nonzero((session_ids == REWARD_PAD_INDEX).all(dim=1)).flatten()
        if len(empty):
            raise ValueError(
                f"session_ids rows {empty[:5].tolist()} hold only padding (0); every session needs at least one item."
            )
        raise ValueError(
            f"labels must lie in [0, 1] (binary or soft targets), got values in "
            f"[{float(labels.min())}, {float(labels.max())}]."
        )

    def forward(
        self,
        history_ids: torch.LongTensor,
        session_ids: torch.LongTensor,
        labels: Optional[torch.FloatTensor] = None,
        label_mask: Optional[torch.Tensor] = None,
        return_dict: Optional[bool] = None,
    ) -> Union[OneRecRewardOutput, Tuple[torch.Tensor, ...]]:
        """Rewards of sessions for users.

        Args:
            history_ids (`torch.LongTensor` of shape ``[B, H]``): The user's history item indices, 0 = padding
                (anywhere; rows may be all padding for users without history).
            session_ids (`torch.LongTensor` of shape ``[B, M]``): Session item indices, 0 = padding; every row
                needs at least one item.
            labels (`torch.FloatTensor` of shape ``[B, T]``, *optional*): Targets in ``[0, 1]`` in
                ``config.reward_names`` order; gives ``loss`` (Eq. 7).
            label_mask (`torch.Tensor` of shape ``[B, T]``, *optional*): 1 where a label exists (see
                :func:`reward_bce_loss`).
            return_dict (`bool`, *optional*): Return a :class:`OneRecRewardOutput` (default) or a tuple.

        Returns:
            :class:`OneRecRewardOutput` with ``loss`` (with labels), ``logits`` ``[B, T]`` and ``rewards`` ``[B, T]``.
        """
        self._check_inputs(history_ids, session_ids, labels, label_mask)
        history_ids, session_ids = history_ids.long(), session_ids.long()
        session_mask = session_ids != REWARD_PAD_INDEX
        hidden = self.item_encoder(
            self.item_embeddings(session_ids), self.item_embeddings(history_ids), history_ids != REWARD_PAD_INDEX
        )  # h = {e_1..e_m}, [B, M, D]
        if self.session_encoder is not None:
            hidden = self.session_encoder(hidden, src_key_padding_mask=~session_mask)  # Eq. 5
        pooled = masked_sum_pool(hidden, session_mask)  # [B, D]
        logits = torch.stack([self.towers[name](pooled) for name in self.config.reward_names], dim=1)  # [B, T]
        loss = reward_bce_loss(logits, labels, label_mask) if labels is not None else None
        output = OneRecRewardOutput(loss=loss, logits=logits, rewards=torch.sigmoid(logits))
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()

    @torch.no_grad()
    def score_sessions(self, history_ids: torch.Tensor, session_ids: torch.Tensor) -> torch.Tensor:
        """Rewards ``R(u, S)`` ``[B, T]`` in eval mode without gradients (the training mode is restored after).

        Args:
            history_ids (`torch.Tensor` of shape ``[B, H]``): History item indices, 0 = padding.
            session_ids (`torch.Tensor` of shape ``[B, M]``): Session item indices, 0 = padding.
        """
        with eval_mode(self):
            device = self.item_embeddings.weight.device
            return self(
                history_ids=history_ids.to(device), session_ids=session_ids.to(device), return_dict=True
            ).rewards


def register_reward_auto_classes() -> None:
    """``AutoConfig`` / ``AutoModel`` resolve ``model_type: onerec_reward``; safe to call more than once."""
    from transformers import AutoConfig, AutoModel

    AutoConfig.register(OneRecRewardConfig.model_type, OneRecRewardConfig, exist_ok=True)
    AutoModel.register(OneRecRewardConfig, OneRecRewardModel, exist_ok=True)
    # save_pretrained then writes auto_map and copies these files, so trust_remote_code loading works elsewhere.
    OneRecRewardConfig.register_for_auto_class()
    OneRecRewardModel.register_for_auto_class("AutoModel")


__all__ = [
    "OneRecRewardModel",
    "OneRecRewardOutput",
    "RewardTower",
    "TargetAwareItemEncoder",
    "masked_sum_pool",
    "register_reward_auto_classes",
    "reward_bce_loss",
]
