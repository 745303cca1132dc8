"""The one evaluation code path shared by every recommender of the project.

OneRec, the TIGER-style model, SASRec and the baselines of `trainers.baselines` are all scored here, with the
leave-one-out protocol of TIGER / S3-Rec (see `trainers.data.leave_one_out_split`):

- `ranking`: Recall@k / NDCG@k, the `Recommender` protocol and `evaluate_recommender`, top-k files, user samples;
- `generative`: OneRec (or any generative model) behind the `Recommender` protocol, with session metrics;
- `sessions`: hit rate, consumed items, coverage and diversity of generated sessions;
- `reward`: held-out ROC AUC of the session reward model;
- `alignment`: the reward of generated sessions (the paper's Table 1 form);
- `tables`: markdown tables with the published reference rows; `plots`: training and validation figures;
- `recall_ndcg/`: the same ranking metrics as an offline `evaluate` metric.
"""

from .generative import (
    GenerativeRecommender,
    choose_renormalize_logits,
    code_level_mass,
    evaluate_generative_model,
)
from .ranking import (
    RECALL_NDCG_METRIC_PATH,
    Recommender,
    code_prefix_hit_rates,
    evaluate_recommender,
    held_out_sessions,
    metrics_by_history_transition,
    metrics_by_target_popularity,
    ranking_metrics,
    read_topk_json,
    sample_users,
    top_item_follows_history,
    training_followers,
    write_topk_json,
)
from .reward import DEFAULT_POSITIVE_THRESHOLDS, RewardMetrics, format_auc_table, reward_metrics, roc_auc
from .sessions import session_metrics
from .tables import PUBLISHED_BEAUTY, markdown_table, metrics_table

__all__ = [
    "DEFAULT_POSITIVE_THRESHOLDS",
    "GenerativeRecommender",
    "PUBLISHED_BEAUTY",
    "RECALL_NDCG_METRIC_PATH",
    "Recommender",
    "RewardMetrics",
    "choose_renormalize_logits",
    "code_level_mass",
    "code_prefix_hit_rates",
    "evaluate_generative_model",
    "evaluate_recommender",
    "format_auc_table",
    "held_out_sessions",
    "markdown_table",
    "metrics_by_history_transition",
    "metrics_by_target_popularity",
    "metrics_table",
    "ranking_metrics",
    "read_topk_json",
    "reward_metrics",
    "roc_auc",
    "sample_users",
    "session_metrics",
    "top_item_follows_history",
    "training_followers",
    "write_topk_json",
]
