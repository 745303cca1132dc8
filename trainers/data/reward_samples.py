"""Samples for the OneRec session reward model (paper §3.3.1), built from real feedback and split by user.

:func:`build_reward_samples` gives ``(user history, session of m items, labels)`` rows. Targets (columns ``labels`` /
``label_mask`` in :func:`default_reward_names` order):

- ``liked``: more than half of the session's items are rated ``>= like_threshold`` (4 on MovieLens);
- ``loved``: more than half are rated ``>= love_threshold`` (5);
- ``rating``: the session's mean rating scaled to ``[0, 1]`` (soft label for the BCE of Eq. 7);
- ``engaged``: 1 for a real session, 0 for a sampled one (same history, same length, items drawn by training-set
  popularity among those the user never interacted with). Sampled sessions have no rating feedback: their other
  targets are masked out (``label_mask = 0``).

Datasets without ratings (the Amazon sets) give only ``engaged``. Torch-free, like the rest of ``trainers.data``.
"""

from __future__ import annotations

from collections import Counter
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from datasets import Dataset, DatasetDict, Features, Value
from datasets import List as ListFeature

from .loaders import natural_order
from .sessions import split_sessions_by_gap

RATING_REWARDS = ("liked", "loved", "rating")
ENGAGED = "engaged"
KNOWN_REWARDS = (*RATING_REWARDS, ENGAGED)


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


__all__ = ["ENGAGED", "KNOWN_REWARDS", "RATING_REWARDS", "build_reward_samples", "default_reward_names"]
