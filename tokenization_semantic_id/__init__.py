"""Semantic-ID tokenizer: item embeddings -> quantizer codes (balanced residual k-means by default) -> tokens, and back."""

from transformers import AutoTokenizer

from modeling_onerec.configuration_onerec import OneRecConfig

from .builder import build_semantic_ids, plot_semantic_ids
from .collisions import CollisionReport, collision_rate, resolve_collisions
from .constrained_decoding import SessionConstrainedLogitsProcessor, SessionConstraint, SessionPrefixAllowedTokensFn
from .embeddings import (
    ItemEmbeddingConfig,
    build_item_embeddings,
    collaborative_item_embeddings,
    load_embedding_array,
    text_item_embeddings,
)
from .opq import OPQConfig, fit_opq
from .quantization import (
    CodebookConfig,
    KMeansResult,
    ResidualKMeansConfig,
    ResidualQuantization,
    balanced_kmeans,
    faiss_kmeans,
    fit_residual_kmeans,
    kmeans,
    quantize_with_codebooks,
    validate_item_embeddings,
)
from .quantizers import QUANTIZERS, QuantizerFit, fit_quantizer, quantizer_config
from .rqvae import RQVAE, RQVAEConfig, fit_rqvae
from .statistics import (
    codebook_report,
    plot_codebook_report,
    plot_quantizer_comparison,
    quantizer_statistics,
    reconstruction_report,
)
from .tokenization_semantic_id import SemanticIDTokenizer, UnknownItemError
from .trie import SemanticIDTrie


def register_auto_classes() -> None:
    """``AutoTokenizer`` resolves this tokenizer by class name (a tokenizer directory) and by ``OneRecConfig`` (a
    model directory); ``save_pretrained`` writes ``auto_map`` and the module files for ``trust_remote_code``."""
    AutoTokenizer.register(OneRecConfig, tokenizer_class=SemanticIDTokenizer, exist_ok=True)
    SemanticIDTokenizer.register_for_auto_class("AutoTokenizer")


register_auto_classes()

__all__ = [
    "QUANTIZERS",
    "CodebookConfig",
    "CollisionReport",
    "ItemEmbeddingConfig",
    "KMeansResult",
    "OPQConfig",
    "QuantizerFit",
    "RQVAE",
    "RQVAEConfig",
    "ResidualKMeansConfig",
    "ResidualQuantization",
    "SemanticIDTokenizer",
    "SemanticIDTrie",
    "SessionConstrainedLogitsProcessor",
    "SessionConstraint",
    "SessionPrefixAllowedTokensFn",
    "UnknownItemError",
    "balanced_kmeans",
    "build_semantic_ids",
    "build_item_embeddings",
    "codebook_report",
    "collaborative_item_embeddings",
    "collision_rate",
    "faiss_kmeans",
    "fit_opq",
    "fit_quantizer",
    "fit_residual_kmeans",
    "fit_rqvae",
    "kmeans",
    "load_embedding_array",
    "plot_codebook_report",
    "plot_quantizer_comparison",
    "plot_semantic_ids",
    "quantize_with_codebooks",
    "quantizer_config",
    "quantizer_statistics",
    "reconstruction_report",
    "register_auto_classes",
    "resolve_collisions",
    "text_item_embeddings",
    "validate_item_embeddings",
]
