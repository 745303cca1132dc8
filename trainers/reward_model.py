"""Training data, Trainer and held-out AUC for the OneRec session reward model (paper §3.3.1).

* :class:`RewardItemVocabulary` -- dataset item ids <-> model indices ``1..N`` (0 = padding), saved as
  ``reward_item_vocab.json`` next to the model.
* :func:`build_reward_samples` -- ``(user history, session of m items, labels)`` samples from real feedback, split
  by user. Targets (columns ``labels`` / ``label_mask`` in :func:`default_reward_names` order):

  - ``liked``: more than half of the session's items are rated ``>= like_threshold`` (4 on MovieLens);
  - ``loved``: more than half are rated ``>= love_threshold`` (5);
  - ``rating``: the session's mean rating scaled to ``[0, 1]`` (soft label for the BCE of Eq. 7);
  - ``engaged``: 1 for a real session, 0 for a sampled one (same history, same length, items drawn by
    training-set popularity among those the user never interacted with). Sampled sessions have no rating
    feedback: their other targets are masked out (``label_mask = 0``).

  Datasets without ratings (the Amazon sets) give only ``engaged``.
* :class:`RewardDataCollator`, :class:`RewardModelTrainingConfig`, :class:`RewardModelTrainer` -- the
  transformers ``Trainer`` setup; evaluation reports per-tower ROC AUC (:class:`RewardMetrics`).
* :func:`roc_auc`, :func:`reward_metrics`, :func:`format_auc_table` -- held-out metrics.
* :class:`SessionRewardScorer` -- a trained reward model as the ``reward_fn`` of preference mining (IPA): per-tower
  rewards of many candidate sessions per user, and one scalar per session (a weighted mean of the towers).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from datasets import Dataset, DatasetDict, Features, Value
from datasets import List as ListFeature
from scipy.stats import rankdata
from transformers import Trainer, TrainingArguments

from modeling_onerec.configuration_reward import REWARD_PAD_INDEX

from .data import index_items, natural_order, split_sessions_by_gap
from .evaluation import markdown_table
from .pretraining import pad_rows

logger = logging.getLogger(__name__)

RATING_REWARDS = ("liked", "loved", "rating")
ENGAGED = "engaged"
KNOWN_REWARDS = (*RATING_REWARDS, ENGAGED)
# Held-out AUC needs binary outcomes: a soft `rating` label counts as positive from a mean rating of 4 on 1-5.
DEFAULT_POSITIVE_THRESHOLDS: Dict[str, float] = {"rating": 0.75}


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
# Samples from real feedback
# ----------------------------------------------------------------------------------------------------


def default_reward_names(sequences: Dataset) -> Tuple[str, ...]:
    """All four targets when the sequences carry ``ratings``, else only ``engaged``."""
    return KNOWN_REWARDS if "ratings" in sequences.column_names else (ENGAGED,)


def _session_ranges(
    length: int,
    timestamps: Optional[Sequence[float]],
    max_gap_seconds: Optional[float],
    session_length: int,
    min_history: int,
) -> List[Tuple[int, int]]:
    """Consecutive pieces of at most ``session_length`` items, cut inside time sessions when there are timestamps,
    starting at or after position ``min_history`` so that every piece has history."""
    if timestamps is not None and max_gap_seconds is not None:
        blocks = split_sessions_by_gap(timestamps, max_gap_seconds)
    else:
        blocks = [(0, length)]
    pieces = []
    for start, end in blocks:
        start = max(start, min_history)
        pieces += [(s, min(s + session_length, end)) for s in range(start, end, session_length)]
    return pieces


class _PopularitySampler:
    """Draws items with probability proportional to their training-set counts, skipping excluded ones."""

    def __init__(self, counts: Mapping[str, int], rng: np.random.Generator):
        self.items = natural_order(counts)
        weights = np.array([counts[item] for item in self.items], dtype=np.float64)
        self.cdf = np.cumsum(weights) / weights.sum()
        self.rng = rng

    def session(self, length: int, exclude: set) -> List[str]:
        chosen: List[str] = []
        for _ in range(1000):
            draws = np.searchsorted(self.cdf, self.rng.random(4 * length), side="right")
            for position in np.minimum(draws, len(self.items) - 1):
                item = self.items[position]
                if item not in exclude and item not in chosen:
                    chosen.append(item)
                    if len(chosen) == length:
                        return chosen
        raise ValueError(
            f"Could not sample {length} distinct unseen items: the user has interacted with almost "
            "every popular item. Lower session_length or negatives_per_session."
        )


def build_reward_samples(
    data: Union[DatasetDict, Dataset],
    *,
    session_length: int = 5,
    max_history: int = 50,
    min_history: int = 1,
    max_gap_seconds: Optional[float] = 3600,
    negatives_per_session: int = 1,
    test_user_fraction: float = 0.2,
    seed: int = 0,
    reward_names: Optional[Sequence[str]] = None,
    like_threshold: float = 4.0,
    love_threshold: float = 5.0,
    rating_range: Tuple[float, float] = (1.0, 5.0),
) -> DatasetDict:
    """Reward-model samples from real user feedback, split by user.

    Every user's sequence (time order) is cut into consecutive sessions of at most ``session_length`` items; with
    timestamps and ``max_gap_seconds`` the cuts also fall at gaps longer than ``max_gap_seconds`` (a piece never
    spans two time sessions, as in :func:`trainers.data.build_time_sessions`, but every piece of a long time session
    becomes a sample instead of only its first ``session_length`` items). The history of a session is the newest
    ``max_history`` items before it. Each real session also yields ``negatives_per_session`` sampled sessions for
    ``engaged`` (see the module docstring for every target).

    Args:
        data (`DatasetDict` or `Dataset`): A loader's output (its ``sequences`` split is read) or the sequences.
        session_length (`int`, defaults to 5): Most items per session ``m``.
        max_history (`int`, defaults to 50): Most history items per sample (newest kept).
        min_history (`int`, defaults to 1): Sessions start at position ``>= min_history`` of the sequence.
        max_gap_seconds (`float`, *optional*, defaults to 3600): Time-session gap; ``None`` ignores timestamps.
        negatives_per_session (`int`, defaults to 1): Sampled sessions per real one (``engaged = 0``).
        test_user_fraction (`float`, defaults to 0.2): Share of users held out into ``test``.
        seed (`int`, defaults to 0): Seeds the user split and the sampled sessions.
        reward_names (`Sequence[str]`, *optional*): Targets, a subset of ``liked, loved, rating, engaged``;
            default :func:`default_reward_names`.
        like_threshold, love_threshold (`float`, defaults to 4 and 5): Ratings counting as liked / loved.
        rating_range (`tuple[float, float]`, defaults to `(1, 5)`): Rating scale mapped onto ``[0, 1]``.

    Returns:
        `DatasetDict` with ``train`` and ``test`` (disjoint users), columns ``user_id``, ``history`` and ``session``
        (item-id lists), ``labels`` and ``label_mask`` (one float per reward name) and ``sampled`` (True for the
        sampled ``engaged = 0`` sessions). ``labels`` / ``label_mask`` follow the order of ``reward_names``.
    """
    sequences = data["sequences"] if isinstance(data, DatasetDict) else data
    names = tuple(reward_names) if reward_names is not None else default_reward_names(sequences)
    _check_sample_arguments(
        sequences,
        names,
        session_length=session_length,
        max_history=max_history,
        min_history=min_history,
        negatives_per_session=negatives_per_session,
        test_user_fraction=test_user_fraction,
        rating_range=rating_range,
    )
    columns = sequences.column_names
    users = list(sequences["user_id"])
    item_lists = list(sequences["item_ids"])
    rating_lists = list(sequences["ratings"]) if "ratings" in columns else [None] * len(users)
    time_lists = list(sequences["timestamps"]) if "timestamps" in columns else [None] * len(users)

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(users))
    num_test = int(round(test_user_fraction * len(users)))
    if test_user_fraction > 0:
        num_test = min(max(num_test, 1), len(users) - 1)
    test_rows = set(order[:num_test].tolist())
    # Popularity from training users only, so that the held-out users' items shape nothing seen in training.
    counts = Counter(item for row, items in enumerate(item_lists) if row not in test_rows for item in items)
    sampler = _PopularitySampler(counts, rng) if ENGAGED in names else None

    position = {name: t for t, name in enumerate(names)}
    rows: Dict[str, Dict[str, list]] = {
        split: {key: [] for key in ("user_id", "history", "session", "labels", "label_mask", "sampled")}
        for split in ("train", "test")
    }
    low, high = rating_range
    for row, (user, items) in enumerate(zip(users, item_lists)):
        split = rows["test" if row in test_rows else "train"]
        ratings, times = rating_lists[row], time_lists[row]
        seen = set(items)
        for start, end in _session_ranges(len(items), times, max_gap_seconds, session_length, min_history):
            history, session = items[max(0, start - max_history) : start], items[start:end]
            labels, mask = [0.0] * len(names), [1.0] * len(names)
            if ratings is not None:
                scores = np.asarray(ratings[start:end], dtype=np.float64)
                values = {
                    "liked": float(np.mean(scores >= like_threshold) > 0.5),
                    "loved": float(np.mean(scores >= love_threshold) > 0.5),
                    "rating": float(np.clip((scores.mean() - low) / (high - low), 0.0, 1.0)),
                }
                for name in RATING_REWARDS:
                    if name in position:
                        labels[position[name]] = values[name]
            if ENGAGED in position:
                labels[position[ENGAGED]] = 1.0
            _append(split, user, history, session, labels, mask, False)
            if sampler is None:
                continue
            # Sampled sessions only carry `engaged = 0`: nobody rated them.
            negative_labels = [0.0] * len(names)
            negative_mask = [1.0 if name == ENGAGED else 0.0 for name in names]
            for _ in range(negatives_per_session):
                _append(split, user, history, sampler.session(len(session), seen), negative_labels, negative_mask, True)
    features = Features(
        {
            "user_id": Value("string"),
            "history": ListFeature(Value("string")),
            "session": ListFeature(Value("string")),
            "labels": ListFeature(Value("float32")),
            "label_mask": ListFeature(Value("float32")),
            "sampled": Value("bool"),
        }
    )
    result = DatasetDict({split: Dataset.from_dict(rows[split], features=features) for split in ("train", "test")})
    if result["train"].num_rows == 0:
        raise ValueError("No training sample: every sequence is shorter than min_history + 1 items.")
    return result


def _append(split: Dict[str, list], user, history, session, labels, mask, sampled) -> None:
    for key, value in (
        ("user_id", user),
        ("history", list(history)),
        ("session", list(session)),
        ("labels", labels),
        ("label_mask", mask),
        ("sampled", sampled),
    ):
        split[key].append(value)


def _check_sample_arguments(
    sequences: Dataset,
    names: Tuple[str, ...],
    *,
    rating_range,
    test_user_fraction,
    negatives_per_session,
    **positive: int,
) -> None:
    for name, value in positive.items():
        minimum = 0 if name == "min_history" else 1
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"{name}={value!r} is invalid; pass an integer >= {minimum}.")
    unknown = [name for name in names if name not in KNOWN_REWARDS]
    if unknown or not names:
        raise ValueError(f"reward_names {list(names)} must be a non-empty subset of {list(KNOWN_REWARDS)}.")
    needs_ratings = [name for name in names if name in RATING_REWARDS]
    if needs_ratings and "ratings" not in sequences.column_names:
        raise ValueError(
            f"Targets {needs_ratings} need a 'ratings' column, which these sequences lack (implicit "
            "feedback such as the Amazon sets); pass reward_names=('engaged',)."
        )
    if ENGAGED in names and (not isinstance(negatives_per_session, int) or negatives_per_session < 1):
        raise ValueError(
            f"negatives_per_session={negatives_per_session!r}: the 'engaged' target needs sampled "
            "sessions as negatives; pass an integer >= 1."
        )
    if not 0 <= test_user_fraction < 1:
        raise ValueError(f"test_user_fraction={test_user_fraction!r} must be in [0, 1).")
    if not rating_range[1] > rating_range[0]:
        raise ValueError(f"rating_range={rating_range!r} must be (lowest, highest) with highest > lowest.")


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

    Returns ``history_ids`` `(B, H)` and ``session_ids`` `(B, M)` (right-padded with 0) and, when the samples have
    them, ``labels`` / ``label_mask`` `(B, T)` float32.
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
        if not features:
            raise ValueError("Empty batch.")
        missing = [key for key in ("history", "session") if key not in features[0]]
        if missing:
            raise KeyError(
                f"Samples need 'history' and 'session' item-id lists; missing {missing}. Build them with "
                "trainers.reward_model.build_reward_samples(...)."
            )
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


def roc_auc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a random positive scores above a random negative (ties
    count 1/2), computed from average ranks (Mann-Whitney U). NaN when one class is missing.

    Args:
        scores (`np.ndarray` of shape `(N,)`): Higher means more likely positive.
        positives (`np.ndarray` of shape `(N,)`): Boolean outcomes.
    """
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives, dtype=bool)
    num_positive = int(positives.sum())
    num_negative = len(positives) - num_positive
    if num_positive == 0 or num_negative == 0:
        return float("nan")
    ranks = rankdata(scores)  # average ranks for ties
    return float((ranks[positives].sum() - num_positive * (num_positive + 1) / 2) / (num_positive * num_negative))


def reward_metrics(
    logits: np.ndarray,
    labels: np.ndarray,
    label_mask: Optional[np.ndarray],
    reward_names: Sequence[str],
    positive_thresholds: Optional[Mapping[str, float]] = None,
) -> Dict[str, float]:
    """Per-tower ROC AUC over the samples that have the target.

    Args:
        logits (`np.ndarray` of shape `(N, T)`): Tower logits (or rewards; AUC only uses their order).
        labels (`np.ndarray` of shape `(N, T)`): Targets in ``[0, 1]``.
        label_mask (`np.ndarray` of shape `(N, T)`, *optional*): 1 where the target exists.
        reward_names (`Sequence[str]`): The ``T`` tower names.
        positive_thresholds (`Mapping[str, float]`, *optional*): A label counts as positive from this value;
            default 0.5, and 0.75 for ``rating`` (:data:`DEFAULT_POSITIVE_THRESHOLDS`: a mean rating >= 4 of 5).

    Returns:
        `dict` with ``auc_<name>``, ``positive_rate_<name>`` and ``samples_<name>`` per tower, and for soft targets
        (labels other than 0/1) ``pearson_<name>`` between ``sigmoid(logit)`` and the label.
    """
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if logits.shape != labels.shape or logits.ndim != 2 or logits.shape[1] != len(reward_names):
        raise ValueError(f"logits {logits.shape} and labels {labels.shape} must both be (N, {len(reward_names)}).")
    mask = np.ones_like(labels, dtype=bool) if label_mask is None else np.asarray(label_mask) > 0
    thresholds = {**DEFAULT_POSITIVE_THRESHOLDS, **(positive_thresholds or {})}
    metrics: Dict[str, float] = {}
    for t, name in enumerate(reward_names):
        keep = mask[:, t]
        scores, targets = logits[keep, t], labels[keep, t]
        positives = targets >= thresholds.get(name, 0.5)
        metrics[f"auc_{name}"] = roc_auc(scores, positives)
        metrics[f"positive_rate_{name}"] = float(positives.mean()) if len(targets) else float("nan")
        metrics[f"samples_{name}"] = int(keep.sum())
        if len(targets) > 1 and not np.isin(targets, (0.0, 1.0)).all():
            probabilities = 1.0 / (1.0 + np.exp(-scores))
            metrics[f"pearson_{name}"] = float(np.corrcoef(probabilities, targets)[0, 1])
    return metrics


class RewardMetrics:
    """``compute_metrics`` for the Trainer: :func:`reward_metrics` from an ``EvalPrediction`` whose ``label_ids``
    are ``(labels, label_mask)`` (with ``label_names=["labels", "label_mask"]``) or ``labels`` alone."""

    def __init__(self, reward_names: Sequence[str], positive_thresholds: Optional[Mapping[str, float]] = None):
        self.reward_names = tuple(reward_names)
        self.positive_thresholds = positive_thresholds

    def __call__(self, prediction) -> Dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        label_ids = prediction.label_ids
        labels, mask = (label_ids[0], label_ids[1]) if isinstance(label_ids, (tuple, list)) else (label_ids, None)
        return reward_metrics(logits, labels, mask, self.reward_names, self.positive_thresholds)


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
        super().__init__(model=model, args=args, data_collator=data_collator, compute_metrics=compute_metrics, **kwargs)

    def _save(self, output_dir: Optional[str] = None, state_dict=None):
        super()._save(output_dir, state_dict)
        if self.vocabulary is not None:
            self.vocabulary.save_pretrained(output_dir if output_dir is not None else self.args.output_dir)


def format_auc_table(metrics: Mapping[str, float], reward_names: Sequence[str], prefix: str = "") -> str:
    """Markdown table: one row per tower with held-out samples, positive rate, ROC AUC and (soft targets)
    Pearson r. ``prefix`` is the metric-key prefix, e.g. ``"test_"`` for ``Trainer.predict`` metrics."""
    rows = []
    for name in reward_names:
        pearson = metrics.get(f"{prefix}pearson_{name}")
        rows.append(
            [
                name,
                int(metrics[f"{prefix}samples_{name}"]),
                f"{metrics[f'{prefix}positive_rate_{name}']:.3f}",
                f"{metrics[f'{prefix}auc_{name}']:.4f}",
                "" if pearson is None else f"{pearson:.4f}",
            ]
        )
    return markdown_table(["tower", "held-out samples", "positive rate", "ROC AUC", "Pearson r"], rows)


__all__ = [
    "DEFAULT_POSITIVE_THRESHOLDS",
    "KNOWN_REWARDS",
    "RewardDataCollator",
    "RewardItemVocabulary",
    "SessionRewardScorer",
    "RewardMetrics",
    "RewardModelTrainer",
    "RewardModelTrainingConfig",
    "build_reward_samples",
    "default_reward_names",
    "format_auc_table",
    "reward_metrics",
    "roc_auc",
]


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
