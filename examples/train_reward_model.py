"""Train the OneRec session reward model R(u, S) (paper §3.3.1) on real feedback and report held-out AUC.

Samples are ``(user history, session of m items, labels)`` from each user's time-ordered interactions
(:func:`trainers.data.build_reward_samples`); users are split into training and held-out users. MovieLens
(explicit ratings) gives the towers ``liked``, ``loved``, ``rating`` and ``engaged``; implicit datasets (the Amazon
sets) only ``engaged`` (real next session vs a popularity-sampled one).

    python examples/train_reward_model.py --dataset ml-100k --data_path <MovieLens-100K folder> \\
        --output_dir outputs/reward/ml-100k --num_train_epochs 2
    python examples/train_reward_model.py --dataset beauty --output_dir outputs/reward/beauty

Writes to ``output_dir``: the model (``config.json``, ``model.safetensors``; reload with
``OneRecRewardModel.from_pretrained``), ``reward_item_vocab.json`` (``RewardItemVocabulary.from_pretrained``) and
``metrics.json`` (per-tower AUC on held-out users, data and training summary). Prints the AUC table.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar, Mapping, Optional

from datasets import DatasetDict
from transformers import HfArgumentParser, set_seed

from modeling_onerec.configuration_reward import OneRecRewardConfig
from modeling_onerec.modeling_reward import OneRecRewardModel, register_reward_auto_classes
from trainers.alignment.reward_model import RewardItemVocabulary, RewardModelTrainer, RewardModelTrainingConfig
from trainers.data import build_reward_samples, default_reward_names, leave_one_out_split
from trainers.data.arguments import DatasetArguments, SessionSampleArguments
from trainers.evaluation import format_auc_table

logger = logging.getLogger("train_reward_model")


@dataclass
class RewardDataArguments(DatasetArguments):
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Cap on training samples (smoke runs)."})
    training_part_only: bool = field(
        default=True,
        metadata={
            "help": "Build samples from the leave-one-out training part of every sequence only (all but the last two "
            "items), so that a reward model used to align OneRec never saw the validation/test targets."
        },
    )

    minimum_values: ClassVar[Mapping[str, int]] = {"max_train_samples": 1}


@dataclass
class RewardSampleArguments(SessionSampleArguments):
    """The options of :func:`trainers.data.build_reward_samples` that the command line sets (passed on as
    ``build_reward_samples(data, **asdict(...), ...)``)."""

    max_gap_seconds: Optional[float] = field(
        default=3600,
        metadata={"help": "With timestamps, sessions never span a gap longer than this (None: ignore timestamps)."},
    )
    negatives_per_session: int = field(default=1, metadata={"help": "Sampled sessions per real one (engaged = 0)."})
    test_user_fraction: float = field(default=0.2, metadata={"help": "Share of users held out for AUC."})

    minimum_values: ClassVar[Mapping[str, int]] = {"negatives_per_session": 0}


@dataclass
class RewardModelArguments:
    hidden_size: int = field(default=64, metadata={"help": "Item / session representation width."})
    num_attention_heads: int = field(default=2, metadata={"help": "Heads of target and session attention."})
    num_session_layers: int = field(default=1, metadata={"help": "Session self-attention layers (Eq. 5)."})
    tower_hidden_size: int = field(default=64, metadata={"help": "Hidden width of each reward tower."})
    dropout: float = field(default=0.1, metadata={"help": "Dropout."})


def main(argv=None) -> dict:
    parser = HfArgumentParser(
        (RewardDataArguments, RewardSampleArguments, RewardModelArguments, RewardModelTrainingConfig)
    )
    data_args, sample_args, model_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    register_reward_auto_classes()
    set_seed(training_args.seed)
    started = time.perf_counter()

    data = data_args.load()
    if data_args.training_part_only:
        # The reward picks DPO pairs for OneRec; had it seen the held-out targets, alignment would leak them.
        data = DatasetDict({**data, "sequences": leave_one_out_split(data["sequences"])["train"]})
    reward_names = default_reward_names(data["sequences"])
    samples = build_reward_samples(data, **asdict(sample_args), seed=training_args.seed, reward_names=reward_names)
    train, test = samples["train"], samples["test"]
    if data_args.max_train_samples is not None:
        train = train.shuffle(seed=training_args.seed).select(range(min(data_args.max_train_samples, len(train))))
    vocabulary = RewardItemVocabulary.from_dataset(data)
    logger.info(
        "%s: %d training samples, %d held-out samples (%d held-out users), %d items, rewards %s",
        data_args.dataset,
        len(train),
        len(test),
        len(set(test["user_id"])),
        len(vocabulary),
        reward_names,
    )

    config = OneRecRewardConfig(
        num_items=vocabulary.num_indices,
        reward_names=reward_names,
        max_history_items=sample_args.max_history,
        max_session_items=sample_args.session_length,
        **asdict(model_args),
    )
    model = OneRecRewardModel(config)
    trainer = RewardModelTrainer(
        model=model, args=training_args, train_dataset=train, eval_dataset=test, vocabulary=vocabulary
    )
    train_result = trainer.train()
    metrics = trainer.evaluate(metric_key_prefix="test")
    trainer.save_model(training_args.output_dir)
    wall_seconds = time.perf_counter() - started

    table = format_auc_table(metrics, reward_names, prefix="test_")
    report = {
        "dataset": data_args.dataset if data_args.data_path is None else data_args.data_path,
        "reward_names": list(reward_names),
        "samples": {
            "train": len(train),
            "test": len(test),
            "test_users": len(set(test["user_id"])),
            "items": len(vocabulary),
        },
        "test": {key.removeprefix("test_"): value for key, value in metrics.items()},  # "epoch" has no prefix
        "training": {
            **train_result.metrics,
            "wall_seconds_total": wall_seconds,
            "seed": training_args.seed,
            "learning_rate": training_args.learning_rate,
            "epochs": training_args.num_train_epochs,
            "batch_size": training_args.per_device_train_batch_size,
        },
        "data_arguments": asdict(data_args) | asdict(sample_args),
        "model_config": config.to_dict(),
        "auc_note": "ROC AUC on held-out users, over the samples that have the target; 'rating' (soft label) counts "
        "as positive from 0.75 (mean rating >= 4 of 5), Pearson r against the soft label is given too.",
    }
    output_dir = Path(training_args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "metrics.json").write_text(json.dumps(report, indent=2, default=str))
    print(
        f"\nReward model on {report['dataset']}: {report['samples']['train']} training samples, "
        f"{report['samples']['test']} held-out samples from {report['samples']['test_users']} held-out users; "
        f"{training_args.num_train_epochs:g} epochs, {wall_seconds / 60:.1f} min total\n{table}\n"
        f"metrics -> {output_dir / 'metrics.json'}, model + {RewardItemVocabulary.FILE_NAME} -> {output_dir}"
    )
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
