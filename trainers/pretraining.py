"""Session-wise pretraining of OneRec (paper §3.2, Eq. 4) on the transformers ``Seq2SeqTrainer``.

* :class:`SessionDataCollator` -- ``{"history": [item ids], "target": [item ids]}`` samples to encoder inputs
  (the history's codes) and decoder labels (``BOS c1..cL`` per target item, then EOS; paper Eq. 3), tokenising
  every sample as it is batched: the plain reference of the fast path, which tokenises once
  (``trainers.data.tokenize_session_samples``) and then only pads (:class:`TokenizedSessionCollator`).
* :class:`OneRecPretrainingConfig` -- ``Seq2SeqTrainingArguments`` plus the few OneRec-specific knobs.
* :class:`OneRecPretrainer` -- ``Seq2SeqTrainer`` whose logs carry the NTP loss, the MoE auxiliary losses and the
  expert load next to the total loss; the loss itself is the model's (``NTP + aux + z``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

import pyarrow.compute as pc
import torch
from transformers import EarlyStoppingCallback, Seq2SeqTrainer, Seq2SeqTrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler

from modeling_onerec.modeling_onerec import router_loss_sums

from .data.collation import check_batch_columns, pad_labels, pad_rows
from .distributed import sum_over_processes


class SessionDataCollator:
    """Batches ``(history, target session)`` samples for the encoder-decoder.

    Args:
        tokenizer: The ``SemanticIDTokenizer`` the model was built with.
        max_history_items: History items the encoder reads (the newest are kept); default the tokenizer's.
        session_length: Most target items per sample (longer targets are cut; shorter ones are fine, the
            decoder then sees fewer ``BOS c1..cL`` blocks before EOS).

    Returns ``input_ids``/``attention_mask`` ``[B, S]`` (right-padded) and ``labels`` ``[B, T]`` padded with -100;
    the model builds ``decoder_input_ids`` by shifting ``labels`` right (T5's decoder start token = PAD).
    """

    def __init__(self, tokenizer, max_history_items: Optional[int] = None, session_length: int = 5):
        if max_history_items is None:
            max_history_items = tokenizer.max_history_items
        if max_history_items < 1 or session_length < 1:
            raise ValueError(
                f"max_history_items and session_length must be >= 1, got {max_history_items} and {session_length}."
            )
        self.tokenizer = tokenizer
        self.max_history_items = max_history_items
        self.session_length = session_length

    def __call__(self, features: Sequence[Dict[str, Any]]) -> Dict[str, torch.Tensor]:
        check_batch_columns(features, ("history", "target"), "trainers.data.build_session_samples(...)")
        encoded = self.tokenizer.batch_encode_histories(
            [f["history"] for f in features], max_items=self.max_history_items
        )
        sessions = [self.tokenizer.encode_session(list(f["target"])[: self.session_length]) for f in features]
        return {
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
            "labels": pad_labels(sessions),
        }


class TokenizedSessionCollator:
    """Pads and stacks samples of `tokenize_session_samples`: no tokenizer, no per-sample Python.

    Args:
        pad_token_id (`int`): The encoder's padding id (`tokenizer.pad_token_id`).

    Returns `input_ids` / `attention_mask` `[B, S]` (right-padded) and `labels` `[B, T]` padded with -100; the model
    builds `decoder_input_ids` by shifting `labels` right (T5's decoder start token = PAD). Same tensors as
    `trainers.pretraining.SessionDataCollator` on the item-id samples.
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = int(pad_token_id)

    def __call__(self, features: Sequence[Dict[str, Any]]) -> Dict[str, torch.Tensor]:
        check_batch_columns(
            features, ("input_ids", "labels"), "trainers.data.tokenize_session_samples(samples, tokenizer, ...)"
        )
        input_ids, attention_mask = pad_rows([f["input_ids"] for f in features], self.pad_token_id)
        labels, _ = pad_rows([f["labels"] for f in features], -100)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def history_lengths(dataset) -> list:
    """Number of history items of every sample of a ``datasets.Dataset`` (the sort key of length-grouped batching),
    in the dataset's current order (shuffles and selections respected): its ``num_history_items`` column when it
    was tokenised (``tokenize_session_samples``), otherwise read from the ``history`` lists in Arrow without
    materialising them."""
    if "num_history_items" in dataset.column_names:
        return dataset.with_format("arrow")["num_history_items"].to_pylist()
    return pc.list_value_length(dataset.with_format("arrow")["history"]).to_pylist()


def with_history_lengths(dataset, column: str = "num_history_items"):
    """``dataset`` with a ``column`` of history lengths (the sort key the Trainer's length-grouped sampler reads, via
    ``length_column_name``); returned unchanged if it already has one or is not a ``datasets.Dataset`` of samples."""
    if (
        getattr(dataset, "column_names", None) is None
        or column in dataset.column_names
        or "history" not in dataset.column_names
    ):
        return dataset
    return dataset.add_column(column, history_lengths(dataset))


class EpochLengthGroupedSampler(LengthGroupedSampler):
    """transformers' ``LengthGroupedSampler`` (batches of similar history lengths) that is told the epoch.

    * The lengths are a plain list, read from Arrow in one call (:func:`history_lengths`): the Trainer (5.24) hands the
      sampler ``dataset[column]``, a lazy ``datasets`` column whose every item read costs time proportional to its
      Arrow chunks, and the sampler reads it item by item (with 1.2M windows the first step had not come after 13
      minutes; from a list, seconds).
    * Each epoch's order is drawn from ``seed + epoch``, not from the global RNG: a resumed run repeats it exactly.
    * A dataset with ``set_epoch`` (:class:`~trainers.data.RandomWindowDataset`, new windows every epoch) is moved to
      the epoch first and its lengths re-read (accelerate 1.16 calls the sampler's ``set_epoch`` and then not the
      dataset's).

    Args:
        batch_size: Windows per (global) batch.
        dataset: A ``datasets.Dataset`` of samples or a dataset with ``lengths`` and ``set_epoch``.
        seed: Seed of the orders.
    """

    def __init__(self, batch_size: int, dataset, seed: int = 0):
        self.dataset, self.seed, self.epoch = dataset, int(seed), 0
        super().__init__(batch_size, lengths=self._lengths(), generator=torch.Generator().manual_seed(self.seed))

    def _lengths(self) -> list:
        lengths = getattr(self.dataset, "lengths", None)
        return list(map(int, lengths)) if lengths is not None else history_lengths(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
            self.lengths = self._lengths()
        self.generator = torch.Generator().manual_seed(self.seed + self.epoch)


@dataclass
class OneRecPretrainingConfig(Seq2SeqTrainingArguments):
    """``Seq2SeqTrainingArguments`` for session-wise pretraining. Defaults follow the paper where it says
    (Adam-style optimiser at 2e-4) and keep dataset columns the collator needs."""

    learning_rate: float = field(default=2e-4, metadata={"help": "Paper §5.1: 2e-4."})
    train_sampling_strategy: str = field(
        default="group_by_length",
        metadata={
            "help": "Batches of similar history lengths (the number of history items, column length_column_name). "
            "Histories are short-tailed (Beauty: median 4 items, 3%% at the 50-item cap), so random "
            "batches pad nearly every row to the cap: grouping trained 3.9x faster on Beauty (benchmarks/"
            "RESULTS.md). 'random' restores plain shuffling.",
            "choices": ["random", "sequential", "group_by_length", "batch_rebalance"],
        },
    )
    length_column_name: str = field(
        default="num_history_items",
        metadata={
            "help": "History items per sample, the sort key of length-grouped batches: a column of tokenised samples "
            "(tokenize_session_samples); OneRecPretrainer adds it to item-id samples."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Let examples/pretrain.py replace a finished run (final/, metrics.json) in output_dir; otherwise it "
            "refuses (resume with --resume_from_checkpoint instead)."
        },
    )
    remove_unused_columns: bool = field(default=False, metadata={"help": "The collator reads history/target."})
    early_stopping_patience: Optional[int] = field(
        default=None,
        metadata={
            "help": "Stop when metric_for_best_model has not improved for this many evaluations (transformers' "
            "EarlyStoppingCallback; needs load_best_model_at_end, so the best checkpoint is restored). "
            "None: train for the full budget."
        },
    )
    expert_load_plot: bool = field(
        default=True,
        metadata={"help": "Save expert_load.png and training_curves.png in output_dir at the end of training."},
    )


def check_process_count(world_size: int) -> None:
    """Fail when the script was launched as N processes (``WORLD_SIZE``) but the Trainer runs as one per process.

    That happens on CPUs under ``torchrun`` without ``--use_cpu true`` (transformers 5.24 then sees no accelerator and
    leaves the process group unused): every process would train the whole model on the whole data alone, N copies of
    a one-process run, and nothing would say so.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and world_size != launched:
        raise ValueError(
            f"Launched as {launched} processes (WORLD_SIZE={launched}) but the Trainer trains on {world_size}: each "
            "process would train alone. On CPUs pass --use_cpu true (use_cpu=True) so that the processes join one "
            "gloo group; on GPUs launch with torchrun or accelerate launch --multi_gpu."
        )


def global_batch_losses(
    outputs, labels: torch.Tensor, config, sum_over_processes: Callable[[torch.Tensor], torch.Tensor]
) -> Dict[str, torch.Tensor]:
    """This process's share of the NTP, load-balancing and z losses of the batch that all processes hold together.

    Summed over processes, each term equals the model's own term on one process holding the whole batch: the NTP and
    z losses are token means over the global batch (each process weights its mean by its share of the tokens), and the
    load-balancing loss ``E * sum_i f_i * P_i`` uses the global assignment fractions ``f_i`` (counts summed over
    processes, no gradient) with each process's part of the global mean probability ``P_i``. The paper gives no
    balance loss (only NTP); balancing over the global batch rather than each process's slice is what makes two
    processes train exactly as one, and lets experts specialise by batch rather than by micro-batch (Qwen's
    global-batch load balancing, arXiv 2501.11873).

    Args:
        outputs: The model's ``OneRecSeq2SeqLMOutput`` with ``router_logits`` (``output_router_logits=True``).
        labels: ``[B, T]`` this process's labels (``-100`` = ignored), the router's token mask.
        config: The model's ``OneRecConfig``.
        sum_over_processes: All-reduce sum of a tensor over processes (the identity on one process).

    Returns:
        ``{"ntp_loss", "aux_loss", "z_loss"}``, each this process's share (no term when the model has no sparse layer).
    """

    token_mask = labels.reshape(-1).to(outputs.ntp_loss.device) != -100
    router_logits = outputs.router_logits or ()
    top_k = config.num_experts_per_token
    sums = router_loss_sums(router_logits, top_k, token_mask) if router_logits else None
    local_counts = [outputs.ntp_num_tokens.float().reshape(1)]
    if sums is not None:
        local_counts += [sums.num_tokens.reshape(1), sums.assignments.reshape(-1)]
    totals = sum_over_processes(torch.cat(local_counts).detach())
    terms = {"ntp_loss": outputs.ntp_loss * outputs.ntp_num_tokens.float() / totals[0].clamp(min=1)}
    if sums is not None:
        # Global assignment fractions and token count, this process's probability and z sums: the shares add up.
        global_sums = sums._replace(num_tokens=totals[1], assignments=totals[2:].reshape(sums.assignments.shape))
        terms["aux_loss"], terms["z_loss"] = global_sums.losses(top_k)
    return terms


class OneRecPretrainer(Seq2SeqTrainer):
    """``Seq2SeqTrainer`` for OneRec: the loss is the model's ``NTP + aux + z``; every training log also reports
    ``ntp_loss``, ``aux_loss``, ``z_loss`` (means since the previous log) and ``expert_load_max`` /
    ``expert_load_min`` (the busiest / idlest expert's share of assignments times the number of experts, worst
    over sparse layers: 1.0 is perfect balance)."""

    def __init__(
        self,
        *args,
        ranking_eval_samples=None,
        ranking_ks: Sequence[int] = (5, 10),
        ranking_num_beams: Optional[int] = None,
        ranking_exclude_history: bool = False,
        ranking_renormalize_logits: Optional[bool] = None,
        **kwargs,
    ):
        """Arguments as ``Seq2SeqTrainer`` (pass the tokenizer as ``processing_class``), plus:

        Args:
            ranking_eval_samples: Optional samples (``history``, ``target``) on which every ``evaluate()`` also
                computes ``recall@k`` / ``ndcg@k`` by full-catalogue constrained beam search
                (:class:`~trainers.evaluation.generative.GenerativeRecommender`); a validation subsample keeps
                this affordable on a CPU.
            ranking_ks: Cut-offs of those metrics.
            ranking_num_beams: Beam width (default: the first level's codebook size).
            ranking_exclude_history: Never rank the user's own history items.
            ranking_renormalize_logits: Score codes renormalised over the trie's valid codes (``model.recommend``);
                ``None``: the model's ``generation_config.renormalize_logits``.
        """
        super().__init__(*args, **kwargs)
        check_process_count(self.args.world_size)
        if self.args.fsdp and not self.is_fsdp_enabled:
            # transformers 5.24 + accelerate 1.16 drop --fsdp silently with use_cpu=True and train plain DDP.
            raise ValueError(
                f"--fsdp {self.args.fsdp!r} was given, but the Trainer would train without sharding "
                f"({self.accelerator.distributed_type}): transformers ignores FSDP with --use_cpu true. On CPUs use DDP "
                "(torchrun --nproc_per_node N ... --use_cpu true); FSDP2 through the Trainer needs GPUs "
                "(accelerate launch --config_file examples/accelerate/fsdp.yaml). See docs/distributed.md."
            )
        # Length-grouped batching is the Trainer's own: it reads the history lengths from args.length_column_name.
        column = self.args.length_column_name
        self.train_dataset = with_history_lengths(self.train_dataset, column)
        if isinstance(self.eval_dataset, dict):
            self.eval_dataset = {name: with_history_lengths(split, column) for name, split in self.eval_dataset.items()}
        else:
            self.eval_dataset = with_history_lengths(self.eval_dataset, column)
        patience = getattr(self.args, "early_stopping_patience", None)
        if patience is not None:
            if patience < 1 or not self.args.load_best_model_at_end or self.args.metric_for_best_model is None:
                raise ValueError(
                    f"early_stopping_patience={patience} needs a value >= 1, --load_best_model_at_end "
                    "true and --metric_for_best_model (e.g. recall@10 with --ranking_eval_users > 0, "
                    "or loss)."
                )
            self.add_callback(EarlyStoppingCallback(early_stopping_patience=patience))
        self.ranking_eval_samples = ranking_eval_samples
        self.ranking_ks = tuple(ranking_ks)
        self.ranking_num_beams = ranking_num_beams
        self.ranking_exclude_history = ranking_exclude_history
        self.ranking_renormalize_logits = ranking_renormalize_logits
        # Our forward returns the mean token loss itself: let the Trainer scale for gradient accumulation.
        self.model_accepts_loss_kwargs = False
        self._term_sums: Dict[str, torch.Tensor] = {}
        self._term_steps = 0
        self._load_sum: Optional[torch.Tensor] = None
        self.expert_load_total: Optional[torch.Tensor] = None  # [sparse layers, E] summed over all training steps

    def _get_train_sampler(self, train_dataset=None):
        """Length-grouped batches through :class:`EpochLengthGroupedSampler` (lengths read once, seeded per epoch,
        datasets that draw new windows per epoch); other strategies are the Trainer's.

        transformers 5.24 has no public hook for the sampler's lengths: ``_get_train_sampler`` is overridden (as TRL's
        trainers do); ``tests/test_pretraining.py`` fails if its signature changes."""
        train_dataset = self.train_dataset if train_dataset is None else train_dataset
        if self.args.train_sampling_strategy != "group_by_length" or not (
            hasattr(train_dataset, "set_epoch")
            or self.args.length_column_name in getattr(train_dataset, "column_names", ())
        ):
            return super()._get_train_sampler(train_dataset)
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        batch_size = self.args.train_batch_size * self.args.gradient_accumulation_steps
        return EpochLengthGroupedSampler(batch_size, train_dataset, seed=seed)

    def create_model_card(self, model_name: Optional[str] = None, tags=None, **kwargs) -> None:
        """Writes the OneRec card (rendered from the model config, ``model.model_card``) to ``output_dir/README.md``
        in place of the Trainer's generic draft; ``Trainer.push_to_hub`` calls this before uploading the folder.
        The Trainer's other card arguments (language, license, datasets, ...) are not used."""
        if not self.is_world_process_zero():
            return
        model = self.accelerator.unwrap_model(self.model)
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        card = model.model_card(model_name=model_name or Path(self.args.output_dir).name, tags=tags)
        card.save(str(Path(self.args.output_dir) / "README.md"))

    def train(self, *args, **kwargs):
        result = super().train(*args, **kwargs)
        if self.expert_load_total is not None:
            self.expert_load_total = self._sum_over_processes(self.expert_load_total)
        if getattr(self.args, "expert_load_plot", False) and self.is_world_process_zero():
            from .evaluation.plots import plot_expert_load, plot_training_curves

            plot_training_curves(self.state.log_history, f"{self.args.output_dir}/training_curves.png")
            if self.expert_load_total is not None:
                plot_expert_load(self.expert_load_total.cpu(), f"{self.args.output_dir}/expert_load.png")
        return result

    def evaluation_loop(
        self,
        dataloader,
        description: str,
        prediction_loss_only: Optional[bool] = None,
        ignore_keys=None,
        metric_key_prefix: str = "eval",
    ):
        """The Trainer's loop (the loss), plus ``recall@k`` / ``ndcg@k`` on ``ranking_eval_samples`` when evaluating.

        Added here, inside the loop's metrics, so that everything that reads evaluation metrics sees them: the log,
        the best-checkpoint choice (``metric_for_best_model="recall@10"``) and ``EarlyStoppingCallback``.
        """
        output = super().evaluation_loop(
            dataloader,
            description,
            prediction_loss_only=prediction_loss_only,
            ignore_keys=ignore_keys,
            metric_key_prefix=metric_key_prefix,
        )
        if self.ranking_eval_samples is not None and description == "Evaluation":  # not for predict()
            from .evaluation import GenerativeRecommender, evaluate_recommender

            recommender = GenerativeRecommender(
                self.model,
                self.processing_class,
                num_beams=self.ranking_num_beams,
                renormalize_logits=self.ranking_renormalize_logits,
            )
            # Each process ranks its share of the users; every process gets the same metrics.
            scores, _ = evaluate_recommender(
                recommender,
                self.ranking_eval_samples,
                self.ranking_ks,
                exclude_history=self.ranking_exclude_history,
                progress=False,
            )
            names = [f"{metric}@{k}" for k in self.ranking_ks for metric in ("recall", "ndcg")]
            output.metrics.update({f"{metric_key_prefix}_{name}": scores[name] for name in names})
        return output

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The model's loss, ``NTP + aux + z``. On several processes, the loss of the global batch: each process
        returns its share (:func:`global_batch_losses`) times the number of processes, because DDP averages the
        gradients over processes; the step is then the one a single process holding the whole batch would take."""
        num_processes = self.accelerator.num_processes
        if not model.training or num_processes == 1:
            outputs = model(**inputs)
            terms = {name: getattr(outputs, name, None) for name in ("ntp_loss", "aux_loss", "z_loss")}
            loss = outputs.loss
        else:
            outputs = model(**inputs, output_router_logits=True)
            config = self.accelerator.unwrap_model(model).config
            terms = global_batch_losses(outputs, inputs["labels"], config, self._sum_over_processes)
            loss = terms["ntp_loss"]
            if "aux_loss" in terms:
                loss = (
                    loss + config.router_aux_loss_coef * terms["aux_loss"] + config.router_z_loss_coef * terms["z_loss"]
                )
            loss = loss * num_processes
        if model.training:
            # Sums stay on the model's device: a float()/.cpu() per step would stall the GPU at every step;
            # they are read once per logging interval.
            for name, value in terms.items():
                if value is not None:
                    value = value.detach().float()
                    self._term_sums[name] = value if name not in self._term_sums else self._term_sums[name] + value
            self._term_steps += 1
            load = getattr(outputs, "expert_load", None)
            if load is not None:
                load = load.detach().float()
                self._load_sum = load if self._load_sum is None else self._load_sum + load
                self.expert_load_total = load if self.expert_load_total is None else self.expert_load_total + load
        return (loss, outputs) if return_outputs else loss

    def _sum_over_processes(self, tensor: torch.Tensor) -> torch.Tensor:
        return sum_over_processes(self.accelerator, tensor)

    def log(self, logs: Dict[str, float], start_time: Optional[float] = None) -> None:
        # Every process logs at the same steps (the Trainer gathers the loss there too), so the sums can be reduced:
        # the logged terms and expert load are the global batch's, not one process's.
        if "loss" in logs and self._term_steps:
            names = sorted(self._term_sums)
            if names:
                # On several processes each sum is this process's share: summed over processes, the global term.
                totals = self._sum_over_processes(torch.stack([self._term_sums[name] for name in names]))
                for name, total in zip(names, totals):
                    logs[name] = round(float(total) / self._term_steps, 4)
            if self._load_sum is not None:
                load_sum = self._sum_over_processes(self._load_sum)
                share = (load_sum / load_sum.sum(dim=1, keepdim=True)).cpu()
                logs["expert_load_max"] = round(float((share.max(dim=1).values * share.shape[1]).max()), 3)
                logs["expert_load_min"] = round(float((share.min(dim=1).values * share.shape[1]).min()), 3)
            self._term_sums, self._term_steps, self._load_sum = {}, 0, None
        super().log(logs, start_time)


__all__ = [
    "EpochLengthGroupedSampler",
    "OneRecPretrainer",
    "OneRecPretrainingConfig",
    "SessionDataCollator",
    "TokenizedSessionCollator",
    "check_process_count",
    "global_batch_losses",
    "history_lengths",
    "pad_labels",
    "pad_rows",
]
