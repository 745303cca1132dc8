"""On-policy alignment of OneRec on TRL's ``GRPOTrainer``: GRPO, ECPO (OneRec) and GBPO (OneRec-V2).

TRL's sampler (each history repeated ``G`` times, ``num_iterations`` passes over a generated batch), reward plumbing
(``reward_funcs``, ``reward_weights``, gathering across processes), advantage scaling (``scale_rewards``), loss
aggregation (``loss_type``), the KL term, and its logging are reused unchanged. What differs for the encoder-decoder
OneRec:

* **Prompts and completions**: a row's ``prompt`` is the user's history (item ids); through TRL it travels as the
  history's codes (:func:`~.rollouts.history_prompt_ids`, the whole history), and the completion is the session's
  tokens ``BOS c1..cL ... EOS``. The encoder reads the newest ``max_history_items`` items; every history item is
  excluded from generation.
* **Groups under the trie** (:func:`~.rollouts.session_groups`, through TRL's public ``rollout_func``): the ``G``
  beams of the trie-constrained beam search (native, or ``generate()`` with the tokenizer's prefix-allowed-tokens
  function) or ``G`` draws within the trie. Forced tokens (BOS, EOS) are masked out of the loss (``env_mask``).
* **One log-probability** (:func:`~.rollouts.constrained_token_log_probs`): each token renormalised over the tokens
  the trie allows, the sampler's distribution; the old policy, the reference and the current policy are scored with it.
* **Objectives**: ``objective="grpo"`` is TRL's own ``_compute_loss``; ``"ecpo"`` and ``"gbpo"`` are
  :func:`~.policy_losses.ecpo_loss` / :func:`~.policy_losses.gbpo_loss` with TRL's aggregation. To each the optional
  next-token loss on the row's real next session (``target`` column, OneRec's joint SFT) and the model's router terms
  are added.

Rows: ``{"prompt": [history item ids], "target": [next item ids]}`` (``target`` optional; other columns reach the
reward functions as keyword arguments, with ``session``: the generated session's item ids, ``None`` for a missing
beam). Rewards: :mod:`.rewards` (the session reward model, the real next items of the training split), or any TRL
reward function.

Touch points in TRL 1.16 (no public hook exists for an encoder-decoder policy; setup.py pins trl to that minor,
:data:`TESTED_TRL` is checked at construction, and ``tests/test_grpo.py`` checks each one):

* ``_get_per_token_logps_and_entropies``: overridden -- splits TRL's ``[prompt | completion]`` rows back into encoder
  inputs and decoder tokens and scores with :func:`~.rollouts.constrained_token_log_probs`;
* ``_generate_and_score_completions``: extended -- adds the rows' next-session labels (``target_labels``) and rollout
  metrics to TRL's output;
* ``_compute_loss``: called for ``objective="grpo"``; ``_metrics``: our extra logs;
* the reference model: TRL 1.16 rebuilds it from ``model.config._name_or_path``, which an in-memory model does not
  have, so ``args.beta`` reads 0 during ``GRPOTrainer.__init__`` and the reference (a frozen copy, or the one passed)
  is set afterwards; under PEFT the reference is TRL's, the adapter disabled;
* the fused LM head TRL patches onto the model instance is removed again (as in :mod:`.dpo_trainer`).
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, Dict, List, Optional

import torch
from accelerate.utils import extract_model_from_parallel, is_peft_model
from datasets import Dataset, IterableDataset
from trl import GRPOTrainer

from modeling_onerec.modeling_onerec import code_token_mask
from tokenization_semantic_id.tokenization_semantic_id import check_item_list

from ..data.collation import pad_labels
from ..distributed import sum_over_processes
from ..pretraining import global_batch_losses
from .dpo_trainer import disable_stochastic_layers, policy_and_tokenizer, remove_fused_lm_head
from .grpo_config import OneRecGRPOConfig
from .policy_losses import LOSS_TYPES, ecpo_loss, gbpo_loss, kl_penalty
from .rollouts import constrained_token_log_probs, history_prompt_ids, session_groups, split_prompt

ROW_COLUMNS = ("prompt", "target")


def _rollout(prompts: List[List[str]], trainer: "OneRecGRPOTrainer") -> Dict[str, Any]:
    """TRL's ``rollout_func``: the local generation batch's prompts arrive group by group (``G`` copies each)."""
    return trainer.generate_groups(prompts)


class OneRecGRPOTrainer(GRPOTrainer):
    """``trl.GRPOTrainer`` for the OneRec encoder-decoder (see the module docstring).

    Args:
        model: ``OneRecForConditionalGeneration`` (or a folder it loads from), the policy.
        reward_funcs: TRL reward functions (e.g. :class:`~.rewards.SessionRewardModelReward`,
            :class:`~.rewards.NextItemsReward`); weights in ``args.reward_weights``.
        args: :class:`OneRecGRPOConfig`.
        train_dataset / eval_dataset: ``datasets.Dataset`` (or a list of dicts) of ``{"prompt", "target"}`` rows.
        processing_class: The ``SemanticIDTokenizer`` (required).
        ref_model: The frozen reference for ``beta > 0``; default a copy of ``model`` (under PEFT: the model with its
            adapter disabled, TRL's).
        callbacks / optimizers / peft_config: As ``GRPOTrainer``.

    Logs, besides TRL's (``reward``, ``rewards/<name>/mean``, ``frac_reward_zero_std``, ``entropy``, ``kl``,
    ``clip_ratio/*``): ``policy_loss``, ``ntp_loss``, ``aux_loss``, ``z_loss``, ``ratio_mean`` and the objective's
    own (``early_clip_fraction``, ``bound_fraction``), ``rollout/valid_fraction`` and ``rollout/distinct_fraction``
    (distinct sessions per group over ``G``).
    """

    def __init__(
        self,
        model,
        reward_funcs,
        args: Optional[OneRecGRPOConfig] = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        ref_model=None,
        callbacks=None,
        optimizers=(None, None),
        peft_config=None,
    ):
        model = policy_and_tokenizer("OneRecGRPOTrainer", model, processing_class, "tests/test_grpo.py")
        args = args if args is not None else OneRecGRPOConfig(output_dir="onerec-grpo")
        if not isinstance(args, OneRecGRPOConfig):
            raise TypeError(f"args must be a OneRecGRPOConfig, got {type(args).__name__}.")
        if args.objective != "grpo" and args.loss_type not in LOSS_TYPES:
            raise ValueError(
                f"objective {args.objective!r} supports loss_type in {LOSS_TYPES}, got {args.loss_type!r}."
            )
        model.config.check_tokenizer(processing_class)
        self.session_length = args.session_length or model.config.session_length
        train_dataset = self._checked_rows(train_dataset, processing_class, "train")
        eval_dataset = self._checked_rows(eval_dataset, processing_class, "eval")
        uses_peft = is_peft_model(model) or peft_config is not None
        if args.beta != 0.0 and not uses_peft:
            ref_model = ref_model if ref_model is not None else copy.deepcopy(model)
            ref_model.eval().requires_grad_(False)
        else:
            ref_model = None
        if args.disable_dropout:
            for module in (model, ref_model):
                if module is not None:
                    disable_stochastic_layers(module)
        had_forward = "forward" in vars(model)
        beta = args.beta
        args.beta = 0.0 if ref_model is not None else beta  # see the module docstring: the reference is set below
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*rollout_func.*experimental")
                super().__init__(
                    model=model,
                    reward_funcs=reward_funcs,
                    args=args,
                    train_dataset=train_dataset,
                    eval_dataset=eval_dataset,
                    processing_class=processing_class,
                    callbacks=callbacks,
                    optimizers=optimizers,
                    peft_config=peft_config,
                    rollout_func=_rollout,
                )
        finally:
            args.beta = beta
        self.beta = beta
        if ref_model is not None:
            self.ref_model = self.accelerator.prepare_model(ref_model, evaluation_mode=True)
        base = self.model.get_base_model() if is_peft_model(self.model) else model
        if not had_forward:
            remove_fused_lm_head(base)
        self.aux_loss_enabled = False  # the router terms are the model's own, added in compute_loss
        self.ntp_weight = float(args.ntp_weight)

    # ------------------------------------------------------------------ data
    def _checked_rows(self, dataset, tokenizer, name: str):
        """A list becomes a ``Dataset``; ``prompt`` must hold known item ids (``target`` too, where present)."""
        if dataset is None:
            return None
        if isinstance(dataset, list):
            dataset = Dataset.from_list(dataset)
        if isinstance(dataset, IterableDataset):
            return dataset
        if "prompt" not in dataset.column_names:
            raise KeyError(
                f"The {name} dataset needs a 'prompt' column of history item ids (and optionally 'target', the real "
                f"next items); it has {dataset.column_names}."
            )
        for column in [c for c in ROW_COLUMNS if c in dataset.column_names]:
            for row, value in enumerate(dataset[column]):
                if column == "target" and not value:
                    continue
                check_item_list(value, f"{name} dataset, row {row}, column '{column}'", tokenizer)
        return dataset

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = list(ROW_COLUMNS)

    # ------------------------------------------------------------------ generation
    def generate_groups(self, prompts: List[List[str]]) -> Dict[str, Any]:
        """The ``rollout_func`` output for a local generation batch: ``prompts`` holds each history ``G`` times in a
        row. Returns TRL's ``prompt_ids`` / ``completion_ids`` / ``logprobs`` (the sampler's, or ``None`` for beams),
        ``env_mask`` (1 on code tokens of real sessions) and ``session`` (item ids, for the reward functions)."""
        mode = "train" if self.model.training else "eval"
        group = self.num_generations if mode == "train" else self.num_generations_eval
        if len(prompts) % group:
            raise ValueError(f"{len(prompts)} prompts are not whole groups of {group}.")
        histories = [list(prompts[start]) for start in range(0, len(prompts), group)]
        for index, history in enumerate(histories):
            if any(list(p) != history for p in prompts[index * group : (index + 1) * group]):
                raise ValueError(
                    "A group's prompts differ: groups were split across processes or batches. Keep "
                    "per_device_train_batch_size * steps_per_generation a multiple of num_generations."
                )
        args = self.args
        groups = session_groups(
            self.accelerator.unwrap_model(self.model),
            self.processing_class,
            histories,
            group_size=group,
            session_length=self.session_length,
            strategy=args.rollout_strategy,
            backend=args.search_backend,
            temperature=self.temperature,
            exclude_history=args.exclude_history,
            forbid_repeats=args.forbid_repeats,
        )
        tokenizer = self.processing_class
        completion = groups.completion_ids
        env_mask = code_token_mask(completion, tokenizer.level_offsets, tokenizer.vocab_size) & groups.valid[:, None]
        distinct = [
            len({tuple(s) for s in groups.sessions[start : start + group] if s is not None}) / group
            for start in range(0, len(groups.sessions), group)
        ]
        self._rollout_metrics = {
            "rollout/valid_fraction": groups.valid.float().mean().item(),
            "rollout/distinct_fraction": sum(distinct) / len(distinct),
        }
        return {
            "prompt_ids": [history_prompt_ids(tokenizer, history) for history in prompts],
            "completion_ids": completion.tolist(),
            "logprobs": None if groups.sampler_log_probs is None else groups.sampler_log_probs.tolist(),
            "env_mask": env_mask.long().tolist(),
            "session": groups.sessions,
        }

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        for name, value in getattr(self, "_rollout_metrics", {}).items():
            self._metrics[mode][name].append(value)
        if self.ntp_weight and "target" in inputs[0]:
            tokenizer = self.processing_class
            rows = [
                tokenizer.encode_session(row["target"][: self.session_length]) if row["target"] else []
                for row in inputs
            ]
            width = max(1, max(len(row) for row in rows))
            output["target_labels"] = pad_labels(rows, width).to(self.accelerator.device)
        return output

    # ------------------------------------------------------------------ scoring
    def _get_per_token_logps_and_entropies(
        self,
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=None,
        compute_entropy=False,
        compute_aux_loss=False,
        **unused,
    ):
        """TRL's scoring hook, for the encoder-decoder: ``input_ids`` ``[R, P + T]`` = left-padded history codes, then
        the session's ``T = logits_to_keep`` tokens. Returns ``(log_probs [R, T], entropies [R, T] or None, None)``
        under the policy of :func:`~.rollouts.constrained_token_log_probs`."""
        batch_size = batch_size or input_ids.shape[0]
        unwrapped = extract_model_from_parallel(model)
        all_log_probs, all_entropies = [], []
        for start in range(0, input_ids.shape[0], batch_size):
            rows = slice(start, start + batch_size)
            encoder_ids, encoder_mask, excluded = split_prompt(
                input_ids[rows, :-logits_to_keep],
                attention_mask[rows, :-logits_to_keep],
                self.processing_class,
                unwrapped.config.max_history_items,
            )
            scores = constrained_token_log_probs(
                model,
                self.processing_class,
                encoder_ids,
                encoder_mask,
                input_ids[rows, -logits_to_keep:],
                excluded_items=excluded if self.args.exclude_history else None,
                session_length=self.session_length,
                forbid_repeats=self.args.forbid_repeats,
                temperature=self.temperature,
                entropy=compute_entropy,
            )
            all_log_probs.append(scores.log_probs)
            all_entropies.append(scores.entropy)
        entropies = torch.cat(all_entropies) if compute_entropy else None
        return torch.cat(all_log_probs), entropies, None

    # ------------------------------------------------------------------ loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The objective's loss (+ ``beta`` KL), ``+ ntp_weight * NTP(target)`` ``+`` the model's router terms."""
        if return_outputs:
            raise ValueError("OneRecGRPOTrainer does not return outputs.")
        mode = "train" if self.model.training else "eval"
        if self.args.objective == "grpo":
            loss = super()._compute_loss(model, inputs)
        else:
            loss = self._policy_loss(model, inputs, mode)
        accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1
        if "target_labels" in inputs and bool((inputs["target_labels"] != -100).any()):
            encoder_ids, encoder_mask, _ = split_prompt(
                inputs["prompt_ids"],
                inputs["prompt_mask"],
                self.processing_class,
                extract_model_from_parallel(model).config.max_history_items,
            )
            labels = inputs["target_labels"]
            keep = (labels != -100).any(dim=1)
            num_processes = self.accelerator.num_processes
            global_terms = model.training and num_processes > 1
            outputs = model(
                input_ids=encoder_ids[keep],
                attention_mask=encoder_mask[keep],
                labels=labels[keep],
                **({"output_router_logits": True} if global_terms else {}),
            )
            ntp, aux, z = outputs.ntp_loss, outputs.aux_loss, outputs.z_loss
            router = outputs.loss - outputs.ntp_loss
            if global_terms:  # as the pretrainer and the DPO trainer: the global batch's terms, two processes as one
                config = extract_model_from_parallel(model).config
                terms = global_batch_losses(outputs, labels[keep], config, self._sum_over_processes)
                ntp = terms["ntp_loss"] * num_processes
                if "aux_loss" in terms:
                    aux, z = terms["aux_loss"] * num_processes, terms["z_loss"] * num_processes
                    router = config.router_aux_loss_coef * aux + config.router_z_loss_coef * z
            # TRL scales its loss for gradient accumulation itself (model_accepts_loss_kwargs is off): so do we.
            loss = loss + (self.ntp_weight * ntp + router) / accumulation
            logged = {
                name: value
                for name, value in (("ntp_loss", ntp), ("aux_loss", aux), ("z_loss", z))
                if value is not None
            }
            totals = self._sum_over_processes(torch.stack([value.detach().float() for value in logged.values()]))
            for name, total in zip(logged, totals.tolist()):
                self._metrics[mode][name].append(total / num_processes)
        return loss

    def _sum_over_processes(self, tensor: torch.Tensor) -> torch.Tensor:
        return sum_over_processes(self.accelerator, tensor)

    def _policy_loss(self, model, inputs, mode: str) -> torch.Tensor:
        """ECPO or GBPO on TRL's batch, aggregated as TRL aggregates ``loss_type`` (or per session)."""
        args = self.args
        completion_ids = inputs["completion_ids"]
        mask = inputs["completion_mask"] * inputs.get("tool_mask", torch.ones_like(inputs["completion_mask"]))
        input_ids = torch.cat([inputs["prompt_ids"], completion_ids], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        log_probs, entropies, _ = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, completion_ids.shape[1], compute_entropy=True
        )
        old = inputs.get("old_per_token_logps")
        old = log_probs.detach() if old is None else old
        advantages = inputs["advantages"]
        accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1
        if args.ratio_level == "session":
            valid = mask.any(dim=1)
            current = (log_probs * mask).sum(1)[valid]
            previous = (old * mask).sum(1)[valid]
            aggregation = dict(mask=None)
            scale = accumulation
            advantages = advantages[valid]
        else:
            current, previous = log_probs, old
            normalizer = None
            if self.loss_type == "dapo":  # TRL's: the generation batch's tokens, per process and accumulation window
                normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
                if mode == "train":
                    normalizer = normalizer * accumulation / args.steps_per_generation
            aggregation = dict(
                mask=mask.bool(),
                loss_type=self.loss_type,
                num_items_in_batch=normalizer,
                max_completion_length=completion_ids.shape[1],
            )
            scale = 1 if self.loss_type == "dapo" else accumulation
        if args.objective == "ecpo":
            loss, stats = ecpo_loss(current, previous, advantages, args.epsilon, args.ecpo_delta, **aggregation)
        else:
            loss, stats = gbpo_loss(current, previous, advantages, **aggregation)
        metrics = self._metrics[mode]
        metrics["policy_loss"].append(self.accelerator.gather(loss.detach()).mean().item())
        if self.beta != 0.0:
            reference = inputs["ref_per_token_logps"]
            if args.ratio_level == "session":
                reference = (reference * mask).sum(1)[mask.any(dim=1)]
            kl = kl_penalty(current, reference, **aggregation)
            loss = loss + self.beta * kl
            metrics["kl"].append(self.accelerator.gather(kl.detach()).mean().item())
        token_mask = mask.bool()
        entropy = (entropies * token_mask).sum() / token_mask.sum().clamp(min=1)
        metrics["entropy"].append(self.accelerator.gather(entropy.detach()).mean().item())
        for name, value in stats.items():
            metrics[name].append(self.accelerator.gather(value.detach().float()).mean().item())
        return loss / scale


__all__ = ["OneRecGRPOTrainer"]
