"""Pretraining throughput on a real dataset: random batches vs length-grouped batches (the pretrainer's default).

Real interaction logs are short-tailed (Amazon Beauty: median history 4 items, 3% at the 50-item cap), so a random
batch of 64 nearly always holds one capped history and pads every row to it. ``OneRecPretrainingConfig`` therefore
defaults to ``train_sampling_strategy="group_by_length"`` (transformers' ``LengthGroupedSampler``, lengths = history
items). This script times both samplers through the trainer's own dataloader: for each one, a freshly seeded model,
AdamW, two untimed warm-up steps, then ``--steps`` timed optimiser steps (forward + backward + step) over the first
``--steps`` batches of an epoch -- with the default 50 that is one whole mega-batch of the grouped sampler, its
longest batch included. It reports samples/s, the mean padded encoder length and the share of padded encoder slots.

Run from the repository root::

    PYTHONPATH=. python benchmarks/bench_pretrain_batching.py --threads 2
    PYTHONPATH=. python benchmarks/bench_pretrain_batching.py --dataset scientific --tokenizer_dir outputs/scientific_collab/tokenizer
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from itertools import islice
from typing import Any, Dict, Optional, Sequence

import torch

from benchmarks import common
from trainers.pretraining import OneRecPretrainer, OneRecPretrainingConfig, SessionDataCollator

STRATEGIES = ("random", "group_by_length")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_pretraining_data_arguments(parser)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50, help="Timed optimiser steps per sampler.")
    common.add_device_argument(parser)
    common.add_run_arguments(
        parser, output_help="JSON output (default outputs/benchmarks/pretrain_batching_<device>.json)."
    )
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1:
        parser.error(f"--steps and --batch_size must be >= 1, got {args.steps} and {args.batch_size}")
    return args


def time_strategy(strategy: str, train, tokenizer, args: argparse.Namespace, device: torch.device) -> Dict[str, Any]:
    """Samples/s and padding of ``args.steps`` training steps whose batches come from ``strategy``'s sampler."""
    model = common.pretraining_model(tokenizer, args).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with tempfile.TemporaryDirectory() as scratch:
        training_args = OneRecPretrainingConfig(
            output_dir=scratch,
            per_device_train_batch_size=args.batch_size,
            train_sampling_strategy=strategy,
            report_to=[],
            seed=args.seed,
            use_cpu=device.type == "cpu",
            dataloader_pin_memory=False,
        )
        trainer = OneRecPretrainer(
            model=model,
            args=training_args,
            train_dataset=train,
            processing_class=tokenizer,
            data_collator=SessionDataCollator(tokenizer, args.max_history_items, args.session_length),
        )
        loader = trainer.get_train_dataloader()

    def step(batch):
        batch = {key: value.to(device) for key, value in batch.items()}
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def steps(batches):
        for batch in batches:
            step(batch)

    steps(islice(loader, 2))
    batches = list(islice(loader, args.steps))  # a new epoch: the first `steps` batches of a fresh permutation
    seconds, _ = common.timed(steps, device, batches)
    masks = [batch["attention_mask"] for batch in batches]
    samples = sum(len(mask) for mask in masks)
    slots = sum(mask.numel() for mask in masks)
    return {
        "strategy": strategy,
        "steps": len(batches),
        "samples": samples,
        "seconds": round(seconds, 2),
        "samples_per_s": round(samples / seconds, 1),
        "mean_encoder_length": round(sum(mask.shape[1] for mask in masks) / len(masks), 1),
        "padded_share": round(1 - sum(int(mask.sum()) for mask in masks) / slots, 3),
    }


def markdown_table(rows, args: argparse.Namespace) -> str:
    lines = [
        f"{args.dataset}, preset {args.preset}, batch {args.batch_size}, history <= {args.max_history_items} "
        f"items, m = {args.session_length}, {args.steps} timed steps per sampler",
        "| sampler | samples/s | mean padded encoder length | padded share | speed-up |",
        "|---|---:|---:|---:|---:|",
    ]
    base = rows[0]["samples_per_s"]
    for row in rows:
        lines.append(
            f"| {row['strategy']} | {row['samples_per_s']:.0f} | {row['mean_encoder_length']:.0f} | "
            f"{100 * row['padded_share']:.0f}% | {row['samples_per_s'] / base:.1f}x |"
        )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    args = parse_args(argv)
    device = common.setup_device(args.device, args.threads)
    tokenizer, samples = common.load_pretraining_data(args)
    rows = [time_strategy(strategy, samples["train"], tokenizer, args, device) for strategy in STRATEGIES]
    table = markdown_table(rows, args)
    print(table)
    output = common.output_path(args.output, "pretrain_batching", device)
    common.write_results(output, common.environment(device), args, results=rows, markdown=table)
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
