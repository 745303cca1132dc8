"""Pretraining throughput on one process vs several (torchrun, gloo on CPUs), at the same global batch.

Runs ``examples/pretrain.py`` for ``--max_steps`` steps on a real dataset, first as one process with the whole global
batch, then under ``torchrun --nproc_per_node N --use_cpu true`` with ``global batch / N`` per process, every process
on ``--threads`` torch threads, no evaluation and no checkpoints. Reports windows/s (steps x global batch / the
Trainer's training time) and each run's mean training loss (the same global batch: they should agree closely)::

    PYTHONPATH=. python benchmarks/bench_processes.py --tokenizer_dir outputs/beauty/tokenizer --presets small tiger-size
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]


def run_pretraining(
    processes: int, args: argparse.Namespace, preset: str, output_dir: Path, find_unused: str | None = None
) -> dict:
    launcher = (
        [sys.executable, "examples/pretrain.py"]
        if processes == 1
        else [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "examples/pretrain.py"]
    )
    command = launcher + [
        "--use_cpu", "true",
        "--dataset", args.dataset,
        "--tokenizer_dir", args.tokenizer_dir,
        "--output_dir", str(output_dir),
        "--preset", preset,
        "--session_length", str(args.session_length),
        "--dropout_rate", str(args.dropout_rate),
        "--max_steps", str(args.max_steps),
        "--per_device_train_batch_size", str(args.global_batch_size // processes),
        "--learning_rate", "2e-3",
        "--warmup_steps", "10",
        "--eval_strategy", "no",
        "--save_strategy", "no",
        "--test_users", "0",
        "--report_to", "none",
        "--seed", "0",
    ]  # fmt: skip
    command += args.pretrain_args.split()
    if find_unused is not None:
        command += ["--ddp_find_unused_parameters", find_unused]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(REPOSITORY))
    subprocess.run(command, env=env, cwd=REPOSITORY, check=True, capture_output=not args.verbose)
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["processes"] == processes and metrics["global_batch_size"] == args.global_batch_size
    return {
        "preset": preset,
        "processes": processes,
        "find_unused_parameters": find_unused or "the Trainer's choice",
        "windows_per_s": round(metrics["steps"] * args.global_batch_size / metrics["train_seconds"], 1),
        "train_seconds": metrics["train_seconds"],
        "mean_train_loss": metrics["train_loss"],
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="beauty")
    parser.add_argument("--tokenizer_dir", default="outputs/beauty/tokenizer")
    parser.add_argument("--presets", nargs="+", default=["small"])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--session_length", type=int, default=5)
    parser.add_argument("--dropout_rate", type=float, default=0.1)
    parser.add_argument("--max_steps", type=int, default=150)
    parser.add_argument("--global_batch_size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process.")
    parser.add_argument(
        "--pretrain_args", default="", help="More pretrain.py arguments for every run, e.g. '--max_history_items 20'."
    )
    parser.add_argument(
        "--find_unused_parameters",
        nargs="+",
        choices=["true", "false"],
        default=None,
        help="Runs of more than one process once per value of DDP's find_unused_parameters (default: the Trainer's "
        "choice, true for a model without gradient checkpointing).",
    )
    parser.add_argument("--verbose", action="store_true", help="Show the training runs' output.")
    args = parser.parse_args(argv)
    for processes in args.processes:
        if args.global_batch_size % processes:
            parser.error(f"--global_batch_size {args.global_batch_size} does not split over {processes} processes.")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for preset in args.presets:
            baseline = None
            for processes in args.processes:
                for find_unused in (args.find_unused_parameters or [None]) if processes > 1 else [None]:
                    folder = Path(scratch) / f"{preset}_{processes}_{find_unused}"
                    row = run_pretraining(processes, args, preset, folder, find_unused)
                    baseline = baseline or row
                    row["speed-up"] = round(row["windows_per_s"] / baseline["windows_per_s"], 2)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    print("\n| preset | processes | find_unused_parameters | windows/s | vs the first row | mean training loss |")
    print("|---|---:|---|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['preset']} | {row['processes']} | {row['find_unused_parameters']} | {row['windows_per_s']} "
            f"| {row['speed-up']}x | {row['mean_train_loss']} |"
        )
    return {"arguments": vars(args), "rows": rows}


if __name__ == "__main__":
    main()
