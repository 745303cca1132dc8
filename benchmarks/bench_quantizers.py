"""Build time of every semantic-ID quantizer on synthetic catalogues (up to 1M items), side by side in one process.

Synthetic clustered embeddings (``--dim``-d, 4,096 centres, seed 0, the other benchmarks' data); for each quantizer
(``balanced_rkmeans``, ``rkmeans``, ``rqvae``, ``opq``, each with its defaults: 3 levels of 256 codes) one timed
``build_semantic_ids`` (collision resolution and the trie included), and the statistics the quantizers are compared
by: code utilisation per level, largest / smallest cluster, items sharing a full code before resolution, relative
reconstruction error.

    PYTHONPATH=. python benchmarks/bench_quantizers.py --items 1000000 --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import add_threads_argument, check_threads, environment, write_json
from tokenization_semantic_id import build_semantic_ids, quantizer_statistics

QUANTIZERS = ("balanced_rkmeans", "rkmeans", "rqvae", "opq")


def synthetic_embeddings(items: int, dim: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(4096, dim, generator=generator) * 2
    which = torch.randint(4096, (items,), generator=generator)
    return centres[which] + torch.randn(items, dim, generator=generator)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--quantizers", nargs="+", default=list(QUANTIZERS), choices=QUANTIZERS)
    parser.add_argument("--output", default=None, help="Write the results as JSON here.")
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    check_threads(args.threads)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    embeddings = synthetic_embeddings(args.items, args.dim)
    item_ids = [str(index) for index in range(args.items)]
    rows = {}
    for name in args.quantizers:
        start = time.perf_counter()
        tokenizer = build_semantic_ids(item_ids, embeddings, quantizer=name, progress=False)
        seconds = time.perf_counter() - start
        stats = quantizer_statistics(tokenizer)
        levels = stats["levels"][: tokenizer.num_semantic_levels]
        rows[name] = {
            "seconds": round(seconds, 1),
            "utilisation": [round(level["utilisation"], 4) for level in levels],
            "largest_smallest": [[level["max_cluster"], level["min_cluster"]] for level in levels],
            "items_sharing_a_code": stats["collision_rate_before"],
            "relative_error": stats["reconstruction"].get("relative_error"),
        }
        print(name, json.dumps(rows[name]), flush=True)
    result = {"environment": environment(torch.device("cpu")), "items": args.items, "dim": args.dim, "rows": rows}
    if args.output:
        write_json(Path(args.output), result)
    print("\n| quantizer | seconds | utilisation per level | largest / smallest cluster | items sharing a code | "
          "relative reconstruction error |\n|---|---:|---|---|---:|---:|")  # fmt: skip
    for name, row in rows.items():
        sizes = ", ".join(f"{a} / {b}" for a, b in row["largest_smallest"])
        utilisation = ", ".join(f"{u:.3f}" for u in row["utilisation"])
        error = "-" if row["relative_error"] is None else f"{row['relative_error']:.3f}"
        print(
            f"| {name} | {row['seconds']:.1f} | {utilisation} | {sizes} | {row['items_sharing_a_code']:.4f} | {error} |"
        )
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
