"""On-policy alignment of a pretrained OneRec (GRPO, OneRec's ECPO, OneRec-V2's GBPO) on TRL's ``GRPOTrainer``.

From a pretrained OneRec (``examples/pretrain.py``) and, optionally, a session reward model
(``examples/train_reward_model.py``): a seeded share of the training split's samples (history, real next items) is
the prompt set; for each prompt the current policy generates a group of ``G = --num_generations`` sessions under the
trie (``--rollout_strategy beam``: the ``G`` beams of the session beam search, OneRec's choice; ``sample``: draws
within the trie), the rewards score them (the reward model's towers, weighted; and/or the position-discounted
overlap with the row's real next items of the *training* split), and ``--objective`` (``grpo``, ``ecpo``, ``gbpo``)
updates the policy, jointly with the next-token loss on the real next session (``--ntp_weight``).
``--num_iterations 2`` reuses each generated batch twice, so that the clips act.

    python examples/align_grpo.py --dataset ml-100k --data_path "$ONEREC_ML100K_DIR" \\
        --model_dir outputs/ml-100k/onerec/final --reward_model_dir outputs/reward/ml-100k \\
        --output_dir outputs/ml-100k/grpo --objective ecpo --num_generations 8 --per_device_train_batch_size 32 \\
        --num_iterations 2 --max_steps 200 --learning_rate 1e-4 --use_cpu

Rerun with the same ``--output_dir`` to resume from its last checkpoint. Writes ``final/`` (model + tokenizer) and
``alignment.json``; score it beside other models with ``examples/evaluate_alignment.py``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, List, Mapping, Optional

import numpy as np
from transformers import HfArgumentParser, set_seed
from transformers.trainer_utils import get_last_checkpoint

from modeling_onerec import OneRecForConditionalGeneration
from tokenization_semantic_id import SemanticIDTokenizer
from trainers.alignment import NextItemsReward, OneRecGRPOConfig, OneRecGRPOTrainer, SessionRewardModelReward
from trainers.alignment.reward_model import SessionRewardScorer
from trainers.data import build_session_samples, check_local_dir, leave_one_out_split
from trainers.data.arguments import CheckedArguments, DatasetArguments, ModelDirArguments, named_weights, redeclare
from trainers.evaluation import markdown_table

logger = logging.getLogger("align_grpo")


@dataclass
class GRPOScriptArguments(ModelDirArguments, DatasetArguments):
    model_dir: str = redeclare(ModelDirArguments, "model_dir", default="outputs/ml-100k/onerec/final")
    reward_model_dir: Optional[str] = field(
        default=None,
        metadata={
            "help": "A session reward model folder (examples/train_reward_model.py); none: the rule reward only."
        },
    )
    reward_towers: List[str] = field(
        default_factory=list,
        metadata={"help": "NAME=WEIGHT per reward-model tower (default: the mean of all towers)."},
    )
    reward_model_weight: float = field(default=1.0, metadata={"help": "Weight of the reward model's score."})
    next_items_weight: float = field(
        default=1.0,
        metadata={"help": "Weight of the overlap with the real next items of the training split (0: not used)."},
    )


@dataclass
class PromptArguments(CheckedArguments):
    prompt_ratio: float = field(
        default=0.01,
        metadata={
            "help": "Share of the training samples used as prompts, drawn with --seed as align_ipa.py draws the rows "
            "of its first iteration (r_DPO): the same prompts at the same ratio and seed."
        },
    )
    max_prompts: Optional[int] = field(default=None, metadata={"help": "At most this many prompts."})

    minimum_values: ClassVar[Mapping[str, int]] = {"max_prompts": 1}

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.prompt_ratio <= 1:
            raise ValueError(f"--prompt_ratio must be in (0, 1], got {self.prompt_ratio}.")


def main(argv=None) -> dict:
    parser = HfArgumentParser((GRPOScriptArguments, PromptArguments, OneRecGRPOConfig))
    args, prompt_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    set_seed(training_args.seed)
    started = time.perf_counter()

    check_local_dir(args.model_dir, "--model_dir")
    model = OneRecForConditionalGeneration.from_pretrained(args.model_dir)
    tokenizer = SemanticIDTokenizer.from_pretrained(args.model_dir)
    reward_funcs, weights = [], []
    if args.reward_model_dir is not None and args.reward_model_weight:
        check_local_dir(args.reward_model_dir, "--reward_model_dir")
        scorer = SessionRewardScorer.from_pretrained(
            args.reward_model_dir, weights=named_weights(args.reward_towers, "--reward_towers")
        )
        reward_funcs.append(SessionRewardModelReward(scorer))
        weights.append(args.reward_model_weight)
    if args.next_items_weight:
        reward_funcs.append(NextItemsReward())
        weights.append(args.next_items_weight)
    if not reward_funcs:
        raise ValueError(
            "No reward: pass --reward_model_dir (with --reward_model_weight > 0) and/or --next_items_weight > 0."
        )
    if training_args.reward_weights is None:
        training_args.reward_weights = weights

    data = args.load()
    splits = leave_one_out_split(data["sequences"])
    session_length = training_args.session_length or model.config.session_length
    train = build_session_samples(splits, max_history=None, session_length=session_length)[
        "train"
    ]  # the whole history: the encoder reads the newest items, every one is excluded from generation
    size = max(1, int(round(prompt_args.prompt_ratio * len(train))))
    if prompt_args.max_prompts is not None:
        size = min(size, prompt_args.max_prompts)
    rng = np.random.default_rng([training_args.seed, 0])  # the rows IPA's first iteration mines at the same ratio
    chosen = np.sort(rng.choice(len(train), size=size, replace=False)).tolist()
    prompts = train.select(chosen).map(
        lambda row: {"prompt": row["history"], "target": row["target"]},
        remove_columns=train.column_names,
        desc="Prompts",
    )
    logger.info("%d prompts from %d training samples", len(prompts), len(train))

    trainer = OneRecGRPOTrainer(
        model, reward_funcs, args=training_args, train_dataset=prompts, processing_class=tokenizer
    )
    output_dir = Path(training_args.output_dir)
    last = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
    if last is not None:
        logger.info("Resuming from %s", last)
    trainer.train(resume_from_checkpoint=last)
    final = output_dir / "final"
    trainer.save_model(str(final))
    tokenizer.save_pretrained(str(final))

    logs = [entry for entry in trainer.state.log_history if "reward" in entry]
    report = {
        "dataset": args.dataset,
        "model_dir": args.model_dir,
        "reward_model_dir": args.reward_model_dir,
        "reward_functions": trainer.reward_func_names,
        "reward_weights": list(training_args.reward_weights),
        "objective": training_args.objective,
        "rollout_strategy": training_args.rollout_strategy,
        "num_generations": training_args.num_generations,
        "num_iterations": training_args.num_iterations,
        "beta": training_args.beta,
        "ntp_weight": training_args.ntp_weight,
        "learning_rate": training_args.learning_rate,
        "prompts": len(prompts),
        "steps": trainer.state.global_step,
        "first_reward": logs[0]["reward"] if logs else None,
        "last_reward": logs[-1]["reward"] if logs else None,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    (output_dir / "alignment.json").write_text(json.dumps(report, indent=2, default=str))
    rows = [
        [entry["step"], f"{entry['reward']:.4f}", f"{entry.get('kl', float('nan')):.4f}", f"{entry['loss']:.4f}"]
        for entry in logs[:: max(1, len(logs) // 10)]
    ]
    print(
        f"\n{training_args.objective} on {args.dataset}: {len(prompts)} prompts, G={training_args.num_generations} "
        f"({training_args.rollout_strategy}), {report['wall_seconds'] / 60:.1f} min"
    )
    print(markdown_table(["step", "reward", "kl", "loss"], rows, align="rrrr"))
    print(f"final model -> {final}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
