"""Reward-model metrics: held-out ROC AUC per reward tower."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Dict, Optional

import numpy as np
from scipy.stats import rankdata

from .tables import markdown_table

# Held-out AUC needs binary outcomes: a soft `rating` label counts as positive from a mean rating of 4 on 1-5.
DEFAULT_POSITIVE_THRESHOLDS: dict[str, float] = {"rating": 0.75}


def roc_auc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a random positive scores above a random negative (ties
    count 1/2), computed from average ranks (Mann-Whitney U). NaN when one class is missing.

    Args:
        scores (`np.ndarray` of shape ``[N]``): Higher means more likely positive.
        positives (`np.ndarray` of shape ``[N]``): Boolean outcomes.
    """
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives, dtype=bool)
    num_positive = int(positives.sum())
    num_negative = len(positives) - num_positive
    if num_positive == 0 or num_negative == 0:
        return float("nan")
    ranks = rankdata(scores)  # average ranks for ties
    return float((ranks[positives].sum() - num_positive * (num_positive + 1) / 2) / (num_positive * num_negative))


def reward_metrics(
    logits: np.ndarray,
    labels: np.ndarray,
    label_mask: Optional[np.ndarray],
    reward_names: Sequence[str],
    positive_thresholds: Optional[Mapping[str, float]] = None,
) -> Dict[str, float]:
    """Per-tower ROC AUC over the samples that have the target.

    Args:
        logits (`np.ndarray` of shape ``[N, T]``): Tower logits (or rewards; AUC only uses their order).
        labels (`np.ndarray` of shape ``[N, T]``): Targets in ``[0, 1]``.
        label_mask (`np.ndarray` of shape ``[N, T]``, *optional*): 1 where the target exists.
        reward_names (`Sequence[str]`): The ``T`` tower names.
        positive_thresholds (`Mapping[str, float]`, *optional*): A label counts as positive from this value;
            default 0.5, and 0.75 for ``rating`` (:data:`DEFAULT_POSITIVE_THRESHOLDS`: a mean rating >= 4 of 5).

    Returns:
        `dict` with ``auc_<name>``, ``positive_rate_<name>`` and ``samples_<name>`` per tower, and for soft targets
        (labels other than 0/1) ``pearson_<name>`` between ``sigmoid(logit)`` and the label.
    """
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if logits.shape != labels.shape or logits.ndim != 2 or logits.shape[1] != len(reward_names):
        raise ValueError(f"logits {logits.shape} and labels {labels.shape} must both be (N, {len(reward_names)}).")
    mask = np.ones_like(labels, dtype=bool) if label_mask is None else np.asarray(label_mask) > 0
    thresholds = {**DEFAULT_POSITIVE_THRESHOLDS, **(positive_thresholds or {})}
    metrics: Dict[str, float] = {}
    for t, name in enumerate(reward_names):
        keep = mask[:, t]
        scores, targets = logits[keep, t], labels[keep, t]
        positives = targets >= thresholds.get(name, 0.5)
        metrics[f"auc_{name}"] = roc_auc(scores, positives)
        metrics[f"positive_rate_{name}"] = float(positives.mean()) if len(targets) else float("nan")
        metrics[f"samples_{name}"] = int(keep.sum())
        if len(targets) > 1 and not np.isin(targets, (0.0, 1.0)).all():
            probabilities = 1.0 / (1.0 + np.exp(-scores))
            metrics[f"pearson_{name}"] = float(np.corrcoef(probabilities, targets)[0, 1])
    return metrics


class RewardMetrics:
    """``compute_metrics`` for the Trainer: :func:`reward_metrics` from an ``EvalPrediction`` whose ``label_ids``
    are ``(labels, label_mask)`` (with ``label_names=["labels", "label_mask"]``) or ``labels`` alone."""

    def __init__(self, reward_names: Sequence[str], positive_thresholds: Optional[Mapping[str, float]] = None):
        self.reward_names = tuple(reward_names)
        self.positive_thresholds = positive_thresholds

    def __call__(self, prediction) -> Dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        label_ids = prediction.label_ids
        labels, mask = (label_ids[0], label_ids[1]) if isinstance(label_ids, (tuple, list)) else (label_ids, None)
        return reward_metrics(logits, labels, mask, self.reward_names, self.positive_thresholds)


def format_auc_table(metrics: Mapping[str, float], reward_names: Sequence[str], prefix: str = "") -> str:
    """Markdown table: one row per tower with held-out samples, positive rate, ROC AUC and (soft targets)
    Pearson r. ``prefix`` is the metric-key prefix, e.g. ``"test_"`` for ``Trainer.predict`` metrics."""
    rows = []
    for name in reward_names:
        pearson = metrics.get(f"{prefix}pearson_{name}")
        rows.append(
            [
                name,
                int(metrics[f"{prefix}samples_{name}"]),
                f"{metrics[f'{prefix}positive_rate_{name}']:.3f}",
                f"{metrics[f'{prefix}auc_{name}']:.4f}",
                "" if pearson is None else f"{pearson:.4f}",
            ]
        )
    return markdown_table(["tower", "held-out samples", "positive rate", "ROC AUC", "Pearson r"], rows)
