"""Native trie-constrained session beam search for OneRec (serving and preference mining).

A generated session is ``m`` items, each a BOS token and the item's ``L`` code tokens, then EOS
(paper Eq. 3)::

    [decoder_start] BOS c1 .. cL  BOS c1 .. cL  ...  BOS c1 .. cL  EOS

:func:`session_beam_search` with ``renormalize_logits=True`` returns the same sessions and scores as::

    model.generate(input_ids, attention_mask=attention_mask, num_beams=B, num_return_sequences=B,
                   logits_processor=[SessionConstrainedLogitsProcessor(trie, ...)], renormalize_logits=True,
                   do_sample=False, length_penalty=0.0, max_new_tokens=m * (L + 1) + 1,
                   output_scores=True, return_dict_in_generate=True)

and by default (``renormalize_logits=False``) those of the same call with a processor before the trie's that scores
each code by the log-softmax of its level's slice of the output head, the distribution the model is trained on.

but does far less work per step: the history is encoded once, the decoder is stepped with a KV cache,
the output head is evaluated only on the current level's slice of the vocabulary, and only the trie
children of each beam are scored (a fixed ``[rows, K]`` table per level, ``K`` the level's largest branch: no
data-dependent shape and no host synchronisation inside a step), never a full-vocabulary ``[rows, V]`` tensor.
BOS and EOS are structure, not choices: they are fed to the decoder but cost no log-probability. What a beam may
take next (the layout, valid codes, exclusions, no repeats) is :class:`SessionConstraint`'s rule, the one the
tokenizer's logits processor applies.
Unlike ``generate()``, beams that do not exist (fewer valid sessions than ``num_beams``) are reported
as missing (``-1`` items, ``-inf`` scores, ``num_valid``) instead of padded with copies.

This file is copied next to the model weights for ``trust_remote_code`` loading, so it imports only
``torch``, ``transformers`` and nothing from the tokenizer package: the trie is duck-typed (any object
with the attributes of ``tokenization_semantic_id.SemanticIDTrie``).
"""

from __future__ import annotations

import contextlib
import math
import operator
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.utils import ModelOutput

__all__ = ["SessionSearchOutput", "eval_mode", "length_sorted_batches", "session_beam_search"]


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Runs the block with ``module`` in eval mode (no dropout, no router jitter) and restores its training mode
    afterwards, also when the block raises. Every inference entry point (``recommend()``, ranking, mining) uses it,
    so a model handed over in training mode is never searched with dropout on."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


@dataclass
class SessionSearchOutput(ModelOutput):
    """Result of :func:`session_beam_search`. Beams are sorted by score, best first; the valid beams of
    a row come first (``valid[b, :num_valid[b]]`` is all True), missing beams are padding.

    Args:
        sequences: ``[batch, num_beams, 2 + num_items * (L + 1)]`` long. Decoder token ids exactly as
            ``generate()`` returns them (``decoder_start BOS c1..cL ... EOS``); ``pad_token_id`` throughout
            for missing beams.
        scores: ``[batch, num_beams]`` float32. Sum of the renormalised log-probabilities of the code
            tokens divided by ``generated_length ** length_penalty`` (generate's ``sequences_scores``);
            ``-inf`` for missing beams.
        item_indices: ``[batch, num_beams, num_items]`` long. Catalogue row (trie item index) of every
            generated item; ``-1`` for missing beams.
        item_scores: ``[batch, num_beams, num_items]`` float32. Log-probability of each item (sum over its
            ``L`` code tokens, no length penalty); ``-inf`` for missing beams.
        valid: ``[batch, num_beams]`` bool. Whether the beam is a real session.
        num_valid: ``[batch]`` long. Number of real sessions per row (``<= num_beams``).
    """

    sequences: Optional[torch.LongTensor] = None
    scores: Optional[torch.FloatTensor] = None
    item_indices: Optional[torch.LongTensor] = None
    item_scores: Optional[torch.FloatTensor] = None
    valid: Optional[torch.BoolTensor] = None
    num_valid: Optional[torch.LongTensor] = None


class _Trie:
    """The trie tensors the search needs, on one device (a view of a duck-typed ``SemanticIDTrie``)."""

    _FIELDS = ("indptr", "edge_token", "leaf_count", "item_path", "leaf_item")

    def __init__(self, trie, device: torch.device):
        missing = [name for name in self._FIELDS + ("num_levels", "num_items", "vocab_size") if not hasattr(trie, name)]
        if missing:
            raise ValueError(f"trie must be a SemanticIDTrie-like object; it lacks {', '.join(missing)}.")
        for name in self._FIELDS:
            setattr(self, name, getattr(trie, name).to(device=device, dtype=torch.long))
        self.num_levels = int(trie.num_levels)
        self.num_items = int(trie.num_items)
        self.vocab_size = int(trie.vocab_size)
        if self.num_items < 1 or self.num_levels < 1:
            raise ValueError(f"the trie is empty ({self.num_items} items, {self.num_levels} levels).")
        # Depth of the node each edge leads to (edge e -> node e + 1): node_depth when available.
        node_depth = getattr(trie, "node_depth", None)
        if node_depth is None:
            node_depth = torch.zeros(self.indptr.numel() - 1, dtype=torch.long)
            for depth in range(1, self.num_levels + 1):
                node_depth[self.item_path[:, depth]] = depth
        self.edge_depth = node_depth.to(device=device, dtype=torch.long)[1:]
        # Per depth, the most children of any node (the fixed width of each step); a SemanticIDTrie has it precomputed.
        level_max_children = getattr(trie, "level_max_children", None)
        if level_max_children is None:
            child_counts = self.indptr[1:] - self.indptr[:-1]
            depth = node_depth.to(device=device, dtype=torch.long)
            level_max_children = [int(child_counts[depth == d].max()) for d in range(self.num_levels)]
        self.level_max_children = [max(int(count), 1) for count in level_max_children]

    def level_token_ranges(self) -> torch.Tensor:
        """``[L, 2]``: smallest and largest token id on the edges of each level."""
        ranges = torch.empty((self.num_levels, 2), dtype=torch.long, device=self.edge_token.device)
        index = self.edge_depth - 1
        ranges[:, 0] = torch.full((self.num_levels,), self.vocab_size, device=index.device).scatter_reduce(
            0, index, self.edge_token, reduce="amin"
        )
        ranges[:, 1] = torch.full((self.num_levels,), -1, device=index.device).scatter_reduce(
            0, index, self.edge_token, reduce="amax"
        )
        return ranges


def length_sorted_batches(histories: Sequence[Sequence], batch_size: int, max_items: Optional[int] = None) -> list:
    """Index batches of at most ``batch_size`` users, shortest history first (stable among equal lengths).

    Histories are short-tailed, so batches in the callers' order pad most rows to the longest history of the
    batch; batching users of similar length lets every beam search encode and cross-attend over little padding.
    Callers put results back at the returned indices, so the output order never changes.

    Args:
        histories (`Sequence[Sequence]` of length `num_users`): each user's history (item ids or token ids).
        batch_size (`int`): users per batch, `>= 1`.
        max_items (`int`, *optional*): histories are read up to this many items (longer ones sort as equal).
    Returns:
        `list[list[int]]`: the batches of user indices; together a permutation of `range(num_users)`.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}.")
    lengths = [len(history) if max_items is None else min(len(history), max_items) for history in histories]
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


# This file travels alone with the weights (trust_remote_code), so the constraint and its helpers below are copies of
# the tokenizer package's originals; tests/test_copies.py fails when a copy drifts from its original.


# Copied from tokenization_semantic_id.trie.FixedChildren
class FixedChildren(NamedTuple):
    """Each row's children padded to a fixed count ``K`` (see :func:`fixed_children`)."""

    nodes: torch.Tensor  # [B, K] child node ids, -1 where the row has fewer than K children
    tokens: torch.Tensor  # [B, K] the token of each child's edge (a real but meaningless token where nodes == -1)
    valid: torch.Tensor  # [B, K] bool, nodes >= 0
    starts: torch.Tensor  # [B] indptr of each row's node (its first child is node starts + 1)


# Copied from tokenization_semantic_id.trie.fixed_children
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


# Copied from tokenization_semantic_id.trie.excluded_below
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


# Copied from tokenization_semantic_id.constrained_decoding.drop_duplicate_items
def drop_duplicate_items(excluded: torch.Tensor) -> torch.Tensor:
    """``[B, E]`` item indices with every repeat within a row replaced by ``-1`` (order not kept). An item counted
    twice would make a subtree look exhausted while one of its items is still allowed."""
    excluded = excluded.sort(dim=1).values
    duplicate = torch.zeros_like(excluded, dtype=torch.bool)
    duplicate[:, 1:] = excluded[:, 1:] == excluded[:, :-1]
    return excluded.masked_fill(duplicate, -1)


# Copied from tokenization_semantic_id.constrained_decoding.SessionConstraint
class SessionConstraint:
    """Which tokens may follow a decoder prefix within a session of ``num_items`` items: the one home of the rule
    that :class:`SessionConstrainedLogitsProcessor`, :class:`SessionPrefixAllowedTokensFn` and the model's native
    ``session_beam_search`` (``modeling_onerec/generation_onerec.py``, a marked copy) all apply.

    Layout (paper Eq. 3): ``[prefix] BOS c1..cL  BOS c1..cL  ...  EOS  PAD ...``; BOS, EOS and PAD positions are
    forced. At a code position the allowed tokens are the trie children of the item's prefix below which an item is
    left that the row may generate: not one of its excluded items (e.g. the history) nor, with ``forbid_repeats``, an
    earlier item of the session. Whole subtrees are pruned by counting, so a beam is never led into a prefix without
    a valid completion; a row with nothing left may only emit PAD (never an unconstrained token).

    Fixed shapes and no host synchronisation per step: a level's children are a ``[rows, K]`` table, ``K`` the level's
    largest branch.

    Args:
        trie: A ``SemanticIDTrie``, or an object with its tensors (``indptr``, ``edge_token``, ``leaf_count``,
            ``item_path``, ``leaf_item``) and ``num_levels``, ``num_items``, ``level_max_children``; prefixes are
            read with its ``walk``.
        bos_token_id / eos_token_id / pad_token_id: The special tokens.
        num_items: Items per session ``m``.
        prefix_length: Decoder tokens before the session (1 for T5's ``decoder_start_token_id``).
        forbid_repeats: No item twice in one session.
    """

    def __init__(
        self,
        trie,
        *,
        bos_token_id: int,
        eos_token_id: int,
        pad_token_id: int,
        num_items: int = 1,
        prefix_length: int = 1,
        forbid_repeats: bool = True,
    ):
        if num_items < 1:
            raise ValueError(f"num_items (items per session) must be >= 1, got {num_items}.")
        if prefix_length < 0:
            raise ValueError(f"prefix_length must be >= 0, got {prefix_length}.")
        self.trie = trie
        self.num_items = num_items
        self.prefix_length = prefix_length
        self.forbid_repeats = forbid_repeats
        self.period = trie.num_levels + 1
        self.sequence_length = prefix_length + num_items * self.period + 1  # through EOS
        self.forced_tokens = {"bos": bos_token_id, "eos": eos_token_id, "pad": pad_token_id}

    def position(self, length: int) -> Tuple[str, int, int]:
        """What comes after a prefix of ``length`` tokens: ``(kind, slot, level)``, kind one of ``"bos"``, ``"code"``
        (``level`` = code tokens of item ``slot`` already there), ``"eos"``, ``"pad"`` or ``"prefix"`` (before the
        session)."""
        generated = length - self.prefix_length
        if generated < 0:
            return "prefix", 0, 0
        if generated < self.num_items * self.period:
            slot, within = divmod(generated, self.period)
            return ("bos", slot, 0) if within == 0 else ("code", slot, within - 1)
        return ("eos", self.num_items, 0) if generated == self.num_items * self.period else ("pad", self.num_items, 0)

    def item_start(self, slot: int) -> int:
        """Column of item ``slot``'s first code token in the decoder sequence."""
        return self.prefix_length + slot * self.period + 1

    def excluded_table(self, excluded_items, num_rows: Optional[int] = None) -> Optional[torch.Tensor]:
        """Per-row excluded item indices (lists, or a ``[rows, E]`` tensor padded with ``-1``) as a deduplicated
        ``[rows, E]`` long tensor on the trie's device; ``None`` stays ``None``. Raises a ``ValueError`` for indices
        outside the catalogue, or for another number of rows than ``num_rows`` (when given)."""
        if excluded_items is None:
            return None
        device = self.trie.item_path.device
        if isinstance(excluded_items, torch.Tensor):
            if excluded_items.dim() != 2:
                raise ValueError(
                    f"excluded_items must be a [batch, E] tensor, got shape {tuple(excluded_items.shape)}."
                )
            table = excluded_items.to(device=device, dtype=torch.long)
        else:
            rows = [[int(item) for item in items] for items in excluded_items]
            table = torch.full((len(rows), max((len(row) for row in rows), default=0)), -1, dtype=torch.long)
            for row, items in enumerate(rows):
                table[row, : len(items)] = torch.tensor(items, dtype=torch.long)
            table = table.to(device)
        if num_rows is not None and table.shape[0] != num_rows:
            raise ValueError(
                f"excluded_items has {table.shape[0]} rows but input_ids has {num_rows}; pass one list of item "
                "indices per input row (not per beam)."
            )
        if table.numel() and (table.min() < -1 or table.max() >= self.trie.num_items):
            raise ValueError(
                f"excluded_items holds indices outside [0, {self.trie.num_items}) (use -1 only as padding); pass "
                "catalogue row indices (tokenizer.item_index(item_id)), not item ids or token ids."
            )
        return drop_duplicate_items(table)

    def session_items(self, input_ids: torch.Tensor, slot: int) -> torch.Tensor:
        """``[B, slot]``: the catalogue index of each of the first ``slot`` items in ``input_ids [B, T]`` (``-1`` for
        a code that is no item)."""
        items = []
        for previous in range(slot):
            start = self.item_start(previous)
            leaf = self.trie.walk(input_ids[:, start : start + self.trie.num_levels])
            items.append(torch.where(leaf >= 0, self.trie.leaf_item[leaf.clamp(min=0)], torch.full_like(leaf, -1)))
        return torch.stack(items, dim=1) if items else input_ids.new_zeros((input_ids.shape[0], 0))

    def excluded_items(
        self, excluded: Optional[torch.Tensor], earlier: Optional[torch.Tensor]
    ) -> Optional[torch.Tensor]:
        """``[B, X]``: the items each row may not generate next, each once (``-1`` padding), or ``None``.

        Args:
            excluded: ``[B, E]`` the rows' excluded items (e.g. the history; deduplicated, ``-1`` padding) or ``None``.
            earlier: ``[B, slot]`` the session's earlier items (``-1``: none), excluded with ``forbid_repeats``.
        """
        parts = [part for part in (excluded, earlier if self.forbid_repeats else None) if part is not None]
        if not parts:
            return None
        # Each part is duplicate-free alone; an item in both (a history item also generated earlier) counted twice
        # would make its subtree look exhausted too soon.
        return drop_duplicate_items(torch.cat(parts, dim=1)) if len(parts) > 1 else parts[0]

    def allowed_children(self, nodes: torch.Tensor, level: int, excluded: Optional[torch.Tensor] = None):
        """The children of ``nodes [B]`` (trie nodes of depth ``level``, ``-1``: none) and which of them are allowed.

        Args:
            excluded: :meth:`excluded_items`, ``[B, X]`` or ``None``.
        Returns:
            ``(children, keep)``: a :class:`FixedChildren` of ``[B, K]`` tables and ``[B, K]`` bool, ``True`` for a
            real child with an item left below it.
        """
        children = fixed_children(self.trie.indptr, self.trie.edge_token, nodes, self.trie.level_max_children[level])
        if excluded is None:
            return children, children.valid
        paths = self.trie.item_path[:, level : level + 2][excluded.clamp(min=0)]  # [B, X, 2]
        paths = paths.masked_fill((excluded < 0)[..., None], -1)
        left = excluded_below(children, nodes, paths) < self.trie.leaf_count[children.nodes.clamp(min=0)]
        return children, children.valid & left

    def allowed_tokens(self, input_ids: torch.Tensor, excluded: Optional[torch.Tensor] = None):
        """The tokens allowed after each row of ``input_ids [B, T]``.

        Args:
            excluded: ``[B, E]`` each row's excluded items (:meth:`excluded_table` rows) or ``None``.
        Returns:
            ``(tokens [B, K], allowed [B, K] bool)``: a forced position gives ``K = 1``; at a code position a row's
            children and, last, PAD, allowed only where no child is.
        """
        num_rows, length = input_ids.shape
        kind, slot, level = self.position(length)
        if kind == "prefix":
            raise ValueError(f"decoder input of length {length} is shorter than prefix_length={self.prefix_length}.")
        if kind != "code":
            forced = torch.full((num_rows, 1), self.forced_tokens[kind], dtype=torch.long, device=input_ids.device)
            return forced, torch.ones_like(forced, dtype=torch.bool)
        start = self.item_start(slot)
        nodes = self.trie.walk(input_ids[:, start : start + level])  # the root at level 0
        earlier = self.session_items(input_ids, slot) if self.forbid_repeats and slot > 0 else None
        children, keep = self.allowed_children(nodes, level, self.excluded_items(excluded, earlier))
        dead = ~keep.any(dim=1, keepdim=True)  # nothing valid: the row may only emit PAD
        pad = torch.full_like(dead, self.forced_tokens["pad"], dtype=torch.long)
        return torch.cat([children.tokens, pad], dim=1), torch.cat([keep, dead], dim=1)


def _gather_beams(tensor: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """``tensor [batch, W, ...]`` gathered along the beam dimension by ``source [batch, W']``."""
    index = source.view(*source.shape, *([1] * (tensor.dim() - 2))).expand(*source.shape, *tensor.shape[2:])
    return torch.gather(tensor, 1, index)


class ConstrainedCandidates(NamedTuple):
    """The best continuations of one step of the constrained search, per input row, best first."""

    scores: torch.Tensor  # [batch, k] beam score + the token's log-probability; -inf: no valid candidate
    beam: torch.Tensor  # [batch, k] the beam (within its row) each candidate extends
    child: torch.Tensor  # [batch, k] the candidate's trie node, -1 where scores is -inf
    log_prob: torch.Tensor  # [batch, k] the token's log-probability (see ``constrained_step``'s ``renormalize``)


def constrained_step(
    level_logits: torch.Tensor,
    nodes: torch.Tensor,
    beam_scores: torch.Tensor,
    excluded: Optional[torch.Tensor],
    constraint: SessionConstraint,
    level: int,
    token_offset: int,
    num_beams: int,
    renormalize: bool = False,
) -> ConstrainedCandidates:
    """One code level of the trie-constrained beam search: each beam's allowed children
    (:meth:`SessionConstraint.allowed_children`), their log-probabilities, and the ``k = min(num_beams, W * K)`` best
    continuations per row (``K`` the level's largest branch).

    Fixed shapes and no host synchronisation (``torch.compile(..., fullgraph=True)`` captures it whole, a test checks):
    children are read as a ``[batch * W, K]`` table, exclusions prune subtrees by counting, and beams left without
    candidates stay as ``-inf`` rows instead of being trimmed.

    Args:
        level_logits: ``[batch * W, K_level]`` this level's slice of the output head (column 0 = ``token_offset``).
        nodes: ``[batch, W]`` long, each beam's trie node (``-1``: no beam).
        beam_scores: ``[batch, W]`` float, each beam's score so far.
        excluded: ``None`` or ``[batch * W, E]``, each beam's excluded items (``-1`` padding; each once,
            :meth:`SessionConstraint.excluded_items`). A child is dropped once all its items are excluded.
        constraint: The session's :class:`SessionConstraint`, over a trie on ``level_logits``' device.
        level: The code level (the depth of ``nodes``).
        token_offset: Token id of ``level_logits``' first column.
        num_beams: Continuations kept per row at most.
        renormalize: ``False``: a child's log-probability is the log-softmax over the whole ``level_logits`` row (the
            model's own distribution over the level's codes, the one the next-token loss trains); the trie only
            decides which children may be taken. ``True``: renormalised over the beam's allowed children, as
            ``generate(renormalize_logits=True)`` does after a masking processor.
    """
    batch, width = nodes.shape
    flat_nodes = nodes.reshape(-1)
    children, keep = constraint.allowed_children(flat_nodes, level, excluded)
    max_children = children.nodes.shape[1]
    child_logits = level_logits.gather(1, (children.tokens - token_offset).clamp(0, level_logits.shape[1] - 1))
    # log-softmax over the level (or over each beam's allowed children), then one top-k per row
    padded = torch.where(keep, child_logits, torch.full_like(child_logits, -math.inf))
    if renormalize:
        normaliser = torch.logsumexp(padded, dim=-1, keepdim=True)
        normaliser = torch.where(torch.isfinite(normaliser), normaliser, torch.zeros_like(normaliser))
    else:
        normaliser = torch.logsumexp(level_logits, dim=-1, keepdim=True)
    log_probs = padded - normaliser
    candidates = (beam_scores.reshape(-1, 1) + log_probs).view(batch, width * max_children)
    scores, index = torch.topk(candidates, min(num_beams, width * max_children), dim=-1)  # sorted, best first
    chosen = torch.isfinite(scores)
    beam = index // max_children
    column = index % max_children
    flat_beam = torch.arange(batch, device=nodes.device)[:, None] * width + beam
    child = torch.where(chosen, children.starts[flat_beam] + column + 1, torch.full_like(column, -1))
    return ConstrainedCandidates(scores, beam, child, log_probs[flat_beam, column])


@torch.no_grad()
def session_beam_search(
    model,
    input_ids: torch.LongTensor,
    attention_mask: Optional[torch.Tensor],
    trie,
    *,
    num_beams: int,
    num_items: int,
    bos_token_id: int,
    eos_token_id: int,
    pad_token_id: int,
    forbid_repeats: bool = True,
    excluded_items: Union[None, torch.Tensor, Sequence[Sequence[int]]] = None,
    level_offsets: Optional[Sequence[int]] = None,
    length_penalty: float = 0.0,
    decoder_start_token_id: Optional[int] = None,
    fuse_forced_tokens: bool = True,
    renormalize_logits: bool = False,
) -> SessionSearchOutput:
    """Trie-constrained beam search over sessions of ``num_items`` items.

    Args:
        model: An encoder-decoder with T5's interface (``get_encoder()``, ``decoder`` taking ``input_ids,
            encoder_hidden_states, encoder_attention_mask, cache, use_cache``, ``lm_head``,
            ``config.scale_decoder_outputs``/``model_dim``), e.g. ``OneRecForConditionalGeneration``.
            Put it in eval mode first (dropout is not switched off here).
        input_ids: ``[batch, S]`` long, encoded histories.
        attention_mask: ``[batch, S]`` (1 = token, 0 = padding) or ``None`` (no padding).
        trie: A ``SemanticIDTrie`` (or an object with its tensors) over vocabulary token ids. Keep it on
            the model's device (``trie.to(device)``) to avoid copying its tensors on every call.
        num_beams: Beams ``B >= 1``, also the number of sessions returned per row.
        num_items: Items per session ``m >= 1``.
        bos_token_id / eos_token_id / pad_token_id: Special token ids of the tokenizer.
        forbid_repeats: No item twice in one session.
        excluded_items: Per input row, catalogue item indices never to generate (e.g. the history):
            a list of lists or a ``[batch, E]`` long tensor padded with ``-1``.
        level_offsets: Token id of code 0 at each level (``tokenizer.level_offsets``). Selects the slice
            of the output head evaluated at each level; by default the slice spanned by the trie's tokens.
        length_penalty: As in ``generate()``; every session has the same length, so it only rescales
            the scores (by ``(m * (L + 1) + 1) ** -length_penalty``). The default 0 gives plain sums.
        decoder_start_token_id: Defaults to ``model.config.decoder_start_token_id``.
        fuse_forced_tokens: Feed the forced BOS together with the token before it in one decoder call
            (same cache, one call fewer per item). ``False`` feeds one token per call, like ``generate()``.
        renormalize_logits: How a code token is scored. ``False`` (the default): its log-softmax over its level's
            slice of the output head, the distribution the next-token loss trains
            (``level_restricted_cross_entropy``), so a session's score is the model's log-probability of its code
            tokens and the trie only decides which tokens may be taken. ``True``: renormalised over the trie
            children the beam may take, which credits a code that is its parent's only valid child with
            probability 1 whatever the model thinks of it. Which ranks better depends on the model and the data
            (``docs/results.md``): OneRec models choose on validation users (``generation_config.renormalize_logits``,
            which ``recommend()`` passes here). Without ``level_offsets`` a level's slice is the token range its trie
            codes span.

    Returns:
        A :class:`SessionSearchOutput`; see its fields for shapes. Missing beams (fewer valid sessions
        than ``num_beams``) are marked, never filled with junk or repeated sessions.

    With ``renormalize_logits=True`` the scores are those of ``generate()`` with ``renormalize_logits=True``: each
    code token's probability renormalised over the trie children that remain after exclusions. With the default,
    those of ``generate()`` whose first logits processor replaces each code position's scores by the log-softmax of
    that level's slice (and 0 at BOS/EOS). BOS/EOS contribute 0 either way. The number of
    decoder rows grows from ``batch`` to ``batch * num_beams`` as beams appear (generate() always runs
    ``batch * num_beams``); that changes nothing unless the decoder's output depends on the batch's
    composition (e.g. an MoE expert capacity limit that drops tokens).
    """
    # ------------------------------------------------------------------ arguments
    if not isinstance(num_beams, int) or num_beams < 1:
        raise ValueError(f"num_beams must be an int >= 1, got {num_beams!r}.")
    if not isinstance(num_items, int) or num_items < 1:
        raise ValueError(f"num_items (items per session) must be an int >= 1, got {num_items!r}.")
    if not isinstance(renormalize_logits, bool):  # a string such as "false" would be truthy
        raise TypeError(f"renormalize_logits must be True or False, got {renormalize_logits!r}.")
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[0] == 0:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"input_ids must be a non-empty [batch, seq_len] tensor, got {shape}.")
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids has {tuple(input_ids.shape)}."
        )
    head_weight = model.lm_head.weight  # [V_model, d]
    head_bias = getattr(model.lm_head, "bias", None)  # None for T5
    model_vocab = head_weight.shape[0]
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise TypeError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}.")
    low, high = int(input_ids.min()), int(input_ids.max())  # one host sync, before any work
    if low < 0 or high >= model_vocab:
        raise ValueError(
            f"input_ids holds token ids outside the model's vocabulary [0, {model_vocab}) (min {low}, max {high}): "
            "encode histories with the tokenizer the model was built with (tokenizer.batch_encode_histories)."
        )
    device = input_ids.device
    trie_t = _Trie(trie, device)
    if trie_t.vocab_size > model_vocab:
        raise ValueError(
            f"The trie is over a vocabulary of {trie_t.vocab_size} tokens but the model's lm_head has "
            f"{model_vocab} outputs: the tokenizer and the model do not belong together."
        )
    special = {}
    for name, token in (("bos_token_id", bos_token_id), ("eos_token_id", eos_token_id), ("pad_token_id", pad_token_id)):
        try:
            special[name] = operator.index(token)
        except TypeError:
            special[name] = -1
        if not 0 <= special[name] < model_vocab:
            raise ValueError(f"{name} must be a token id in [0, {model_vocab}), got {token!r}.")
    bos_token_id, eos_token_id, pad_token_id = special["bos_token_id"], special["eos_token_id"], special["pad_token_id"]
    if decoder_start_token_id is None:
        decoder_start_token_id = getattr(model.config, "decoder_start_token_id", None)
        if decoder_start_token_id is None:
            raise ValueError("model.config.decoder_start_token_id is None: pass decoder_start_token_id.")
    num_levels = trie_t.num_levels
    ranges = trie_t.level_token_ranges().tolist()
    if level_offsets is not None:
        level_offsets = [int(offset) for offset in level_offsets]
        if len(level_offsets) != num_levels:
            raise ValueError(f"level_offsets has {len(level_offsets)} entries but the trie has {num_levels} levels.")
        ends = level_offsets[1:] + [trie_t.vocab_size]
        slices = list(zip(level_offsets, ends))
        for level, ((lo, hi), (smallest, largest)) in enumerate(zip(slices, ranges)):
            if smallest < lo or largest >= hi:
                raise ValueError(
                    f"level {level} of the trie uses tokens {smallest}..{largest}, outside its level_offsets slice "
                    f"[{lo}, {hi}): the trie and level_offsets come from different tokenizers."
                )
    else:
        slices = [(smallest, largest + 1) for smallest, largest in ranges]
    constraint = SessionConstraint(
        trie_t,
        num_items=num_items,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        prefix_length=1,  # the decoder start token
        forbid_repeats=forbid_repeats,
    )
    excluded = constraint.excluded_table(excluded_items, num_rows=input_ids.shape[0])  # [batch, E] or None

    batch = input_ids.shape[0]
    scale = None
    if getattr(model.config, "scale_decoder_outputs", False):  # T5 scales the decoder output before lm_head
        scale = float(getattr(model, "model_dim", None) or model.config.d_model) ** -0.5

    # ------------------------------------------------------------------ encode once
    encoder_hidden = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask)[0]  # [batch, S, d]
    encoder_mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    expanded_encoder = {}

    def encoder_rows(width: int):
        if width not in expanded_encoder:
            expanded_encoder.clear()
            expanded_encoder[width] = (
                encoder_hidden.repeat_interleave(width, 0),
                encoder_mask.repeat_interleave(width, 0),
            )
        return expanded_encoder[width]

    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())

    def decode(tokens: torch.Tensor, width: int) -> torch.Tensor:
        """Feeds ``tokens [batch * width, n]``; returns the last position's hidden state ``[batch * width, d]``."""
        hidden_states, mask = encoder_rows(width)
        out = model.decoder(
            input_ids=tokens,
            encoder_hidden_states=hidden_states,
            encoder_attention_mask=mask,
            cache=cache,
            use_cache=True,
        )
        return out[0][:, -1]

    # ------------------------------------------------------------------ beam state, [batch, W, ...]
    width = 1
    seq_len = constraint.sequence_length
    sequences = torch.full((batch, 1, seq_len), pad_token_id, dtype=torch.long, device=device)
    sequences[:, :, 0] = decoder_start_token_id
    length = 1  # tokens written so far
    fed = 0  # tokens already in the cache
    beam_scores = torch.zeros((batch, 1), dtype=torch.float32, device=device)
    nodes = torch.zeros((batch, 1), dtype=torch.long, device=device)  # current trie node, -1 = no beam
    items = torch.full((batch, 1, num_items), -1, dtype=torch.long, device=device)
    item_scores = torch.zeros((batch, 1, num_items), dtype=torch.float32, device=device)
    batch_index = torch.arange(batch, device=device)

    while True:
        kind, slot, level = constraint.position(length)
        if kind != "code":  # BOS before each item, EOS after the last: written, never scored
            sequences[:, :, length] = constraint.forced_tokens[kind]
            if kind == "eos":
                break
            length += 1
            continue

        # -------------------------------------------------- feed the decoder
        flat_sequences = sequences.view(batch * width, seq_len)
        if fuse_forced_tokens or length - fed == 1:
            hidden = decode(flat_sequences[:, fed:length], width)
        else:
            for position in range(fed, length):
                hidden = decode(flat_sequences[:, position : position + 1], width)
        fed = length

        # -------------------------------------------------- logits of this level's slice only
        lo, hi = slices[level]
        if scale is not None:
            hidden = hidden * scale
        level_logits = hidden @ head_weight[lo:hi].T  # [batch * W, K_level]
        if head_bias is not None:
            level_logits = level_logits + head_bias[lo:hi]
        level_logits = level_logits.float()
        # Checked once, at the first step: NaN weights (or a half-precision overflow) show there already, and a
        # check per level would add a full pass and a host sync to every step of the search.
        if slot == 0 and level == 0 and not bool(torch.isfinite(level_logits).all()):
            raise ValueError(
                f"The model's scores at code level {level} are not finite (NaN or inf): its weights (or, in "
                "half precision, its activations) overflowed or hold NaN. Check the checkpoint, e.g. "
                "all(torch.isfinite(p).all() for p in model.parameters()), or run in float32."
            )

        # -------------------------------------------------- the constrained step: fixed shapes, no host sync
        history = (
            excluded[:, None, :].expand(-1, width, -1).reshape(batch * width, -1) if excluded is not None else None
        )
        earlier = items[:, :, :slot].reshape(batch * width, slot) if slot > 0 else None
        step = constrained_step(
            level_logits,
            nodes,
            beam_scores,
            constraint.excluded_items(history, earlier),
            constraint,
            level,
            lo,
            num_beams,
            renormalize_logits,
        )
        # Beams that found no valid continuation stay as -inf rows (not trimmed: trimming would read the
        # number of valid beams back to the host at every step).
        chosen = torch.isfinite(step.scores)
        source, child = step.beam, step.child
        new_width = step.scores.shape[1]
        flat_source = batch_index[:, None] * width + source

        # -------------------------------------------------- reorder state and cache
        cache.reorder_cache(flat_source.view(-1))
        sequences = _gather_beams(sequences, source)
        items = _gather_beams(items, source)
        item_scores = _gather_beams(item_scores, source)
        width = new_width
        sequences[:, :, length] = torch.where(
            chosen, trie_t.edge_token[(child - 1).clamp(min=0)], torch.full_like(child, pad_token_id)
        )
        length += 1
        item_scores[:, :, slot] += torch.where(chosen, step.log_prob, torch.zeros_like(step.log_prob))
        beam_scores = step.scores
        if level == num_levels - 1:
            leaf_items = trie_t.leaf_item[child.clamp(min=0)]
            items[:, :, slot] = torch.where(chosen, leaf_items, torch.full_like(child, -1))
            nodes = torch.where(chosen, torch.zeros_like(child), child)  # back to the root
        else:
            nodes = child

    # ------------------------------------------------------------------ outputs, padded to num_beams
    valid = torch.isfinite(beam_scores)
    sequences = sequences.masked_fill(~valid[..., None], pad_token_id)
    items = items.masked_fill(~valid[..., None], -1)
    item_scores = item_scores.masked_fill(~valid[..., None], -math.inf)
    scores = beam_scores / float(seq_len - 1) ** length_penalty
    if width < num_beams:
        missing = num_beams - width
        sequences = torch.cat([sequences, sequences.new_full((batch, missing, seq_len), pad_token_id)], dim=1)
        scores = torch.cat([scores, scores.new_full((batch, missing), -math.inf)], dim=1)
        items = torch.cat([items, items.new_full((batch, missing, num_items), -1)], dim=1)
        item_scores = torch.cat([item_scores, item_scores.new_full((batch, missing, num_items), -math.inf)], dim=1)
        valid = torch.cat([valid, valid.new_zeros((batch, missing))], dim=1)
    return SessionSearchOutput(
        sequences=sequences,
        scores=scores,
        item_indices=items,
        item_scores=item_scores,
        valid=valid,
        num_valid=valid.sum(dim=1),
    )
