"""Stage 4 of the OneRec pipeline: recommend sessions for users with a trained model.

Raw item ids in, ranked sessions of item ids out (trie-constrained session beam search, history items excluded, no
item twice in a session), through `OneRecForConditionalGeneration.recommend`.

    # users of a dataset: their whole sequence is the history
    python examples/recommend.py --model_dir outputs/beauty/onerec/final --dataset beauty --user_ids 1 2 3
    # any history of known item ids
    python examples/recommend.py --model_dir outputs/beauty/onerec/final --history 12 7 301 --num_sessions 3

Prints each user's sessions with their log-probabilities; `--output_json` also writes
`{user: [{"items": [...], "score": s}, ...]}`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, List, Mapping, Optional

import torch
from transformers import HfArgumentParser

from modeling_onerec import OneRecForConditionalGeneration
from tokenization_semantic_id import SemanticIDTokenizer
from trainers.data import check_local_dir
from trainers.data.arguments import DatasetArguments, ModelDirArguments


@dataclass
class RecommendArguments(ModelDirArguments, DatasetArguments):
    user_ids: List[str] = field(
        default_factory=list,
        metadata={"help": "Users of --dataset to recommend for (their whole sequence is the history)."},
    )
    history: List[str] = field(
        default_factory=list,
        metadata={"help": "Or one history of item ids, oldest first (used instead of --user_ids)."},
    )
    num_sessions: int = field(default=5, metadata={"help": "Sessions per user, best first."})
    num_beams: Optional[int] = field(default=None, metadata={"help": "Beam width (default: 4 x num_sessions)."})
    session_length: Optional[int] = field(
        default=None, metadata={"help": "Items per session (default: the model's m)."}
    )
    keep_history: bool = field(default=False, metadata={"help": "Allow items of the user's own history."})
    output_json: Optional[str] = field(default=None, metadata={"help": "Also write the sessions to this JSON file."})

    minimum_values: ClassVar[Mapping[str, int]] = {"num_sessions": 1, "num_beams": 1, "session_length": 1}


def main(argv=None) -> dict:
    (args,) = HfArgumentParser(RecommendArguments).parse_args_into_dataclasses(args=argv)
    if not args.history and not args.user_ids:
        raise ValueError("Say whom to recommend for: --user_ids U1 U2 ... (users of --dataset) or --history I1 I2 ...")
    if args.history:
        users, histories = ["history"], [list(args.history)]
    else:
        sequences = args.load()["sequences"]
        by_user = dict(zip((str(user) for user in sequences["user_id"]), sequences["item_ids"]))
        unknown = [user for user in args.user_ids if user not in by_user]
        if unknown:
            raise KeyError(f"User id(s) {unknown[:5]} are not in {args.dataset}; e.g. {list(by_user)[:3]} are.")
        users, histories = list(args.user_ids), [by_user[user] for user in args.user_ids]

    check_local_dir(args.model_dir, "--model_dir")
    model = OneRecForConditionalGeneration.from_pretrained(args.model_dir).eval()
    tokenizer = SemanticIDTokenizer.from_pretrained(args.model_dir)
    if torch.cuda.is_available():
        model.cuda()
    found = model.recommend(
        tokenizer,
        histories,
        num_sessions=args.num_sessions,
        num_beams=4 * args.num_sessions if args.num_beams is None else args.num_beams,
        session_length=args.session_length,
        exclude_history=not args.keep_history,
    )
    result = {}
    for user, history, sessions in zip(users, histories, found):
        print(f"\nuser {user} (history: {len(history)} items, newest {list(history)[-5:]})")
        for rank, session in enumerate(sessions, 1):
            print(f"  {rank}. {session.items}  log p = {session.score:.2f}")
        result[user] = [{"items": s.items, "score": s.score} for s in sessions]
    if args.output_json:
        Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_json).write_text(json.dumps(result, indent=1))
        print(f"sessions -> {args.output_json}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
