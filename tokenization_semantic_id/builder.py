"""The offline build of semantic IDs, apart from the tokenizer that serves them (as STATIC builds its index offline,
apart from the per-step decoding code).

    item embeddings -> a quantizer (default: balanced residual k-means, paper Algorithm 1; or plain residual
                       k-means, TIGER's RQ-VAE, OPQ: see ``quantizers.py``) -> collision resolution -> codes
                    -> a ``SemanticIDTokenizer`` holding the catalogue, its code table, the codebooks and what its
                       quantizer needs to code new items

The tokenizer only loads, encodes, decodes and places cold-start items under its frozen quantizer (codebooks, and an
RQ-VAE's encoder or an OPQ rotation); it neither trains quantizers nor plots, so a saved tokenizer loads with
``trust_remote_code`` without this module (or faiss).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

from .collisions import resolve_collisions
from .quantization import validate_item_embeddings
from .quantizers import QuantizerConfig, fit_quantizer, resolve_quantizer_config
from .statistics import plot_codebook_report
from .tokenization_semantic_id import SemanticIDTokenizer


def build_semantic_ids(
    item_ids: Sequence,
    embeddings,
    config: Optional[QuantizerConfig] = None,
    *,
    quantizer: Optional[str] = None,
    disambiguation_size: Optional[int] = None,
    max_history_items: int = 50,
    progress: bool = True,
    extra_build_info: Optional[dict] = None,
) -> SemanticIDTokenizer:
    """Learns semantic IDs for a catalogue.

    Args:
        item_ids: ``N`` item ids (strings or ints; stored as strings), one per embedding row.
        embeddings: ``[N, D]`` item embeddings (array or tensor; no NaN/inf).
        config: Quantiser settings: a ``ResidualKMeansConfig`` (``balanced_rkmeans`` / ``rkmeans``), ``RQVAEConfig``
            (``rqvae``) or ``OPQConfig`` (``opq``); default: the default of ``quantizer``.
        quantizer: ``"balanced_rkmeans"`` (the default: 3 balanced levels of 256), ``"rkmeans"``, ``"rqvae"`` or
            ``"opq"``, with that quantizer's default settings; with ``config``, it must name the config's quantizer.
        disambiguation_size: See :func:`~tokenization_semantic_id.collisions.resolve_collisions`.
        max_history_items: ``n``, the newest items a history keeps.
        progress: Show progress bars.
        extra_build_info: More JSON-serialisable facts to record (for example the embedding config).
    Returns:
        The tokenizer; ``tokenizer.build_info`` holds the quantizer's settings (with its ``name``), the collision
        report, the reconstruction error and the fit's record (k-means: ``levels`` and ``residual_norm``; RQ-VAE and
        OPQ: ``fit``). ``quantizer_statistics(tokenizer)`` gathers the statistics to compare quantizers by.
    """
    config = resolve_quantizer_config(config, quantizer)
    item_ids = list(item_ids)
    if len(item_ids) == 0:
        raise ValueError("Cannot build semantic IDs for an empty catalogue: item_ids is empty.")
    missing = [index for index, item in enumerate(item_ids) if item is None or str(item).strip() == ""]
    if missing:
        raise ValueError(
            f"item_ids[{missing[0]}] is {item_ids[missing[0]]!r}: every item needs a non-empty id ({len(missing)} "
            "missing). Drop those rows or give them ids (None would be stored as the item 'None')."
        )
    item_ids = [str(item) for item in item_ids]
    embeddings = validate_item_embeddings(embeddings, num_items=len(item_ids))
    fit = fit_quantizer(embeddings, config, progress=progress)
    codes, collisions = resolve_collisions(fit.codes, disambiguation_size)
    codebook_sizes = config.codebook_sizes + (
        [collisions.disambiguation_size] if codes.shape[1] > fit.codes.shape[1] else []
    )
    build_info = {
        "quantizer": {"name": fit.name, **config.to_dict()},
        "embedding_dim": int(embeddings.shape[1]),
        "collisions": collisions.to_dict(),
        **fit.build_info,
        "reconstruction": fit.reconstruction,
        **(extra_build_info or {}),
    }
    return SemanticIDTokenizer(
        codebook_sizes=codebook_sizes,
        num_semantic_levels=config.num_levels,
        max_history_items=max_history_items,
        build_info=build_info,
        item_ids=item_ids,
        item_codes=codes,
        codebooks=fit.codebooks,
        quantizer_type=fit.name,
        quantizer_tensors=fit.tensors,
    )


def plot_semantic_ids(tokenizer: SemanticIDTokenizer, path: Union[str, Path], title: Optional[str] = None) -> Path:
    """Saves a PNG of the cluster sizes per level of a tokenizer's codes (see
    :func:`~tokenization_semantic_id.statistics.plot_codebook_report`)."""
    return plot_codebook_report(tokenizer.statistics(), tokenizer.item_codes, path, title=title)


__all__ = ["build_semantic_ids", "plot_semantic_ids"]
