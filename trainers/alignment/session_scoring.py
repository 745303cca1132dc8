"""Session log-probabilities of OneRec, for DPO and any preference or RL loss.

Session log-probability (the ``log M(S | H)`` of Eq. 10)
    ``sum over the m*L code tokens of log_softmax(logits[level slice])[code]``: each code normalised over its own
    level's codes, the distribution the NTP loss trains (``level_restricted_cross_entropy``, Eq. 4). With
    ``config.level_restricted_loss=False`` the model's NTP normalises over the whole vocabulary and so does this.
    ``session_beam_search`` scores a session the same way by default (with the level-restricted loss); with
    ``renormalize_logits=True`` it renormalises each step over the trie children that survive exclusions, which
    equals this where the trie prunes nothing (every code has a valid continuation, no excluded items) and is higher
    otherwise. The model's own distribution is used here because (a) it is
    what NTP trains, so L_NTP and L_DPO act on one distribution, (b) the trie renormalisation depends on search-time
    options (history exclusion, repeats), which would make ``pi(S|H)`` depend on them, (c) it needs no trie walk.

* :func:`code_token_scores` / :func:`session_log_probs` -- per-token and per-session log-probabilities.
* :class:`SessionScorer` -- the forward contract of TRL's ``DPOTrainer._compute_loss`` (per-token log-probabilities
  of prompt + completion) for OneRec's encoder-decoder: the history goes to the encoder, the session is the
  completion.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel
from transformers.modeling_outputs import BaseModelOutput
from trl.trainer.utils import FusedCausalLMOutput

logger = logging.getLogger(__name__)


@dataclass
class CodeTokenScores:
    """Per-position scores of the code-token labels; every field is ``[R, T]`` and 0 (False) where ``mask`` is False.

    Args:
        log_probs: ``log p(label)`` under the level-restricted (or full-vocabulary) softmax; differentiable.
        mask: Positions whose label is a code token.
        entropy / mean_logits / is_top1 / log_sum_sq_probs: Statistics of the same distribution (no gradient);
            only filled with ``statistics=True``, else ``None``.
    """

    log_probs: torch.Tensor
    mask: torch.Tensor
    entropy: Optional[torch.Tensor] = None
    mean_logits: Optional[torch.Tensor] = None
    is_top1: Optional[torch.Tensor] = None
    log_sum_sq_probs: Optional[torch.Tensor] = None


def code_token_scores(
    logits: torch.Tensor,
    labels: torch.Tensor,
    level_offsets: Sequence[int],
    vocab_size: int,
    *,
    level_restricted: bool = True,
    statistics: bool = False,
) -> CodeTokenScores:
    """Log-probability of every code-token label, normalised as the model's NTP loss normalises it.

    Args:
        logits: ``[R, T, V]`` decoder logits (position ``t`` predicts ``labels[:, t]``).
        labels: ``[R, T]`` token ids; anything that is not a code token (BOS, EOS, PAD, ``-100``) scores 0.
        level_offsets: First token id of each code level.
        vocab_size: ``V``; the last level ends there.
        level_restricted: Softmax over the label's own level (``True``) or over the whole vocabulary.
        statistics: Also return entropy, mean logit, top-1 hit and ``log sum p^2`` (no gradient).
    """
    bounds = list(level_offsets) + [vocab_size]
    labels = labels.to(logits.device)
    mask = (labels >= bounds[0]) & (labels < bounds[-1])
    # (label range, normalisation range) per segment: one per level, or all codes against the full vocabulary.
    segments = (
        [(lo, hi, lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]
        if level_restricted
        else [(bounds[0], bounds[-1], 0, logits.shape[-1])]
    )
    zeros = torch.zeros(labels.shape, dtype=torch.float32, device=logits.device)
    log_probs = zeros
    stats = {name: zeros for name in ("entropy", "mean_logits", "log_sum_sq_probs")} if statistics else None
    is_top1 = torch.zeros(labels.shape, dtype=torch.bool, device=logits.device) if statistics else None
    for label_lo, label_hi, norm_lo, norm_hi in segments:
        selected = (labels >= label_lo) & (labels < label_hi)
        if not bool(selected.any()):
            continue
        segment_logits = logits[selected][:, norm_lo:norm_hi].float()  # [n, K]
        segment_log_probs = F.log_softmax(segment_logits, dim=-1)
        codes = labels[selected] - norm_lo
        # masked_scatter fills positions in the same row-major order boolean indexing read them.
        log_probs = log_probs.masked_scatter(selected, segment_log_probs.gather(1, codes[:, None]).squeeze(1))
        if statistics:
            with torch.no_grad():
                lp = segment_log_probs.detach()
                stats["entropy"] = stats["entropy"].masked_scatter(selected, -(lp.exp() * lp).sum(-1))
                stats["mean_logits"] = stats["mean_logits"].masked_scatter(selected, segment_logits.detach().mean(-1))
                stats["log_sum_sq_probs"] = stats["log_sum_sq_probs"].masked_scatter(
                    selected, torch.logsumexp(2 * lp, dim=-1)
                )
                is_top1 = is_top1.masked_scatter(selected, segment_logits.detach().argmax(-1) == codes)
    if not statistics:
        return CodeTokenScores(log_probs=log_probs, mask=mask)
    return CodeTokenScores(log_probs=log_probs, mask=mask, is_top1=is_top1, **stats)


def token_layout(model, tokenizer=None) -> Dict[str, Any]:
    """Token layout the scores need, from the model config (checked against the tokenizer when given)."""
    config = model.config
    if tokenizer is not None and hasattr(config, "check_tokenizer"):
        config.check_tokenizer(tokenizer)
    level_offsets = getattr(config, "level_offsets", None)
    if level_offsets is None:
        if tokenizer is None:
            raise ValueError("The model config has no semantic-ID layout (codebook_sizes); pass the tokenizer.")
        level_offsets = list(tokenizer.level_offsets)
    return dict(
        level_offsets=list(level_offsets),
        vocab_size=int(config.vocab_size),
        level_restricted=bool(
            getattr(config, "level_restricted_loss", True) and getattr(config, "codebook_sizes", None) is not None
        ),
        decoder_start_token_id=int(config.decoder_start_token_id),
        pad_token_id=int(config.pad_token_id),
    )


def session_log_probs(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, tokenizer=None
) -> torch.Tensor:
    """``log M(S | H)`` of each row: summed code-token log-probabilities (see the module docstring).

    Args:
        model: ``OneRecForConditionalGeneration``.
        input_ids / attention_mask: ``[B, S]`` encoded histories.
        labels: ``[B, T]`` decoder labels (``tokenizer.encode_session(items)``, padded with -100).
        tokenizer: Optional, to check the layout.
    Returns:
        ``[B]`` float32 (differentiable when called with gradients enabled).
    """
    layout = token_layout(model, tokenizer)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).logits
    scores = code_token_scores(
        logits, labels, layout["level_offsets"], layout["vocab_size"], level_restricted=layout["level_restricted"]
    )
    return scores.log_probs.sum(dim=1)


class SessionScorer:
    """Adapter giving a OneRec model the forward contract TRL's DPO loss code expects of a causal LM.

    TRL calls ``scorer(input_ids, attention_mask, labels=, fused_lm_head=True, use_cache=False, **extra)`` with
    ``input_ids [2B, T+1]`` = decoder start token + session tokens (chosen rows, then rejected rows),
    ``labels`` = the same with non-scored positions at -100, and the extra batch keys ``encoder_input_ids`` /
    ``encoder_attention_mask`` ``[B, S]``. It reads ``log_probs [2B, T]`` (``log p(labels[:, t + 1])``, 0 where the
    label is -100), ``entropy``, ``mean_logits``, ``is_top1`` and ``log_sum_sq_probs`` of the same shape.

    Args:
        model: The OneRec model (possibly wrapped).
        layout: From :func:`_layout`.
        encoder_hidden_states: Optional ``[B, S, d]`` encoder output already computed for these rows (the policy
            shares one encoder pass with its NTP term); otherwise the encoder runs here.
        router_loss: Pass the scored labels to the model so it computes its MoE router terms over these tokens;
            they are kept in ``self.router_loss`` (``loss - ntp_loss`` of the model's output), and the output and
            its labels in ``self.router_outputs`` / ``self.router_labels``.
        router_logits: Also ask the model for its router logits (``output_router_logits=True``; for the
            global-batch terms of :func:`~trainers.pretraining.global_batch_losses` on several processes).
        statistics: Fill entropy/mean_logits/is_top1/log_sum_sq_probs (TRL logs them).
        context: Optional callable returning a context manager every scoring call runs in (the PEFT reference:
            the adapter disabled).
    """

    def __init__(
        self,
        model,
        layout: Dict[str, Any],
        encoder_hidden_states: Optional[torch.Tensor] = None,
        router_loss: bool = False,
        statistics: bool = True,
        context=None,
        router_logits: bool = False,
    ):
        self.model = model
        self.context = context
        self.layout = layout
        self.encoder_hidden_states = encoder_hidden_states
        self.compute_router_loss = router_loss
        self.output_router_logits = router_logits
        self.statistics = statistics
        self.router_outputs = None
        self.router_labels: Optional[torch.Tensor] = None
        self.router_loss: Optional[torch.Tensor] = None
        self.aux_loss: Optional[torch.Tensor] = None
        self.z_loss: Optional[torch.Tensor] = None
        self.sequence_log_probs: Optional[torch.Tensor] = None  # [R] of the last fused call (cdpo needs them)

    def __call__(self, *args, **kwargs):
        with self.context() if self.context is not None else nullcontext():
            return self._score(*args, **kwargs)

    def _score(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        fused_lm_head: bool = False,
        encoder_input_ids: Optional[torch.Tensor] = None,
        encoder_attention_mask: Optional[torch.Tensor] = None,
        **ignored,
    ):
        if encoder_input_ids is None or encoder_attention_mask is None:
            raise ValueError("SessionScorer needs encoder_input_ids and encoder_attention_mask in the batch.")
        rows, histories = input_ids.shape[0], encoder_input_ids.shape[0]
        if rows % histories:
            raise ValueError(f"{rows} decoder rows for {histories} histories: expected chosen and rejected per row.")
        encoder_hidden = self.encoder_hidden_states
        if encoder_hidden is None:
            encoder_hidden = (
                extract_model_from_parallel(self.model)
                .get_encoder()(input_ids=encoder_input_ids, attention_mask=encoder_attention_mask)
                .last_hidden_state
            )
        copies = rows // histories  # rows are [chosen; rejected]: repeat the whole batch, not each row
        encoder_hidden = encoder_hidden.repeat(copies, 1, 1)
        encoder_mask = encoder_attention_mask.repeat(copies, 1)
        if labels is None:
            labels = input_ids.masked_fill(attention_mask == 0, -100) if attention_mask is not None else input_ids
        targets = labels[:, 1:]  # [R, T]
        outputs = self.model(
            encoder_outputs=BaseModelOutput(last_hidden_state=encoder_hidden),
            attention_mask=encoder_mask,
            decoder_input_ids=input_ids[:, :-1],
            labels=targets if self.compute_router_loss else None,
            use_cache=False,
            **({"output_router_logits": True} if self.output_router_logits else {}),
        )
        if self.compute_router_loss and outputs.loss is not None:
            self.router_loss = outputs.loss - outputs.ntp_loss
            self.aux_loss, self.z_loss = outputs.aux_loss, outputs.z_loss
            self.router_outputs, self.router_labels = outputs, targets
        if not fused_lm_head:
            return outputs
        scores = code_token_scores(
            outputs.logits,
            targets,
            self.layout["level_offsets"],
            self.layout["vocab_size"],
            level_restricted=self.layout["level_restricted"],
            statistics=self.statistics,
        )
        self.sequence_log_probs = scores.log_probs.sum(dim=1)
        return FusedCausalLMOutput(
            log_probs=scores.log_probs,
            entropy=scores.entropy,
            log_sum_sq_probs=scores.log_sum_sq_probs,
            mean_logits=scores.mean_logits,
            is_top1=scores.is_top1,
            label_mask=scores.mask,
        )
