"""OneRec: T5 whose decoder FFNs are sparse Mixture-of-Experts (paper §3.2, Eq. 2).

Pieces, smallest first:

* :func:`route_tokens`, :func:`load_balancing_loss`, :func:`router_z_loss`, :func:`expert_capacity` -- standalone,
  tested functions (router top-k and the two auxiliary losses); :func:`router_loss_sums` /
  :class:`RouterLossSums` -- the same losses from per-layer sums, all layers at once: the model's loss and the
  multi-process trainer's (whose sums add over processes) both use them.
* :class:`OneRecRouter` -- the gate ``s = softmax(H e^T)``; :class:`OneRecExperts` -- stacked expert weights with
  grouped dispatch (tokens sorted by expert, one matmul per expert over its own tokens, never every expert on
  every token); :class:`OneRecSparseMLP` -- router + experts; :class:`OneRecLayerSparseFF` -- drop-in for T5's
  ``T5LayerFF`` (norm, MoE, dropout, residual).
* :func:`pool_history_items` -- one encoder position per history item (``config.history_encoding="items"``);
  :func:`history_prefix_buckets` and :class:`OneRecHistoryPrefixEmbedding` -- the hashed code prefix of each history
  token and its embedding (``config.history_prefix_buckets``); :func:`history_recency_ranks` and
  :class:`OneRecHistoryRecencyEmbedding` -- how recent each history token's item is, and its embedding
  (``config.history_recency_embeddings``); :class:`OneRecCrossAttentionRecencyBias` -- the same ranks as a learned
  bias on the decoder's cross-attention (``config.cross_attention_recency_bias``); :class:`OneRecEncoderStack` --
  T5's encoder stack, reading tokens or pooled items, with or without prefix and recency embeddings.
* :class:`OneRecDecoderStack` -- a ``T5Stack`` whose chosen layers use the sparse FFN.
* :class:`OneRecModel` (``AutoModel``) and :class:`OneRecForConditionalGeneration` (``AutoModelForSeq2SeqLM``).

With ``labels`` the loss is ``NTP + router_aux_loss_coef * aux + router_z_loss_coef * z``; the three terms and the
per-expert load are returned separately in :class:`OneRecSeq2SeqLMOutput`.

This file only depends on ``torch``, ``transformers`` and the other files of this folder: ``save_pretrained``
copies them next to the weights for ``trust_remote_code`` loading.
"""

import copy
import math
import numbers
from dataclasses import dataclass
from functools import partial
from typing import Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from huggingface_hub import ModelCard
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput
from transformers.models.t5.modeling_t5 import (
    T5Attention,
    T5ForConditionalGeneration,
    T5LayerNorm,
    T5Model,
    T5PreTrainedModel,
    T5Stack,
)
from transformers.utils import logging
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import OutputRecorder

from .configuration_onerec import OneRecConfig, SavedFolderLoading, level_offsets
from .model_card import render_model_card

logger = logging.get_logger(__name__)


# ----------------------------------------------------------------------------------------------------
# Routing and auxiliary losses (standalone functions)
# ----------------------------------------------------------------------------------------------------


def route_tokens(router_logits: torch.Tensor, top_k: int, normalize: bool = False):
    """Top-k gating of paper Eq. (2).

    Args:
        router_logits: ``[N, E]`` gate logits ``H e^T``.
        top_k: Experts per token (``K_MoE``).
        normalize: Renormalise the kept gate values to sum to one (the paper keeps raw softmax values).
    Returns:
        ``(gates [N, k], expert_index [N, k], router_probs [N, E])``; gates and probs in float32.
    """
    router_probs = torch.softmax(router_logits.float(), dim=-1)
    gates, expert_index = router_probs.topk(top_k, dim=-1)
    if normalize:
        gates = gates / gates.sum(dim=-1, keepdim=True)
    return gates, expert_index, router_probs


# Adapted from transformers.models.switch_transformers.modeling_switch_transformers.load_balancing_loss_func
def load_balancing_loss(
    router_probs: torch.Tensor, expert_index: torch.Tensor, token_mask: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Switch-Transformer load-balancing loss ``E * sum_i f_i * P_i`` (1.0 when perfectly balanced), of one layer: the
    plain reference of :meth:`RouterLossSums.losses`, which the model and the trainer use.

    ``f_i`` is the fraction of token->expert assignments that went to expert ``i`` (over all ``k`` choices),
    ``P_i`` the mean router probability of expert ``i``.

    Args:
        router_probs: ``[N, E]`` softmax of the router logits.
        expert_index: ``[N, k]`` chosen experts.
        token_mask: Optional ``[N]`` bool, ``False`` for tokens to ignore (padding).
    """
    num_experts = router_probs.shape[-1]
    assignments = F.one_hot(expert_index, num_experts).sum(dim=1).to(router_probs.dtype)  # [N, E]
    if token_mask is not None:
        weight = token_mask.reshape(-1, 1).to(router_probs.dtype)
        assignments, router_probs = assignments * weight, router_probs * weight
        num_tokens = weight.sum().clamp(min=1)
    else:
        num_tokens = torch.tensor(float(router_probs.shape[0]), device=router_probs.device).clamp(min=1)
    fraction_routed = assignments.sum(dim=0) / (num_tokens * expert_index.shape[-1])
    mean_probability = router_probs.sum(dim=0) / num_tokens
    return num_experts * (fraction_routed * mean_probability).sum()


# Adapted from transformers.models.switch_transformers.modeling_switch_transformers.router_z_loss_func
def router_z_loss(router_logits: torch.Tensor, token_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """ST-MoE router z-loss: mean over tokens of ``logsumexp(router_logits)**2`` (keeps logits small), of one layer: the
    plain reference of :meth:`RouterLossSums.losses`.

    Args:
        router_logits: ``[N, E]`` raw logits (not probabilities).
        token_mask: Optional ``[N]`` bool, ``False`` for tokens to ignore.
    """
    squared = torch.logsumexp(router_logits.float(), dim=-1) ** 2
    if token_mask is None:
        return squared.mean()
    weight = token_mask.reshape(-1).to(squared.dtype)
    return (squared * weight).sum() / weight.sum().clamp(min=1)


class RouterLossSums(NamedTuple):
    """Per sparse layer sums over the counted tokens: what the load-balancing and z losses are made of.

    Sums rather than means, so that several processes' sums add up to one process's (``global_batch_losses`` in
    ``trainers/pretraining.py`` all-reduces ``assignments`` and ``num_tokens``). Built by :func:`router_loss_sums`;
    :meth:`losses` is the formula from sums to ``(aux, z)``, :meth:`expert_load` the per-expert share.
    """

    assignments: torch.Tensor  # [layers, E] float32, token->expert assignments per expert (all k choices)
    probability_sums: torch.Tensor  # [layers, E] float32, router probabilities summed over tokens
    z_sums: torch.Tensor  # [layers] float32, logsumexp(router_logits)**2 summed over tokens
    num_tokens: torch.Tensor  # [] float32, tokens counted

    def losses(self, top_k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(aux, z)``, each averaged over layers: per layer ``E * sum_i f_i * P_i`` (``f_i = assignments_i /
        (tokens * k)``, ``P_i = probability_sums_i / tokens``) and ``z_sums / tokens``. Equal to the means over
        layers of :func:`load_balancing_loss` and :func:`router_z_loss` (a test checks it)."""
        num_tokens = self.num_tokens.clamp(min=1)
        num_experts = self.assignments.shape[-1]
        fraction_routed = self.assignments / (num_tokens * top_k)
        mean_probability = self.probability_sums / num_tokens
        aux = (num_experts * (fraction_routed * mean_probability).sum(dim=-1)).mean()
        return aux, (self.z_sums / num_tokens).mean()

    def expert_load(self) -> torch.Tensor:
        """``[layers, E]``: each layer's fraction of assignments per expert (rows sum to 1; ``1/E`` is balance)."""
        return self.assignments / self.assignments.sum(dim=-1, keepdim=True).clamp(min=1)


def router_loss_sums(
    router_logits: Sequence[torch.Tensor], top_k: int, token_mask: Optional[torch.Tensor] = None
) -> RouterLossSums:
    """The :class:`RouterLossSums` of the sparse layers' router logits, all layers in one batched computation.

    Args:
        router_logits: Per sparse layer ``[N, E]`` (``output.router_logits``; the same ``N`` in every layer).
        top_k: Experts per token.
        token_mask: Optional ``[N]`` bool, ``False`` for tokens that do not count (padding).
    """
    device = router_logits[0].device
    logits = torch.stack([layer.to(device).float() for layer in router_logits])  # [layers, N, E]
    _, expert_index, router_probs = route_tokens(logits, top_k)  # [layers, N, k], [layers, N, E]
    if token_mask is None:
        weight = torch.ones(logits.shape[1], dtype=torch.float32, device=device)
    else:
        weight = token_mask.reshape(-1).to(device=device, dtype=torch.float32)
    assignments = F.one_hot(expert_index, logits.shape[-1]).sum(dim=2).float()  # [layers, N, E]
    squared = torch.logsumexp(logits, dim=-1) ** 2  # [layers, N]
    return RouterLossSums(
        assignments=(assignments * weight[:, None]).sum(dim=1),
        probability_sums=(router_probs * weight[:, None]).sum(dim=1),
        z_sums=(squared * weight).sum(dim=1),
        num_tokens=weight.sum(),
    )


def expert_load(
    router_logits: Sequence[torch.Tensor], top_k: int, token_mask: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """``[num_sparse_layers, E]``: each sparse layer's fraction of token->expert assignments per expert (rows sum to
    1; ``1/E`` everywhere is perfect balance).

    Args:
        router_logits: Per sparse layer ``[N, E]`` (``output.router_logits``).
        top_k: Experts per token.
        token_mask: Optional ``[N]`` bool, the tokens that count (padding excluded).
    """
    return router_loss_sums(router_logits, top_k, token_mask).expert_load()


def level_restricted_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, level_offsets: Sequence[int], vocab_size: int
) -> torch.Tensor:
    """Next-token loss of paper Eq. (4): cross-entropy over the semantic-ID code tokens only, each normalised over
    its own level's codes.

    The decoder layout fixes which level every position holds (``BOS c1 .. cL`` per item), so the model need not
    spend capacity learning *which kind* of token comes next; BOS/EOS labels are structure (constrained decoding
    forces them) and are not scored. This is also what renormalised constrained decoding computes.

    Args:
        logits: ``[B, T, V]``.
        labels: ``[B, T]`` token ids, ``-100`` = ignored.
        level_offsets: First token id of each level (``config.level_offsets``).
        vocab_size: ``V``; the last level ends there.
    Returns:
        Mean loss per code token (a zero that keeps the graph when no position holds a code).

    ``tests/test_modeling_onerec.py`` checks it against a per-level reference with boolean indexing.
    """
    bounds = list(level_offsets) + [vocab_size]
    flat_logits, flat_labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1).to(logits.device)
    # Every level's log-softmax on every position, then each position keeps its own level's term: fixed shapes, no
    # boolean indexing, no host synchronisation (the loss is on every training step's path).
    token_loss = flat_logits.new_zeros(flat_labels.shape, dtype=torch.float32)
    is_code = torch.zeros_like(flat_labels, dtype=torch.bool)
    for start, end in zip(bounds[:-1], bounds[1:]):
        at_level = (flat_labels >= start) & (flat_labels < end)
        level_logits = flat_logits[:, start:end].float()
        target = (flat_labels - start).clamp(0, end - start - 1)
        nll = torch.logsumexp(level_logits, dim=-1) - level_logits.gather(1, target[:, None]).squeeze(1)
        token_loss = torch.where(at_level, nll, token_loss)
        is_code = is_code | at_level
    # No code position at all: a zero that keeps the graph (token_loss is all zeros then).
    return token_loss.sum() / is_code.sum().clamp(min=1)


def code_token_mask(tokens: torch.Tensor, level_offsets: Sequence[int], vocab_size: int) -> torch.Tensor:
    """``tokens``' positions that hold a semantic-ID code token (ids from ``level_offsets[0]`` to the end of the
    vocabulary, as in a ``OneRecConfig`` or a ``SemanticIDTokenizer``): the model's decisions, where BOS, EOS, PAD
    and ``-100`` are forced or absent."""
    return (tokens >= level_offsets[0]) & (tokens < vocab_size)


def ntp_token_mask(labels: torch.Tensor, config) -> torch.Tensor:
    """``[B * T]`` bool: the label positions the next-token loss averages over.

    The code tokens (ids from ``config.level_offsets[0]`` to the end of the vocabulary) under the level-restricted
    loss (:func:`level_restricted_cross_entropy`); every labelled position (not ``-100``) otherwise.
    """
    flat = labels.reshape(-1)
    if config.codebook_sizes is not None and config.level_restricted_loss:
        return code_token_mask(flat, config.level_offsets, config.vocab_size)
    return flat != -100


def expert_capacity(num_tokens: int, top_k: int, num_experts: int, capacity_factor: Optional[float]) -> Optional[int]:
    """Most assignments one expert takes in a forward: ``ceil(factor * tokens * k / E)``; ``None`` = unlimited."""
    if capacity_factor is None:
        return None
    return max(1, math.ceil(capacity_factor * num_tokens * top_k / num_experts))


# ----------------------------------------------------------------------------------------------------
# Dropout with a cheaper random stream on CPUs
# ----------------------------------------------------------------------------------------------------

# Keep probabilities are resolved to 1/32768: p = 0.1 drops with probability 3277/32768 = 0.10001.
_DROPOUT_RESOLUTION = 1 << 15


def cpu_dropout_keep_mask(shape, p: float, device=None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``[*shape]`` bool, each element ``True`` (kept) with probability ``1 - p`` (``p`` resolved to 1/32768).

    Why: on a CPU, ``nn.Dropout`` draws one Mersenne-Twister number per element (``bernoulli_``), 30-40% of a `small`
    training step. Here every 64-bit draw of ``random_()`` gives four 15-bit uniforms (the top bit of each 16-bit
    quarter is dropped, since ``random_()`` leaves the top bit of an int64 clear): about 7x fewer draws, from the same
    generator (``torch.manual_seed`` / the Trainer's saved RNG states make runs repeatable and resumable).
    """
    numel = math.prod(shape)
    words = torch.empty((numel + 3) // 4, dtype=torch.int64, device=device).random_(generator=generator)
    uniforms = words.view(torch.int16)[:numel].bitwise_and_(_DROPOUT_RESOLUTION - 1)
    return (uniforms >= round(p * _DROPOUT_RESOLUTION)).view(shape)


class OneRecDropout(nn.Dropout):
    """``nn.Dropout`` (inverted: kept values scaled by ``1 / (1 - p)``) whose CPU mask comes from
    :func:`cpu_dropout_keep_mask`; elsewhere (GPUs: a fused Philox kernel already) it is ``nn.Dropout``.
    Under ``torch.compile`` it is ``nn.Dropout`` too (compiled code draws its own random numbers).
    ``tests/test_modeling_onerec.py`` checks it against ``nn.Dropout``: drop rate, scaling, gradients, eval mode."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if (
            not self.training
            or self.p == 0
            or hidden_states.device.type != "cpu"
            or self.inplace
            or torch.compiler.is_compiling()  # compiled code draws its own random numbers (inductor)
        ):
            return super().forward(hidden_states)
        if self.p == 1:
            return hidden_states * 0
        keep = cpu_dropout_keep_mask(hidden_states.shape, self.p, hidden_states.device)
        return hidden_states.mul(keep).mul_(1.0 / (1.0 - self.p))


def use_onerec_dropout(module: nn.Module) -> None:
    """Replace every ``nn.Dropout`` under ``module`` by :class:`OneRecDropout` with the same rate (T5's layers build
    plain ``nn.Dropout``; the attention-probability dropout of T5's attention functions is untouched)."""
    for name, child in module.named_children():
        if type(child) is nn.Dropout:
            setattr(module, name, OneRecDropout(child.p))
        else:
            use_onerec_dropout(child)


# ----------------------------------------------------------------------------------------------------
# MoE modules
# ----------------------------------------------------------------------------------------------------


class OneRecRouter(nn.Module):
    """Gate logits ``H e^T`` (``[N, d] -> [N, E]``, float32), with optional multiplicative jitter while training."""

    def __init__(self, config: OneRecConfig):
        super().__init__()
        self.jitter_noise = config.router_jitter_noise
        self.weight = nn.Parameter(torch.empty(config.num_experts, config.d_model))  # one row e_i per expert

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.training and self.jitter_noise > 0:
            noise = torch.empty_like(hidden_states).uniform_(1.0 - self.jitter_noise, 1.0 + self.jitter_noise)
            hidden_states = hidden_states * noise
        # Routing decisions are sensitive to rounding: compute them in float32 (Switch "selective precision").
        return F.linear(hidden_states.float(), self.weight.float())


class OneRecExperts(nn.Module):
    """``E`` expert FFNs with stacked weights and grouped dispatch.

    Parameters: ``input_proj [E, d, f]`` (``[E, d, 2f]`` for gated activations) and ``output_proj [E, f, d]``.
    (Not named ``wi``/``wo``: T5 keeps every weight whose name contains ``wo`` in float32.)
    """

    # Weights are [experts, in_features, out_features] (used as ``x @ W[e]``). PEFT (LoRA ``target_parameters``) reads
    # this flag, as transformers' ``use_experts_implementation(is_transposed=True)`` experts set it; without it PEFT
    # takes 3-D weights as [experts, out, in] and swaps the roles of lora_A and lora_B.
    is_transposed = True

    def __init__(self, config: OneRecConfig):
        super().__init__()
        self.num_experts = config.num_experts
        self.dispatch = config.expert_dispatch
        self.is_gated = config.is_gated_act
        hidden = config.expert_hidden_size
        self.input_proj = nn.Parameter(
            torch.empty(config.num_experts, config.d_model, hidden * (2 if self.is_gated else 1))
        )
        self.output_proj = nn.Parameter(torch.empty(config.num_experts, hidden, config.d_model))
        self.act = ACT2FN[config.dense_act_fn]
        self.dropout = OneRecDropout(config.dropout_rate)

    def expert_ffn(
        self, hidden_states: torch.Tensor, input_weight: torch.Tensor, output_weight: torch.Tensor, matmul=torch.matmul
    ) -> torch.Tensor:
        """One expert FFN: ``[n, d] @ [d, f] -> act -> @ [f, d]`` (gated: ``[d, 2f]``, gate half first); ``matmul``
        is ``torch.matmul`` or, for all experts at once, a grouped matmul."""
        hidden = matmul(hidden_states, input_weight)
        if self.is_gated:
            gate, linear = hidden.chunk(2, dim=-1)
            hidden = self.act(gate) * linear
        else:
            hidden = self.act(hidden)
        return matmul(self.dropout(hidden), output_weight)

    def sort_by_expert(self, expert_index: torch.Tensor, gates: torch.Tensor, capacity: Optional[int]):
        """The token->expert assignments sorted by expert (stable: within an expert, token order decides who is
        dropped at capacity).

        Returns:
            ``(sorted_token [N*k], sorted_gate [N*k], counts [E], within_capacity)``: each assignment's token and
            gate, the assignments per expert, and ``[N*k]`` bool ``True`` where an assignment is within
            ``capacity`` (``None`` without a capacity).
        """
        top_k = expert_index.shape[1]
        flat_expert = expert_index.reshape(-1)
        order = torch.argsort(flat_expert, stable=True)
        sorted_token = torch.div(order, top_k, rounding_mode="floor")
        counts = torch.bincount(flat_expert, minlength=self.num_experts)
        within_capacity = None
        if capacity is not None:
            starts = torch.cumsum(counts, 0) - counts
            rank_in_expert = torch.arange(order.numel(), device=order.device) - starts[flat_expert[order]]
            within_capacity = rank_in_expert < capacity
        return sorted_token, gates.reshape(-1)[order], counts, within_capacity

    @staticmethod
    def combine(hidden_states: torch.Tensor, expert_outputs, sorted_token, sorted_gate) -> torch.Tensor:
        """``[N, d]``: each token's gate-weighted sum of its assignments' expert outputs."""
        weighted = expert_outputs * sorted_gate.to(expert_outputs.dtype)[:, None]
        return torch.zeros_like(hidden_states).index_add_(0, sorted_token, weighted.to(hidden_states.dtype))

    def expert_forward(self, expert: int, hidden_states: torch.Tensor) -> torch.Tensor:
        """Expert ``expert`` alone on some tokens: ``[n, d] -> [n, d]``."""
        return self.expert_ffn(hidden_states, self.input_proj[expert], self.output_proj[expert])

    def forward(
        self,
        hidden_states: torch.Tensor,
        expert_index: torch.Tensor,
        gates: torch.Tensor,
        capacity: Optional[int] = None,
    ) -> torch.Tensor:
        """Gate-weighted sum of each token's chosen experts.

        Args:
            hidden_states: ``[N, d]``.
            expert_index: ``[N, k]`` chosen experts.
            gates: ``[N, k]`` their gate values.
            capacity: Optional cap on assignments per expert; later tokens over the cap are dropped.
        Returns:
            ``[N, d]`` (zero for a token whose every assignment was dropped).
        """
        if self.dispatch == "dense":
            if capacity is not None:
                raise ValueError("expert_dispatch='dense' has no capacity limit; use expert_dispatch='grouped'.")
            return self.dense_forward(hidden_states, expert_index, gates)
        if self.dispatch == "grouped_mm":
            return self.grouped_mm_forward(hidden_states, expert_index, gates, capacity)
        sorted_token, sorted_gate, counts, within_capacity = self.sort_by_expert(expert_index, gates, capacity)
        if within_capacity is not None:
            sorted_token, sorted_gate = sorted_token[within_capacity], sorted_gate[within_capacity]
            counts = counts.clamp(max=capacity)

        grouped_inputs = hidden_states[sorted_token].split(counts.tolist())
        # unbind once, not input_proj[e] per expert: indexing makes autograd build a full-size [E, ...] zero gradient
        # per expert and sum them (6x slower backward on CPU at 24 experts); unbind's backward is one stack.
        input_weights, output_weights = self.input_proj.unbind(0), self.output_proj.unbind(0)
        grouped_outputs = [
            self.expert_ffn(tokens, input_weights[expert], output_weights[expert])
            for expert, tokens in enumerate(grouped_inputs)
            if tokens.shape[0] > 0
        ]
        expert_outputs = (
            torch.cat(grouped_outputs) if grouped_outputs else hidden_states.new_zeros((0, hidden_states.shape[-1]))
        )
        return self.combine(hidden_states, expert_outputs, sorted_token, sorted_gate)

    def grouped_mm_forward(
        self,
        hidden_states: torch.Tensor,
        expert_index: torch.Tensor,
        gates: torch.Tensor,
        capacity: Optional[int] = None,
    ) -> torch.Tensor:
        """``expert_dispatch="grouped_mm"``: the grouped path (same arguments and result, a test checks it) in two
        ``torch.nn.functional.grouped_mm`` calls over the expert-sorted assignments, whose group ends are a device
        tensor: only the chosen experts' FLOPs, fixed shapes, no host synchronisation, so the training step compiles
        to one graph. Assignments over ``capacity`` keep their place and get a zero gate (the grouped path drops
        them: the same output, the FLOPs of at most ``N * k`` assignments)."""
        sorted_token, sorted_gate, counts, within_capacity = self.sort_by_expert(expert_index, gates, capacity)
        if within_capacity is not None:
            sorted_gate = torch.where(within_capacity, sorted_gate, torch.zeros_like(sorted_gate))
        # grouped_mm is not on autocast's cast lists (torch 2.13): cast to the autocast dtype here, as a linear would.
        dtype = (
            torch.get_autocast_dtype(hidden_states.device.type)
            if torch.is_autocast_enabled(hidden_states.device.type)
            else hidden_states.dtype
        )
        grouped = partial(F.grouped_mm, offs=torch.cumsum(counts, 0).to(torch.int32))
        expert_outputs = self.expert_ffn(
            hidden_states[sorted_token].to(dtype), self.input_proj.to(dtype), self.output_proj.to(dtype), grouped
        )
        return self.combine(hidden_states, expert_outputs, sorted_token, sorted_gate)

    def dense_forward(
        self, hidden_states: torch.Tensor, expert_index: torch.Tensor, gates: torch.Tensor
    ) -> torch.Tensor:
        """``expert_dispatch="dense"``: every expert on every token (``[E, N, d]`` batched matmuls), outputs weighted
        by a ``[N, E]`` gate matrix that is zero outside each token's top-k. Same arguments and result as the grouped
        path (a test checks it), fixed shapes, no host synchronisation."""
        weights = torch.zeros(hidden_states.shape[0], self.num_experts, dtype=gates.dtype, device=gates.device)
        weights = weights.scatter(1, expert_index, gates)  # [N, E]
        expert_outputs = self.expert_ffn(hidden_states.unsqueeze(0), self.input_proj, self.output_proj)  # [E, N, d]
        combined = torch.einsum("end,ne->nd", expert_outputs, weights.to(expert_outputs.dtype))
        return combined.to(hidden_states.dtype)


class OneRecSparseMLP(nn.Module):
    """Router + experts: ``[..., d] -> [..., d]`` (paper Eq. 2 without the residual). The router's logits are
    recorded by transformers' output recording (``output_router_logits=True``), not kept here."""

    def __init__(self, config: OneRecConfig):
        super().__init__()
        self.top_k = config.num_experts_per_token
        self.normalize = config.normalize_expert_weights
        self.capacity_factor = config.expert_capacity_factor
        self.router = OneRecRouter(config)
        self.experts = OneRecExperts(config)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shape = hidden_states.shape
        flat = hidden_states.reshape(-1, shape[-1])
        router_logits = self.router(flat)
        gates, expert_index, _ = route_tokens(router_logits, self.top_k, self.normalize)
        capacity = expert_capacity(flat.shape[0], self.top_k, self.experts.num_experts, self.capacity_factor)
        return self.experts(flat, expert_index, gates, capacity).reshape(shape)


# Adapted from transformers.models.t5.modeling_t5.T5LayerFF
class OneRecLayerSparseFF(nn.Module):
    """Drop-in replacement for ``T5LayerFF``: ``H + dropout(MoE(norm(H)))`` (``T5Block`` expects one tensor back)."""

    def __init__(self, config: OneRecConfig):
        super().__init__()
        self.mlp = OneRecSparseMLP(config)
        self.layer_norm = T5LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.dropout = OneRecDropout(config.dropout_rate)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states + self.dropout(self.mlp(self.layer_norm(hidden_states)))


# ----------------------------------------------------------------------------------------------------
# Pretrained base, stacks, models
# ----------------------------------------------------------------------------------------------------


class OneRecPreTrainedModel(SavedFolderLoading, T5PreTrainedModel):
    """T5's initialisation plus the MoE modules (router, stacked experts); ``from_pretrained`` with clear errors for
    a missing folder or a corrupted file (:class:`~.configuration_onerec.SavedFolderLoading`)."""

    config: OneRecConfig
    config_class = OneRecConfig
    base_model_prefix = "transformer"
    _no_split_modules = ["T5Block"]
    # Routing decisions are sensitive to rounding (Switch Transformers' "selective precision"): the router weights stay
    # float32 when the model is loaded in float16 or bfloat16, and the router computes in float32.
    _keep_in_fp32_modules_strict = ["router"]
    # T5's recorded outputs plus each sparse layer's router logits ([N, E], in layer order), captured by the decoder
    # stack's forward when it is called with output_router_logits=True (as Switch Transformers and Mixtral do).
    _can_record_outputs = {**T5PreTrainedModel._can_record_outputs, "router_logits": OutputRecorder(OneRecRouter)}
    # The default grouped expert dispatch sizes its token groups on the host (one sync per sparse layer), so the
    # model as a whole does not compile to one graph; with expert_dispatch="dense" the training forward does
    # (tests/test_modeling_onerec.py::test_training_forward_traces_as_one_graph_with_dense_dispatch).
    _can_compile_fullgraph = False

    # Adapted from transformers.modeling_utils.PreTrainedModel.initialize_weights
    @torch.no_grad()
    @init.guard_torch_init_functions()
    def initialize_weights(self):
        """``_init_weights`` on every module not yet initialised, children before parents, each PreTrainedModel
        sub-stack with its own ``_init_weights`` -- what transformers does for its own models.

        Spelled out because transformers (5.24) skips parameter-less parent modules for code outside its package
        (``is_custom_code()``), and T5 initialises q/k/v/o and the FFN weights from exactly those parents
        (``T5Attention``, ``T5DenseActDense``): skipped, they kept the generic N(0, initializer_factor=1.0), a decoder
        about 15x too large (regression test: ``test_initialisation_matches_t5_for_every_shared_weight``). All our init goes through
        ``transformers.initialization``, which leaves loaded (flagged) tensors alone, so ``from_pretrained`` is safe.
        """

        def visit(module: nn.Module, init_fn) -> None:
            for child in module.children():
                visit(child, child._init_weights if isinstance(child, PreTrainedModel) else init_fn)
            if not getattr(module, "_is_hf_initialized", False):
                init_fn(module)
                module._is_hf_initialized = True

        visit(self, self._init_weights)

    def _init_weights(self, module):
        super()._init_weights(module)
        factor = self.config.initializer_factor
        if isinstance(module, OneRecForConditionalGeneration) and not self.config.tie_output_embeddings:
            init.normal_(module.lm_head.weight, mean=0.0, std=factor * 1.0)  # as T5 initialises the shared matrix
        elif isinstance(module, OneRecExperts):
            init.normal_(module.input_proj, mean=0.0, std=factor * self.config.d_model**-0.5)
            init.normal_(module.output_proj, mean=0.0, std=factor * self.config.expert_hidden_size**-0.5)
        elif isinstance(module, OneRecRouter):
            init.normal_(module.weight, mean=0.0, std=factor * self.config.d_model**-0.5)
        elif isinstance(module, (OneRecHistoryPrefixEmbedding, OneRecHistoryRecencyEmbedding)):
            init.zeros_(module.embedding.weight)  # the model starts as the one without them
        elif isinstance(module, OneRecCrossAttentionRecencyBias):
            init.zeros_(module.bias.weight)
        elif isinstance(module, OneRecNewestItemDecoderInput):
            init.zeros_(module.projection.weight)  # the model starts as the one without it

    def save_pretrained(self, save_directory, *args, **kwargs):
        """As transformers', with both heads in ``auto_map``, so that ``AutoModel`` and ``AutoModelForSeq2SeqLM`` load
        the folder with ``trust_remote_code`` (``register_for_auto_class`` records one class). The model card is
        separate: :meth:`model_card`."""
        self.config.auto_map = {
            **(getattr(self.config, "auto_map", None) or {}),
            "AutoModel": "modeling_onerec.OneRecModel",
            "AutoModelForSeq2SeqLM": "modeling_onerec.OneRecForConditionalGeneration",
        }
        return super().save_pretrained(save_directory, *args, **kwargs)

    def model_card(self, **fields) -> ModelCard:
        """This model's card, a ``huggingface_hub.ModelCard`` rendered from the config
        (:func:`~.model_card.render_model_card`; ``fields`` fill its free-text sections, e.g. ``model_name``,
        ``data_summary``, ``training_summary``, ``results_table``, ``tags``).

        ``model.model_card(...).save(f"{folder}/README.md")`` next to ``save_pretrained(folder)``;
        ``model.model_card(model_name=repo_id).push_to_hub(repo_id)`` after ``push_to_hub(repo_id)``, which uploads
        transformers' generic card. ``OneRecPretrainer.push_to_hub`` uploads this card by itself.
        """
        return ModelCard(render_model_card(self.config, **fields))


def pool_history_items(
    token_embeddings: torch.Tensor, attention_mask: Optional[torch.Tensor], tokens_per_item: int
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One position per history item: the sum of its code tokens' embeddings.

    The tokenizer writes a history as ``L = tokens_per_item`` code tokens per item, then EOS, then padding, so the
    tokens ``[j * L, (j + 1) * L)`` are item ``j`` (the EOS, alone in its group, is one more position).

    Args:
        token_embeddings: ``[B, T, d]`` embeddings of the encoder's ``input_ids``.
        attention_mask: ``[B, T]``, 1 on real tokens (``None``: all real); masked tokens add nothing.
        tokens_per_item: ``L``, the tokens of one item (``len(config.codebook_sizes)``).

    Returns:
        ``(item_embeddings [B, ceil(T / L), d], item_mask [B, ceil(T / L)], token_to_item [T])``: ``item_mask`` is 1
        where a group holds a real token; ``token_to_item[t] = t // L`` maps the items' states back onto the tokens.
    """
    batch, length, width = token_embeddings.shape
    if attention_mask is None:
        attention_mask = torch.ones(batch, length, dtype=torch.long, device=token_embeddings.device)
    groups = -(-length // tokens_per_item)
    padding = groups * tokens_per_item - length
    mask = F.pad(attention_mask.to(token_embeddings.device), (0, padding))
    embeddings = F.pad(token_embeddings, (0, 0, 0, padding)) * mask.unsqueeze(-1).to(token_embeddings.dtype)
    item_embeddings = embeddings.reshape(batch, groups, tokens_per_item, width).sum(dim=2)
    item_mask = mask.reshape(batch, groups, tokens_per_item).amax(dim=2)
    token_to_item = torch.arange(length, device=token_embeddings.device) // tokens_per_item
    return item_embeddings, item_mask, token_to_item


_PREFIX_MODULUS = 2**31 - 1
# Odd multipliers of the prefix hash, one per level: the same prefix value at two levels lands in unrelated buckets.
_PREFIX_HASH_MULTIPLIERS = (0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D, 0x27D4EB2F, 0x165667B1, 0xD3A2646D, 0xFD7046C5)


def history_prefix_buckets(input_ids: torch.Tensor, codebook_sizes: List[int], num_buckets: int) -> torch.Tensor:
    """The bucket of each history token's code prefix: for the token of level ``l >= 1`` of an item, a hash of the
    item's codes ``(c_0, ..., c_l)`` into ``[0, num_buckets)``; -1 for level-0 tokens, EOS and padding.

    The tokenizer writes a history as ``L = len(codebook_sizes)`` code tokens per item from position 0 (then EOS and
    padding), so tokens ``[j * L, (j + 1) * L)`` are item ``j``; a group whose tokens are not code tokens of levels
    ``0 .. L-1`` in order gets no bucket past its first non-code token. The prefix value is the mixed-radix number
    ``(c_0 * s_1 + c_1) * s_2 + ...`` (modulo a prime), hashed with a multiplier of its level.

    Args:
        input_ids: ``[B, T]`` encoder token ids (``3 + sum(sizes[:l]) + c`` is code ``c`` of level ``l``).
        codebook_sizes: ``[L]`` codes per level (``config.codebook_sizes``).
        num_buckets: ``B >= 1``.

    Returns:
        ``[B, T]`` long: bucket ids, -1 where the token has no prefix embedding.
    """
    levels = len(codebook_sizes)
    if levels > len(_PREFIX_HASH_MULTIPLIERS):
        raise ValueError(
            f"history_prefix_buckets supports up to {len(_PREFIX_HASH_MULTIPLIERS)} code levels, got {levels}."
        )
    batch, length = input_ids.shape
    groups = -(-length // levels)
    ids = F.pad(input_ids, (0, groups * levels - length), value=-1).reshape(batch, groups, levels)
    buckets = torch.full_like(ids, -1)
    prefix = torch.zeros(batch, groups, dtype=torch.long, device=input_ids.device)
    valid = torch.ones(batch, groups, dtype=torch.bool, device=input_ids.device)
    for level, (offset, size) in enumerate(zip(level_offsets(codebook_sizes), codebook_sizes)):
        codes = ids[:, :, level] - offset
        valid &= (codes >= 0) & (codes < size)
        # Mixed radix modulo the prime 2**31 - 1: exact below it (3 x 256 codes and a collision level), and no
        # int64 overflow in the multiplication below.
        prefix = torch.remainder(prefix * size + codes.clamp(0, size - 1), _PREFIX_MODULUS)
        if level > 0:
            hashed = torch.remainder(prefix * _PREFIX_HASH_MULTIPLIERS[level] + level, num_buckets)
            buckets[:, :, level] = torch.where(valid, hashed, -1)
    return buckets.reshape(batch, groups * levels)[:, :length]


class OneRecHistoryPrefixEmbedding(nn.Module):
    """Embeddings of the history items' code prefixes (``config.history_prefix_buckets`` of them), zero where a token
    has no prefix: ``[B, T]`` input ids to ``[B, T, d_model]`` additions to the token embeddings."""

    def __init__(self, config: OneRecConfig):
        super().__init__()
        self.codebook_sizes = list(config.codebook_sizes)
        self.embedding = nn.Embedding(config.history_prefix_buckets, config.d_model)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        buckets = history_prefix_buckets(input_ids, self.codebook_sizes, self.embedding.num_embeddings)
        return self.embedding(buckets.clamp(min=0)) * (buckets >= 0).unsqueeze(-1).to(self.embedding.weight.dtype)


def history_recency_ranks(attention_mask: torch.Tensor, tokens_per_item: int, num_ranks: int) -> torch.Tensor:
    """The recency rank of each history token's item: 0 on the newest item's code tokens, 1 on the item before it, ...
    (ranks past ``num_ranks - 1`` share the last); -1 on EOS and padding.

    The tokenizer writes a history as ``L = tokens_per_item`` code tokens per item, oldest first, then EOS, so a row
    with ``n`` real tokens holds ``n // L`` items in its first ``L * (n // L)`` real tokens (with or without the EOS).
    Real tokens are counted through the mask, so right- or left-padded batches give the same ranks.

    Args:
        attention_mask: ``[B, T]``, 1 on real tokens.
        tokens_per_item: ``L`` (``len(config.codebook_sizes)``).
        num_ranks: Rows of the recency table (``config.max_history_items``).

    Returns:
        ``[B, T]`` long.
    """
    real = attention_mask.to(torch.long)
    index = torch.cumsum(real, dim=1) - 1  # position among the row's real tokens
    items = real.sum(dim=1, keepdim=True) // tokens_per_item
    rank = items - 1 - torch.div(index, tokens_per_item, rounding_mode="floor")
    return torch.where((real > 0) & (rank >= 0), rank.clamp(max=num_ranks - 1), -1)


class OneRecHistoryRecencyEmbedding(nn.Module):
    """Embeddings of each history item's recency rank (:func:`history_recency_ranks`; ``config.max_history_items``
    rows), zero on EOS and padding: a ``[B, T]`` attention mask to ``[B, T, d_model]`` additions to the token
    embeddings."""

    def __init__(self, config: OneRecConfig):
        super().__init__()
        self.tokens_per_item = config.num_code_levels
        self.embedding = nn.Embedding(config.max_history_items, config.d_model)

    def forward(self, attention_mask: torch.Tensor) -> torch.Tensor:
        ranks = history_recency_ranks(attention_mask, self.tokens_per_item, self.embedding.num_embeddings)
        return self.embedding(ranks.clamp(min=0)) * (ranks >= 0).unsqueeze(-1).to(self.embedding.weight.dtype)


class OneRecCrossAttentionRecencyBias(nn.Module):
    """A learned bias per head on the decoder's cross-attention logits by each history token's recency rank
    (:func:`history_recency_ranks`; one more row for the EOS), as an additive mask: a ``[B, S]`` encoder attention
    mask to ``[B, H, 1, S]`` (padding at the dtype's minimum, as transformers' own masks)."""

    def __init__(self, config: OneRecConfig):
        super().__init__()
        self.tokens_per_item = config.num_code_levels
        self.num_ranks = config.max_history_items
        self.bias = nn.Embedding(config.max_history_items + 1, config.num_heads)

    def forward(self, encoder_attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        ranks = history_recency_ranks(encoder_attention_mask, self.tokens_per_item, self.num_ranks)
        bias = self.bias(torch.where(ranks >= 0, ranks, self.num_ranks)).to(dtype)  # [B, S, H]
        bias = bias.permute(0, 2, 1).unsqueeze(2)  # [B, H, 1, S]
        padding = (encoder_attention_mask == 0)[:, None, None, :]
        return bias.masked_fill(padding, torch.finfo(dtype).min)


class OneRecNewestItemDecoderInput(nn.Module):
    """A learned linear map of the encoder's output at the newest history item (the mean over its code tokens,
    :func:`history_recency_ranks` rank 0), added to every decoder input embedding: ``[B, S, d_model]`` encoder states
    and their ``[B, S]`` mask to a ``[B, 1, d_model]`` addition (zero for a row without a complete item)."""

    def __init__(self, config: OneRecConfig):
        super().__init__()
        self.tokens_per_item = config.num_code_levels
        self.projection = nn.Linear(config.d_model, config.d_model, bias=False)

    def forward(self, encoder_hidden_states: torch.Tensor, encoder_attention_mask: torch.Tensor) -> torch.Tensor:
        ranks = history_recency_ranks(encoder_attention_mask, self.tokens_per_item, 2)  # 0: the newest, 1: older
        newest = (ranks == 0).to(encoder_hidden_states.dtype).unsqueeze(-1)  # [B, S, 1]
        pooled = (encoder_hidden_states * newest).sum(dim=1) / newest.sum(dim=1).clamp(min=1)
        return self.projection(pooled).unsqueeze(1)


class OneRecEncoderStack(OneRecPreTrainedModel, T5Stack):
    """T5's encoder stack; with ``config.history_encoding="items"`` it reads one position per history item
    (:func:`pool_history_items`) and returns each item's state at each of its tokens, so that its output and the
    token-level ``attention_mask`` keep the shapes the decoder and ``generate()`` expect. ``inputs_embeds``, if given,
    are token embeddings and are pooled the same way; the ``hidden_states`` and ``attentions`` it returns on request
    stay per item. With ``config.history_prefix_buckets > 0`` each code token's embedding gets its item's prefix
    embedding added (:func:`history_prefix_buckets`), and with ``config.history_recency_embeddings`` its item's
    recency embedding (:func:`history_recency_ranks`). (``OneRecPreTrainedModel`` first: its ``initialize_weights``
    gives a stack defined outside transformers T5's initialisation.)"""

    def __init__(self, config: OneRecConfig):
        T5Stack.__init__(self, config)
        self.prefix_embeddings = OneRecHistoryPrefixEmbedding(config) if config.history_prefix_buckets > 0 else None
        self.recency_embeddings = OneRecHistoryRecencyEmbedding(config) if config.history_recency_embeddings else None

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, **kwargs):
        if self.prefix_embeddings is not None:
            if input_ids is None:
                raise ValueError(
                    "config.history_prefix_buckets > 0 reads each history item's codes from input_ids; pass input_ids "
                    "instead of inputs_embeds."
                )
            inputs_embeds, input_ids = self.embed_tokens(input_ids) + self.prefix_embeddings(input_ids), None
        if self.recency_embeddings is not None:
            if (input_ids is None) == (inputs_embeds is None):
                raise ValueError("You must specify exactly one of input_ids or inputs_embeds")  # T5Stack's rule
            if inputs_embeds is None:
                inputs_embeds, input_ids = self.embed_tokens(input_ids), None
            mask = attention_mask if attention_mask is not None else inputs_embeds.new_ones(inputs_embeds.shape[:2])
            inputs_embeds = inputs_embeds + self.recency_embeddings(mask)
        if self.config.history_encoding != "items":
            return super().forward(
                input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs
            )
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")  # T5Stack's rule
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        item_embeddings, item_mask, token_to_item = pool_history_items(
            inputs_embeds, attention_mask, self.config.num_code_levels
        )
        outputs = super().forward(attention_mask=item_mask, inputs_embeds=item_embeddings, **kwargs)
        if isinstance(outputs, tuple):  # return_dict=False
            return (outputs[0][:, token_to_item],) + outputs[1:]
        outputs.last_hidden_state = outputs.last_hidden_state[:, token_to_item]
        return outputs


class OneRecDecoderStack(OneRecPreTrainedModel, T5Stack):
    """A T5 decoder stack whose ``config.sparse_layer_indices`` layers use :class:`OneRecLayerSparseFF`; with
    ``config.cross_attention_recency_bias`` its cross-attention reads the encoder's padding mask as
    :class:`OneRecCrossAttentionRecencyBias`'s additive mask (a prepared 4D mask, which transformers passes through
    as it is)."""

    def __init__(self, config: OneRecConfig):
        T5Stack.__init__(self, config)
        for index in config.sparse_layer_indices:
            self.block[index].layer[-1] = OneRecLayerSparseFF(config)
        self.cross_attention_recency = (
            OneRecCrossAttentionRecencyBias(config) if config.cross_attention_recency_bias else None
        )
        self.newest_item_input = OneRecNewestItemDecoderInput(config) if config.newest_item_decoder_input else None
        self.post_init()  # T5Stack.__init__ initialised the dense FFNs only

    def forward(
        self,
        input_ids=None,
        *args,
        inputs_embeds=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        **kwargs,
    ):
        reads_mask = self.newest_item_input is not None or self.cross_attention_recency is not None
        if reads_mask and encoder_hidden_states is not None and encoder_attention_mask is None:
            encoder_attention_mask = encoder_hidden_states.new_ones(encoder_hidden_states.shape[:2])
        if self.newest_item_input is not None and encoder_hidden_states is not None:
            if encoder_attention_mask.dim() != 2:
                raise ValueError(
                    "config.newest_item_decoder_input finds the newest history item through the encoder's [batch, "
                    f"length] padding mask; got a mask of shape {tuple(encoder_attention_mask.shape)}."
                )
            if (input_ids is None) == (inputs_embeds is None):
                raise ValueError("You must specify exactly one of input_ids or inputs_embeds")  # T5Stack's rule
            if inputs_embeds is None:
                inputs_embeds, input_ids = self.embed_tokens(input_ids), None
            inputs_embeds = inputs_embeds + self.newest_item_input(encoder_hidden_states, encoder_attention_mask)
        if self.cross_attention_recency is not None and encoder_hidden_states is not None:
            if encoder_attention_mask.dim() == 2:
                encoder_attention_mask = self.cross_attention_recency(
                    encoder_attention_mask, encoder_hidden_states.dtype
                )
        return super().forward(
            input_ids,
            *args,
            inputs_embeds=inputs_embeds,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            **kwargs,
        )

    def sparse_layers(self) -> List[OneRecLayerSparseFF]:
        return [block.layer[-1] for block in self.block if isinstance(block.layer[-1], OneRecLayerSparseFF)]


# Adapted from transformers.models.t5.modeling_t5.T5ForConditionalGeneration.__init__
def _build_stacks(model: nn.Module, config: OneRecConfig) -> None:
    """Shared embedding, dense T5 encoder, MoE decoder: the layout T5Model/T5ForConditionalGeneration expect."""
    model.model_dim = config.d_model
    model.shared = nn.Embedding(config.vocab_size, config.d_model)
    encoder_config = copy.deepcopy(config)
    encoder_config.is_decoder = False
    encoder_config.use_cache = False
    model.encoder = OneRecEncoderStack(encoder_config)
    decoder_config = copy.deepcopy(config)
    decoder_config.is_decoder = True
    decoder_config.num_layers = config.num_decoder_layers
    model.decoder = OneRecDecoderStack(decoder_config)
    use_onerec_dropout(model)
    if config.attention_dropout_rate is not None:
        for module in model.modules():
            if isinstance(module, T5Attention):  # T5 reads its attention dropout from this float (transformers 5.24)
                module.dropout = float(config.attention_dropout_rate)


def _check_token_ids(
    name: str, token_ids: Optional[torch.Tensor], vocab_size: int, ignore_index: Optional[int] = None
) -> None:
    """Raises a ValueError naming the bad ids (an out-of-range id would otherwise fail deep inside an
    embedding lookup, or silently on some devices)."""
    if token_ids is None or token_ids.numel() == 0:
        return
    valid = (token_ids >= 0) & (token_ids < vocab_size)
    if ignore_index is not None:
        valid |= token_ids == ignore_index
    if not bool(valid.all()):
        bad = torch.unique(token_ids[~valid])[:10].tolist()
        raise ValueError(
            f"{name} holds token ids outside this model's vocabulary [0, {vocab_size}): {bad}"
            + (f" (and {ignore_index} is allowed as 'ignore')" if ignore_index is not None else "")
            + ". Encode inputs with the tokenizer the model was built from (OneRecConfig.from_tokenizer)."
        )


@dataclass
class OneRecSeq2SeqLMOutput(Seq2SeqLMOutput):
    """:class:`~transformers.modeling_outputs.Seq2SeqLMOutput` plus the MoE terms.

    Args:
        loss: ``ntp_loss + router_aux_loss_coef * aux_loss + router_z_loss_coef * z_loss`` (with ``labels``).
        ntp_loss: Next-token cross-entropy (paper Eq. 4, mean per scored token): over the code tokens, each
            normalised over its level (:func:`level_restricted_cross_entropy`) when the config has a semantic-ID
            layout and ``level_restricted_loss``; otherwise over every labelled position and the whole vocabulary.
        aux_loss: Load-balancing loss averaged over sparse layers (1.0 = perfectly balanced).
        z_loss: Router z-loss averaged over sparse layers.
        ntp_num_tokens: How many label tokens ``ntp_loss`` averages over (:func:`ntp_token_mask`); a trainer that
            splits a batch over processes weights each process's ``ntp_loss`` by it.
        expert_load: ``[num_sparse_layers, num_experts]`` fraction of assignments per expert.
        router_logits: Per sparse layer ``[N, num_experts]`` (only with ``output_router_logits=True``).
    """

    ntp_loss: Optional[torch.FloatTensor] = None
    ntp_num_tokens: Optional[torch.LongTensor] = None
    aux_loss: Optional[torch.FloatTensor] = None
    z_loss: Optional[torch.FloatTensor] = None
    expert_load: Optional[torch.FloatTensor] = None
    router_logits: Optional[Tuple[torch.FloatTensor, ...]] = None


@dataclass
class SessionRecommendation:
    """One recommended session: its items (catalogue ids, in order), the session's log-probability and each
    item's (each code scored by the model's softmax over its level, or renormalised over the valid codes with
    ``renormalize_logits=True``; see ``session_beam_search``)."""

    items: List[str]
    score: float
    item_scores: List[float]


class OneRecModel(OneRecPreTrainedModel, T5Model):
    """The bare encoder-decoder (``AutoModel``): T5Model with the MoE decoder, no output head."""

    def __init__(self, config: OneRecConfig):
        T5PreTrainedModel.__init__(self, config)
        _build_stacks(self, config)
        self.post_init()


class OneRecForConditionalGeneration(OneRecPreTrainedModel, T5ForConditionalGeneration):
    """OneRec: T5 encoder over the history's semantic IDs, sparse-MoE decoder generating the session.

    Use with a ``SemanticIDTokenizer`` whose layout the config was built from
    (``OneRecConfig.from_tokenizer``). ``generate()`` is T5's; pass the tokenizer's
    ``session_logits_processor(...)`` to keep every generated item valid.
    """

    def __init__(self, config: OneRecConfig):
        T5PreTrainedModel.__init__(self, config)
        _build_stacks(self, config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    def get_expanded_tied_weights_keys(self, all_submodels: bool = False) -> dict:
        """transformers' tied-weight mapping (T5's: encoder, decoder and ``lm_head`` on ``shared``), without
        ``lm_head`` when ``config.tie_output_embeddings`` is False. T5Config forces ``tie_word_embeddings=True``
        (transformers 5.24), and False would untie the input embeddings too: this method is where the mapping is read."""
        mapping = super().get_expanded_tied_weights_keys(all_submodels=all_submodels)
        if not self.config.tie_output_embeddings:
            mapping.pop("lm_head.weight", None)
        return mapping

    # Adapted from transformers.models.t5.modeling_t5.T5ForConditionalGeneration.forward
    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        decoder_input_ids: Optional[torch.LongTensor] = None,
        decoder_attention_mask: Optional[torch.BoolTensor] = None,
        encoder_outputs=None,
        cache=None,
        inputs_embeds: Optional[torch.Tensor] = None,
        decoder_inputs_embeds: Optional[torch.Tensor] = None,
        labels: Optional[torch.LongTensor] = None,
        use_cache: Optional[bool] = None,
        output_router_logits: bool = False,
        **kwargs,
    ) -> OneRecSeq2SeqLMOutput:
        r"""T5's forward; with ``labels`` ``[batch, target_len]`` (``-100`` = ignored) also the NTP and MoE losses.

        Args:
            output_router_logits: Also return each sparse layer's ``[N, num_experts]`` router logits (recorded by
                transformers' output recording; always recorded when ``labels`` are given, for the router losses).
        """
        if self._checks_token_ids(input_ids if input_ids is not None else labels):
            _check_token_ids("input_ids", input_ids, self.config.vocab_size)
            if cache is None:  # incremental decoding feeds back the model's own tokens: no per-step sync for them
                _check_token_ids("decoder_input_ids", decoder_input_ids, self.config.vocab_size)
            _check_token_ids("labels", labels, self.config.vocab_size, ignore_index=-100)
        # T5ForConditionalGeneration.forward, spelled out so that the decoder's recorded router logits reach the output.
        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs
            )
        elif not isinstance(encoder_outputs, BaseModelOutput):
            encoder_outputs = BaseModelOutput(
                last_hidden_state=encoder_outputs[0],
                hidden_states=encoder_outputs[1] if len(encoder_outputs) > 1 else None,
                attentions=encoder_outputs[2] if len(encoder_outputs) > 2 else None,
            )
        if labels is not None and decoder_input_ids is None and decoder_inputs_embeds is None:
            decoder_input_ids = self._shift_right(labels)  # T5's own shift (no public name in transformers 5.24)
        record_routing = labels is not None or output_router_logits
        decoder_outputs = self.decoder(
            input_ids=decoder_input_ids,
            attention_mask=decoder_attention_mask,
            inputs_embeds=decoder_inputs_embeds,
            cache=cache,
            encoder_hidden_states=encoder_outputs[0],
            encoder_attention_mask=attention_mask,
            use_cache=use_cache,
            output_router_logits=record_routing,
            **kwargs,
        )
        sequence_output = decoder_outputs[0]
        if self.config.scale_decoder_outputs:
            sequence_output = sequence_output * (self.model_dim**-0.5)
        logits = self.lm_head(sequence_output)

        router_logits = tuple(decoder_outputs.get("router_logits") or ()) if record_routing else ()
        token_mask = labels.reshape(-1).to(logits.device) != -100 if labels is not None else None
        loss = ntp_loss = ntp_num_tokens = aux_loss = z_loss = load = None
        sums = router_loss_sums(router_logits, self.config.num_experts_per_token, token_mask) if router_logits else None
        if sums is not None:
            load = sums.expert_load()
        if labels is not None:
            if self.config.codebook_sizes is not None and self.config.level_restricted_loss:
                ntp_loss = level_restricted_cross_entropy(
                    logits, labels, self.config.level_offsets, self.config.vocab_size
                )
            else:
                ntp_loss = F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]).float(),
                    labels.reshape(-1).to(logits.device),
                    ignore_index=-100,
                )
            ntp_num_tokens = ntp_token_mask(labels, self.config).sum()
            loss = ntp_loss
            if sums is not None:
                aux_loss, z_loss = sums.losses(self.config.num_experts_per_token)
                loss = loss + self.config.router_aux_loss_coef * aux_loss + self.config.router_z_loss_coef * z_loss

        return OneRecSeq2SeqLMOutput(
            loss=loss,
            logits=logits,
            cache=decoder_outputs.cache,
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
            ntp_loss=ntp_loss,
            ntp_num_tokens=ntp_num_tokens,
            aux_loss=aux_loss,
            z_loss=z_loss,
            expert_load=load,
            router_logits=router_logits if output_router_logits else None,
        )

    def generate(self, inputs: Optional[torch.Tensor] = None, generation_config=None, **kwargs):
        """transformers' ``generate()``, after two checks it does not make (5.24): the encoder's ``input_ids`` lie in
        the vocabulary (``generate`` runs the encoder directly, around ``forward``'s check; a bad id was an
        ``IndexError`` deep in the embedding) and ``num_beams >= 1`` (0 was a ``ZeroDivisionError``)."""
        input_ids = inputs if inputs is not None else kwargs.get("input_ids")
        if isinstance(input_ids, torch.Tensor) and not input_ids.is_floating_point():
            _check_token_ids("input_ids", input_ids, self.config.vocab_size)
        num_beams = kwargs.get("num_beams", getattr(generation_config or self.generation_config, "num_beams", 1))
        if num_beams is not None and (isinstance(num_beams, bool) or int(num_beams) < 1):
            raise ValueError(f"num_beams must be an integer >= 1, got {num_beams!r}.")
        return super().generate(inputs, generation_config, **kwargs)

    def _checks_token_ids(self, token_ids: Optional[torch.Tensor]) -> bool:
        """Whether ``forward`` checks its token ids against the vocabulary. The check reads a device tensor on the
        host, so it is skipped where that would stall the training step: under ``torch.compile``, and while
        training on an accelerator. Training data is checked once where it is made instead
        (``trainers.data.tokenize_session_samples`` takes every id from the tokenizer's code table). On the CPU and
        in inference it always runs: there a bad id gets a clear error naming it."""
        if torch.compiler.is_compiling():
            return False
        return token_ids is None or token_ids.device.type == "cpu" or not self.training

    @classmethod
    def from_dense_t5(cls, t5, config_overrides: Optional[dict] = None, noise_std: float = 0.0):
        """A OneRec model from a dense ``T5ForConditionalGeneration`` (instance or path) by sparse upcycling:
        shared weights copied, every expert initialised as a copy of its layer's dense FFN, routers random.
        See :func:`~.conversion.upcycle_dense_t5`."""
        from .conversion import upcycle_dense_t5

        return upcycle_dense_t5(t5, config_overrides=config_overrides, noise_std=noise_std)

    @torch.inference_mode()
    def recommend(
        self,
        tokenizer,
        histories: Sequence[Sequence],
        *,
        num_sessions: int = 10,
        num_beams: Optional[int] = None,
        session_length: Optional[int] = None,
        exclude_history: bool = True,
        forbid_repeats: bool = True,
        batch_size: int = 32,
        renormalize_logits: Optional[bool] = None,
    ) -> List[List[SessionRecommendation]]:
        """Recommend sessions from raw item-id histories: no codes in, no codes out.

        The steps, each one method that the ``"generative-recommendation"`` pipeline
        (:class:`~.pipeline_onerec.GenerativeRecommendationPipeline`) calls too: :meth:`check_search_arguments`,
        :meth:`check_histories` (validation), :meth:`encode_histories` (tokenisation, per batch),
        :meth:`search_sessions` (the constrained beam search) and :meth:`decode_sessions` (item ids and scores).

        Args:
            tokenizer: The ``SemanticIDTokenizer`` the model was built with (its layout is checked).
            histories: One list of item ids per user, oldest first. Only the newest ``config.max_history_items``
                items are read (documented truncation, as in training). An empty history or an item id unknown to
                the tokenizer raises an error naming the user.
            num_sessions: Sessions returned per user, best first (fewer if fewer valid sessions exist).
            num_beams: Beam width of the trie-constrained beam search; defaults to ``num_sessions``.
            session_length: Items per session ``m``; defaults to ``config.session_length``.
            exclude_history: Never recommend an item of the user's own history.
            forbid_repeats: No item twice within a session.
            batch_size: Users per beam search call (users are batched by history length; the output keeps the
                input order).
            renormalize_logits: Score each code by its probability renormalised over the trie's valid codes instead
                of the model's softmax over the code's level (``generation_onerec.session_beam_search``). ``None``:
                ``self.generation_config.renormalize_logits``, which ``examples/pretrain.py`` chooses on validation
                users (``False`` unless set).
        Returns:
            Per user, a list of :class:`SessionRecommendation` sorted by score.
        """
        from .generation_onerec import length_sorted_batches

        if isinstance(histories, (str, bytes, Mapping)) or not isinstance(histories, Iterable):
            raise TypeError("histories must be a list of item-id lists, one per user, e.g. [['12', '7'], ['3']].")
        histories = list(histories)  # a generator or any other iterable of histories, read once
        search = self.check_search_arguments(num_sessions, num_beams, session_length, batch_size=batch_size)
        batch_size = search.pop("batch_size")
        item_indices = self.check_histories(tokenizer, histories)  # every user checked before any search
        results: List[Optional[List[SessionRecommendation]]] = [None] * len(histories)
        for users in length_sorted_batches(histories, batch_size, self.config.max_history_items):
            inputs = self.encode_histories(
                tokenizer, [histories[user] for user in users], [item_indices[user] for user in users]
            )
            outputs = self.search_sessions(
                tokenizer,
                inputs,
                **search,
                exclude_history=exclude_history,
                forbid_repeats=forbid_repeats,
                renormalize_logits=renormalize_logits,
            )
            for user, sessions in zip(users, self.decode_sessions(tokenizer, outputs)):
                results[user] = sessions
        return results

    def check_search_arguments(
        self,
        num_sessions: int,
        num_beams: Optional[int] = None,
        session_length: Optional[int] = None,
        *,
        default_beams: int = 0,
        batch_size: Optional[int] = None,
    ) -> dict:
        """The session search's counts, checked, as ints: ``{"num_sessions", "num_beams", "session_length"}`` (and
        ``"batch_size"`` when given). ``num_beams`` defaults to ``max(default_beams, num_sessions)``,
        ``session_length`` to ``config.session_length``. A non-integer or boolean count is a ``TypeError``, one below
        1 (or ``num_beams < num_sessions``) a ``ValueError``, each naming the argument."""
        counts = {
            "num_sessions": num_sessions,
            "num_beams": num_beams,
            "batch_size": batch_size,
            "session_length": self.config.session_length if session_length is None else session_length,
        }
        for name, value in counts.items():
            if value is None:  # num_beams (its default follows) or batch_size (not asked for)
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):  # numpy integers too
                raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}.")
            counts[name] = int(value)
        if counts["num_beams"] is None:
            counts["num_beams"] = max(int(default_beams), counts["num_sessions"])
        if batch_size is None:
            del counts["batch_size"]
        if counts["num_sessions"] < 1 or counts["num_beams"] < counts["num_sessions"]:
            raise ValueError(
                f"Need 1 <= num_sessions <= num_beams, got num_sessions={counts['num_sessions']}, "
                f"num_beams={counts['num_beams']}."
            )
        if counts["session_length"] < 1 or counts.get("batch_size", 1) < 1:
            raise ValueError(
                f"session_length and batch_size must be >= 1, got session_length={counts['session_length']}, "
                f"batch_size={counts.get('batch_size')}."
            )
        return counts

    def check_histories(self, tokenizer, histories: Sequence[Sequence]) -> List[List[int]]:
        """Validation of :meth:`recommend`'s inputs: ``tokenizer`` against this model's layout
        (``config.check_tokenizer``), then every history. Returns each history's catalogue rows (its items'
        ``tokenizer.item_index``, the items a search excludes).

        Raises:
            ValueError: An empty history, or a string where a history belongs, naming the user.
            UnknownItemError: (a ``KeyError``) an item id outside the catalogue, naming the user.
        """
        self.config.check_tokenizer(tokenizer)
        item_indices = []
        for user, history in enumerate(histories):
            if isinstance(history, (str, bytes)) or len(history) == 0:
                raise ValueError(
                    f"History {user} is {'a string' if isinstance(history, (str, bytes)) else 'empty'}: "
                    "each user needs a non-empty list of past item ids (serve users without history "
                    "with a popularity fallback)."
                )
            try:
                item_indices.append([tokenizer.item_index(item) for item in history])
            except KeyError as error:
                raise type(error)(f"History {user}: {error}") from None
        return item_indices

    def encode_histories(self, tokenizer, histories: Sequence[Sequence], item_indices: Sequence[Sequence[int]]):
        """Tokenisation of checked histories (:meth:`check_histories` gave ``item_indices``), right-padded.

        Returns:
            A ``BatchEncoding`` of long tensors: ``input_ids`` / ``attention_mask`` ``[B, S]`` (the newest
            ``config.max_history_items`` items, then EOS) and ``excluded_items`` / ``excluded_items_mask`` ``[B, H]``
            (every history item's catalogue row, the whole history; the mask is 1 on real entries, as padding values
            are not kept: the pipeline's batch collation pads them with 0).
        """
        encoded = tokenizer.batch_encode_histories(histories, max_items=self.config.max_history_items)
        width = max(len(items) for items in item_indices)
        encoded["excluded_items"] = torch.tensor([list(items) + [-1] * (width - len(items)) for items in item_indices])
        encoded["excluded_items_mask"] = (encoded["excluded_items"] >= 0).long()
        return encoded

    @torch.inference_mode()
    def search_sessions(
        self,
        tokenizer,
        inputs: Mapping[str, torch.Tensor],
        *,
        num_sessions: int,
        num_beams: int,
        session_length: int,
        exclude_history: bool = True,
        forbid_repeats: bool = True,
        renormalize_logits: Optional[bool] = None,
    ) -> dict:
        """The trie-constrained session beam search (``generation_onerec.session_beam_search``, in eval mode) of
        :meth:`encode_histories`' ``inputs``, cut to the ``num_sessions`` best beams of each row.

        Returns:
            ``{"item_indices" [B, n, m], "scores" [B, n], "item_scores" [B, n, m], "valid" [B, n], "sequences" [B, n,
            2 + m * (L + 1)]}`` with ``n = num_sessions``: catalogue rows, session and item log-probabilities, whether
            a beam is a real session (the valid beams of a row come first, best first), and the decoder tokens
            (``decoder_start BOS c1..cL ... EOS``, PAD for a missing beam).
        """
        from .generation_onerec import eval_mode, session_beam_search

        renormalize_logits = self.renormalizes_logits(renormalize_logits)
        trie = tokenizer.trie
        if trie.device != self.device:
            trie.to(self.device)
        excluded = None
        if exclude_history:
            mask = inputs["excluded_items_mask"].to(self.device)
            excluded = inputs["excluded_items"].to(self.device).masked_fill(mask == 0, -1)
        with eval_mode(self):
            search = session_beam_search(
                self,
                inputs["input_ids"].to(self.device),
                inputs["attention_mask"].to(self.device),
                trie,
                num_beams=num_beams,
                num_items=session_length,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                forbid_repeats=forbid_repeats,
                level_offsets=tokenizer.level_offsets,
                excluded_items=excluded,
                renormalize_logits=renormalize_logits,
            )
        kept = min(num_sessions, num_beams)
        return {
            name: getattr(search, name)[:, :kept]
            for name in ("item_indices", "scores", "item_scores", "valid", "sequences")
        }

    def renormalizes_logits(self, renormalize_logits: Optional[bool] = None) -> bool:
        """Whether a search scores codes renormalised over the valid codes: ``renormalize_logits`` when given, else
        the model's own choice, ``generation_config.renormalize_logits`` (as ``generate()`` reads its config)."""
        if renormalize_logits is not None:
            return renormalize_logits
        return bool(self.generation_config.renormalize_logits)

    def decode_sessions(self, tokenizer, outputs: Mapping[str, torch.Tensor]) -> List[List[SessionRecommendation]]:
        """:meth:`search_sessions`' ``outputs`` as item ids: per row, its valid sessions, best first. One transfer
        to the host per call."""
        valid, scores = outputs["valid"].tolist(), outputs["scores"].tolist()
        item_indices, item_scores = outputs["item_indices"].tolist(), outputs["item_scores"].tolist()
        catalogue = tokenizer.item_ids  # a copy of the catalogue: read once, not per item
        return [
            [
                SessionRecommendation(
                    items=[catalogue[index] for index in item_indices[row][beam]],
                    score=scores[row][beam],
                    item_scores=item_scores[row][beam],
                )
                for beam in range(len(valid[row]))
                if valid[row][beam]
            ]
            for row in range(len(valid))
        ]


__all__ = [
    "OneRecCrossAttentionRecencyBias",
    "OneRecDecoderStack",
    "OneRecDropout",
    "OneRecEncoderStack",
    "OneRecExperts",
    "OneRecForConditionalGeneration",
    "OneRecHistoryPrefixEmbedding",
    "OneRecHistoryRecencyEmbedding",
    "OneRecLayerSparseFF",
    "OneRecModel",
    "OneRecPreTrainedModel",
    "OneRecRouter",
    "OneRecSeq2SeqLMOutput",
    "OneRecSparseMLP",
    "RouterLossSums",
    "SessionRecommendation",
    "code_token_mask",
    "cpu_dropout_keep_mask",
    "expert_capacity",
    "expert_load",
    "history_prefix_buckets",
    "history_recency_ranks",
    "level_restricted_cross_entropy",
    "load_balancing_loss",
    "ntp_token_mask",
    "pool_history_items",
    "route_tokens",
    "router_loss_sums",
    "router_z_loss",
]
