"""A log bigger than memory, end to end: write it, stream its training windows through the collator, and measure
windows/s and the peak resident memory of each stage.

Stage 1 writes ``--interactions`` interactions of ``--users`` users over ``--items`` items
(`trainers.data.synthetic_sequences`: Zipf popularity, log-normal user lengths) to Arrow files under ``--cache_dir``.
Stage 2, in a fresh process, memory-maps them, builds a tokenizer of random distinct codes for the catalogue,
streams every training window (`stream_training_windows`, leave-one-out cut on the fly) and pads them into batches
of ``--batch_size`` with the Trainer's `TokenizedSessionCollator`. Each stage reports its wall time and its peak
resident set size (``ru_maxrss``)::

    PYTHONPATH=. python benchmarks/bench_out_of_core.py --users 1000000 --items 1000000 --interactions 20000000 \\
        --cache_dir /tmp/onerec-log
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

STAGE = r"""
import json, resource, sys, time
import numpy as np, torch
torch.set_num_threads(1)
stage, users, items, interactions, cache_dir, batch_size, max_windows = sys.argv[1:8]
users, items, interactions, batch_size, max_windows = map(int, (users, items, interactions, batch_size, max_windows))
from trainers.data import stream_training_windows, synthetic_sequences
start = time.perf_counter()
log = synthetic_sequences(users, items, interactions, seed=0, cache_dir=cache_dir)
result = {"stage": stage, "users": len(log)}
if stage == "write":
    result["interactions"] = int(sum(len(chunk) for chunk in log.with_format("arrow").iter(100_000)
                                     for chunk in [chunk.column("item_ids").combine_chunks().flatten()]))
else:
    from benchmarks.common import NUM_SPECIAL_TOKENS, random_item_tokens
    from tokenization_semantic_id import SemanticIDTokenizer
    from trainers.pretraining import TokenizedSessionCollator
    tokens = random_item_tokens(items, 3, 1024, 0)
    tokenizer = SemanticIDTokenizer(codebook_sizes=[1024] * 3, num_semantic_levels=3,
                                    item_ids=[str(i) for i in range(items)],
                                    item_codes=tokens - NUM_SPECIAL_TOKENS - torch.arange(3) * 1024, codebooks=None)
    collate = TokenizedSessionCollator(tokenizer.pad_token_id)
    start = time.perf_counter()
    windows, batch = 0, []
    for row in stream_training_windows(log, tokenizer, max_history_items=50, session_length=5):
        batch.append(row)
        if len(batch) == batch_size:
            collate(batch)
            windows += len(batch)
            batch = []
            if max_windows and windows >= max_windows:
                break
    result |= {"windows": windows, "windows_per_s": round(windows / (time.perf_counter() - start))}
result |= {"seconds": round(time.perf_counter() - start, 1),
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
print(json.dumps(result))
"""


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--interactions", type=int, default=20_000_000)
    parser.add_argument("--cache_dir", required=True, help="Where the Arrow files go (outside the repository).")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--max_windows", type=int, default=0, help="Stop streaming after this many (0: all).")
    args = parser.parse_args(argv)
    results = []
    for stage in ("write", "stream"):
        values = [args.users, args.items, args.interactions, args.cache_dir, args.batch_size, args.max_windows]
        command = [sys.executable, "-c", STAGE, stage] + [str(value) for value in values]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    return {"arguments": vars(args), "results": results}


if __name__ == "__main__":
    main()
