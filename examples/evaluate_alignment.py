"""Table 1 of the paper, in form: reward-model scores of every model's sessions, with ground truth beside them.

Rows are models (OneRec / TIGER-style checkpoints, aligned snapshots from ``examples/align_ipa.py``, a SASRec folder
from ``examples/train_sasrec.py``, and the successor baseline); columns are each reward tower's mean and max over
the ``S`` sessions a model proposes per user (``trainers/evaluation/alignment.py`` says exactly how), then
Recall@10 / NDCG@10 of the held-out test item and the best session's hit rate on the same users, so that a model
that games the reward model without recommending better would show. With ``--heldout_reward_model_dir`` a second
reward model (trained on another seed, never seen by the aligned policies) scores the same sessions; catalogue
coverage and intra-session diversity (distinct first-level semantic codes per session) are reported for every row.

    python examples/evaluate_alignment.py --dataset ml-100k --data_path "$ONEREC_ML100K_DIR" \\
        --reward_model_dir outputs/reward/ml-100k --test_users 300 --output_dir outputs/ml-100k/table1 \\
        --models SASRec=outputs/sasrec/ml-100k TIGER-style=outputs/ml-100k/tiger/final \\
                 OneRec=outputs/ml-100k/onerec/final OneRec+IPA=outputs/ml-100k/ipa/iteration-2
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, List, Mapping, Optional

from transformers import HfArgumentParser

from modeling_onerec import OneRecForConditionalGeneration
from tokenization_semantic_id import SemanticIDTokenizer
from trainers.alignment.reward_model import SessionRewardScorer
from trainers.baselines import SuccessorRecommender, tune_successor
from trainers.baselines.sasrec import SASRecRecommender
from trainers.data import build_session_samples, check_local_dir, leave_one_out_split, named_paths
from trainers.data.arguments import (
    DatasetArguments,
    RewardModelDirArguments,
    SessionSampleArguments,
    UserSubsetArguments,
    redeclare,
)
from trainers.evaluation import markdown_table, sample_users
from trainers.evaluation.alignment import (
    catalogue_coverage,
    generated_sessions,
    ground_truth_summary,
    intra_session_diversity,
    reward_summary,
    sessions_from_ranking,
)
from trainers.evaluation.generative import GenerativeRecommender

logger = logging.getLogger("evaluate_alignment")


@dataclass
class AlignmentEvaluationArguments(
    RewardModelDirArguments, UserSubsetArguments, SessionSampleArguments, DatasetArguments
):
    test_users: Optional[int] = redeclare(UserSubsetArguments, "test_users", default=300)
    models: List[str] = field(
        default_factory=list,
        metadata={
            "help": "NAME=FOLDER: a OneRec checkpoint (config.json + tokenizer) or a SASRec folder (sasrec_config.json)."
        },
    )
    heldout_reward_model_dir: Optional[str] = field(
        default=None,
        metadata={
            "help": "A second reward model (another seed) that no aligned model was trained against: reward hacking "
            "shows as the first reward rising while this one falls."
        },
    )
    successor: bool = field(default=True, metadata={"help": "Add the successor baseline (tuned on validation)."})
    num_sessions: int = field(default=8, metadata={"help": "S: sessions per user scored by the reward model."})
    session_beams: int = field(default=16, metadata={"help": "Beam of OneRec's session search (>= S)."})
    output_dir: str = field(default="outputs/table1", metadata={"help": "Where metrics.json goes."})

    minimum_values: ClassVar[Mapping[str, int]] = {"num_sessions": 1, "session_beams": 1}


def main(argv=None) -> dict:
    (args,) = HfArgumentParser(AlignmentEvaluationArguments).parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    models = named_paths(args.models, "--models")
    scorer = SessionRewardScorer.from_pretrained(check_local_dir(args.reward_model_dir, "--reward_model_dir"))
    heldout = None
    if args.heldout_reward_model_dir is not None:
        heldout = SessionRewardScorer.from_pretrained(
            check_local_dir(args.heldout_reward_model_dir, "--heldout_reward_model_dir")
        )
    data = args.load()
    splits = leave_one_out_split(data["sequences"])
    samples = build_session_samples(splits, max_history=args.max_history, session_length=1)
    test = sample_users(samples["test"], args.test_users, seed=args.users_seed)
    histories = [list(h) for h in test["history"]]
    targets = [t[0] for t in test["target"]]

    rows = []
    num_items = len(data["items"])
    first_codes = None  # item id -> first semantic code, from the first OneRec model's tokenizer (one catalogue)

    def add(name: str, kind: str, ranked, sessions, seconds: float) -> None:
        row = {
            "model": name,
            "sessions_from": kind,
            **reward_summary(scorer, histories, sessions),
            **(
                {f"heldout_{k}": v for k, v in reward_summary(heldout, histories, sessions).items()}
                if heldout is not None
                else {}
            ),
            **ground_truth_summary(ranked, sessions, targets),
            "coverage": catalogue_coverage(sessions, num_items),
            "seconds": round(seconds, 1),
        }
        if first_codes is not None:
            row["diversity"] = intra_session_diversity(sessions, first_codes)
        rows.append(row)
        logger.info("%s: %s", name, row)

    # A point-wise model ranks once, deep enough for both its top 10 and its S sessions of m items.
    depth = max(10, args.num_sessions * args.session_length)

    def add_pointwise(name: str, recommender, seconds_from: float) -> None:
        ranked = recommender.rank(histories, depth, exclude_history=True)
        add(
            name,
            "ranking",
            [items[:10] for items in ranked],
            sessions_from_ranking(ranked, args.num_sessions, args.session_length),
            time.perf_counter() - seconds_from,
        )

    for name, folder in models:
        start = time.perf_counter()
        if (folder / "sasrec_config.json").is_file():
            add_pointwise(name, SASRecRecommender.from_pretrained(folder), start)
            continue
        model = OneRecForConditionalGeneration.from_pretrained(folder).eval()
        tokenizer = SemanticIDTokenizer.from_pretrained(folder)
        if first_codes is None:
            first_codes = dict(zip(tokenizer.item_ids, tokenizer.item_codes[:, 0].tolist()))
        recommender = GenerativeRecommender(model, tokenizer)
        if model.config.session_length == 1:
            add_pointwise(name, recommender, start)
            continue
        ranked = recommender.rank(histories, 10, exclude_history=True)
        sessions = generated_sessions(
            model, tokenizer, histories, args.num_sessions, args.session_length, args.session_beams
        )
        add(name, "generated", ranked, sessions, time.perf_counter() - start)

    if args.successor:
        start = time.perf_counter()
        catalogue = data["items"].with_format("arrow")[:].column("item_id").to_pylist()
        best, _ = tune_successor(splits["train"], samples["validation"], exclude_history=True, catalogue=catalogue)
        add_pointwise("successor", SuccessorRecommender(splits["train"], catalogue=catalogue, **best), start)

    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "dataset": args.dataset,
        "reward_model_dir": args.reward_model_dir,
        "test_users": len(test),
        "users_seed": args.users_seed,
        "num_sessions": args.num_sessions,
        "session_length": args.session_length,
        "rows": rows,
    }
    (output_dir / "metrics.json").write_text(json.dumps(report, indent=2))
    names = scorer.reward_names
    heldout_names = [f"heldout_{n}" for n in heldout.reward_names] if heldout is not None else []
    header = (
        ["model", "sessions"]
        + [f"{n} {s}" for n in names + heldout_names for s in ("mean", "max")]
        + ["Recall@10", "NDCG@10", "session hit", "coverage", "diversity"]
    )
    print(
        f"\n{args.dataset}: {len(test)} random test users (seed {args.users_seed}), S={args.num_sessions} sessions "
        f"of m={args.session_length} per user, history excluded; rewards from {args.reward_model_dir}"
    )
    table_rows = []
    for row in rows:
        cells = [row["model"], row["sessions_from"]] + [
            f"{row[f'{n}_{s}']:.4f}" for n in names + heldout_names for s in ("mean", "max")
        ]
        cells += [f"{row['recall@10']:.4f}", f"{row['ndcg@10']:.4f}", f"{row['session_hit_rate']:.4f}"]
        cells += [f"{row['coverage']:.4f}", f"{row['diversity']:.3f}" if "diversity" in row else "-"]
        table_rows.append(cells)
    print(markdown_table(header, table_rows))
    print(f"metrics -> {output_dir / 'metrics.json'}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
