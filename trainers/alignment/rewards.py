"""Reward functions for on-policy alignment, in TRL's reward-function form.

TRL calls each as ``reward(prompts=, completions=, completion_ids=, **columns) -> list[float | None]``, one value
per generated session; ``columns`` holds the dataset's other columns (per row) and :class:`OneRecGRPOTrainer`'s
``session`` (the session's item ids, ``None`` for a missing beam, which gets ``None``: no reward, no advantage).
Weights between them are TRL's ``reward_weights``.

* :class:`SessionRewardModelReward` -- the project's session reward model (paper §3.3.1), its towers weighted.
* :class:`NextItemsReward` -- a rule reward from the user's real next items in the *training* split (the row's
  ``target`` column): the position-discounted overlap ``sum_i [s_i in target] / log2(i + 2)``, divided by its best
  possible value, so in ``[0, 1]``. Build rows only from training samples: a test item here would leak.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence


class SessionRewardModelReward:
    """The session reward model as a TRL reward function.

    Args:
        scorer: A :class:`~trainers.alignment.reward_model.SessionRewardScorer` (its ``weights`` combine the towers).
        name: The name TRL logs it under (``rewards/<name>/mean``).
    """

    def __init__(self, scorer, name: str = "reward_model"):
        self.scorer = scorer
        self.__name__ = name

    def __call__(self, prompts, completions=None, session: Sequence[Optional[List[str]]] = (), **unused):
        if len(session) != len(prompts):
            raise ValueError(
                f"Got {len(prompts)} prompts and {len(session)} sessions: use this reward with OneRecGRPOTrainer, "
                "which passes each generated session as the 'session' column."
            )
        scored = [row for row, items in enumerate(session) if items]
        rewards: List[Optional[float]] = [None] * len(prompts)
        if scored:
            values = self.scorer([list(prompts[row]) for row in scored], [[list(session[row])] for row in scored])
            for row, value in zip(scored, values):
                rewards[row] = float(value[0])
        return rewards


class NextItemsReward:
    """Position-discounted overlap of a generated session with the row's real next items (``target``).

    Args:
        name: The name TRL logs it under.
    """

    def __init__(self, name: str = "next_items"):
        self.__name__ = name

    @staticmethod
    def score(session: Sequence[str], target: Sequence[str]) -> float:
        """``sum_i [session_i in target] / log2(i + 2)`` over the best value ``sum_{i < min(m, |target|)} 1 / log2(i +
        2)``; 0 for an empty target."""
        wanted = {str(item) for item in target}
        if not wanted or not session:
            return 0.0
        gain = sum(1.0 / math.log2(i + 2) for i, item in enumerate(session) if str(item) in wanted)
        best = sum(1.0 / math.log2(i + 2) for i in range(min(len(session), len(wanted))))
        return gain / best

    def __call__(self, prompts, completions=None, session: Sequence = (), target: Sequence = (), **unused):
        if len(session) != len(prompts) or len(target) != len(prompts):
            raise ValueError(
                f"NextItemsReward needs a 'session' and a 'target' per row; got {len(prompts)} prompts, "
                f"{len(session)} sessions and {len(target)} targets. Give the dataset a 'target' column (the real "
                "next items from the training split)."
            )
        return [None if items is None else self.score(items, wanted) for items, wanted in zip(session, target)]


__all__ = ["NextItemsReward", "SessionRewardModelReward"]
