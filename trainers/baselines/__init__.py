"""The recommenders OneRec is compared with, all behind the `Recommender` protocol of `trainers.evaluation`.

- `heuristics`: most-popular and a successor (item-to-next-item) recommender tuned on validation;
- `sasrec`: SASRec (Kang & McAuley, 2018), a tuned self-attentive sequential recommender with its own training loop.
"""

from .heuristics import DEFAULT_SUCCESSOR_GRID, MostPopularRecommender, SuccessorRecommender, tune_successor
from .sasrec import SASRec, SASRecConfig, SASRecRecommender

__all__ = [
    "DEFAULT_SUCCESSOR_GRID",
    "MostPopularRecommender",
    "SASRec",
    "SASRecConfig",
    "SASRecRecommender",
    "SuccessorRecommender",
    "tune_successor",
]
