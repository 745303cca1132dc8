"""Plots a person would rather look at than read: training curves and expert load."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Union

import torch


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display on training machines), imported on use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Union[str, Path]) -> Path:
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    _pyplot().close(figure)
    return path


def plot_training_curves(log_history: Sequence[Dict[str, float]], path: Union[str, Path]) -> Path:
    """Loss terms against the training step from a ``Trainer``'s ``state.log_history``: total loss and NTP loss
    (left), the load-balancing and z-losses (middle), any evaluation metric logged as ``eval_*`` (right)."""
    plt = _pyplot()

    def series(key: str):
        points = [(entry["step"], entry[key]) for entry in log_history if key in entry and "step" in entry]
        return ([p[0] for p in points], [p[1] for p in points]) if points else None

    figure, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for key in ("loss", "ntp_loss", "eval_loss"):
        if (data := series(key)) is not None:
            axes[0].plot(*data, label=key, marker="." if key.startswith("eval") else None)
    axes[0].set_title("next-token loss")
    for key in ("aux_loss", "z_loss"):
        if (data := series(key)) is not None:
            axes[1].plot(*data, label=key)
    axes[1].set_title("MoE auxiliary losses (aux = 1.0 is balanced)")
    eval_keys = sorted(
        {
            k
            for entry in log_history
            for k in entry
            if k.startswith("eval_")
            and k != "eval_loss"
            and not k.endswith(("runtime", "per_second", "steps_per_second"))
            and k != "eval_epoch"
        }
    )
    for key in eval_keys:
        axes[2].plot(*series(key), label=key, marker=".")
    axes[2].set_title("validation metrics")
    for axis in axes:
        axis.set_xlabel("step")
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    return _save(figure, path)


def plot_expert_load(
    expert_load: Union[torch.Tensor, List[List[float]]], path: Union[str, Path], title: str = "expert load"
) -> Path:
    """Heat map of ``[sparse layers, experts]`` assignment counts or shares, normalised per layer to
    ``share * num_experts`` (1.0 = perfectly balanced; 0 = a dead expert)."""
    plt = _pyplot()

    load = torch.as_tensor(expert_load, dtype=torch.float32)
    relative = load / load.sum(dim=1, keepdim=True).clamp(min=1e-12) * load.shape[1]
    figure, axis = plt.subplots(figsize=(max(6, load.shape[1] * 0.35), 1.6 + 0.45 * load.shape[0]))
    image = axis.imshow(relative.numpy(), cmap="coolwarm", vmin=0, vmax=2, aspect="auto")
    axis.set_xlabel("expert")
    axis.set_ylabel("sparse decoder layer")
    axis.set_yticks(range(load.shape[0]))
    axis.set_title(
        f"{title}: share x experts (1.0 = balanced)\nmin {relative.min():.2f}, max {relative.max():.2f}", fontsize=9
    )
    figure.colorbar(image, ax=axis)
    return _save(figure, path)


def plot_validation_curves(
    runs: Dict[str, Sequence[Dict[str, float]]], path: Union[str, Path], metric: str = "eval_recall@10"
) -> Path:
    """Validation loss (left) and ``metric`` (right) per epoch for several runs side by side, from each run's
    ``Trainer`` ``state.log_history`` (``{run name: log_history}``), e.g. OneRec m = 5 against TIGER-style m = 1."""
    plt = _pyplot()
    figure, (loss_axis, metric_axis) = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, history in runs.items():
        for axis, key in ((loss_axis, "eval_loss"), (metric_axis, metric)):
            points = [(entry["epoch"], entry[key]) for entry in history if key in entry and "epoch" in entry]
            if points:
                axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    loss_axis.set_title("validation loss (all validation windows)")
    metric_axis.set_title(f"validation {metric.removeprefix('eval_')}")
    for axis in (loss_axis, metric_axis):
        axis.set_xlabel("epoch")
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    return _save(figure, path)


def hit_rank_counts(ranked: Sequence[Sequence[str]], targets: Sequence[str], k: int = 10) -> List[int]:
    """How many users find their target at each position ``1..k`` of their ranked list: ``[k]`` counts (a user whose
    target is not in the top ``k`` counts nowhere). The bars of :func:`plot_hit_ranks`."""
    if len(ranked) != len(targets):
        raise ValueError(f"hit_rank_counts: {len(ranked)} ranked lists for {len(targets)} targets.")
    counts = [0] * k
    for items, target in zip(ranked, targets):
        top = list(items)[:k]
        if target in top:
            counts[top.index(target)] += 1
    return counts


def plot_hit_ranks(
    ranked_by_model: Dict[str, Sequence[Sequence[str]]], targets: Sequence[str], path: Union[str, Path], k: int = 10
) -> Path:
    """Where each model's hits land in its top ``k``: the share of users whose target is at position 1, 2, ..., ``k``,
    one group of bars per position and one bar per model (``{model name: ranked lists aligned with targets}``).
    Recall@k is the sum of a model's bars; NDCG rewards the bars on the left."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(max(6.0, 0.9 * k), 3.8))
    width = 0.8 / max(1, len(ranked_by_model))
    for index, (name, ranked) in enumerate(ranked_by_model.items()):
        shares = [count / max(1, len(targets)) for count in hit_rank_counts(ranked, targets, k)]
        positions = [rank + 1 + (index - (len(ranked_by_model) - 1) / 2) * width for rank in range(k)]
        axis.bar(positions, shares, width=width, label=f"{name} (recall@{k} {sum(shares):.4f})")
    axis.set_xticks(range(1, k + 1))
    axis.set_xlabel("position of the held-out item in the ranked list")
    axis.set_ylabel("share of users")
    axis.set_title(f"Where the hits land ({len(targets):,} users)")
    axis.legend(fontsize=8)
    return _save(figure, path)


def plot_metric_by_group(
    rows_by_model: Dict[str, Sequence[Dict[str, float]]], metric: str, path: Union[str, Path], xlabel: str
) -> Path:
    """One group of bars per user group, one bar per model: ``{model name: rows}``, each row a dict with ``group``,
    ``users`` and ``metric`` (the rows of :func:`trainers.evaluation.metrics_by_target_popularity`). A group without
    users draws no bar."""
    plt = _pyplot()
    groups = [row["group"] for row in next(iter(rows_by_model.values()), [])]
    figure, axis = plt.subplots(figsize=(max(6.0, 1.3 * len(groups)), 3.8))
    width = 0.8 / max(1, len(rows_by_model))
    for index, (name, rows) in enumerate(rows_by_model.items()):
        positions = [group + (index - (len(rows_by_model) - 1) / 2) * width for group in range(len(rows))]
        axis.bar(positions, [row.get(metric, 0.0) for row in rows], width=width, label=name)
    axis.set_xticks(range(len(groups)))
    axis.set_xticklabels([f"{row['group']}\n{row['users']:,} users" for row in next(iter(rows_by_model.values()))])
    axis.set_xlabel(xlabel)
    axis.set_ylabel(metric)
    axis.legend(fontsize=8)
    return _save(figure, path)
