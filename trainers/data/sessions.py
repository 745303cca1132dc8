"""Model samples `(history, target session)` from user sequences.

Two ways to define the target "session" that OneRec generates:

- `build_session_samples`: on top of the leave-one-out split, the next `session_length` items after each
  training position (`session_length=1` is TIGER's point-wise next-item setting);
- `build_time_sessions`: real sessions cut where the gap between consecutive interactions exceeds
  `max_gap_seconds` (needs timestamps, e.g. MovieLens through `load_recbole`).

Every sample has `user_id`, `history: list[str]` (the newest `max_history` items before the target, in
chronological order) and `target: list[str]`; aligned `history_ratings`, `target_ratings` and
`target_timestamps` are added when the source has ratings/timestamps.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
from datasets import Dataset, DatasetDict, Features, List, Value

from .splits import _FlatSequences, _flatten_sequences, _gather
from .windows import check_pairs, window_bounds

logger = logging.getLogger(__name__)

_SPLITS = ("train", "validation", "test")

# (sequence column, sample column, feature) for the history and target sides of a sample.
_HISTORY_COLUMNS = (("item_ids", "history", Value("string")), ("ratings", "history_ratings", Value("float32")))
_TARGET_COLUMNS = (
    ("item_ids", "target", Value("string")),
    ("ratings", "target_ratings", Value("float32")),
    ("timestamps", "target_timestamps", Value("float64")),
)


def build_session_samples(
    splits: DatasetDict, *, max_history: int | None = 50, session_length: int = 5, pairs: str = "prefix"
) -> DatasetDict:
    """Turn leave-one-out splits into `(history, target)` samples.

    - `train`: with `pairs="prefix"`, one sample per position `t >= 1` of each training row `items`:
      `history = items[:t][-max_history:]`, `target = items[t:t + session_length]` (within the training part only, so
      targets near its end are shorter than `session_length`; validation/test items never leak into training
      targets); with `pairs="all_windows"`, one sample per position and history length `1..min(t, max_history)`
      (every contiguous window; `trainers.data.windows`);
    - `validation`: `history` = the training part (newest `max_history`), `target = [second-last item]`;
    - `test`: `history` = everything but the last item (newest `max_history`), `target = [last item]`.

    Args:
        splits (`DatasetDict`):
            Output of `leave_one_out_split`: `train`, `validation`, `test` with `user_id`, `item_ids` and
            optionally `timestamps` / `ratings`.
        max_history (`int`, defaults to 50):
            Most history items kept; the newest are kept. `None` keeps the whole history: what evaluation wants, so
            that excluding "the user's history" from a ranking excludes all of it (a model reads only its newest
            `config.max_history_items` items itself).
        session_length (`int`, defaults to 5):
            Most target items of a training sample; 1 gives TIGER's point-wise setting.
        pairs (`str`, defaults to `"prefix"`):
            How training pairs are cut: `"prefix"` or `"all_windows"` (`"random_window"` draws afresh every epoch:
            `trainers.data.RandomWindowDataset`).

    Returns:
        `DatasetDict` with `train`, `validation` and `test`, columns `user_id`, `history`, `target` and, when
        the source has them, `history_ratings`, `target_ratings`, `target_timestamps`.
    """
    if max_history is None:
        max_history = _NO_CAP
    _check_positive(max_history=max_history, session_length=session_length)
    check_pairs(pairs)
    if pairs == "random_window":
        raise ValueError(
            "pairs='random_window' draws new windows every epoch: use trainers.data.RandomWindowDataset(splits['train'], "
            "tokenizer, ...) for training (build_session_samples gives 'prefix' or 'all_windows')."
        )
    missing = [name for name in _SPLITS if name not in splits]
    if missing:
        raise KeyError(
            f"build_session_samples needs the splits {list(_SPLITS)}; {missing} missing from {list(splits)}. "
            "Pass the output of leave_one_out_split(sequences)."
        )
    samples = {"train": _training_windows(_flatten_sequences(splits["train"]), max_history, session_length, pairs)}
    for name in ("validation", "test"):
        samples[name] = _last_item_windows(_flatten_sequences(splits[name]), max_history, name)
    return DatasetDict(samples)


def split_sessions_by_gap(timestamps: Sequence[float], max_gap_seconds: float) -> list[tuple[int, int]]:
    """Cut a time-ordered interaction list into sessions at gaps longer than `max_gap_seconds`.

    Args:
        timestamps (`Sequence[float]` of shape ``[num_interactions]``):
            Non-decreasing unix seconds of one user's interactions.
        max_gap_seconds (`float`):
            Largest gap between consecutive interactions of one session (`>= 0`). Equal timestamps (MovieLens
            rates in bursts) always share a session.

    Returns:
        `list[tuple[int, int]]`: half-open `(start, end)` index ranges of the maximal runs whose consecutive gaps
        are `<= max_gap_seconds`, in order; they cover `range(num_interactions)` exactly.
    """
    if not np.isfinite(max_gap_seconds) or max_gap_seconds < 0:
        raise ValueError(f"max_gap_seconds={max_gap_seconds!r} is invalid; pass a finite number of seconds >= 0.")
    times = np.asarray(timestamps, dtype=np.float64)
    if times.ndim != 1:
        raise ValueError(f"timestamps must be one flat list of numbers, got an array of shape {times.shape}.")
    if len(times) == 0:
        return []
    not_finite = np.flatnonzero(~np.isfinite(times))
    if len(not_finite):
        raise ValueError(f"timestamps[{not_finite[0]}] = {times[not_finite[0]]} is not finite; fill in real times.")
    gaps = np.diff(times)
    backwards = np.flatnonzero(gaps < 0)
    if len(backwards):
        position = int(backwards[0]) + 1
        raise ValueError(
            f"timestamps must be non-decreasing: timestamps[{position}] = {times[position]} comes after "
            f"timestamps[{position - 1}] = {times[position - 1]}. Sort the interactions by time first (the "
            "trainers.data loaders do)."
        )
    starts = np.concatenate([[0], np.flatnonzero(gaps > max_gap_seconds) + 1])
    ends = np.concatenate([starts[1:], [len(times)]])
    return [(int(start), int(end)) for start, end in zip(starts, ends)]


def build_time_sessions(
    sequences: Dataset,
    *,
    max_gap_seconds: float = 3600,
    max_history: int = 50,
    session_length: int = 5,
    min_history: int = 1,
) -> DatasetDict:
    """Samples from real time-based sessions: the last session of each user is test, the second-last validation.

    Each user's interactions are cut with `split_sessions_by_gap`. Users with at least 3 sessions give their
    last session to `test`, the second-last to `validation` and the earlier ones to `train`; users with fewer
    sessions give all of them to `train` (a warning gives their count). Sessions with fewer than `min_history`
    earlier interactions (e.g. every user's first session) yield no sample (counted in a warning).

    Args:
        sequences (`Dataset`):
            The `"sequences"` split of a loader that provides `timestamps` (`load_recbole`, or
            `load_interactions` with a `timestamp_column`).
        max_gap_seconds (`float`, defaults to 3600):
            Largest gap inside one session.
        max_history (`int`, defaults to 50):
            Most history items kept (all items before the session, newest kept).
        session_length (`int`, defaults to 5):
            Most target items: the first `session_length` items of the session in time order.
        min_history (`int`, defaults to 1):
            Fewest earlier interactions a session needs to become a sample (`>= 0`).

    Returns:
        `DatasetDict` with `train`, `validation` and `test`, columns `user_id`, `history`, `target`,
        `target_timestamps`, `session_size` (session length before truncation to `session_length`) and, with
        ratings, `history_ratings` and `target_ratings`.
    """
    if "timestamps" not in sequences.column_names:
        raise ValueError(
            f"build_time_sessions needs a 'timestamps' column; the sequences have {sequences.column_names}. "
            "load_recbole (e.g. MovieLens .inter files with 'timestamp:float') and load_interactions(..., "
            "timestamp_column=...) provide timestamps; load_s3rec, load_inter_json and load_bundled have only "
            "the order: use leave_one_out_split + build_session_samples for them."
        )
    _check_positive(max_history=max_history, session_length=session_length)
    if not isinstance(min_history, (int, np.integer)) or min_history < 0:
        raise ValueError(f"min_history={min_history!r} is invalid; pass an integer >= 0.")
    flat = _flatten_sequences(sequences)
    times = flat.values["timestamps"].to_numpy(zero_copy_only=False)
    ranges: dict[str, list[tuple[int, int, int]]] = {name: [] for name in _SPLITS}  # (user row, start, end)
    too_few_sessions = 0
    without_history = dict.fromkeys(_SPLITS, 0)
    for user in range(len(flat.offsets) - 1):
        first, last = int(flat.offsets[user]), int(flat.offsets[user + 1])
        sessions = split_sessions_by_gap(times[first:last], max_gap_seconds)
        if len(sessions) >= 3:
            assigned = [("train", session) for session in sessions[:-2]]
            assigned += [("validation", sessions[-2]), ("test", sessions[-1])]
        else:
            too_few_sessions += 1
            assigned = [("train", session) for session in sessions]
        for split, (start, end) in assigned:
            if start < min_history:
                without_history[split] += 1
                continue
            ranges[split].append((user, first + start, first + end))
    if too_few_sessions:
        logger.warning(
            "%d of %d users have fewer than 3 sessions (max_gap_seconds=%s): all their sessions go to 'train'.",
            too_few_sessions,
            len(flat.offsets) - 1,
            max_gap_seconds,
        )
    if any(without_history.values()):
        logger.warning(
            "Sessions with fewer than min_history=%d earlier interactions yield no sample: %s.",
            min_history,
            ", ".join(f"{count} in {split}" for split, count in without_history.items()),
        )
    samples = {}
    for split in _SPLITS:
        triples = np.array(ranges[split], dtype=np.int64).reshape(-1, 3)
        rows, starts, ends = triples[:, 0], triples[:, 1], triples[:, 2]
        samples[split] = _windows(
            flat,
            rows,
            history_starts=np.maximum(flat.offsets[rows], starts - max_history),
            target_starts=starts,
            target_ends=np.minimum(ends, starts + session_length),
            session_sizes=ends - starts,
        )
    return DatasetDict(samples)


_NO_CAP = 2**40  # max_history=None: longer than any sequence


def _check_positive(**arguments: int) -> None:
    for name, value in arguments.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}={value!r} is invalid; pass an integer >= 1.")


def _training_windows(flat: _FlatSequences, max_history: int, session_length: int, pairs: str = "prefix") -> Dataset:
    """The training pairs of every row (`trainers.data.windows.window_bounds`); targets stay inside the row."""
    lengths = np.diff(flat.offsets)
    without_samples = int((lengths == 1).sum())
    if without_samples:
        logger.warning(
            "%d training rows hold a single item and yield no training sample (no history before it).",
            without_samples,
        )
    bounds = window_bounds(flat.offsets, pairs, max_history)
    return _windows(
        flat,
        bounds["rows"],
        history_starts=bounds["history_starts"],
        target_starts=bounds["target_starts"],
        target_ends=np.minimum(flat.offsets[bounds["rows"] + 1], bounds["target_starts"] + session_length),
    )


def _last_item_windows(flat: _FlatSequences, max_history: int, split: str) -> Dataset:
    """One sample per row: the last item is the target, the items before it the history."""
    lengths = np.diff(flat.offsets)
    rows = np.flatnonzero(lengths >= 2)
    if len(rows) < len(lengths):
        logger.warning(
            "%d %s rows hold fewer than 2 items (no history before the target) and yield no sample.",
            len(lengths) - len(rows),
            split,
        )
    targets = flat.offsets[rows + 1] - 1
    return _windows(
        flat,
        rows,
        history_starts=np.maximum(flat.offsets[rows], targets - max_history),
        target_starts=targets,
        target_ends=targets + 1,
    )


def _windows(
    flat: _FlatSequences,
    rows: np.ndarray,
    history_starts: np.ndarray,
    target_starts: np.ndarray,
    target_ends: np.ndarray,
    session_sizes: np.ndarray | None = None,
) -> Dataset:
    """Build samples whose history is `[history_starts, target_starts)` and target `[target_starts, target_ends)`.

    Args:
        flat (`_FlatSequences`): The flattened sequences.
        rows (`np.ndarray` of shape ``[num_samples]``): The sequence row (user) of each sample.
        history_starts, target_starts, target_ends (`np.ndarray` of shape ``[num_samples]``): Flat positions.
        session_sizes (`np.ndarray` of shape ``[num_samples]``, *optional*): Added as the `session_size` column.

    Returns:
        `Dataset` with `num_samples` rows.
    """
    columns: dict[str, pa.Array] = {
        "user_id": flat.table.column("user_id").take(pa.array(rows, pa.int64())).combine_chunks()
    }
    features = {"user_id": Value("string")}
    for source, name, feature in _HISTORY_COLUMNS:
        if source in flat.values:
            columns[name] = _gather(flat.values[source], history_starts, target_starts)
            features[name] = List(feature)
    for source, name, feature in _TARGET_COLUMNS:
        if source in flat.values:
            columns[name] = _gather(flat.values[source], target_starts, target_ends)
            features[name] = List(feature)
    if session_sizes is not None:
        columns["session_size"] = pa.array(session_sizes, pa.int64())
        features["session_size"] = Value("int64")
    # Schema order: user_id, history, target, then the aligned extras.
    order = ["user_id", "history", "target", "history_ratings", "target_ratings", "target_timestamps", "session_size"]
    ordered = {name: columns[name] for name in order if name in columns}
    return Dataset.from_dict(ordered, features=Features({name: features[name] for name in ordered}))
