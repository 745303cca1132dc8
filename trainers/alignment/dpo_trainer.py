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

``OneRecDPOTrainer``: loss ``dpo_weight * L_DPO (TRL's, any loss_type) + ntp_weight * NTP(target) +`` the model's
own MoE router terms. Its pieces: ``session_scoring`` (log-probabilities), ``dpo_collator`` (batches),
``dpo_config`` (``OneRecDPOConfig``).

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
(``remove_fused_lm_head``), ``loss_types`` with ``cdpo`` mapped to ``sigmoid`` plus our term
(``_take_cdpo_out_of_loss_types``), ``aux_loss_enabled`` off (the router terms are the model's own) and ``_metrics``
for our extra logs.
"""

from __future__ import annotations

import copy
import logging
import warnings
from contextlib import contextmanager
from typing import Dict, Optional

import torch
import torch.nn.functional as F
import trl
from accelerate.utils import extract_model_from_parallel, is_peft_model
from datasets import Dataset, IterableDataset
from packaging.version import Version
from transformers.modeling_outputs import BaseModelOutput
from trl import DPOConfig, DPOTrainer
from trl.trainer.utils import use_adapter

from modeling_onerec.modeling_onerec import code_token_mask
from tokenization_semantic_id.tokenization_semantic_id import check_item_list

from ..distributed import sum_over_processes
from ..pretraining import global_batch_losses
from .dpo_collator import PAIR_COLUMNS, REF_COLUMNS, PreferenceDataCollator
from .dpo_config import OneRecDPOConfig
from .session_scoring import SessionScorer, token_layout

logger = logging.getLogger(__name__)


# The TRL minor these touch points were written against; setup.py pins trl to it (private internals move between
# minors), and OneRecDPOTrainer warns when built under another one.
TESTED_TRL = "1.16"


def policy_and_tokenizer(trainer_name: str, model, processing_class, tests: str):
    """The checks both OneRec TRL trainers start with: a tokenizer is given, a folder name becomes the model it holds,
    and a TRL minor other than :data:`TESTED_TRL` is warned about (naming the test file that pins the internals the
    trainer reuses). Returns the model."""
    if processing_class is None:
        raise ValueError("processing_class is required: pass the SemanticIDTokenizer the model was built with.")
    if isinstance(model, str):
        from modeling_onerec import OneRecForConditionalGeneration

        model = OneRecForConditionalGeneration.from_pretrained(model)
    if Version(trl.__version__).release[:2] != Version(TESTED_TRL).release[:2]:
        warnings.warn(
            f"{trainer_name} was written against trl {TESTED_TRL}.x (it reuses TRL trainer internals); trl "
            f"{trl.__version__} is installed. Run {tests} before trusting it.",
            stacklevel=3,
        )
    return model


def remove_fused_lm_head(module) -> None:
    """TRL (1.16, ``add_fused_lm_head``) patches a fused causal-LM head onto the instance (``module.forward = ...``,
    closing over the old bound forward). OneRec's trainers score through their own encoder-decoder path, which never
    uses it, and the patch would make a later deepcopy of the model call the *original* model's forward: remove it.
    Call it only on a module that had no instance ``forward`` before TRL's trainer was built."""
    if "forward" in vars(module):
        del module.forward


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
        model = policy_and_tokenizer("OneRecDPOTrainer", model, processing_class, "tests/test_preference.py")
        args = args if args is not None else OneRecDPOConfig(output_dir="onerec-dpo")
        self._layout = token_layout(
            model, processing_class
        )  # before super(): precomputing reference log-probs needs it
        if isinstance(train_dataset, list):
            train_dataset = Dataset.from_list(train_dataset)
        if isinstance(eval_dataset, list):
            eval_dataset = Dataset.from_list(eval_dataset)
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
                remove_fused_lm_head(module)
        # MoE terms are the model's own (router_aux_loss_coef * aux + router_z_loss_coef * z), added in compute_loss.
        self.aux_loss_enabled = False
        self.cdpo_weight = self._take_cdpo_out_of_loss_types()

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
        is_code = code_token_mask(pair, self._layout["level_offsets"], self._layout["vocab_size"])
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
            extract_model_from_parallel(model)
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
            config = extract_model_from_parallel(model).config
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
