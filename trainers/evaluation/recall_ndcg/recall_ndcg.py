"""Recall@k and NDCG@k for leave-one-out next-item recommendation, as an offline `evaluate` metric.

Load it from this directory (no hub access needed):

    import evaluate
    from trainers.evaluation import RECALL_NDCG_METRIC_PATH
    metric = evaluate.load(str(RECALL_NDCG_METRIC_PATH))
    metric.compute(predictions=[["3", "7", "1"]], references=["7"], k_values=[1, 5])

`evaluate` copies this single file into its modules cache and imports the copy, so the file must stand alone.
When the project package is importable (the normal case inside this repository or with `onerec-hf`
installed), the numbers come from `trainers.evaluation.ranking_metrics` itself: one code path for every
model. Otherwise (the file copied elsewhere, e.g. into a hub Space) the same small formula below is used;
`tests/test_evaluation.py` checks that both agree. `RANKING_METRICS_SOURCE` says which one is active.
"""

import datasets
import evaluate
import numpy as np

_CITATION = """\
@inproceedings{rajput2023tiger,
  title={Recommender Systems with Generative Retrieval},
  author={Rajput, Shashank and others},
  booktitle={NeurIPS},
  year={2023}
}
"""

_DESCRIPTION = """\
Leave-one-out ranking metrics: one held-out target item per user, a ranked list of recommended item ids per
user. Recall@k = fraction of users whose target is in the top k; NDCG@k = mean of 1/log2(rank + 2) over users
whose target has 0-based rank < k (0 otherwise). Lists may be shorter than k (a miss); an item listed twice
raises a ValueError naming the user index.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions (`list[list[str]]`): per user, recommended item ids, best first.
    references (`list[str]`): per user, the held-out target item id.
    k_values (`list[int]`, defaults to `[5, 10]`): cut-offs.
Returns:
    `dict[str, float]`: `recall@k` and `ndcg@k` for every k in increasing order.
Example:
    >>> metric = evaluate.load("trainers/evaluation/recall_ndcg")
    >>> metric.compute(predictions=[["a", "b"], ["c"]], references=["b", "z"], k_values=[1, 2])
    {'recall@1': 0.0, 'ndcg@1': 0.0, 'recall@2': 0.5, 'ndcg@2': 0.31546487678572877}
"""


def _standalone_ranking_metrics(predictions, references, k_values=(5, 10)):
    """Copy of `trainers.evaluation.ranking_metrics` (same definitions, same errors) for standalone use."""
    ks = tuple(k_values)
    if not ks or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in ks):
        raise ValueError(f"ks={ks!r} is invalid; pass one or more integers >= 1, e.g. ks=(5, 10).")
    ks = tuple(sorted({int(k) for k in ks}))
    if len(predictions) != len(references):
        raise ValueError(
            f"Got {len(predictions)} ranked lists for {len(references)} targets; pass one ranked list per target user."
        )
    if len(references) == 0:
        raise ValueError("No users to evaluate: ranked and targets are empty.")
    max_k = ks[-1]
    ranks = np.full(len(references), max_k, dtype=np.int64)
    for user, (items, target) in enumerate(zip(predictions, references)):
        items = [str(item) for item in items]
        if len(set(items)) != len(items):
            raise ValueError(f"User {user}: the ranked list holds an item more than once.")
        if isinstance(target, (list, tuple)):
            if len(target) != 1:
                raise ValueError(f"User {user}: the target {list(target)!r} is not one item.")
            target = target[0]
        head = items[:max_k]
        if str(target) in head:
            ranks[user] = head.index(str(target))
    gains = np.where(ranks < max_k, 1.0 / np.log2(ranks + 2.0), 0.0)
    metrics = {}
    for k in ks:
        hit = ranks < k
        metrics[f"recall@{k}"] = float(hit.mean())
        metrics[f"ndcg@{k}"] = float(np.where(hit, gains, 0.0).mean())
    return metrics


try:  # the project's own implementation when it is importable: identical numbers by construction
    from trainers.evaluation import ranking_metrics as _ranking_metrics

    RANKING_METRICS_SOURCE = "trainers.evaluation"
except ImportError:  # standalone copy
    _ranking_metrics = _standalone_ranking_metrics
    RANKING_METRICS_SOURCE = "standalone"


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RecallNDCG(evaluate.Metric):
    """Recall@k / NDCG@k of ranked item-id lists against one target id per user."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("string")), "references": datasets.Value("string")}
            ),
            reference_urls=["https://arxiv.org/abs/2305.05065", "https://arxiv.org/abs/2502.18965"],
        )

    def _compute(self, predictions, references, k_values=(5, 10)):
        return _ranking_metrics(predictions, references, tuple(k_values))
