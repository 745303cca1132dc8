"""Build time and codebook health of ``build_semantic_ids`` on the bundled real Amazon catalogues.

For each dataset (Amazon 2014 Beauty, 12,101 items; Amazon 2018 Industrial & Scientific, 4,344 items) this

1. builds item embeddings from the TRAINING interactions only (leave-one-out: the last two items of every user
   with at least 3 items are dropped, as in ``trainers.data.leave_one_out_split``): collaborative PPMI-SVD
   embeddings by default, or ``--embeddings concat`` (sentence-encoder text + collaborative; the text part is
   cached under ``--output-dir``/embedding_cache so that later runs skip it),
2. times ``build_semantic_ids`` (median of ``--repeats`` after an untimed warm-up on a subset) with
   ``--num-levels`` x ``--codebook-size`` codes, balanced (the paper's Algorithm 1) and unbalanced (plain
   k-means) residual k-means,
3. reports per variant: iterations and convergence per level, code utilisation, largest / smallest cluster,
   collision rate before / after the disambiguation level and its size, and saves a plot of the cluster sizes
   (balanced vs unbalanced) to ``--output-dir``.

The data loader ``trainers.data.load_bundled`` needs the ``datasets`` package; where it is missing (GPU images)
the collaborative benchmark reads the same gzipped files directly, giving the same catalogue order.

Run from the repository root::

    PYTHONPATH=. python benchmarks/bench_tokenizer_build.py --device cpu
    PYTHONPATH=. python benchmarks/bench_tokenizer_build.py --device cuda --dataset beauty --embeddings concat
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from benchmarks.common import (
    add_device_argument,
    add_threads_argument,
    check_threads,
    environment,
    json_arguments,
    setup_device,
    synchronize,
    write_json,
)
from tokenization_semantic_id import (
    ItemEmbeddingConfig,
    ResidualKMeansConfig,
    SemanticIDTokenizer,
    build_item_embeddings,
    build_semantic_ids,
    codebook_report,
    plot_codebook_report,
)

logger = logging.getLogger(__name__)

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "trainers" / "data" / "bundled"
# name -> (sequence file, format, item metadata file), as `trainers.data.load_bundled` reads them.
BUNDLED_FILES = {
    "beauty": ("amazon_beauty/Beauty.txt.gz", "s3rec", "amazon_beauty/Beauty_item_meta_derived.json.gz"),
    "scientific": (
        "amazon18_scientific/Scientific.inter.json.gz",
        "inter_json",
        "amazon18_scientific/Scientific.item.json.gz",
    ),
}
VARIANTS = {"balanced": True, "unbalanced": False}
WARMUP_ITEMS = 2048
_INTEGER_ID = re.compile(r"[+-]?\d+\Z")


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time build_semantic_ids (balanced vs unbalanced residual k-means) on real Amazon data.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--dataset", choices=["beauty", "scientific", "both"], default="both", help="Bundled catalogue(s) to build."
    )
    add_device_argument(parser, help="Device of the k-means (and of the text encoder for --embeddings concat).")
    parser.add_argument("--repeats", type=int, default=3, help="Timed builds per variant (median reported).")
    parser.add_argument(
        "--embeddings",
        choices=["collaborative", "concat"],
        default="collaborative",
        help="Item embeddings: collaborative PPMI-SVD of training sequences, or text + collaborative.",
    )
    parser.add_argument("--num-levels", type=int, default=3, help="Semantic levels L.")
    parser.add_argument("--codebook-size", type=int, default=256, help="Codes per level K.")
    parser.add_argument(
        "--max-iterations", type=int, default=ResidualKMeansConfig.max_iterations, help="Most k-means sweeps per level."
    )
    add_threads_argument(parser)
    parser.add_argument("--seed", type=int, default=0, help="Seed of the k-means initialisation and the SVD.")
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path("outputs/benchmarks"),
        help="Where the JSON, the plots and the text-embedding cache go.",
    )
    args = parser.parse_args(argv)
    for name in ("repeats", "num_levels", "max_iterations"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}.")
    check_threads(args.threads)
    if args.codebook_size < 2:
        raise ValueError(f"--codebook-size must be >= 2, got {args.codebook_size}.")
    return args


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


@dataclass
class Catalogue:
    """One bundled dataset as the benchmark needs it.

    Attributes:
        name: ``"beauty"`` or ``"scientific"``.
        item_ids: ``N`` item ids in catalogue order (natural order of the ids).
        sequences: Per user, item ids in time order (full sequences).
        texts: ``N`` item texts aligned with ``item_ids`` (``None`` when read without ``datasets``).
        loader: How the data was read.
    """

    name: str
    item_ids: List[str]
    sequences: List[List[str]]
    texts: Optional[List[str]]
    loader: str


def natural_order(ids) -> List[str]:
    """Numeric order when every id is an integer, else lexicographic (as ``trainers.data.natural_order``)."""
    ids = list(ids)
    if all(_INTEGER_ID.match(item) for item in ids):
        return sorted(ids, key=lambda item: (int(item), item))
    return sorted(ids)


def read_bundled_files(name: str) -> Catalogue:
    """Reads a bundled dataset straight from its gzipped files (no ``datasets``, no item texts).

    The catalogue is the union of interacted and metadata items in natural id order, as ``load_bundled`` builds it.
    """
    sequences_file, layout, metadata_file = BUNDLED_FILES[name]
    sequences_path, metadata_path = BUNDLED_DIR / sequences_file, BUNDLED_DIR / metadata_file
    for path in (sequences_path, metadata_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run from a full checkout of onerec-hf (bundled data).")
    with gzip.open(sequences_path, "rt", encoding="utf-8-sig") as handle:
        if layout == "s3rec":
            users = {fields[0]: fields[1:] for fields in (line.split() for line in handle) if fields}
        else:
            users = {user: [str(item) for item in items] for user, items in json.load(handle).items()}
    with gzip.open(metadata_path, "rt", encoding="utf-8-sig") as handle:
        metadata_ids = set(json.load(handle))
    sequences = [users[user] for user in natural_order(users)]
    interacted = {item for sequence in sequences for item in sequence}
    return Catalogue(name, natural_order(interacted | metadata_ids), sequences, None, "gzip files (no datasets)")


def load_catalogue(name: str, need_texts: bool) -> Catalogue:
    """The dataset via ``trainers.data.load_bundled``, or via the raw files when ``datasets`` is not installed."""
    try:
        from trainers.data import load_bundled
    except ImportError as error:
        if need_texts:
            raise ImportError(
                f"--embeddings concat needs item texts from trainers.data.load_bundled, which failed to import "
                f"({error}). Install `datasets`, or run with --embeddings collaborative."
            ) from error
        logger.warning("trainers.data is not importable (%s); reading the bundled gzip files directly.", error)
        return read_bundled_files(name)
    data = load_bundled(name)
    return Catalogue(
        name,
        list(data["items"]["item_id"]),
        [list(s) for s in data["sequences"]["item_ids"]],
        list(data["items"]["text"]),
        "trainers.data.load_bundled",
    )


def training_sequences(sequences: Sequence[Sequence[str]], min_length: int = 3) -> List[List[str]]:
    """Leave-one-out training part: drop the last two items (validation and test targets) of every sequence
    with at least ``min_length`` items; shorter sequences stay whole (the rule of ``leave_one_out_split``)."""
    return [list(s[:-2]) if len(s) >= min_length else list(s) for s in sequences]


def item_embeddings(catalogue: Catalogue, args: argparse.Namespace, device: torch.device) -> Tuple[torch.Tensor, dict]:
    """``[N, D]`` item embeddings from the training interactions (and texts for ``concat``), with timing facts."""
    config = ItemEmbeddingConfig(
        source=args.embeddings,
        seed=args.seed,
        device=str(device),
        cache_dir=str(args.output_dir / "embedding_cache") if args.embeddings == "concat" else None,
    )
    train = training_sequences(catalogue.sequences)
    start = time.perf_counter()
    embeddings = build_item_embeddings(config, catalogue.item_ids, texts=catalogue.texts, train_sequences=train)
    seconds = time.perf_counter() - start
    zero_rows = int((embeddings.norm(dim=1) == 0).sum())
    info = {
        "source": args.embeddings,
        "dim": int(embeddings.shape[1]),
        "seconds": seconds,
        "train_interactions": sum(len(s) for s in train),
        "zero_rows": zero_rows,
        "note": "text part read from cache when present" if args.embeddings == "concat" else "",
    }
    return embeddings, info


# --------------------------------------------------------------------------------------------------
# Build and statistics
# --------------------------------------------------------------------------------------------------


def quantizer_config(
    args: argparse.Namespace, device: torch.device, balanced: bool, **overrides
) -> ResidualKMeansConfig:
    fields = dict(
        num_levels=args.num_levels,
        codebook_size=args.codebook_size,
        balanced=balanced,
        max_iterations=args.max_iterations,
        seed=args.seed,
        device=str(device),
    )
    fields.update(overrides)
    return ResidualKMeansConfig(**fields)


def warm_up(embeddings: torch.Tensor, args: argparse.Namespace, device: torch.device) -> None:
    """One short untimed build per variant (allocator, kernels, lazy imports) on the first items."""
    subset = embeddings[: max(WARMUP_ITEMS, args.codebook_size)]
    item_ids = [str(index) for index in range(subset.shape[0])]
    for balanced in VARIANTS.values():
        build_semantic_ids(item_ids, subset, quantizer_config(args, device, balanced, max_iterations=2), progress=False)
    synchronize(device)


def timed_builds(
    catalogue: Catalogue, embeddings: torch.Tensor, config: ResidualKMeansConfig, repeats: int, device: torch.device
) -> Tuple[SemanticIDTokenizer, List[float], bool]:
    """``repeats`` synchronised builds: ``(last tokenizer, seconds per build, identical codes every time)``."""
    times, tokenizer, deterministic = [], None, True
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        built = build_semantic_ids(catalogue.item_ids, embeddings, config, progress=False)
        synchronize(device)
        times.append(time.perf_counter() - start)
        if tokenizer is not None and not torch.equal(built.item_codes, tokenizer.item_codes):
            deterministic = False
        tokenizer = built
    return tokenizer, times, deterministic


def variant_summary(tokenizer: SemanticIDTokenizer, times: List[float], deterministic: bool) -> dict:
    """The numbers the table reports for one built tokenizer."""
    report = tokenizer.statistics()
    semantic_levels = report["levels"][: tokenizer.num_semantic_levels]
    collisions = tokenizer.build_info["collisions"]
    return {
        "build_s_median": statistics.median(times),
        "build_s": times,
        "deterministic": deterministic,
        "iterations": [level["iterations"] for level in tokenizer.build_info["levels"]],
        "converged": [level["converged"] for level in tokenizer.build_info["levels"]],
        "utilisation": [level["utilisation"] for level in semantic_levels],
        "max_cluster": [level["max_cluster"] for level in semantic_levels],
        "min_cluster": [level["min_cluster"] for level in semantic_levels],
        "distinct_prefixes": [prefix["distinct_prefixes"] for prefix in report["prefixes"]],
        "collision_rate_before": report["collision_rate_before"],
        "collision_rate_after": report["collision_rate_after"],
        "colliding_items": collisions["colliding_items"],
        "max_group_size": collisions["max_group_size"],
        "disambiguation_size": collisions["disambiguation_size"],
        "residual_norm": tokenizer.build_info["residual_norm"],
        "report": report,
    }


def save_plot(
    catalogue: Catalogue, tokenizers: Dict[str, SemanticIDTokenizer], args: argparse.Namespace
) -> Optional[str]:
    """Cluster sizes per semantic level, balanced vs unbalanced, as a PNG under ``--output-dir``."""
    codes = {name: tok.item_codes[:, : tok.num_semantic_levels] for name, tok in tokenizers.items()}
    # Semantic levels only: the disambiguation level may differ in size between variants.
    reports = {
        name: codebook_report(codes[name], tok.codebook_sizes[: tok.num_semantic_levels], tok.num_semantic_levels)
        for name, tok in tokenizers.items()
    }
    path = args.output_dir / f"codebook_{catalogue.name}_{args.embeddings}.png"
    title = (
        f"{catalogue.name}: {len(catalogue.item_ids):,} items, {args.num_levels} x {args.codebook_size} codes, "
        f"{args.embeddings} embeddings"
    )
    try:
        return str(plot_codebook_report(reports, codes, path, title=title))
    except ImportError as error:
        logger.warning("No plot saved for %s: %s (install matplotlib).", catalogue.name, error)
        return None


def run_dataset(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    catalogue = load_catalogue(name, need_texts=args.embeddings == "concat")
    embeddings, embedding_info = item_embeddings(catalogue, args, device)
    print(
        f"{name}: {len(catalogue.item_ids):,} items, {len(catalogue.sequences):,} users ({catalogue.loader}); "
        f"{args.embeddings} embeddings [{embeddings.shape[0]}, {embeddings.shape[1]}] in "
        f"{embedding_info['seconds']:.1f} s, {embedding_info['zero_rows']} zero rows",
        flush=True,
    )
    warm_up(embeddings, args, device)
    tokenizers, variants = {}, {}
    for variant, balanced in VARIANTS.items():
        config = quantizer_config(args, device, balanced)
        tokenizer, times, deterministic = timed_builds(catalogue, embeddings, config, args.repeats, device)
        tokenizers[variant], variants[variant] = tokenizer, variant_summary(tokenizer, times, deterministic)
        print(
            f"  {variant:10s}: build {variants[variant]['build_s_median']:.2f} s (median of {args.repeats}), "
            f"iterations {variants[variant]['iterations']}, collisions "
            f"{100 * variants[variant]['collision_rate_before']:.2f}%",
            flush=True,
        )
    plot = save_plot(catalogue, tokenizers, args)
    return {
        "dataset": name,
        "num_items": len(catalogue.item_ids),
        "num_users": len(catalogue.sequences),
        "loader": catalogue.loader,
        "embeddings": embedding_info,
        "variants": variants,
        "plot": plot,
    }


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def _per_level(values, fmt: str = "{}") -> str:
    return " / ".join(fmt.format(value) for value in values)


def markdown_table(results: List[dict], args: argparse.Namespace) -> str:
    """One row per (dataset, variant), ready to paste into RESULTS.md."""
    lines = [
        f"{args.num_levels} levels x {args.codebook_size} codes, {args.embeddings} embeddings from training "
        f"interactions (leave-one-out), max {args.max_iterations} sweeps per level, seed {args.seed}; build time = "
        f"median of {args.repeats} `build_semantic_ids` calls. Per-level values are level 1 / 2 / 3.",
        "",
        "| dataset | items | variant | build (s) | sweeps / level | converged | utilisation | largest / smallest "
        "cluster | collisions before -> after | disambiguation size |",
        "|---|---:|---|---:|---|---|---|---|---|---:|",
    ]
    for result in results:
        for variant, stats in result["variants"].items():
            clusters = " / ".join(f"{big}:{small}" for big, small in zip(stats["max_cluster"], stats["min_cluster"]))
            converged = _per_level(["yes" if flag else "no" for flag in stats["converged"]])
            lines.append(
                f"| {result['dataset']} | {result['num_items']:,} | {variant} | {stats['build_s_median']:.2f} "
                f"| {_per_level(stats['iterations'])} | {converged} | {_per_level(stats['utilisation'], '{:.1%}')} "
                f"| {clusters} | {100 * stats['collision_rate_before']:.2f}% -> "
                f"{100 * stats['collision_rate_after']:.2f}% | {stats['disambiguation_size']} |"
            )
    notes = []
    for result in results:
        per_code = result["num_items"] / args.codebook_size
        embedding = result["embeddings"]
        notes.append(
            f"- {result['dataset']}: {result['num_items']:,} / {args.codebook_size} = {per_code:.0f} items per "
            f"level-1 code; embeddings {embedding['dim']}-d in {embedding['seconds']:.1f} s, {embedding['zero_rows']} "
            f"items without training co-occurrence (zero vector)."
        )
    lines += ["", "Largest / smallest cluster counts items per used code; ':' separates largest:smallest.", *notes]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    device = setup_device(args.device, args.threads)
    names = ["beauty", "scientific"] if args.dataset == "both" else [args.dataset]
    results = [run_dataset(name, args, device) for name in names]
    table = markdown_table(results, args)
    print("\n" + table)
    output = args.output_dir / f"tokenizer_build_{device.type}_{args.embeddings}.json"
    write_json(
        output,
        {"environment": environment(device), "arguments": json_arguments(args), "results": results, "markdown": table},
    )
    print(f"\nwrote {output}" + "".join(f"\nwrote {r['plot']}" for r in results if r["plot"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
