"""Balanced residual k-means (paper Algorithm 1) at catalogue scale: time, balance and collisions, for one or more
checkouts side by side.

A synthetic catalogue of ``--items`` clustered embeddings (``--dim``-d, Gaussian blobs around 4,096 centres, seed 0),
quantised with ``--levels`` x ``--codes`` codes; each tree runs in its own process (``PYTHONPATH=<tree>``) with the
same data and arguments, and the script prints the seconds, sweeps (of which over a sample), the largest / smallest
cluster, the mean norm of the residual left after the last level (the quantisation error) and the share of items that
share their full code with another item. ``--max_points_per_centroid`` runs each tree once per value (0: no
sampling, every sweep over all items; -1: the tree's default)::

    git worktree add ../before e0b83fc
    PYTHONPATH=. python benchmarks/bench_balanced_kmeans.py --trees ../before . --items 200000 --codes 1024 \\
        --levels 1 --max_iterations 3 --threads 2
    PYTHONPATH=. python benchmarks/bench_balanced_kmeans.py --items 200000 --codes 1024 --max_points_per_centroid 0 64
    PYTHONPATH=. python benchmarks/bench_balanced_kmeans.py --items 1000000 --codes 1024 --threads 2   # the goal
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

WORKER = """
import json, sys, time, torch
items, dim, codes, levels, sweeps, block, per_centroid, threads = (int(value) for value in sys.argv[1:9])
if threads > 0:
    torch.set_num_threads(threads)
from tokenization_semantic_id import quantization
from tokenization_semantic_id.quantization import ResidualKMeansConfig, fit_residual_kmeans
generator = torch.Generator().manual_seed(0)
centres = torch.randn(4096, dim, generator=generator) * 2
embeddings = centres[torch.randint(4096, (items,), generator=generator)] + torch.randn(items, dim, generator=generator)
config = ResidualKMeansConfig(num_levels=levels, codebook_size=codes, max_iterations=sweeps, seed=0, device="cpu",
                              cluster_block_size=block, **({} if per_centroid < 0 else
                              {"max_points_per_centroid": per_centroid or None}))
start = time.perf_counter()
fit = fit_residual_kmeans(embeddings, config, progress=False)
seconds = time.perf_counter() - start
sizes = [torch.bincount(fit.codes[:, level], minlength=codes) for level in range(levels)]
unique = torch.unique(fit.codes, dim=0).shape[0]
print(json.dumps({
    "seconds": seconds,
    "sweeps": [level.iterations for level in fit.levels],
    "sample_sweeps": [getattr(level, "sample_iterations", 0) for level in fit.levels],
    "residual_norm": fit.residual_norm[-1],
    "largest_smallest": [[int(size.max()), int(size.min())] for size in sizes],
    "items_sharing_a_code": 1 - unique / items,
    "codes_sha": hash(tuple(fit.codes[:1000].flatten().tolist())),
    "module": quantization.__file__,
}))
"""


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", nargs="+", default=["."], help="Checkouts to compare; the first is the reference.")
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--codes", type=int, default=1024, help="Codes per level K.")
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--max_iterations", type=int, default=30, help="Sweeps per level at most.")
    parser.add_argument("--block_size", type=int, default=256, help="ResidualKMeansConfig.cluster_block_size.")
    parser.add_argument(
        "--max_points_per_centroid",
        type=int,
        nargs="+",
        default=[-1],
        help="ResidualKMeansConfig.max_points_per_centroid, one run per value (0: None, no sampling; -1: the default).",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0: torch's default).")
    args = parser.parse_args(argv)
    rows = []
    for tree, per_centroid in [(tree, value) for tree in args.trees for value in args.max_points_per_centroid]:
        tree_path = Path(tree).resolve()
        env = dict(os.environ, PYTHONPATH=str(tree_path))
        worker_args = [
            args.items,
            args.dim,
            args.codes,
            args.levels,
            args.max_iterations,
            args.block_size,
            per_centroid,
        ]
        command = [sys.executable, "-c", WORKER] + [str(value) for value in worker_args + [args.threads]]
        # cwd=tree: `python -c` puts the working directory first on sys.path, before PYTHONPATH.
        done = subprocess.run(command, env=env, cwd=tree_path, capture_output=True, text=True, check=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        if not Path(result["module"]).resolve().is_relative_to(tree_path):
            raise RuntimeError(f"{tree}: the run imported {result['module']}, not this tree's code.")
        rows.append({"tree": tree, "max_points_per_centroid": per_centroid, **result})
        print(
            f"{tree} (max_points_per_centroid {per_centroid}): {result['seconds']:.1f} s, sweeps {result['sweeps']} "
            f"(on a sample {result['sample_sweeps']}), largest/smallest {result['largest_smallest']}, residual norm "
            f"{result['residual_norm']:.4f}, items sharing a code {100 * result['items_sharing_a_code']:.2f}%, "
            f"x{rows[0]['seconds'] / result['seconds']:.2f} vs {rows[0]['tree']}, same codes as the first tree: "
            f"{result['codes_sha'] == rows[0]['codes_sha']}",
            flush=True,
        )
    return {"arguments": vars(args), "rows": rows}


if __name__ == "__main__":
    main()
