"""Most-popular and successor baselines under the exact TIGER / S3-Rec protocol.

Leave-one-out split, full ranking over the whole catalogue, Recall@5/10 and NDCG@5/10 on the test split,
with and without excluding the user's history. The successor hyper-parameters are chosen on the validation
split (separately for each exclusion setting); the test split is scored once with the chosen ones. Both
models go through `trainers.evaluation.evaluate_recommender`, the code path every model of the project uses.

    python examples/evaluate_baselines.py --dataset beauty --output_dir outputs/baselines/beauty
    python examples/evaluate_baselines.py --dataset scientific --output_dir outputs/baselines/scientific
    python examples/evaluate_baselines.py --data_path my_log.txt --output_dir outputs/baselines/mine  # S3-Rec lines

Writes `metrics.json` (test metrics, chosen hyper-parameters, the validation grid, timings) and the top-10
lists `top10_<model>_<exclude|keep>_history.json` (`{user_id: [item_id, ...]}`, original ids) per model and
setting, and prints a markdown table.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, List, Mapping

from transformers import HfArgumentParser

from trainers.baselines import DEFAULT_SUCCESSOR_GRID, MostPopularRecommender, SuccessorRecommender, tune_successor
from trainers.data import build_session_samples, describe, leave_one_out_split
from trainers.data.arguments import DatasetArguments, HistoryArguments, TopKArguments
from trainers.evaluation import PUBLISHED_BEAUTY, evaluate_recommender, metrics_table, write_topk_json

logger = logging.getLogger("evaluate_baselines")


@dataclass
class BaselineArguments(TopKArguments, HistoryArguments, DatasetArguments):
    output_dir: str = field(default="outputs/baselines", metadata={"help": "Where metrics.json and top-10 go."})
    tune_metric: str = field(default="ndcg@10", metadata={"help": "Validation metric choosing the successor grid."})
    windows: List[int] = field(default_factory=lambda: list(DEFAULT_SUCCESSOR_GRID["window"]))
    decays: List[float] = field(default_factory=lambda: list(DEFAULT_SUCCESSOR_GRID["decay"]))
    max_gaps: List[int] = field(default_factory=lambda: list(DEFAULT_SUCCESSOR_GRID["max_gap"]))
    batch_size: int = field(default=2048, metadata={"help": "Histories per rank() call."})
    progress: bool = field(default=False, metadata={"help": "tqdm bars over test batches."})

    minimum_values: ClassVar[Mapping[str, int]] = {"batch_size": 1}


def format_table(rows: List[dict], ks: List[int], with_reference: bool) -> str:
    cells = [
        ((row["model"], "excluded" if row["exclude_history"] else "kept", row["params_text"]), row["test"])
        for row in rows
    ]
    return metrics_table(
        cells,
        ks,
        ("model", "history", "hyper-parameters (chosen on validation)"),
        references=PUBLISHED_BEAUTY if with_reference else None,
    )


def main(argv=None) -> dict:
    (args,) = HfArgumentParser(BaselineArguments).parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    output_dir = Path(args.output_dir)
    label = Path(args.data_path).stem if args.data_path else args.dataset
    started = time.perf_counter()

    data = args.load()
    output_dir.mkdir(parents=True, exist_ok=True)
    splits = leave_one_out_split(data["sequences"])
    samples = build_session_samples(splits, max_history=args.max_history, session_length=1)
    catalogue = data["items"].with_format("arrow")[:].column("item_id").to_pylist()
    summary = describe(data)
    logger.info("%s: %s", label, summary)
    train = splits["train"]  # the only rows any baseline is fit on
    grid = {"window": args.windows, "decay": args.decays, "max_gap": args.max_gaps}
    test_user_ids = samples["test"].with_format("arrow")[:].column("user_id").to_pylist()

    def score_test_split(recommender, exclude_history: bool):
        """Test metrics and ranked lists of a fitted baseline (every baseline scored by the same call)."""
        return evaluate_recommender(
            recommender,
            samples["test"],
            args.ks,
            exclude_history=exclude_history,
            batch_size=args.batch_size,
            progress=args.progress,
        )

    rows = []
    fit_start = time.perf_counter()
    popularity = MostPopularRecommender(train, catalogue=catalogue)
    popularity_fit_seconds = time.perf_counter() - fit_start
    for exclude_history in (True, False):
        setting = "exclude_history" if exclude_history else "keep_history"
        start = time.perf_counter()
        metrics, ranked = score_test_split(popularity, exclude_history)
        rows.append(
            {
                "model": "most-popular",
                "exclude_history": exclude_history,
                "params": {},
                "params_text": "-",
                "test": metrics,
                "fit_seconds": popularity_fit_seconds,
                "test_seconds": time.perf_counter() - start,
            }
        )
        write_topk_json(
            output_dir / f"top{args.top_k_json}_most_popular_{setting}.json", test_user_ids, ranked, k=args.top_k_json
        )

        start = time.perf_counter()
        best, table = tune_successor(
            train,
            samples["validation"],
            exclude_history=exclude_history,
            catalogue=catalogue,
            grid=grid,
            metric=args.tune_metric,
            ks=args.ks,
            batch_size=args.batch_size,
        )
        tune_seconds = time.perf_counter() - start
        best_row = next(row for row in table if all(row[name] == value for name, value in best.items()))
        start = time.perf_counter()
        successor = SuccessorRecommender(train, catalogue=catalogue, **best)
        metrics, ranked = score_test_split(successor, exclude_history)
        params_text = f"window={best['window']}, decay={best['decay']:g}, max_gap={best['max_gap']}" + (
            ", normalized" if best["normalize"] else ""
        )
        rows.append(
            {
                "model": "successor",
                "exclude_history": exclude_history,
                "params": best,
                "params_text": params_text,
                "test": metrics,
                "validation": {name: best_row[name] for name in best_row if "@" in name},
                "tune_seconds": tune_seconds,
                "grid_size": len(table),
                "grid": table,
                "test_seconds": time.perf_counter() - start,
            }
        )
        write_topk_json(
            output_dir / f"top{args.top_k_json}_successor_{setting}.json", test_user_ids, ranked, k=args.top_k_json
        )
        logger.info(
            "successor (%s): chosen %s, validation %s=%.4f, test %s",
            setting,
            best,
            args.tune_metric,
            best_row[args.tune_metric],
            metrics,
        )

    total_seconds = time.perf_counter() - started
    report = {
        "dataset": label,
        "summary": summary,
        "protocol": {
            "split": "leave-one-out (train = all but last 2, validation target = second last, test target = last)",
            "ranking": f"full ranking over all {len(catalogue)} catalogue items",
            "ks": sorted(args.ks),
            "max_history": args.max_history,
            "tuned_on": "validation",
            "tune_metric": args.tune_metric,
            "fit_on": "train split only",
        },
        "results": rows,
        "total_seconds": total_seconds,
    }
    (output_dir / "metrics.json").write_text(json.dumps(report, indent=2, default=str))
    table = format_table(rows, args.ks, with_reference=label == "beauty" and args.data_path is None)
    print(
        f"\n{label}: {summary['users']} users, {summary['items']} items, {summary['interactions']} interactions; "
        f"test split, full ranking; {total_seconds:.0f} s in all"
    )
    print(table)
    print(f"metrics -> {output_dir / 'metrics.json'}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
