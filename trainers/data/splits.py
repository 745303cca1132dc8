"""Leave-one-out evaluation split (the TIGER / S3-Rec protocol) and the arrow helpers shared with `sessions`.

The helpers work on flattened sequences: one flat array per per-interaction column (`item_ids`, `timestamps`,
`ratings`) plus user offsets, so that cutting rows into windows is a single vectorised `take` instead of a
Python loop over hundreds of thousands of samples.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict, Features

from .loaders import PER_INTERACTION_COLUMNS, list_array

logger = logging.getLogger(__name__)


def leave_one_out_split(sequences: Dataset, min_length: int = 3) -> DatasetDict:
    """Split user sequences with the leave-one-out protocol of TIGER and S3-Rec.

    Per user: the last item is the test target, the second-last the validation target, the rest is training.
    Every per-interaction column (`item_ids` and, when present, `timestamps` and `ratings`) is truncated the
    same way; other columns are copied.

    - `train` row: the sequence without its last two items (users shorter than `min_length`: the full sequence);
    - `validation` row: the sequence without its last item (its last item is the validation target);
    - `test` row: the full sequence (its last item is the test target).

    Args:
        sequences (`Dataset`):
            The `"sequences"` split of a loader: `user_id`, `item_ids` (time order) and optionally `timestamps`,
            `ratings` aligned with `item_ids`.
        min_length (`int`, defaults to 3):
            Users with fewer items have no validation/test row; their full sequence goes to `train` (a warning
            gives their count). Must be at least 3 so that every evaluated user keeps one training item.

    Returns:
        `DatasetDict` with `train` (one row per user), `validation` and `test` (one row per user with at least
        `min_length` items), all with the columns of `sequences`.
    """
    if not isinstance(min_length, int) or min_length < 3:
        raise ValueError(
            f"min_length={min_length!r} is invalid: leave-one-out needs at least 3 items per evaluated user "
            "(training, validation and test). Pass min_length >= 3."
        )
    flat = _flatten_sequences(sequences)
    starts, ends = flat.offsets[:-1], flat.offsets[1:]
    evaluated = (ends - starts) >= min_length
    num_short = int((~evaluated).sum())
    if num_short:
        logger.warning(
            "%d of %d users have fewer than min_length=%d items: they go to 'train' only (full sequence), "
            "without validation/test rows.",
            num_short,
            len(evaluated),
            min_length,
        )
    all_users = np.arange(len(starts))
    kept = np.flatnonzero(evaluated)
    return DatasetDict(
        {
            "train": _slice_rows(flat, all_users, starts, np.where(evaluated, ends - 2, ends)),
            "validation": _slice_rows(flat, kept, starts[kept], ends[kept] - 1),
            "test": _slice_rows(flat, kept, starts[kept], ends[kept]),
        }
    )


@dataclass
class _FlatSequences:
    """A `"sequences"` dataset with its per-interaction columns flattened.

    Attributes:
        table (`pa.Table`): The per-user table, `num_users` rows (dataset indices already applied).
        offsets (`np.ndarray` of shape ``[num_users + 1]``): User `u` owns flat positions
            `offsets[u]:offsets[u + 1]`.
        values (`dict[str, pa.Array]`): Per-interaction column name -> flat values of shape ``[offsets[-1]]``.
        features (`Features`): The features of the original dataset.
    """

    table: pa.Table
    offsets: np.ndarray
    values: dict[str, pa.Array]
    features: Features


def _flatten_sequences(sequences: Dataset) -> _FlatSequences:
    """Flatten the per-interaction columns of `sequences`, checking that they are aligned with `item_ids`."""
    if not isinstance(sequences, Dataset):
        raise TypeError(
            f"Expected a datasets.Dataset of user sequences, got {type(sequences).__name__}; pass e.g. "
            "load_bundled('beauty')['sequences']."
        )
    missing = [name for name in ("user_id", "item_ids") if name not in sequences.column_names]
    if missing:
        raise ValueError(
            f"The sequences dataset lacks column(s) {missing}; it has {sequences.column_names}. Pass the "
            "'sequences' split of a trainers.data loader (user_id, item_ids, optional timestamps/ratings)."
        )
    table = sequences.with_format("arrow")[:]  # honours select()/shuffle() indices, unlike `Dataset.data`
    item_lists = table.column("item_ids").combine_chunks()
    if item_lists.null_count:
        raise ValueError(f"{item_lists.null_count} rows have item_ids=None; every user needs a list of items.")
    lengths = np.asarray(pc.list_value_length(item_lists).to_numpy(zero_copy_only=False), dtype=np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = {"item_ids": pc.list_flatten(item_lists)}
    for name in PER_INTERACTION_COLUMNS[1:]:
        if name not in table.column_names:
            continue
        column = table.column(name).combine_chunks()
        column_lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        misaligned = np.flatnonzero(np.asarray(column_lengths, dtype=np.float64) != lengths)
        if len(misaligned):
            row = int(misaligned[0])
            raise ValueError(
                f"Column {name!r} is not aligned with item_ids for {len(misaligned)} users, e.g. user "
                f"{table.column('user_id')[row].as_py()!r}: {column_lengths[row]} values for {lengths[row]} items. "
                "Each per-interaction list must have one value per item."
            )
        values[name] = pc.list_flatten(column)
    return _FlatSequences(table=table, offsets=offsets, values=values, features=sequences.features)


def _gather(values: pa.Array, starts: np.ndarray, ends: np.ndarray) -> pa.Array:
    """Cut flat `values` into one list per row: row `r` gets `values[starts[r]:ends[r]]`.

    Args:
        values (`pa.Array` of shape ``[num_values]``): Flat values.
        starts, ends (`np.ndarray` of shape ``[num_rows]``): Half-open ranges into `values`.

    Returns:
        `pa.ListArray` with `num_rows` lists.
    """
    indices, offsets = range_indices(starts, ends)
    return list_array(offsets, values.take(pa.array(indices)))


def range_indices(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The flat positions of half-open ranges laid end to end, without a Python loop.

    Args:
        starts, ends (`np.ndarray` of shape ``[num_rows]``): Range `r` is `[starts[r], ends[r])`.

    Returns:
        `(indices, offsets)`: `indices` (shape ``[sum of lengths]``) lists every range's positions in order, and
        range `r` owns `indices[offsets[r]:offsets[r + 1]]` (`offsets` of shape ``[num_rows + 1]``).
    """
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(ends, dtype=np.int64) - starts
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    # Position j of row r reads starts[r] + j; offsets[r] + j is its place in the output.
    return np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1] - starts, lengths), offsets


def _slice_rows(flat: _FlatSequences, rows: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> Dataset:
    """Rows `rows` of `flat.table` with every per-interaction column cut to the flat range `[starts, ends)`."""
    table = flat.table.take(pa.array(rows, pa.int64()))
    columns = {name: table.column(name) for name in table.column_names}
    for name, values in flat.values.items():
        columns[name] = _gather(values, starts, ends)
    return Dataset.from_dict(columns, features=flat.features)
