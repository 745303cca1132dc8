"""Training-pair constructions side by side: how many pairs, what each costs to build, and how long until the first
training batch can be drawn.

For every ``--pairs`` x ``--caps`` (history cap in items) on a real dataset (default: Amazon Beauty): the number of
(history, target) windows, the mean history length (the encoder's work per window is about proportional to it), the
seconds to cut the windows (``build_session_samples``; ``RandomWindowDataset`` for ``random_window``), to tokenise
them (``tokenize_session_samples``), and to build the length-grouped sampler and draw its first epoch's order
(``EpochLengthGroupedSampler``: the time to the first training step, model aside). With ``--trainer_sampler_windows
N`` it also times what transformers' Trainer (5.24) does by default on the first N windows of the largest
construction: ``LengthGroupedSampler`` over ``dataset[column]``, a lazy ``datasets`` column read item by item.

    PYTHONPATH=. python benchmarks/bench_pair_construction.py --tokenizer_dir outputs/beauty/tokenizer
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from transformers.trainer_pt_utils import LengthGroupedSampler

from benchmarks.common import environment, output_path, setup_device, write_results
from tokenization_semantic_id import SemanticIDTokenizer
from trainers.data import (
    TOKENIZED_COLUMNS,
    RandomWindowDataset,
    build_session_samples,
    leave_one_out_split,
    load_named_dataset,
    tokenize_session_samples,
)
from trainers.pretraining import EpochLengthGroupedSampler


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="beauty")
    parser.add_argument("--tokenizer_dir", default="outputs/beauty/tokenizer")
    parser.add_argument("--pairs", nargs="+", default=["prefix", "all_windows", "random_window"])
    parser.add_argument("--caps", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--session_length", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--trainer_sampler_windows", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    device = setup_device("cpu", args.threads)
    splits = leave_one_out_split(load_named_dataset(args.dataset)["sequences"])
    tokenizer = SemanticIDTokenizer.from_pretrained(args.tokenizer_dir)
    rows, largest = [], None
    for cap in args.caps:
        for pairs in args.pairs:
            start = time.perf_counter()
            if pairs == "random_window":
                dataset = RandomWindowDataset(
                    splits["train"], tokenizer, max_history=cap, session_length=args.session_length
                )
                build_s, tokenize_s = time.perf_counter() - start, 0.0  # drawn and tokenised together, per epoch
            else:
                samples = build_session_samples(
                    splits, max_history=cap, session_length=args.session_length, pairs=pairs
                )["train"]
                build_s = time.perf_counter() - start
                start = time.perf_counter()
                dataset = tokenize_session_samples(
                    samples, tokenizer, max_history_items=cap, session_length=args.session_length
                ).select_columns(list(TOKENIZED_COLUMNS))
                tokenize_s = time.perf_counter() - start
            start = time.perf_counter()
            sampler = EpochLengthGroupedSampler(args.batch_size, dataset, seed=0)
            sampler.set_epoch(1)
            first_batch = list(sampler)[: args.batch_size]
            sampler_s = time.perf_counter() - start
            lengths = np.asarray(sampler.lengths)
            row = {
                "pairs": pairs,
                "cap": cap,
                "windows": len(dataset),
                "mean_history_items": round(float(lengths.mean()), 2),
                "build_s": round(build_s, 2),
                "tokenize_s": round(tokenize_s, 2),
                "sampler_first_epoch_s": round(sampler_s, 2),
                "first_batch_rows": len(first_batch),
            }
            rows.append(row)
            print(row, flush=True)
            if pairs != "random_window" and (largest is None or len(dataset) > len(largest)):
                largest = dataset
    trainer_default = None
    if args.trainer_sampler_windows and largest is not None:
        subset = largest.select(range(min(args.trainer_sampler_windows, len(largest))))
        start = time.perf_counter()
        order = list(LengthGroupedSampler(args.batch_size, lengths=subset["num_history_items"]))
        trainer_default = {"windows": len(subset), "seconds": round(time.perf_counter() - start, 2)}
        assert len(order) == len(subset)
        print("Trainer's default sampler:", trainer_default, flush=True)
    print("\n| pairs | cap | windows | mean history items | cut s | tokenise s | sampler + first epoch s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['pairs']} | {row['cap']} | {row['windows']:,} | {row['mean_history_items']} | {row['build_s']} | "
            f"{row['tokenize_s']} | {row['sampler_first_epoch_s']} |"
        )
    path = output_path(args.output, "pair_construction", device)
    write_results(path, environment(device), args, rows=rows, trainer_default_sampler=trainer_default)
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
