"""Reading the files behind the loaders: plain or gzipped text, JSON, RecBole atomic files and generic tables.

The generic interaction and item tables are read with pyarrow (`pyarrow.csv` for CSV/TSV, `pyarrow.parquet` for
parquet) and JSON Lines with the standard library (see `_read_json_lines` for why). Every reading problem is a
`ValueError` (a missing file: `FileNotFoundError`) that names the file, the line or row when known, and the format
that was expected.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import re
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from .values import RECBOLE_TYPES, as_id, parse_atomic_value

RECBOLE_FORMAT = "a tab-separated RecBole atomic file whose first line is a typed header 'name:type' per column"
GENERIC_FORMAT = (
    "one interaction per row (CSV, TSV, JSON lines or parquet) with a header naming the user, item and "
    "(optionally) timestamp and rating columns"
)
_S3REC_META_FORMAT = 'a JSON object {item_id: {"asin": ..., "attributes": [names, ...]}}'

_GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)
_UTF8_BOM = b"\xef\xbb\xbf"
_LINE_END = re.compile(rb"[\r\n]")


# ---------------------------------------------------------------------------------------------------------
# Opening files
# ---------------------------------------------------------------------------------------------------------


def require_file(path: str | Path, expected: str) -> Path:
    """Check that a file exists.

    Args:
        path (`str` or `Path`): The file.
        expected (`str`): What the file should hold, for the error message.

    Returns:
        `Path`: `path` with `~` expanded.

    Raises:
        FileNotFoundError: saying which file was expected there.
    """
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        reason = "is a directory" if resolved.is_dir() else "does not exist"
        raise FileNotFoundError(f"{resolved} {reason}: expected the {expected}.")
    return resolved


def open_text(path: Path) -> _TextFile:
    """Open a UTF-8 text file, transparently gunzipping `.gz` files (byte-order marks are dropped).

    Args:
        path (`Path`): The file.

    Returns:
        `_TextFile`: A context manager to iterate or read; its reading errors name the file and line.
    """
    if path.suffix == ".gz":
        return _TextFile(path, gzip.open(path, "rt", encoding="utf-8-sig", newline=""))
    return _TextFile(path, open(path, encoding="utf-8-sig", newline=""))


class _TextFile:
    """A text file whose decoding and decompression errors name the file and line: Python's `UnicodeDecodeError`,
    `EOFError` (a truncated `.gz`) and `gzip.BadGzipFile` name neither."""

    _ERRORS = (UnicodeDecodeError, *_GZIP_ERRORS)

    def __init__(self, path: Path, file: TextIO):
        self.path, self.file, self.line_number = path, file, 0

    def __enter__(self) -> _TextFile:
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()

    def _error(self, error: Exception) -> ValueError:
        if isinstance(error, UnicodeDecodeError):
            line_number, line, _ = _first_undecodable_line(self.path) or (self.line_number + 1, b"", "")
            return _not_utf8_error(self.path, line_number, line, error.reason)
        return _gzip_error(self.path, self.line_number, error)

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


def _first_undecodable_line(path: Path) -> tuple[int, bytes, str] | None:
    """`(line number, line, reason)` of the first line of `path` (gunzipped) that is not UTF-8, else `None`.

    Decoders work in blocks, so the line being read when decoding fails is not the bad one: this reads the file
    again line by line.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as raw:
        for line_number, line in enumerate(raw, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as error:
                return line_number, line, error.reason
    return None


def _not_utf8_error(path: Path, line_number: int, line: bytes, reason: str) -> ValueError:
    """The error for a file that is not UTF-8, naming the first bad line."""
    return ValueError(
        f"{path}, line {line_number}: not UTF-8 text ({reason}: {line[:60]!r}). Re-save the file as UTF-8 (e.g. "
        "iconv -f latin1 -t utf-8)."
    )


def _gzip_error(path: Path, lines_read: int, error: Exception) -> ValueError:
    """The error for a `.gz` file that ends early or is not gzip data, with how many lines were read intact."""
    return ValueError(
        f"{path}: truncated or corrupted gzip data after line {lines_read} "
        f"({type(error).__name__}: {error}). Copy or download the file again."
    )


def _read_bytes(path: Path) -> bytes:
    """The bytes of `path`, gunzipped for `.gz` files (a truncated or corrupted one is a `ValueError` naming it)."""
    if path.suffix != ".gz":
        return path.read_bytes()
    chunks: list[bytes] = []
    try:
        with gzip.open(path, "rb") as file:
            while chunk := file.read1(1 << 16):  # small reads: an error loses at most one chunk's line count
                chunks.append(chunk)
    except _GZIP_ERRORS as error:
        raise _gzip_error(path, sum(chunk.count(b"\n") for chunk in chunks), error) from error
    return b"".join(chunks)


# ---------------------------------------------------------------------------------------------------------
# JSON
# ---------------------------------------------------------------------------------------------------------


class _DuplicateKeyError(ValueError):
    """Raised while parsing JSON when an object repeats a key (the stdlib would silently keep the last)."""


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for key, value in pairs:
        if key in record:
            raise _DuplicateKeyError(key)
        record[key] = value
    return record


def load_json(path: Path, expected: str, key_kind: str) -> Any:
    """Parse a JSON file (or `.json.gz`), rejecting objects that repeat a key.

    Args:
        path (`Path`): The file.
        expected (`str`): The expected format, for error messages.
        key_kind (`str`): What the top-level keys are (`"user id"`, `"item id"`), for the duplicate-key error.

    Returns:
        `Any`: The parsed JSON value.

    Raises:
        ValueError: naming the file, the line and the expected format on bad JSON or repeated keys.
    """
    try:
        with open_text(path) as file:
            return json.load(file, object_pairs_hook=_reject_duplicate_keys)
    except _DuplicateKeyError as error:
        raise ValueError(
            f"{path}: duplicate {key_kind} {error.args[0]!r} (a JSON key appears twice, the second would silently "
            f"replace the first). Expected {expected} with unique keys; merge the entries."
        ) from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}, line {error.lineno}: invalid JSON ({error.msg}). Expected {expected}.") from error


def load_json_records(path: Path, expected: str) -> dict[str, dict[str, Any]]:
    """Load `{item_id: {field: value}}` metadata, checking that every value is an object.

    Args:
        path (`Path`): The JSON (or `.json.gz`) file.
        expected (`str`): The expected format, for error messages.

    Returns:
        `dict[str, dict[str, Any]]`: The metadata record of each item id.
    """
    raw = load_json(path, expected, key_kind="item id")
    if not isinstance(raw, dict):
        raise ValueError(f"{path} holds a JSON {type(raw).__name__}. Expected {expected}.")
    for item, record in raw.items():
        if not isinstance(record, dict):
            raise ValueError(
                f"{path}: item {item!r} maps to a JSON {type(record).__name__}, not an object. Expected {expected}."
            )
    return raw


def load_attribute_metadata(path: str | Path) -> dict[str, dict[str, Any]]:
    """Load S3-Rec attribute-name metadata (`Beauty_item_meta_derived.json`).

    Args:
        path (`str` or `Path`): JSON (or `.json.gz`) object `{item_id: {"asin": ..., "attributes": [names, ...]}}`.

    Returns:
        `dict[str, dict[str, Any]]`: The metadata record of each item id.
    """
    source = require_file(path, f"item metadata JSON file: {_S3REC_META_FORMAT}")
    raw = load_json(source, _S3REC_META_FORMAT, key_kind="item id")
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


def union_of_keys(records: Iterable[Mapping[str, Any]], exclude: Sequence[str]) -> list[str]:
    """Keys of all records in first-seen order.

    Args:
        records (`Iterable[Mapping[str, Any]]`): The records.
        exclude (`Sequence[str]`): Keys to leave out.

    Returns:
        `list[str]`: Every key of any record, once, in the order they first appear, minus `exclude`.
    """
    keys: dict[str, None] = {}
    for record in records:
        keys.update(dict.fromkeys(record))
    return [key for key in keys if key not in exclude]


# ---------------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Table:
    """Columns of a file, with a way to point at the source of any value in error messages.

    Attributes:
        path (`Path`): The file.
        columns (`dict[str, list[Any]]`): Column name to values, one per row, in file order.
        row_locations (`list[str]`): Where each row sits in the file: `"line 7"`, `"row 7"`, `"record 7"`.
    """

    path: Path
    columns: dict[str, list[Any]]
    row_locations: list[str]

    def where(self, row: int, column: str) -> str:
        """`"file, line 7, column 'item_id'"`: the place of a value, for error messages."""
        return f"{self.path}, {self.row_locations[row]}, column {column!r}"


# ---------------------------------------------------------------------------------------------------------
# RecBole atomic files
# ---------------------------------------------------------------------------------------------------------


def find_recbole_inter(directory_or_prefix: str | Path) -> tuple[Path, Path]:
    """Locate a RecBole interaction file.

    Args:
        directory_or_prefix (`str` or `Path`): A directory holding `<dirname>.inter` (or a single `*.inter`), a
            path prefix `dir/X` for `dir/X.inter`, or the `.inter` file itself (`.gz` copies count).

    Returns:
        `tuple[Path, Path]`: The `X.inter` (or `X.inter.gz`) file and the prefix `dir/X` of the `.item`/`.user`
        files.
    """
    given = Path(directory_or_prefix).expanduser()
    if given.is_dir():
        own_name = given / given.name
        if existing_atomic_file(own_name, ".inter") is not None:
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
    inter_path = existing_atomic_file(prefix, ".inter")
    if inter_path is None:
        raise FileNotFoundError(
            f"{prefix}.inter does not exist: expected the RecBole interaction file, {RECBOLE_FORMAT} "
            "(e.g. ml-100k/ml-100k.inter)."
        )
    return inter_path, prefix


def existing_atomic_file(prefix: Path, suffix: str) -> Path | None:
    """The atomic file `prefix + suffix` (or its `.gz`) when it exists, else `None`."""
    for candidate in (prefix.with_name(prefix.name + suffix), prefix.with_name(prefix.name + suffix + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def read_atomic_file(path: Path) -> Table:
    """Read a RecBole atomic file.

    Args:
        path (`Path`): A tab-separated file (or `.gz`) with a typed header `name:type` per column.

    Returns:
        `Table`: Typed columns (`token` -> `str`, `float` -> `float` or `None`, `*_seq` -> `list`), rows located
        by line.
    """
    with open_text(path) as file:
        header = file.readline().rstrip("\r\n")
        names, kinds = [], []
        for field in header.split("\t"):
            name, _, kind = field.strip().partition(":")
            if kind not in RECBOLE_TYPES:
                raise ValueError(
                    f"{path}, line 1: header field {field!r} has no valid type. Expected {RECBOLE_FORMAT} "
                    f"with types {list(RECBOLE_TYPES)}, e.g. 'user_id:token<TAB>item_id:token<TAB>rating:float'."
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
                    f"({header!r}). Expected {RECBOLE_FORMAT}."
                )
            for name, kind, value in zip(names, kinds, fields):
                try:
                    columns[name].append(parse_atomic_value(value, kind))
                except ValueError:
                    raise ValueError(
                        f"{path}, line {line_number}, field {name!r}: {value!r} is not a valid {kind}. "
                        f"Expected {RECBOLE_FORMAT}."
                    ) from None
            locations.append(f"line {line_number}")
    return Table(path=path, columns=columns, row_locations=locations)


def atomic_records(path: Path, id_field: str) -> dict[str, dict[str, Any]]:
    """Read a `.item`/`.user` atomic file into `{id: {field: value}}`, rejecting repeated ids.

    Args:
        path (`Path`): The atomic file.
        id_field (`str`): The id column (`"item_id"` or `"user_id"`).

    Returns:
        `dict[str, dict[str, Any]]`: The other fields of each id, in file order.
    """
    table = read_atomic_file(path)
    if id_field not in table.columns:
        raise ValueError(
            f"{path} lacks the RecBole field {id_field!r}; fields found: {list(table.columns)}. "
            f"Name the id column '{id_field}:token'."
        )
    records: dict[str, dict[str, Any]] = {}
    names = list(table.columns)
    for row in range(len(table.row_locations)):
        key = as_id(table.columns[id_field][row], table.where(row, id_field))
        if key in records:
            raise ValueError(f"{table.where(row, id_field)}: {id_field} {key!r} appears twice; keep one row per id.")
        records[key] = {name: table.columns[name][row] for name in names if name != id_field}
    return records


def required_floats(table: Table, name: str) -> list[float]:
    """A float column of a RecBole `.inter` file, rejecting empty fields (they cannot be sorted or scored).

    Args:
        table (`Table`): The file, from `read_atomic_file`.
        name (`str`): A column declared `float`.

    Returns:
        `list[float]`: Its values.
    """
    values = table.columns[name]
    for row, value in enumerate(values):
        if value is None or not isinstance(value, float) or math.isnan(value):
            raise ValueError(
                f"{table.where(row, name)}: missing or non-float {name} {value!r}; declare the field "
                f"'{name}:float' and fill it in on every row."
            )
    return values


# ---------------------------------------------------------------------------------------------------------
# Generic interaction and item tables: CSV/TSV, JSON lines, parquet
# ---------------------------------------------------------------------------------------------------------


def read_table(path: Path, sep: str | None) -> Table:
    """Read a CSV/TSV/JSON-lines/parquet file, the format told by the extension.

    Args:
        path (`Path`): The file; text formats may be gzipped (`.csv.gz`).
        sep (`str`, *optional*): Delimiter of delimited text files; needed for extensions other than `.csv` and
            `.tsv`/`.tab`.

    Returns:
        `Table`: Columns of raw values (strings for delimited files, JSON values, parquet values), rows located
        by line (text formats) or row (parquet).
    """
    kind, delimiter = _detect_format(path, sep)
    if kind == "parquet":
        return _read_parquet(path)
    if kind == "jsonl":
        return _read_json_lines(path)
    if len(delimiter) == 1 and delimiter.isascii():
        return _read_csv(path, delimiter)
    return _read_delimited_rows(path, delimiter)


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


def _read_parquet(path: Path) -> Table:
    """Read a parquet file with `pyarrow.parquet`; rows are located by their 1-based number."""
    try:
        columns = pq.read_table(path).to_pydict()
    except pa.ArrowInvalid as error:
        raise ValueError(f"{path}: not a readable parquet file ({error}). Expected {GENERIC_FORMAT}.") from error
    num_rows = len(next(iter(columns.values()), []))
    return Table(path, columns, [f"row {row + 1}" for row in range(num_rows)])


def _read_csv(path: Path, delimiter: str) -> Table:
    """Read a delimited text file with a header line with `pyarrow.csv`; every value stays a string.

    pyarrow has no switch to turn type inference off, and inference would turn ids such as `"007"` into `7`. So
    the header is read as the first row under pyarrow's generated column names `f0, f1, ...`, each declared a
    string column (no more columns than the header line has delimiters plus one).
    """
    data = _read_bytes(path)
    start = len(_UTF8_BOM) if data.startswith(_UTF8_BOM) else 0
    if data[start : start + 1] in (b"", b"\n", b"\r"):  # pyarrow would skip a blank first line
        raise _no_header_error(path)
    first_line_end = _LINE_END.search(data, start)
    num_fields = data.count(delimiter.encode(), start, first_line_end.start() if first_line_end else len(data)) + 1
    if first_line_end is None:
        data += b"\n"  # pyarrow reads nothing from a single line without a line end
    invalid_rows: list[pa_csv.InvalidRow] = []

    def keep_invalid_row(row: pa_csv.InvalidRow) -> str:
        invalid_rows.append(row)
        return "error"

    try:
        table = pa_csv.read_csv(
            pa.py_buffer(data),
            # Serial reading numbers the rows in pyarrow's errors.
            read_options=pa_csv.ReadOptions(use_threads=False, autogenerate_column_names=True),
            parse_options=pa_csv.ParseOptions(
                delimiter=delimiter, newlines_in_values=True, invalid_row_handler=keep_invalid_row
            ),
            convert_options=pa_csv.ConvertOptions(
                column_types={f"f{index}": pa.string() for index in range(num_fields)}
            ),
        )
    except pa.ArrowInvalid as error:
        if invalid_rows:
            raise _invalid_row_error(path, delimiter, invalid_rows[0]) from error
        undecodable = _first_undecodable_line(path)  # pyarrow names neither the line nor the bytes
        if undecodable is not None:
            raise _not_utf8_error(path, *undecodable) from error
        raise ValueError(
            f"{path}: not readable as text separated by {delimiter!r} ({error}). Expected {GENERIC_FORMAT}; pass "
            "sep=... if the delimiter differs."
        ) from error
    names = _header_names(path, [column[0].as_py() for column in table.columns])
    rows = table.slice(1)
    columns = {name: column.to_pylist() for name, column in zip(names, rows.columns)}
    return Table(path, columns, _csv_row_locations(path, data, delimiter, rows.num_rows))


def _csv_row_locations(path: Path, data: bytes, delimiter: str, num_rows: int) -> list[str]:
    """`"line N"` for each data row of a delimited file read by pyarrow, which numbers rows and not lines.

    When the file has one line per row (no blank line, no line break inside a quoted value), row `r` is on line
    `r + 2`; otherwise the lines come from a second read with the `csv` module (`"data row N"` if that fails).
    """
    end = len(data)
    while end and data[end - 1] in b"\r\n":
        end -= 1
    if data.count(b"\n", 0, end) == num_rows:
        return [f"line {line}" for line in range(2, num_rows + 2)]
    scan = _scan_rows(path, delimiter)
    if scan is None or len(scan[1]) != num_rows + 1:
        return [f"data row {row}" for row in range(1, num_rows + 1)]
    return [f"line {line}" for line in scan[1][1:]]


def _invalid_row_error(path: Path, delimiter: str, row: pa_csv.InvalidRow) -> ValueError:
    """The error for a row whose number of fields differs from the header's, naming its line and the header."""
    scan = _scan_rows(path, delimiter)
    header, lines = scan if scan is not None else ([], [])
    names = _header_names(path, header) if header else f"{row.expected_columns} columns"  # header errors first
    number = row.number  # pyarrow counts the header as row 1 and skips blank lines
    if number is not None and 0 < number <= len(lines):
        where = f"line {lines[number - 1]}"
    else:
        where = f"data row {number - 1}" if number is not None else f"row {row.text[:60]!r}"
    return _field_count_error(path, where, row.actual_columns, delimiter, row.expected_columns, names)


def _scan_rows(path: Path, delimiter: str) -> tuple[list[str], list[int]] | None:
    """The header fields and the line of each non-blank row (the header first), read with the `csv` module.

    Returns `None` where the `csv` module cannot read the file (e.g. a field above its size limit).
    """
    header: list[str] = []
    lines: list[int] = []
    try:
        with open_text(path) as file:
            for line_number, fields in _delimited_rows(file, delimiter):
                if fields:
                    header = header or fields
                    lines.append(line_number)
    except csv.Error:
        return None
    return header, lines


def _read_delimited_rows(path: Path, delimiter: str) -> Table:
    """Read a delimited text file with a header line row by row; every value stays a string.

    For the delimiters `pyarrow.csv` does not take: several characters (`"::"` in MovieLens-1M, `", "`) or a
    non-ASCII one.
    """
    with open_text(path) as file:
        rows = _delimited_rows(file, delimiter)
        _, header = next(rows, (1, []))
        names = _header_names(path, header)
        columns: dict[str, list[Any]] = {name: [] for name in names}
        locations: list[str] = []
        for line_number, fields in rows:
            if not fields:
                continue  # blank line
            if len(fields) != len(names):
                raise _field_count_error(path, f"line {line_number}", len(fields), delimiter, len(names), names)
            for name, value in zip(names, fields):
                columns[name].append(value)
            locations.append(f"line {line_number}")
    return Table(path, columns, locations)


def _delimited_rows(file: Iterable[str], delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """Yield `(line_number, fields)`; blank lines give `[]`."""
    if len(delimiter) == 1:
        reader = csv.reader(file, delimiter=delimiter)
        for fields in reader:
            yield reader.line_num, fields  # csv tracks lines of quoted multi-line fields
    else:  # csv handles one-character delimiters only; "::" files (MovieLens-1M) have no quoting anyway
        for line_number, line in enumerate(file, start=1):
            line = line.rstrip("\r\n")
            yield line_number, line.split(delimiter) if line else []


def _header_names(path: Path, header: Sequence[str]) -> list[str]:
    """The column names of a delimited file's header line, stripped; an error when none or repeated."""
    names = [name.strip() for name in header]
    if not any(names):
        raise _no_header_error(path)
    if len(set(names)) != len(names):
        raise ValueError(f"{path}, line 1: repeated column names in the header {names}; rename them.")
    return names


def _no_header_error(path: Path) -> ValueError:
    """The error for a delimited file whose first line is blank or has no names."""
    return ValueError(f"{path}, line 1: no header. Expected {GENERIC_FORMAT}.")


def _field_count_error(
    path: Path, where: str, num_fields: int, delimiter: str, expected: int, names: list[str] | str
) -> ValueError:
    """The error for a row of a delimited file with another number of fields than the header."""
    return ValueError(
        f"{path}, {where}: {num_fields} fields separated by {delimiter!r}, expected {expected} ({names}). "
        f"Expected {GENERIC_FORMAT}; pass sep=... if the delimiter differs."
    )


def _read_json_lines(path: Path) -> Table:
    """Read one JSON object per line (or a single JSON array of objects) into columns.

    Read with the standard library rather than `pyarrow.json`, whose errors are less clear and which accepts less:
    it numbers rows within a block rather than lines of the file, rejects a field whose values change type
    between lines (ids that are numbers on some lines and strings on others, which load fine here), and reads
    neither a JSON array nor a repeated key.
    """
    with open_text(path) as file:
        text = file.read()
    records: list[dict[str, Any]] = []
    locations: list[str] = []
    if text.lstrip().startswith("["):
        try:
            array = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{path}, line {error.lineno}: invalid JSON ({error.msg}). Expected {GENERIC_FORMAT}."
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
                    f"{GENERIC_FORMAT}."
                ) from error
            locations.append(f"line {line_number}")
    for record, location in zip(records, locations):
        if not isinstance(record, dict):
            raise ValueError(
                f"{path}, {location}: a JSON {type(record).__name__}, not an object. Expected {GENERIC_FORMAT}."
            )
    names = union_of_keys(records, exclude=())
    columns = {name: [record.get(name) for record in records] for name in names}
    return Table(path, columns, locations)


def check_columns(table: Table, wanted: Mapping[str, tuple[str | None, str]]) -> None:
    """Raise when a requested column is absent, naming the columns found and the argument to change.

    Args:
        table (`Table`): The file read.
        wanted (`Mapping[str, tuple[str | None, str]]`): Per argument name (`"user_column"`), the column it names
            (`None`: not wanted) and what the column holds.
    """
    for argument, (column, meaning) in wanted.items():
        if column is not None and column not in table.columns:
            raise ValueError(
                f"{table.path} has no column {column!r} ({argument}={column!r}). Columns found: "
                f"{list(table.columns)}. Pass {argument}='<name>' naming the column that holds {meaning}."
            )


def read_item_table(
    items_path: str | Path, item_column: str, item_text_columns: Sequence[str] | None, sep: str | None
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Read the generic item metadata file.

    Args:
        items_path (`str` or `Path`): One row per item, in any format of `read_table`.
        item_column (`str`): The item id column.
        item_text_columns (`Sequence[str]`, *optional*): The columns that make the item text; by default all
            but the id.
        sep (`str`, *optional*): Delimiter of delimited text files.

    Returns:
        `tuple`: `{item_id: record}` (the other columns) and the list of text columns.
    """
    source = require_file(items_path, f"item metadata file with one row per item and an {item_column!r} column")
    table = read_table(source, sep)
    check_columns(table, {"item_column": (item_column, "the item id")})
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
        item = as_id(value, table.where(row, item_column))
        if item in records:
            raise ValueError(f"{table.where(row, item_column)}: item {item!r} appears twice; keep one row per item.")
        records[item] = {name: table.columns[name][row] for name in names}
    return records, text_columns
