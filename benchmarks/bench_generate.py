"""Session generation latency and throughput of ``OneRecForConditionalGeneration`` (random weights).

For each preset (default ``tiny`` and ``onerec-0.1b``, 3 code levels x ``--codebook-size`` codes) over a synthetic
catalogue of ``--catalogue-sizes`` distinct uniformly random item codes, every user has a history of
``--history-items`` (50) distinct random items, encoded as ``50 x 3`` code tokens + EOS (151 encoder tokens), and
a session of ``m`` items (``--session-lengths``, default 5; ``1`` = point-wise, TIGER style) is generated with
beam search, ``--beams`` (32, 128) beams, ``--batch-sizes`` (1, 8) users per call. Three methods, side by side:

* ``unconstrained``: ``model.generate(num_beams=B, num_return_sequences=B, length_penalty=0.0,
  max_new_tokens=T, min_new_tokens=T)`` with ``T = m * (L + 1) + 1`` and no logits processor (``min_new_tokens``
  only masks EOS so that every call decodes exactly ``T`` tokens, like the constrained ones);
* ``constrained``: the same call with ``logits_processor=[SessionConstrainedLogitsProcessor(trie, num_items=m,
  forbid_repeats=True, excluded_items=<the histories>)]`` and ``renormalize_logits=True`` (the processor is built
  inside the timed call, as a server would per request batch);
* ``native``: :func:`modeling_onerec.generation_onerec.session_beam_search` with the same constraint (trie,
  history exclusion, no repeats): encoder once, KV-cached decoder, only the current level's slice of the output
  head, only the trie children of each beam scored.

Checks (on the warm-up call of each configuration; a failure makes the script exit with status 1):

* every session returned by ``constrained`` and ``native`` (all ``B`` per user) decodes to real catalogue items in
  the right ``[start] (BOS c1..cL) x m EOS`` layout, with no history item and no repeat -- the count of
  violations must be 0;
* ``native`` vs ``constrained``: the top-1 session agrees for what fraction of users (reported; expected 100% in
  float32 up to exact ties), and the mean fraction of the ``B`` returned sessions the two share.

Timing: ``torch.inference_mode()``, ``--warmup`` untimed calls, then ``--repeats`` timed calls interleaved over the
three methods; median ms per call (= per batch of users) and users/s = batch / median. On GPU every call is
bracketed by ``torch.cuda.synchronize()``.

Time budget: configurations run from cheap to expensive (per preset, by ``batch x beams``); each is given an
equal share of what is left of ``--time-budget-s`` (default 300 s on CPU, 900 s on GPU): timed rounds stop at
``--repeats`` or when the next round would overrun that share (at least one round while the whole budget allows);
a configuration whose estimate (the largest measured one of the same preset, scaled linearly in ``batch x
beams``) does not fit in what is left is skipped, and the table says so.

The codes are synthetic (uniformly random, seeded): no bundled catalogue has 100k items.

Run from the repository root::

    PYTHONPATH=. python benchmarks/bench_generate.py --device cpu --threads 2
    PYTHONPATH=. python benchmarks/bench_generate.py --device cpu --threads 2 --presets tiny --catalogue-sizes 10000 \\
        --beams 32 --batch-sizes 1 8 --repeats 3                                     # quick
    PYTHONPATH=. python benchmarks/bench_generate.py --device cuda
    PYTHONPATH=. python benchmarks/bench_generate.py --device cuda --dtype bfloat16
    PYTHONPATH=. python benchmarks/bench_generate.py --device cuda --codebook-size 8192 --session-lengths 1 5
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
import transformers
from transformers import LogitsProcessorList

from benchmarks import common
from benchmarks.common import BOS_TOKEN_ID, DTYPES, EOS_TOKEN_ID, NUM_SPECIAL_TOKENS, PAD_TOKEN_ID
from modeling_onerec import OneRecConfig, OneRecForConditionalGeneration
from modeling_onerec.configuration_onerec import level_offsets as layout_level_offsets
from tokenization_semantic_id import SemanticIDTrie, SessionConstrainedLogitsProcessor

try:
    from modeling_onerec.generation_onerec import session_beam_search

    NATIVE_IMPORT_ERROR: Optional[str] = None
except ImportError as error:  # the native search is optional: the generate() columns still run
    session_beam_search = None
    NATIVE_IMPORT_ERROR = f"{type(error).__name__}: {error}"


# Token layout (PAD, EOS, BOS, then the K codes of each level) and synthetic codes: see benchmarks.common.
METHODS = ("unconstrained", "constrained", "native")


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="generate() latency / throughput for OneRec: constrained vs unconstrained vs native beam search.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    common.add_device_argument(parser)
    common.add_dtype_argument(parser, help="Model weights and activations.")
    parser.add_argument("--presets", nargs="+", default=["tiny", "onerec-0.1b"], help="OneRecConfig presets.")
    parser.add_argument(
        "--catalogue-sizes",
        type=int,
        nargs="+",
        default=None,
        help="Items in the synthetic catalogue, one per preset (default: 10000 for tiny, 100000 for "
        "every other preset).",
    )
    parser.add_argument("--codebook-size", type=int, default=256, help="Codes per level K (e.g. 256 or 8192).")
    parser.add_argument("--num-levels", type=int, default=3, help="Code tokens per item L.")
    parser.add_argument(
        "--history-items", type=int, default=50, help="History items per user (encoder input and excluded items)."
    )
    parser.add_argument("--session-lengths", type=int, nargs="+", default=[5], help="Items per session m.")
    parser.add_argument("--beams", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], help="Users per generate() call.")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--repeats", type=int, default=5, help="Most timed calls per method and configuration.")
    parser.add_argument("--warmup", type=int, default=1, help="Untimed calls per method and configuration.")
    parser.add_argument(
        "--time-budget-s",
        type=float,
        default=None,
        help="Wall-clock budget of the whole run (default 300 on CPU, 900 on GPU).",
    )
    common.add_run_arguments(
        parser,
        threads_help="torch CPU threads (torch.set_num_threads).",
        output_help="JSON file (default: outputs/benchmarks/generate_<device>[_<dtype>].json).",
    )
    args = parser.parse_args(argv)
    if args.catalogue_sizes is None:
        args.catalogue_sizes = [10_000 if preset == "tiny" else 100_000 for preset in args.presets]
    problems = []
    if len(args.catalogue_sizes) != len(args.presets):
        problems.append(
            f"--catalogue-sizes needs one value per preset ({len(args.presets)}), got {args.catalogue_sizes}"
        )
    if args.repeats < 1 or args.warmup < 1:
        problems.append(f"--repeats and --warmup must be >= 1, got {args.repeats} and {args.warmup}")
    if min(args.session_lengths + args.beams + args.batch_sizes) < 1 or args.history_items < 1:
        problems.append("--session-lengths, --beams, --batch-sizes and --history-items must be >= 1")
    for size in args.catalogue_sizes:
        if size > args.codebook_size**args.num_levels:
            problems.append(f"{size} distinct codes do not fit in {args.num_levels} levels of K={args.codebook_size}")
        if size < args.history_items + max(args.session_lengths):
            problems.append(
                f"a catalogue of {size} items cannot hold {args.history_items} history items plus a "
                f"session of {max(args.session_lengths)}"
            )
    if problems:
        raise ValueError("; ".join(problems) + ".")
    return args


# --------------------------------------------------------------------------------------------------
# Synthetic catalogue, users, model
# --------------------------------------------------------------------------------------------------


def sample_histories(num_items: int, history_items: int, batch: int, seed: int) -> List[List[int]]:
    """``batch`` users, each ``history_items`` distinct random catalogue rows (the same users for every method)."""
    rng = random.Random(seed)
    return [rng.sample(range(num_items), history_items) for _ in range(batch)]


def encode_histories(item_tokens: torch.Tensor, histories: List[List[int]], device: torch.device) -> dict:
    """Encoder inputs as ``SemanticIDTokenizer.batch_encode_histories`` builds them: codes then EOS."""
    codes = item_tokens[torch.tensor(histories)].reshape(len(histories), -1)
    input_ids = torch.cat([codes, torch.full((len(histories), 1), EOS_TOKEN_ID, dtype=torch.long)], dim=1)
    return {"input_ids": input_ids.to(device), "attention_mask": torch.ones_like(input_ids).to(device)}


def build_model(preset: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype):
    config = OneRecConfig.from_preset(
        preset,
        codebook_sizes=[args.codebook_size] * args.num_levels,
        dropout_rate=0.0,
        pad_token_id=PAD_TOKEN_ID,
        eos_token_id=EOS_TOKEN_ID,
        bos_token_id=BOS_TOKEN_ID,
        decoder_start_token_id=PAD_TOKEN_ID,
    )
    torch.manual_seed(args.seed)
    model = OneRecForConditionalGeneration(config).eval().to(device=device, dtype=dtype)
    return config, model


# --------------------------------------------------------------------------------------------------
# The three methods
# --------------------------------------------------------------------------------------------------


def make_methods(
    model,
    trie: SemanticIDTrie,
    inputs: dict,
    histories: List[List[int]],
    beams: int,
    num_items: int,
    level_offsets: List[int],
) -> Dict[str, Callable[[], torch.Tensor]]:
    """Each method as a zero-argument call returning sequences ``[batch, beams, 2 + m * (L + 1)]``."""
    batch = inputs["input_ids"].shape[0]
    new_tokens = num_items * (trie.num_levels + 1) + 1
    search = dict(
        num_beams=beams, num_return_sequences=beams, do_sample=False, length_penalty=0.0, max_new_tokens=new_tokens
    )

    def unconstrained():
        out = model.generate(**inputs, min_new_tokens=new_tokens, **search)
        return out.view(batch, beams, -1)

    def constrained():
        processor = SessionConstrainedLogitsProcessor(
            trie,
            bos_token_id=BOS_TOKEN_ID,
            eos_token_id=EOS_TOKEN_ID,
            pad_token_id=PAD_TOKEN_ID,
            num_items=num_items,
            prefix_length=1,
            forbid_repeats=True,
            excluded_items=histories,
            num_beams=beams,
        )
        out = model.generate(
            **inputs, logits_processor=LogitsProcessorList([processor]), renormalize_logits=True, **search
        )
        return out.view(batch, beams, -1)

    def native():
        out = session_beam_search(
            model,
            inputs["input_ids"],
            inputs["attention_mask"],
            trie,
            num_beams=beams,
            num_items=num_items,
            bos_token_id=BOS_TOKEN_ID,
            eos_token_id=EOS_TOKEN_ID,
            pad_token_id=PAD_TOKEN_ID,
            forbid_repeats=True,
            excluded_items=histories,
            level_offsets=level_offsets,
            renormalize_logits=True,  # the scores of generate(renormalize_logits=True) above
        )
        return out.sequences

    return {"unconstrained": unconstrained, "constrained": constrained, "native": native}


# --------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------


def session_violations(
    sequences: torch.Tensor, trie: SemanticIDTrie, histories: List[List[int]], num_items: int
) -> Dict[str, int]:
    """Counts, over all ``batch x beams`` sessions, of what a valid constrained session may not contain.

    Args:
        sequences: ``[batch, beams, 2 + m * (L + 1)]`` decoder tokens (start token first).
    Returns:
        ``sessions``, ``layout_errors`` (wrong start / BOS / EOS token or wrong length), ``unknown_items`` (a code
        that is no catalogue item), ``history_items``, ``repeated_items`` and ``invalid_sessions`` (sessions with
        any of these).
    """
    batch, beams, length = sequences.shape
    levels = trie.num_levels
    period = levels + 1
    expected = 2 + num_items * period
    sequences = sequences.to(trie.device)
    if length != expected:
        return {
            "sessions": batch * beams,
            "layout_errors": batch * beams,
            "unknown_items": 0,
            "history_items": 0,
            "repeated_items": 0,
            "invalid_sessions": batch * beams,
        }
    body = sequences[:, :, 1:-1].reshape(batch, beams, num_items, period)
    layout_bad = (sequences[:, :, 0] != PAD_TOKEN_ID) | (sequences[:, :, -1] != EOS_TOKEN_ID)
    layout_bad |= (body[..., 0] != BOS_TOKEN_ID).any(dim=-1)
    leaves = trie.walk(body[..., 1:].reshape(-1, levels))
    items = torch.where(leaves >= 0, trie.leaf_item[leaves.clamp(min=0)], torch.full_like(leaves, -1))
    items = items.view(batch, beams, num_items)
    unknown = items < 0
    history = torch.full((batch, max(len(h) for h in histories)), -2, dtype=torch.long)
    for row, items_of_row in enumerate(histories):
        history[row, : len(items_of_row)] = torch.tensor(items_of_row)
    history = history.to(items.device)
    in_history = (items[..., None] == history[:, None, None, :]).any(dim=-1) & ~unknown
    ordered = items.sort(dim=-1).values
    repeated = torch.zeros_like(unknown)
    repeated[..., 1:] = (ordered[..., 1:] == ordered[..., :-1]) & (ordered[..., 1:] >= 0)
    invalid = layout_bad | (unknown | in_history | repeated).any(dim=-1)
    return {
        "sessions": batch * beams,
        "layout_errors": int(layout_bad.sum()),
        "unknown_items": int(unknown.sum()),
        "history_items": int(in_history.sum()),
        "repeated_items": int(repeated.sum()),
        "invalid_sessions": int(invalid.sum()),
    }


def agreement(native: torch.Tensor, generated: torch.Tensor) -> Dict[str, float]:
    """Top-1 agreement rate over users and the mean shared fraction of the returned sessions."""
    native, generated = native.cpu(), generated.cpu()
    top1 = (native[:, 0] == generated[:, 0]).all(dim=-1).float().mean().item()
    shared = []
    for row in range(native.shape[0]):
        ours = {tuple(s) for s in native[row].tolist()}
        theirs = {tuple(s) for s in generated[row].tolist()}
        shared.append(len(ours & theirs) / max(len(theirs), 1))
    return {"top1_agreement": top1, "mean_shared_fraction": statistics.fmean(shared)}


# --------------------------------------------------------------------------------------------------
# One configuration
# --------------------------------------------------------------------------------------------------


def run_config(
    model,
    trie,
    item_tokens,
    level_offsets,
    methods: List[str],
    *,
    batch: int,
    beams: int,
    num_items: int,
    args: argparse.Namespace,
    device: torch.device,
    allowance_s: float,
    remaining_s: float,
) -> dict:
    histories = sample_histories(trie.num_items, args.history_items, batch, args.seed + 7 * batch + beams)
    inputs = encode_histories(item_tokens, histories, device)
    calls = make_methods(model, trie, inputs, histories, beams, num_items, level_offsets)
    start = time.perf_counter()
    warmup: Dict[str, List[float]] = {name: [] for name in methods}
    outputs: Dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        for _ in range(args.warmup):
            for name in methods:
                seconds, outputs[name] = common.timed(calls[name], device)
                warmup[name].append(seconds)
        # Timed rounds until --repeats or this configuration's share of the budget is used up. The warm-up round
        # (first calls may include one-off setup) only decides whether one timed round fits at all.
        warmup_round_s = sum(values[-1] for values in warmup.values())
        times: Dict[str, List[float]] = {name: [] for name in methods}
        timed_start = time.perf_counter()
        last_round_s = warmup_round_s
        for round_index in range(args.repeats):
            spent = time.perf_counter() - timed_start
            left = remaining_s - (time.perf_counter() - start)
            if last_round_s > left or (round_index > 0 and spent + last_round_s > allowance_s):
                break
            round_start = time.perf_counter()
            for name in methods:
                times[name].append(common.timed(calls[name], device)[0])
            last_round_s = time.perf_counter() - round_start
        planned = len(times[methods[0]])

    result = {
        "batch": batch,
        "beams": beams,
        "num_items": num_items,
        "rows": batch * beams,
        "new_tokens": num_items * (trie.num_levels + 1) + 1,
        "repeats": planned,
        "warmup_only": planned == 0,
        "methods": {},
    }
    for name in methods:
        values = times[name] if planned else warmup[name][-1:]
        median = statistics.median(values)
        result["methods"][name] = {
            "median_s": median,
            "min_s": min(values),
            "times_s": values,
            "warmup_s": warmup[name],
            "users_per_s": batch / median,
        }
    checks = {}
    for name in ("constrained", "native"):
        if name in outputs:
            checks[f"{name}_violations"] = session_violations(outputs[name], trie, histories, num_items)
    if "unconstrained" in outputs:
        checks["unconstrained_violations"] = session_violations(outputs["unconstrained"], trie, histories, num_items)
    if "constrained" in outputs and "native" in outputs:
        checks["native_vs_constrained"] = agreement(outputs["native"], outputs["constrained"])
    result["checks"] = checks
    return result


def estimate_config_s(measured: List[dict], rows: int, methods: List[str], args: argparse.Namespace) -> Optional[float]:
    """Seconds of warm-up + one timed round, from the largest measured configuration of the same preset and m,
    scaled linearly in ``batch x beams`` (an overestimate where the cost grows sublinearly, as on a GPU)."""
    if not measured:
        return None
    reference = max(measured, key=lambda result: result["rows"])
    per_round = sum(reference["methods"][name]["median_s"] for name in methods)
    return per_round * max(rows / reference["rows"], 1.0) * (args.warmup + 1)


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def markdown_table(
    presets: List[dict], args: argparse.Namespace, device: torch.device, methods: List[str], notes: List[str]
) -> str:
    def ms(run, name):
        return f"{1e3 * run['methods'][name]['median_s']:.1f}" if name in run["methods"] else "-"

    lines = [
        f"`generate()` vs native session beam search, random weights, {args.dtype}, device {device}; history "
        f"{args.history_items} items ({args.history_items * args.num_levels + 1} encoder tokens), {args.num_levels} "
        f"levels x K={args.codebook_size}, synthetic catalogue; ms = median per call (one batch of users), up to "
        f"{args.repeats} timed calls after {args.warmup} warm-up. Constrained = trie processor with history "
        "exclusion and no repeats, `renormalize_logits=True`; unconstrained = no processor, same number of new "
        "tokens. Invalid = constrained / native sessions that are not m real, new, distinct items (must be 0).",
        "",
        "| preset | items | m | batch | beams | unconstrained ms | constrained ms | native ms "
        "| constrained users/s | native users/s | constraint cost | native speed-up | invalid (gen / native) "
        "| top-1 agree | shared sessions | repeats |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for preset in presets:
        for run in preset["runs"]:
            head = (
                f"| {preset['preset']} | {preset['catalogue_size']:,} | {run['num_items']} | {run['batch']} "
                f"| {run['beams']} "
            )
            if "skipped" in run:
                lines.append(head + "| - " * 10 + f"| skipped: {run['skipped']} |")
                continue
            m = run["methods"]
            cost = (
                f"{m['constrained']['median_s'] / m['unconstrained']['median_s']:.2f}x"
                if "constrained" in m and "unconstrained" in m
                else "-"
            )
            speedup = (
                f"{m['constrained']['median_s'] / m['native']['median_s']:.1f}x"
                if "constrained" in m and "native" in m
                else "-"
            )
            checks = run["checks"]
            invalid = " / ".join(
                str(checks[f"{name}_violations"]["invalid_sessions"]) if f"{name}_violations" in checks else "-"
                for name in ("constrained", "native")
            )
            agree = checks.get("native_vs_constrained")
            repeats = "warm-up only" if run["warmup_only"] else str(run["repeats"])
            top1 = f"{100 * agree['top1_agreement']:.0f}%" if agree else "-"
            shared = f"{100 * agree['mean_shared_fraction']:.0f}%" if agree else "-"
            users = [f"{m[name]['users_per_s']:.1f}" if name in m else "-" for name in ("constrained", "native")]
            lines.append(
                head + f"| {ms(run, 'unconstrained')} | {ms(run, 'constrained')} | {ms(run, 'native')} "
                f"| {users[0]} | {users[1]} | {cost} | {speedup} | {invalid} | {top1} | {shared} "
                f"| {repeats} |"
            )
    lines += [
        "",
        "| preset | parameters (total / activated) | vocab | catalogue | trie build (s) | model build (s) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for preset in presets:
        counts = preset["parameter_counts"]
        lines.append(
            f"| {preset['preset']} | {counts['total'] / 1e6:.1f}M / {counts['activated'] / 1e6:.1f}M "
            f"| {preset['vocab_size']:,} | {preset['catalogue_size']:,} | {preset['trie_build_s']:.2f} "
            f"| {preset['model_build_s']:.2f} |"
        )
    if notes:
        lines += [""] + [f"Note: {note}" for note in notes]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    run_start = time.perf_counter()
    args = parse_args(argv)
    device = common.setup_device(args.device, args.threads)
    dtype = DTYPES[args.dtype]
    if args.time_budget_s is None:
        args.time_budget_s = 900.0 if device.type == "cuda" else 300.0
    transformers.logging.set_verbosity_error()  # generate() warns about generation flags on every call
    output = common.output_path(args.output, "generate", device, args.dtype)
    env = common.print_environment(device, dtype=args.dtype, synthetic_codes=True)
    print(
        f"NOTE: catalogues of {args.catalogue_sizes} synthetic uniformly random codes (seed {args.seed}).", flush=True
    )

    notes: List[str] = []
    methods = list(args.methods)
    if "native" in methods and session_beam_search is None:
        methods.remove("native")
        notes.append(
            f"native session_beam_search skipped: modeling_onerec.generation_onerec could not be imported "
            f"({NATIVE_IMPORT_ERROR})."
        )
        print(f"SKIP native: {notes[-1]}", flush=True)
    if not methods:
        raise ValueError("no method left to run.")

    grid = [(preset, size, m) for preset, size in zip(args.presets, args.catalogue_sizes) for m in args.session_lengths]
    shapes = sorted(
        {(batch, beams) for batch in args.batch_sizes for beams in args.beams},
        key=lambda shape: (shape[0] * shape[1], shape[1]),
    )
    total_configs = len(grid) * len(shapes)
    done_configs = 0
    presets: List[dict] = []
    failures: List[str] = []
    for preset_name in args.presets:
        index = args.presets.index(preset_name)
        size = args.catalogue_sizes[index]
        start = time.perf_counter()
        item_tokens = common.random_item_tokens(size, args.num_levels, args.codebook_size, args.seed)
        vocab_size = NUM_SPECIAL_TOKENS + args.num_levels * args.codebook_size
        trie = SemanticIDTrie(item_tokens, vocab_size).to(device)
        trie_build_s = time.perf_counter() - start
        start = time.perf_counter()
        config, model = build_model(preset_name, args, device, dtype)
        common.synchronize(device)
        model_build_s = time.perf_counter() - start
        level_offsets = layout_level_offsets([args.codebook_size] * args.num_levels)
        counts = config.parameter_counts()
        print(
            f"\n{preset_name}: {counts['total'] / 1e6:.1f}M parameters ({counts['activated'] / 1e6:.1f}M activated), "
            f"vocab {vocab_size}, {size:,} items; trie {trie_build_s:.2f} s, model {model_build_s:.2f} s",
            flush=True,
        )
        entry = {
            "preset": preset_name,
            "catalogue_size": size,
            "vocab_size": vocab_size,
            "parameter_counts": counts,
            "trie_build_s": trie_build_s,
            "model_build_s": model_build_s,
            "runs": [],
        }
        presets.append(entry)
        for num_items in args.session_lengths:
            measured: List[dict] = []
            for batch, beams in shapes:
                remaining = args.time_budget_s - (time.perf_counter() - run_start)
                configs_left = total_configs - done_configs
                done_configs += 1
                label = f"{preset_name} m={num_items} batch={batch} beams={beams}"
                estimate = estimate_config_s(measured, batch * beams, methods, args)
                if remaining <= 0 or (estimate is not None and estimate > remaining):
                    reason = (
                        f"estimated {estimate:.0f} s > {max(remaining, 0):.0f} s left of --time-budget-s "
                        f"{args.time_budget_s:g}"
                        if estimate is not None
                        else f"--time-budget-s {args.time_budget_s:g} spent"
                    )
                    entry["runs"].append(
                        {
                            "batch": batch,
                            "beams": beams,
                            "num_items": num_items,
                            "rows": batch * beams,
                            "skipped": reason,
                        }
                    )
                    print(f"  {label}: skipped ({reason})", flush=True)
                    continue
                run = run_config(
                    model,
                    trie,
                    item_tokens,
                    level_offsets,
                    methods,
                    batch=batch,
                    beams=beams,
                    num_items=num_items,
                    args=args,
                    device=device,
                    allowance_s=remaining / configs_left,
                    remaining_s=remaining,
                )
                entry["runs"].append(run)
                measured.append(run)
                text = "  ".join(f"{name} {1e3 * value['median_s']:8.1f} ms" for name, value in run["methods"].items())
                checks = run["checks"]
                agree = checks.get("native_vs_constrained")
                print(
                    f"  {label}: {text}  (x{run['repeats']}{', warm-up only' if run['warmup_only'] else ''})"
                    + (
                        f"  top-1 agree {100 * agree['top1_agreement']:.0f}%, shared "
                        f"{100 * agree['mean_shared_fraction']:.0f}%"
                        if agree
                        else ""
                    ),
                    flush=True,
                )
                for name in ("constrained", "native"):
                    violations = checks.get(f"{name}_violations")
                    if violations and violations["invalid_sessions"]:
                        failures.append(
                            f"{label}: {name} returned {violations['invalid_sessions']} invalid sessions {violations}"
                        )
                        print(f"\n{'!' * 100}\n!!! {failures[-1]}\n{'!' * 100}\n", file=sys.stderr, flush=True)
        del model, trie
        if device.type == "cuda":
            torch.cuda.empty_cache()

    skipped = [
        f"{p['preset']} m={r['num_items']} batch={r['batch']} beams={r['beams']}"
        for p in presets
        for r in p["runs"]
        if "skipped" in r
    ]
    if skipped:
        notes.append(
            f"{len(skipped)} configuration(s) skipped to stay within --time-budget-s "
            f"{args.time_budget_s:g}: {', '.join(skipped)}."
        )
    cut = [
        f"{p['preset']} m={r['num_items']} batch={r['batch']} beams={r['beams']} (x{r['repeats']})"
        for p in presets
        for r in p["runs"]
        if "skipped" not in r and r["repeats"] < args.repeats
    ]
    if cut:
        notes.append(f"repeats cut to fit the budget: {', '.join(cut)}.")
    table = markdown_table(presets, args, device, methods, notes)
    print("\n" + table)
    common.write_results(
        output,
        env,
        args,
        methods=methods,
        presets=presets,
        failures=failures,
        notes=notes,
        markdown=table,
        wall_s=time.perf_counter() - run_start,
    )
    print(f"\nwrote {output} (whole run {time.perf_counter() - run_start:.0f} s)")
    return common.exit_status(
        f"{len(failures)} configuration(s) returned invalid constrained sessions." if failures else None
    )


if __name__ == "__main__":
    sys.exit(main())
