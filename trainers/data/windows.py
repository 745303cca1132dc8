"""How training `(history, target)` pairs are cut from each user's training sequence.

Three constructions, all over the same set of candidate windows: a target position `t >= 1` of a training row
`items`, a history `items[t - h:t]` of `1 <= h <= min(t, max_history)` items right before it, and the target
`items[t:t + session_length]` (inside the training row). No target item, and no item after it, is ever in a history.

- `"prefix"` (TIGER, S3-Rec, most reproductions): one pair per target position, with the longest history,
  `h = min(t, max_history)`;
- `"all_windows"` (GRID, GenPAS's sliding windows): every `(t, h)`, i.e. every contiguous sub-sequence of the
  training row with at most `max_history` history items: about `max_history / 2` times the pairs of `"prefix"` on long
  rows, far more varied short histories;
- `"random_window"` (EdoardoBotta's RQ-VAE-Recommender): each epoch, one pair per user drawn uniformly from that user's
  `"all_windows"` pairs, a fresh draw every epoch, seeded by `(seed, epoch)` so that a resumed run draws the same
  windows (:class:`RandomWindowDataset`).

Peers cap histories at 20 items (`max_history=20`) or 50; the cap is the same argument in all three.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .splits import _flatten_sequences, range_indices
from .tokenized import encode_windows

PAIR_CONSTRUCTIONS = ("prefix", "all_windows", "random_window")


def check_pairs(pairs: str) -> None:
    if pairs not in PAIR_CONSTRUCTIONS:
        raise ValueError(f"pairs={pairs!r} is not a pair construction; choose one of {list(PAIR_CONSTRUCTIONS)}.")


def target_positions(offsets: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Every target position of flattened training rows.

    Args:
        offsets: ``[num_rows + 1]`` row `u` owns flat positions ``offsets[u]:offsets[u + 1]``.

    Returns:
        ``(rows, positions)``, both ``[num_targets]``: the row and the flat position of each target, positions
        ``1 .. length - 1`` of every row (a row of one item has none), rows in order, positions ascending.
    """
    lengths = np.diff(offsets)
    per_row = np.maximum(lengths - 1, 0)
    rows = np.repeat(np.arange(len(lengths)), per_row)
    first = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(per_row[:-1], out=first[1:])
    positions = offsets[rows] + np.arange(len(rows)) - first[rows] + 1
    return rows, positions


def window_bounds(offsets: np.ndarray, pairs: str, max_history: int) -> Dict[str, np.ndarray]:
    """The windows of `"prefix"` or `"all_windows"` as flat index ranges.

    Args:
        offsets: ``[num_rows + 1]`` offsets of the flattened training rows.
        pairs: `"prefix"` or `"all_windows"`.
        max_history: Most history items of a window.

    Returns:
        ``{"rows", "history_starts", "target_starts"}``, each ``[num_windows]``: window `w` reads its history from
        ``history_starts[w]:target_starts[w]`` and its target from ``target_starts[w]`` on (cut at the row's end and
        the session length by the caller). `"all_windows"` lists, per target, histories from the longest to the
        shortest.
    """
    if pairs not in ("prefix", "all_windows"):
        raise ValueError(f"window_bounds builds 'prefix' or 'all_windows' pairs, got {pairs!r}.")
    rows, positions = target_positions(offsets)
    longest = np.minimum(positions - offsets[rows], max_history)  # h = min(t, max_history)
    if pairs == "prefix":
        return {"rows": rows, "history_starts": positions - longest, "target_starts": positions}
    window_rows = np.repeat(rows, longest)
    window_positions = np.repeat(positions, longest)
    first = np.zeros(len(longest), dtype=np.int64)
    np.cumsum(longest[:-1], out=first[1:])
    # Within a target's group, the k-th window (k = 0, 1, ...) has h = longest - k history items.
    k = np.arange(len(window_rows)) - np.repeat(first, longest)
    history_lengths = np.repeat(longest, longest) - k
    return {
        "rows": window_rows,
        "history_starts": window_positions - history_lengths,
        "target_starts": window_positions,
    }


def random_window_bounds(offsets: np.ndarray, max_history: int, seed: int, epoch: int) -> Dict[str, np.ndarray]:
    """One window per row (a row with at least 2 items), drawn uniformly from its `"all_windows"` windows.

    Args:
        offsets: ``[num_rows + 1]`` offsets of the flattened training rows.
        max_history: Most history items of a window.
        seed, epoch: The draw is a function of both (``numpy.random.default_rng([seed, epoch])``): the same pair
            gives the same windows, another epoch fresh ones.

    Returns:
        As :func:`window_bounds`, one window per row that has one, rows in order.
    """
    rows, positions = target_positions(offsets)
    counts = np.minimum(positions - offsets[rows], max_history)  # windows per target position
    per_row = np.bincount(rows, weights=counts, minlength=len(offsets) - 1).astype(np.int64)
    drawn_rows = np.flatnonzero(per_row)
    rng = np.random.default_rng([int(seed), int(epoch)])
    # A uniform window index within each row, then the target position and history length it stands for.
    chosen = (rng.random(len(drawn_rows)) * per_row[drawn_rows]).astype(np.int64)
    cumulative = np.cumsum(counts)
    row_first = np.zeros(len(per_row), dtype=np.int64)
    np.cumsum(per_row[:-1], out=row_first[1:])
    global_index = row_first[drawn_rows] + chosen
    target = np.searchsorted(cumulative, global_index, side="right")  # the target position holding that index
    within = global_index - (cumulative[target] - counts[target])
    history_lengths = counts[target] - within
    return {
        "rows": rows[target],
        "history_starts": positions[target] - history_lengths,
        "target_starts": positions[target],
    }


class RandomWindowDataset:
    """Training pairs `"random_window"`: one tokenised pair per user, drawn afresh each epoch (a map-style dataset for
    torch's ``DataLoader``; ``trainers.data`` is imported without torch).

    The Trainer's dataloader calls ``set_epoch(epoch)`` before every epoch (through the sampler,
    :class:`~trainers.pretraining.EpochLengthGroupedSampler`); a resumed run calls it with the epoch it resumes, so
    it sees the same windows as the first run. Items are the rows of ``trainers.data.tokenize_session_samples``:
    ``input_ids``, ``labels`` and ``num_history_items``.

    Args:
        train_rows: The `train` split of ``leave_one_out_split`` (``item_ids`` per user).
        tokenizer: The model's ``SemanticIDTokenizer``.
        max_history: Most history items of a window (the model's ``max_history_items``).
        session_length: Most target items (the model's ``session_length``).
        seed: Seed of the draws.
    """

    def __init__(self, train_rows, tokenizer, *, max_history: int, session_length: int, seed: int = 0):
        for name, value in (("max_history", max_history), ("session_length", session_length)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name}={value!r} is invalid; pass an integer >= 1.")
        flat = _flatten_sequences(train_rows)
        catalogue = pa.array(tokenizer.item_ids, pa.string())
        rows = pc.index_in(flat.values["item_ids"], value_set=catalogue)
        if rows.null_count:
            position = int(np.flatnonzero(pc.is_null(rows).to_numpy(zero_copy_only=False))[0])
            raise ValueError(
                f"Unknown item id {flat.values['item_ids'][position].as_py()!r} in the training sequences: it is not "
                f"in the tokenizer's catalogue of {len(catalogue)} items. Add it with tokenizer.add_items(...)."
            )
        self.item_rows = rows.to_numpy().astype(np.int64)  # catalogue row of every flat interaction
        self.offsets = flat.offsets
        self.item_tokens = tokenizer.item_tokens.numpy().astype(np.int32)
        self.eos, self.bos = tokenizer.eos_token_id, tokenizer.bos_token_id
        self.max_history, self.session_length, self.seed = int(max_history), int(session_length), int(seed)
        self.epoch: Optional[int] = None
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Draw (deterministically) and tokenise this epoch's windows; a no-op if they are drawn already."""
        epoch = int(epoch)
        if epoch == self.epoch:
            return

        bounds = random_window_bounds(self.offsets, self.max_history, self.seed, epoch)
        row_ends = self.offsets[bounds["rows"] + 1]
        target_ends = np.minimum(row_ends, bounds["target_starts"] + self.session_length)
        history, history_offsets = range_indices(bounds["history_starts"], bounds["target_starts"])
        target, target_offsets = range_indices(bounds["target_starts"], target_ends)
        input_ids, labels, lengths = encode_windows(
            self.item_tokens,
            self.item_rows[history],
            history_offsets,
            self.item_rows[target],
            target_offsets,
            eos=self.eos,
            bos=self.bos,
        )
        self.input_ids, self.labels = _ragged(input_ids), _ragged(labels)
        self.lengths = lengths.to_numpy().astype(np.int64)
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> Dict[str, np.ndarray]:
        values, offsets = self.input_ids
        label_values, label_offsets = self.labels
        return {
            "input_ids": values[offsets[index] : offsets[index + 1]],
            "labels": label_values[label_offsets[index] : label_offsets[index + 1]],
            "num_history_items": int(self.lengths[index]),
        }


def _ragged(array: pa.ListArray) -> Tuple[np.ndarray, np.ndarray]:
    return array.flatten().to_numpy(), array.offsets.to_numpy().astype(np.int64)


__all__ = [
    "PAIR_CONSTRUCTIONS",
    "RandomWindowDataset",
    "check_pairs",
    "random_window_bounds",
    "target_positions",
    "window_bounds",
]
