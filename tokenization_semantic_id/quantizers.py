"""The semantic-ID quantizers the offline build offers, behind one interface.

=====================  ============================  ======================================================
name                   config                        what
=====================  ============================  ======================================================
``balanced_rkmeans``   ``ResidualKMeansConfig()``    OneRec's balanced residual k-means (the default)
``rkmeans``            ``ResidualKMeansConfig(       plain residual k-means (RQ-KMeans of OpenOneRec, GRID,
                       balanced=False)``             MiniOneRec); ``backend="faiss"`` as they run it
``rqvae``              ``RQVAEConfig()``             TIGER's RQ-VAE (:mod:`~tokenization_semantic_id.rqvae`)
``opq``                ``OPQConfig()``               optimised product quantisation with faiss
                                                     (:mod:`~tokenization_semantic_id.opq`)
=====================  ============================  ======================================================

:func:`fit_quantizer` fits any of them and returns a :class:`QuantizerFit`: the ``[N, L]`` codes, the codebooks and
the tensors a tokenizer needs to code new items, the reconstruction error and a record of the fit. Every one then
goes through the same collision level and the same ``SemanticIDTokenizer`` format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Union

import torch

from .opq import OPQConfig, fit_opq, opq_tensors
from .quantization import ResidualKMeansConfig, fit_residual_kmeans
from .rqvae import RQVAEConfig, fit_rqvae
from .statistics import reconstruction_report

QuantizerConfig = Union[ResidualKMeansConfig, RQVAEConfig, OPQConfig]
QUANTIZERS = ("balanced_rkmeans", "rkmeans", "rqvae", "opq")
_CONFIG_CLASSES = {
    "balanced_rkmeans": ResidualKMeansConfig,
    "rkmeans": ResidualKMeansConfig,
    "rqvae": RQVAEConfig,
    "opq": OPQConfig,
}


def quantizer_config(name: str, **settings) -> QuantizerConfig:
    """The config of quantizer ``name`` (one of :data:`QUANTIZERS`) with ``settings`` over its defaults, e.g.
    ``quantizer_config("rqvae", num_steps=500)``. An unknown name or setting is a ValueError."""
    if name not in _CONFIG_CLASSES:
        raise ValueError(f"Unknown quantizer {name!r}; choose one of {', '.join(QUANTIZERS)}.")
    config_class = _CONFIG_CLASSES[name]
    if config_class is ResidualKMeansConfig:
        if settings.get("balanced", name == "balanced_rkmeans") != (name == "balanced_rkmeans"):
            raise ValueError(f"quantizer {name!r} contradicts balanced={settings['balanced']!r}.")
        settings = {**settings, "balanced": name == "balanced_rkmeans"}
    fields = set(config_class.__dataclass_fields__)
    unknown = sorted(set(settings) - fields)
    if unknown:
        raise ValueError(f"{name} has no setting {', '.join(unknown)}; its settings are {', '.join(sorted(fields))}.")
    return config_class(**settings)


def resolve_quantizer_config(config: Optional[QuantizerConfig], quantizer: Optional[str]) -> QuantizerConfig:
    """``config`` and/or a quantizer name -> one config: neither gives balanced residual k-means (the default), a
    name alone its default config, both must agree."""
    if config is None:
        return quantizer_config(quantizer or "balanced_rkmeans")
    if not isinstance(config, tuple(_CONFIG_CLASSES.values())):
        raise TypeError(
            f"config must be a ResidualKMeansConfig, RQVAEConfig or OPQConfig, got {type(config).__name__}."
        )
    if quantizer is not None and quantizer != config.quantizer_name:
        raise ValueError(
            f"quantizer={quantizer!r} but the config given is a {config.quantizer_name!r} config "
            f"({type(config).__name__}); pass one of them, or a matching pair."
        )
    return config


@dataclass
class QuantizerFit:
    """What any quantizer hands to the build.

    Attributes:
        name: One of :data:`QUANTIZERS`.
        codes: ``[N, L]`` semantic codes (before collision resolution).
        codebooks: ``L`` tensors, level ``l`` ``[K_l, d_l]`` (residual centroids, RQ-VAE codewords in its latent
            space, or OPQ sub-space centroids).
        tensors: The further tensors the tokenizer stores to code new items (``{}`` for residual k-means).
        reconstruction: :func:`~tokenization_semantic_id.statistics.reconstruction_report` of the embeddings
            against what the codes give back (RQ-VAE: also ``latent_*``, the latent quantisation error).
        build_info: JSON-serialisable record of the fit for ``tokenizer.build_info`` (k-means: ``levels`` and
            ``residual_norm``; RQ-VAE and OPQ: ``fit``).
    """

    name: str
    codes: torch.Tensor
    codebooks: List[torch.Tensor]
    tensors: Dict[str, torch.Tensor] = field(default_factory=dict)
    reconstruction: Dict[str, float] = field(default_factory=dict)
    build_info: dict = field(default_factory=dict)


def fit_quantizer(embeddings: torch.Tensor, config: QuantizerConfig, progress: bool = True) -> QuantizerFit:
    """Fits the quantizer ``config`` describes on ``[N, D]`` embeddings (validated by the caller)."""
    if isinstance(config, RQVAEConfig):
        fit = fit_rqvae(embeddings, config, progress=progress)
        return QuantizerFit(
            "rqvae", fit.codes, fit.codebooks, fit.encoder_tensors, fit.reconstruction, {"fit": fit.fit_info()}
        )
    if isinstance(config, OPQConfig):
        fit = fit_opq(embeddings, config, progress=progress)
        return QuantizerFit(
            "opq", fit.codes, fit.codebooks, opq_tensors(fit), fit.reconstruction, {"fit": fit.fit_info()}
        )
    fit = fit_residual_kmeans(embeddings, config, progress=progress)
    reconstructed = sum(codebook[fit.codes[:, level]] for level, codebook in enumerate(fit.codebooks))
    return QuantizerFit(
        config.quantizer_name,
        fit.codes,
        fit.codebooks,
        reconstruction=reconstruction_report(embeddings.cpu(), reconstructed),
        build_info={
            "levels": [{"iterations": level.iterations, "converged": level.converged} for level in fit.levels],
            "residual_norm": fit.residual_norm,
        },
    )
