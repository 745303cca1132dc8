"""Codes for item embeddings under a fitted quantizer: the rule shared by the offline build and cold start.

A ``SemanticIDTokenizer`` keeps, besides its codebooks, the few tensors its quantizer needs to place a new item
(``add_items``), and this module applies them. It is plain torch, so it travels with a saved tokenizer
(``trust_remote_code``) and needs neither faiss nor the training code:

* ``balanced_rkmeans`` / ``rkmeans``: nearest centroid level by level on residuals (no extra tensors);
* ``rqvae``: the RQ-VAE's encoder MLP (``encoder.{i}.weight`` / ``encoder.{i}.bias``, ReLU between layers), then
  nearest codeword level by level on the latent's residuals;
* ``opq``: the learned rotation (``rotation``, ``[D', D]``, ``y = x @ rotation.T``), then in each of the ``L``
  sub-spaces (consecutive column blocks of ``y``) the nearest centroid; levels are independent.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F

from .quantization import nearest_centroid, quantize_with_codebooks

RESIDUAL_QUANTIZERS = ("balanced_rkmeans", "rkmeans")
QUANTIZER_TYPES = RESIDUAL_QUANTIZERS + ("rqvae", "opq")
ROTATION = "rotation"


def encoder_layers(tensors: Dict[str, torch.Tensor]) -> List[tuple]:
    """``[(weight, bias), ...]`` of the stored encoder ``encoder.0``, ``encoder.1``, ... in order."""
    layers = []
    while f"encoder.{len(layers)}.weight" in tensors:
        index = len(layers)
        layers.append((tensors[f"encoder.{index}.weight"], tensors[f"encoder.{index}.bias"]))
    return layers


def mlp_forward(x: torch.Tensor, layers: Sequence[tuple]) -> torch.Tensor:
    """``Linear -> ReLU -> ... -> Linear`` with the given ``(weight, bias)`` pairs (no activation after the last)."""
    for index, (weight, bias) in enumerate(layers):
        x = F.linear(x, weight.to(x.device, x.dtype), bias.to(x.device, x.dtype))
        if index < len(layers) - 1:
            x = F.relu(x)
    return x


def product_quantize(rotated: torch.Tensor, codebooks: Sequence[torch.Tensor]) -> torch.Tensor:
    """Product-quantisation codes: ``[N, sum d_m]`` rotated vectors, ``L`` codebooks ``[K, d_m]`` -> ``[N, L]``.

    Sub-space ``m`` is the ``m``-th block of ``d_m`` consecutive columns; its code is the nearest centroid there."""
    codes, start = [], 0
    for codebook in codebooks:
        width = codebook.shape[1]
        codes.append(nearest_centroid(rotated[:, start : start + width], codebook.to(rotated.device, rotated.dtype)))
        start += width
    return torch.stack(codes, dim=1)


def check_quantizer_tensors(quantizer_type: str, codebooks: Sequence[torch.Tensor], tensors: Dict[str, torch.Tensor]):
    """A ValueError if ``quantizer_type`` is unknown or its cold-start tensors are missing or do not fit together."""
    if quantizer_type not in QUANTIZER_TYPES:
        raise ValueError(f"Unknown quantizer_type {quantizer_type!r}; expected one of {', '.join(QUANTIZER_TYPES)}.")
    if quantizer_type == "rqvae":
        layers = encoder_layers(tensors)
        if not layers:
            raise ValueError("An rqvae tokenizer needs its encoder (tensors encoder.0.weight, ...) for new items.")
        if codebooks and layers[-1][0].shape[0] != codebooks[0].shape[1]:
            raise ValueError(
                f"The stored encoder outputs {layers[-1][0].shape[0]}-d latents but the codebooks are "
                f"{codebooks[0].shape[1]}-d; the tokenizer files do not belong together."
            )
    if quantizer_type == "opq":
        if ROTATION not in tensors:
            raise ValueError("An opq tokenizer needs its rotation (tensor 'rotation') for new items.")
        width = sum(codebook.shape[1] for codebook in codebooks)
        if codebooks and tensors[ROTATION].shape[0] != width:
            raise ValueError(
                f"The stored rotation outputs {tensors[ROTATION].shape[0]} dimensions but the sub-space codebooks "
                f"cover {width}; the tokenizer files do not belong together."
            )


def embedding_dim(quantizer_type: str, codebooks: Sequence[torch.Tensor], tensors: Dict[str, torch.Tensor]) -> int:
    """Width ``D`` of the item embeddings the quantizer reads."""
    if quantizer_type == "rqvae":
        return int(encoder_layers(tensors)[0][0].shape[1])
    if quantizer_type == "opq":
        return int(tensors[ROTATION].shape[1])
    return int(codebooks[0].shape[1])


def assign_codes(
    quantizer_type: str,
    embeddings: torch.Tensor,
    codebooks: Sequence[torch.Tensor],
    tensors: Dict[str, torch.Tensor],
) -> torch.Tensor:
    """``[N, D]`` embeddings -> ``[N, L]`` semantic codes under a fitted quantizer (see the module docstring)."""
    embeddings = embeddings.to(torch.float32)
    with torch.no_grad():
        if quantizer_type == "rqvae":
            return quantize_with_codebooks(mlp_forward(embeddings, encoder_layers(tensors)), codebooks)
        if quantizer_type == "opq":
            rotation = tensors[ROTATION].to(embeddings.device, torch.float32)
            return product_quantize(embeddings @ rotation.T, codebooks)
        return quantize_with_codebooks(embeddings, codebooks)
