"""Item-id preference rows ``{"history", "chosen", "rejected", ["target"]}`` to OneRec tensors."""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence

import torch

from tokenization_semantic_id.tokenization_semantic_id import check_item_list

from ..data.collation import check_batch_columns, pad_labels

logger = logging.getLogger(__name__)


PAIR_COLUMNS = ("history", "chosen", "rejected")
REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")


class PreferenceDataCollator:
    """Batches preference rows for the encoder-decoder.

    Rows: ``{"history": [item ids], "chosen": [item ids], "rejected": [item ids]}`` plus optionally ``"target"``
    (the real next session, for the NTP term; ``None``/missing/empty = no NTP for that row) and
    ``"ref_chosen_logps"`` / ``"ref_rejected_logps"`` (precomputed reference log-probs). Other keys are ignored.

    Args:
        tokenizer: The ``SemanticIDTokenizer`` the model was built with.
        max_history_items: History items the encoder reads (newest kept); default the tokenizer's.
        session_length: Most target items kept (longer targets are cut, as in pretraining); ``None`` keeps all.
            Chosen and rejected sessions are never cut: they are the objects being compared.

    Returns:
        ``input_ids`` / ``attention_mask`` ``[B, S]`` (encoder, right-padded); ``chosen_labels`` and
        ``rejected_labels`` ``[B, T]`` (``BOS c1..cL`` per item then EOS, both padded with -100 to one width ``T``);
        ``target_labels`` ``[B, T']`` when any row has a target (all -100 for rows without); ``ref_chosen_logps`` /
        ``ref_rejected_logps`` ``[B]`` when the rows carry them.
    """

    def __init__(self, tokenizer, max_history_items: Optional[int] = None, session_length: Optional[int] = None):
        if max_history_items is not None and max_history_items < 1:
            raise ValueError(f"max_history_items must be >= 1 or None, got {max_history_items}.")
        if session_length is not None and session_length < 1:
            raise ValueError(f"session_length must be >= 1 or None, got {session_length}.")
        self.tokenizer = tokenizer
        self.max_history_items = max_history_items
        self.session_length = session_length

    def __call__(self, features: Sequence[Dict[str, Any]]) -> Dict[str, torch.Tensor]:
        check_batch_columns(features, PAIR_COLUMNS, "trainers.alignment.mine_preference_pairs(...)")
        tokenizer = self.tokenizer
        histories = [check_item_list(f["history"], f"Row {row}, column 'history'") for row, f in enumerate(features)]
        try:
            encoded = tokenizer.batch_encode_histories(histories, max_items=self.max_history_items)
        except KeyError:
            # Unknown item: look the ids up again only now, to name the row (not on every batch).
            for row, history in enumerate(histories):
                check_item_list(history, f"Row {row}, column 'history'", tokenizer)
            raise

        def encode(row: int, column: str, items) -> List[int]:
            try:
                return tokenizer.encode_session(check_item_list(items, f"Row {row}, column '{column}'"))
            except KeyError as error:
                raise type(error)(f"Row {row}, column '{column}': {error}") from None

        chosen = [encode(row, "chosen", f["chosen"]) for row, f in enumerate(features)]
        rejected = [encode(row, "rejected", f["rejected"]) for row, f in enumerate(features)]
        width = max(len(s) for s in chosen + rejected)
        batch = {
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
            "chosen_labels": pad_labels(chosen, width),
            "rejected_labels": pad_labels(rejected, width),
        }

        if any(f.get("target") for f in features):
            targets = []
            for row, f in enumerate(features):
                items = f.get("target") or []
                items = check_item_list(items, f"Row {row}, column 'target'", allow_empty=True)
                items = items[: self.session_length]
                targets.append(encode(row, "target", items) if items else [])
            batch["target_labels"] = pad_labels(targets)
        for key in REF_COLUMNS:
            if key in features[0]:
                batch[key] = torch.tensor([float(f[key]) for f in features], dtype=torch.float32)
        return batch
