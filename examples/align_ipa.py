"""Stage 5 of the OneRec pipeline: preference alignment (paper §3.3.2, Algorithm 2) with the session reward model.

From a pretrained OneRec ``M_0`` (``examples/pretrain.py``) and a reward model (``examples/train_reward_model.py``):
each iteration ``t`` samples ``r_DPO`` of the training samples, generates ``N`` sessions per sampled user with
``M_t`` (trie-constrained beam search), scores them with the reward model, takes the best as *chosen* and the
worst as *rejected*, and trains ``M_{t+1}`` from ``M_t`` on ``L_NTP + λ L_DPO`` with ``M_t`` as the frozen
reference, through TRL's ``DPOTrainer`` (``trainers/alignment/dpo_trainer.py``; every TRL ``--loss_type``, plus ``cdpo``).
``--num_iterations 1`` is plain (single-round) DPO with self-mined pairs; more iterations are IPA.

    python examples/align_ipa.py --dataset ml-100k --data_path "$ONEREC_ML100K_DIR" \\
        --model_dir outputs/ml-100k/onerec/final --reward_model_dir outputs/reward/ml-100k \\
        --output_dir outputs/ml-100k/ipa --dpo_sample_ratio 0.01 --num_candidates 32 --num_iterations 2 \\
        --loss_type sigmoid --beta 0.1 --use_cpu

A killed run continues where it stopped when started again with the same ``--output_dir`` (finished iterations
are skipped, mined pairs are reused, the Trainer resumes from its last checkpoint). Writes ``iteration-<t>/``
snapshots (model + tokenizer + ``pairs.json`` + ``ipa_state.json``) and ``alignment.json``; score the snapshots
with ``examples/evaluate_alignment.py``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar, List, Mapping

from transformers import HfArgumentParser, set_seed

from modeling_onerec import OneRecForConditionalGeneration
from tokenization_semantic_id import SemanticIDTokenizer
from trainers.alignment import OneRecDPOConfig
from trainers.alignment.ipa import IPAConfig, run_ipa
from trainers.alignment.reward_model import SessionRewardScorer
from trainers.data import build_session_samples, check_local_dir, leave_one_out_split
from trainers.data.arguments import (
    CheckedArguments,
    DatasetArguments,
    ModelDirArguments,
    RewardModelDirArguments,
    named_weights,
    redeclare,
)
from trainers.evaluation import markdown_table

logger = logging.getLogger("align_ipa")


@dataclass
class AlignmentArguments(RewardModelDirArguments, ModelDirArguments, DatasetArguments):
    # M_0, from the ml-100k pipeline by default (the dataset of the default --reward_model_dir).
    model_dir: str = redeclare(ModelDirArguments, "model_dir", default="outputs/ml-100k/onerec/final")
    reward_weights: List[str] = field(
        default_factory=list,
        metadata={
            "help": "NAME=WEIGHT per reward tower in the scalar that ranks candidates (default: mean of all towers)."
        },
    )


@dataclass
class IPAArguments(CheckedArguments):
    """The settings of :class:`IPAConfig` that the command line sets (passed on as ``IPAConfig(**asdict(...))``)."""

    dpo_sample_ratio: float = field(default=0.01, metadata={"help": "r_DPO: share of training samples mined."})
    num_candidates: int = field(default=128, metadata={"help": "N: sessions generated per sampled user."})
    num_iterations: int = field(default=1, metadata={"help": "T: snapshots (1 = single-round DPO)."})
    mining_batch_size: int = field(default=8, metadata={"help": "Users per beam search."})
    search_backend: str = field(
        default="native",
        metadata={
            "help": "'native' (the model's session beam search) or 'generate' (transformers' generate() with the "
            "tokenizer's prefix_allowed_tokens_fn: the same sessions, slower).",
            "choices": ["native", "generate"],
        },
    )

    minimum_values: ClassVar[Mapping[str, int]] = {"num_candidates": 1, "num_iterations": 1, "mining_batch_size": 1}


def main(argv=None) -> dict:
    parser = HfArgumentParser((AlignmentArguments, IPAArguments, OneRecDPOConfig))
    args, ipa_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    set_seed(training_args.seed)
    started = time.perf_counter()

    check_local_dir(args.model_dir, "--model_dir")
    check_local_dir(args.reward_model_dir, "--reward_model_dir")
    model = OneRecForConditionalGeneration.from_pretrained(args.model_dir)
    tokenizer = SemanticIDTokenizer.from_pretrained(args.model_dir)
    scorer = SessionRewardScorer.from_pretrained(
        args.reward_model_dir, weights=named_weights(args.reward_weights, "--reward_weights")
    )
    data = args.load()
    splits = leave_one_out_split(data["sequences"])
    train = build_session_samples(
        splits, max_history=model.config.max_history_items, session_length=model.config.session_length
    )["train"]
    config = IPAConfig(**asdict(ipa_args), seed=training_args.seed, training_args=training_args)
    output_dir = Path(training_args.output_dir)
    run_inputs = {
        "dataset": args.dataset,
        "data_path": args.data_path,
        "model_dir": str(Path(args.model_dir).resolve()),
        "reward_model_dir": str(Path(args.reward_model_dir).resolve()),
        "reward_weights": args.reward_weights,
    }
    result = run_ipa(model, tokenizer, train, scorer, config, output_dir=output_dir, run_inputs=run_inputs)

    report = {
        "dataset": args.dataset,
        "model_dir": args.model_dir,
        "reward_model_dir": args.reward_model_dir,
        "reward_names": scorer.reward_names,
        "reward_weights": scorer.weights.tolist(),
        "loss_type": training_args.loss_type,
        "beta": training_args.beta,
        "dpo_weight": training_args.dpo_weight,
        "ntp_weight": training_args.ntp_weight,
        "learning_rate": training_args.learning_rate,
        "dpo_sample_ratio": ipa_args.dpo_sample_ratio,
        "num_candidates": ipa_args.num_candidates,
        "train_samples": len(train),
        "iterations": result.iterations,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    (output_dir / "alignment.json").write_text(json.dumps(report, indent=2, default=str))
    print(
        f"\nAlignment of {args.model_dir} on {args.dataset}: loss {training_args.loss_type}, beta "
        f"{training_args.beta}, r_DPO {ipa_args.dpo_sample_ratio}, N {ipa_args.num_candidates}, "
        f"{report['wall_seconds'] / 60:.1f} min in all"
    )
    rows = []
    for state in result.iterations:
        margin = state.get("last_train_log", {}).get("rewards/margins")
        rows.append(
            [
                state["iteration"],
                state["pairs_mined"],
                f"{state['skipped_users']} / {state['tied_users']}",
                f"{state['mean_chosen_reward'] or float('nan'):.4f}",
                f"{state['mean_rejected_reward'] or float('nan'):.4f}",
                "-" if margin is None else f"{margin:.3f}",
                f"{state['timings']['mining_seconds']:.0f}",
                f"{state['timings']['training_seconds']:.0f}",
            ]
        )
    header = [
        "iteration",
        "pairs",
        "skipped / tied users",
        "chosen reward",
        "rejected reward",
        "final margin",
        "mining s",
        "training s",
    ]
    print(markdown_table(header, rows, align="rrlrrrrr"))
    print(f"final model -> {output_dir / f'iteration-{ipa_args.num_iterations}'}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
