"""How wide must the ranking beam be? Full-catalogue ranking of validation users at several beam widths.

OneRec ranks the catalogue by a trie-constrained beam search over the first item (``GenerativeRecommender``); its
default width is the first level's codebook size (256 on Beauty), which makes ranking every test user slow on a
CPU. This script ranks the same seeded random *validation* users (never test) at each ``--beams`` width with a
trained model and reports users/s, Recall/NDCG@5/10 and how many top-10 lists equal the widest beam's, so a
narrower beam is chosen on validation evidence. ``--scorings false true`` repeats the widths for each code scoring
of the search (``renormalize_logits``: the level softmax, or renormalised over the valid codes), side by side.

Run from the repository root::

    PYTHONPATH=. python benchmarks/bench_ranking_beams.py --model_dir outputs/beauty/onerec/final --threads 1
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Optional, Sequence

from benchmarks.common import add_run_arguments, environment, json_arguments, output_path, setup_device, write_json
from modeling_onerec import OneRecForConditionalGeneration
from tokenization_semantic_id import SemanticIDTokenizer
from trainers.data import build_session_samples, leave_one_out_split, load_named_dataset
from trainers.evaluation import ranking_metrics, sample_users
from trainers.evaluation.generative import GenerativeRecommender


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", required=True, help="A trained OneRec model with its tokenizer.")
    parser.add_argument("--dataset", default="beauty", help="A bundled dataset name (beauty, scientific, ml-100k).")
    parser.add_argument("--users", type=int, default=1000, help="Seeded random validation users.")
    parser.add_argument("--beams", type=int, nargs="+", default=[256, 128, 64, 32], help="Widths, widest first.")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument(
        "--scorings",
        nargs="+",
        choices=["false", "true"],
        default=["false"],
        help="renormalize_logits values to measure (false: the level softmax; true: renormalised over the valid codes).",
    )
    parser.add_argument("--exclude_history", action=argparse.BooleanOptionalAction, default=True)
    add_run_arguments(parser, output_help="JSON output (default outputs/benchmarks/ranking_beams_<device>.json).")
    args = parser.parse_args(argv)
    if args.users < 1 or min(args.beams) < 10:
        parser.error("--users must be >= 1 and every --beams width >= 10 (the top-10 is scored)")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    device = setup_device("cpu", args.threads)
    model = OneRecForConditionalGeneration.from_pretrained(args.model_dir).eval()
    tokenizer = SemanticIDTokenizer.from_pretrained(args.model_dir)
    splits = leave_one_out_split(load_named_dataset(args.dataset)["sequences"])
    validation = build_session_samples(splits, max_history=model.config.max_history_items, session_length=1)
    users = sample_users(validation["validation"], args.users, seed=args.seed)
    histories, targets = list(users["history"]), [target[0] for target in users["target"]]
    rows = []
    for scoring in args.scorings:
        widest = None
        for beams in sorted(args.beams, reverse=True):
            recommender = GenerativeRecommender(
                model, tokenizer, num_beams=beams, batch_size=args.batch_size, renormalize_logits=scoring == "true"
            )
            start = time.perf_counter()
            ranked = recommender.rank(histories, 10, exclude_history=args.exclude_history)
            seconds = time.perf_counter() - start
            widest = ranked if widest is None else widest
            row = {
                "renormalize_logits": scoring == "true",
                "beams": beams,
                "users_per_s": round(len(histories) / seconds, 2),
                "same_top10_as_widest": sum(a == b for a, b in zip(ranked, widest)),
                **ranking_metrics(ranked, targets, ks=(5, 10)),
            }
            rows.append(row)
            print(row, flush=True)
    print(
        f"\n{len(histories)} validation users (seed {args.seed}), history "
        f"{'excluded' if args.exclude_history else 'allowed'}\n| renormalize_logits | beams | users/s | Recall@5 | "
        "NDCG@5 | Recall@10 | NDCG@10 | top-10 lists equal to the widest beam's |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    for row in rows:
        print(
            f"| {str(row['renormalize_logits']).lower()} | {row['beams']} | {row['users_per_s']:.1f} | "
            f"{row['recall@5']:.4f} | {row['ndcg@5']:.4f} | {row['recall@10']:.4f} | {row['ndcg@10']:.4f} | "
            f"{row['same_top10_as_widest']} / {len(histories)} |"
        )
    path = output_path(args.output, "ranking_beams", device)
    write_json(path, {"environment": environment(device), "arguments": json_arguments(args), "rows": rows})
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
