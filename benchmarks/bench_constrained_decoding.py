"""Cost per decoding step of trie-constrained session decoding: vectorised processor vs ``prefix_allowed_tokens_fn``.

For a trie of ``--num-codes`` distinct valid codes (3 levels x K codes) this times one call of

* (a) :class:`~tokenization_semantic_id.SessionConstrainedLogitsProcessor` (the fast, batched path) with
  ``forbid_repeats=True`` and ``--num-history`` excluded history items per batch row,
* (b) the same processor with no exclusions at all (``forbid_repeats=False``, no history): the bare trie lookup,
* (c) ``transformers``' ``PrefixConstrainedLogitsProcessor`` around
  :class:`~tokenization_semantic_id.SessionPrefixAllowedTokensFn` with the same exclusions as (a): exactly what
  ``generate(prefix_allowed_tokens_fn=...)`` runs at every step,

at batch 1 x ``--beams`` beams and each K of ``--codebook-sizes``, at every decoding position of one session item
(predicting its BOS, then its code tokens 1..L). The ``input_ids`` are realistic: T5's decoder start (PAD), then
``BOS c1 c2 c3`` per already generated item, each beam walking its own random valid items (never a history item,
never a repeat). Every timed output of (a) is checked to be bitwise identical to (c)'s, and (b)'s to the reference
without exclusions, so the benchmark is also an equivalence test on large tries; a mismatch is printed loudly and
makes the script exit with status 1.

The codes are synthetic (uniformly random, seeded): no bundled catalogue has 100k items. The tokenizer-build
benchmark (``bench_tokenizer_build.py``) uses the real Amazon data.

Run from the repository root::

    PYTHONPATH=. python benchmarks/bench_constrained_decoding.py --device cpu
    PYTHONPATH=. python benchmarks/bench_constrained_decoding.py --device cuda --output outputs/benchmarks/decoding_cuda.json
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from transformers.generation.logits_process import PrefixConstrainedLogitsProcessor

from benchmarks import common
from benchmarks.common import BOS_TOKEN_ID, EOS_TOKEN_ID, NUM_SPECIAL_TOKENS, PAD_TOKEN_ID
from tokenization_semantic_id import SemanticIDTrie, SessionConstrainedLogitsProcessor, SessionPrefixAllowedTokensFn

logger = logging.getLogger(__name__)

# Token layout (PAD, EOS, BOS, then the K codes of each level): see benchmarks.common.
# T5-style decoders start from one decoder_start_token (= PAD) before the session.
PREFIX_LENGTH = 1

Processor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Per-step cost of SessionConstrainedLogitsProcessor vs generate(prefix_allowed_tokens_fn=...).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    common.add_device_argument(parser, help="Device of the trie, input_ids and scores (e.g. cpu, cuda, cuda:1).")
    parser.add_argument("--num-codes", type=int, default=100_000, help="Distinct valid item codes in the trie.")
    parser.add_argument("--num-levels", type=int, default=3, help="Code tokens per item (L).")
    parser.add_argument(
        "--codebook-sizes", type=int, nargs="+", default=[256, 8192], help="Codes per level K; one benchmark per value."
    )
    parser.add_argument(
        "--beams", type=int, nargs="+", default=[32, 128], help="Beam counts (batch 1, so rows = beams)."
    )
    parser.add_argument("--num-history", type=int, default=50, help="Excluded history items per batch row.")
    parser.add_argument("--session-items", type=int, default=5, help="Items per generated session (m).")
    parser.add_argument(
        "--slot",
        type=int,
        default=2,
        help="0-based session item whose decoding positions are timed (earlier items are repeats to forbid).",
    )
    parser.add_argument("--repeats", type=int, default=20, help="Timed calls per position (median reported).")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed calls per position before timing.")
    parser.add_argument(
        "--reference-repeats",
        type=int,
        default=None,
        help="Timed calls of the slow reference (c) per position. Default: as many as fit in "
        "--reference-budget-s, at least --min-reference-repeats and at most --repeats.",
    )
    parser.add_argument(
        "--reference-budget-s",
        type=float,
        default=8.0,
        help="Seconds of reference calls to aim for per position when --reference-repeats is unset.",
    )
    parser.add_argument(
        "--min-reference-repeats", type=int, default=3, help="Fewest timed reference calls per position."
    )
    common.add_run_arguments(
        parser,
        seed_help="Seed of the codes, sessions, history and scores.",
        output_help="JSON file for every number (default: outputs/benchmarks/constrained_decoding_<device>.json).",
    )
    args = parser.parse_args(argv)
    _check_args(args)
    return args


def _check_args(args: argparse.Namespace) -> None:
    """Fails loudly on arguments the benchmark cannot honour."""
    positive = {
        "--num-codes": args.num_codes,
        "--num-levels": args.num_levels,
        "--repeats": args.repeats,
        "--session-items": args.session_items,
        "--min-reference-repeats": args.min_reference_repeats,
    }
    for name, value in positive.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}.")
    if args.warmup < 1:
        raise ValueError(f"--warmup must be >= 1 (the first call builds caches), got {args.warmup}.")
    if args.reference_repeats is not None and args.reference_repeats < 1:
        raise ValueError(f"--reference-repeats must be >= 1, got {args.reference_repeats}.")
    if any(size < 2 for size in args.codebook_sizes) or any(beams < 1 for beams in args.beams):
        raise ValueError(f"--codebook-sizes must be >= 2 and --beams >= 1, got {args.codebook_sizes} and {args.beams}.")
    if args.num_history < 0:
        raise ValueError(f"--num-history must be >= 0, got {args.num_history}.")
    if not 0 <= args.slot < args.session_items:
        raise ValueError(f"--slot must be in [0, --session-items={args.session_items}), got {args.slot}.")
    for size in args.codebook_sizes:
        if size**args.num_levels < args.num_codes:
            raise ValueError(
                f"--num-codes={args.num_codes} distinct codes do not fit in {args.num_levels} levels of K={size} "
                f"({size**args.num_levels} possible codes); lower --num-codes or raise --codebook-sizes."
            )
    # Each beam needs slot + 1 distinct items outside the history.
    if args.num_codes < args.num_history + args.slot + 1:
        raise ValueError(
            f"--num-codes={args.num_codes} is too small for {args.num_history} history items plus {args.slot + 1} "
            "session items; raise --num-codes or lower --num-history."
        )


# --------------------------------------------------------------------------------------------------
# Synthetic catalogue, history and sessions
# --------------------------------------------------------------------------------------------------


def sample_history(num_items: int, num_history: int, seed: int) -> List[int]:
    """``num_history`` distinct random item indices: the excluded history of the single batch row."""
    return random.Random(seed).sample(range(num_items), num_history)


def sample_session_input_ids(
    item_tokens: torch.Tensor, history: Sequence[int], num_rows: int, slot: int, seed: int
) -> torch.Tensor:
    """Decoder inputs of ``num_rows`` beams, each walking its own valid items up to the end of item ``slot``.

    Row ``r`` is ``[PAD] + (BOS c_1 .. c_L) x (slot + 1)`` over ``slot + 1`` distinct random items that are not in
    ``history``. Slice the first ``t`` columns to get the ``input_ids`` of the step that predicts column ``t``.

    Args:
        item_tokens: ``[N, L]`` token ids of the valid codes.
        history: Item indices never generated (excluded for the batch row).
        num_rows: Beams (batch 1).
        slot: 0-based index of the last session item.
    Returns:
        ``[num_rows, 1 + (slot + 1) * (L + 1)]`` long.
    """
    rng = random.Random(seed)
    excluded = set(history)
    rows = []
    for _ in range(num_rows):
        items: List[int] = []
        while len(items) < slot + 1:
            item = rng.randrange(item_tokens.shape[0])
            if item not in excluded and item not in items:
                items.append(item)
        row = [PAD_TOKEN_ID]
        for item in items:
            row += [BOS_TOKEN_ID] + item_tokens[item].tolist()
        rows.append(row)
    return torch.tensor(rows, dtype=torch.long)


def position_names(num_levels: int) -> List[str]:
    """Label of each timed step by the token it predicts: ``["BOS", "code 1", ..., "code L"]``."""
    return ["BOS"] + [f"code {level + 1}" for level in range(num_levels)]


def index_memory_mb(trie: SemanticIDTrie) -> float:
    """Bytes of every tensor the trie holds, in MB (10^6 bytes)."""
    return (
        sum(value.numel() * value.element_size() for value in vars(trie).values() if isinstance(value, torch.Tensor))
        / 1e6
    )


# --------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------


def timed_call(
    processor: Processor, input_ids: torch.Tensor, scores: torch.Tensor, device: torch.device
) -> Tuple[float, torch.Tensor]:
    """One synchronised call: ``(seconds, processed scores [rows, V])``."""
    return common.timed(processor, device, input_ids, scores)


def bitwise_equal(left: torch.Tensor, right: torch.Tensor) -> bool:
    """Same shape, dtype and bytes (so ``-inf`` matches ``-inf`` and ``-0.0`` does not match ``0.0``)."""
    if left.shape != right.shape or left.dtype != right.dtype:
        return False
    return torch.equal(left.contiguous().view(torch.uint8), right.contiguous().view(torch.uint8))


class EquivalenceLog:
    """Counts bitwise comparisons and shouts about every mismatch."""

    def __init__(self):
        self.checked = 0
        self.failures: List[str] = []

    def check(self, left: torch.Tensor, right: torch.Tensor, what: str) -> bool:
        self.checked += 1
        if bitwise_equal(left, right):
            return True
        rows = (left != right).any(dim=1).nonzero().flatten().tolist()
        message = f"{what}: outputs differ in {len(rows)} rows (first rows: {rows[:5]})"
        self.failures.append(message)
        print(f"\n{'!' * 100}\n!!! EQUIVALENCE FAILURE: {message}\n{'!' * 100}\n", file=sys.stderr, flush=True)
        return False


def benchmark_position(
    *,
    fast: Processor,
    fast_plain: Processor,
    reference: Processor,
    reference_plain: Processor,
    input_ids: torch.Tensor,
    scores: torch.Tensor,
    device: torch.device,
    args: argparse.Namespace,
    checks: EquivalenceLog,
    label: str,
) -> dict:
    """Times (a), (b) and (c) at one decoding position, side by side, and checks their outputs.

    Repeats are interleaved ((a), (b), (c), (a), (b), (c), ...) so that all three see the same machine state.

    Returns:
        Per method: median / min seconds and the list of timings; the reference's repeat count.
    """
    for _ in range(args.warmup):
        _, expected = timed_call(fast, input_ids, scores, device)
        timed_call(fast_plain, input_ids, scores, device)
    # One untimed reference call checks the processor without exclusions against the plain reference.
    _, plain_output = timed_call(fast_plain, input_ids, scores, device)
    checks.check(plain_output, timed_call(reference_plain, input_ids, scores, device)[1], f"{label} (b) vs reference")
    # The reference's warm-up also sizes its repeat count.
    reference_warmup_s, reference_output = timed_call(reference, input_ids, scores, device)
    checks.check(expected, reference_output, f"{label} (a) vs (c), warm-up")
    if args.reference_repeats is not None:
        reference_repeats = min(args.reference_repeats, args.repeats)
    else:
        fitting = int(args.reference_budget_s // max(reference_warmup_s, 1e-9))
        reference_repeats = max(args.min_reference_repeats, min(args.repeats, fitting))

    times: Dict[str, List[float]] = {"fast": [], "fast_no_exclusions": [], "reference": []}
    for repeat in range(args.repeats):
        seconds, fast_output = timed_call(fast, input_ids, scores, device)
        times["fast"].append(seconds)
        checks.check(fast_output, reference_output, f"{label} (a) vs (c), repeat {repeat}")
        seconds, plain = timed_call(fast_plain, input_ids, scores, device)
        times["fast_no_exclusions"].append(seconds)
        checks.check(plain, plain_output, f"{label} (b) repeat {repeat} vs its first output")
        if repeat < reference_repeats:
            seconds, reference_output_now = timed_call(reference, input_ids, scores, device)
            times["reference"].append(seconds)
            checks.check(fast_output, reference_output_now, f"{label} (c) repeat {repeat} vs (a)")
    result = {
        name: {"median_s": statistics.median(values), "min_s": min(values), "times_s": values}
        for name, values in times.items()
    }
    result["reference_repeats"] = reference_repeats
    return result


# --------------------------------------------------------------------------------------------------
# One codebook size
# --------------------------------------------------------------------------------------------------


def build_trie(item_tokens: torch.Tensor, vocab_size: int, device: torch.device) -> Tuple[SemanticIDTrie, dict]:
    """Builds the CSR trie on the CPU, moves it to ``device``, and reports how long both took and its size."""
    start = time.perf_counter()
    trie = SemanticIDTrie(item_tokens, vocab_size)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    trie.to(device)
    common.synchronize(device)
    return trie, {
        "build_s": build_s,
        "to_device_s": time.perf_counter() - start,
        "num_nodes": trie.num_nodes,
        "index_mb": index_memory_mb(trie),
    }


def run_codebook_size(
    codebook_size: int, device: torch.device, args: argparse.Namespace, checks: EquivalenceLog
) -> dict:
    """All beam counts for one K: trie statistics plus per-(beams, position) timings."""
    vocab_size = NUM_SPECIAL_TOKENS + args.num_levels * codebook_size
    item_tokens = common.random_item_tokens(args.num_codes, args.num_levels, codebook_size, args.seed)
    trie, trie_stats = build_trie(item_tokens, vocab_size, device)
    history = sample_history(args.num_codes, args.num_history, args.seed + 1)
    layout = dict(
        bos_token_id=BOS_TOKEN_ID,
        eos_token_id=EOS_TOKEN_ID,
        pad_token_id=PAD_TOKEN_ID,
        num_items=args.session_items,
        prefix_length=PREFIX_LENGTH,
    )

    start = time.perf_counter()
    reference_fn = SessionPrefixAllowedTokensFn(item_tokens, forbid_repeats=True, excluded_items=[history], **layout)
    trie_stats["reference_build_s"] = time.perf_counter() - start
    reference_plain_fn = SessionPrefixAllowedTokensFn(item_tokens, forbid_repeats=False, **layout)
    fast_plain = SessionConstrainedLogitsProcessor(trie, forbid_repeats=False, **layout)
    print(
        f"K={codebook_size}: {args.num_codes} codes, trie of {trie_stats['num_nodes']} nodes built in "
        f"{trie_stats['build_s']:.2f} s ({trie_stats['index_mb']:.1f} MB); dict reference built in "
        f"{trie_stats['reference_build_s']:.2f} s",
        flush=True,
    )

    period = args.num_levels + 1
    slot_start = PREFIX_LENGTH + args.slot * period  # length of input_ids when BOS of `slot` comes next
    runs = []
    for beams in args.beams:
        full_ids = sample_session_input_ids(item_tokens, history, beams, args.slot, args.seed + 2 + beams).to(device)
        generator = torch.Generator().manual_seed(args.seed + 3 + beams)
        scores = torch.randn((beams, vocab_size), generator=generator).log_softmax(dim=-1).to(device)
        reference = PrefixConstrainedLogitsProcessor(prefix_allowed_tokens_fn=reference_fn, num_beams=beams)
        reference_plain = PrefixConstrainedLogitsProcessor(prefix_allowed_tokens_fn=reference_plain_fn, num_beams=beams)
        fast = SessionConstrainedLogitsProcessor(
            trie, forbid_repeats=True, excluded_items=[history], num_beams=beams, **layout
        )
        positions = {}
        for offset, name in enumerate(position_names(args.num_levels)):
            label = f"K={codebook_size} beams={beams} {name}"
            positions[name] = benchmark_position(
                fast=fast,
                fast_plain=fast_plain,
                reference=reference,
                reference_plain=reference_plain,
                input_ids=full_ids[:, : slot_start + offset],
                scores=scores,
                device=device,
                args=args,
                checks=checks,
                label=label,
            )
            timing = positions[name]
            print(
                f"  beams={beams:4d} {name:7s}: (a) {1e3 * timing['fast']['median_s']:9.3f} ms  "
                f"(b) {1e3 * timing['fast_no_exclusions']['median_s']:9.3f} ms  "
                f"(c) {1e3 * timing['reference']['median_s']:10.2f} ms  "
                f"[(c) x{timing['reference_repeats']}]",
                flush=True,
            )
        runs.append({"beams": beams, "rows": beams, "positions": positions, **summarise(positions)})
    return {"codebook_size": codebook_size, "vocab_size": vocab_size, "trie": trie_stats, "runs": runs}


def summarise(positions: Dict[str, dict]) -> dict:
    """Mean over positions of the per-position medians (ms per step), and the reference / fast ratio."""
    mean_ms = {
        method: 1e3 * statistics.fmean(p[method]["median_s"] for p in positions.values())
        for method in ("fast", "fast_no_exclusions", "reference")
    }
    return {
        "mean_step_ms": mean_ms,
        "speedup_reference_over_fast": mean_ms["reference"] / mean_ms["fast"],
        "reference_repeats": sorted({p["reference_repeats"] for p in positions.values()}),
    }


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def format_ratio(ratio: float) -> str:
    """``0.52x``, ``3.4x``, ``1234x``: two significant digits below 10."""
    return f"{ratio:.2g}x" if ratio < 10 else f"{ratio:.0f}x"


def markdown_tables(results: List[dict], args: argparse.Namespace, checks: EquivalenceLog) -> str:
    """Summary, per-position and trie tables, ready to paste into RESULTS.md."""
    lines = [
        f"Synthetic trie: {args.num_codes:,} distinct uniformly random codes ({args.num_levels} levels x K), "
        f"batch 1, {args.num_history} excluded history items, session item {args.slot + 1} of "
        f"{args.session_items}; ms per step = mean over the {args.num_levels + 1} positions of the median call time "
        f"((a), (b): {args.repeats} repeats; (c): repeats as listed).",
        "",
        "| K | beams | (a) processor + exclusions (ms/step) | (b) processor, no exclusions (ms/step) "
        "| (c) HF `prefix_allowed_tokens_fn` + exclusions (ms/step) | speed-up (c)/(a) | (c) repeats |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        for run in result["runs"]:
            mean = run["mean_step_ms"]
            lines.append(
                f"| {result['codebook_size']} | {run['beams']} | {mean['fast']:.3f} | {mean['fast_no_exclusions']:.3f} "
                f"| {mean['reference']:.1f} | {format_ratio(run['speedup_reference_over_fast'])} "
                f"| {'/'.join(map(str, run['reference_repeats']))} |"
            )
    lines += [
        "",
        "Per position (median ms of one call; the position is named by the token it predicts):",
        "",
        "| K | beams | position | (a) | (b) | (c) | (c)/(a) |",
        "|---:|---:|---|---:|---:|---:|---:|",
    ]
    for result in results:
        for run in result["runs"]:
            for name, timing in run["positions"].items():
                fast, plain, reference = (
                    1e3 * timing[m]["median_s"] for m in ("fast", "fast_no_exclusions", "reference")
                )
                lines.append(
                    f"| {result['codebook_size']} | {run['beams']} | {name} | {fast:.3f} | {plain:.3f} "
                    f"| {reference:.2f} | {format_ratio(reference / fast)} |"
                )
    lines += [
        "",
        "| K | trie nodes | CSR trie build (s) | index memory (MB) | dict reference build (s) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        trie = result["trie"]
        lines.append(
            f"| {result['codebook_size']} | {trie['num_nodes']:,} | {trie['build_s']:.2f} "
            f"| {trie['index_mb']:.1f} | {trie['reference_build_s']:.2f} |"
        )
    verdict = "all bitwise identical" if not checks.failures else f"{len(checks.failures)} MISMATCHES (see stderr)"
    lines += ["", f"Equivalence: {checks.checked} output comparisons, {verdict}."]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    device = common.setup_device(args.device, args.threads)
    output = common.output_path(args.output, "constrained_decoding", device)
    print(
        f"NOTE: the {args.num_codes:,} codes are synthetic (uniformly random, seed {args.seed}): no bundled "
        "catalogue has that many items. bench_tokenizer_build.py measures the real Amazon data.",
        flush=True,
    )
    checks = EquivalenceLog()
    results = [run_codebook_size(size, device, args, checks) for size in args.codebook_sizes]

    table = markdown_tables(results, args, checks)
    print("\n" + table)
    common.write_results(
        output,
        common.environment(device, synthetic_codes=True),
        args,
        results=results,
        equivalence={"checked": checks.checked, "failures": checks.failures},
        markdown=table,
    )
    print(f"\nwrote {output}")
    return common.exit_status(
        f"{len(checks.failures)} of {checks.checked} comparisons of (a)/(b) with the reference "
        "differ; the fast processor and prefix_allowed_tokens_fn disagree."
        if checks.failures
        else None
    )


if __name__ == "__main__":
    sys.exit(main())
