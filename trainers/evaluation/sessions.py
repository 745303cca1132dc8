"""Metrics of generated sessions: hit rate, consumed items, catalogue coverage and intra-session diversity."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _category_lookup(item_categories: Any) -> tuple[Mapping | None, int | None]:
    """`(item -> category mapping, catalogue size)` from a mapping or a `SemanticIDTokenizer`-like object."""
    if item_categories is None:
        return None, None
    if hasattr(item_categories, "item_codes") and hasattr(item_categories, "item_ids"):
        first_codes = np.asarray(item_categories.item_codes[:, 0]).tolist()
        return dict(zip(item_categories.item_ids, first_codes)), len(first_codes)
    if isinstance(item_categories, Mapping):
        return {str(item): category for item, category in item_categories.items()}, len(item_categories)
    raise TypeError(
        f"item_categories must be a mapping item id -> category or a SemanticIDTokenizer, got "
        f"{type(item_categories).__name__}."
    )


def session_metrics(
    sessions: Sequence[Sequence[Any]],
    targets: Sequence[Any],
    item_categories: Any = None,
    catalogue_size: int | None = None,
) -> dict[str, float]:
    """Quality of generated sessions (OneRec's session-wise output): hits, coverage and diversity.

    Only the best session of each user (the first of its list) is scored. With `S_u` the best session of user
    `u` (a list of item ids, possibly with repeats) and `T_u` the set of items the user really consumed next:

    - `session_hit_rate` = fraction of users with `set(S_u) & T_u` non-empty (with one leave-one-out target:
      the target is somewhere in the session);
    - `session_consumed_items` = mean over users of `len(set(S_u) & T_u)`, the number of distinct session
      items the user really consumed (at most 1 in leave-one-out, up to `min(len(S_u), len(T_u))` with several
      true next items);
    - `coverage` = `len(union of set(S_u) over users) / catalogue_size` (only when the catalogue size is known:
      given, or the size of `item_categories`; otherwise the key is absent);
    - `intra_session_diversity` = mean over users with a non-empty session of
      `len({category(i) for i in S_u}) / len(S_u)`: 1 when every item has its own category, `1 / len(S_u)`
      when all share one (only with `item_categories`); `category` is the item's first semantic-ID code when a
      `SemanticIDTokenizer` is given, or the value of any mapping;
    - `mean_session_length` = mean of `len(S_u)`, and `num_users`.

    Args:
        sessions (`Sequence` of shape ``[num_users, num_sessions, session_length]``):
            Per user, the generated sessions best first (each a list of item ids). A user's entry may also be a
            single session, a flat list of item ids.
        targets (`Sequence` of shape ``[num_users]``):
            Per user, the true future items: one id, or a list of ids (e.g. the leave-one-out target, or the
            next `m` items of a real session).
        item_categories (`Mapping[str, Hashable]` or `SemanticIDTokenizer`, *optional*):
            Category of every item (item ids compared as strings). A tokenizer gives each item's first-level
            semantic code.
        catalogue_size (`int`, *optional*):
            Number of recommendable items for `coverage`; defaults to the size of `item_categories`.

    Returns:
        `dict[str, float]` with the keys above.
    """
    if len(sessions) != len(targets):
        raise ValueError(f"Got sessions for {len(sessions)} users and targets for {len(targets)}; pass one each.")
    if len(sessions) == 0:
        raise ValueError("No users to evaluate: sessions and targets are empty.")
    categories, mapping_size = _category_lookup(item_categories)
    catalogue_size = catalogue_size if catalogue_size is not None else mapping_size
    hits, consumed, lengths, diversities = [], [], [], []
    recommended: set[str] = set()
    for user, (user_sessions, truth) in enumerate(zip(sessions, targets)):
        if len(user_sessions) and isinstance(user_sessions[0], (list, tuple, np.ndarray)):
            best = user_sessions[0]
        else:
            best = user_sessions  # a single flat session (or no session at all)
        best = [str(item) for item in best]
        if isinstance(truth, (list, tuple, np.ndarray, set, frozenset)):
            truth = {str(item) for item in truth}
        else:
            truth = {str(truth)}
        common = set(best) & truth
        hits.append(bool(common))
        consumed.append(len(common))
        lengths.append(len(best))
        recommended.update(best)
        if categories is not None and best:
            missing = [item for item in best if item not in categories]
            if missing:
                raise ValueError(
                    f"User {user}: item(s) {missing[:5]} have no category in item_categories; give every "
                    "recommendable item a category (or the tokenizer that built the catalogue)."
                )
            diversities.append(len({categories[item] for item in best}) / len(best))
    metrics = {
        "session_hit_rate": float(np.mean(hits)),
        "session_consumed_items": float(np.mean(consumed)),
        "mean_session_length": float(np.mean(lengths)),
        "num_users": len(hits),
    }
    if catalogue_size:
        metrics["coverage"] = len(recommended) / int(catalogue_size)
    if categories is not None:
        metrics["intra_session_diversity"] = float(np.mean(diversities)) if diversities else 0.0
    return metrics
