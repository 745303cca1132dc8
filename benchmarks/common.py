"""Helpers every benchmark script shares: device and thread set-up, synchronised timing, the synthetic code
catalogue, and the JSON output (environment block, arguments, file).

The scripts import it as ``benchmarks.common``; run them from the repository root with ``PYTHONPATH=.``::

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

from modeling_onerec import configuration_onerec

T = TypeVar("T")

# The tokenizer's layout: <pad>, </s>, <s>, then the K codes of each level (token = 3 + level * K + code).
PAD_TOKEN_ID, EOS_TOKEN_ID, BOS_TOKEN_ID = 0, 1, 2
NUM_SPECIAL_TOKENS = configuration_onerec.NUM_SPECIAL_TOKENS

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


def add_threads_argument(parser: argparse.ArgumentParser, help: str = THREADS_HELP) -> None:
    """``--threads`` (``None``: leave torch's default); check it with :func:`threads_problem`."""
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


def threads_problem(threads: Optional[int]) -> Optional[str]:
    """What is wrong with a ``--threads`` value (``None`` when it is fine)."""
    if threads is not None and threads < 1:
        return f"--threads must be >= 1, got {threads}"
    return None


def check_threads(threads: Optional[int]) -> None:
    """Raises ``ValueError`` on a ``--threads`` value below 1."""
    problem = threads_problem(threads)
    if problem is not None:
        raise ValueError(problem + ".")


def resolve_device(name: str) -> torch.device:
    """``torch.device(name)``, refusing CUDA where there is none."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name!r} asks for CUDA but torch.cuda.is_available() is False; use --device cpu.")
    return device


def setup_device(name: str, threads: Optional[int]) -> torch.device:
    """Resolves ``--device`` (see :func:`resolve_device`) and applies ``--threads`` when it is set."""
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


def random_item_tokens(num_codes: int, num_levels: int, codebook_size: int, seed: int) -> torch.Tensor:
    """``num_codes`` distinct uniformly random codes as vocabulary token ids.

    Returns:
        ``[num_codes, num_levels]`` long, column ``l`` in ``[3 + l * K, 3 + (l + 1) * K)``.
    """
    generator = torch.Generator().manual_seed(seed)
    codes = torch.zeros((0, num_levels), dtype=torch.long)
    # Draw with some headroom, drop duplicates, draw again if the space is crowded.
    while codes.shape[0] < num_codes:
        draw = torch.randint(codebook_size, (int(num_codes * 1.2) + 16, num_levels), generator=generator)
        codes = torch.unique(torch.cat([codes, draw]), dim=0)
    # torch.unique sorts: shuffle so that item index says nothing about the code.
    codes = codes[torch.randperm(codes.shape[0], generator=generator)[:num_codes]]
    return codes + NUM_SPECIAL_TOKENS + torch.arange(num_levels) * codebook_size


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


def exit_status(failure: Optional[str]) -> int:
    """A script's exit status: 0 when ``failure`` is ``None``, else 1 after printing ``FAILED: <failure>`` to
    stderr (a failed correctness check is a bug, not a timing)."""
    if failure is None:
        return 0
    print(f"\nFAILED: {failure}", file=sys.stderr)
    return 1
