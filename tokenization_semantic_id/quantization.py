"""Residual k-means quantisation of item embeddings into semantic IDs (OneRec §3.1, Algorithm 1).

Each level ``l`` clusters the residuals ``r^l`` of all items into ``K_l`` clusters; an item's code at
that level is its cluster and the next residual is ``r^{l+1} = r^l - c^l_{s^l}``.

Two clusterings are offered:

* :func:`balanced_kmeans` -- Algorithm 1 of the paper: every cluster holds exactly ``|V| / K`` items.
  When ``K`` does not divide ``|V|``, the first ``|V| mod K`` clusters (in processing order) hold one
  item more, so cluster sizes are ``floor(|V|/K)`` or ``ceil(|V|/K)`` and every item is assigned.
* :func:`kmeans` -- plain Lloyd k-means with the same random initialisation, kept for ablations
  (it is what RQ-KMeans peers use and it shows the "hourglass" imbalance the paper avoids).

Everything is vectorised torch and runs on the device of the input tensor (a GPU when present).
Results are deterministic for a given seed on a given device.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, List, Optional, Sequence, Union

import numpy as np
import torch
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


def validate_item_embeddings(
    embeddings: Any,
    num_items: Optional[int] = None,
    dim: Optional[int] = None,
    name: str = "embeddings",
) -> torch.Tensor:
    """Check an item-embedding matrix and return it as a float32 contiguous tensor.

    Args:
        embeddings (`torch.Tensor`, `np.ndarray` or nested lists of shape `[num_items, dim]`):
            One row per item. Integer values are converted to float.
        num_items (`int`, *optional*):
            Expected number of rows (size of the catalogue).
        dim (`int`, *optional*):
            Expected number of columns.
        name (`str`, *optional*, defaults to `"embeddings"`):
            How the matrix is called in error messages.

    Returns:
        `torch.Tensor` of shape `[num_items, dim]`, dtype float32, contiguous, on the input's device
        (may share memory with the input when no conversion was needed).

    Raises:
        ValueError: if the input is not a 2-D numeric matrix, holds NaN or inf, or its shape does not
            match `num_items` / `dim`.
    """
    if isinstance(embeddings, torch.Tensor):
        tensor = embeddings.detach()
    else:
        try:
            array = np.asarray(embeddings)
        except (ValueError, TypeError) as error:
            raise ValueError(
                f"`{name}` could not be read as a numeric matrix ({error}); pass a 2-D numpy array or "
                f"torch tensor with one row per item."
            ) from error
        if array.dtype.kind not in "biuf":
            raise ValueError(
                f"`{name}` has dtype {array.dtype}, which does not convert to float; pass a 2-D numeric "
                f"matrix with one row per item."
            )
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    if tensor.is_complex():
        raise ValueError(f"`{name}` is complex ({tensor.dtype}); pass real-valued embeddings.")
    if tensor.dim() != 2:
        raise ValueError(
            f"`{name}` must be 2-D [num_items, dim], got shape {tuple(tensor.shape)}. Reshape it so that "
            f"each row is one item's embedding."
        )
    rows, columns = tensor.shape
    if columns == 0:
        raise ValueError(f"`{name}` has shape {tuple(tensor.shape)}: an embedding needs at least one column.")
    if num_items is not None and rows != num_items:
        raise ValueError(
            f"`{name}` has {rows} rows but the catalogue has {num_items} items: pass one row per item, "
            f"in the order of `item_ids`."
        )
    if dim is not None and columns != dim:
        raise ValueError(f"`{name}` has dimension {columns} but {dim} was expected: pass {dim}-d embeddings.")
    tensor = tensor.to(torch.float32).contiguous()
    finite_rows = torch.isfinite(tensor).all(dim=1)
    if not bool(finite_rows.all()):
        bad_rows = (~finite_rows).nonzero().flatten()
        raise ValueError(
            f"`{name}` has NaN or inf values in {bad_rows.numel()} of {rows} rows (first bad row: "
            f"{int(bad_rows[0])}); fix or drop those items before building semantic ids."
        )
    return tensor


def import_faiss():
    """``faiss`` (the ``faiss-cpu`` package), or an ImportError that says how to get it. The import sits in a ``try``
    block so that transformers' remote-code check, which reads a module's imports, does not ask for faiss when a saved
    tokenizer (whose modules include this one) is loaded: faiss is only needed to *build* codes."""
    try:
        import faiss
    except ImportError as error:  # pragma: no cover - faiss-cpu is an install requirement of this project
        raise ImportError(
            "This quantizer needs faiss: pip install 'faiss-cpu>=1.15,<1.16' (an install requirement of onerec-hf)."
        ) from error
    return faiss


@dataclass
class CodebookConfig:
    """The code layout every quantizer shares: ``num_levels`` code positions of ``codebook_size`` codes each.

    Args:
        num_levels: Number of code levels ``L`` (3 in the paper).
        codebook_size: Codes per level ``K``: one int for every level, or one per level
            (8192 in the paper; 256 is the usual size for catalogues of ~10k items).
    """

    num_levels: int = 3
    codebook_size: Union[int, Sequence[int]] = 256

    def __post_init__(self):
        if not isinstance(self.num_levels, int) or not 1 <= self.num_levels <= 25:
            raise ValueError(
                f"num_levels must be an int in [1, 25], got {self.num_levels!r}: code tokens are named <a_..> to "
                "<z_..>, one letter per level, and a 26th is kept for the disambiguation level."
            )
        sizes = self.codebook_sizes
        if len(sizes) != self.num_levels:
            raise ValueError(
                f"codebook_size lists {len(sizes)} sizes but num_levels={self.num_levels}; "
                "give one int for all levels or exactly one size per level."
            )
        for size in sizes:
            if not isinstance(size, int) or size < 2:
                raise ValueError(f"every codebook size must be an int >= 2, got {size!r} in {list(sizes)}.")

    @property
    def codebook_sizes(self) -> List[int]:
        if isinstance(self.codebook_size, int):
            return [self.codebook_size] * self.num_levels
        return list(self.codebook_size)

    def to_dict(self) -> dict:
        config = asdict(self)
        config["codebook_size"] = self.codebook_sizes
        return config


def check_positive_ints(config, *names: str) -> None:
    """A ValueError for the first of ``config``'s fields ``names`` that is not a positive int."""
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}.")


@dataclass
class ResidualKMeansConfig(CodebookConfig):
    """How semantic IDs are learned from item embeddings by residual k-means (the ``balanced_rkmeans`` and
    ``rkmeans`` quantizers).

    Args:
        num_levels: Number of residual levels ``L`` (3 in the paper).
        codebook_size: Codes per level ``K``: one int for every level, or one per level
            (8192 in the paper; 256 is the usual size for catalogues of ~10k items).
        balanced: ``True`` runs the paper's balanced k-means (Algorithm 1); ``False`` plain k-means
            (an ablation, and the RQ-KMeans of peers).
        max_iterations: Upper bound on assignment sweeps per level; a level stops earlier once its
            assignment no longer changes.
        seed: Seed of the random centroid initialisation.
        device: Where to run (``None``: CUDA when available, else CPU).
        cluster_block_size: How many clusters' distance columns are computed per matrix product
            in the balanced sweep; trades memory (``N x block`` floats) for speed.
        max_points_per_centroid: Balanced k-means on a catalogue larger than ``K x`` this fits the
            centroids on a random sample of ``K x`` this many items first (faiss's k-means samples the
            same way, 256 per centroid by default), then runs ``sweeps_after_sample`` sweeps over every
            item from those centroids. ``None`` sweeps over every item from the random start, as
            Algorithm 1 is written. Catalogues up to ``K x`` this many items are never sampled.
        sweeps_after_sample: Sweeps over all items after the sample's fit (at most; fewer once the
            assignment stops changing). Each gives an exactly balanced assignment; at 1M items the
            greedy sweep keeps moving ~5% of the items for tens of sweeps while the quantisation error
            falls by under 0.1% per sweep (``benchmarks/RESULTS.md``), so a few suffice.
        backend: Plain k-means only (``balanced=False``): ``"torch"`` (this module's Lloyd k-means, the same random
            start as the balanced fit; an emptied cluster stays unused) or ``"faiss"`` (``faiss.Kmeans``, as the
            RQ-KMeans peers run it: ``max_iterations`` iterations on a sample of ``max_points_per_centroid`` items
            per code, an emptied cluster re-seeded by splitting a large one; CPU). Codes are the nearest final
            centroid either way.
    """

    balanced: bool = True
    max_iterations: int = 30
    seed: int = 0
    device: Optional[str] = None
    cluster_block_size: int = 256
    max_points_per_centroid: Optional[int] = 256
    sweeps_after_sample: int = 3
    backend: str = "torch"

    def __post_init__(self):
        super().__post_init__()
        check_positive_ints(self, "max_iterations", "sweeps_after_sample")
        if self.cluster_block_size < 1:
            raise ValueError(f"cluster_block_size must be >= 1, got {self.cluster_block_size!r}.")
        if self.max_points_per_centroid is not None and (
            not isinstance(self.max_points_per_centroid, int) or self.max_points_per_centroid < 1
        ):
            raise ValueError(
                f"max_points_per_centroid must be a positive int or None (no sampling), got "
                f"{self.max_points_per_centroid!r}."
            )
        if self.backend not in ("torch", "faiss"):
            raise ValueError(f"backend must be 'torch' or 'faiss', got {self.backend!r}.")
        if self.backend == "faiss" and self.balanced:
            raise ValueError(
                "backend='faiss' runs plain k-means: pass balanced=False with it (faiss has no balanced k-means)."
            )

    @property
    def quantizer_name(self) -> str:
        """``"balanced_rkmeans"`` or ``"rkmeans"``: the name ``build_semantic_ids(quantizer=...)`` knows it by."""
        return "balanced_rkmeans" if self.balanced else "rkmeans"


@dataclass
class KMeansResult:
    """One level's clustering.

    Attributes:
        centroids: ``[K, D]`` cluster centres.
        assignment: ``[N]`` cluster of every item.
        iterations: Sweeps run.
        converged: Whether the last sweep left the assignment unchanged.
        changed_fraction: Per sweep, the fraction of items whose cluster changed (a learning curve).
        sample_iterations: Of ``iterations``, the sweeps over a random sample of the items that fitted the
            starting centroids (``max_points_per_centroid``; 0 when every sweep covered every item).
    """

    centroids: torch.Tensor
    assignment: torch.Tensor
    iterations: int
    converged: bool
    changed_fraction: List[float] = field(default_factory=list)
    sample_iterations: int = 0


@dataclass
class ResidualQuantization:
    """All levels of a residual k-means fit.

    Attributes:
        codebooks: ``L`` tensors, level ``l`` of shape ``[K_l, D]``.
        codes: ``[N, L]`` code of every item at every level (the balanced assignment for fitted items).
        levels: Per-level :class:`KMeansResult` (centroids duplicated in ``codebooks``).
        residual_norm: ``[L + 1]`` mean L2 norm of the residual entering each level and after the last.
    """

    codebooks: List[torch.Tensor]
    codes: torch.Tensor
    levels: List[KMeansResult]
    residual_norm: List[float]


def _check_clustering_input(points: torch.Tensor, num_clusters: int) -> None:
    if points.dim() != 2:
        raise ValueError(f"points must be a 2-D [N, D] tensor, got shape {tuple(points.shape)}.")
    num_points = points.shape[0]
    if num_points == 0:
        raise ValueError("Cannot cluster an empty catalogue (0 items); pass at least one item embedding.")
    if num_clusters > num_points:
        raise ValueError(
            f"codebook size K={num_clusters} is larger than the catalogue ({num_points} items): "
            f"some codes could never be used. Use K <= {num_points} (for balanced clusters of a few "
            "items, K around N ** (1 / num_levels) is a common choice)."
        )


def _random_centroids(points: torch.Tensor, num_clusters: int, generator: torch.Generator) -> torch.Tensor:
    """Paper Algorithm 1, line 2: K distinct items chosen at random. Returns ``[K, D]``."""
    index = torch.randperm(points.shape[0], generator=generator)[:num_clusters].to(points.device)
    return points[index].clone()


def balanced_capacities(num_points: int, num_clusters: int) -> torch.Tensor:
    """Cluster sizes of a balanced partition: ``[K]``, the first ``N mod K`` get one extra item."""
    base, remainder = divmod(num_points, num_clusters)
    capacities = torch.full((num_clusters,), base, dtype=torch.long)
    capacities[:remainder] += 1
    return capacities


def _balanced_sweep(points: torch.Tensor, centroids: torch.Tensor, capacities: torch.Tensor, block_size: int):
    """One pass of Algorithm 1 lines 4-10.

    Clusters are visited in order; cluster ``k`` takes its ``capacity[k]`` nearest still-unassigned
    items and moves its centroid to their mean. Cluster ``k``'s distances only involve its own,
    not-yet-updated centroid, so they are computed ``block_size`` clusters at a time by one matmul, over the items
    still unassigned when the block starts: the candidate set shrinks block by block (on average to about half), and
    with it the matmul, the per-cluster top-k and the bookkeeping.

    Args:
        points: ``[N, D]``.
        centroids: ``[K, D]``; updated in place.
        capacities: ``[K]`` long, summing to ``N``.
        block_size: Clusters per distance matmul (memory ``remaining items x block_size``).
    Returns:
        ``[N]`` long assignment.
    """
    num_points = points.shape[0]
    num_clusters = centroids.shape[0]
    assignment = torch.full((num_points,), -1, dtype=torch.long, device=points.device)
    # Ranking by ||x||^2 - 2 x.c is the same as by squared distance (||c||^2 is constant per column).
    point_sq_norm = points.pow(2).sum(dim=1)
    remaining = torch.arange(num_points, device=points.device)  # unassigned items, in index order
    for block_start in range(0, num_clusters, block_size):
        block_end = min(block_start + block_size, num_clusters)
        candidates = points[remaining]  # [R, D]
        # [block, R]: one contiguous row per cluster (a column of [R, block] is a strided read, 15x slower to add to);
        # addmm fuses the -2 x.c product with the ||x||^2 term (no second pass over the block).
        block_scores = torch.addmm(
            point_sq_norm[None, remaining], centroids[block_start:block_end], candidates.T, beta=1.0, alpha=-2.0
        )
        taken_penalty = torch.zeros(remaining.shape[0], dtype=points.dtype, device=points.device)
        for offset, cluster in enumerate(range(block_start, block_end)):
            capacity = int(capacities[cluster])
            if capacity == 0:
                continue
            chosen = torch.topk(block_scores[offset] + taken_penalty, capacity, largest=False).indices
            assignment[remaining[chosen]] = cluster
            taken_penalty[chosen] = float("inf")
            centroids[cluster] = candidates[chosen].mean(dim=0)
        remaining = remaining[torch.isfinite(taken_penalty)]  # the block's taken items carry +inf
    return assignment


def _sweep_until_stable(sweep, max_iterations: int, description: str, progress: bool):
    """The outer loop both k-means variants share: ``sweep()`` updates the centroids in place and returns the new
    ``[N]`` assignment; stops when no item moves or after ``max_iterations`` sweeps.

    Returns ``(assignment, iterations, converged, changed_fraction)``.
    """
    assignment = None
    changed_fraction: List[float] = []
    converged = False
    iterations = 0
    for iterations in tqdm(range(1, max_iterations + 1), desc=description, disable=not progress, leave=False):
        new_assignment = sweep()
        if assignment is not None:
            changed = (new_assignment != assignment).float().mean().item()
            changed_fraction.append(changed)
            if changed == 0.0:
                converged = True
                assignment = new_assignment
                break
        assignment = new_assignment
    return assignment, iterations, converged, changed_fraction


def balanced_kmeans(
    points: torch.Tensor,
    num_clusters: int,
    *,
    max_iterations: int = 30,
    seed: int = 0,
    block_size: int = 256,
    max_points_per_centroid: Optional[int] = None,
    sweeps_after_sample: int = 3,
    progress: bool = False,
) -> KMeansResult:
    """Balanced k-means exactly as OneRec's Algorithm 1.

    Args:
        points: ``[N, D]`` float tensor; its device is used.
        num_clusters: ``K``; every cluster gets ``floor(N/K)`` or ``ceil(N/K)`` items.
        max_iterations: Sweeps at most ("until assignment convergence" in the paper); over the sample when
            there is one.
        seed: Seed of the random initial centroids (and of the sample).
        block_size: Clusters per distance matmul (memory ``N x block_size``).
        max_points_per_centroid: When ``N > K x`` this, Algorithm 1 first runs on a random sample of
            ``K x max_points_per_centroid`` items and its centroids start at most ``sweeps_after_sample`` sweeps
            over all ``N`` items. ``None``: every sweep covers all items.
        sweeps_after_sample: See above.
        progress: Show a progress bar over sweeps.
    Returns:
        :class:`KMeansResult` with ``centroids [K, D]`` and ``assignment [N]`` (the balanced assignment of all
        ``N`` items, whatever the sample).
    """
    _check_clustering_input(points, num_clusters)
    generator = torch.Generator().manual_seed(seed)
    num_points = points.shape[0]
    sample_size = num_points if max_points_per_centroid is None else num_clusters * max_points_per_centroid
    sample_iterations, sample_changed = 0, []
    if sample_size < num_points:
        sample = points[torch.randperm(num_points, generator=generator)[:sample_size].to(points.device)]
        centroids = _random_centroids(sample, num_clusters, generator)
        sample_capacities = balanced_capacities(sample_size, num_clusters)
        _, sample_iterations, _, sample_changed = _sweep_until_stable(
            lambda: _balanced_sweep(sample, centroids, sample_capacities, block_size),
            max_iterations,
            f"balanced k-means K={num_clusters} on {sample_size:,} sampled items",
            progress,
        )
    else:
        centroids = _random_centroids(points, num_clusters, generator)
    capacities = balanced_capacities(num_points, num_clusters)
    assignment, iterations, converged, changed_fraction = _sweep_until_stable(
        lambda: _balanced_sweep(points, centroids, capacities, block_size),
        sweeps_after_sample if sample_iterations else max_iterations,
        f"balanced k-means K={num_clusters}",
        progress,
    )
    if not converged:
        logger.info(
            "balanced k-means (K=%d) stopped after %d sweeps over all items without full convergence (%.2f%% of "
            "items still moving); raise %s for a tighter fit.",
            num_clusters,
            iterations,
            100 * (changed_fraction[-1] if changed_fraction else 1.0),
            "sweeps_after_sample" if sample_iterations else "max_iterations",
        )
    return KMeansResult(
        centroids,
        assignment,
        sample_iterations + iterations,
        converged,
        sample_changed + changed_fraction,
        sample_iterations,
    )


def nearest_centroid(points: torch.Tensor, centroids: torch.Tensor, chunk_size: int = 65536) -> torch.Tensor:
    """``argmin_k ||x - c_k||^2`` for each row: ``[N, D] x [K, D] -> [N]``, in chunks of rows."""
    centroid_sq_norm = centroids.pow(2).sum(dim=1)
    out = []
    for start in range(0, points.shape[0], chunk_size):
        chunk = points[start : start + chunk_size]
        out.append((centroid_sq_norm[None, :] - 2.0 * chunk @ centroids.T).argmin(dim=1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=points.device)


def kmeans(
    points: torch.Tensor,
    num_clusters: int,
    *,
    max_iterations: int = 30,
    seed: int = 0,
    progress: bool = False,
) -> KMeansResult:
    """Plain Lloyd k-means with the same initialisation as :func:`balanced_kmeans` (for ablations).

    A cluster left empty keeps its previous centroid, so it stays unused: that collapse is what
    the balanced variant exists to prevent, and the statistics report it.

    Args and returns as :func:`balanced_kmeans`.
    """
    _check_clustering_input(points, num_clusters)
    generator = torch.Generator().manual_seed(seed)
    centroids = _random_centroids(points, num_clusters, generator)

    def lloyd_sweep() -> torch.Tensor:
        new_assignment = nearest_centroid(points, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, new_assignment, points)
        counts = torch.bincount(new_assignment, minlength=num_clusters)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None].to(points.dtype)
        return new_assignment

    _, iterations, converged, changed_fraction = _sweep_until_stable(
        lloyd_sweep, max_iterations, f"k-means K={num_clusters}", progress
    )
    # Codes must be the nearest final centroid, the rule used for items added later.
    assignment = nearest_centroid(points, centroids)
    return KMeansResult(centroids, assignment, iterations, converged, changed_fraction)


def faiss_kmeans(
    points: torch.Tensor,
    num_clusters: int,
    *,
    max_iterations: int = 30,
    seed: int = 0,
    max_points_per_centroid: Optional[int] = 256,
) -> KMeansResult:
    """Plain k-means by ``faiss.Kmeans`` (CPU), as the RQ-KMeans peers run it.

    faiss runs ``max_iterations`` Lloyd iterations on a random sample of ``K x max_points_per_centroid`` items
    (``None``: every item) and re-seeds a cluster that empties by splitting a large one, so it rarely leaves codes
    unused, unlike :func:`kmeans`. The codes are the nearest final centroid of every item (the rule for items added
    later). ``converged`` says whether the last iteration left the objective unchanged.
    """
    _check_clustering_input(points, num_clusters)
    faiss = import_faiss()
    array = np.ascontiguousarray(points.detach().cpu().numpy(), dtype=np.float32)
    num_points, dim = array.shape
    clustering = faiss.Kmeans(
        dim,
        num_clusters,
        niter=max_iterations,
        seed=seed,
        max_points_per_centroid=max_points_per_centroid or num_points,
        min_points_per_centroid=1,  # small catalogues are expected here: no "please provide more points" warnings
        verbose=False,
    )
    clustering.train(array)
    centroids = torch.from_numpy(np.array(clustering.centroids, dtype=np.float32)).to(points.device, points.dtype)
    objective = [float(value) for value in clustering.obj]
    converged = bool(len(objective) > 1 and objective[-1] == objective[-2])
    return KMeansResult(centroids, nearest_centroid(points, centroids), len(objective), converged)


def _resolve_device(device: Optional[str]) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def fit_residual_kmeans(
    embeddings: torch.Tensor, config: ResidualKMeansConfig, progress: bool = True
) -> ResidualQuantization:
    """Learns ``L`` codebooks level by level on residuals (paper §3.1).

    Args:
        embeddings: ``[N, D]`` item embeddings (validated by the caller).
        config: :class:`ResidualKMeansConfig`.
        progress: Show progress bars.
    Returns:
        :class:`ResidualQuantization` with codebooks on the CPU and ``codes [N, L]``.
    """
    device = _resolve_device(config.device)
    residual = embeddings.to(device=device, dtype=torch.float32).clone()
    codebooks, levels, residual_norm, codes = [], [], [], []
    for level, size in enumerate(tqdm(config.codebook_sizes, desc="residual k-means levels", disable=not progress)):
        residual_norm.append(residual.norm(dim=1).mean().item())
        common = dict(max_iterations=config.max_iterations, seed=config.seed + level)
        if config.balanced:
            result = balanced_kmeans(
                residual,
                size,
                **common,
                block_size=config.cluster_block_size,
                max_points_per_centroid=config.max_points_per_centroid,
                sweeps_after_sample=config.sweeps_after_sample,
            )
        elif config.backend == "faiss":
            result = faiss_kmeans(residual, size, **common, max_points_per_centroid=config.max_points_per_centroid)
        else:
            result = kmeans(residual, size, **common)
        residual = residual - result.centroids[result.assignment]
        codebooks.append(result.centroids.cpu())
        codes.append(result.assignment.cpu())
        levels.append(
            KMeansResult(
                result.centroids.cpu(),
                result.assignment.cpu(),
                result.iterations,
                result.converged,
                result.changed_fraction,
                result.sample_iterations,
            )
        )
    residual_norm.append(residual.norm(dim=1).mean().item())
    return ResidualQuantization(codebooks, torch.stack(codes, dim=1), levels, residual_norm)


def quantize_with_codebooks(embeddings: torch.Tensor, codebooks: Sequence[torch.Tensor]) -> torch.Tensor:
    """Codes of (new) items under frozen codebooks: nearest centroid level by level on residuals.

    Args:
        embeddings: ``[N, D]``.
        codebooks: ``L`` tensors ``[K_l, D]``.
    Returns:
        ``[N, L]`` long codes.
    """
    residual = embeddings.to(torch.float32)
    codes = []
    for codebook in codebooks:
        codebook = codebook.to(residual.device, torch.float32)
        level_codes = nearest_centroid(residual, codebook)
        residual = residual - codebook[level_codes]
        codes.append(level_codes)
    return torch.stack(codes, dim=1) if codes else torch.zeros((embeddings.shape[0], 0), dtype=torch.long)
