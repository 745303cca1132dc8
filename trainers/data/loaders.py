"""Loaders that turn real recommendation logs into one `datasets.DatasetDict` schema.

Every loader returns a `DatasetDict` with (at least) two splits:

- `"sequences"`: one row per user, columns `user_id: string` and `item_ids: list[string]` in time order.
  Item ids are always strings, the dataset's original ids. When (and only when) the source has them,
  `timestamps: list[float64]` (unix seconds) and `ratings: list[float32]` are aligned with `item_ids`.
  Users are ordered by the natural order of their ids (numeric when all ids are integers).
- `"items"`: one row per catalogue item, columns `item_id: string` and `text: string` (a short human-readable
  description meant for a text encoder, `""` when the item has no metadata), plus the raw metadata columns.
  The catalogue is the union of the items in the sequences and the items in the metadata file, in the
  natural order of the ids.

`load_recbole` adds a `"users"` split with the user features when a `.user` file exists.
"""

from __future__ import annotations

import csv
import gzip
import html
import json
import logging
import math
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict, Features, List, Value

logger = logging.getLogger(__name__)

BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"

# name -> (loader, sequence file, metadata file), paths relative to `BUNDLED_DIR`.
_BUNDLED_FILES: dict[str, tuple[str, str, str]] = {
    "beauty": ("s3rec", "amazon_beauty/Beauty.txt.gz", "amazon_beauty/Beauty_item_meta_derived.json.gz"),
    "scientific": (
        "inter_json",
        "amazon18_scientific/Scientific.inter.json.gz",
        "amazon18_scientific/Scientific.item.json.gz",
    ),
}
BUNDLED_DATASET_NAMES: tuple[str, ...] = tuple(_BUNDLED_FILES)

# Sentence encoders truncate long inputs anyway (all-MiniLM-L6-v2: 256 word pieces), so longer text only
# costs time; 1,000 characters keeps the title, brand, categories and the start of the description.
MAX_ITEM_TEXT_CHARS = 1000

# Per-interaction columns of the `"sequences"` split, aligned with `item_ids`.
PER_INTERACTION_COLUMNS: tuple[str, ...] = ("item_ids", "timestamps", "ratings")
SEQUENCE_FEATURES: dict[str, Any] = {
    "user_id": Value("string"),
    "item_ids": List(Value("string")),
    "timestamps": List(Value("float64")),
    "ratings": List(Value("float32")),
}

_S3REC_FORMAT = "one line per user: 'user_id item_id item_id ...' (whitespace-separated ids in time order)"
_S3REC_META_FORMAT = 'a JSON object {item_id: {"asin": ..., "attributes": [names, ...]}}'
_INTER_JSON_FORMAT = "a JSON object {user_id: [item_id, ...]} with each user's items in time order"
_ITEM_JSON_FORMAT = 'a JSON object {item_id: {"title": ..., "description": ..., "brand": ..., "categories": ...}}'
_RECBOLE_FORMAT = "a tab-separated RecBole atomic file whose first line is a typed header 'name:type' per column"
_RECBOLE_TYPES = ("token", "float", "token_seq", "float_seq")
_GENERIC_FORMAT = (
    "one interaction per row (CSV, TSV, JSON lines or parquet) with a header naming the user, item and "
    "(optionally) timestamp and rating columns"
)

# Characters that never occur in whitespace-separated id files: seeing one means a CSV or JSON file was
# handed to the wrong loader.
_NOT_IN_S3REC_IDS = re.compile(r"[,;{}\[\]\"']")
_INTEGER_ID = re.compile(r"[+-]?\d+\Z")
_HTML_TAG = re.compile(r"</?[A-Za-z][^<>]*>")  # tag-shaped only: "<> bullet" and "a < b" stay
_COMMA_WITHOUT_SPACE = re.compile(r",(?=\S)")


# ---------------------------------------------------------------------------------------------------------
# Public loaders
# ---------------------------------------------------------------------------------------------------------


def load_s3rec(sequences_path: str | Path, item_meta_path: str | Path | None = None) -> DatasetDict:
    """Load an S3-Rec sequence file (e.g. Amazon `Beauty.txt`) and optional attribute-name metadata.

    Args:
        sequences_path (`str` or `Path`):
            File with one line per user, `user_id item_id item_id ...`, items in time order. Plain text or
            gzip (`.gz`).
        item_meta_path (`str` or `Path`, *optional*):
            JSON (or `.json.gz`) object `{item_id: {"asin": ..., "attributes": [names, ...]}}`, such as
            `Beauty_item_meta_derived.json`. An item's text is its attribute names joined by commas (the
            placeholder brand `"Unknown"` is left out of the text; the raw `attributes` column keeps it).

    Returns:
        `DatasetDict` with `"sequences"` (`user_id`, `item_ids`; the format has order only, no timestamps)
        and `"items"` (`item_id`, `text`, `asin`, `attributes`).
    """
    path = _require_file(sequences_path, f"S3-Rec sequence file with {_S3REC_FORMAT}")
    user_of_row: list[str] = []
    item_of_row: list[str] = []
    first_line_of_user: dict[str, int] = {}
    with _open_text(path) as file:
        for line_number, line in enumerate(file, start=1):
            fields = line.split()
            if not fields:
                continue  # blank lines carry no data
            bad = next((field for field in fields if _NOT_IN_S3REC_IDS.search(field)), None)
            if bad is not None:
                raise ValueError(
                    f"{path}, line {line_number}: malformed id {bad!r}. Expected {_S3REC_FORMAT}; for CSV/TSV "
                    "logs use `load_interactions`, for JSON `{user: [items]}` use `load_inter_json`."
                )
            user, *items = fields
            if not first_line_of_user and _looks_like_header(fields):
                raise ValueError(
                    f"{path}, line {line_number}: {line.strip()[:60]!r} looks like a header line, which S3-Rec files "
                    f"do not have (it would become a user named {user!r}). Remove it. Expected {_S3REC_FORMAT}."
                )
            if not items:
                raise ValueError(
                    f"{path}, line {line_number}: user {user!r} has zero items. Expected {_S3REC_FORMAT}; "
                    "remove the line or add the user's items."
                )
            if user in first_line_of_user:
                raise ValueError(
                    f"{path}, line {line_number}: user {user!r} already appeared on line "
                    f"{first_line_of_user[user]}. Expected {_S3REC_FORMAT} with one line per user; merge the lines."
                )
            first_line_of_user[user] = line_number
            user_of_row.extend([user] * len(items))
            item_of_row.extend(items)
    if not first_line_of_user:
        raise ValueError(f"{path} holds no users. Expected {_S3REC_FORMAT}.")
    sequences = _group_interactions(user_of_row, item_of_row)

    metadata = None
    if item_meta_path is not None:
        metadata = _load_attribute_metadata(item_meta_path)
    items = _build_items(item_of_row, metadata, _attribute_names_text, source=str(item_meta_path))
    return DatasetDict({"sequences": sequences, "items": items})


def load_inter_json(inter_path: str | Path, item_path: str | Path | None = None) -> DatasetDict:
    """Load a `{user_id: [item_id, ...]}` JSON file (e.g. Amazon 2018 `Scientific.inter.json`).

    Args:
        inter_path (`str` or `Path`):
            JSON (or `.json.gz`) object mapping each user id to its item ids in time order.
        item_path (`str` or `Path`, *optional*):
            JSON (or `.json.gz`) object `{item_id: {"title", "description", "brand", "categories"}}`. An item's
            text is `"title. brand. categories. description"` (HTML removed, at most `MAX_ITEM_TEXT_CHARS`).

    Returns:
        `DatasetDict` with `"sequences"` (`user_id`, `item_ids`; order only, no timestamps) and `"items"`
        (`item_id`, `text` and the raw metadata fields).
    """
    path = _require_file(inter_path, f"interaction JSON file: {_INTER_JSON_FORMAT}")
    raw = _load_json(path, _INTER_JSON_FORMAT, key_kind="user id")
    if not isinstance(raw, dict):
        raise ValueError(f"{path} holds a JSON {type(raw).__name__}. Expected {_INTER_JSON_FORMAT}.")
    if not raw:
        raise ValueError(f"{path} holds no users. Expected {_INTER_JSON_FORMAT}.")
    user_of_row: list[str] = []
    item_of_row: list[str] = []
    for user, items in raw.items():
        if not isinstance(items, list):
            raise ValueError(
                f"{path}: user {user!r} maps to a JSON {type(items).__name__}. Expected {_INTER_JSON_FORMAT}."
            )
        if not items:
            raise ValueError(
                f"{path}: user {user!r} has zero items. Expected {_INTER_JSON_FORMAT}; drop the user or add items."
            )
        user_of_row.extend([user] * len(items))
        item_of_row.extend(_as_id(item, f"{path}, user {user!r}") for item in items)
    sequences = _group_interactions(user_of_row, item_of_row)

    metadata = None
    if item_path is not None:
        metadata_path = _require_file(item_path, f"item metadata JSON file: {_ITEM_JSON_FORMAT}")
        metadata = _load_json_records(metadata_path, _ITEM_JSON_FORMAT)
    items = _build_items(item_of_row, metadata, _product_text, source=str(item_path))
    return DatasetDict({"sequences": sequences, "items": items})


def load_recbole(directory_or_prefix: str | Path) -> DatasetDict:
    """Load RecBole atomic files `X.inter` (required), `X.item` and `X.user` (optional), e.g. MovieLens-100K.

    The files are tab-separated with a typed header `name:type` (`token`, `float`, `token_seq`, `float_seq`);
    `_seq` values are space-separated lists. `.gz` copies (`X.inter.gz`) are read as well.

    Args:
        directory_or_prefix (`str` or `Path`):
            A directory holding `<dirname>.inter` (or a single `*.inter`), or a path prefix `dir/X` for
            `dir/X.inter`; the path of the `.inter` file itself also works.

    Returns:
        `DatasetDict` with
        - `"sequences"`: `user_id`, `item_ids` and, when the `.inter` file has the RecBole fields `timestamp`
          and `rating`, `timestamps` and `ratings`. Each user's interactions are sorted by
          (timestamp, original row order): stable, so bursts with identical timestamps keep the file order.
        - `"items"`: `item_id`, `text` (MovieLens: `"title (year). genres"`) and the raw `.item` columns.
        - `"users"` (only with a `.user` file): `user_id` and the raw user features (MovieLens: age, gender,
          occupation, zip_code).
    """
    inter_path, prefix = _find_recbole_inter(directory_or_prefix)
    inter = _read_atomic_file(inter_path)
    missing = [name for name in ("user_id", "item_id") if name not in inter.columns]
    if missing:
        raise ValueError(
            f"{inter_path} lacks the RecBole field(s) {missing}; fields found: {list(inter.columns)}. "
            "RecBole interaction files name their user and item columns 'user_id:token' and 'item_id:token'."
        )
    unused = [name for name in inter.columns if name not in ("user_id", "item_id", "timestamp", "rating")]
    if unused:
        logger.warning("%s: ignoring %d column(s) not part of the sequence schema: %s", inter_path, len(unused), unused)
    timestamps = _required_floats(inter, "timestamp") if "timestamp" in inter.columns else None
    ratings = _required_floats(inter, "rating") if "rating" in inter.columns else None
    users = [_as_id(value, inter.where(row, "user_id")) for row, value in enumerate(inter.columns["user_id"])]
    items = [_as_id(value, inter.where(row, "item_id")) for row, value in enumerate(inter.columns["item_id"])]
    if not users:
        raise ValueError(f"{inter_path} holds no interactions. Expected {_RECBOLE_FORMAT} and one row per rating.")
    splits = {"sequences": _group_interactions(users, items, timestamps=timestamps, ratings=ratings)}

    item_path = _existing_atomic_file(prefix, ".item")
    metadata = _atomic_records(item_path, "item_id") if item_path is not None else None
    splits["items"] = _build_items(items, metadata, _recbole_item_text, source=str(item_path))

    user_path = _existing_atomic_file(prefix, ".user")
    if user_path is not None:
        user_features = _atomic_records(user_path, "user_id")
        without_features = set(users) - set(user_features)
        if without_features:
            logger.warning(
                "%d of %d users with interactions have no row in %s; they are absent from the 'users' split.",
                len(without_features),
                len(set(users)),
                user_path,
            )
        ordered = natural_order(user_features)
        columns: dict[str, list[Any]] = {"user_id": ordered}
        for name in _union_of_keys(user_features.values(), exclude=("user_id",)):
            columns[name] = [user_features[user].get(name) for user in ordered]
        splits["users"] = Dataset.from_dict(columns)
    return DatasetDict(splits)


def load_interactions(
    path: str | Path,
    *,
    user_column: str = "user_id",
    item_column: str = "item_id",
    timestamp_column: str | None = "timestamp",
    rating_column: str | None = None,
    items_path: str | Path | None = None,
    item_text_columns: Sequence[str] | None = None,
    sep: str | None = None,
) -> DatasetDict:
    """Load the generic format for your own logs: one interaction per row (see `docs/data_format.md`).

    The format is detected from the extension: `.csv`, `.tsv`/`.tab`, `.jsonl`/`.ndjson`/`.json` (one JSON
    object per line, or one JSON array of objects) and `.parquet`; text formats may be gzipped (`.csv.gz`).
    Delimited files need a header line. Rows are grouped by user and sorted by timestamp; the sort is stable,
    so equal timestamps keep the file order.

    Args:
        path (`str` or `Path`): The interaction file.
        user_column (`str`, defaults to `"user_id"`): Column holding the user id.
        item_column (`str`, defaults to `"item_id"`): Column holding the item id (also the id column of
            `items_path`).
        timestamp_column (`str`, *optional*, defaults to `"timestamp"`): Column holding unix seconds or ISO-8601
            date-times (naive ones are read as UTC). `None` when the log has no timestamps: rows then keep the
            file order and no `timestamps` column is produced.
        rating_column (`str`, *optional*): Column holding an explicit rating (kept as `ratings`).
        items_path (`str` or `Path`, *optional*): Item metadata file in any of the same formats, one row per
            item, with the item id in `item_column`.
        item_text_columns (`Sequence[str]`, *optional*): Columns of `items_path` joined with `". "` into the
            item `text`; by default every column except the id, in file order.
        sep (`str`, *optional*): Delimiter of delimited text files (interactions and items); by default `","`
            for `.csv` and tab for `.tsv`. Needed for other extensions (e.g. `sep="::"` for `.dat`).

    Returns:
        `DatasetDict` with `"sequences"` (`user_id`, `item_ids`, plus `timestamps` / `ratings` when their
        columns are given) and `"items"` (`item_id`, `text` and the raw metadata columns).
    """
    if item_text_columns is not None and items_path is None:
        raise ValueError(
            f"item_text_columns={list(item_text_columns)!r} needs items_path=... (the item metadata file the "
            "columns belong to)."
        )
    source = _require_file(path, f"interaction file with {_GENERIC_FORMAT}")
    table = _read_table(source, sep)
    wanted = {
        "user_column": (user_column, "the user id"),
        "item_column": (item_column, "the item id"),
        "timestamp_column": (
            timestamp_column,
            "the interaction time (or pass timestamp_column=None to keep the file order)",
        ),
        "rating_column": (rating_column, "the rating"),
    }
    _check_columns(table, wanted)
    used = {column for column, _ in wanted.values() if column is not None}
    unused = [name for name in table.columns if name not in used]
    if unused:
        logger.warning("%s: ignoring %d column(s) not part of the sequence schema: %s", source, len(unused), unused)

    users = [_as_id(value, table.where(row, user_column)) for row, value in enumerate(table.columns[user_column])]
    items = [_as_id(value, table.where(row, item_column)) for row, value in enumerate(table.columns[item_column])]
    if not users:
        raise ValueError(f"{source} holds no interactions. Expected {_GENERIC_FORMAT}.")
    timestamps = None
    if timestamp_column is not None:
        timestamps = [
            _as_timestamp(value, table.where(row, timestamp_column))
            for row, value in enumerate(table.columns[timestamp_column])
        ]
    if timestamps:
        _check_timestamp_units(timestamps, source)
    ratings = None
    if rating_column is not None:
        ratings = [
            _as_float(value, table.where(row, rating_column)) for row, value in enumerate(table.columns[rating_column])
        ]
    sequences = _group_interactions(users, items, timestamps=timestamps, ratings=ratings)

    metadata = None
    if items_path is not None:
        metadata, item_text_columns = _read_item_table(items_path, item_column, item_text_columns, sep)
    text_columns = tuple(item_text_columns or ())
    items_dataset = _build_items(
        items, metadata, lambda record: _join_text_parts(record.get(name) for name in text_columns), str(items_path)
    )
    return DatasetDict({"sequences": sequences, "items": items_dataset})


def load_bundled(name: str) -> DatasetDict:
    """Load a dataset shipped with the package (gzipped, under `trainers/data/bundled/`).

    Args:
        name (`str`):
            `"beauty"` (Amazon 2014 Beauty 5-core, S3-Rec/TIGER leave-one-out version: 22,363 users,
            12,101 items) or `"scientific"` (Amazon 2018 Industrial & Scientific 5-core: 8,317 users, 4,344
            items). Case-insensitive.

    Returns:
        The `DatasetDict` of `load_s3rec` (beauty) or `load_inter_json` (scientific).
    """
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in _BUNDLED_FILES:
        raise ValueError(
            f"Unknown bundled dataset {name!r}. Valid names: {list(BUNDLED_DATASET_NAMES)}. "
            "MovieLens is not bundled (licence): use load_recbole('path/to/ml-100k')."
        )
    loader, sequences_file, metadata_file = _BUNDLED_FILES[key]
    sequences_path, metadata_path = BUNDLED_DIR / sequences_file, BUNDLED_DIR / metadata_file
    if loader == "s3rec":
        return load_s3rec(sequences_path, metadata_path)
    return load_inter_json(sequences_path, metadata_path)


NAMED_DATASETS = ("beauty", "scientific", "ml-100k", "s3rec", "inter-json", "recbole")


def load_named_dataset(
    dataset: str, data_path: str | Path | None = None, item_path: str | Path | None = None
) -> DatasetDict:
    """One entry point for the example scripts: a bundled name (`beauty`, `scientific`), or a format name with
    `data_path`: `ml-100k` / `recbole` (RecBole atomic files), `s3rec` (`user item item ...` lines),
    `inter-json` (`{user: [items]}` JSON), each with an optional item-metadata file."""
    if dataset in BUNDLED_DATASET_NAMES:
        return load_bundled(dataset)
    if dataset not in NAMED_DATASETS:
        raise ValueError(f"Unknown dataset {dataset!r}; choose one of {', '.join(NAMED_DATASETS)}.")
    if data_path is None:
        raise ValueError(
            f"dataset {dataset!r} needs a data path (--data_path); only {', '.join(BUNDLED_DATASET_NAMES)} are bundled."
        )
    if dataset in ("ml-100k", "recbole"):
        return load_recbole(data_path)
    if dataset == "s3rec":
        return load_s3rec(data_path, item_path)
    return load_inter_json(data_path, item_path)


def describe(dataset_dict: DatasetDict) -> dict[str, Any]:
    """Small statistics of a loaded dataset, for examples and logs.

    Args:
        dataset_dict (`DatasetDict`): The output of one of the loaders (needs a `"sequences"` split).

    Returns:
        `dict` with `users`, `items` (catalogue size), `interacted_items`, `interactions`, `mean_length`,
        `median_length`, `min_length`, `max_length`, `items_with_text`, `has_timestamps` and `has_ratings`.
    """
    if "sequences" not in dataset_dict:
        raise KeyError(f"describe() needs the 'sequences' split of a loader's output; got splits {list(dataset_dict)}.")
    sequences = dataset_dict["sequences"]
    item_lists = sequences.with_format("arrow")[:].column("item_ids")
    lengths = np.asarray(pc.list_value_length(item_lists).to_numpy(zero_copy_only=False), dtype=np.int64)
    interacted = len(pc.unique(pc.list_flatten(item_lists))) if len(lengths) else 0
    stats: dict[str, Any] = {
        "users": sequences.num_rows,
        "items": dataset_dict["items"].num_rows if "items" in dataset_dict else interacted,
        "interacted_items": interacted,
        "interactions": int(lengths.sum()),
        "mean_length": float(lengths.mean()) if len(lengths) else 0.0,
        "median_length": float(np.median(lengths)) if len(lengths) else 0.0,
        "min_length": int(lengths.min()) if len(lengths) else 0,
        "max_length": int(lengths.max()) if len(lengths) else 0,
        "has_timestamps": "timestamps" in sequences.column_names,
        "has_ratings": "ratings" in sequences.column_names,
    }
    if "items" in dataset_dict:
        texts = dataset_dict["items"].with_format("arrow")[:].column("text")
        stats["items_with_text"] = int(pc.sum(pc.greater(pc.utf8_length(texts), 0)).as_py() or 0)
    return stats


def index_items(item_ids: Iterable[str], start: int = 0) -> dict[str, int]:
    """``{item_id: start + position}`` for a catalogue (``start=1`` keeps 0 free for padding).

    Raises:
        ValueError: naming repeated ids; each catalogue item must appear once.
    """
    item_ids = list(item_ids)
    index = {item: start + position for position, item in enumerate(item_ids)}
    if len(index) != len(item_ids):
        repeated = [item for item, count in Counter(item_ids).items() if count > 1]
        raise ValueError(f"item_ids must be distinct; {len(repeated)} repeat, e.g. {repeated[:3]}.")
    return index


def natural_order(ids: Iterable[str]) -> list[str]:
    """Sort ids numerically when all of them are integers (`"2" < "10"`), else lexicographically."""
    ids = list(ids)
    if all(_INTEGER_ID.match(item) for item in ids):
        return sorted(ids, key=lambda item: (int(item), item))
    return sorted(ids)


# ---------------------------------------------------------------------------------------------------------
# Shared building blocks: grouping interactions and building the item catalogue
# ---------------------------------------------------------------------------------------------------------


def _group_interactions(
    user_ids: Sequence[str],
    item_ids: Sequence[str],
    timestamps: Sequence[float] | None = None,
    ratings: Sequence[float] | None = None,
) -> Dataset:
    """Group one-row-per-interaction columns into the `"sequences"` split.

    Args:
        user_ids (`Sequence[str]` of length `num_interactions`): User of each interaction.
        item_ids (`Sequence[str]` of length `num_interactions`): Item of each interaction.
        timestamps (`Sequence[float]` of length `num_interactions`, *optional*): Unix seconds; when given,
            each user's interactions are sorted by (timestamp, row order), otherwise they keep the row order.
        ratings (`Sequence[float]` of length `num_interactions`, *optional*): Explicit ratings.

    Returns:
        `Dataset` with one row per user (natural order of user ids): `user_id`, `item_ids` and, when given,
        `timestamps` and `ratings`, each list of length `num_items_of_user`.
    """
    num_interactions = len(user_ids)
    ordered_users = natural_order(dict.fromkeys(user_ids))
    rank = {user: position for position, user in enumerate(ordered_users)}
    user_rank = np.fromiter((rank[user] for user in user_ids), dtype=np.int64, count=num_interactions)
    # np.lexsort sorts by the last key first; the row index makes ties explicit (stable order).
    sort_keys = [np.arange(num_interactions)]
    if timestamps is not None:
        sort_keys.append(np.asarray(timestamps, dtype=np.float64))
    sort_keys.append(user_rank)
    order = pa.array(np.lexsort(sort_keys))
    offsets = np.zeros(len(ordered_users) + 1, dtype=np.int64)
    np.cumsum(np.bincount(user_rank, minlength=len(ordered_users)), out=offsets[1:])

    columns = {
        "user_id": pa.array(ordered_users, pa.string()),
        "item_ids": _list_array(offsets, pa.array(item_ids, pa.string()).take(order)),
    }
    if timestamps is not None:
        columns["timestamps"] = _list_array(offsets, pa.array(timestamps, pa.float64()).take(order))
    if ratings is not None:
        columns["ratings"] = _list_array(offsets, pa.array(ratings, pa.float64()).take(order))
    return Dataset.from_dict(columns, features=Features({name: SEQUENCE_FEATURES[name] for name in columns}))


def _list_array(offsets: np.ndarray, values: pa.Array) -> pa.Array:
    """Wrap flat `values` (shape `(offsets[-1],)`) into a list array with `len(offsets) - 1` rows."""
    if offsets[-1] < np.iinfo(np.int32).max:
        return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)
    return pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), values)


def _build_items(
    interacted_item_ids: Iterable[str],
    metadata: Mapping[str, Mapping[str, Any]] | None,
    make_text: Callable[[Mapping[str, Any]], str],
    source: str,
) -> Dataset:
    """Build the `"items"` split: the union of interacted items and metadata items, natural id order.

    Args:
        interacted_item_ids (`Iterable[str]`): Item ids appearing in the sequences (repeats allowed).
        metadata (`Mapping[str, Mapping[str, Any]]`, *optional*): Raw metadata record per item id.
        make_text (`Callable`): Turns one metadata record into the item's text.
        source (`str`): Where the metadata came from, for the warning about items without metadata.

    Returns:
        `Dataset` with `item_id`, `text` and one column per metadata field (`None` where an item lacks it).
    """
    interacted = set(interacted_item_ids)
    metadata = metadata or {}
    catalogue = natural_order(interacted | set(metadata))
    without_metadata = sum(1 for item in interacted if item not in metadata)
    if without_metadata:
        where = f"in {source}" if metadata else "(no item metadata file was given)"
        logger.warning(
            "%d of %d items with interactions have no metadata %s; their text is ''.",
            without_metadata,
            len(interacted),
            where,
        )
    columns: dict[str, Any] = {
        "item_id": pa.array(catalogue, pa.string()),
        "text": pa.array([make_text(metadata[item]) if item in metadata else "" for item in catalogue], pa.string()),
    }
    for field in _union_of_keys(metadata.values(), exclude=()):
        # A raw field named like a schema column keeps its value under a prefixed name.
        name = f"raw_{field}" if field in ("item_id", "text") else field
        values = [metadata[item].get(field) if item in metadata else None for item in catalogue]
        columns[name] = _metadata_column(values, field)
    return Dataset.from_dict(columns)


def _metadata_column(values: list[Any], field: str) -> pa.Array:
    """Arrow array for a raw metadata field; fields with mixed value types are kept as strings."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        logger.warning("Metadata field %r mixes value types; it is stored as strings.", field)
        return pa.array([None if value is None else str(value) for value in values], pa.string())


def _union_of_keys(records: Iterable[Mapping[str, Any]], exclude: Sequence[str]) -> list[str]:
    """Keys of all records in first-seen order, minus `exclude`."""
    keys: dict[str, None] = {}
    for record in records:
        keys.update(dict.fromkeys(record))
    return [key for key in keys if key not in exclude]


# ---------------------------------------------------------------------------------------------------------
# Item text
# ---------------------------------------------------------------------------------------------------------


def _clean_text_part(value: Any) -> str:
    """One metadata value as plain single-spaced text without a trailing period (lists joined by commas)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (list, tuple)):
        value = ", ".join(str(part) for part in value if part is not None)
    text = html.unescape(_HTML_TAG.sub(" ", str(value)))
    return " ".join(text.split()).rstrip(". ")


def _truncate_text(text: str, max_chars: int = MAX_ITEM_TEXT_CHARS) -> str:
    """Cut `text` to at most `max_chars` characters, at a word boundary when one is close."""
    if len(text) <= max_chars:
        return text
    cut = text.rfind(" ", 0, max_chars + 1)
    return text[: cut if cut > max_chars // 2 else max_chars].rstrip()


def _join_text_parts(parts: Iterable[Any]) -> str:
    """Join cleaned non-empty parts with `". "` and truncate."""
    return _truncate_text(". ".join(part for part in map(_clean_text_part, parts) if part))


def _attribute_names_text(record: Mapping[str, Any]) -> str:
    """Beauty: brand and category names joined by commas, without the placeholder brand `"Unknown"`."""
    names = [name for name in record.get("attributes") or () if name and name != "Unknown"]
    return _truncate_text(_clean_text_part(names))


def _product_text(record: Mapping[str, Any]) -> str:
    """Amazon 2018 products: `"title. brand. categories. description"`."""
    categories = record.get("categories")
    if isinstance(categories, str):
        # "A,Test, Measure & Inspect,B": names may contain ", " themselves, so only space out bare commas.
        categories = _COMMA_WITHOUT_SPACE.sub(", ", categories)
    return _join_text_parts([record.get("title"), record.get("brand"), categories, record.get("description")])


def _recbole_item_text(record: Mapping[str, Any]) -> str:
    """RecBole items: `"title (year). genres"` for MovieLens-style fields, else all fields joined."""
    title = _clean_text_part(_join_tokens(record.get("movie_title", record.get("title"))))
    year = _clean_text_part(record.get("release_year", record.get("year")))
    genres = _clean_text_part(record.get("class", record.get("genre")))
    if title:
        return _join_text_parts([f"{title} ({year})" if year else title, genres])
    return _join_text_parts(_join_tokens(value) for key, value in record.items() if key != "item_id")


def _join_tokens(value: Any) -> Any:
    """RecBole `token_seq` titles are split on spaces; put the words back together."""
    return " ".join(value) if isinstance(value, list) else value


# ---------------------------------------------------------------------------------------------------------
# Files: opening, JSON, RecBole atomic files and the generic tables
# ---------------------------------------------------------------------------------------------------------


def _require_file(path: str | Path, expected: str) -> Path:
    """Return `path` as a `Path`, or raise `FileNotFoundError` saying which file was expected there."""
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        reason = "is a directory" if resolved.is_dir() else "does not exist"
        raise FileNotFoundError(f"{resolved} {reason}: expected the {expected}.")
    return resolved


def _open_text(path: Path) -> "_TextFile":
    """Open a UTF-8 text file, transparently gunzipping `.gz` files (byte-order marks are dropped). Reading errors
    name the file and line (`_TextFile`)."""
    if path.suffix == ".gz":
        return _TextFile(path, gzip.open(path, "rt", encoding="utf-8-sig", newline=""))
    return _TextFile(path, open(path, encoding="utf-8-sig", newline=""))


class _TextFile:
    """A text file whose decoding and decompression errors name the file and line: Python's `UnicodeDecodeError`,
    `EOFError` (a truncated `.gz`) and `gzip.BadGzipFile` name neither."""

    _ERRORS = (UnicodeDecodeError, EOFError, gzip.BadGzipFile, zlib.error)

    def __init__(self, path: Path, file: TextIO):
        self.path, self.file, self.line_number = path, file, 0

    def __enter__(self) -> "_TextFile":
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()

    def _error(self, error: Exception) -> ValueError:
        if isinstance(error, UnicodeDecodeError):
            line_number, line = self._first_undecodable_line()
            return ValueError(
                f"{self.path}, line {line_number}: not UTF-8 text ({error.reason}: {line[:60]!r}). Re-save the file "
                "as UTF-8 (e.g. iconv -f latin1 -t utf-8)."
            )
        return ValueError(
            f"{self.path}: truncated or corrupted gzip data after line {self.line_number} "
            f"({type(error).__name__}: {error}). Copy or download the file again."
        )

    def _first_undecodable_line(self) -> tuple[int, bytes]:
        """The first line that is not UTF-8 (text reads decode in blocks, so the failing read's line is not it)."""
        opener = gzip.open if self.path.suffix == ".gz" else open
        with opener(self.path, "rb") as raw:
            for line_number, line in enumerate(raw, start=1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError:
                    return line_number, line
        return self.line_number + 1, b""

    def __iter__(self) -> Iterator[str]:
        try:
            for line in self.file:
                self.line_number += 1
                yield line
        except self._ERRORS as error:
            raise self._error(error) from error

    def readline(self) -> str:
        try:
            line = self.file.readline()
        except self._ERRORS as error:
            raise self._error(error) from error
        self.line_number += 1
        return line

    def read(self, *args) -> str:
        try:
            return self.file.read(*args)
        except self._ERRORS as error:
            raise self._error(error) from error


class _DuplicateKeyError(ValueError):
    """Raised while parsing JSON when an object repeats a key (the stdlib would silently keep the last)."""


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for key, value in pairs:
        if key in record:
            raise _DuplicateKeyError(key)
        record[key] = value
    return record


def _load_json(path: Path, expected: str, key_kind: str) -> Any:
    """Parse a JSON file, failing with the file, line and expected format on bad JSON or repeated keys."""
    try:
        with _open_text(path) as file:
            return json.load(file, object_pairs_hook=_reject_duplicate_keys)
    except _DuplicateKeyError as error:
        raise ValueError(
            f"{path}: duplicate {key_kind} {error.args[0]!r} (a JSON key appears twice, the second would silently "
            f"replace the first). Expected {expected} with unique keys; merge the entries."
        ) from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}, line {error.lineno}: invalid JSON ({error.msg}). Expected {expected}.") from error


def _load_json_records(path: Path, expected: str) -> dict[str, dict[str, Any]]:
    """Load `{item_id: {field: value}}` metadata, checking that every value is an object."""
    raw = _load_json(path, expected, key_kind="item id")
    if not isinstance(raw, dict):
        raise ValueError(f"{path} holds a JSON {type(raw).__name__}. Expected {expected}.")
    for item, record in raw.items():
        if not isinstance(record, dict):
            raise ValueError(
                f"{path}: item {item!r} maps to a JSON {type(record).__name__}, not an object. Expected {expected}."
            )
    return raw


def _load_attribute_metadata(path: str | Path) -> dict[str, dict[str, Any]]:
    """Load S3-Rec attribute-name metadata (`Beauty_item_meta_derived.json`)."""
    source = _require_file(path, f"item metadata JSON file: {_S3REC_META_FORMAT}")
    raw = _load_json(source, _S3REC_META_FORMAT, key_kind="item id")
    if not isinstance(raw, dict):
        raise ValueError(f"{source} holds a JSON {type(raw).__name__}. Expected {_S3REC_META_FORMAT}.")
    for item, record in raw.items():
        if not isinstance(record, dict) or not isinstance(record.get("attributes", []), list):
            hint = (
                " (this looks like Beauty_item2attributes.json, which holds attribute ids; use "
                "Beauty_item_meta_derived.json for names)"
                if isinstance(record, list)
                else ""
            )
            raise ValueError(f"{source}: item {item!r} maps to {record!r}{hint}. Expected {_S3REC_META_FORMAT}.")
    return raw


@dataclass
class _Table:
    """Columns of a file read row by row, with a way to point at the source of any value in error messages."""

    path: Path
    columns: dict[str, list[Any]]
    row_locations: list[str]  # per row: "line 7" / "row 7", where the row sits in the file

    def where(self, row: int, column: str) -> str:
        return f"{self.path}, {self.row_locations[row]}, column {column!r}"


def _find_recbole_inter(directory_or_prefix: str | Path) -> tuple[Path, Path]:
    """Locate `X.inter` (or `X.inter.gz`) and return it with the prefix `dir/X` for the `.item`/`.user` files."""
    given = Path(directory_or_prefix).expanduser()
    if given.is_dir():
        own_name = given / given.name
        if _existing_atomic_file(own_name, ".inter") is not None:
            prefix = own_name
        else:
            inter_files = [*given.glob("*.inter"), *given.glob("*.inter.gz")]
            candidates = sorted({path.name.rsplit(".inter", 1)[0] for path in inter_files})
            if len(candidates) != 1:
                found = "none" if not candidates else f"several: {candidates}"
                raise FileNotFoundError(
                    f"{given}: expected exactly one RecBole interaction file '*.inter' (or '{given.name}.inter'), "
                    f"found {found}. Pass the prefix 'dir/X' of the dataset you want."
                )
            prefix = given / candidates[0]
    else:
        name = given.name
        for suffix in (".inter.gz", ".inter"):
            if name.endswith(suffix):
                given = given.with_name(name[: -len(suffix)])
        prefix = given
    inter_path = _existing_atomic_file(prefix, ".inter")
    if inter_path is None:
        raise FileNotFoundError(
            f"{prefix}.inter does not exist: expected the RecBole interaction file, {_RECBOLE_FORMAT} "
            "(e.g. ml-100k/ml-100k.inter)."
        )
    return inter_path, prefix


def _existing_atomic_file(prefix: Path, suffix: str) -> Path | None:
    """`prefix + suffix` (or its `.gz`) when it exists, else `None`."""
    for candidate in (prefix.with_name(prefix.name + suffix), prefix.with_name(prefix.name + suffix + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def _read_atomic_file(path: Path) -> _Table:
    """Read a RecBole atomic file into typed columns (`token` -> str, `float` -> float, `*_seq` -> list)."""
    with _open_text(path) as file:
        header = file.readline().rstrip("\r\n")
        names, kinds = [], []
        for field in header.split("\t"):
            name, _, kind = field.strip().partition(":")
            if kind not in _RECBOLE_TYPES:
                raise ValueError(
                    f"{path}, line 1: header field {field!r} has no valid type. Expected {_RECBOLE_FORMAT} "
                    f"with types {list(_RECBOLE_TYPES)}, e.g. 'user_id:token<TAB>item_id:token<TAB>rating:float'."
                )
            names.append(name)
            kinds.append(kind)
        columns: dict[str, list[Any]] = {name: [] for name in names}
        locations: list[str] = []
        for line_number, line in enumerate(file, start=2):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != len(names):
                raise ValueError(
                    f"{path}, line {line_number}: {len(fields)} tab-separated fields, expected {len(names)} "
                    f"({header!r}). Expected {_RECBOLE_FORMAT}."
                )
            for name, kind, value in zip(names, kinds, fields):
                try:
                    columns[name].append(_parse_atomic_value(value, kind))
                except ValueError:
                    raise ValueError(
                        f"{path}, line {line_number}, field {name!r}: {value!r} is not a valid {kind}. "
                        f"Expected {_RECBOLE_FORMAT}."
                    ) from None
            locations.append(f"line {line_number}")
    return _Table(path=path, columns=columns, row_locations=locations)


def _parse_atomic_value(value: str, kind: str) -> Any:
    if kind == "token":
        return value
    if kind == "float":
        return float(value) if value.strip() else None
    if kind == "token_seq":
        return value.split()
    return [float(part) for part in value.split()]


def _atomic_records(path: Path, id_field: str) -> dict[str, dict[str, Any]]:
    """Read a `.item`/`.user` atomic file into `{id: {field: value}}`, rejecting repeated ids."""
    table = _read_atomic_file(path)
    if id_field not in table.columns:
        raise ValueError(
            f"{path} lacks the RecBole field {id_field!r}; fields found: {list(table.columns)}. "
            f"Name the id column '{id_field}:token'."
        )
    records: dict[str, dict[str, Any]] = {}
    names = list(table.columns)
    for row in range(len(table.row_locations)):
        key = _as_id(table.columns[id_field][row], table.where(row, id_field))
        if key in records:
            raise ValueError(f"{table.where(row, id_field)}: {id_field} {key!r} appears twice; keep one row per id.")
        records[key] = {name: table.columns[name][row] for name in names if name != id_field}
    return records


def _required_floats(table: _Table, name: str) -> list[float]:
    """A float column of a RecBole `.inter` file, rejecting empty fields (they cannot be sorted or scored)."""
    values = table.columns[name]
    for row, value in enumerate(values):
        if value is None or not isinstance(value, float) or math.isnan(value):
            raise ValueError(
                f"{table.where(row, name)}: missing or non-float {name} {value!r}; declare the field "
                f"'{name}:float' and fill it in on every row."
            )
    return values


def _detect_format(path: Path, sep: str | None) -> tuple[str, str | None]:
    """`("delimited", separator)`, `("jsonl", None)` or `("parquet", None)` from the file extension."""
    name = path.name.lower()
    compressed = name.endswith(".gz")
    extension = Path(name[: -len(".gz")] if compressed else name).suffix
    if extension in (".parquet", ".pq"):
        if compressed:
            raise ValueError(
                f"{path}: gzipped parquet is not supported; parquet compresses itself, save it as .parquet."
            )
        return "parquet", None
    if extension in (".jsonl", ".ndjson", ".json"):
        return "jsonl", None
    if extension == ".csv":
        return "delimited", sep or ","
    if extension in (".tsv", ".tab"):
        return "delimited", sep or "\t"
    if sep is not None:
        return "delimited", sep
    raise ValueError(
        f"{path}: cannot tell the format from the extension {extension!r}. Use .csv, .tsv, .jsonl or .parquet "
        "(text formats may end in .gz), or pass sep=... for another delimited text file."
    )


def _read_table(path: Path, sep: str | None) -> _Table:
    """Read a CSV/TSV/JSON-lines/parquet file into columns of raw values (strings for delimited files)."""
    kind, delimiter = _detect_format(path, sep)
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            columns = pq.read_table(path).to_pydict()
        except pa.ArrowInvalid as error:
            raise ValueError(f"{path}: not a readable parquet file ({error}). Expected {_GENERIC_FORMAT}.") from error
        num_rows = len(next(iter(columns.values()), []))
        return _Table(path, columns, [f"row {row + 1}" for row in range(num_rows)])
    if kind == "jsonl":
        return _read_json_lines(path)
    return _read_delimited(path, delimiter)


def _read_delimited(path: Path, delimiter: str) -> _Table:
    """Read a delimited text file with a header line; every value stays a string."""
    with _open_text(path) as file:
        rows = _delimited_rows(file, delimiter)
        _, header = next(rows, (1, []))
        names = [name.strip() for name in header]
        if not any(names):
            raise ValueError(f"{path}, line 1: no header. Expected {_GENERIC_FORMAT}.")
        if len(set(names)) != len(names):
            raise ValueError(f"{path}, line 1: repeated column names in the header {names}; rename them.")
        columns: dict[str, list[Any]] = {name: [] for name in names}
        locations: list[str] = []
        for line_number, fields in rows:
            if not fields:
                continue  # blank line
            if len(fields) != len(names):
                raise ValueError(
                    f"{path}, line {line_number}: {len(fields)} fields separated by {delimiter!r}, expected "
                    f"{len(names)} ({names}). Expected {_GENERIC_FORMAT}; pass sep=... if the delimiter differs."
                )
            for name, value in zip(names, fields):
                columns[name].append(value)
            locations.append(f"line {line_number}")
    return _Table(path, columns, locations)


def _delimited_rows(file: TextIO, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """Yield `(line_number, fields)`; blank lines give `[]`."""
    if len(delimiter) == 1:
        reader = csv.reader(file, delimiter=delimiter)
        for fields in reader:
            yield reader.line_num, fields  # csv tracks lines of quoted multi-line fields
    else:  # csv handles one-character delimiters only; "::" files (MovieLens-1M) have no quoting anyway
        for line_number, line in enumerate(file, start=1):
            line = line.rstrip("\r\n")
            yield line_number, line.split(delimiter) if line else []


def _read_json_lines(path: Path) -> _Table:
    """Read one JSON object per line (or a single JSON array of objects) into columns."""
    with _open_text(path) as file:
        text = file.read()
    records: list[dict[str, Any]] = []
    locations: list[str] = []
    if text.lstrip().startswith("["):
        try:
            array = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{path}, line {error.lineno}: invalid JSON ({error.msg}). Expected {_GENERIC_FORMAT}."
            ) from error
        for position, record in enumerate(array, start=1):
            records.append(record)
            locations.append(f"record {position}")
    else:
        for line_number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"{path}, line {line_number}: invalid JSON ({error.msg}). Expected one JSON object per line: "
                    f"{_GENERIC_FORMAT}."
                ) from error
            locations.append(f"line {line_number}")
    for record, location in zip(records, locations):
        if not isinstance(record, dict):
            raise ValueError(
                f"{path}, {location}: a JSON {type(record).__name__}, not an object. Expected {_GENERIC_FORMAT}."
            )
    names = _union_of_keys(records, exclude=())
    columns = {name: [record.get(name) for record in records] for name in names}
    return _Table(path, columns, locations)


def _check_columns(table: _Table, wanted: Mapping[str, tuple[str | None, str]]) -> None:
    """Raise when a requested column is absent, naming the columns found and the argument to change."""
    for argument, (column, meaning) in wanted.items():
        if column is not None and column not in table.columns:
            raise ValueError(
                f"{table.path} has no column {column!r} ({argument}={column!r}). Columns found: "
                f"{list(table.columns)}. Pass {argument}='<name>' naming the column that holds {meaning}."
            )


def _read_item_table(
    items_path: str | Path, item_column: str, item_text_columns: Sequence[str] | None, sep: str | None
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Read the generic item metadata file into `{item_id: record}` and the list of text columns."""
    source = _require_file(items_path, f"item metadata file with one row per item and an {item_column!r} column")
    table = _read_table(source, sep)
    _check_columns(table, {"item_column": (item_column, "the item id")})
    if item_text_columns is None:
        text_columns = [name for name in table.columns if name != item_column]
    else:
        text_columns = list(item_text_columns)
        unknown = [name for name in text_columns if name not in table.columns]
        if unknown:
            raise ValueError(
                f"{source} has no column(s) {unknown} (item_text_columns={text_columns!r}). Columns found: "
                f"{list(table.columns)}. Pass item_text_columns=[...] with existing columns."
            )
    records: dict[str, dict[str, Any]] = {}
    names = [name for name in table.columns if name != item_column]
    for row, value in enumerate(table.columns[item_column]):
        item = _as_id(value, table.where(row, item_column))
        if item in records:
            raise ValueError(f"{table.where(row, item_column)}: item {item!r} appears twice; keep one row per item.")
        records[item] = {name: table.columns[name][row] for name in names}
    return records, text_columns


# ---------------------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------------------


_HEADER_WORDS = {"user", "user_id", "userid", "uid", "user_id:token", "item", "item_id", "itemid", "iid", "items"}


def _looks_like_header(fields: Sequence[str]) -> bool:
    """A first line whose first two fields are column names (``user_id item_id ...``) rather than ids."""
    return len(fields) >= 2 and fields[0].lower() in _HEADER_WORDS and fields[1].lower() in _HEADER_WORDS


def _as_id(value: Any, where: str) -> str:
    """A user or item id as a string: strings stay as they are, integers (and integral floats) are printed. Spaces
    around an id are an error: they come from a separator such as ``", "`` and would make ``" B1"`` and ``"B1"`` two
    items."""
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


# Unix seconds pass 1e11 only in the year 5138; milliseconds are above it from 1973 on.
_MILLISECONDS_FROM = 1e11


def _check_timestamp_units(timestamps: Sequence[float], source: Path) -> None:
    """Seconds and milliseconds mixed in one log would sort silently wrong: an error naming both ranges."""
    values = np.asarray(timestamps, dtype=np.float64)
    large = values >= _MILLISECONDS_FROM
    if large.any() and (~large).any() and values[~large].max() > 1e8:  # 1e8 s: 1973; smaller values are not epochs
        raise ValueError(
            f"{source}: timestamps mix seconds (e.g. {values[~large].max():.0f}) and milliseconds (e.g. "
            f"{values[large].min():.0f}); they would sort wrongly. Convert them to one unit."
        )


def _as_float(value: Any, where: str) -> float:
    """A rating as a float; missing or non-numeric values are errors."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
        raise ValueError(f"{where}: {value!r} is not a number. Fill in every rating or pass rating_column=None.")
    return number


def _as_timestamp(value: Any, where: str) -> float:
    """Unix seconds from a number, a numeric string, a `datetime` or an ISO-8601 string (naive = UTC)."""
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
