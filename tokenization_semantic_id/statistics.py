"""Codebook health: utilisation, cluster-size spread, collisions, reconstruction error, and plots of them."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import torch

from .collisions import collision_rate


def level_statistics(codes: torch.Tensor, codebook_sizes: Sequence[int]) -> List[Dict[str, float]]:
    """Per-level statistics of a code table.

    Args:
        codes: ``[N, L]`` codes (one column per level).
        codebook_sizes: ``K_l`` for each column.
    Returns:
        One dict per level: ``codebook_size``, ``used_codes``, ``utilisation`` (used / K),
        ``min_cluster`` / ``max_cluster`` (over used codes), ``mean_cluster``, ``std_cluster``
        (over all K codes, unused count as 0), ``max_over_mean``, ``cv_cluster`` (``std / mean``: the spread in
        units of the mean, comparable across codebook sizes; 0 for a perfectly balanced level).
    """
    stats = []
    for level, size in enumerate(codebook_sizes):
        counts = torch.bincount(codes[:, level], minlength=size).double()
        used = counts[counts > 0]
        mean = counts.mean().item()
        stats.append(
            {
                "level": level,
                "codebook_size": int(size),
                "used_codes": int(used.numel()),
                "utilisation": used.numel() / size,
                "min_cluster": int(used.min().item()) if used.numel() else 0,
                "max_cluster": int(used.max().item()) if used.numel() else 0,
                "mean_cluster": mean,
                "std_cluster": counts.std(unbiased=False).item(),
                "max_over_mean": counts.max().item() / mean if mean > 0 else 0.0,
                "cv_cluster": counts.std(unbiased=False).item() / mean if mean > 0 else 0.0,
            }
        )
    return stats


def prefix_statistics(codes: torch.Tensor) -> List[Dict[str, float]]:
    """How many distinct prefixes each depth has and how many items share the busiest one.

    Returns one dict per depth ``d = 1..L``: ``distinct_prefixes``, ``max_items_per_prefix``.
    """
    out = []
    for depth in range(1, codes.shape[1] + 1):
        _, counts = torch.unique(codes[:, :depth], dim=0, return_counts=True)
        out.append(
            {"depth": depth, "distinct_prefixes": int(counts.numel()), "max_items_per_prefix": int(counts.max().item())}
        )
    return out


def codebook_report(codes: torch.Tensor, codebook_sizes: Sequence[int], num_semantic_levels: int) -> dict:
    """Everything the build prints and saves: per-level, per-prefix and collision statistics.

    ``colliding_items_before`` counts the items that share their full semantic code with another item before the
    disambiguation level separates them.

    Args:
        codes: ``[N, L']`` codes, the first ``num_semantic_levels`` columns from the quantiser and any
            further column the disambiguation level.
        codebook_sizes: ``K`` of each of the ``L'`` columns.
        num_semantic_levels: ``L`` (columns before disambiguation).
    """
    semantic = codes[:, :num_semantic_levels]
    rate_before = collision_rate(semantic)
    return {
        "num_items": int(codes.shape[0]),
        "num_semantic_levels": int(num_semantic_levels),
        "levels": level_statistics(codes, codebook_sizes),
        "prefixes": prefix_statistics(semantic),
        "colliding_items_before": round(rate_before * codes.shape[0]),
        "collision_rate_before": rate_before,
        "collision_rate_after": collision_rate(codes),
    }


def _save_figure(fig, path: Union[str, Path]) -> Path:
    """Lays ``fig`` out, writes it to ``path`` (a PNG, parent folders created) and closes it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_codebook_report(
    reports: Union[dict, Dict[str, dict]],
    codes: Union[torch.Tensor, Dict[str, torch.Tensor]],
    path: Union[str, Path],
    title: Optional[str] = None,
) -> Path:
    """Saves a PNG: per level, cluster sizes sorted from largest to smallest (one line per variant).

    A balanced codebook is a flat line at N/K; collapse shows as a steep head and a long zero tail.

    Args:
        reports: One :func:`codebook_report` dict, or ``{variant_name: report}`` to overlay variants.
        codes: The matching ``[N, L']`` code table(s).
        path: Output ``.png`` path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if isinstance(codes, torch.Tensor):
        reports, codes = {"codes": reports}, {"codes": codes}
    first = max(reports.values(), key=lambda report: len(report["levels"]))
    num_levels = len(first["levels"])
    fig, axes = plt.subplots(1, num_levels, figsize=(4.2 * num_levels, 3.4), squeeze=False)
    for level in range(num_levels):
        ax = axes[0][level]
        for name, report in reports.items():
            if level >= len(report["levels"]):  # a variant without a collision level
                continue
            stats = report["levels"][level]
            counts = torch.bincount(codes[name][:, level], minlength=stats["codebook_size"])
            sizes = torch.sort(counts, descending=True).values.numpy()
            ax.plot(
                range(1, len(sizes) + 1),
                sizes,
                label=f"{name}: {100 * stats['utilisation']:.0f}% used, max {stats['max_cluster']}",
            )
        ax.set_xlabel("code (sorted by size)")
        ax.set_ylabel("items per code")
        ax.set_title(f"level {level + 1} (K={first['levels'][level]['codebook_size']})")
        ax.set_yscale("symlog", linthresh=1)
        ax.legend(fontsize=7)
    collision_text = ", ".join(f"{name}: {100 * r['collision_rate_before']:.2f}%" for name, r in reports.items())
    fig.suptitle((title + "\n" if title else "") + f"collisions before resolution - {collision_text}", fontsize=9)
    return _save_figure(fig, path)


def reconstruction_report(
    embeddings: torch.Tensor, reconstruction: torch.Tensor, chunk_size: int = 65536
) -> Dict[str, float]:
    """How far each item's reconstruction from its code lies from its embedding.

    Args:
        embeddings: ``[N, D]`` the vectors quantised (item embeddings, or an RQ-VAE's latents).
        reconstruction: ``[N, D]`` what the codes give back (sum of centroids, decoder output, PQ decode).
        chunk_size: Rows compared at a time (in float64).
    Returns:
        ``mse`` (mean over items of ``||x - x_hat||^2``), ``mean_distance`` (mean of ``||x - x_hat||``) and
        ``relative_error`` (``sum ||x - x_hat||^2 / sum ||x - mean(x)||^2``: the share of the embeddings' variance
        the codes lose, comparable across embedding scales; 0 is perfect, 1 is no better than the mean).
    """
    mean = embeddings.sum(dim=0, dtype=torch.float64) / max(embeddings.shape[0], 1)
    errors, spread = [], torch.zeros((), dtype=torch.float64)
    for start in range(0, embeddings.shape[0], chunk_size):  # float64 copies of a chunk at a time, not of all rows
        rows = embeddings[start : start + chunk_size].double()
        errors.append((rows - reconstruction[start : start + chunk_size].double()).pow(2).sum(dim=1))
        spread += (rows - mean).pow(2).sum()
    error = torch.cat(errors)
    return {
        "mse": error.mean().item(),
        "mean_distance": error.sqrt().mean().item(),
        "relative_error": (error.sum() / spread).item() if spread > 0 else 0.0,
    }


def quantizer_statistics(tokenizer) -> dict:
    """The numbers to compare quantizers by, for a tokenizer ``build_semantic_ids`` returned.

    :func:`codebook_report` of its codes (utilisation, cluster-size spread and collisions per level; items sharing
    a full code before resolution) with ``quantizer`` (its name) and ``reconstruction`` (the build's
    :func:`reconstruction_report`: for residual k-means the embedding against the sum of its centroids, for an
    RQ-VAE the decoder's output plus ``latent_*`` for the latent against its codewords, for OPQ faiss's PQ decode).
    """
    return {
        **tokenizer.statistics(),
        "quantizer": tokenizer.quantizer_type,
        "reconstruction": dict(tokenizer.build_info.get("reconstruction", {})),
    }


def plot_quantizer_comparison(
    stats_by_name: Dict[str, dict], path: Union[str, Path], title: Optional[str] = None
) -> Path:
    """Saves a PNG comparing quantizers: per semantic level the code utilisation and the cluster-size spread
    (``cv_cluster``), then the share of items sharing a full code before collision resolution and the relative
    reconstruction error (one bar per quantizer).

    Args:
        stats_by_name: ``{quantizer name: report}``, each report a :func:`codebook_report` with a ``reconstruction``
            dict (:func:`reconstruction_report`) and ``num_semantic_levels``, as
            :func:`~tokenization_semantic_id.builder.quantizer_statistics` returns.
        path: Output ``.png`` path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(stats_by_name)
    width = 0.8 / max(len(names), 1)
    fig, axes = plt.subplots(1, 4, figsize=(4.2 * 4, 3.4), squeeze=False)
    utilisation, spread, collisions, error = axes[0]
    for index, name in enumerate(names):
        report = stats_by_name[name]
        levels = report["levels"][: report["num_semantic_levels"]]
        positions = [level + 1 + (index - (len(names) - 1) / 2) * width for level in range(len(levels))]
        utilisation.bar(positions, [100 * level["utilisation"] for level in levels], width, label=name)
        spread.bar(positions, [level["cv_cluster"] for level in levels], width, label=name)
        collisions.bar(index, 100 * report["collision_rate_before"], 0.6, label=name)
        error.bar(index, report["reconstruction"].get("relative_error", float("nan")), 0.6, label=name)
    utilisation.set(title="codes used", xlabel="level", ylabel="% of the codebook", ylim=(0, 105))
    spread.set(title="cluster-size spread", xlabel="level", ylabel="std / mean of items per code")
    collisions.set(title="items sharing a full code", ylabel="% of items (before resolution)")
    error.set(title="reconstruction error", ylabel="relative (share of variance lost)")
    for ax in (collisions, error):
        ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    for ax in (utilisation, spread):
        ax.set_xticks(range(1, 1 + max(stats_by_name[name]["num_semantic_levels"] for name in names)))
    spread.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save_figure(fig, path)
