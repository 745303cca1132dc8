"""Table 1 of the paper, in form: every model's sessions scored by the session reward model, plus ground truth.

For a set of test users (history = everything but their last item), each model proposes ``S`` sessions of ``m``
items, history items excluded:

* a listwise generative model (OneRec, ``session_length > 1``): its ``S`` best sessions from trie-constrained
  session beam search;
* a point-wise model (TIGER-style OneRec with ``m = 1``, SASRec, the baselines): its top ``S * m`` ranked items cut
  into ``S`` consecutive sessions (the first one is what a point-wise system would show first).

Each session is scored by every tower of the reward model; per tower, ``mean`` is the mean over a user's ``S``
sessions and ``max`` their maximum, both averaged over users (the paper's "mean" / "max" columns). Ground truth on
the same users, so that reward hacking would show: Recall@10 / NDCG@10 of the model's full-catalogue ranking of
the held-out test item, and the hit rate of its best session (the test item is in it).
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence

import numpy as np

from .ranking import ranking_metrics


def sessions_from_ranking(
    ranked: Sequence[Sequence[str]], num_sessions: int, session_length: int
) -> List[List[List[str]]]:
    """``S`` sessions per user from a point-wise ranking: items ``[s*m, (s+1)*m)`` of the ranked list make session
    ``s``. ``ranked``: per user, at least ``S*m`` items best first (fewer give fewer sessions). Shape of the result:
    ``(users, <= S, m)``."""
    return [
        [
            items[start : start + session_length]
            for start in range(0, len(items), session_length)
            if len(items[start : start + session_length]) == session_length
        ][:num_sessions]
        for items in ranked
    ]


def generated_sessions(
    model,
    tokenizer,
    histories: Sequence[Sequence[str]],
    num_sessions: int,
    session_length: int,
    num_beams: int,
    batch_size: int = 16,
) -> List[List[List[str]]]:
    """The ``S`` best sessions per user from OneRec's session beam search (history excluded, no repeats)."""
    found = model.recommend(
        tokenizer,
        [list(h) for h in histories],
        num_sessions=num_sessions,
        num_beams=max(num_beams, num_sessions),
        session_length=session_length,
        exclude_history=True,
        batch_size=batch_size,
    )
    return [[list(session.items) for session in user] for user in found]


def reward_summary(
    scorer, histories: Sequence[Sequence[str]], sessions: Sequence[Sequence[Sequence[str]]]
) -> Dict[str, float]:
    """``{tower}_mean`` and ``{tower}_max`` (see the module docstring) from a ``SessionRewardScorer``; users
    without any session are skipped and counted in ``users_without_sessions``."""
    keep = [u for u, user_sessions in enumerate(sessions) if len(user_sessions)]
    towers = scorer.tower_rewards([histories[u] for u in keep], [sessions[u] for u in keep])
    summary: Dict[str, float] = {}
    for t, name in enumerate(scorer.reward_names):
        summary[f"{name}_mean"] = float(np.mean([user[:, t].mean() for user in towers]))
        summary[f"{name}_max"] = float(np.mean([user[:, t].max() for user in towers]))
    summary["users_without_sessions"] = len(sessions) - len(keep)
    return summary


def ground_truth_summary(
    ranked: Sequence[Sequence[str]], sessions: Sequence[Sequence[Sequence[str]]], targets: Sequence[str]
) -> Dict[str, float]:
    """Recall/NDCG@10 of the ranking and the best session's hit rate against the held-out test items."""
    metrics: Dict[str, Any] = ranking_metrics(ranked, targets, ks=(10,))
    hits = [bool(user and str(target) in set(user[0])) for user, target in zip(sessions, targets)]
    metrics["session_hit_rate"] = float(np.mean(hits))
    return metrics


def catalogue_coverage(sessions: Sequence[Sequence[Sequence[str]]], num_items: int) -> float:
    """Share of the catalogue's ``num_items`` items that appear in at least one user's sessions (a model that
    collapses onto a few popular items, a known side effect of reward optimisation, shows here)."""
    if num_items < 1:
        raise ValueError(f"num_items must be >= 1, got {num_items}.")
    return len({item for user in sessions for session in user for item in session}) / num_items


def intra_session_diversity(sessions: Sequence[Sequence[Sequence[str]]], first_codes: Mapping[str, int]) -> float:
    """Mean over all sessions of ``distinct first-level semantic codes / session length``: 1 when every item of a
    session comes from another coarse cluster, ``1/m`` when all share one. ``first_codes`` maps item id -> its first
    code (``tokenizer.item_codes[:, 0]``)."""
    values = [
        len({first_codes[item] for item in session}) / len(session) for user in sessions for session in user if session
    ]
    return float(np.mean(values)) if values else float("nan")


__all__ = [
    "catalogue_coverage",
    "generated_sessions",
    "ground_truth_summary",
    "intra_session_diversity",
    "reward_summary",
    "sessions_from_ranking",
]
