"""Probe (docs/results.md, "After training"): DPO with the real next item as *chosen* and an item the model ranks
above it as *rejected*, then validation ranking. Not a pipeline stage: it measured that this hurts the top of the list.

    python scripts/probes/dpo_against_real_next_item.py --model_dir RUNS/beauty_headline_newest/onerec/final \\
        --tokenizer_dir RUNS/beauty/tokenizer --output_dir RUNS/dpo_probe/top_wrong --beta 1.0 --num_train_epochs 1 \\
        --learning_rate 1e-4 --per_device_train_batch_size 64 --use_cpu true --report_to none --save_strategy no
    # near misses: --windows 60000 --near_misses true --negatives 15 --num_train_epochs 0.3

Rows come from the training split's `prefix` windows (seed 0); the mined pairs are kept in
``output_dir/pairs.json`` and reused when the command is run again.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from datasets import Dataset
from transformers import HfArgumentParser

from modeling_onerec import OneRecForConditionalGeneration
from tokenization_semantic_id import SemanticIDTokenizer
from trainers.alignment import OneRecDPOConfig, OneRecDPOTrainer
from trainers.data import build_session_samples, leave_one_out_split, load_bundled
from trainers.evaluation import GenerativeRecommender, evaluate_recommender


@dataclass
class ProbeArguments:
    model_dir: str = field(metadata={"help": "The trained OneRec model (its pretrain.py 'final' folder)."})
    tokenizer_dir: str = field(metadata={"help": "The SemanticIDTokenizer it was trained with."})
    dataset: str = field(default="beauty", metadata={"help": "A bundled dataset."})
    windows: int = field(default=20000, metadata={"help": "Training windows sampled for mining."})
    mining_beams: int = field(default=16, metadata={"help": "Beam width of the mining search."})
    near_misses: bool = field(
        default=False,
        metadata={
            "help": "Keep only windows whose real item the model ranks 2nd..mining_beams-th; rejected = items in front."
        },
    )
    negatives: int = field(default=1, metadata={"help": "Most rejected items per window."})
    validation_users: int = field(default=2000, metadata={"help": "Validation users scored (shuffle seed 0)."})
    score_seed_model: bool = field(default=False, metadata={"help": "Also score the model before DPO."})


def preference_rows(histories, targets, ranked, near_misses: bool, negatives: int) -> list:
    """DPO rows ``{"history", "target", "chosen", "rejected"}``: chosen = the real next item ``target[0]``, rejected =
    the items the model ranks above it (``near_misses``: only windows whose real item is in ``ranked`` below the top;
    otherwise every window, against its top wrong items), at most ``negatives`` per window. Windows whose real item
    is in their history are skipped (the searches exclude the history, so it could never be ranked)."""
    rows = []
    for history, target, items in zip(histories, targets, ranked):
        real = str(target[0])
        history = [str(item) for item in history]
        if real in history:
            continue
        if near_misses:
            if real not in items[1:]:
                continue
            in_front = items[: items.index(real)]
        else:
            in_front = [item for item in items if item != real]
        for rejected in in_front[:negatives]:
            rows.append(
                {"history": history, "target": [str(item) for item in target], "chosen": [real], "rejected": [rejected]}
            )
    return rows


def main(argv=None) -> dict:
    parser = HfArgumentParser((ProbeArguments, OneRecDPOConfig))
    probe, args = parser.parse_args_into_dataclasses(args=argv)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = SemanticIDTokenizer.from_pretrained(probe.tokenizer_dir)
    model = OneRecForConditionalGeneration.from_pretrained(probe.model_dir)
    splits = leave_one_out_split(load_bundled(probe.dataset)["sequences"])
    samples = build_session_samples(
        splits, max_history=model.config.max_history_items, session_length=model.config.session_length
    )
    validation = samples["validation"].shuffle(seed=0).select(range(probe.validation_users))

    def score(current) -> dict:
        current.eval()
        recommender = GenerativeRecommender(current, tokenizer, num_beams=128, renormalize_logits=False)
        return evaluate_recommender(recommender, validation, (5, 10), exclude_history=True)[0]

    report = {"probe": vars(probe)}
    if probe.score_seed_model:
        report["seed_model"] = score(model)
    pairs_path = output_dir / "pairs.json"
    if pairs_path.is_file():
        rows = json.loads(pairs_path.read_text())
    else:
        train = samples["train"]
        chosen_windows = np.random.default_rng(0).choice(len(train), size=probe.windows, replace=False)
        windows = train.select(np.sort(chosen_windows).tolist())
        model.eval()
        started = time.perf_counter()
        depth = probe.mining_beams if probe.near_misses else probe.negatives + 1
        ranked = GenerativeRecommender(model, tokenizer, num_beams=probe.mining_beams).rank(
            list(windows["history"]), depth, exclude_history=True
        )
        report["mining_seconds"] = time.perf_counter() - started
        rows = preference_rows(windows["history"], windows["target"], ranked, probe.near_misses, probe.negatives)
        pairs_path.write_text(json.dumps(rows))
    report["pairs"] = len(rows)
    reference = copy.deepcopy(model)  # the frozen seed model of the DPO term
    model.train()
    trainer = OneRecDPOTrainer(
        model=model, ref_model=reference, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    started = time.perf_counter()
    trainer.train()
    report["training_seconds"] = time.perf_counter() - started
    report["last_log"] = [entry for entry in trainer.state.log_history if "rewards/margins" in entry][-1:]
    report["aligned"] = score(model)
    model.save_pretrained(str(output_dir / "model"))
    (output_dir / "report.json").write_text(json.dumps(report, indent=1, default=float))
    print(json.dumps({key: report[key] for key in ("pairs", "aligned")}, indent=1, default=float))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
