"""Logs bigger than memory: training windows streamed from memory-mapped user sequences, and a synthetic log.

`build_session_samples` + `tokenize_session_samples` materialise every training window (Beauty: 131k, fine); a log
of hundreds of millions of interactions has as many windows, each with up to 50 history items. Here nothing is
materialised:

- the user sequences stay in Arrow files that `datasets` memory-maps (`Dataset.from_generator`, `load_from_disk`);
- `stream_training_windows` reads them a chunk of users at a time, applies the leave-one-out cut on the fly (each
  user's last two items are held out, as `leave_one_out_split` does), looks every interaction up in the catalogue
  once, and yields the same `input_ids` / `labels` / `num_history_items` rows as the in-memory path (a test checks
  it), as a `datasets.IterableDataset` the Trainer and `TokenizedSessionCollator` take as they are;
- `synthetic_sequences` writes a log of a given size (Zipf item popularity, a heavy-tailed number of interactions per
  user) chunk by chunk, for scale tests and benchmarks.

Memory is bounded by the chunk (`users_per_chunk` users and their windows), not by the log.
"""

from __future__ import annotations

from typing import Dict, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, Features, IterableDataset, List, Value

from .tokenized import encode_windows

SEQUENCE_FEATURES = Features({"user_id": Value("string"), "item_ids": List(Value("string"))})


def _windows_of_chunk(
    item_rows: np.ndarray, offsets: np.ndarray, max_history_items: int, session_length: int, min_length: int
):
    """Training windows of a chunk of users as ragged catalogue rows.

    Args:
        item_rows: ``[I]`` catalogue row of every interaction of the chunk, users one after another.
        offsets: ``[U + 1]`` user ``u`` owns ``item_rows[offsets[u]:offsets[u + 1]]``.
    Returns:
        ``(history, history_offsets, target, target_offsets)`` for every window, users in order and each user's
        windows by position, as ``build_session_samples(leave_one_out_split(...))["train"]`` orders them.
    """
    lengths = np.diff(offsets)
    train_lengths = np.where(lengths >= min_length, lengths - 2, lengths)  # the leave-one-out cut
    windows_per_user = np.maximum(train_lengths - 1, 0)  # one window per position t >= 1
    user = np.repeat(np.arange(len(lengths)), windows_per_user)
    first_window = np.repeat(np.cumsum(windows_per_user) - windows_per_user, windows_per_user)
    position = np.arange(len(user)) - first_window + 1  # t, the first target position
    start = offsets[:-1][user]
    history_begin = start + np.maximum(position - max_history_items, 0)
    history_end = start + position
    target_end = start + np.minimum(position + session_length, train_lengths[user])

    def ragged(begin: np.ndarray, end: np.ndarray):
        sizes = end - begin
        row_offsets = np.concatenate([[0], np.cumsum(sizes)])
        flat = np.arange(row_offsets[-1]) - np.repeat(row_offsets[:-1], sizes) + np.repeat(begin, sizes)
        return item_rows[flat], row_offsets

    history, history_offsets = ragged(history_begin, history_end)
    target, target_offsets = ragged(history_end, target_end)
    return history, history_offsets, target, target_offsets


def stream_training_windows(
    sequences: Dataset,
    tokenizer,
    *,
    max_history_items: int,
    session_length: int,
    users_per_chunk: int = 4096,
    min_length: int = 3,
) -> IterableDataset:
    """The training windows of ``sequences`` as a ``datasets.IterableDataset``, without materialising them.

    Args:
        sequences (`Dataset`): One row per user, ``user_id`` and ``item_ids`` (time order), e.g. a loader's
            ``"sequences"`` split or :func:`synthetic_sequences`; memory-mapped from disk for logs bigger than memory.
        tokenizer: The `SemanticIDTokenizer` of the model (every item must be in its catalogue).
        max_history_items (`int`), session_length (`int`): As in `tokenize_session_samples`.
        users_per_chunk (`int`, defaults to 4096): Users read and windowed at once (the memory bound).
        min_length (`int`, defaults to 3): As in `leave_one_out_split`: shorter users keep all items for training.

    Returns:
        An `IterableDataset` of ``{"input_ids", "labels", "num_history_items"}`` rows, identical to
        ``tokenize_session_samples(build_session_samples(leave_one_out_split(sequences))["train"], ...)`` in the
        same order; shuffle it with ``.shuffle(seed=..., buffer_size=...)``. Its ``.n_shards`` is the number of
        chunks, so the Trainer's processes (and DataLoader workers) each take their own chunks.

    Raises:
        ValueError: an item id outside the tokenizer's catalogue (the error names it and the user).
    """
    for name, value in (
        ("max_history_items", max_history_items),
        ("session_length", session_length),
        ("users_per_chunk", users_per_chunk),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}={value!r} is invalid; pass an integer >= 1.")
    missing = [name for name in ("user_id", "item_ids") if name not in sequences.column_names]
    if missing:
        raise ValueError(f"sequences needs 'user_id' and 'item_ids' columns; {missing} missing.")
    item_tokens = tokenizer.item_tokens.numpy().astype(np.int32)
    chunks = [
        (start, min(start + users_per_chunk, len(sequences))) for start in range(0, len(sequences), users_per_chunk)
    ]

    def generate(chunks) -> Iterator[Dict[str, np.ndarray]]:
        catalogue = pa.array(tokenizer.item_ids, pa.string())
        arrow = sequences.with_format("arrow")
        for start, end in chunks:
            table = arrow[start:end]
            lists = table.column("item_ids").combine_chunks()
            rows = pc.index_in(lists.flatten(), value_set=catalogue)
            if rows.null_count:
                position = int(np.flatnonzero(pc.is_null(rows).to_numpy(zero_copy_only=False))[0])
                offsets = lists.offsets.to_numpy() - lists.offsets[0].as_py()
                user = table.column("user_id")[int(np.searchsorted(offsets, position, side="right")) - 1].as_py()
                raise ValueError(
                    f"Unknown item id {lists.flatten()[position].as_py()!r} of user {user!r}: it is not in the "
                    f"tokenizer's catalogue of {len(catalogue)} items. Add it with tokenizer.add_items(...) or drop it."
                )
            offsets = lists.offsets.to_numpy().astype(np.int64) - lists.offsets[0].as_py()
            windows = _windows_of_chunk(
                rows.to_numpy().astype(np.int64), offsets, max_history_items, session_length, min_length
            )
            input_ids, labels, num_history_items = encode_windows(
                item_tokens, *windows, eos=tokenizer.eos_token_id, bos=tokenizer.bos_token_id
            )
            input_offsets, input_values = input_ids.offsets.to_numpy(), input_ids.values.to_numpy()
            label_offsets, label_values = labels.offsets.to_numpy(), labels.values.to_numpy()
            counts = num_history_items.to_numpy()
            for window in range(len(counts)):
                yield {
                    "input_ids": input_values[input_offsets[window] : input_offsets[window + 1]],
                    "labels": label_values[label_offsets[window] : label_offsets[window + 1]],
                    "num_history_items": int(counts[window]),
                }

    # No `features`: with them, datasets 5.2 re-encodes every row's arrays as Python lists (23k vs 109k windows/s
    # on one core); the rows are int32 numpy arrays, which TokenizedSessionCollator takes as they are.
    return IterableDataset.from_generator(generate, gen_kwargs={"chunks": chunks})


def synthetic_sequences(
    num_users: int,
    num_items: int,
    num_interactions: int,
    *,
    zipf_exponent: float = 1.0,
    seed: int = 0,
    cache_dir: Optional[str] = None,
    users_per_chunk: int = 100_000,
) -> Dataset:
    """A synthetic interaction log written to Arrow files on disk, chunk by chunk (memory-mapped when read).

    Items are drawn with Zipf popularity (item ``i`` has weight ``(i + 1) ** -zipf_exponent``; item ids ``"0"`` ...
    in popularity order); interactions per user follow a log-normal law (median about half the mean, a long tail, at
    least 3 so that every user has training, validation and test items), scaled to ``num_interactions`` in all.

    Returns:
        A `Dataset` with ``user_id`` and ``item_ids`` (``num_users`` rows, about ``num_interactions`` items).
    """
    for name, value in (("num_users", num_users), ("num_items", num_items), ("num_interactions", num_interactions)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}={value!r} is invalid; pass an integer >= 1.")
    if num_interactions < 3 * num_users:
        raise ValueError(
            f"num_interactions={num_interactions} is below 3 per user ({3 * num_users}): every user needs a training, "
            "a validation and a test item."
        )
    rng = np.random.default_rng(seed)
    lengths = rng.lognormal(mean=0.0, sigma=1.0, size=num_users)
    lengths = np.maximum(3, np.round(lengths * (num_interactions / lengths.sum()))).astype(np.int64)
    popularity = np.arange(1, num_items + 1, dtype=np.float64) ** -zipf_exponent
    cumulative = np.cumsum(popularity / popularity.sum())

    def generate(seed: int) -> Iterator[dict]:
        chunk_rng = np.random.default_rng(seed)
        for start in range(0, num_users, users_per_chunk):
            sizes = lengths[start : start + users_per_chunk]
            items = np.searchsorted(cumulative, chunk_rng.random(int(sizes.sum())), side="right")
            items = np.minimum(items, num_items - 1).astype(str)
            offsets = np.concatenate([[0], np.cumsum(sizes)])
            for user in range(len(sizes)):
                yield {"user_id": str(start + user), "item_ids": items[offsets[user] : offsets[user + 1]].tolist()}

    kwargs = {"cache_dir": cache_dir} if cache_dir is not None else {}
    return Dataset.from_generator(generate, gen_kwargs={"seed": seed + 1}, features=SEQUENCE_FEATURES, **kwargs)


__all__ = ["stream_training_windows", "synthetic_sequences"]
