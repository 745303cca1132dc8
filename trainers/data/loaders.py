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

This module holds the public loaders and the building of these splits; reading files is in `readers`, parsing
ids, ratings and timestamps in `values`, and the item text in `item_text`.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict, Features, List, Value

from .item_text import MAX_ITEM_TEXT_CHARS as MAX_ITEM_TEXT_CHARS  # re-exported: the item text length limit
from .item_text import attribute_names_text, join_text_parts, product_text, recbole_item_text
from .readers import (
    GENERIC_FORMAT,
    RECBOLE_FORMAT,
    atomic_records,
    check_columns,
    existing_atomic_file,
    find_recbole_inter,
    load_attribute_metadata,
    load_json,
    load_json_records,
    open_text,
    read_atomic_file,
    read_item_table,
    read_table,
    require_file,
    required_floats,
    union_of_keys,
)
from .values import as_float, as_id, as_timestamp, check_timestamp_units, looks_like_header

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

# Per-interaction columns of the `"sequences"` split, aligned with `item_ids`.
PER_INTERACTION_COLUMNS: tuple[str, ...] = ("item_ids", "timestamps", "ratings")
SEQUENCE_FEATURES: dict[str, Any] = {
    "user_id": Value("string"),
    "item_ids": List(Value("string")),
    "timestamps": List(Value("float64")),
    "ratings": List(Value("float32")),
}

_S3REC_FORMAT = "one line per user: 'user_id item_id item_id ...' (whitespace-separated ids in time order)"
_INTER_JSON_FORMAT = "a JSON object {user_id: [item_id, ...]} with each user's items in time order"
_ITEM_JSON_FORMAT = 'a JSON object {item_id: {"title": ..., "description": ..., "brand": ..., "categories": ...}}'

# Characters that never occur in whitespace-separated id files: seeing one means a CSV or JSON file was
# handed to the wrong loader.
_NOT_IN_S3REC_IDS = re.compile(r"[,;{}\[\]\"']")
_INTEGER_ID = re.compile(r"[+-]?\d+\Z")


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
    path = require_file(sequences_path, f"S3-Rec sequence file with {_S3REC_FORMAT}")
    user_of_row: list[str] = []
    item_of_row: list[str] = []
    first_line_of_user: dict[str, int] = {}
    with open_text(path) as file:
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
            if not first_line_of_user and looks_like_header(fields):
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
        metadata = load_attribute_metadata(item_meta_path)
    items = _build_items(item_of_row, metadata, attribute_names_text, source=str(item_meta_path))
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
    path = require_file(inter_path, f"interaction JSON file: {_INTER_JSON_FORMAT}")
    raw = load_json(path, _INTER_JSON_FORMAT, key_kind="user id")
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
        item_of_row.extend(as_id(item, f"{path}, user {user!r}") for item in items)
    sequences = _group_interactions(user_of_row, item_of_row)

    metadata = None
    if item_path is not None:
        metadata_path = require_file(item_path, f"item metadata JSON file: {_ITEM_JSON_FORMAT}")
        metadata = load_json_records(metadata_path, _ITEM_JSON_FORMAT)
    items = _build_items(item_of_row, metadata, product_text, source=str(item_path))
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
    inter_path, prefix = find_recbole_inter(directory_or_prefix)
    inter = read_atomic_file(inter_path)
    missing = [name for name in ("user_id", "item_id") if name not in inter.columns]
    if missing:
        raise ValueError(
            f"{inter_path} lacks the RecBole field(s) {missing}; fields found: {list(inter.columns)}. "
            "RecBole interaction files name their user and item columns 'user_id:token' and 'item_id:token'."
        )
    unused = [name for name in inter.columns if name not in ("user_id", "item_id", "timestamp", "rating")]
    if unused:
        logger.warning("%s: ignoring %d column(s) not part of the sequence schema: %s", inter_path, len(unused), unused)
    timestamps = required_floats(inter, "timestamp") if "timestamp" in inter.columns else None
    ratings = required_floats(inter, "rating") if "rating" in inter.columns else None
    users = [as_id(value, inter.where(row, "user_id")) for row, value in enumerate(inter.columns["user_id"])]
    items = [as_id(value, inter.where(row, "item_id")) for row, value in enumerate(inter.columns["item_id"])]
    if not users:
        raise ValueError(f"{inter_path} holds no interactions. Expected {RECBOLE_FORMAT} and one row per rating.")
    splits = {"sequences": _group_interactions(users, items, timestamps=timestamps, ratings=ratings)}

    item_path = existing_atomic_file(prefix, ".item")
    metadata = atomic_records(item_path, "item_id") if item_path is not None else None
    splits["items"] = _build_items(items, metadata, recbole_item_text, source=str(item_path))

    user_path = existing_atomic_file(prefix, ".user")
    if user_path is not None:
        user_features = atomic_records(user_path, "user_id")
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
        for name in union_of_keys(user_features.values(), exclude=("user_id",)):
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
    source = require_file(path, f"interaction file with {GENERIC_FORMAT}")
    table = read_table(source, sep)
    wanted = {
        "user_column": (user_column, "the user id"),
        "item_column": (item_column, "the item id"),
        "timestamp_column": (
            timestamp_column,
            "the interaction time (or pass timestamp_column=None to keep the file order)",
        ),
        "rating_column": (rating_column, "the rating"),
    }
    check_columns(table, wanted)
    used = {column for column, _ in wanted.values() if column is not None}
    unused = [name for name in table.columns if name not in used]
    if unused:
        logger.warning("%s: ignoring %d column(s) not part of the sequence schema: %s", source, len(unused), unused)

    users = [as_id(value, table.where(row, user_column)) for row, value in enumerate(table.columns[user_column])]
    items = [as_id(value, table.where(row, item_column)) for row, value in enumerate(table.columns[item_column])]
    if not users:
        raise ValueError(f"{source} holds no interactions. Expected {GENERIC_FORMAT}.")
    timestamps = None
    if timestamp_column is not None:
        timestamps = [
            as_timestamp(value, table.where(row, timestamp_column))
            for row, value in enumerate(table.columns[timestamp_column])
        ]
    if timestamps:
        check_timestamp_units(timestamps, source)
    ratings = None
    if rating_column is not None:
        ratings = [
            as_float(value, table.where(row, rating_column)) for row, value in enumerate(table.columns[rating_column])
        ]
    sequences = _group_interactions(users, items, timestamps=timestamps, ratings=ratings)

    metadata = None
    if items_path is not None:
        metadata, item_text_columns = read_item_table(items_path, item_column, item_text_columns, sep)
    text_columns = tuple(item_text_columns or ())
    items_dataset = _build_items(
        items, metadata, lambda record: join_text_parts(record.get(name) for name in text_columns), str(items_path)
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
        "item_ids": list_array(offsets, pa.array(item_ids, pa.string()).take(order)),
    }
    if timestamps is not None:
        columns["timestamps"] = list_array(offsets, pa.array(timestamps, pa.float64()).take(order))
    if ratings is not None:
        columns["ratings"] = list_array(offsets, pa.array(ratings, pa.float64()).take(order))
    return Dataset.from_dict(columns, features=Features({name: SEQUENCE_FEATURES[name] for name in columns}))


def list_array(offsets: np.ndarray, values: pa.Array) -> pa.Array:
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
    for field in union_of_keys(metadata.values(), exclude=()):
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
