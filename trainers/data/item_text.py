"""The `text` of catalogue items: raw metadata values cleaned (HTML removed, whitespace collapsed) and joined.

One function per source format turns a metadata record into the short description meant for a text encoder:
`attribute_names_text` (S3-Rec attribute names), `product_text` (Amazon 2018 products), `recbole_item_text`
(RecBole `.item` files) and `join_text_parts` (chosen columns of the generic format).
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

# Sentence encoders truncate long inputs anyway (all-MiniLM-L6-v2: 256 word pieces), so longer text only
# costs time; 1,000 characters keeps the title, brand, categories and the start of the description.
MAX_ITEM_TEXT_CHARS = 1000

_HTML_TAG = re.compile(r"</?[A-Za-z][^<>]*>")  # tag-shaped only: "<> bullet" and "a < b" stay
_COMMA_WITHOUT_SPACE = re.compile(r",(?=\S)")


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


def join_text_parts(parts: Iterable[Any]) -> str:
    """Join metadata values into one item text.

    Args:
        parts (`Iterable[Any]`): Raw values (strings, numbers, lists, `None`), in the order of the text.

    Returns:
        `str`: The cleaned non-empty parts joined with `". "`, at most `MAX_ITEM_TEXT_CHARS` characters.
    """
    return _truncate_text(". ".join(part for part in map(_clean_text_part, parts) if part))


def attribute_names_text(record: Mapping[str, Any]) -> str:
    """Text of an S3-Rec (Beauty) item: its brand and category names joined by commas.

    Args:
        record (`Mapping[str, Any]`): The item's metadata, with an `attributes` list of names.

    Returns:
        `str`: The names without the placeholder brand `"Unknown"`.
    """
    names = [name for name in record.get("attributes") or () if name and name != "Unknown"]
    return _truncate_text(_clean_text_part(names))


def product_text(record: Mapping[str, Any]) -> str:
    """Text of an Amazon 2018 product.

    Args:
        record (`Mapping[str, Any]`): The product's metadata (`title`, `brand`, `categories`, `description`).

    Returns:
        `str`: `"title. brand. categories. description"`.
    """
    categories = record.get("categories")
    if isinstance(categories, str):
        # "A,Test, Measure & Inspect,B": names may contain ", " themselves, so only space out bare commas.
        categories = _COMMA_WITHOUT_SPACE.sub(", ", categories)
    return join_text_parts([record.get("title"), record.get("brand"), categories, record.get("description")])


def recbole_item_text(record: Mapping[str, Any]) -> str:
    """Text of a RecBole item.

    Args:
        record (`Mapping[str, Any]`): The item's row of the `.item` file.

    Returns:
        `str`: `"title (year). genres"` for MovieLens-style fields, else all fields joined.
    """
    title = _clean_text_part(_join_tokens(record.get("movie_title", record.get("title"))))
    year = _clean_text_part(record.get("release_year", record.get("year")))
    genres = _clean_text_part(record.get("class", record.get("genre")))
    if title:
        return join_text_parts([f"{title} ({year})" if year else title, genres])
    return join_text_parts(_join_tokens(value) for key, value in record.items() if key != "item_id")


def _join_tokens(value: Any) -> Any:
    """RecBole `token_seq` titles are split on spaces; put the words back together."""
    return " ".join(value) if isinstance(value, list) else value
