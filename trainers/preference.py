"""DPO for OneRec (paper §3.3.2, Eq. 10) on TRL's ``DPOTrainer``, encoder-decoder path.

TRL 1.16's ``DPOTrainer`` is decoder-only: it joins prompt and completion into one sequence and asks the model for
per-token log-probabilities through a fused LM head (``model(..., labels=, fused_lm_head=True).log_probs``). Its
loss formulas (``sigmoid`` = DPO, ``ipo``, ``robust``/``label_smoothing`` = cDPO/rDPO, ``hinge``, ``exo_pair``,
``bco_pair``, ``apo_*``, ``sft``, f-divergences, ``ld_alpha``, WPO weighting, ...) and its metrics live inside
``DPOTrainer._compute_loss``, after that one forward. This module reuses all of it unchanged by handing
``_compute_loss`` a small adapter (:class:`SessionScorer`) that honours the same forward contract for OneRec:

* the "prompt" is the decoder start token; the "completion" is the session ``BOS c1..cL ... EOS`` (paper Eq. 3);
  the user history goes to the encoder, which runs once per row (its states are repeated for chosen and rejected);
* only code tokens are scored (``completion_mask``); BOS/EOS are forced by constrained decoding and carry no
  probability.

Session log-probability (the ``log M(S | H)`` of Eq. 10)
    ``sum over the m*L code tokens of log_softmax(logits[level slice])[code]``: each code normalised over its own
    level's codes, the distribution the NTP loss trains (``level_restricted_cross_entropy``, Eq. 4). With
    ``config.level_restricted_loss=False`` the model's NTP normalises over the whole vocabulary and so does this.
    ``session_beam_search`` scores the same tokens but renormalises each step over the trie children that survive
    exclusions: the two are equal where the trie prunes nothing (every code has a valid continuation, no excluded
    items) and the search's score is higher otherwise. The model's own distribution is used here because (a) it is
    what NTP trains, so L_NTP and L_DPO act on one distribution, (b) the trie renormalisation depends on search-time
    options (history exclusion, repeats), which would make ``pi(S|H)`` depend on them, (c) it needs no trie walk.

Pieces:

* :func:`code_token_scores` / :func:`session_log_probs` -- per-token and per-session log-probabilities.
* :class:`PreferenceDataCollator` -- ``{"history", "chosen", "rejected", ["target"]}`` item-id rows to tensors.
* :class:`OneRecDPOConfig` -- ``trl.DPOConfig`` plus ``ntp_weight``, ``dpo_weight``, the history/session knobs and
  a ``cdpo`` loss type (conservative DPO, which TRL 1.16 lacks: its ``sigmoid`` ignores ``label_smoothing``).
* :class:`OneRecDPOTrainer` -- loss ``dpo_weight * L_DPO (TRL's, any loss_type) + ntp_weight * NTP(target) +`` the
  model's own MoE router terms.

Usage::

    args = OneRecDPOConfig(output_dir="dpo", beta=0.1, loss_type="sigmoid", dpo_weight=1.0, ntp_weight=1.0)
    trainer = OneRecDPOTrainer(model=model, ref_model=None, args=args, processing_class=tokenizer,
                               train_dataset=Dataset.from_list([{"history": [...], "target": [...],
                                                                 "chosen": [...], "rejected": [...]}, ...]))
    trainer.train()

Touch points in TRL 1.16 (no public hook exists for an encoder-decoder policy; setup.py pins trl to that minor and
``tests/test_preference.py`` checks each against hand-computed losses), each one method of :class:`OneRecDPOTrainer`:
``_compute_loss`` called with a :class:`SessionScorer` as the model (the loss formulas stay TRL's), ``ref_model``
presented as a scorer during that call (``_reference_scorer``; under PEFT TRL's adapter-disabled reference),
``compute_ref_log_probs`` (the same, for ``precompute_ref_log_probs``), ``_prepare_dataset`` (item-id rows are
validated, not tokenised as text), ``_set_signature_columns_if_needed``, TRL's fused LM head removed again
(``_remove_fused_lm_head``), ``loss_types`` with ``cdpo`` mapped to ``sigmoid`` plus our term
(``_take_cdpo_out_of_loss_types``), ``aux_loss_enabled`` off (the router terms are the model's own) and ``_metrics``
for our extra logs.
"""

from __future__ import annotations

import copy
import logging
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
import trl
from accelerate.utils import is_peft_model
from datasets import Dataset, IterableDataset
from packaging.version import Version
from transformers.modeling_outputs import BaseModelOutput
from trl import DPOConfig, DPOTrainer
from trl.trainer.utils import FusedCausalLMOutput, use_adapter

from tokenization_semantic_id.tokenization_semantic_id import check_item_list as check_item_ids

from .distributed import sum_over_processes
from .pretraining import global_batch_losses, pad_labels

logger = logging.getLogger(__name__)

# The TRL minor these touch points were written against; setup.py pins trl to it (private internals move between
# minors), and OneRecDPOTrainer warns when built under another one.
TESTED_TRL = "1.16"

PAIR_COLUMNS = ("history", "chosen", "rejected")
SMOOTHED_LOSS_TYPES = {"robust", "exo_pair", "aot", "aot_unpaired", "cdpo"}  # those that read label_smoothing
REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")


# ----------------------------------------------------------------------------------------------------
# Session log-probabilities
# ----------------------------------------------------------------------------------------------------


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


def _layout(model, tokenizer=None) -> Dict[str, Any]:
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
    layout = _layout(model, tokenizer)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).logits
    scores = code_token_scores(
        logits, labels, layout["level_offsets"], layout["vocab_size"], level_restricted=layout["level_restricted"]
    )
    return scores.log_probs.sum(dim=1)


def _unwrap(model):
    while hasattr(model, "module"):  # DDP / accelerate wrappers
        model = model.module
    return model


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
                _unwrap(self.model)
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


# ----------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------


def check_item_list(value, where: str, tokenizer=None, allow_empty: bool = False) -> List[str]:
    """``value`` as a list of item-id strings, or an error that starts with ``where`` (e.g. ``"Row 3, column
    'chosen'"``) for a non-list (the tokenizer's :func:`~tokenization_semantic_id.tokenization_semantic_id.
    check_item_list`), an empty list (unless ``allow_empty``) or, given a tokenizer, an unknown item id."""
    value = check_item_ids(value, where)
    if not value and not allow_empty:
        raise ValueError(f"{where} is empty: it needs at least one item id.")
    if tokenizer is not None:
        for item in value:
            try:
                tokenizer.item_index(item)
            except KeyError as error:
                raise type(error)(f"{where}: {error}") from None
    return [str(item) for item in value]


class PreferenceDataCollator:
    """Batches preference rows for the encoder-decoder.

    Rows: ``{"history": [item ids], "chosen": [item ids], "rejected": [item ids]}`` plus optionally ``"target"``
    (the real next session, for the NTP term; ``None``/missing/empty = no NTP for that row) and
    ``"ref_chosen_logps"`` / ``"ref_rejected_logps"`` (precomputed reference log-probs). Other keys are ignored.

    Args:
        tokenizer: The ``SemanticIDTokenizer`` the model was built with.
        max_history_items: History items the encoder reads (newest kept); default the tokenizer's.
        session_length: Most target items kept (longer targets are cut, as in pretraining); ``None`` keeps all.
            Chosen and rejected sessions are never cut: they are the objects being compared.

    Returns:
        ``input_ids`` / ``attention_mask`` ``[B, S]`` (encoder, right-padded); ``chosen_labels`` and
        ``rejected_labels`` ``[B, T]`` (``BOS c1..cL`` per item then EOS, both padded with -100 to one width ``T``);
        ``target_labels`` ``[B, T']`` when any row has a target (all -100 for rows without); ``ref_chosen_logps`` /
        ``ref_rejected_logps`` ``[B]`` when the rows carry them.
    """

    def __init__(self, tokenizer, max_history_items: Optional[int] = None, session_length: Optional[int] = None):
        if max_history_items is not None and max_history_items < 1:
            raise ValueError(f"max_history_items must be >= 1 or None, got {max_history_items}.")
        if session_length is not None and session_length < 1:
            raise ValueError(f"session_length must be >= 1 or None, got {session_length}.")
        self.tokenizer = tokenizer
        self.max_history_items = max_history_items
        self.session_length = session_length

    def __call__(self, features: Sequence[Dict[str, Any]]) -> Dict[str, torch.Tensor]:
        if not features:
            raise ValueError("Empty batch.")
        missing = [key for key in PAIR_COLUMNS if key not in features[0]]
        if missing:
            raise KeyError(f"Preference rows need {list(PAIR_COLUMNS)} item-id lists; missing {missing}.")
        tokenizer = self.tokenizer
        histories = [check_item_list(f["history"], f"Row {row}, column 'history'") for row, f in enumerate(features)]
        try:
            encoded = tokenizer.batch_encode_histories(histories, max_items=self.max_history_items)
        except KeyError:
            # Unknown item: look the ids up again only now, to name the row (not on every batch).
            for row, history in enumerate(histories):
                check_item_list(history, f"Row {row}, column 'history'", tokenizer)
            raise

        def encode(row: int, column: str, items) -> List[int]:
            try:
                return tokenizer.encode_session(check_item_list(items, f"Row {row}, column '{column}'"))
            except KeyError as error:
                raise type(error)(f"Row {row}, column '{column}': {error}") from None

        chosen = [encode(row, "chosen", f["chosen"]) for row, f in enumerate(features)]
        rejected = [encode(row, "rejected", f["rejected"]) for row, f in enumerate(features)]
        width = max(len(s) for s in chosen + rejected)
        batch = {
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
            "chosen_labels": pad_labels(chosen, width),
            "rejected_labels": pad_labels(rejected, width),
        }

        if any(f.get("target") for f in features):
            targets = []
            for row, f in enumerate(features):
                items = f.get("target") or []
                items = check_item_list(items, f"Row {row}, column 'target'", allow_empty=True)
                items = items[: self.session_length]
                targets.append(encode(row, "target", items) if items else [])
            batch["target_labels"] = pad_labels(targets)
        for key in REF_COLUMNS:
            if key in features[0]:
                batch[key] = torch.tensor([float(f[key]) for f in features], dtype=torch.float32)
        return batch


# ----------------------------------------------------------------------------------------------------
# Config and trainer
# ----------------------------------------------------------------------------------------------------


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


def disable_stochastic_layers(model) -> None:
    """What ``disable_dropout`` must also switch off on OneRec for the policy and reference to agree at step 0:
    ``nn.Dropout`` modules, T5 attention dropout (a float on ``T5Attention``) and the router's jitter noise."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "dropout", None), float):
            module.dropout = 0.0
        if isinstance(getattr(module, "jitter_noise", None), (int, float)):
            module.jitter_noise = 0.0


class OneRecDPOTrainer(DPOTrainer):
    """``trl.DPOTrainer`` for the OneRec encoder-decoder on item-id preference rows.

    With ``args.disable_dropout`` (default, as in TRL) dropout, T5 attention dropout and router jitter are switched
    off on the ``model`` and ``ref_model`` instances for good (:func:`disable_stochastic_layers`; the saved config
    keeps its rates, so a reloaded model has them again).

    Args:
        model: ``OneRecForConditionalGeneration`` (or a directory it loads from), the snapshot ``M_t`` to train.
        ref_model: Frozen reference ``M_t``. ``None``: a deep copy of ``model`` is made here, unless
            ``args.precompute_ref_log_probs`` (then the reference log-probs are computed once, before training, with
            ``model`` itself) or the run uses PEFT (``peft_config``, or a ``PeftModel``): then the reference is TRL's,
            the policy with its adapter disabled. It is put in eval mode with gradients off.
        args: :class:`OneRecDPOConfig` (a plain ``DPOConfig`` works with ``ntp_weight = dpo_weight = 1``).
        data_collator: Default :class:`PreferenceDataCollator` with the config's / model's history and session sizes.
        train_dataset / eval_dataset: ``datasets.Dataset`` (or a list of dicts) of preference rows (see
            :class:`PreferenceDataCollator`). They are validated, never tokenised as text.
        processing_class: The ``SemanticIDTokenizer`` (required).
        Other arguments: as ``DPOTrainer`` (``callbacks``, ``optimizers``, ``compute_metrics``, ``peft_config``).

    Logs, besides Trainer's ``loss``: TRL's ``rewards/{chosen,rejected,accuracies,margins}``, ``logps/*``,
    ``logits/*``, ``entropy``, ``mean_token_accuracy`` (over code tokens, level-restricted), and ``dpo_loss``,
    ``ntp_loss``, ``aux_loss``, ``z_loss``.
    """

    def __init__(
        self,
        model,
        ref_model=None,
        args: Optional[DPOConfig] = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        **kwargs,
    ):
        if processing_class is None:
            raise ValueError("processing_class is required: pass the SemanticIDTokenizer the model was built with.")
        if isinstance(model, str):
            from modeling_onerec import OneRecForConditionalGeneration

            model = OneRecForConditionalGeneration.from_pretrained(model)
        args = args if args is not None else OneRecDPOConfig(output_dir="onerec-dpo")
        self._layout = _layout(model, processing_class)  # before super(): precomputing reference log-probs needs it
        if isinstance(train_dataset, list):
            train_dataset = Dataset.from_list(train_dataset)
        if isinstance(eval_dataset, list):
            eval_dataset = Dataset.from_list(eval_dataset)
        if Version(trl.__version__).release[:2] != Version(TESTED_TRL).release[:2]:
            warnings.warn(
                f"OneRecDPOTrainer was written against trl {TESTED_TRL}.x (it reuses DPOTrainer internals); "
                f"trl {trl.__version__} is installed. Run tests/test_preference.py before trusting its "
                "losses.",
                stacklevel=2,
            )
        uses_peft = is_peft_model(model) or kwargs.get("peft_config") is not None
        if ref_model is None and not args.precompute_ref_log_probs and not uses_peft:
            # TRL would rebuild the reference from a hub path, which this model does not have. (With PEFT, TRL's own
            # reference is the model with its adapter disabled: no copy.)
            ref_model = copy.deepcopy(model)
        if ref_model is not None:
            ref_model.eval().requires_grad_(False)
        if args.disable_dropout:  # before super(): a reference precompute runs inside it
            for module in (model, ref_model):
                if module is not None:
                    disable_stochastic_layers(module)
        if data_collator is None:
            config = model.config
            data_collator = PreferenceDataCollator(
                processing_class,
                max_history_items=getattr(args, "max_history_items", None) or config.max_history_items,
                session_length=getattr(args, "session_length", None) or getattr(config, "session_length", None),
            )
        self.ntp_weight = float(getattr(args, "ntp_weight", 1.0))
        self.dpo_weight = float(getattr(args, "dpo_weight", 1.0))
        had_forward = {id(m): "forward" in vars(m) for m in (model, ref_model) if m is not None}

        super().__init__(
            model=model,
            ref_model=ref_model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **kwargs,
        )

        for module in (model, ref_model):
            if module is not None and not had_forward[id(module)]:
                self._remove_fused_lm_head(module)
        # MoE terms are the model's own (router_aux_loss_coef * aux + router_z_loss_coef * z), added in compute_loss.
        self.aux_loss_enabled = False
        self.cdpo_weight = self._take_cdpo_out_of_loss_types()

    @staticmethod
    def _remove_fused_lm_head(module) -> None:
        """TRL (1.16, ``add_fused_lm_head``) patches a fused LM head onto the instance (``module.forward = ...``,
        closing over the old bound forward). Scoring goes through :class:`SessionScorer`, which never uses it, and
        the patch would make a later deepcopy of the model call the *original* model's forward: remove it."""
        if "forward" in vars(module):
            del module.forward

    def _take_cdpo_out_of_loss_types(self) -> float:
        """``cdpo`` is TRL's ``sigmoid`` loss plus ``label_smoothing * beta * mean(delta)`` (see
        :class:`OneRecDPOConfig`), a term TRL 1.16 does not have: TRL computes ``sigmoid`` for that entry and
        :meth:`compute_loss` adds the rest. Returns the summed weight of the ``cdpo`` entries."""
        weight = sum(w for t, w in zip(self.loss_types, self.loss_weights) if t == "cdpo")
        self.loss_types = ["sigmoid" if t == "cdpo" else t for t in self.loss_types]
        return weight

    # ------------------------------------------------------------------ data
    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        """Validates item-id rows (columns, non-empty lists, known ids); no text tokenisation."""
        columns = dataset.column_names if isinstance(dataset, Dataset) else list(next(iter(dataset)).keys())
        missing = [column for column in PAIR_COLUMNS if column not in (columns or [])]
        if missing:
            raise KeyError(
                f"The {dataset_name} dataset needs {list(PAIR_COLUMNS)} item-id columns (optional "
                f"'target'); it lacks {missing} (columns: {columns})."
            )
        if isinstance(dataset, IterableDataset):
            return dataset  # checked batch by batch by the collator
        wanted = [c for c in (*PAIR_COLUMNS, "target") if c in dataset.column_names]
        for start in range(0, len(dataset), 1024):
            block = dataset[start : start + 1024]
            for offset in range(len(block["history"])):
                for column in wanted:
                    value = block[column][offset]
                    if column == "target" and not value:
                        continue
                    check_item_list(
                        value, f"{dataset_name} dataset, row {start + offset}, column '{column}'", processing_class
                    )
        return dataset

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = [*PAIR_COLUMNS, "target", *REF_COLUMNS]

    def _trl_inputs(self, inputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Our batch in the layout ``DPOTrainer._compute_loss`` reads: ``input_ids`` / ``attention_mask`` /
        ``completion_mask`` ``[2B, T+1]`` (decoder start token + session; chosen rows then rejected rows; only code
        tokens in the completion), plus the encoder inputs and any precomputed reference log-probs."""
        chosen, rejected = inputs["chosen_labels"], inputs["rejected_labels"]
        width = max(chosen.shape[1], rejected.shape[1])
        chosen, rejected = (F.pad(x, (0, width - x.shape[1]), value=-100) for x in (chosen, rejected))
        pair = torch.cat([chosen, rejected])  # [2B, T]
        real = pair != -100
        start = torch.full(
            (pair.shape[0], 1), self._layout["decoder_start_token_id"], dtype=pair.dtype, device=pair.device
        )
        offsets, vocab = self._layout["level_offsets"], self._layout["vocab_size"]
        is_code = (pair >= offsets[0]) & (pair < vocab)
        out = {
            "input_ids": torch.cat([start, pair.masked_fill(~real, self._layout["pad_token_id"])], dim=1),
            "attention_mask": torch.cat([torch.ones_like(start), real.long()], dim=1),
            "completion_mask": torch.cat([torch.zeros_like(start), is_code.long()], dim=1),
            "encoder_input_ids": inputs["input_ids"],
            "encoder_attention_mask": inputs["attention_mask"],
        }
        for key in REF_COLUMNS:
            if key in inputs:
                out[key] = inputs[key]
        return out

    # ------------------------------------------------------------------ reference
    @contextmanager
    def _reference_scorer(self):
        """TRL (1.16) calls ``self.ref_model(...)`` inside ``_compute_loss``: present the reference as a
        :class:`SessionScorer` for that call only, so ``trainer.ref_model`` stays the plain (frozen) model everywhere
        else. Under PEFT without a ``ref_model`` the reference is TRL's: the policy with its adapter disabled (or
        its ``"ref"`` adapter), through TRL's ``use_adapter``, exactly as TRL does for causal LMs."""
        reference = self.ref_model
        scorer = None
        if reference is not None:
            scorer = SessionScorer(reference, self._layout, statistics=False)
        elif is_peft_model(self.model) and not self.precompute_ref_logps:
            peft_model = self.accelerator.unwrap_model(self.model)
            scorer = SessionScorer(
                peft_model,
                self._layout,
                statistics=False,
                context=lambda: use_adapter(peft_model, "ref" if "ref" in peft_model.peft_config else None),
            )
        if scorer is not None:
            self.ref_model = scorer
        try:
            yield scorer
        finally:
            self.ref_model = reference

    def compute_ref_log_probs(self, model, inputs):
        """``(ref_chosen_logps [B], ref_rejected_logps [B])`` for one collated batch (used by
        ``precompute_ref_log_probs``); TRL's own code, with the model presented as a scorer."""
        return super().compute_ref_log_probs(
            SessionScorer(model, self._layout, statistics=False), self._trl_inputs(inputs)
        )

    # ------------------------------------------------------------------ loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """``dpo_weight * L_DPO + ntp_weight * NTP(target) + router terms``. On several processes the NTP and router
        terms are the global batch's (as in pretraining: each process returns its share of
        :func:`~trainers.pretraining.global_batch_losses` times the number of processes, because DDP averages the
        gradients); L_DPO is a mean over pairs, so equal shares of the batch need nothing more."""
        mode = "train" if self.model.training else "eval"
        num_processes = self.accelerator.num_processes
        global_terms = model.training and num_processes > 1
        encoder_hidden = (
            _unwrap(model)
            .get_encoder()(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            .last_hidden_state
        )  # once per row
        target_outputs = None
        if "target_labels" in inputs and bool((inputs["target_labels"] != -100).any()):
            target_outputs = model(
                encoder_outputs=BaseModelOutput(last_hidden_state=encoder_hidden),
                attention_mask=inputs["attention_mask"],
                labels=inputs["target_labels"],
                **({"output_router_logits": True} if global_terms else {}),
            )
        scorer = SessionScorer(
            model,
            self._layout,
            encoder_hidden_states=encoder_hidden,
            router_loss=target_outputs is None,
            statistics=True,
            router_logits=global_terms and target_outputs is None,
        )
        with self._reference_scorer() as reference:
            dpo_loss = super()._compute_loss(scorer, self._trl_inputs(inputs), return_outputs=False)
        if self.cdpo_weight:
            chosen, rejected = scorer.sequence_log_probs.chunk(2)
            if self.precompute_ref_logps:
                ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
            else:
                ref_chosen, ref_rejected = reference.sequence_log_probs.chunk(2)
            delta = (chosen - ref_chosen) - (rejected - ref_rejected)
            dpo_loss = dpo_loss + self.cdpo_weight * self.label_smoothing * self.beta * delta.mean()
        loss = self.dpo_weight * dpo_loss
        ntp = router_loss = aux = z = None
        if target_outputs is not None:
            ntp, aux, z = target_outputs.ntp_loss, target_outputs.aux_loss, target_outputs.z_loss
            router_loss = target_outputs.loss - target_outputs.ntp_loss
        else:
            router_loss, aux, z = scorer.router_loss, scorer.aux_loss, scorer.z_loss
        if global_terms:
            outputs, labels = (
                (target_outputs, inputs["target_labels"])
                if target_outputs is not None
                else (scorer.router_outputs, scorer.router_labels)
            )
            config = _unwrap(model).config
            terms = global_batch_losses(outputs, labels, config, self._sum_over_processes)
            # each process's share, times the processes: DDP's average of the gradients is then the global batch's
            ntp = terms["ntp_loss"] * num_processes if target_outputs is not None else None
            aux, z = (
                (terms["aux_loss"] * num_processes, terms["z_loss"] * num_processes)
                if "aux_loss" in terms
                else (
                    None,
                    None,
                )
            )
            router_loss = None if aux is None else config.router_aux_loss_coef * aux + config.router_z_loss_coef * z
        if ntp is not None:
            loss = loss + self.ntp_weight * ntp
        if router_loss is not None:
            loss = loss + router_loss
        metrics = self._metrics[mode]
        # Logged as the mean over processes: one all-reduce for all terms (TRL gathers its own metrics every step too).
        logged = {
            name: value
            for name, value in (("dpo_loss", dpo_loss), ("ntp_loss", ntp), ("aux_loss", aux), ("z_loss", z))
            if value is not None
        }
        totals = self._sum_over_processes(torch.stack([value.detach().float() for value in logged.values()]))
        for name, total in zip(logged, totals.tolist()):
            metrics[name].append(total / num_processes)
        return (loss, {"dpo_loss": dpo_loss.detach()}) if return_outputs else loss

    def _sum_over_processes(self, tensor: torch.Tensor) -> torch.Tensor:
        return sum_over_processes(self.accelerator, tensor)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # TRL's version re-runs the model for logits when asked for them; a preference batch has no single logits.
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None


__all__ = [
    "CodeTokenScores",
    "OneRecDPOConfig",
    "OneRecDPOTrainer",
    "PreferenceDataCollator",
    "SessionScorer",
    "check_item_list",
    "code_token_scores",
    "disable_stochastic_layers",
    "session_log_probs",
]
