"""The constrained decoding step of our native session beam search beside STATIC's, on the same trie and log-probs.

For each catalogue size, random distinct semantic IDs of ``--levels`` x ``--codes`` codes are indexed twice: by our
``SemanticIDTrie`` (offline, once) and by STATIC's ``build_static_index`` (loaded from ``--static_path``, default the
unmodified copy in ``../shared/anchors``; its code is not part of this project). Then ``--batch`` users x ``--beams``
beams sit at random level-2 prefixes of real items and both take the level-3 step on the same log-probabilities:

* STATIC: ``generate_and_apply_logprobs_mask`` (CSR burst read of each beam's children, ``-inf`` padding);
* (a) ours, the constraint alone: ``fixed_children`` + gather + mask, what ``session_beam_search`` runs per step;
* (b) ours with each user's history excluded (``--history`` items, whole subtrees pruned when all their items are
  excluded: ``excluded_below`` against ``leaf_count``);
* (c) ours with the history excluded and no repeats within the session (the 5th item of a session: 4 earlier
  items per beam). STATIC has neither (b) nor (c).

Both produce ``[rows, K]`` candidate log-probs (``K`` = the level's largest branch); the script checks that (a) and
STATIC give the same candidates. Median of ``--repeats`` timed calls after a warm-up::

    PYTHONPATH=. python benchmarks/bench_static_step.py --items 100000 1000000 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import NUM_SPECIAL_TOKENS, add_catalogue_arguments, code_tokens, random_item_codes, setup_device
from tokenization_semantic_id.trie import SemanticIDTrie, excluded_below, fixed_children

DEFAULT_STATIC = Path(__file__).resolve().parents[2] / "shared" / "anchors" / "static-constraint-decoding"


def timed(function, repeats: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--static_path", default=str(DEFAULT_STATIC), help="Checkout of static-constraint-decoding.")
    add_catalogue_arguments(parser)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--beams", type=int, default=128)
    parser.add_argument("--history", type=int, default=50, help="Excluded history items per user in (b), (c).")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default).")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    device = setup_device("cpu", args.threads or None)
    sys.path.insert(0, str(Path(args.static_path).resolve()))
    from static_decoding.csr_utils import build_static_index
    from static_decoding.decoding_pt import generate_and_apply_logprobs_mask

    rows = args.batch * args.beams
    results = []
    for num_items in args.items:
        codes = random_item_codes(num_items, args.levels, args.codes, args.seed)
        item_tokens, codes = code_tokens(codes, args.codes), codes.numpy()  # our token layout, STATIC's codes
        order = np.lexsort(codes.T[::-1])  # STATIC wants its codes sorted; the items keep their rows here
        item_tokens, codes = item_tokens[torch.from_numpy(order)], codes[order]
        start = time.perf_counter()
        trie = SemanticIDTrie(item_tokens, vocab_size=NUM_SPECIAL_TOKENS + args.levels * args.codes)
        ours_build = time.perf_counter() - start
        start = time.perf_counter()
        packed_csr, indptr, max_branches, _, _, dense_states = build_static_index(
            codes, vocab_size=args.codes, dense_lookup_layers=2
        )
        static_build = time.perf_counter() - start
        packed_csr, indptr = torch.from_numpy(packed_csr).long(), torch.from_numpy(indptr).long()
        level = 2  # the level-3 step: beams at a 2-code prefix choose the third code
        limit = int(max_branches[level])
        assert limit == trie.level_max_children[level], (limit, trie.level_max_children)

        generator = np.random.default_rng(args.seed + 1)
        beam_items = generator.integers(0, num_items, size=rows)  # each beam sits on a real item's prefix
        nodes = trie.item_path[torch.from_numpy(beam_items), level]
        states = torch.from_numpy(dense_states[codes[beam_items, 0], codes[beam_items, 1]].astype(np.int64))
        log_probs = torch.randn(rows, args.codes, generator=torch.Generator().manual_seed(args.seed)).log_softmax(-1)
        lo = NUM_SPECIAL_TOKENS + level * args.codes
        history = torch.from_numpy(generator.integers(0, num_items, size=(args.batch, args.history)))
        history_paths = trie.item_path[history][..., level : level + 2]  # [batch, H, 2]
        history_paths = history_paths.repeat_interleave(args.beams, 0)  # [rows, H, 2]
        earlier = torch.from_numpy(generator.integers(0, num_items, size=(rows, 4)))
        earlier_paths = trie.item_path[earlier][..., level : level + 2]  # [rows, 4, 2]
        both_paths = torch.cat([history_paths, earlier_paths], dim=1)

        def static_step():
            return generate_and_apply_logprobs_mask(log_probs, states, packed_csr, indptr, limit, args.codes, device)

        def ours(paths=None):
            children = fixed_children(trie.indptr, trie.edge_token, nodes, limit)
            keep = children.valid
            if paths is not None:
                keep = keep & (excluded_below(children, nodes, paths) < trie.leaf_count[children.nodes.clamp(min=0)])
            candidates = log_probs.gather(1, (children.tokens - lo).clamp(0, args.codes - 1))
            return torch.where(keep, candidates, torch.full_like(candidates, -float("inf"))), children

        static_candidates, static_tokens, _ = static_step()
        our_candidates, children = ours()
        same = torch.equal(torch.isfinite(static_candidates), children.valid) and torch.equal(
            our_candidates[children.valid], static_candidates[torch.isfinite(static_candidates)]
        )
        same = same and torch.equal((children.tokens - lo)[children.valid], static_tokens[children.valid].long())
        timings = {
            "static": timed(static_step, args.repeats),
            "ours": timed(ours, args.repeats),
            "ours_history": timed(lambda: ours(history_paths), args.repeats),
            "ours_history_no_repeat": timed(lambda: ours(both_paths), args.repeats),
        }
        row = {
            "items": num_items,
            "K": limit,
            "rows": rows,
            "same_candidates": bool(same),
            "build_s": {"ours": round(ours_build, 2), "static": round(static_build, 2)},
            "ms": {name: round(value, 4) for name, value in timings.items()},
            "ratio_ours_to_static": round(timings["ours"] / timings["static"], 2),
        }
        results.append(row)
        print(json.dumps(row), flush=True)
    print("| items | K | STATIC (ms) | (a) ours (ms) | (a) / STATIC | (b) + history (ms) | (c) + no repeats (ms) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for row in results:
        ms = row["ms"]
        print(
            f"| {row['items']:,} | {row['K']} | {ms['static']:.3f} | {ms['ours']:.3f} | {row['ratio_ours_to_static']:.2f} "
            f"| {ms['ours_history']:.3f} | {ms['ours_history_no_repeat']:.3f} |"
        )
    return {"arguments": vars(args), "results": results}


if __name__ == "__main__":
    main()
