"""Parsing of single values read from recommendation logs: ids, ratings, timestamps and RecBole typed fields.

Each parser takes the raw value and `where` (file, line and column, used only in the error message) and raises a
`ValueError` that names the place and the fix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

# Field types of RecBole atomic files (`name:type` headers).
RECBOLE_TYPES = ("token", "float", "token_seq", "float_seq")

_HEADER_WORDS = {"user", "user_id", "userid", "uid", "user_id:token", "item", "item_id", "itemid", "iid", "items"}

# Unix seconds pass 1e11 only in the year 5138; milliseconds are above it from 1973 on.
_MILLISECONDS_FROM = 1e11


def looks_like_header(fields: Sequence[str]) -> bool:
    """Whether a first line's first two fields are column names (``user_id item_id ...``) rather than ids.

    Args:
        fields (`Sequence[str]`): The whitespace-separated fields of the line.

    Returns:
        `bool`: `True` when both of the first two fields are usual names of the user and item columns.
    """
    return len(fields) >= 2 and fields[0].lower() in _HEADER_WORDS and fields[1].lower() in _HEADER_WORDS


def as_id(value: Any, where: str) -> str:
    """A user or item id as a string: strings stay as they are, integers (and integral floats) are printed.

    Spaces around an id are an error: they come from a separator such as ``", "`` and would make ``" B1"`` and
    ``"B1"`` two items.

    Args:
        value (`Any`): The raw id.
        where (`str`): Where the value was read, for the error message.

    Returns:
        `str`: The id.

    Raises:
        ValueError: for empty, non-id or space-padded values.
    """
    if isinstance(value, str) and value.strip() != value and value.strip():
        raise ValueError(
            f"{where}: id {value!r} has spaces around it, which would make it another id than {value.strip()!r}. "
            "If the file separates fields with ', ', pass sep=', '; otherwise strip the ids."
        )
    if isinstance(value, str) and value != "":
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # integer ids that went through a float column (e.g. pandas with missing values)
    raise ValueError(f"{where}: invalid id {value!r}. Ids must be non-empty strings or integers; fix or drop the row.")


def check_timestamp_units(timestamps: Sequence[float], source: Path) -> None:
    """Reject a log that mixes seconds and milliseconds, which would sort silently wrong.

    Args:
        timestamps (`Sequence[float]`): The log's timestamps.
        source (`Path`): The log file, for the error message.

    Raises:
        ValueError: naming one value of each unit.
    """
    values = np.asarray(timestamps, dtype=np.float64)
    large = values >= _MILLISECONDS_FROM
    if large.any() and (~large).any() and values[~large].max() > 1e8:  # 1e8 s: 1973; smaller values are not epochs
        raise ValueError(
            f"{source}: timestamps mix seconds (e.g. {values[~large].max():.0f}) and milliseconds (e.g. "
            f"{values[large].min():.0f}); they would sort wrongly. Convert them to one unit."
        )


def as_float(value: Any, where: str) -> float:
    """A rating as a float; missing or non-numeric values are errors.

    Args:
        value (`Any`): The raw rating (a number or a numeric string).
        where (`str`): Where the value was read, for the error message.

    Returns:
        `float`: The rating.
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
        raise ValueError(f"{where}: {value!r} is not a number. Fill in every rating or pass rating_column=None.")
    return number


def as_timestamp(value: Any, where: str) -> float:
    """Unix seconds from a number, a numeric string, a `datetime` or an ISO-8601 string (naive = UTC).

    Args:
        value (`Any`): The raw timestamp.
        where (`str`): Where the value was read, for the error message.

    Returns:
        `float`: Unix seconds.
    """
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        moment = None
        number = float(value)
    elif isinstance(value, str) and value.strip():
        try:
            number, moment = float(value), None
        except ValueError:
            try:
                moment = datetime.fromisoformat(value.strip())
            except ValueError:
                raise ValueError(
                    f"{where}: timestamp {value!r} is neither unix seconds nor an ISO-8601 date-time. "
                    "Convert it, or pass timestamp_column=None to keep the file order."
                ) from None
    else:
        raise ValueError(
            f"{where}: missing timestamp {value!r}. Fill in every timestamp, or pass timestamp_column=None to keep "
            "the file order."
        )
    if moment is not None:
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        number = moment.timestamp()
    if not math.isfinite(number):
        raise ValueError(f"{where}: timestamp {value!r} is not finite; fill in a real time.")
    return number


def parse_atomic_value(value: str, kind: str) -> Any:
    """One field of a RecBole atomic file, by its declared type.

    Args:
        value (`str`): The raw field text.
        kind (`str`): One of `RECBOLE_TYPES`.

    Returns:
        `str` for `token`, `float` (or `None` when empty) for `float`, `list[str]` for `token_seq` and
        `list[float]` for `float_seq` (space-separated).

    Raises:
        ValueError: when a float field does not parse.
    """
    if kind == "token":
        return value
    if kind == "float":
        return float(value) if value.strip() else None
    if kind == "token_seq":
        return value.split()
    return [float(part) for part in value.split()]
