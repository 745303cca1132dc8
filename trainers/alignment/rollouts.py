"""Groups of sessions per user for on-policy alignment, and the one log-probability every part of it uses.

The policy (what is sampled, and what the old policy, the reference and the current policy score)
    ``pi(S | H) = prod_t softmax_{allowed_t}(logits_t / temperature)[s_t]``: each token's probability renormalised over
    the tokens the trie allows after the prefix ``s_<t`` (the session constraint of
    :class:`~tokenization_semantic_id.constrained_decoding.SessionConstraint`: trie children, no item of the user's
    whole history, no item twice). This is the distribution that ``generate(do_sample=True)`` under the session logits
    processor draws from and that the session beam search ranks with (``renormalize_logits=True``), so the sampler,
    :func:`constrained_token_log_probs` and the beam scores agree token by token (tests check all three). Forced tokens
    (BOS, EOS) have probability 1: log-probability 0 and no gradient.

    DPO keeps the level-restricted normalisation of :mod:`.session_scoring` (the NTP loss's distribution, independent of
    search-time options); on-policy RL needs the distribution the samples come from, or its ratios are off-policy from
    the first step.

* :func:`session_groups` -- ``G`` sessions per history: the trie-constrained beam search (``strategy="beam"``, all
  ``G`` beams, distinct; natively or through ``generate()`` with the tokenizer's prefix-allowed-tokens function) or
  sampling within the trie (``strategy="sample"``, ``generate(do_sample=True)`` with the session logits processor;
  draws are independent, so a group may repeat a session).
* :func:`constrained_token_log_probs` -- per-token log-probabilities of given sessions under the policy.
* :func:`history_prompt_ids` / :func:`split_prompt` -- the prompt layout the GRPO trainer passes through TRL: the
  user's *whole* history as tokens (the encoder reads the newest ``max_history_items``; the rest is only excluded).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Literal, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel
from transformers.modeling_outputs import BaseModelOutput

from modeling_onerec.modeling_onerec import code_token_mask
from tokenization_semantic_id.constrained_decoding import SessionConstrainedLogitsProcessor

from ..data.collation import pad_rows

RolloutStrategy = Literal["beam", "sample"]
SearchBackend = Literal["native", "generate"]


@dataclass
class SessionGroups:
    """``G`` sessions for each of ``B`` histories, group by group (row ``b * G + g`` is user ``b``'s ``g``-th).

    Attributes:
        sessions: ``[B * G]`` item-id lists of ``m`` items, ``None`` where the search found no ``g``-th session.
        completion_ids: ``[B * G, m * (L + 1) + 1]`` session tokens through EOS (no decoder start token); all PAD
            where ``sessions`` is ``None``.
        valid: ``[B * G]`` bool, a real session.
        sampler_log_probs: ``[B * G, m * (L + 1) + 1]`` each token's log-probability under the sampling distribution
            (``strategy="sample"`` only, else ``None``).
    """

    sessions: List[Optional[List[str]]]
    completion_ids: torch.Tensor
    valid: torch.Tensor
    sampler_log_probs: Optional[torch.Tensor] = None


def _generate_groups(
    model, tokenizer, histories, group_size, session_length, strategy, exclude, temperature, forbid_repeats
):
    """``generate()`` rows ``[B * G, 1 + T]`` (decoder start token first) and, when sampling, the processed scores."""
    encoded = tokenizer.batch_encode_histories(histories, max_items=model.config.max_history_items)
    common = dict(
        input_ids=encoded["input_ids"].to(model.device),
        attention_mask=encoded["attention_mask"].to(model.device),
        num_return_sequences=group_size,
        max_new_tokens=session_length * (tokenizer.num_levels + 1) + 1,
        return_dict_in_generate=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if strategy == "beam":
        allowed = tokenizer.prefix_allowed_tokens_fn(
            session_length, exclude_items=exclude, forbid_repeats=forbid_repeats
        )
        out = model.generate(
            **common,
            num_beams=group_size,
            do_sample=False,
            renormalize_logits=True,
            length_penalty=0.0,
            prefix_allowed_tokens_fn=allowed,
        )
        return out.sequences, None
    processor = tokenizer.session_logits_processor(
        session_length, exclude_items=exclude, num_beams=group_size, forbid_repeats=forbid_repeats
    )
    out = model.generate(
        **common,
        num_beams=1,
        do_sample=True,
        temperature=temperature,
        top_k=0,
        top_p=1.0,
        logits_processor=[processor],
        output_scores=True,
    )
    return out.sequences, torch.stack(out.scores, dim=1)  # [B * G, T, V]


@torch.no_grad()
def session_groups(
    model,
    tokenizer,
    histories: Sequence[Sequence[str]],
    *,
    group_size: int,
    session_length: Optional[int] = None,
    strategy: RolloutStrategy = "beam",
    backend: SearchBackend = "native",
    temperature: float = 1.0,
    exclude_history: bool = True,
    forbid_repeats: bool = True,
) -> SessionGroups:
    """``group_size`` sessions for each history (in eval mode; the model's mode is restored).

    Args:
        model: ``OneRecForConditionalGeneration``.
        tokenizer: Its ``SemanticIDTokenizer``.
        histories: ``B`` item-id lists, oldest first.
        group_size: ``G``: beams (all returned, best first) or independent draws.
        session_length: Items per session ``m`` (default ``config.session_length``).
        strategy: ``"beam"`` (OneRec's choice for the group) or ``"sample"`` (within the trie, at ``temperature``).
        backend: For ``"beam"``: ``"native"`` (:meth:`~modeling_onerec.OneRecForConditionalGeneration.search_sessions`)
            or ``"generate"`` (``model.generate()`` with ``tokenizer.prefix_allowed_tokens_fn``: one Python call per
            beam per step, slower, the same sessions). Sampling always goes through ``generate()``.
        temperature: Sampling temperature (``strategy="sample"``).
        exclude_history: No item of the user's whole history in a session.
        forbid_repeats: No item twice in a session.
    """
    if strategy not in ("beam", "sample"):
        raise ValueError(f"strategy must be 'beam' or 'sample', got {strategy!r}.")
    if backend not in ("native", "generate"):
        raise ValueError(f"backend must be 'native' or 'generate', got {backend!r}.")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be an int >= 1, got {group_size!r}.")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}.")
    m = model.config.session_length if session_length is None else int(session_length)
    histories = [list(history) for history in histories]
    was_training = model.training
    model.eval()
    try:
        if strategy == "beam" and backend == "native":
            item_indices = model.check_histories(tokenizer, histories)
            inputs = model.encode_histories(tokenizer, histories, item_indices)
            found = model.search_sessions(
                tokenizer,
                inputs,
                num_sessions=group_size,
                num_beams=group_size,
                session_length=m,
                exclude_history=exclude_history,
                forbid_repeats=forbid_repeats,
                renormalize_logits=True,  # the policy's distribution (module docstring), not the serving default
            )
            completion_ids = found["sequences"].reshape(-1, found["sequences"].shape[-1])[:, 1:].cpu()
            scores = None
        else:
            exclude = histories if exclude_history else None
            sequences, scores = _generate_groups(
                model, tokenizer, histories, group_size, m, strategy, exclude, temperature, forbid_repeats
            )
            completion_ids = sequences[:, 1:].cpu()
    finally:
        model.train(was_training)
    width = m * (tokenizer.num_levels + 1) + 1
    if completion_ids.shape[1] < width:  # generate() stops early when every row is done
        completion_ids = F.pad(completion_ids, (0, width - completion_ids.shape[1]), value=tokenizer.pad_token_id)
    sessions = [tokenizer.decode_session(row) for row in completion_ids]
    sessions = [items if len(items) == m and None not in items else None for items in sessions]
    valid = torch.tensor([items is not None for items in sessions])
    completion_ids = completion_ids.masked_fill(~valid[:, None], tokenizer.pad_token_id)
    sampler_log_probs = None
    if scores is not None:
        tokens = completion_ids[:, : scores.shape[1]].to(scores.device)
        picked = F.log_softmax(scores.float(), dim=-1).gather(2, tokens[..., None].clamp(max=scores.shape[2] - 1))
        sampler_log_probs = picked.squeeze(2).cpu()
        sampler_log_probs = torch.where(torch.isfinite(sampler_log_probs), sampler_log_probs, 0.0)
        sampler_log_probs = F.pad(sampler_log_probs, (0, width - sampler_log_probs.shape[1]))
        sampler_log_probs = sampler_log_probs.masked_fill(~valid[:, None], 0.0)
    return SessionGroups(sessions, completion_ids, valid, sampler_log_probs)


# ---------------------------------------------------------------------------------------------------------------------
# The prompt layout, and the policy's log-probabilities
# ---------------------------------------------------------------------------------------------------------------------


def history_prompt_ids(tokenizer, history: Sequence[str]) -> List[int]:
    """The prompt of one user: the codes of the whole history, oldest first, then EOS."""
    history = list(history)
    return tokenizer.encode_history(history, max_items=len(history))


def split_prompt(
    prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, tokenizer, max_history_items: int
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded :func:`history_prompt_ids` rows ``[R, P]`` -> the encoder's right-padded inputs (the newest
    ``max_history_items`` items, then EOS) ``[R, S]`` with their mask, and every history item's catalogue row
    ``[R, E]`` (``-1`` padding), the items the policy may not generate."""
    levels = tokenizer.num_levels
    rows = []
    for ids, mask in zip(prompt_ids.tolist(), prompt_mask.tolist()):
        real = [token for token, keep in zip(ids, mask) if keep]
        if len(real) < levels + 1 or (len(real) - 1) % levels or real[-1] != tokenizer.eos_token_id:
            raise ValueError(
                f"A prompt of {len(real)} tokens is not a history (whole items of {levels} codes, then EOS): build "
                "prompts with history_prompt_ids()."
            )
        rows.append(real)
    kept = [row[-(min((len(row) - 1) // levels, max_history_items) * levels + 1) :] for row in rows]
    encoder_ids, encoder_mask = pad_rows(kept, tokenizer.pad_token_id)
    # Every row's history items, read with one walk of the trie over all their codes.
    lengths = [(len(row) - 1) // levels for row in rows]
    trie = tokenizer.trie
    codes = torch.tensor([token for row in rows for token in row[:-1]], dtype=torch.long).view(-1, levels)
    leaves = trie.walk(codes.to(trie.device))
    items = torch.where(leaves >= 0, trie.leaf_item[leaves.clamp(min=0)], -1).cpu()
    excluded = torch.full((len(rows), max(lengths)), -1, dtype=torch.long)
    excluded[torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]] = items
    device = prompt_ids.device
    return encoder_ids.to(device), encoder_mask.to(device), excluded.to(device)


@dataclass
class PolicyTokenScores:
    """Per-token scores of sessions under the policy; every field ``[R, T]``.

    Attributes:
        log_probs: ``log pi(s_t | H, s_<t)`` (0 at forced and padding positions); differentiable.
        code_mask: Positions holding a code token (the policy's decisions).
        entropy: The entropy of the allowed-token distribution at each position (no gradient; ``None`` unless asked
            for).
    """

    log_probs: torch.Tensor
    code_mask: torch.Tensor
    entropy: Optional[torch.Tensor] = None


def constrained_token_log_probs(
    model,
    tokenizer,
    encoder_input_ids: torch.Tensor,
    encoder_attention_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    *,
    excluded_items: Optional[torch.Tensor] = None,
    session_length: Optional[int] = None,
    forbid_repeats: bool = True,
    temperature: float = 1.0,
    entropy: bool = False,
) -> PolicyTokenScores:
    """The policy's per-token log-probabilities of sessions (module docstring), with teacher forcing.

    Args:
        model: ``OneRecForConditionalGeneration`` (possibly wrapped); run in its current mode, with gradients as the
            caller has them.
        tokenizer: The ``SemanticIDTokenizer`` (its trie and special tokens).
        encoder_input_ids / encoder_attention_mask: ``[R, S]`` encoded histories (right-padded).
        completion_ids: ``[R, T]`` session tokens through EOS (:class:`SessionGroups`' ``completion_ids``).
        excluded_items: ``[R, E]`` catalogue rows the session may not contain (``-1`` padding), as generated.
        session_length: ``m`` (default ``config.session_length``).
        forbid_repeats: As generated.
        temperature: As sampled (logits are divided by it).
        entropy: Also compute each position's entropy (TRL logs it).
    """
    unwrapped = extract_model_from_parallel(model)
    m = unwrapped.config.session_length if session_length is None else int(session_length)
    device = completion_ids.device
    rows = completion_ids.shape[0]
    start = torch.full((rows, 1), unwrapped.config.decoder_start_token_id, dtype=torch.long, device=device)
    decoder_tokens = torch.cat([start, completion_ids], dim=1)  # [R, 1 + T]
    # One encoder pass per distinct history: a group's G rows share theirs.
    unique, inverse = torch.unique(encoder_input_ids, dim=0, return_inverse=True)
    unique_mask = torch.zeros_like(unique)
    unique_mask[inverse] = encoder_attention_mask
    hidden = unwrapped.get_encoder()(input_ids=unique, attention_mask=unique_mask).last_hidden_state[inverse]
    outputs = model(
        encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
        attention_mask=encoder_attention_mask,
        decoder_input_ids=decoder_tokens[:, :-1],
        use_cache=False,
    )
    logits = outputs.logits.float() / temperature  # [R, T, V]
    processor = SessionConstrainedLogitsProcessor(
        tokenizer.trie,
        excluded_items=excluded_items,
        num_beams=1,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        num_items=m,
        prefix_length=1,
        forbid_repeats=forbid_repeats,
    )
    with torch.no_grad():
        masks = torch.stack(
            [processor.allowed_mask(decoder_tokens[:, : t + 1]) for t in range(completion_ids.shape[1])], dim=1
        ).to(logits.device)  # [R, T, V_trie]
        if masks.shape[-1] < logits.shape[-1]:  # a model head wider than the tokenizer's vocabulary
            masks = F.pad(masks, (0, logits.shape[-1] - masks.shape[-1]), value=float("-inf"))
    log_softmax = F.log_softmax(logits + masks, dim=-1)
    targets = completion_ids.to(logits.device)
    code_mask = code_token_mask(targets, tokenizer.level_offsets, tokenizer.vocab_size)
    picked = log_softmax.gather(2, targets[..., None]).squeeze(2)
    log_probs = torch.where(code_mask, picked, torch.zeros_like(picked))
    scores = PolicyTokenScores(log_probs=log_probs, code_mask=code_mask)
    if entropy:
        with torch.no_grad():
            probs = log_softmax.exp()
            scores.entropy = -torch.where(probs > 0, probs * log_softmax, torch.zeros_like(probs)).sum(-1)
    return scores


__all__ = [
    "PolicyTokenScores",
    "RolloutStrategy",
    "SearchBackend",
    "SessionGroups",
    "constrained_token_log_probs",
    "history_prompt_ids",
    "session_groups",
    "split_prompt",
]
