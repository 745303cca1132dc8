"""Ranking speed of two checkouts side by side: the same trained model, users and beam, trees alternated.

For a refactor of the evaluation path (``GenerativeRecommender.rank`` -> ``recommend()`` -> ``session_beam_search``):
each round runs every tree in its own process (``PYTHONPATH=<tree>``), one torch thread, after a warm-up, and prints
users/s, the ratio to the first tree, and whether the top-10 lists are identical::

    git worktree add ../before 6570db5
    PYTHONPATH=. python benchmarks/bench_rank_trees.py --trees ../before . --model_dir RUNS/sid/concat/final \\
        --users 400 --rounds 2
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
torch.set_num_threads(1)
import modeling_onerec
from modeling_onerec import OneRecForConditionalGeneration
from tokenization_semantic_id import SemanticIDTokenizer
from trainers.data import build_session_samples, leave_one_out_split, load_bundled
from trainers.evaluation.generative import GenerativeRecommender
model_dir, users, beams = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
samples = build_session_samples(leave_one_out_split(load_bundled("beauty")["sequences"]), max_history=50,
                                session_length=1)["validation"].shuffle(seed=0).select(range(users))
model = OneRecForConditionalGeneration.from_pretrained(model_dir).eval()
ranker = GenerativeRecommender(model, SemanticIDTokenizer.from_pretrained(model_dir), num_beams=beams)
histories = list(samples["history"])
ranker.rank(histories[:32], 10, True)  # warm-up
start = time.perf_counter()
ranked = ranker.rank(histories, 10, True)
print(json.dumps({"users_per_s": len(histories) / (time.perf_counter() - start), "ranked": ranked,
                  "module": modeling_onerec.__file__}))
"""


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", nargs="+", required=True, help="Checkouts to compare; the first is the reference.")
    parser.add_argument("--model_dir", required=True, help="A saved OneRec model with its tokenizer (Beauty).")
    parser.add_argument("--users", type=int, default=400, help="Random Beauty validation users (seed 0).")
    parser.add_argument("--beams", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    rows = []
    for round_index in range(1, args.rounds + 1):
        results = []
        for tree in args.trees:
            tree_path = Path(tree).resolve()
            env = {**os.environ, "PYTHONPATH": str(tree_path), "OMP_NUM_THREADS": "1"}
            output = subprocess.run(
                [sys.executable, "-c", WORKER, str(Path(args.model_dir).resolve()), str(args.users), str(args.beams)],
                env=env,
                cwd=tree_path,  # `python -c` puts the working directory first on sys.path, before PYTHONPATH
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            results.append(json.loads(output.strip().splitlines()[-1]))
            if not Path(results[-1]["module"]).resolve().is_relative_to(tree_path):
                raise RuntimeError(f"{tree}: the run imported {results[-1]['module']}, not this tree's code.")
        reference = results[0]
        for tree, result in zip(args.trees, results):
            rows.append(
                {
                    "round": round_index,
                    "tree": tree,
                    "users_per_s": round(result["users_per_s"], 1),
                    "ratio": round(result["users_per_s"] / reference["users_per_s"], 3),
                    "identical_top10": result["ranked"] == reference["ranked"],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return {"rows": rows}


if __name__ == "__main__":
    main()
