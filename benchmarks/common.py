"""Helpers every benchmark script shares: the common command-line arguments, device and thread set-up,
synchronised timing, the synthetic code catalogue, the real-data set-up of the pretraining benchmarks, and the JSON
output (environment block, arguments, file).

The scripts import it as ``benchmarks.common`` (``from benchmarks import common``); run them from the repository root
with ``PYTHONPATH=.``::

    PYTHONPATH=. python benchmarks/bench_moe.py --device cpu --threads 2
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, TypeVar

import torch
import transformers

from modeling_onerec import OneRecConfig, OneRecForConditionalGeneration, configuration_onerec

T = TypeVar("T")

# The tokenizer's layout: <pad>, </s>, <s>, then the K codes of each level (token = 3 + level * K + code).
PAD_TOKEN_ID, EOS_TOKEN_ID, BOS_TOKEN_ID = 0, 1, 2
NUM_SPECIAL_TOKENS = configuration_onerec.NUM_SPECIAL_TOKENS
# --dtype of the model benchmarks.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Where a script's JSON goes unless --output says otherwise (ignored by git).
OUTPUT_DIR = Path("outputs/benchmarks")
THREADS_HELP = (
    "torch CPU threads (torch.set_num_threads); default: torch's choice. 1 keeps CPU timings stable on "
    "a machine shared with other jobs."
)


# --------------------------------------------------------------------------------------------------
# Command line: device and threads
# --------------------------------------------------------------------------------------------------


def add_device_argument(parser: argparse.ArgumentParser, help: Optional[str] = None) -> None:
    """``--device``, defaulting to ``cuda`` when CUDA is available and ``cpu`` otherwise."""
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help=help)


def add_dtype_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """``--dtype``, one of :data:`DTYPES` (default ``float32``)."""
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help=help)


def add_threads_argument(parser: argparse.ArgumentParser, help: str = THREADS_HELP) -> None:
    """``--threads`` (``None``: leave torch's default); :func:`setup_device` checks and applies it."""
    parser.add_argument("--threads", type=int, default=None, help=help)


def add_pretraining_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of a benchmark that trains on a real dataset: ``--dataset``, ``--tokenizer_dir``, ``--preset``,
    ``--max_history_items`` (n) and ``--session_length`` (m)."""
    parser.add_argument("--dataset", default="beauty", help="A bundled dataset name (beauty, scientific, ml-100k).")
    parser.add_argument(
        "--tokenizer_dir",
        default="outputs/beauty/tokenizer",
        help="A SemanticIDTokenizer of that dataset (examples/build_semantic_ids.py writes one).",
    )
    parser.add_argument("--preset", default="small")
    parser.add_argument("--max_history_items", type=int, default=50)
    parser.add_argument("--session_length", type=int, default=5)


def add_catalogue_arguments(parser: argparse.ArgumentParser) -> None:
    """The synthetic catalogue of a serving-side benchmark (see :func:`random_item_codes`): ``--items`` (one run per
    value), ``--codes`` (K) and ``--levels`` (L)."""
    parser.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--codes", type=int, default=8192, help="Codes per level K.")
    parser.add_argument("--levels", type=int, default=3)


def add_run_arguments(
    parser: argparse.ArgumentParser,
    *,
    output_help: str,
    seed_help: Optional[str] = None,
    threads_help: str = THREADS_HELP,
) -> None:
    """The arguments a timing script's command line ends with: ``--threads`` (see :func:`add_threads_argument`),
    ``--seed`` (default 0) and ``--output`` (a JSON file; ``None``: :func:`output_path` picks one)."""
    add_threads_argument(parser, help=threads_help)
    parser.add_argument("--seed", type=int, default=0, help=seed_help)
    parser.add_argument("--output", type=Path, default=None, help=output_help)


def check_threads(threads: Optional[int]) -> None:
    """Raises ``ValueError`` on a ``--threads`` value below 1 (``None``: torch's default, fine)."""
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}.")


def resolve_device(name: str) -> torch.device:
    """``torch.device(name)``, refusing CUDA where there is none."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name!r} asks for CUDA but torch.cuda.is_available() is False; use --device cpu.")
    return device


def setup_device(name: str, threads: Optional[int]) -> torch.device:
    """Resolves ``--device`` (see :func:`resolve_device`) and applies ``--threads`` when it is set (``ValueError``
    below 1, see :func:`check_threads`)."""
    check_threads(threads)
    device = resolve_device(name)
    if threads is not None:
        torch.set_num_threads(threads)
    return device


# --------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    """Waits for queued kernels so that a timer reads finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[..., T], device: torch.device, *args: Any) -> Tuple[float, T]:
    """One synchronised call ``fn(*args)``: ``(seconds, result)``."""
    synchronize(device)
    start = time.perf_counter()
    out = fn(*args)
    synchronize(device)
    return time.perf_counter() - start, out


# --------------------------------------------------------------------------------------------------
# Synthetic catalogue
# --------------------------------------------------------------------------------------------------


def random_item_codes(num_codes: int, num_levels: int, codebook_size: int, seed: int) -> torch.Tensor:
    """``num_codes`` distinct uniformly random codes (a seeded synthetic catalogue).

    Returns:
        ``[num_codes, num_levels]`` long in ``[0, K)``; :func:`code_tokens` gives their vocabulary token ids.
    """
    generator = torch.Generator().manual_seed(seed)
    codes = torch.zeros((0, num_levels), dtype=torch.long)
    # Draw with some headroom, drop duplicates, draw again if the space is crowded.
    while codes.shape[0] < num_codes:
        draw = torch.randint(codebook_size, (int(num_codes * 1.2) + 16, num_levels), generator=generator)
        codes = torch.unique(torch.cat([codes, draw]), dim=0)
    # torch.unique sorts: shuffle so that item index says nothing about the code.
    return codes[torch.randperm(codes.shape[0], generator=generator)[:num_codes]]


def code_tokens(codes: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Vocabulary token ids of ``[N, L]`` codes in ``[0, K)``: column ``l`` moves to
    ``[3 + l * K, 3 + (l + 1) * K)``."""
    offsets = configuration_onerec.level_offsets([codebook_size] * codes.shape[1])
    return codes + torch.tensor(offsets, dtype=codes.dtype)


def random_item_tokens(num_codes: int, num_levels: int, codebook_size: int, seed: int) -> torch.Tensor:
    """:func:`random_item_codes` as vocabulary token ids (:func:`code_tokens`).

    Returns:
        ``[num_codes, num_levels]`` long, column ``l`` in ``[3 + l * K, 3 + (l + 1) * K)``.
    """
    return code_tokens(random_item_codes(num_codes, num_levels, codebook_size, seed), codebook_size)


# --------------------------------------------------------------------------------------------------
# Real data and model of the pretraining benchmarks
# --------------------------------------------------------------------------------------------------


def load_pretraining_data(args: argparse.Namespace):
    """The tokenizer and session samples of :func:`add_pretraining_data_arguments`' arguments.

    Returns:
        ``(SemanticIDTokenizer of --tokenizer_dir, session samples of --dataset)``: the leave-one-out splits cut
        into windows of at most ``--max_history_items`` history items and ``--session_length`` targets
        (``build_session_samples``; a dict of ``datasets.Dataset`` by split).
    """
    # Imported here: only the pretraining benchmarks need datasets.
    from tokenization_semantic_id import SemanticIDTokenizer
    from trainers.data import build_session_samples, leave_one_out_split, load_named_dataset

    tokenizer = SemanticIDTokenizer.from_pretrained(args.tokenizer_dir)
    splits = leave_one_out_split(load_named_dataset(args.dataset)["sequences"])
    samples = build_session_samples(splits, max_history=args.max_history_items, session_length=args.session_length)
    return tokenizer, samples


def pretraining_model(tokenizer, args: argparse.Namespace, **overrides: Any) -> OneRecForConditionalGeneration:
    """A freshly initialised model of ``--preset`` for the tokenizer, ``--session_length`` and
    ``--max_history_items`` (``overrides``: more ``OneRecConfig`` fields), seeded with ``--seed``; on the CPU."""
    torch.manual_seed(args.seed)
    config = OneRecConfig.from_tokenizer(
        tokenizer,
        preset=args.preset,
        session_length=args.session_length,
        max_history_items=args.max_history_items,
        **overrides,
    )
    return OneRecForConditionalGeneration(config)


# --------------------------------------------------------------------------------------------------
# JSON output
# --------------------------------------------------------------------------------------------------


def environment(device: torch.device, *, dtype: Optional[str] = None, synthetic_codes: bool = False) -> dict:
    """The ``"environment"`` block of a benchmark's JSON.

    Keys, in this order: ``date_utc``, ``device``, ``dtype`` (only when given), ``torch``, ``transformers``,
    ``python``, ``cpu_threads``, ``load_average_1_5_15min``, ``cpu_count``, ``synthetic_codes`` (only when true)
    and ``gpu`` (only on CUDA).
    """
    info: Dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "device": str(device),
    }
    if dtype is not None:
        info["dtype"] = dtype
    info.update(
        {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "cpu_threads": torch.get_num_threads(),
            # The benchmark machine may be shared: a load above the core count inflates CPU timings.
            "load_average_1_5_15min": list(os.getloadavg()),
            "cpu_count": os.cpu_count(),
        }
    )
    if synthetic_codes:
        info["synthetic_codes"] = True
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def print_environment(device: torch.device, **options: Any) -> dict:
    """:func:`environment` (``options``: its keywords), printed as ``environment: <json>`` and returned."""
    info = environment(device, **options)
    print("environment: " + json.dumps(info), flush=True)
    return info


def json_arguments(args: argparse.Namespace) -> Dict[str, Any]:
    """The parsed arguments as JSON values (paths as strings)."""
    return {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}


def output_path(output: Optional[Path], name: str, device: torch.device, dtype: str = "float32") -> Path:
    """``output`` when given, else ``outputs/benchmarks/<name>_<device type>[_<dtype>].json`` (no dtype suffix
    for float32)."""
    if output is not None:
        return output
    suffix = "" if dtype == "float32" else f"_{dtype}"
    return OUTPUT_DIR / f"{name}_{device.type}{suffix}.json"


def write_json(path: Path, payload: Dict[str, Any]) -> None:
    """Writes ``payload`` to ``path`` (``indent=1``), creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1))


def write_results(path: Path, env: Dict[str, Any], args: argparse.Namespace, **results: Any) -> None:
    """Writes a benchmark's JSON (:func:`write_json`): ``{"environment": env, "arguments": <args as JSON>,
    **results}``."""
    write_json(path, {"environment": env, "arguments": json_arguments(args), **results})


def exit_status(failure: Optional[str]) -> int:
    """A script's exit status: 0 when ``failure`` is ``None``, else 1 after printing ``FAILED: <failure>`` to
    stderr (a failed correctness check is a bug, not a timing)."""
    if failure is None:
        return 0
    print(f"\nFAILED: {failure}", file=sys.stderr)
    return 1
