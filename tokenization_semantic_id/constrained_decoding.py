"""Trie-constrained decoding of item sessions: one rule, two ``generate()`` interfaces.

A generated session is ``m`` items, each a BOS token followed by the item's ``L`` code tokens
(paper Eq. 3), then EOS::

    [decoder prefix] BOS c1 c2 c3  BOS c1 c2 c3  ...  BOS c1 c2 c3  EOS  PAD PAD ...

* :class:`SessionConstraint` -- the rule itself, the one home of "which tokens may follow this prefix": the layout
  (forced BOS, EOS, PAD), codes valid per trie, exclusions (each user's history) and no repeated item within a
  session. Batched tensor operations with fixed shapes; the model's native ``session_beam_search``
  (``modeling_onerec/generation_onerec.py``) applies a marked copy of it.
* :class:`SessionConstrainedLogitsProcessor` -- the fast path for ``generate(logits_processor=[...])``: one batched
  call per step over all beams.
* :class:`SessionPrefixAllowedTokensFn` -- the same rule for ``generate(prefix_allowed_tokens_fn=...)``, called per
  beam (slow; kept for callers that use that interface).

Exclusion prunes whole subtrees whose items are all excluded, so a beam is never led into a prefix with no
valid completion. A row with nothing valid left (every item excluded, or a prefix outside the trie)
may only emit PAD, never an unconstrained token; a decoded PAD is reported as "no item".

Both interfaces use the semantics of ``transformers``' ``PrefixConstrainedLogitsProcessor``: allowed tokens
keep the model's score, all others get ``-inf``.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
from transformers import LogitsProcessor

from .trie import SemanticIDTrie, excluded_below, fixed_children


def drop_duplicate_items(excluded: torch.Tensor) -> torch.Tensor:
    """``[B, E]`` item indices with every repeat within a row replaced by ``-1`` (order not kept). An item counted
    twice would make a subtree look exhausted while one of its items is still allowed."""
    excluded = excluded.sort(dim=1).values
    duplicate = torch.zeros_like(excluded, dtype=torch.bool)
    duplicate[:, 1:] = excluded[:, 1:] == excluded[:, :-1]
    return excluded.masked_fill(duplicate, -1)


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


class SessionConstrainedLogitsProcessor(LogitsProcessor):
    """Vectorised trie constraint for ``generate()`` over whole sessions.

    Args:
        trie: The :class:`SemanticIDTrie` of valid codes (vocabulary token ids).
        bos_token_id / eos_token_id / pad_token_id, num_items (default 1: point-wise next-item generation),
            prefix_length, forbid_repeats: The session, as :class:`SessionConstraint` takes them (keyword only).
        excluded_items: Per batch row, item indices never to generate (typically the history):
            a list of lists, or a ``[batch, E]`` long tensor padded with ``-1``.
        num_beams: Required with ``excluded_items``: the ``num_beams`` given to ``generate()``
            (``num_return_sequences`` when sampling), i.e. how many rows ``generate()`` runs per input. A
            processor sees only ``[batch * beams, ...]`` rows; without this it could not tell 4 users x 4
            beams from 2 users x 8 beams, and would apply one user's exclusions to another.

    Call with ``input_ids [batch * beams, cur_len]`` and ``scores [batch * beams, V]``.
    """

    def __init__(self, trie: SemanticIDTrie, *, excluded_items=None, num_beams: Optional[int] = None, **session):
        if excluded_items is not None and (
            isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1
        ):
            raise ValueError(
                f"num_beams={num_beams!r}: excluded_items needs num_beams, the num_beams passed to generate() "
                "(num_return_sequences when sampling), so that each input's exclusions reach that input's beams."
            )
        self.num_beams = num_beams
        self.trie = trie
        self.constraint = SessionConstraint(trie, **session)
        self.excluded_items = self.constraint.excluded_table(excluded_items)

    def _excluded_rows(self, input_ids: torch.Tensor) -> Optional[torch.Tensor]:
        """``[batch * beams, E]``: each generate() row's excluded items (its input's), or ``None``."""
        if self.excluded_items is None:
            return None
        batch = self.excluded_items.shape[0]
        if input_ids.shape[0] != batch * self.num_beams:
            raise ValueError(
                f"excluded_items has {batch} rows and num_beams={self.num_beams}, so {batch * self.num_beams} "
                f"sequences, but generate runs {input_ids.shape[0]}; pass one exclusion list per input row "
                "(not per beam) and the num_beams given to generate()."
            )
        # .to(): the trie (and input_ids) may have moved to another device after this processor was built.
        return self.excluded_items.to(input_ids.device).repeat_interleave(self.num_beams, dim=0)

    def allowed_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Additive mask ``[B, V]``: 0 where a token is allowed next, ``-inf`` elsewhere."""
        input_ids = input_ids.to(self.trie.device)
        tokens, allowed = self.constraint.allowed_tokens(input_ids, self._excluded_rows(input_ids))
        # amax: a padding slot repeats another edge's token, and must not hide a real child with the same token.
        values = torch.where(allowed, 0.0, -math.inf).to(torch.float32)
        mask = torch.full(
            (input_ids.shape[0], self.trie.vocab_size), -math.inf, dtype=torch.float32, device=input_ids.device
        )
        return mask.scatter_reduce_(1, tokens, values, reduce="amax")

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return scores + self.allowed_mask(input_ids).to(scores.device, scores.dtype)


class SessionPrefixAllowedTokensFn:
    """The same constraint for ``generate(prefix_allowed_tokens_fn=...)``: called once per beam with ``(batch_id,
    input_ids [cur_len])``, returns the sorted list of allowed token ids (a Python call per beam per step: slow).

    Same arguments and results as :class:`SessionConstrainedLogitsProcessor` (both apply :class:`SessionConstraint`),
    but built from ``item_tokens`` (``[N, L]`` token ids as nested lists or a tensor, or a :class:`SemanticIDTrie`),
    and without ``num_beams``: generate() names each row's input.
    """

    def __init__(self, item_tokens, *, excluded_items: Optional[Sequence[Sequence[int]]] = None, **session):
        if isinstance(item_tokens, SemanticIDTrie):
            trie = item_tokens
        else:
            tokens = torch.as_tensor(item_tokens, dtype=torch.long)
            trie = SemanticIDTrie(tokens, vocab_size=int(tokens.max()) + 1 if tokens.numel() else 1)
        self.constraint = SessionConstraint(trie, **session)
        self.excluded_items = self.constraint.excluded_table(excluded_items)

    def __call__(self, batch_id: int, input_ids: torch.Tensor) -> List[int]:
        excluded = None
        if self.excluded_items is not None:
            if batch_id >= self.excluded_items.shape[0]:
                raise ValueError(
                    f"excluded_items has {self.excluded_items.shape[0]} rows but generate() asks for input "
                    f"{batch_id}; pass one exclusion list per input row."
                )
            excluded = self.excluded_items[batch_id : batch_id + 1]
        input_ids = input_ids.to(self.constraint.trie.device)[None]
        tokens, allowed = self.constraint.allowed_tokens(input_ids, excluded)
        return sorted(set(tokens[0][allowed[0]].tolist()))
