"""Optimised product quantisation (OPQ, Ge et al. 2013) with faiss, as ActionPiece and RPG tokenise items.

The embedding is rotated by a learned orthonormal matrix ``R`` (``faiss.OPQMatrix``), the rotated vector is cut into
``L`` consecutive sub-vectors, and each sub-space has its own codebook of ``K`` centroids
(``faiss.ProductQuantizer``): an item's code at "level" ``m`` is its nearest centroid in sub-space ``m``. There is no
residual hierarchy: the levels are independent and equally important, so the first token is no coarse cluster, items
sharing a prefix share it by coincidence rather than by similarity, and the trie's upper levels are dense (close to
``K`` children per node) rather than topical. ``rotation=False`` is plain PQ (the sub-spaces are the embedding's own
column blocks), the ablation that shows what the rotation buys.

An embedding width ``D`` that ``L`` does not divide is padded to ``D' = L * ceil(D / L)`` (``R`` is ``[D', D]`` with
orthonormal columns). faiss's PQ needs one codebook size for every sub-space, a power of two (its codes are bit
fields). New items: ``y = x @ R.T``, then the nearest centroid of each sub-space, from the rotation and codebooks the
tokenizer stores (:mod:`~tokenization_semantic_id.code_assignment`, no faiss needed).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Dict, List

import numpy as np
import torch

from .code_assignment import ROTATION, assign_codes
from .quantization import CodebookConfig, _check_clustering_input, check_positive_ints, import_faiss
from .statistics import reconstruction_report


@dataclass
class OPQConfig(CodebookConfig):
    """The ``opq`` quantizer.

    Args:
        num_levels: Sub-spaces ``L`` (one code each; ActionPiece: 4, RPG: 32; 3 here, the other quantizers' length).
        codebook_size: Centroids per sub-space: one power of two for all of them (256: one byte per code).
        rotation: Learn the OPQ rotation (``False``: plain PQ on the embedding's own column blocks).
        opq_iterations: Alternations of the rotation (faiss's default: 50); each trains the PQ for 4 k-means rounds.
        pq_iterations: k-means iterations of the final sub-space codebooks (faiss's default: 25).
        max_points_per_centroid: faiss trains each sub-space's k-means on at most this many items per centroid.
        seed: Seed of faiss's k-means (the rotation's own random start is fixed by faiss).
    """

    rotation: bool = True
    opq_iterations: int = 25
    pq_iterations: int = 25
    max_points_per_centroid: int = 256
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        check_positive_ints(self, "opq_iterations", "pq_iterations", "max_points_per_centroid")
        sizes = set(self.codebook_sizes)
        size = sizes.pop()
        if sizes or size & (size - 1) or size > 2**16:
            raise ValueError(
                f"opq needs one codebook size for every sub-space, a power of two up to 65536 (faiss's PQ codes are "
                f"bit fields), got {self.codebook_sizes}."
            )

    @property
    def quantizer_name(self) -> str:
        return "opq"

    @property
    def nbits(self) -> int:
        return int(math.log2(self.codebook_sizes[0]))


@dataclass
class OPQFit:
    """A fitted OPQ (or PQ) and the catalogue's codes.

    Attributes:
        codes: ``[N, L]`` sub-space codes.
        codebooks: ``L`` tensors ``[K, D'/L]``.
        rotation: ``[D', D]`` (identity, zero-padded, when ``rotation=False``).
        reconstruction: ``mse``, ``mean_distance``, ``relative_error`` of faiss's PQ decode mapped back by ``R.T``.
        seconds: Fit time.
    """

    codes: torch.Tensor
    codebooks: List[torch.Tensor]
    rotation: torch.Tensor
    reconstruction: Dict[str, float]
    seconds: float = 0.0

    def fit_info(self) -> dict:
        rotated_dim, input_dim = self.rotation.shape
        return {
            "input_dim": int(input_dim),
            "rotated_dim": int(rotated_dim),
            "subspace_dim": int(self.codebooks[0].shape[1]),
            "seconds": self.seconds,
        }


def _product_quantizer(faiss, dim: int, config: OPQConfig, iterations: int):
    quantizer = faiss.ProductQuantizer(dim, config.num_levels, config.nbits)
    quantizer.cp.seed = config.seed
    quantizer.cp.niter = iterations
    quantizer.cp.max_points_per_centroid = config.max_points_per_centroid
    quantizer.cp.min_points_per_centroid = 1  # no "please provide more points" warnings on small catalogues
    quantizer.verbose = False
    return quantizer


def fit_opq(embeddings: torch.Tensor, config: OPQConfig, progress: bool = False) -> OPQFit:
    """Learns the rotation and the sub-space codebooks with faiss (CPU) and codes every item.

    The catalogue's codes follow the same rule as new items' (nearest centroid per sub-space of ``x @ R.T``,
    computed in torch); the reconstruction error is faiss's (its own PQ encode and decode, mapped back by ``R``).
    ``progress`` is accepted for a uniform interface (faiss reports nothing)."""
    _check_clustering_input(embeddings, config.codebook_sizes[0])
    faiss = import_faiss()
    start = time.perf_counter()
    array = np.ascontiguousarray(embeddings.detach().cpu().numpy(), dtype=np.float32)
    dim = array.shape[1]
    rotated_dim = config.num_levels * math.ceil(dim / config.num_levels)
    if config.rotation:
        opq = faiss.OPQMatrix(dim, config.num_levels, rotated_dim)
        opq.niter = config.opq_iterations
        opq.verbose = False
        opq.pq = _product_quantizer(faiss, rotated_dim, config, iterations=opq.niter_pq)
        opq.train(array)
        rotation = faiss.vector_to_array(opq.A).reshape(rotated_dim, dim).copy()
    else:
        rotation = np.eye(rotated_dim, dim, dtype=np.float32)
    rotated = np.ascontiguousarray(array @ rotation.T, dtype=np.float32)
    quantizer = _product_quantizer(faiss, rotated_dim, config, iterations=config.pq_iterations)
    quantizer.train(rotated)
    centroids = faiss.vector_to_array(quantizer.centroids).reshape(quantizer.M, quantizer.ksub, quantizer.dsub)
    codebooks = [torch.from_numpy(centroids[level].copy()) for level in range(quantizer.M)]
    rotation = torch.from_numpy(rotation)
    codes = assign_codes("opq", embeddings.detach().cpu(), codebooks, {ROTATION: rotation})
    decoded = torch.from_numpy(quantizer.decode(quantizer.compute_codes(rotated)))
    reconstruction = reconstruction_report(embeddings.detach().cpu(), decoded @ rotation)
    return OPQFit(codes, codebooks, rotation, reconstruction, time.perf_counter() - start)


def opq_tensors(fit: OPQFit) -> Dict[str, torch.Tensor]:
    """What the tokenizer stores to place new items: the rotation."""
    return {ROTATION: fit.rotation.float().contiguous()}
