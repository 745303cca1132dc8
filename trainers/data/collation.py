"""What every data collator of the project shares: padding integer rows, and the checks of a batch's columns.

The collators themselves live with what they feed (`trainers.pretraining`, `trainers.alignment.dpo_collator`,
`trainers.alignment.reward_model`); each states its columns once and calls `check_batch_columns`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import chain
from typing import Any, Optional

import numpy as np
import torch


def pad_rows(rows: Sequence[Sequence[int]], pad_value: int, width: Optional[int] = None):
    """Integer rows right-padded with `pad_value` to `width` (default: the longest row).

    Vectorised: the rows are read once into one flat array, no Python loop per row.

    Returns:
        `(padded, mask)`: `[len(rows), width]` long tensor and its `[len(rows), width]` long mask (1 = a real token).
    """
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    longest = int(lengths.max()) if len(lengths) else 0
    width = longest if width is None else width
    if width < longest:
        raise ValueError(f"pad_rows: width={width} is shorter than the longest row ({longest}).")
    flat = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
    mask = np.arange(width)[None, :] < lengths[:, None]
    padded = np.full((len(rows), width), pad_value, dtype=np.int64)
    padded[mask] = flat
    return torch.from_numpy(padded), torch.from_numpy(mask.astype(np.int64))


def pad_labels(rows: Sequence[Sequence[int]], width: Optional[int] = None) -> torch.Tensor:
    """Decoder label rows (token ids) right-padded with -100 (ignored by the loss) to `width` (default: the longest
    row): `[len(rows), width]` long."""
    return pad_rows(rows, -100, width)[0]


def check_batch_columns(features: Sequence[Mapping[str, Any]], columns: Sequence[str], how_to_build: str) -> None:
    """Raise a clear error for an empty batch, or for samples without one of `columns`.

    Args:
        features: The samples a collator was given.
        columns: The columns every sample needs.
        how_to_build: The function that builds such samples, named in the error (e.g.
            ``"trainers.data.build_session_samples(...)"``).
    """
    if not features:
        raise ValueError("Empty batch: the collator was given no samples.")
    missing = [column for column in columns if column not in features[0]]
    if missing:
        raise KeyError(
            f"Samples need the columns {list(columns)}; missing {missing} (the first sample has "
            f"{sorted(features[0])}). Build them with {how_to_build}."
        )
