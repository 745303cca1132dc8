"""Trie-constrained decoding of item sessions, two ways that give identical results.

A generated session is ``m`` items, each a BOS token followed by the item's ``L`` code tokens
(paper Eq. 3), then EOS::

    [decoder prefix] BOS c1 c2 c3  BOS c1 c2 c3  ...  BOS c1 c2 c3  EOS  PAD PAD ...

* :class:`SessionConstrainedLogitsProcessor` -- the fast path: one batched tensor computation per
  step over all beams (dense row for level 1, CSR children below, exclusions by sorted keys).
* :class:`SessionPrefixAllowedTokensFn` -- the plain reference: a Python dict trie, called per beam
  through ``generate(prefix_allowed_tokens_fn=...)``. Slow, obviously correct, kept for tests.

Both can forbid repeating an item inside a session and exclude each user's history items. Exclusion
prunes whole subtrees whose items are all excluded, so a beam is never led into a prefix with no
valid completion. A row with nothing valid left (every item excluded, or a prefix outside the trie)
may only emit PAD, never an unconstrained token; a decoded PAD is reported as "no item".

Both use the semantics of ``transformers``' ``PrefixConstrainedLogitsProcessor``: allowed tokens
keep the model's score, all others get ``-inf``.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from transformers import LogitsProcessor

from .trie import SemanticIDTrie, excluded_below, fixed_children


def pad_item_lists(item_lists: Optional[Sequence[Sequence[int]]], device=None) -> Optional[torch.Tensor]:
    """Deduplicated, ``-1``-padded ``[batch, E]`` long tensor from per-row lists of item indices."""
    if item_lists is None:
        return None
    rows = [sorted(set(int(i) for i in items)) for items in item_lists]
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), max(width, 1)), -1, dtype=torch.long)
    for row, items in enumerate(rows):
        if items:
            out[row, : len(items)] = torch.tensor(items, dtype=torch.long)
    return out.to(device) if device is not None else out


def drop_duplicate_items(excluded: torch.Tensor) -> torch.Tensor:
    """``[B, E]`` item indices with every repeat within a row replaced by ``-1`` (order not kept). An item counted
    twice would make a subtree look exhausted while one of its items is still allowed."""
    excluded = excluded.sort(dim=1).values
    duplicate = torch.zeros_like(excluded, dtype=torch.bool)
    duplicate[:, 1:] = excluded[:, 1:] == excluded[:, :-1]
    return excluded.masked_fill(duplicate, -1)


class _SessionLayout:
    """Where a decoding step sits in the session: shared by both decoding paths."""

    def __init__(self, num_levels: int, num_items: int, prefix_length: int):
        if num_items < 1:
            raise ValueError(f"num_items (items per session) must be >= 1, got {num_items}.")
        if prefix_length < 0:
            raise ValueError(f"prefix_length must be >= 0, got {prefix_length}.")
        self.num_levels = num_levels
        self.num_items = num_items
        self.prefix_length = prefix_length
        self.period = num_levels + 1

    def position(self, length: int) -> Tuple[str, int, int]:
        """For a sequence of ``length`` tokens, what comes next.

        Returns ``(kind, slot, level)`` where kind is ``"bos"``, ``"code"`` (``level`` = tokens of the
        current item already generated), ``"eos"``, ``"pad"`` or ``"prefix"`` (before the session).
        """
        generated = length - self.prefix_length
        if generated < 0:
            return "prefix", 0, 0
        if generated < self.num_items * self.period:
            slot, within = divmod(generated, self.period)
            return ("bos", slot, 0) if within == 0 else ("code", slot, within - 1)
        return ("eos", self.num_items, 0) if generated == self.num_items * self.period else ("pad", self.num_items, 0)

    def item_columns(self, slot: int) -> slice:
        """Columns of item ``slot``'s code tokens in the full decoder sequence."""
        start = self.prefix_length + slot * self.period + 1
        return slice(start, start + self.num_levels)


class SessionConstrainedLogitsProcessor(LogitsProcessor):
    """Vectorised trie constraint for ``generate()`` over whole sessions.

    Args:
        trie: The :class:`SemanticIDTrie` of valid codes (vocabulary token ids).
        bos_token_id / eos_token_id / pad_token_id: Special tokens of the tokenizer.
        num_items: Items per session ``m`` (``1`` for point-wise next-item generation).
        prefix_length: Decoder tokens before the session (1 for T5's ``decoder_start_token_id``).
        forbid_repeats: Forbid an item already generated earlier in the same session.
        excluded_items: Per batch row, item indices never to generate (typically the history):
            a list of lists, or a ``[batch, E]`` long tensor padded with ``-1``.
        num_beams: Required with ``excluded_items``: the ``num_beams`` given to ``generate()``
            (``num_return_sequences`` when sampling), i.e. how many rows ``generate()`` runs per input. A
            processor sees only ``[batch * beams, ...]`` rows; without this it could not tell 4 users x 4
            beams from 2 users x 8 beams, and would apply one user's exclusions to another.

    Call with ``input_ids [batch * beams, cur_len]`` and ``scores [batch * beams, V]``.
    """

    def __init__(
        self,
        trie: SemanticIDTrie,
        *,
        bos_token_id: int,
        eos_token_id: int,
        pad_token_id: int,
        num_items: int = 1,
        prefix_length: int = 1,
        forbid_repeats: bool = True,
        excluded_items=None,
        num_beams: Optional[int] = None,
    ):
        if excluded_items is not None and (
            isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1
        ):
            raise ValueError(
                f"num_beams={num_beams!r}: excluded_items needs num_beams, the num_beams passed to generate() "
                "(num_return_sequences when sampling), so that each input's exclusions reach that input's beams."
            )
        self.num_beams = num_beams
        self.trie = trie
        self.layout = _SessionLayout(trie.num_levels, num_items, prefix_length)
        self.bos_token_id, self.eos_token_id, self.pad_token_id = bos_token_id, eos_token_id, pad_token_id
        self.forbid_repeats = forbid_repeats
        if excluded_items is not None and not isinstance(excluded_items, torch.Tensor):
            excluded_items = pad_item_lists(excluded_items)
        elif excluded_items is not None:
            excluded_items = drop_duplicate_items(excluded_items.long())
        self.excluded_items = excluded_items.to(trie.device) if excluded_items is not None else None
        self._forced_rows: Dict[int, torch.Tensor] = {}

    def _forced(self, token_id: int, device) -> torch.Tensor:
        """A ``[V]`` additive mask allowing only ``token_id``."""
        if token_id not in self._forced_rows:
            row = torch.full((self.trie.vocab_size,), -math.inf)
            row[token_id] = 0.0
            self._forced_rows[token_id] = row
        return self._forced_rows[token_id].to(device)

    def _excluded_for_rows(self, input_ids: torch.Tensor, slot: int) -> Optional[torch.Tensor]:
        """``[B, E]`` item indices excluded for each row (``-1`` padding), or ``None``."""
        parts = []
        if self.excluded_items is not None:
            batch = self.excluded_items.shape[0]
            if input_ids.shape[0] != batch * self.num_beams:
                raise ValueError(
                    f"excluded_items has {batch} rows and num_beams={self.num_beams}, so {batch * self.num_beams} "
                    f"sequences, but generate runs {input_ids.shape[0]}; pass one exclusion list per input row "
                    "(not per beam) and the num_beams given to generate()."
                )
            # .to(): the trie (and input_ids) may have moved to another device after this processor was built.
            parts.append(self.excluded_items.to(input_ids.device).repeat_interleave(self.num_beams, dim=0))
        if self.forbid_repeats and slot > 0:
            for previous in range(slot):
                leaf = self.trie.walk(input_ids[:, self.layout.item_columns(previous)])
                item = torch.where(leaf >= 0, self.trie.leaf_item[leaf.clamp(min=0)], torch.full_like(leaf, -1))
                parts.append(item[:, None])
        if not parts:
            return None
        # An item counted twice (a history item the beam also generated earlier) would make a subtree
        # look exhausted too soon: keep each item once per row.
        # Each part is duplicate-free on its own (the history since construction, the session by forbid_repeats):
        # only their union needs it.
        return drop_duplicate_items(torch.cat(parts, dim=1)) if len(parts) > 1 else parts[0]

    def allowed_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Additive mask ``[B, V]``: 0 where a token is allowed next, ``-inf`` elsewhere."""
        input_ids = input_ids.to(self.trie.device)
        num_rows, length = input_ids.shape
        kind, slot, level = self.layout.position(length)
        if kind != "code":
            token = {"bos": self.bos_token_id, "eos": self.eos_token_id, "pad": self.pad_token_id}.get(kind)
            if token is None:
                raise ValueError(
                    f"decoder input of length {length} is shorter than prefix_length={self.layout.prefix_length}."
                )
            return self._forced(token, input_ids.device).expand(num_rows, -1).clone()

        item_start = self.layout.item_columns(slot).start
        nodes = self.trie.walk(input_ids[:, item_start : item_start + level])  # the root at level 0
        # Each row's children as a fixed [B, K] table (K: the level's largest branch): no host synchronisation.
        children = fixed_children(self.trie.indptr, self.trie.edge_token, nodes, self.trie.level_max_children[level])
        keep = children.valid
        excluded = self._excluded_for_rows(input_ids, slot)
        if excluded is not None:
            # A child whose every item below is excluded for that row has nothing left to offer.
            paths = self.trie.item_path[excluded.clamp(min=0)][..., level : level + 2]
            paths = paths.masked_fill((excluded < 0)[..., None], -1)
            keep = keep & (excluded_below(children, nodes, paths) < self.trie.leaf_count[children.nodes.clamp(min=0)])
        # amax: a padding slot repeats another edge's token, and must not hide a real child with the same token.
        values = torch.where(keep, 0.0, -math.inf).to(torch.float32)
        mask = torch.full((num_rows, self.trie.vocab_size), -math.inf, dtype=torch.float32, device=input_ids.device)
        mask.scatter_reduce_(1, children.tokens, values, reduce="amax")
        dead = ~keep.any(dim=1, keepdim=True)  # nothing valid: the row may only emit PAD
        return torch.where(dead, self._forced(self.pad_token_id, input_ids.device), mask)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return scores + self.allowed_mask(input_ids).to(scores.device, scores.dtype)


class SessionPrefixAllowedTokensFn:
    """Reference implementation for ``generate(prefix_allowed_tokens_fn=...)``: a plain Python trie.

    Same arguments and semantics as :class:`SessionConstrainedLogitsProcessor`, but built from
    ``item_tokens`` (``[N, L]`` token ids as nested lists or a tensor) with dicts, and called once
    per beam with ``(batch_id, input_ids [cur_len])``; returns the list of allowed token ids.
    """

    def __init__(
        self,
        item_tokens,
        *,
        bos_token_id: int,
        eos_token_id: int,
        pad_token_id: int,
        num_items: int = 1,
        prefix_length: int = 1,
        forbid_repeats: bool = True,
        excluded_items: Optional[Sequence[Sequence[int]]] = None,
    ):
        codes = [tuple(int(t) for t in row) for row in torch.as_tensor(item_tokens).tolist()]
        self.layout = _SessionLayout(len(codes[0]) if codes else 1, num_items, prefix_length)
        self.item_of_code = {code: index for index, code in enumerate(codes)}
        self.code_of_item = codes
        self.children: Dict[tuple, List[int]] = {}
        self.items_below: Counter = Counter()
        for code in codes:
            for depth in range(len(code) + 1):
                self.items_below[code[:depth]] += 1
                if depth < len(code):
                    siblings = self.children.setdefault(code[:depth], [])
                    if code[depth] not in siblings:
                        siblings.append(code[depth])
        self.bos_token_id, self.eos_token_id, self.pad_token_id = bos_token_id, eos_token_id, pad_token_id
        self.forbid_repeats = forbid_repeats
        self.excluded_items = (
            [set(int(i) for i in items if int(i) >= 0) for items in excluded_items]
            if excluded_items is not None
            else None
        )

    def __call__(self, batch_id: int, input_ids: torch.Tensor) -> List[int]:
        tokens = [int(t) for t in input_ids.tolist()]
        kind, slot, level = self.layout.position(len(tokens))
        if kind == "bos":
            return [self.bos_token_id]
        if kind == "eos":
            return [self.eos_token_id]
        if kind != "code":
            return [self.pad_token_id]
        if self.excluded_items is not None and batch_id >= len(self.excluded_items):
            raise ValueError(
                f"excluded_items has {len(self.excluded_items)} rows but generate() asks for input {batch_id}; "
                "pass one exclusion list per input row."
            )
        excluded = set(self.excluded_items[batch_id]) if self.excluded_items is not None else set()
        if self.forbid_repeats:
            for previous in range(slot):
                code = tuple(tokens[self.layout.item_columns(previous)])
                if code in self.item_of_code:
                    excluded.add(self.item_of_code[code])
        start = self.layout.item_columns(slot).start
        prefix = tuple(tokens[start : start + level])
        allowed = []
        for token in self.children.get(prefix, []):
            child = prefix + (token,)
            excluded_below = sum(1 for item in excluded if self.code_of_item[item][: level + 1] == child)
            if self.items_below[child] > excluded_below:
                allowed.append(token)
        return sorted(allowed) or [self.pad_token_id]
