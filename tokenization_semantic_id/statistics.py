"""Codebook health: utilisation, cluster-size spread, collisions, and a plot of them."""

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
        (over all K codes, unused count as 0), ``max_over_mean``.
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

    Args:
        codes: ``[N, L']`` codes, the first ``num_semantic_levels`` columns from the quantiser and any
            further column the disambiguation level.
        codebook_sizes: ``K`` of each of the ``L'`` columns.
        num_semantic_levels: ``L`` (columns before disambiguation).
    """
    semantic = codes[:, :num_semantic_levels]
    return {
        "num_items": int(codes.shape[0]),
        "levels": level_statistics(codes, codebook_sizes),
        "prefixes": prefix_statistics(semantic),
        "collision_rate_before": collision_rate(semantic),
        "collision_rate_after": collision_rate(codes),
    }


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
    first = next(iter(reports.values()))
    num_levels = len(first["levels"])
    fig, axes = plt.subplots(1, num_levels, figsize=(4.2 * num_levels, 3.4), squeeze=False)
    for level in range(num_levels):
        ax = axes[0][level]
        for name, report in reports.items():
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
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
