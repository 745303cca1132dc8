"""Stage 3 of the OneRec pipeline: score trained models and baselines on the *same* test users, in one table.

Leave-one-out test split, full ranking over the whole catalogue, Recall@5/10 and NDCG@5/10, every model through
`trainers.evaluation.evaluate_recommender`; history items excluded and allowed, both reported. Beam search is slow
on a CPU, so `--test_users N` scores a seeded random subset (the same users for every row; never the first N,
which are not representative). For generative models it also scores sessions generated from each user's training
history against the user's two held-out items (hit rate, consumed items, coverage, intra-session diversity).

    # a OneRec and a TIGER-style checkpoint (examples/pretrain.py writes <output_dir>/final), the baselines, and
    # SASRec's top-10 file, on 1,000 random test users:
    python examples/evaluate.py --dataset scientific --test_users 1000 --output_dir outputs/scientific/evaluation \\
        --model_dirs OneRec=outputs/scientific/onerec/final TIGER-style=outputs/scientific/tiger/final \\
        --topk_files "SASRec=outputs/sasrec/scientific/topk_test.json"

Writes `metrics.json` and per model and setting `topk_<model>_<setting>.json` (`{user_id: [item_id, ...]}`).

Ranking every user is the slow part; it splits over processes (each ranks its share, the lists are gathered in the
users' order, the metrics are those of one process; `docs/distributed.md`):

    torchrun --nproc_per_node 2 examples/evaluate.py --dataset beauty --model_dirs OneRec=outputs/run/final ...
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from transformers import HfArgumentParser

from modeling_onerec import OneRecForConditionalGeneration
from tokenization_semantic_id import SemanticIDTokenizer
from trainers.baselines import MostPopularRecommender, SuccessorRecommender, tune_successor
from trainers.data import build_session_samples, leave_one_out_split, named_paths
from trainers.data.arguments import DatasetArguments, GenerativeEvaluationArguments, HistoryArguments, redeclare
from trainers.distributed import distributed_state, release_processes
from trainers.evaluation import (
    PUBLISHED_BEAUTY,
    code_level_mass,
    code_prefix_hit_rates,
    evaluate_recommender,
    held_out_sessions,
    markdown_table,
    metrics_by_history_transition,
    metrics_by_target_popularity,
    metrics_table,
    ranking_metrics,
    read_topk_json,
    sample_users,
    top_item_follows_history,
    training_followers,
    write_topk_json,
)
from trainers.evaluation.generative import evaluate_generative_model
from trainers.evaluation.plots import plot_hit_ranks, plot_metric_by_group

logger = logging.getLogger("evaluate")
_SETTINGS = (("exclude_history", True, "excluded"), ("all_items", False, "allowed"))


@dataclass
class EvaluateArguments(GenerativeEvaluationArguments, HistoryArguments, DatasetArguments):
    # The whole history by default (the shared default is 50): each model cuts its own window.
    max_history: Optional[int] = redeclare(
        HistoryArguments,
        "max_history",
        default=None,
        help="Newest history items of each test user kept (None: all). Each model reads its own window (OneRec its "
        "config.max_history_items); excluding the history from a ranking excludes every kept item.",
    )
    model_dirs: List[str] = field(
        default_factory=list,
        metadata={
            "help": "NAME=FOLDER of a saved OneRec / TIGER-style model with its tokenizer (examples/pretrain.py writes "
            "<output_dir>/final); repeatable."
        },
    )
    topk_files: List[str] = field(
        default_factory=list,
        metadata={
            "help": "NAME=PATH of a {user_id: [item_id, ...]} JSON (e.g. SASRec's topk_test.json), rescored on the same "
            "users; its history setting is whatever produced it. Repeatable."
        },
    )
    baselines: bool = field(
        default=True,
        metadata={
            "help": "Also score most-popular and the item-to-item successor (tuned on validation) on the same users."
        },
    )
    history_settings: List[str] = field(
        default_factory=lambda: ["exclude_history", "all_items"],
        metadata={
            "help": "Which settings to rank: exclude_history (the user's own items never recommended) and/or all_items.",
            "choices": ["exclude_history", "all_items"],
        },
    )
    popularity_edges: List[int] = field(
        default_factory=lambda: [1, 5, 20, 100],
        metadata={
            "help": "Also score every model's lists per group of users by how often their target occurs in training: "
            "[0, e1), [e1, e2), ..., >= e_last (head against tail; a table and by_target_popularity.png). Strictly "
            "increasing integers >= 1."
        },
    )
    code_prefix_tokenizer_dir: Optional[str] = field(
        default=None,
        metadata={
            "help": "A semantic-ID tokenizer folder: also print, per code level, the share of users whose top 10 holds "
            "an item sharing the target's first codes (every model's lists against the same codes)."
        },
    )
    code_level_mass: bool = field(
        default=False,
        metadata={
            "help": "Also print, for every --model_dirs model and code level, how much of its softmax over the level "
            "falls on codes the trie allows below the held-out item's prefix, and the item's log-probability under "
            "the level softmax and renormalised (teacher-forced on the same users; what decides which code scoring "
            "ranks better)."
        },
    )
    output_dir: str = field(default="outputs/evaluation", metadata={"help": "Where metrics and top-k files go."})


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower()


def main(argv=None) -> dict:
    (args,) = HfArgumentParser(EvaluateArguments).parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    models = named_paths(args.model_dirs, "--model_dirs")
    files = named_paths(args.topk_files, "--topk_files")
    if not models and not files and not args.baselines:
        raise ValueError("Nothing to evaluate: pass --model_dirs, --topk_files or --baselines true.")
    slugs: dict = {}
    for name in [name for name, _ in models]:
        if _slug(name) in slugs:
            raise ValueError(
                f"--model_dirs names {slugs[_slug(name)]!r} and {name!r} share the file name topk_{_slug(name)}_*.json "
                "(names are reduced to letters, digits and '_'): rename one so that neither overwrites the other."
            )
        slugs[_slug(name)] = name
    output_dir = Path(args.output_dir)
    label = Path(args.data_path).stem if args.data_path and args.dataset not in ("ml-100k", "recbole") else args.dataset

    data = args.load()
    # Under torchrun every process ranks its share of the users and gets every list back; the main one writes.
    main_process = distributed_state().is_main_process
    if main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    splits = leave_one_out_split(data["sequences"])
    samples = build_session_samples(splits, max_history=args.max_history, session_length=1)
    test = sample_users(samples["test"], args.test_users, seed=args.users_seed)
    user_ids = [str(user) for user in test["user_id"]]
    targets = [target[0] for target in test["target"]]
    session_rows = None
    if args.session_eval_length > 0:
        session_rows = held_out_sessions(
            sample_users(samples["validation"], args.test_users, seed=args.users_seed), test
        )
    rows, sessions, level_mass = [], [], {}
    hit_lists = {}  # model -> its top-10 lists in the first --history_settings setting, for the hit-rank figure

    def add_rows(name: str, results: dict, ranked: dict, detail: str) -> None:
        for key, _, setting in _SETTINGS:
            if key in results:
                rows.append({"model": name, "history": setting, "detail": detail, "test": results[key]})
                if main_process:
                    write_topk_json(output_dir / f"topk_{_slug(name)}_{key}.json", user_ids, ranked[key], k=10)
        first = next((key for key in args.history_settings if key in ranked), None)
        if first is not None:
            hit_lists.setdefault(name, ranked[first])

    for name, folder in models:
        model = OneRecForConditionalGeneration.from_pretrained(folder)
        tokenizer = SemanticIDTokenizer.from_pretrained(folder)
        results, ranked = evaluate_generative_model(
            model,
            tokenizer,
            test,
            num_beams=args.num_beams,
            renormalize_logits=args.renormalize_logits,
            session_rows=session_rows,
            session_length=args.session_eval_length or None,
            history_settings=args.history_settings,
        )
        add_rows(
            name,
            results,
            ranked,
            f"m={model.config.session_length}, beam {results[args.history_settings[0]]['num_beams']}",
        )
        if "session" in results:
            sessions.append({"model": name, **results["session"]})
        if args.code_level_mass:
            level_mass[name] = code_level_mass(model, tokenizer, test)

    if args.baselines:
        catalogue = data["items"].with_format("arrow")[:].column("item_id").to_pylist()
        popularity = MostPopularRecommender(splits["train"], catalogue=catalogue)
        results, ranked = {}, {}
        settings = [setting for setting in _SETTINGS if setting[0] in args.history_settings]
        for key, exclude, _ in settings:
            results[key], ranked[key] = evaluate_recommender(popularity, test, exclude_history=exclude, progress=False)
        add_rows("most-popular", results, ranked, "-")
        for key, exclude, _ in settings:
            start = time.perf_counter()
            best, _ = tune_successor(
                splits["train"], samples["validation"], exclude_history=exclude, catalogue=catalogue
            )
            successor = SuccessorRecommender(splits["train"], catalogue=catalogue, **best)
            metrics, lists = evaluate_recommender(successor, test, exclude_history=exclude, progress=False)
            metrics["seconds"] = round(time.perf_counter() - start, 1)
            add_rows(
                "successor",
                {key: metrics},
                {key: lists},
                f"window={best['window']}, decay={best['decay']:g}, max_gap={best['max_gap']} (validation)",
            )

    for name, path in files:
        topk = read_topk_json(path)
        missing = [user for user in user_ids if user not in topk]
        if missing:
            raise ValueError(
                f"{path} has no list for {len(missing)} of the {len(user_ids)} chosen test users (e.g. "
                f"{missing[:3]}); write it for every test user, or evaluate the same --test_users and "
                "--users_seed."
            )
        rows.append(
            {
                "model": name,
                "history": "from file",
                "detail": Path(path).name,
                "test": ranking_metrics([topk[user] for user in user_ids], targets),
            }
        )
        hit_lists[name] = [topk[user] for user in user_ids]

    report = {
        "dataset": label,
        "test_users": len(test),
        "users_seed": args.users_seed,
        "protocol": "leave-one-out, full ranking over the catalogue",
        "rows": rows,
        "sessions": sessions,
    }
    if level_mass:
        report["code_level_mass"] = level_mass
    if hit_lists:
        report.update(where_hits_are_won(hit_lists, targets, test["history"], splits["train"], args))
    if not main_process:
        return report
    (output_dir / "metrics.json").write_text(json.dumps(report, indent=2, default=str))
    if hit_lists:
        plot_hit_ranks(hit_lists, targets, output_dir / "hit_ranks.png")
        plot_metric_by_group(
            {name: rows["rows"] for name, rows in report["by_target_popularity"].items()},
            "recall@10",
            output_dir / "by_target_popularity.png",
            xlabel="occurrences of the user's held-out item in the training split",
        )
    print(
        f"\n{label}: {len(test)} test users ({'all' if args.test_users is None else f'random, seed {args.users_seed}'}),"
        " full ranking"
    )
    references = PUBLISHED_BEAUTY if label == "beauty" and args.data_path is None else None
    print(
        metrics_table(
            [((row["model"], row["history"], row["detail"]), row["test"]) for row in rows],
            (5, 10),
            ("model", "history items", "setting"),
            references=references,
        )
    )
    if references:
        print("(published rows: the TIGER paper's Table 1 on all 22,363 test users)")
    if sessions:
        print("\nSessions generated from the training history vs the two held-out items (history excluded):")
        header = ["model", "m", "how", "hit rate", "consumed items", "coverage", "intra-session diversity"]
        rows = [
            [
                row["model"],
                row["session_length"],
                row["session_mode"],
                f"{row['session_hit_rate']:.4f}",
                f"{row['session_consumed_items']:.4f}",
                f"{row['coverage']:.4f}",
                f"{row['intra_session_diversity']:.3f}",
            ]
            for row in sessions
        ]
        print(markdown_table(header, rows, align="lrlrrrr"))
    if hit_lists:
        print("\nRecall@10 / NDCG@10 by how often the user's held-out item occurs in the training split:")
        groups = next(iter(report["by_target_popularity"].values()))["rows"]
        header = ["model"] + [f"{row['group']} ({row['users']:,} users)" for row in groups]
        table = [
            [name]
            + [f"{row['recall@10']:.4f} / {row['ndcg@10']:.4f}" if row["users"] else "-" for row in result["rows"]]
            for name, result in report["by_target_popularity"].items()
        ]
        print(markdown_table(header, table, align="l" + "r" * len(groups)))
    if hit_lists:
        print("\nShare of users (4+ history items) whose top item follows their p-th newest history item in training:")
        shares = report["top_item_follows_history"]
        table = [[name] + [f"{share:.4f}" for share in row] for name, row in shares.items()]
        print(markdown_table(["model", "p = 1", "p = 2", "p = 3", "p = 4"], table, align="lrrrr"))
        print(
            "\nRecall@1 / Recall@10 / NDCG@10 by whether the held-out item follows the user's newest history items in training:"
        )
        groups = next(iter(report["by_history_transition"].values()))
        header = ["model"] + [f"{row['group']} ({row['users']:,} users)" for row in groups]
        table = [
            [name]
            + [
                f"{row['recall@1']:.4f} / {row['recall@10']:.4f} / {row['ndcg@10']:.4f}" if row["users"] else "-"
                for row in rows
            ]
            for name, rows in report["by_history_transition"].items()
        ]
        print(markdown_table(header, table, align="l" + "r" * len(groups)))
    if "code_prefix_hit_rates" in report:
        print("\nShare of users whose top 10 holds an item with the held-out item's first l codes:")
        rates = report["code_prefix_hit_rates"]
        levels = len(next(iter(rates.values())))
        header = ["model"] + [f"l = {level + 1}" for level in range(levels)]
        print(
            markdown_table(
                header,
                [[name] + [f"{r:.4f}" for r in shares] for name, shares in rates.items()],
                align="l" + "r" * levels,
            )
        )
    if level_mass:
        print(
            "\nPer code level (teacher-forced on the same users): softmax mass on the codes the trie allows below the"
        )
        print(
            "held-out item's prefix, allowed codes, the item's log-probability under the level softmax / renormalised:"
        )
        header = ["model", "level", "valid mass", "allowed codes", "log p (level)", "log p (renormalised)"]
        table = [
            [name, level + 1]
            + [
                f"{figures[key][level]:.{digits}f}"
                for key, digits in (
                    ("valid_mass", 4),
                    ("allowed_codes", 1),
                    ("log_prob_level", 4),
                    ("log_prob_renormalized", 4),
                )
            ]
            for name, figures in level_mass.items()
            for level in range(len(figures["valid_mass"]))
        ]
        print(markdown_table(header, table, align="lrrrrr"))
    print(f"metrics -> {output_dir / 'metrics.json'}")
    return report


def where_hits_are_won(hit_lists: dict, targets: List[str], histories, train, args: EvaluateArguments) -> dict:
    """Each model's lists per group of target popularity in `train`, how much its top item follows each recent history
    item in `train`, and, with a tokenizer, per semantic-ID level."""
    popularity = MostPopularRecommender(train)  # its training-interaction count per item
    train_counts = dict(zip(popularity.item_ids, popularity.popularity.tolist()))
    followers = training_followers(train["item_ids"])  # once, for every list
    result = {
        "by_target_popularity": {
            name: {
                "edges": list(args.popularity_edges),
                "rows": metrics_by_target_popularity(ranked, targets, train_counts, edges=args.popularity_edges),
            }
            for name, ranked in hit_lists.items()
        },
        "top_item_follows_history": {
            name: top_item_follows_history(ranked, histories, followers) for name, ranked in hit_lists.items()
        },
        "by_history_transition": {
            name: metrics_by_history_transition(ranked, targets, histories, followers)
            for name, ranked in hit_lists.items()
        },
    }
    if args.code_prefix_tokenizer_dir:
        tokenizer = SemanticIDTokenizer.from_pretrained(args.code_prefix_tokenizer_dir)
        item_codes = dict(zip(tokenizer.item_ids, tokenizer.item_codes.tolist()))
        result["code_prefix_hit_rates"] = {
            name: code_prefix_hit_rates(ranked, targets, item_codes) for name, ranked in hit_lists.items()
        }
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
    release_processes()  # under torchrun: leave together (trainers.distributed)
