"""Samples tokenised once, batches made by padding integer rows.

`build_session_samples` gives `(history, target)` item-id samples; turning item ids into semantic-ID tokens for
every sample of every epoch is wasted work (the per-sample Python collator managed ~3.5k windows/s on one core,
a GPU trains faster than that). So the data path is two steps:

- `tokenize_session_samples` adds integer columns once, vectorised over Arrow (a batched `datasets.map`, cached on
  disk like any `datasets` transform): `input_ids` (the history's codes, newest `max_history_items` items, then
  EOS), `labels` (`BOS c1..cL` per target item for the first `session_length` items, then EOS) and
  `num_history_items` (the key of length-grouped batching);
- `trainers.pretraining.TokenizedSessionCollator` only pads and stacks those rows (no per-sample Python, no
  tokenizer).

The token ids are the tokenizer's own code table, checked once here against the vocabulary: the training step
needs no per-step token-id check (a host synchronisation on an accelerator).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict, Features, List, Value

from .splits import range_indices

TOKENIZED_COLUMNS = ("input_ids", "labels", "num_history_items")


def tokenize_session_samples(
    samples,
    tokenizer,
    *,
    max_history_items: int,
    session_length: int,
    batch_size: int = 10_000,
    num_proc: Optional[int] = None,
    **map_kwargs,
):
    """Add the integer columns `input_ids`, `labels` and `num_history_items` to session samples.

    Same tokens as `tokenizer.encode_history(history, max_items=max_history_items)` and
    `tokenizer.encode_session(target[:session_length])` row by row (a test checks it), computed with numpy over
    Arrow in batches of `batch_size` rows.

    Args:
        samples (`Dataset` or `DatasetDict`): With `history` and `target` item-id list columns
            (`trainers.data.build_session_samples` / `build_time_sessions`).
        tokenizer: The `SemanticIDTokenizer` of the model.
        max_history_items (`int`): Newest history items kept (the model's `config.max_history_items`).
        session_length (`int`): Most target items labelled (the model's `config.session_length`).
        batch_size, num_proc, **map_kwargs: Passed to `datasets.Dataset.map`.

    Returns:
        The same type, with the three columns added (`int32` lists, `int32`).

    Raises:
        ValueError: A sample with an empty history or target, or an item id not in the tokenizer's catalogue
            (the error names the item and the user).
    """
    for name, value in (("max_history_items", max_history_items), ("session_length", session_length)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}={value!r} is invalid; pass an integer >= 1.")
    item_tokens = tokenizer.item_tokens.numpy().astype(np.int32)  # [N, L'] token ids of every catalogue item
    if item_tokens.size and int(item_tokens.max()) >= tokenizer.vocab_size:
        raise ValueError(
            f"The tokenizer's code table holds token ids >= its vocabulary ({tokenizer.vocab_size}); "
            "rebuild the tokenizer."
        )
    encoder = _SampleEncoder(
        pa.array(tokenizer.item_ids, pa.string()),
        item_tokens,
        tokenizer.eos_token_id,
        tokenizer.bos_token_id,
        int(max_history_items),
        int(session_length),
    )

    def add_columns(dataset: Dataset) -> Dataset:
        missing = [name for name in ("history", "target") if name not in dataset.column_names]
        if missing:
            raise ValueError(
                f"tokenize_session_samples needs 'history' and 'target' item-id columns; {missing} "
                f"missing from {dataset.column_names}. Build samples with "
                "trainers.data.build_session_samples(...)."
            )
        features = Features(
            {
                **dataset.features,
                "input_ids": List(Value("int32")),
                "labels": List(Value("int32")),
                "num_history_items": Value("int32"),
            }
        )
        map_kwargs.setdefault("desc", "Tokenising session samples")
        return (
            dataset.with_format("arrow")
            .map(encoder, batched=True, batch_size=batch_size, num_proc=num_proc, features=features, **map_kwargs)
            .with_format(None)
        )

    if isinstance(samples, DatasetDict):
        return DatasetDict({name: add_columns(split) for name, split in samples.items()})
    return add_columns(samples)


class _SampleEncoder:
    """The batched `map` function of `tokenize_session_samples` (a class so that `datasets` can hash it)."""

    def __init__(
        self, catalogue: pa.Array, item_tokens: np.ndarray, eos: int, bos: int, max_items: int, session_length: int
    ):
        self.catalogue, self.item_tokens = catalogue, item_tokens
        self.eos, self.bos, self.max_items, self.session_length = eos, bos, max_items, session_length

    def __call__(self, batch: pa.Table) -> pa.Table:
        users = batch.column("user_id").to_pylist() if "user_id" in batch.column_names else None
        history, history_offsets = self._item_rows(batch.column("history"), users, "history", newest=self.max_items)
        target, target_offsets = self._item_rows(batch.column("target"), users, "target", first=self.session_length)
        input_ids, labels, num_history_items = encode_windows(
            self.item_tokens, history, history_offsets, target, target_offsets, eos=self.eos, bos=self.bos
        )
        return (
            batch.append_column("input_ids", input_ids)
            .append_column("labels", labels)
            .append_column("num_history_items", num_history_items)
        )

    def _item_rows(self, column, users, name: str, newest: Optional[int] = None, first: Optional[int] = None):
        """Catalogue rows of each sample's items (the newest `newest` or the first `first` of them), as a ragged
        array: flat `values` and `offsets` [rows + 1]."""
        lists = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy().astype(np.int64)
        empty = np.flatnonzero(lengths == 0)
        if len(empty):
            who = f" (user {users[empty[0]]!r})" if users else ""
            raise ValueError(
                f"Sample {int(empty[0])} of this batch{who} has an empty {name}: every sample needs at "
                "least one history item and one target item."
            )
        values = pc.index_in(lists.flatten(), value_set=self.catalogue)
        if values.null_count:
            position = int(np.flatnonzero(pc.is_null(values).to_numpy(zero_copy_only=False))[0])
            row = int(np.searchsorted(np.cumsum(lengths), position, side="right"))
            who = f" of user {users[row]!r}" if users else ""
            raise ValueError(
                f"Unknown item id {lists.flatten()[position].as_py()!r} in the {name}{who}: it is not in "
                f"the tokenizer's catalogue of {len(self.catalogue)} items. Add it with "
                "tokenizer.add_items(item_ids, embeddings) or drop it from the data."
            )
        values = values.to_numpy().astype(np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        kept = np.minimum(lengths, newest if newest is not None else first)
        keep_from = starts + lengths - kept if newest is not None else starts  # newest: the row's tail
        flat, offsets = range_indices(keep_from, keep_from + kept)
        return values[flat], offsets


def encode_windows(
    item_tokens: np.ndarray,
    history: np.ndarray,
    history_offsets: np.ndarray,
    target: np.ndarray,
    target_offsets: np.ndarray,
    *,
    eos: int,
    bos: int,
) -> tuple[pa.ListArray, pa.ListArray, pa.Array]:
    """The model columns of windows given as catalogue rows: ``(input_ids, labels, num_history_items)``.

    Args:
        item_tokens: ``[N, L']`` int32, the tokenizer's code table.
        history / target: Flat catalogue rows of every window's history items (the kept ones, oldest first) and
            target items; window ``w`` owns ``history[history_offsets[w]:history_offsets[w + 1]]`` (likewise target).
        eos / bos: The tokenizer's EOS and BOS ids.

    History: the codes of each item, then EOS. Labels: BOS and the codes per target item, then EOS (paper Eq. 3).
    """
    codes_per_item = item_tokens.shape[1]
    input_ids = _rows_with_eos(item_tokens[history].reshape(-1), history_offsets * codes_per_item, eos)
    with_bos = np.concatenate([np.full((len(target), 1), bos, np.int32), item_tokens[target]], axis=1)
    labels = _rows_with_eos(with_bos.reshape(-1), target_offsets * (codes_per_item + 1), eos)
    return input_ids, labels, pa.array(np.diff(history_offsets), pa.int32())


def _rows_with_eos(tokens: np.ndarray, offsets: np.ndarray, eos: int) -> pa.ListArray:
    """Rows `tokens[offsets[i]:offsets[i+1]]`, each followed by `eos`, as an Arrow `list<int32>` array."""
    rows = len(offsets) - 1
    new_offsets = offsets + np.arange(rows + 1)  # one more token per earlier row
    out = np.empty(len(tokens) + rows, dtype=np.int32)
    eos_positions = new_offsets[1:] - 1
    is_token = np.ones(len(out), dtype=bool)
    is_token[eos_positions] = False
    out[is_token] = tokens
    out[eos_positions] = eos
    return pa.ListArray.from_arrays(pa.array(new_offsets.astype(np.int32)), pa.array(out))
