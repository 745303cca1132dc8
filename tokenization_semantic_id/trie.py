"""A trie of valid semantic IDs as flat tensors (CSR), built once offline, queried per decoding step.

Nodes are prefixes of item codes. Node 0 is the root (the empty prefix); nodes of depth ``d`` hold
the distinct length-``d`` prefixes in lexicographic order, so the children of any node are a
contiguous, token-sorted run of the next depth. That gives:

* ``indptr [M + 1]`` -- children of node ``n`` are nodes ``indptr[n] + 1 ... indptr[n + 1]``
  (edge ``e`` leads to node ``e + 1``),
* ``edge_token [M - 1]`` -- the token on each edge,
* ``edge_key [M - 1]`` -- ``parent * vocab_size + token``, sorted, so a child lookup is one
  ``searchsorted`` for a whole batch,
* ``leaf_count [M]`` -- items below each node (used to prune subtrees whose items are all excluded),
* ``item_path [N, L + 1]`` -- the node at every depth on each item's path,
* ``leaf_item [M]`` -- the item of a leaf, ``-1`` for inner nodes,
* ``level_max_children`` -- per depth ``0 .. L - 1``, the most children any node of that depth has (STATIC's
  per-level branch limit): a decoding step reads exactly that many children per beam, so its shapes never depend on
  the data (:func:`fixed_children`, no host synchronisation).

All lookups are batched tensor ops (no Python loop over beams) and run on the trie's device.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch


class FixedChildren(NamedTuple):
    """Each row's children padded to a fixed count ``K`` (see :func:`fixed_children`)."""

    nodes: torch.Tensor  # [B, K] child node ids, -1 where the row has fewer than K children
    tokens: torch.Tensor  # [B, K] the token of each child's edge (a real but meaningless token where nodes == -1)
    valid: torch.Tensor  # [B, K] bool, nodes >= 0
    starts: torch.Tensor  # [B] indptr of each row's node (its first child is node starts + 1)


def fixed_children(
    indptr: torch.Tensor, edge_token: torch.Tensor, nodes: torch.Tensor, max_children: int
) -> FixedChildren:
    """The children of ``nodes [B]`` (``-1``: none) as ``[B, max_children]`` tables, padded with ``-1``.

    Fixed shapes and no host synchronisation (the same burst read as STATIC's CSR step): ``max_children`` must be at
    least the largest child count among the nodes (``SemanticIDTrie.level_max_children[depth]``).
    """
    alive = nodes >= 0
    safe = nodes.clamp(min=0)
    starts = indptr[safe]
    counts = torch.where(alive, indptr[safe + 1] - starts, torch.zeros_like(starts))
    offsets = torch.arange(max_children, device=nodes.device)
    valid = offsets[None, :] < counts[:, None]
    edge = (starts[:, None] + offsets[None, :]).clamp(max=max(edge_token.numel() - 1, 0))
    child_nodes = torch.where(valid, edge + 1, torch.full_like(edge, -1))
    return FixedChildren(child_nodes, edge_token[edge], valid, starts)


def excluded_below(children: FixedChildren, nodes: torch.Tensor, paths: torch.Tensor) -> torch.Tensor:
    """``[B, K]``: how many excluded items lie below each child of each row's node.

    Args:
        children: :func:`fixed_children` of ``nodes``.
        nodes: ``[B]`` the rows' current nodes (``-1``: none).
        paths: ``[B, X, 2]`` for each row's excluded items (deduplicated), the node at the current depth and at the
            next one on the item's path (``item_path[:, depth : depth + 2]``), ``-1`` for padding.

    A child whose count reaches its ``leaf_count`` has nothing left to offer. Fixed shapes, no host synchronisation.
    """
    on_path = (paths[..., 0] == nodes[:, None]) & (nodes[:, None] >= 0)  # [B, X]
    position = (paths[..., 1] - children.starts[:, None] - 1).clamp(0, children.nodes.shape[1] - 1)
    counts = torch.zeros(children.nodes.shape, dtype=torch.long, device=nodes.device)
    return counts.scatter_add_(1, position, on_path.long())


class SemanticIDTrie:
    """CSR trie over the token ids of item codes.

    Args:
        item_tokens: ``[N, L]`` long, the vocabulary token id of each item's code at each level.
            Rows must be distinct (resolve collisions first).
        vocab_size: Size of the token vocabulary (bounds every token id).
    """

    def __init__(self, item_tokens: torch.Tensor, vocab_size: int):
        item_tokens = torch.as_tensor(item_tokens, dtype=torch.long).cpu()
        if item_tokens.dim() != 2 or item_tokens.shape[1] == 0:
            raise ValueError(f"item_tokens must be [N, L] with L >= 1, got shape {tuple(item_tokens.shape)}.")
        if item_tokens.numel() and (item_tokens.min() < 0 or item_tokens.max() >= vocab_size):
            raise ValueError(f"item_tokens hold ids outside [0, {vocab_size}); pass vocabulary token ids.")
        num_items, num_levels = item_tokens.shape
        self.vocab_size = int(vocab_size)
        self.num_levels = num_levels
        self.num_items = num_items

        item_path = torch.zeros((num_items, num_levels + 1), dtype=torch.long)
        parents, tokens, depths = [], [], [torch.zeros(1, dtype=torch.long)]
        next_node = 1
        for depth in range(1, num_levels + 1):
            prefixes, inverse = torch.unique(item_tokens[:, :depth], dim=0, return_inverse=True)
            node_ids = next_node + inverse
            item_path[:, depth] = node_ids
            parent = torch.empty(prefixes.shape[0], dtype=torch.long)
            parent[inverse] = item_path[:, depth - 1]
            parents.append(parent)
            tokens.append(prefixes[:, -1])
            depths.append(torch.full((prefixes.shape[0],), depth, dtype=torch.long))
            next_node += prefixes.shape[0]
        if len(parents[-1]) != num_items:
            raise ValueError(
                f"{num_items - len(parents[-1])} items share their full code with another item; the "
                "item -> code map must be a bijection. Resolve collisions (a disambiguation level) first."
            )
        num_nodes = next_node
        edge_parent = torch.cat(parents) if parents else torch.zeros(0, dtype=torch.long)
        self.edge_token = torch.cat(tokens) if tokens else torch.zeros(0, dtype=torch.long)
        self.node_depth = torch.cat(depths)
        self.indptr = torch.zeros(num_nodes + 1, dtype=torch.long)
        self.indptr[1:] = torch.cumsum(torch.bincount(edge_parent, minlength=num_nodes), 0)
        self.edge_key = edge_parent * self.vocab_size + self.edge_token
        self.item_path = item_path
        self.leaf_item = torch.full((num_nodes,), -1, dtype=torch.long)
        self.leaf_item[item_path[:, -1]] = torch.arange(num_items)
        self.leaf_count = torch.zeros(num_nodes, dtype=torch.long)
        for depth in range(num_levels + 1):
            self.leaf_count.index_add_(0, item_path[:, depth], torch.ones(num_items, dtype=torch.long))
        child_counts = self.indptr[1:] - self.indptr[:-1]  # [M]
        self.level_max_children = [
            int(child_counts[self.node_depth == depth].max()) if num_items else 0 for depth in range(num_levels)
        ]
        # Tokens allowed at the root, as a dense [V] boolean row (shared by every beam at level 1).
        self.root_allowed = torch.zeros(self.vocab_size, dtype=torch.bool)
        self.root_allowed[self.edge_token[: int(self.indptr[1])]] = True

    @property
    def num_nodes(self) -> int:
        return self.node_depth.numel()

    @property
    def device(self) -> torch.device:
        return self.indptr.device

    def to(self, device) -> "SemanticIDTrie":
        """Moves every index tensor to ``device`` (in place) and returns ``self``."""
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                setattr(self, name, value.to(device))
        return self

    def child(self, nodes: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Child of each node along each token: ``[B], [B] -> [B]``, ``-1`` where no such edge
        (or where the node is already ``-1``)."""
        if self.edge_key.numel() == 0:  # an empty trie has no edges at all
            return torch.full_like(nodes, -1)
        keys = nodes * self.vocab_size + tokens
        position = torch.searchsorted(self.edge_key, keys).clamp(max=max(self.edge_key.numel() - 1, 0))
        # A token outside [0, vocab_size) (a junk beam's) would alias another parent's key: never an edge.
        found = (nodes >= 0) & (tokens >= 0) & (tokens < self.vocab_size) & (self.edge_key[position] == keys)
        return torch.where(found, position + 1, torch.full_like(nodes, -1))

    def walk(self, tokens: torch.Tensor, start: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Node reached by each row's token path: ``[B, j] -> [B]`` (``-1`` if the path leaves the trie)."""
        nodes = start if start is not None else torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)
        for column in range(tokens.shape[1]):
            nodes = self.child(nodes, tokens[:, column])
        return nodes
