"""Serving cost of the recommendation pipeline: users/s and p50 / p99 latency per request.

One request = one user's history in, their best session of ``--session_length`` items out, through
``pipeline("generative-recommendation")`` (which runs ``model.recommend``: the encoder once per user, the decoder
stepped with a KV cache shared by the beams, the trie constraint with the history excluded and no repeats). The
model has the ``--preset`` shapes with random weights (speed does not depend on training) over a synthetic catalogue
of ``--items`` items with ``--levels`` x ``--codes`` random distinct codes; histories are ``--history`` random items.
For every catalogue size, beam and dtype: a warm-up request, then ``--requests`` timed ones::

    PYTHONPATH=. python benchmarks/bench_serving.py --items 100000 1000000 --beams 32 128 --threads 2
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from transformers import pipeline

from benchmarks.common import add_catalogue_arguments, random_item_codes, setup_device
from modeling_onerec import RECOMMENDATION_TASK, OneRecConfig, OneRecForConditionalGeneration
from tokenization_semantic_id import SemanticIDTokenizer


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_catalogue_arguments(parser)
    parser.add_argument("--beams", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--preset", default="onerec-0.1b")
    parser.add_argument("--session_length", type=int, default=5)
    parser.add_argument("--history", type=int, default=50, help="Items per request's history.")
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default).")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    setup_device("cpu", args.threads or None)
    rows = []
    for num_items in args.items:
        tokenizer = SemanticIDTokenizer(
            codebook_sizes=[args.codes] * args.levels,
            num_semantic_levels=args.levels,
            item_ids=[str(item) for item in range(num_items)],
            item_codes=random_item_codes(num_items, args.levels, args.codes, args.seed),
            codebooks=None,
            max_history_items=args.history,
        )
        tokenizer.trie  # built once, offline, before the first request
        torch.manual_seed(args.seed)
        config = OneRecConfig.from_tokenizer(tokenizer, preset=args.preset, session_length=args.session_length)
        model = OneRecForConditionalGeneration(config).eval()
        generator = np.random.default_rng(args.seed)
        histories = [
            [str(item) for item in generator.integers(0, num_items, args.history)] for _ in range(args.requests + 1)
        ]
        for dtype in args.dtypes:
            recommender = pipeline(
                RECOMMENDATION_TASK, model=model.to(getattr(torch, dtype)), tokenizer=tokenizer, device="cpu"
            )
            for beams in args.beams:
                recommender(histories[0], num_beams=beams)  # warm-up
                latencies = []
                for history in histories[1:]:
                    start = time.perf_counter()
                    sessions = recommender(history, num_beams=beams)
                    latencies.append(time.perf_counter() - start)
                    assert len(sessions) == 1 and len(sessions[0]["items"]) == args.session_length
                latencies_ms = 1e3 * np.array(latencies)
                row = {
                    "items": num_items,
                    "dtype": dtype,
                    "beams": beams,
                    "users_per_s": round(len(latencies) / sum(latencies), 2),
                    "p50_ms": round(float(np.percentile(latencies_ms, 50)), 1),
                    "p99_ms": round(float(np.percentile(latencies_ms, 99)), 1),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    counts = config.parameter_counts()
    print(
        f"\n{args.preset}: {counts['total'] / 1e6:.1f}M parameters ({counts['activated'] / 1e6:.1f}M activated), "
        f"m = {args.session_length}, {args.history}-item histories, {args.requests} requests each, "
        f"{torch.get_num_threads()} threads\n"
    )
    print("| items | dtype | beams | users/s | p50 (ms) | p99 (ms) |\n|---:|---|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['items']:,} | {row['dtype']} | {row['beams']} | {row['users_per_s']} | {row['p50_ms']} "
            f"| {row['p99_ms']} |"
        )
    return {"arguments": vars(args), "rows": rows}


if __name__ == "__main__":
    main()
