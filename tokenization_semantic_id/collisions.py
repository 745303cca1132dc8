"""Making item -> code a bijection.

Residual k-means can give two items the same L codes. We append one *disambiguation level*
(TIGER's approach): within a group of items sharing the L codes, the i-th item (in catalogue order)
gets code ``i``. Every item then carries the extra token, so all codes keep one length, which the
model and the trie rely on. The level is sized with headroom so that items added later (cold
start) can still be told apart without growing the vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class CollisionReport:
    """Collision statistics of a code table.

    Attributes:
        num_items: Items in the catalogue.
        num_unique_codes: Distinct L-level codes before resolution.
        colliding_items: Items whose code is shared with at least one other item.
        collision_rate: ``colliding_items / num_items`` (before resolution).
        max_group_size: Largest number of items sharing one code.
        collision_rate_after: Same rate after resolution (0.0 once resolved).
        disambiguation_size: Codes in the appended level (0: no level appended).
    """

    num_items: int
    num_unique_codes: int
    colliding_items: int
    collision_rate: float
    max_group_size: int
    collision_rate_after: float
    disambiguation_size: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def code_groups(codes: torch.Tensor):
    """Groups identical rows of ``codes [N, L]``.

    Returns:
        ``(group_of_item [N], group_sizes [G], rank_in_group [N])`` where ``rank_in_group`` numbers
        the items of a group 0, 1, ... in catalogue order.
    """
    _, group_of_item, group_sizes = torch.unique(codes, dim=0, return_inverse=True, return_counts=True)
    # Stable sort by group keeps catalogue order inside each group.
    order = torch.sort(group_of_item, stable=True).indices
    group_start = torch.cumsum(group_sizes, 0) - group_sizes
    rank_sorted = torch.arange(codes.shape[0]) - group_start[group_of_item[order]]
    rank_in_group = torch.empty_like(rank_sorted)
    rank_in_group[order] = rank_sorted
    return group_of_item, group_sizes, rank_in_group


def collision_rate(codes: torch.Tensor) -> float:
    """Fraction of items whose full code ``[N, L]`` is shared with another item."""
    if codes.shape[0] == 0:
        return 0.0
    group_of_item, group_sizes, _ = code_groups(codes)
    return (group_sizes[group_of_item] > 1).float().mean().item()


def default_disambiguation_size(max_group_size: int) -> int:
    """Smallest power of two >= twice the largest collision group (headroom for cold start), min 4."""
    size = 4
    while size < 2 * max_group_size:
        size *= 2
    return size


def resolve_collisions(codes: torch.Tensor, disambiguation_size: Optional[int] = None):
    """Appends a disambiguation level when codes collide.

    Args:
        codes: ``[N, L]`` long codes from the quantiser.
        disambiguation_size: Codes in the extra level. ``None``: add the level only when some items
            collide, sized by :func:`default_disambiguation_size`. ``0``: never add it (raises if
            items collide). A positive int: always add a level of that size (must be at least the
            largest collision group).
    Returns:
        ``(resolved_codes [N, L] or [N, L + 1], CollisionReport)``.
    """
    num_items = codes.shape[0]
    group_of_item, group_sizes, rank_in_group = code_groups(codes)
    colliding = int((group_sizes[group_of_item] > 1).sum()) if num_items else 0
    max_group = int(group_sizes.max()) if num_items else 0
    if disambiguation_size is None:
        disambiguation_size = default_disambiguation_size(max_group) if max_group > 1 else 0
    if disambiguation_size < 0:
        raise ValueError(f"disambiguation_size must be None, 0 or positive, got {disambiguation_size}.")
    if disambiguation_size == 0 and max_group > 1:
        raise ValueError(
            f"{colliding} items share their codes with another item (largest group {max_group}) but "
            "disambiguation_size=0 forbids the extra level. Pass disambiguation_size=None (automatic) or "
            f">= {max_group}, or use larger codebooks."
        )
    if 0 < disambiguation_size < max_group:
        raise ValueError(
            f"disambiguation_size={disambiguation_size} cannot separate a group of {max_group} items that "
            f"share one code; pass disambiguation_size >= {max_group} (or None for automatic)."
        )
    resolved = codes if disambiguation_size == 0 else torch.cat([codes, rank_in_group[:, None]], dim=1)
    report = CollisionReport(
        num_items=num_items,
        num_unique_codes=int(group_sizes.numel()),
        colliding_items=colliding,
        collision_rate=colliding / num_items if num_items else 0.0,
        max_group_size=max_group,
        collision_rate_after=collision_rate(resolved),
        disambiguation_size=disambiguation_size,
    )
    return resolved, report
