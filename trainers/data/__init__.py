"""Real-data loading, leave-one-out splits and session samples for OneRec training.

All loaders return a `datasets.DatasetDict` with a `"sequences"` split (`user_id`, `item_ids` in time order,
optional `timestamps` / `ratings`) and an `"items"` split (`item_id`, `text`, raw metadata); see
`trainers.data.loaders` and `docs/data_format.md`.
"""

from .arguments import DatasetArguments, check_local_dir, check_minimum_values, named_paths
from .loaders import (
    BUNDLED_DATASET_NAMES,
    MAX_ITEM_TEXT_CHARS,
    NAMED_DATASETS,
    describe,
    index_items,
    load_bundled,
    load_inter_json,
    load_interactions,
    load_named_dataset,
    load_recbole,
    load_s3rec,
    natural_order,
)
from .reward_samples import build_reward_samples, default_reward_names
from .sessions import build_session_samples, build_time_sessions, split_sessions_by_gap
from .splits import leave_one_out_split
from .streaming import stream_training_windows, synthetic_sequences
from .tokenized import TOKENIZED_COLUMNS, tokenize_session_samples
from .windows import PAIR_CONSTRUCTIONS, RandomWindowDataset

__all__ = [
    "check_local_dir",
    "check_minimum_values",
    "BUNDLED_DATASET_NAMES",
    "TOKENIZED_COLUMNS",
    "PAIR_CONSTRUCTIONS",
    "RandomWindowDataset",
    "DatasetArguments",
    "MAX_ITEM_TEXT_CHARS",
    "build_session_samples",
    "build_time_sessions",
    "describe",
    "leave_one_out_split",
    "load_bundled",
    "load_inter_json",
    "load_named_dataset",
    "NAMED_DATASETS",
    "load_interactions",
    "load_recbole",
    "load_s3rec",
    "named_paths",
    "stream_training_windows",
    "synthetic_sequences",
    "index_items",
    "natural_order",
    "build_reward_samples",
    "default_reward_names",
    "split_sessions_by_gap",
    "tokenize_session_samples",
]
