"""Train the SASRec baseline and score it under the exact TIGER / S3-Rec protocol.

Leave-one-out split, training on each user's sequence without its last two items, early stopping on the
validation target (Recall@10 / NDCG@10 every epoch, best weights restored), then full ranking over the whole
catalogue on the test split: Recall@5/10 and NDCG@5/10 with and without excluding the user's history, through
`trainers.evaluation.evaluate_recommender` (the code path every model of the project uses).

    python examples/train_sasrec.py --dataset beauty --output_dir outputs/sasrec/beauty --max_train_minutes 12
    python examples/train_sasrec.py --dataset scientific --output_dir outputs/sasrec/scientific
    python examples/train_sasrec.py --data_path my_log.txt --output_dir outputs/sasrec/mine   # S3-Rec lines
    python examples/train_sasrec.py --loss bce --dropout 0.5   # the original loss (one sampled negative)

Measured on Amazon Beauty, one CPU thread beside other jobs (seed 0; early stopping at epoch 28, best epoch 18,
17.8 min; batches in the order of transformers' LengthGroupedSampler):

    OMP_WAIT_POLICY=PASSIVE python examples/train_sasrec.py --dataset beauty --output_dir outputs/sasrec/beauty \
        --lr 2e-3 --dropout 0.3 --num_threads 1 --seed 0

    | history  | Recall@5 | NDCG@5 | Recall@10 | NDCG@10 |
    | excluded | 0.0594   | 0.0422 | 0.0809    | 0.0492  |
    | kept     | 0.0493   | 0.0278 | 0.0737    | 0.0357  |
    (with the earlier hand-written batch order: 0.0617 / 0.0438 / 0.0826 / 0.0506 excluded; the batch order
    alone moves Recall@10 by 0.002)
    (published SASRec, TIGER Table 1: 0.0387 / 0.0249 / 0.0605 / 0.0318)

On a CPU shared with other processes, `OMP_WAIT_POLICY=PASSIVE` (or `--num_threads 1`) avoids OpenMP threads
spinning against each other: it made training steps about 4x faster there.

Writes to `output_dir`: `metrics.json` (test metrics in both settings, the learning curve, the config and the
training budget), `topk_test.json` (`{user_id: [top-10 item ids]}`, history excluded, original ids),
`topk_test_keep_history.json` (the same with history kept) and the model (`sasrec_config.json`,
`sasrec.safetensors`; reload with `SASRecRecommender.from_pretrained`) and `item_embeddings.npy` (the item vectors,
rows in catalogue order, for `build_semantic_ids.py --embedding_source array`). Prints a markdown table.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar, List, Mapping

import numpy as np
import torch
from transformers import HfArgumentParser

from trainers.baselines.sasrec import SASRecConfig, SASRecRecommender
from trainers.data import build_session_samples, describe, leave_one_out_split
from trainers.data.arguments import DatasetArguments, TopKArguments
from trainers.evaluation import PUBLISHED_BEAUTY, evaluate_recommender, metrics_table, write_topk_json

logger = logging.getLogger("train_sasrec")


@dataclass
class RunArguments(TopKArguments, DatasetArguments):
    output_dir: str = field(default="outputs/sasrec/beauty", metadata={"help": "Where metrics and top-k go."})
    num_threads: int = field(default=0, metadata={"help": "torch CPU threads (0: leave torch's default)."})
    progress: bool = field(default=True, metadata={"help": "tqdm bar over epochs."})

    minimum_values: ClassVar[Mapping[str, int]] = {"num_threads": 0}


def format_table(rows: List[dict], ks: List[int], with_reference: bool) -> str:
    return metrics_table(
        [((row["model"], row["history"]), row["metrics"]) for row in rows],
        ks,
        references=PUBLISHED_BEAUTY if with_reference else None,
    )


def main(argv=None) -> dict:
    parser = HfArgumentParser((RunArguments, SASRecConfig))
    args, config = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)
    output_dir = Path(args.output_dir)

    data = args.load()
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = describe(data)
    splits = leave_one_out_split(data["sequences"])
    # The test histories: everything before the held-out item. SASRec reads the newest `max_len` of each itself, and
    # with history excluded no item of the whole history is recommended (as OneRec's evaluation does).
    test = build_session_samples(splits, max_history=None, session_length=1)["test"]
    logger.info("dataset %s: %s", args.dataset, summary)

    started = time.perf_counter()
    recommender = SASRecRecommender.fit(splits, config, item_ids=list(data["items"]["item_id"]), progress=args.progress)
    training = dict(
        recommender.training_summary,
        wall_seconds=time.perf_counter() - started,
        torch_threads=torch.get_num_threads(),
        seed=config.seed,
    )
    recommender.save_pretrained(output_dir)
    # The learned item vectors, rows in catalogue order: collaborative semantic IDs from them with
    # `build_semantic_ids.py --embedding_source array --embedding_array <output_dir>/item_embeddings.npy`.
    np.save(output_dir / "item_embeddings.npy", recommender.item_embeddings())

    results, rows = {}, []
    for exclude in (True, False):
        name = "exclude_history" if exclude else "keep_history"
        metrics, ranked = evaluate_recommender(
            recommender, test, ks=args.ks, exclude_history=exclude, batch_size=config.eval_batch_size, progress=False
        )
        results[name] = metrics
        rows.append(
            {"model": f"SASRec ({config.loss})", "history": "excluded" if exclude else "kept", "metrics": metrics}
        )
        topk_name = "topk_test.json" if exclude else "topk_test_keep_history.json"
        write_topk_json(output_dir / topk_name, test["user_id"], ranked, k=args.top_k_json)

    report = {
        "dataset": args.dataset if args.data_path is None else args.data_path,
        "data": summary,
        "test": results,
        "training": training,
        "config": asdict(config),
        "learning_curve": recommender.history,
    }
    (output_dir / "metrics.json").write_text(json.dumps(report, indent=2))

    budget = (
        f"{training['epochs_run']} epochs (best {training['best_epoch']}, stopped by "
        f"{training['stop_reason']}), {training['train_seconds'] / 60:.1f} min training, device "
        f"{training['device']} ({training['torch_threads']} threads), seed {config.seed}"
    )
    print(
        f"\nSASRec on {report['dataset']}: {summary['users']} users, {summary['items']} items; test split, full "
        f"ranking, leave-one-out\nTraining budget: {budget}; loss {config.loss}, hidden {config.hidden_size}, "
        f"{config.num_blocks} blocks x {config.num_heads} heads, max_len {config.max_len}, dropout {config.dropout}, "
        f"lr {config.lr}, batch {config.batch_size}"
    )
    print(format_table(rows, args.ks, with_reference=args.data_path is None and args.dataset == "beauty"))
    print(f"metrics -> {output_dir / 'metrics.json'}\ntop-{args.top_k_json} -> {output_dir / 'topk_test.json'}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
