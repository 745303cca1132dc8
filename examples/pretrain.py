"""Stage 2 of the OneRec pipeline: session-wise pretraining (paper §3.2, Eq. 4), then leave-one-out evaluation.

Needs a tokenizer from stage 1 (``examples/build_semantic_ids.py``). Trains ``OneRecForConditionalGeneration`` on
``(history, next m items)`` samples of the training part of every sequence with the transformers ``Trainer``
(progress bar, logging of the NTP loss, the MoE auxiliary losses and the expert load, checkpoints,
``--resume_from_checkpoint``), evaluates Recall/NDCG@5/10 on a validation subsample during training, and at the
end on the full test split by full-catalogue constrained beam search, with and without the user's history items.

    python examples/pretrain.py --dataset beauty --tokenizer_dir outputs/beauty/tokenizer \\
        --output_dir outputs/beauty/onerec --preset small --num_train_epochs 1
    python examples/pretrain.py ... --session_length 1       # TIGER-style point-wise generation
    python examples/pretrain.py ... --resume_from_checkpoint outputs/beauty/onerec/checkpoint-500
    python examples/pretrain.py ...   # the same command again: resumes from the newest checkpoint in --output_dir
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Mapping, Optional

import torch
from transformers import HfArgumentParser, pipeline, set_seed
from transformers.trainer_utils import get_last_checkpoint

from modeling_onerec import (
    HISTORY_ENCODINGS,
    RECOMMENDATION_TASK,
    SHAPE_KEYS,
    OneRecConfig,
    OneRecForConditionalGeneration,
)
from tokenization_semantic_id import SemanticIDTokenizer
from trainers.data import (
    PAIR_CONSTRUCTIONS,
    TOKENIZED_COLUMNS,
    RandomWindowDataset,
    build_session_samples,
    check_local_dir,
    leave_one_out_split,
    tokenize_session_samples,
)
from trainers.data.arguments import DatasetArguments, GenerativeEvaluationArguments, redeclare
from trainers.distributed import release_processes
from trainers.evaluation import held_out_sessions, markdown_table, sample_users, write_topk_json
from trainers.evaluation.generative import choose_renormalize_logits, evaluate_generative_model
from trainers.pretraining import OneRecPretrainer, OneRecPretrainingConfig, TokenizedSessionCollator

logger = logging.getLogger("pretrain")


@dataclass
class ModelArguments:
    preset: str = field(default="small", metadata={"help": "OneRecConfig preset (tiny, small, onerec-0.05b, ...)."})
    model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Start from a saved OneRec model instead of a fresh one."}
    )
    # The shape/regularisation arguments below default to None: a new model takes the stated default, a model loaded
    # with --model_name_or_path keeps its own value unless the argument is given (then its config is updated, so
    # what is trained is what is saved).
    session_length: Optional[int] = field(
        default=None, metadata={"help": "m: items per target session (1 = TIGER-style). New model: 5."}
    )
    max_history_items: Optional[int] = field(
        default=None, metadata={"help": "n: newest history items the encoder reads. New model: the tokenizer's (50)."}
    )
    num_experts: Optional[int] = field(default=None, metadata={"help": "Override the preset's experts (new model)."})
    dropout_rate: Optional[float] = field(
        default=None,
        metadata={
            "help": "T5 dropout. New model: 0.0, which won on Beauty validation at a 3-epoch budget (docs/results.md) "
            "and trains 1.4x faster on a CPU (dropout's random numbers are 30%% of a step); long runs to early "
            "stopping may want 0.1."
        },
    )
    attention_dropout_rate: Optional[float] = field(
        default=None,
        metadata={
            "help": "Dropout on the attention probabilities (OneRecConfig.attention_dropout_rate). New model: the "
            "same as --dropout_rate (T5's single rate); 0 keeps the CPU attention one fused kernel."
        },
    )
    expert_dispatch: Optional[str] = field(
        default=None,
        metadata={
            "help": "grouped (chosen experts' FLOPs only; CPU), grouped_mm (the same in two grouped matmuls, no host "
            "sync) or dense (fixed shapes, every expert on every token; GPU, torch.compile). New model: grouped.",
            "choices": ["grouped", "grouped_mm", "dense"],
        },
    )
    tie_output_embeddings: Optional[bool] = field(
        default=None,
        metadata={
            "help": "The output head shares the token embedding matrix (T5, TIGER); false gives it its own "
            "(OneRecConfig.tie_output_embeddings). New model: true."
        },
    )
    history_encoding: Optional[str] = field(
        default=None,
        metadata={
            "help": "What one encoder position is (OneRecConfig.history_encoding): tokens (one code token; TIGER, the "
            "paper) or items (one history item, the sum of its code embeddings; a shorter, cheaper encoder). New "
            "model: tokens.",
            "choices": list(HISTORY_ENCODINGS),
        },
    )
    history_recency_embeddings: Optional[bool] = field(
        default=None,
        metadata={
            "help": "Embeddings of each history item's recency rank (0 = the newest), added in the encoder "
            "(OneRecConfig.history_recency_embeddings), as SASRec's position embeddings count back from the last "
            "item. New model: false."
        },
    )
    cross_attention_recency_bias: Optional[bool] = field(
        default=None,
        metadata={
            "help": "A learned bias per head on the decoder's cross-attention by each history token's recency rank "
            "(OneRecConfig.cross_attention_recency_bias): lets the decoder look at the newest item. New model: false."
        },
    )
    newest_item_decoder_input: Optional[bool] = field(
        default=None,
        metadata={
            "help": "Add a learned map of the encoder's state at the newest history item to every decoder input "
            "(OneRecConfig.newest_item_decoder_input), as SASRec scores from the last position. New model: false."
        },
    )
    history_prefix_buckets: Optional[str] = field(
        default=None,
        metadata={
            "help": "Hashed embeddings of each history item's code prefixes, added in the encoder "
            "(OneRecConfig.history_prefix_buckets): an integer (0: off), or auto: twice the number of distinct "
            "prefixes of two or more codes in the tokenizer's catalogue, so that the table grows with the catalogue. "
            "New model: 0."
        },
    )


def prefix_bucket_count(value: str, tokenizer: SemanticIDTokenizer) -> int:
    """``--history_prefix_buckets`` as an int: ``auto`` is twice the distinct code prefixes of two or more codes in the
    tokenizer's catalogue (one bucket per prefix would share about 63% of them with another; two, about 39%)."""
    if value == "auto":
        codes = tokenizer.item_codes
        return 2 * sum(len(torch.unique(codes[:, :length], dim=0)) for length in range(2, codes.shape[1] + 1))
    try:
        return int(value)
    except ValueError:
        raise ValueError(
            f"--history_prefix_buckets {value!r} is neither an integer nor 'auto'; pass e.g. 0 or auto."
        ) from None


NEW_MODEL_DEFAULTS = {"session_length": 5, "dropout_rate": 0.0, "expert_dispatch": "grouped"}


@dataclass
class DataArguments(DatasetArguments):
    tokenizer_dir: str = field(
        default="outputs/beauty/tokenizer",
        metadata={"help": "SemanticIDTokenizer saved by examples/build_semantic_ids.py for the same dataset."},
    )
    pairs: str = field(
        default="prefix",
        metadata={
            "help": "How training (history, target) pairs are cut from each user's training sequence: prefix (one per "
            "target position, the longest history; TIGER), all_windows (every contiguous window up to "
            "--max_history_items history items), random_window (one window per user drawn afresh every epoch, "
            "seeded; resumes exactly). See trainers/data/windows.py.",
            "choices": list(PAIR_CONSTRUCTIONS),
        },
    )
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Cap on training samples (smoke runs)."})
    max_eval_samples: Optional[int] = field(
        default=2000, metadata={"help": "Validation samples for the evaluation loss (a random subset; None = all)."}
    )
    ranking_eval_users: int = field(
        default=512, metadata={"help": "Validation users scored by beam search at each evaluation (0 = loss only)."}
    )
    ranking_exclude_history: bool = field(
        default=False,
        metadata={
            "help": "The validation ranking never recommends the user's own history items (as the test table's "
            "'excluded' row); default: history items allowed."
        },
    )

    minimum_values: ClassVar[Mapping[str, int]] = {
        "max_train_samples": 1,
        "max_eval_samples": 1,
        "ranking_eval_users": 0,
    }


@dataclass
class EvaluationArguments(GenerativeEvaluationArguments):
    """The evaluation on the test split after training (``--num_beams`` also sets the validation ranking's beam)."""

    test_users: Optional[int] = redeclare(
        GenerativeEvaluationArguments,
        "test_users",
        help="Evaluate a seeded random subset of N test users (None = all, 0 = skip the test evaluation). The same N "
        "and --users_seed give the same users in examples/evaluate.py.",
    )
    topk_json: bool = field(default=True, metadata={"help": "Write each test user's top-10 item ids as JSON."})

    minimum_values: ClassVar[Mapping[str, int]] = {"test_users": 0}


def main(argv=None) -> dict:
    parser = HfArgumentParser((ModelArguments, DataArguments, EvaluationArguments, OneRecPretrainingConfig))
    model_args, data_args, eval_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    set_seed(training_args.seed)
    output_dir = Path(training_args.output_dir)

    resume_from = check_output_dir(output_dir, training_args)
    tokenizer = SemanticIDTokenizer.from_pretrained(check_local_dir(data_args.tokenizer_dir, "--tokenizer_dir"))
    given = {
        name: getattr(model_args, name)
        for name in (
            "session_length",
            "max_history_items",
            "dropout_rate",
            "attention_dropout_rate",
            "expert_dispatch",
            "history_encoding",
            "tie_output_embeddings",
            "history_recency_embeddings",
            "cross_attention_recency_bias",
            "newest_item_decoder_input",
            "num_experts",
        )
        if getattr(model_args, name) is not None
    }
    if model_args.history_prefix_buckets is not None:
        given["history_prefix_buckets"] = prefix_bucket_count(model_args.history_prefix_buckets, tokenizer)
    if model_args.model_name_or_path:
        for name in (
            "num_experts",
            "history_prefix_buckets",
            "history_recency_embeddings",
            "cross_attention_recency_bias",
            "newest_item_decoder_input",
        ):
            if name in given:
                raise ValueError(
                    f"--{name} {given[name]} cannot change the weights of the saved model "
                    f"{model_args.model_name_or_path}; drop the argument (the saved config keeps its value)."
                )
        # Config attributes passed to from_pretrained update the loaded config before the modules are built.
        model = OneRecForConditionalGeneration.from_pretrained(
            check_local_dir(model_args.model_name_or_path, "--model_name_or_path"), **given
        )
        model.config.check_tokenizer(tokenizer)
    else:
        model = OneRecForConditionalGeneration(
            OneRecConfig.from_tokenizer(tokenizer, preset=model_args.preset, **{**NEW_MODEL_DEFAULTS, **given})
        )

    # The tokenizer saved beside the model encodes histories as the model reads them (recommend(), the pipeline).
    tokenizer.set_max_history_items(model.config.max_history_items)
    data = data_args.load()
    splits = leave_one_out_split(data["sequences"])
    # Validation and test samples keep the whole history: the model reads its newest max_history_items itself, and
    # "history excluded" in a ranking must exclude every item the user consumed, not only the newest ones.
    samples = build_session_samples(splits, max_history=None, session_length=1)
    if data_args.pairs == "random_window":  # one window per user, drawn afresh (and tokenised) every epoch
        if data_args.max_train_samples is not None:
            raise ValueError(
                "--max_train_samples cuts a fixed set of windows; --pairs random_window draws one window per user "
                "per epoch. Drop one of the two (cap the run with --max_steps)."
            )
        train = RandomWindowDataset(
            splits["train"],
            tokenizer,
            max_history=model.config.max_history_items,
            session_length=model.config.session_length,
            seed=training_args.seed,
        )
    else:
        train = build_session_samples(
            splits,
            max_history=model.config.max_history_items,
            session_length=model.config.session_length,
            pairs=data_args.pairs,
        )["train"].shuffle(seed=training_args.seed)
        if data_args.max_train_samples is not None:
            train = train.select(range(min(data_args.max_train_samples, len(train))))
    if len(train) == 0:
        raise ValueError(
            f"No training windows in {data_args.dataset}: every user's training part holds fewer than 2 items (a window "
            "needs a history item and a target after it). Leave-one-out keeps each user's last 2 items for validation "
            "and test, so users need at least 4 interactions to train on; check the data or use a longer log."
        )
    validation = samples["validation"]
    eval_loss_samples = validation
    if data_args.max_eval_samples is not None:
        eval_loss_samples = validation.shuffle(seed=0).select(range(min(data_args.max_eval_samples, len(validation))))
    ranking_eval = None
    if data_args.ranking_eval_users > 0:
        ranking_eval = validation.shuffle(seed=0).select(range(min(data_args.ranking_eval_users, len(validation))))

    counts = model.config.parameter_counts()
    logger.info(
        "model %s: %.2fM parameters, %.2fM activated; %d training samples, %d validation users",
        model_args.preset,
        counts["total"] / 1e6,
        counts["activated"] / 1e6,
        len(train),
        len(validation),
    )

    # Tokenised once (vectorised, cached by datasets); batches then only pad integer rows.
    def tokenized(split):
        return tokenize_session_samples(
            split,
            tokenizer,
            max_history_items=model.config.max_history_items,
            session_length=model.config.session_length,
        ).select_columns(list(TOKENIZED_COLUMNS))

    eval_loss_samples = tokenized(eval_loss_samples)
    if not isinstance(train, RandomWindowDataset):
        train = tokenized(train)
    trainer = OneRecPretrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=eval_loss_samples,
        data_collator=TokenizedSessionCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        ranking_eval_samples=ranking_eval,
        ranking_num_beams=eval_args.num_beams,
        ranking_renormalize_logits=eval_args.renormalize_logits,
        ranking_exclude_history=data_args.ranking_exclude_history,
    )
    if resume_from:
        check_checkpoint_shape(resume_from, model.config)
    start = time.perf_counter()
    train_result = trainer.train(resume_from_checkpoint=resume_from)
    train_seconds = time.perf_counter() - start
    resumed_step = int(Path(resume_from).name.split("-")[-1]) if resume_from else 0
    # train_seconds covers this invocation only: after a resume, the steps since the checkpoint.
    timing = f"{train_seconds / 60:.1f} min on {trainer.model.device}"
    if resumed_step:
        timing = f"the last {train_result.global_step - resumed_step} in {timing} (resumed at step {resumed_step})"
    # How the saved model's searches score codes (its generation_config, read by recommend() and the pipeline):
    # the argument, else the better of the two on the validation users (the model's own choice, not the dataset's).
    if eval_args.renormalize_logits is not None:
        code_scoring = {"renormalize_logits": eval_args.renormalize_logits, "chosen_by": "argument"}
    elif ranking_eval is not None:
        choice, validation_metrics = choose_renormalize_logits(
            trainer.model,
            tokenizer,
            ranking_eval,
            num_beams=eval_args.num_beams,
            exclude_history=data_args.ranking_exclude_history,
        )
        code_scoring = {
            "renormalize_logits": choice,
            "chosen_by": f"validation ({len(ranking_eval)} users)",
            "validation": {f"renormalize_logits={value}": metrics for value, metrics in validation_metrics.items()},
        }
    else:
        code_scoring = {"renormalize_logits": False, "chosen_by": "default (no --ranking_eval_users)"}
    trainer.model.generation_config.renormalize_logits = code_scoring["renormalize_logits"]
    logger.info("code scoring of the saved model: %s", code_scoring)
    trainer.save_model(str(output_dir / "final"))  # the main process writes (the Trainer's rule)
    writes_files = trainer.is_world_process_zero()  # under torchrun every process evaluates; one writes
    if writes_files:
        # The recommendation pipeline's code, config entry and the tokenizer join the model's folder, so that
        # pipeline("generative-recommendation", model=<final>, trust_remote_code=True) works anywhere.
        pipeline(RECOMMENDATION_TASK, model=trainer.model, tokenizer=tokenizer).save_pretrained(
            str(output_dir / "final")
        )

    report = {
        "dataset": data_args.dataset,
        "preset": model_args.preset,
        "session_length": model.config.session_length,
        "parameters": counts,
        "pairs": data_args.pairs,
        "max_history_items": model.config.max_history_items,
        "train_samples": len(train),
        "steps": train_result.global_step,
        "train_loss": round(train_result.training_loss, 5),  # mean over the run's steps
        # the budget: --num_train_epochs, unless --max_steps (which then decides) is set
        "epochs": training_args.num_train_epochs if training_args.max_steps <= 0 else None,
        "epochs_trained": round(trainer.state.epoch or 0.0, 3),
        "last_evaluation": next(
            (entry for entry in reversed(trainer.state.log_history) if "eval_loss" in entry), None
        ),  # validation loss (and ranking metrics) of the last evaluation
        # Training alone, this invocation (after a resume: the steps since the checkpoint); the evaluations that ran
        # inside train() are taken out of its wall time.
        "train_windows_per_s": round(
            (train_result.global_step - resumed_step)
            * training_args.per_device_train_batch_size
            * training_args.world_size
            * training_args.gradient_accumulation_steps
            / max(
                train_seconds - sum(e.get("eval_runtime", 0.0) for e in trainer.state.log_history),
                1e-9,
            ),
            1,
        ),
        "code_scoring": code_scoring,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "best_metric": trainer.state.best_metric,
        "dropout_rate": model.config.dropout_rate,
        "attention_dropout_rate": model.config.attention_dropout_rate,
        "expert_dispatch": model.config.expert_dispatch,
        "history_encoding": model.config.history_encoding,
        "tie_output_embeddings": model.config.tie_output_embeddings,
        "history_prefix_buckets": model.config.history_prefix_buckets,
        "history_recency_embeddings": model.config.history_recency_embeddings,
        "cross_attention_recency_bias": model.config.cross_attention_recency_bias,
        "newest_item_decoder_input": model.config.newest_item_decoder_input,
        "learning_rate": training_args.learning_rate,
        "batch_size": training_args.per_device_train_batch_size,
        "train_seconds": round(train_seconds, 1),
        "resumed_from_step": resumed_step,
        "device": str(trainer.model.device),
        "torch_threads": torch.get_num_threads(),
        "processes": training_args.world_size,
        "global_batch_size": training_args.per_device_train_batch_size
        * training_args.world_size
        * training_args.gradient_accumulation_steps,
        "seed": training_args.seed,
    }
    if eval_args.test_users != 0:
        chosen = sample_users(samples["test"], eval_args.test_users, seed=eval_args.users_seed)
        session_rows = None
        if eval_args.session_eval_length > 0:
            session_rows = held_out_sessions(
                sample_users(samples["validation"], eval_args.test_users, seed=eval_args.users_seed), chosen
            )
        results, ranked = evaluate_generative_model(
            trainer.model,
            tokenizer,
            chosen,
            num_beams=eval_args.num_beams,
            renormalize_logits=eval_args.renormalize_logits,
            session_rows=session_rows,
            session_length=eval_args.session_eval_length or None,
        )
        if eval_args.topk_json and writes_files:
            for name, lists in ranked.items():
                write_topk_json(output_dir / f"topk_test_{name}.json", list(chosen["user_id"]), lists, k=10)
        report |= {"test_users": len(chosen), "users_seed": eval_args.users_seed, "test": results}
    if writes_files:
        (output_dir / "metrics.json").write_text(json.dumps(report, indent=2))
        card = trainer.model.model_card(
            model_name=f"{data_args.dataset}, {model_args.preset}, m = {model.config.session_length}",
            data_summary=f"`{data_args.dataset}` (leave-one-out split): {len(train):,} training windows.",
            training_summary=(
                f"{train_result.global_step:,} steps x batch {report['global_batch_size']}, "
                f"lr {training_args.learning_rate}, {report['epochs_trained']} epochs, "
                f"{timing}, seed {training_args.seed}. {scoring_summary(code_scoring)}"
            ),
            results_table=format_results(report["test"], report["test_users"]) if "test" in report else None,
        )
        card.save(str(output_dir / "final" / "README.md"))
    if writes_files:
        print(
            f"\nOneRec ({model_args.preset}, m={model.config.session_length}) on {data_args.dataset}: "
            f"{train_result.global_step} steps, {timing}, seed {training_args.seed}. {scoring_summary(code_scoring)}"
        )
        if "test" in report:
            print(format_results(report["test"], report["test_users"]))
        print(f"metrics -> {output_dir / 'metrics.json'}")
    return report


def scoring_summary(code_scoring: dict) -> str:
    """One sentence on how the saved model's searches score codes (``generation_config.renormalize_logits``)."""
    how = "renormalised over the valid codes" if code_scoring["renormalize_logits"] else "by the level softmax"
    return f"Codes scored {how} (renormalize_logits={code_scoring['renormalize_logits']}, {code_scoring['chosen_by']})."


def check_output_dir(output_dir: Path, training_args) -> Optional[str]:
    """The checkpoint to resume from, if any; a finished run is never replaced silently.

    * ``output_dir`` holds a finished run (``final/`` or ``metrics.json``): refused, unless
      ``--overwrite_output_dir true`` (start afresh) or ``--resume_from_checkpoint`` is given.
    * It holds ``checkpoint-*`` folders of an unfinished run: the same command resumes from the newest one (the
      convention of transformers' example scripts), with its windows, batch order, optimiser and RNG states;
      ``--overwrite_output_dir true`` starts afresh instead.
    """
    finished = [name for name in ("final", "metrics.json") if (output_dir / name).exists()]
    if finished and not training_args.overwrite_output_dir and not training_args.resume_from_checkpoint:
        raise FileExistsError(
            f"{output_dir} already holds a run ({', '.join(finished)}); it would be overwritten. Choose another "
            "--output_dir, resume with --resume_from_checkpoint, or pass --overwrite_output_dir true."
        )
    if training_args.resume_from_checkpoint or training_args.overwrite_output_dir or not output_dir.is_dir():
        return training_args.resume_from_checkpoint
    last = get_last_checkpoint(str(output_dir))
    if last is not None:
        logger.info(
            "Resuming the unfinished run in %s from %s (--overwrite_output_dir true starts afresh).", output_dir, last
        )
    return last


def check_checkpoint_shape(checkpoint: str, config) -> None:
    """A checkpoint resumed into a model of another shape (another ``--preset``, ``--num_experts``, tokenizer) fails in
    torch with a list of size mismatches; name the settings that differ instead."""
    path = Path(checkpoint) / "config.json"
    if not path.is_file():
        return
    saved = json.loads(path.read_text())
    differing = [
        f"{name}: {saved.get(name)!r} in the checkpoint, {getattr(config, name, None)!r} now"
        for name in SHAPE_KEYS
        if name in saved and saved.get(name) != getattr(config, name, None)
    ]
    if differing:
        raise ValueError(
            f"{checkpoint} holds a model of another shape ({'; '.join(differing)}): it cannot be resumed by this run. "
            "Pass the --preset, --num_experts and --tokenizer_dir it was trained with, or start afresh with "
            "--overwrite_output_dir true (or another --output_dir)."
        )


def format_results(results: dict, num_users: int) -> str:
    """Markdown lines for the ranking (both history settings) and, when present, the session metrics."""
    ranking = results["exclude_history"]
    rows = [
        [label] + [f"{results[name][metric]:.4f}" for metric in ("recall@5", "ndcg@5", "recall@10", "ndcg@10")]
        for name, label in (("exclude_history", "excluded"), ("all_items", "allowed"))
    ]
    lines = [
        f"test: {num_users} random users, full ranking, beam {ranking['num_beams']}",
        markdown_table(["history items", "Recall@5", "NDCG@5", "Recall@10", "NDCG@10"], rows, align="lrrrr"),
    ]
    if "session" in results:
        session = results["session"]
        lines.append(
            f"sessions (m={session['session_length']}, {session['session_mode']}) vs the 2 held-out items: "
            f"hit rate {session['session_hit_rate']:.4f}, consumed items {session['session_consumed_items']:.4f}, "
            f"coverage {session['coverage']:.4f}, intra-session diversity "
            f"{session['intra_session_diversity']:.3f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
    release_processes()  # under torchrun: leave together (trainers.distributed)
