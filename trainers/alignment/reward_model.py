"""Vocabulary, collator, Trainer and serving scorer of the OneRec session reward model (paper §3.3.1).

Samples are built with the data code (:func:`trainers.data.reward_samples.build_reward_samples`) and the held-out
per-tower ROC AUC lives with the other metrics (:mod:`trainers.evaluation`: ``roc_auc``, ``reward_metrics``,
``RewardMetrics``, ``format_auc_table``).

* :class:`RewardItemVocabulary` -- dataset item ids <-> model indices ``1..N`` (0 = padding), saved as
  ``reward_item_vocab.json`` next to the model.
* :class:`RewardDataCollator`, :class:`RewardModelTrainingConfig`, :class:`RewardModelTrainer` -- the
  transformers ``Trainer`` setup; evaluation reports per-tower ROC AUC (:class:`RewardMetrics`).
* :class:`SessionRewardScorer` -- a trained reward model as the ``reward_fn`` of preference mining (IPA): per-tower
  rewards of many candidate sessions per user, and one scalar per session (a weighted mean of the towers).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from transformers import Trainer, TrainingArguments

from modeling_onerec.configuration_reward import REWARD_PAD_INDEX

from ..data import index_items, natural_order
from ..data.collation import check_batch_columns, pad_rows
from ..evaluation import RewardMetrics

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------
# Item vocabulary
# ----------------------------------------------------------------------------------------------------


class RewardItemVocabulary:
    """Dataset item ids (strings) <-> model indices ``1 .. len(item_ids)``; index 0 is padding.

    Args:
        item_ids (`Sequence[str]`): Distinct item ids; ``item_ids[i]`` gets index ``i + 1``.
    """

    FILE_NAME = "reward_item_vocab.json"

    def __init__(self, item_ids: Sequence[str]):
        self.item_ids: List[str] = [str(item) for item in item_ids]
        self._index = index_items(self.item_ids, start=1)

    @classmethod
    def from_dataset(cls, data: Union[DatasetDict, Dataset]) -> "RewardItemVocabulary":
        """Every item of a loader's output: the ``items`` catalogue plus any item of ``sequences`` missing from it,
        in natural order (numeric ids sorted as numbers)."""
        sequences = data["sequences"] if isinstance(data, DatasetDict) else data
        items = set(item for row in sequences["item_ids"] for item in row)
        if isinstance(data, DatasetDict) and "items" in data:
            items.update(data["items"]["item_id"])
        return cls(natural_order(items))

    def __len__(self) -> int:
        return len(self.item_ids)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._index

    @property
    def num_indices(self) -> int:
        """``OneRecRewardConfig.num_items`` for this vocabulary: the items plus the padding index."""
        return len(self.item_ids) + 1

    def encode(self, item_ids: Sequence[str]) -> List[int]:
        """Item ids -> indices; unknown ids raise ``KeyError`` naming the first one."""
        try:
            return [self._index[item] for item in item_ids]
        except KeyError as error:
            raise KeyError(
                f"Item {error.args[0]!r} is not in the reward model's vocabulary ({len(self)} items); "
                "score only catalogue items the vocabulary was built from."
            ) from None

    def decode(self, indices: Sequence[int]) -> List[str]:
        """Indices -> item ids, skipping padding (0)."""
        return [self.item_ids[int(index) - 1] for index in indices if int(index) != 0]

    def save_pretrained(self, save_directory: Union[str, os.PathLike]) -> str:
        path = Path(save_directory) / self.FILE_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"padding_index": 0, "item_ids": self.item_ids}))
        return str(path)

    @classmethod
    def from_pretrained(cls, directory: Union[str, os.PathLike]) -> "RewardItemVocabulary":
        path = Path(directory) / cls.FILE_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"No {cls.FILE_NAME} in {directory}; save the vocabulary with "
                "vocabulary.save_pretrained(model_dir) (RewardModelTrainer.save_model does)."
            )
        return cls(json.loads(path.read_text())["item_ids"])


# ----------------------------------------------------------------------------------------------------
# Batching and training
# ----------------------------------------------------------------------------------------------------


def _pad(rows: Sequence[Sequence[int]]) -> torch.Tensor:
    """Index rows right-padded with the padding index, at least one column wide (a batch of empty sessions)."""
    return pad_rows(rows, REWARD_PAD_INDEX, width=max(1, max(map(len, rows), default=0)))[0]


class RewardDataCollator:
    """``{"history", "session"[, "labels", "label_mask"]}`` samples -> model inputs.

    Args:
        vocabulary (`RewardItemVocabulary`): Maps item ids to indices.
        max_history_items (`int`, defaults to 50): Newest history items kept.
        max_session_items (`int`, defaults to 5): First session items kept.

    Returns ``history_ids`` ``[B, H]`` and ``session_ids`` ``[B, M]`` (right-padded with 0) and, when the samples have
    them, ``labels`` / ``label_mask`` ``[B, T]`` float32.
    """

    def __init__(self, vocabulary: RewardItemVocabulary, max_history_items: int = 50, max_session_items: int = 5):
        if max_history_items < 1 or max_session_items < 1:
            raise ValueError(
                f"max_history_items and max_session_items must be >= 1, got {max_history_items} and "
                f"{max_session_items}."
            )
        self.vocabulary = vocabulary
        self.max_history_items = max_history_items
        self.max_session_items = max_session_items

    def __call__(self, features: Sequence[Dict[str, Any]]) -> Dict[str, torch.Tensor]:
        check_batch_columns(features, ("history", "session"), "trainers.data.reward_samples.build_reward_samples(...)")
        batch = {
            "history_ids": _pad(
                [self.vocabulary.encode(list(f["history"])[-self.max_history_items :]) for f in features]
            ),
            "session_ids": _pad(
                [self.vocabulary.encode(list(f["session"])[: self.max_session_items]) for f in features]
            ),
        }
        for key in ("labels", "label_mask"):
            if key in features[0]:
                batch[key] = torch.tensor([list(f[key]) for f in features], dtype=torch.float32)
        return batch


@dataclass
class RewardModelTrainingConfig(TrainingArguments):
    """``TrainingArguments`` with defaults for the small reward model: a larger learning rate and batch, evaluation
    (held-out AUC) every epoch, no checkpoints, and the collator's columns kept."""

    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW learning rate."})
    per_device_train_batch_size: int = field(default=256, metadata={"help": "Training batch size."})
    per_device_eval_batch_size: int = field(default=1024, metadata={"help": "Evaluation batch size."})
    num_train_epochs: float = field(default=2.0, metadata={"help": "Training epochs."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    eval_strategy: str = field(default="epoch", metadata={"help": "'no', 'steps' or 'epoch'."})
    save_strategy: str = field(default="no", metadata={"help": "'no', 'steps' or 'epoch' checkpoints."})
    logging_steps: float = field(default=20, metadata={"help": "Log the loss every N steps."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "The collator reads history/session."})
    label_names: Optional[List[str]] = field(
        default_factory=lambda: ["labels", "label_mask"],
        metadata={"help": "Both reach compute_metrics, so AUC skips samples that lack a target."},
    )


class RewardModelTrainer(Trainer):
    """``Trainer`` for :class:`~modeling_onerec.modeling_reward.OneRecRewardModel`.

    Arguments as ``Trainer``, plus ``vocabulary`` (a :class:`RewardItemVocabulary`): without a ``data_collator``
    it builds a :class:`RewardDataCollator` with the model's history/session limits, and ``save_model`` writes it
    next to the weights. Without ``compute_metrics``, evaluation reports per-tower AUC (:class:`RewardMetrics`).
    """

    def __init__(
        self,
        model=None,
        args: Optional[TrainingArguments] = None,
        *,
        vocabulary=None,
        data_collator=None,
        compute_metrics=None,
        **kwargs,
    ):
        if model is None:
            raise ValueError("RewardModelTrainer needs a model (an OneRecRewardModel).")
        if data_collator is None:
            if vocabulary is None:
                raise ValueError("Pass vocabulary=RewardItemVocabulary(...) or a data_collator.")
            data_collator = RewardDataCollator(
                vocabulary, model.config.max_history_items, model.config.max_session_items
            )
        if compute_metrics is None:
            compute_metrics = RewardMetrics(model.config.reward_names)
        self.vocabulary = vocabulary if vocabulary is not None else getattr(data_collator, "vocabulary", None)
        # The vocabulary is the Trainer's processing_class: the Trainer saves it (save_pretrained) next to the
        # weights in every checkpoint and in save_model, as it would a tokenizer.
        kwargs.setdefault("processing_class", self.vocabulary)
        super().__init__(model=model, args=args, data_collator=data_collator, compute_metrics=compute_metrics, **kwargs)


class SessionRewardScorer:
    """A trained :class:`~modeling_onerec.OneRecRewardModel` as the reward of preference mining (paper Eq. 9).

    Args:
        model: The reward model (its device is used).
        vocabulary (`RewardItemVocabulary`): The vocabulary it was trained with.
        weights (`Mapping[str, float]`, *optional*): Weight of each tower in the scalar reward; the default is the
            plain mean of all towers. Towers left out get weight 0.
        batch_size (`int`, defaults to 4096): Sessions per forward pass.

    ``scorer(histories, sessions)`` returns, per user, one scalar per candidate session; ``tower_rewards`` returns
    every tower (for Table-1 style reports: mean and max of each reward over the generated sessions).
    """

    def __init__(
        self,
        model,
        vocabulary: RewardItemVocabulary,
        weights: Optional[Mapping[str, float]] = None,
        batch_size: int = 4096,
    ):
        names = list(model.config.reward_names)
        weights = dict(weights) if weights is not None else {name: 1.0 for name in names}
        unknown = sorted(set(weights) - set(names))
        if unknown:
            raise ValueError(f"weights name tower(s) {unknown} the reward model does not have; it has {names}.")
        total = sum(weights.values())
        if total <= 0:
            raise ValueError(f"weights must sum to a positive number, got {weights}.")
        self.model, self.vocabulary, self.batch_size = model, vocabulary, batch_size
        self.reward_names = names
        self.weights = torch.tensor([weights.get(name, 0.0) / total for name in names], dtype=torch.float32)

    @classmethod
    def from_pretrained(cls, directory: Union[str, os.PathLike], **kwargs) -> "SessionRewardScorer":
        """Load a folder written by ``examples/train_reward_model.py`` (model + ``reward_item_vocab.json``)."""
        from modeling_onerec import OneRecRewardModel

        return cls(
            OneRecRewardModel.from_pretrained(directory), RewardItemVocabulary.from_pretrained(directory), **kwargs
        )

    @torch.no_grad()
    def tower_rewards(
        self, histories: Sequence[Sequence[str]], sessions: Sequence[Sequence[Sequence[str]]]
    ) -> List[np.ndarray]:
        """Per user ``u``, an array ``(len(sessions[u]), T)`` of every tower's reward for each candidate session."""
        if len(histories) != len(sessions):
            raise ValueError(f"Got {len(histories)} histories and candidate sessions for {len(sessions)} users.")
        config = self.model.config
        rows_history, rows_session, owners = [], [], []
        for user, (history, candidates) in enumerate(zip(histories, sessions)):
            encoded_history = self.vocabulary.encode(list(history)[-config.max_history_items :])
            for session in candidates:
                if len(session) == 0:
                    raise ValueError(f"User {user} has an empty candidate session; score only real sessions.")
                rows_history.append(encoded_history)
                rows_session.append(self.vocabulary.encode(list(session)[: config.max_session_items]))
                owners.append(user)
        rewards = torch.empty(len(rows_session), len(self.reward_names))
        for start in range(0, len(rows_session), self.batch_size):
            stop = start + self.batch_size
            rewards[start:stop] = (
                self.model.score_sessions(_pad(rows_history[start:stop]), _pad(rows_session[start:stop])).float().cpu()
            )
        owners = np.asarray(owners, dtype=np.int64)
        return [rewards[owners == user].numpy() for user in range(len(histories))]

    def __call__(
        self, histories: Sequence[Sequence[str]], sessions: Sequence[Sequence[Sequence[str]]]
    ) -> List[List[float]]:
        return [
            (torch.from_numpy(towers) @ self.weights).tolist() if len(towers) else []
            for towers in self.tower_rewards(histories, sessions)
        ]


__all__ = [
    "RewardDataCollator",
    "RewardItemVocabulary",
    "RewardModelTrainer",
    "RewardModelTrainingConfig",
    "SessionRewardScorer",
]
