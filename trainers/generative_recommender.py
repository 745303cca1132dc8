"""OneRec as a ``Recommender`` for the shared evaluation code (``trainers.evaluation``).

Full ranking over the whole catalogue: a trie-constrained beam search over the *first item of the session*
(``num_items=1``), with at least as many beams as the first-level codebook has codes, so that every first-level
code can stay in the beam. The beams, best first, are the ranked list.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from modeling_onerec.generation_onerec import session_beam_search


class GenerativeRecommender:
    """Ranks items with a trained ``OneRecForConditionalGeneration`` and its ``SemanticIDTokenizer``.

    Args:
        model: The model (its device is used).
        tokenizer: The tokenizer the model was built with.
        num_beams: Beam width; ``None`` = the first level's codebook size (``K``), and never less than ``k``.
        batch_size: Users per beam search.
    """

    def __init__(self, model, tokenizer, num_beams: Optional[int] = None, batch_size: int = 16):
        model.config.check_tokenizer(tokenizer)
        self.model, self.tokenizer = model, tokenizer
        first_level = tokenizer.level_offsets[1] - tokenizer.level_offsets[0] if tokenizer.num_levels > 1 else \
            tokenizer.vocab_size - tokenizer.level_offsets[0]
        self.num_beams = num_beams if num_beams is not None else first_level
        self.batch_size = batch_size

    @torch.inference_mode()
    def rank(self, histories: Sequence[Sequence[str]], k: int, exclude_history: bool) -> List[List[str]]:
        """Top-``k`` item ids per history, best first (``k`` distinct items, fewer only if the catalogue is
        exhausted). With ``exclude_history`` the user's own history items are never returned."""
        model, tokenizer = self.model, self.tokenizer
        was_training = model.training
        model.eval()
        trie = tokenizer.trie
        if trie.device != model.device:
            trie.to(model.device)
        beams = max(k, self.num_beams)
        ranked: List[List[str]] = []
        try:
            for start in range(0, len(histories), self.batch_size):
                batch = [list(h) for h in histories[start:start + self.batch_size]]
                encoded = tokenizer.batch_encode_histories(batch, max_items=model.config.max_history_items)
                excluded = [[tokenizer.item_index(i) for i in h] for h in batch] if exclude_history else None
                out = session_beam_search(
                    model, encoded["input_ids"].to(model.device), encoded["attention_mask"].to(model.device), trie,
                    num_beams=beams, num_items=1, bos_token_id=tokenizer.bos_token_id,
                    eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                    forbid_repeats=False, excluded_items=excluded, level_offsets=tokenizer.level_offsets)
                indices = out.item_indices[:, :, 0].cpu()
                valid = out.valid.cpu()
                for row in range(len(batch)):
                    items = [tokenizer.item_ids[i] for i, ok in zip(indices[row].tolist(), valid[row].tolist()) if ok]
                    ranked.append(items[:k])
        finally:
            model.train(was_training)
        return ranked
