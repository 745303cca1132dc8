"""The CSR trie and the session constraint: its two generate() interfaces agree with each other and with a plain-Python
statement of the rule (:func:`oracle_allowed_tokens`), and every decode is a real item."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import every_beam, semantic_id_tokenizer, tiny_t5
from tokenization_semantic_id import SemanticIDTrie
from tokenization_semantic_id.trie import excluded_below, fixed_children

BOS, EOS, PAD = 2, 1, 0


def test_trie_matches_python_dict():
    tokens = torch.tensor([[3, 5, 9], [3, 5, 8], [3, 6, 9], [4, 5, 9]])
    trie = SemanticIDTrie(tokens, vocab_size=10)
    assert trie.num_nodes == 1 + 2 + 3 + 4
    leaves = trie.walk(tokens)
    assert trie.leaf_item[leaves].tolist() == [0, 1, 2, 3]
    assert trie.walk(torch.tensor([[3, 5, 7]])).item() == -1
    assert trie.walk(torch.tensor([[4, 6]])).item() == -1
    assert trie.leaf_count[0] == 4 and trie.leaf_count[trie.walk(torch.tensor([[3]]))].item() == 3
    assert trie.level_max_children == [2, 2, 2]  # root: 3, 4; node 3: 5, 6; node 35: 9, 8
    nodes = trie.walk(torch.tensor([[3], [4], [3]]))
    children = fixed_children(trie.indptr, trie.edge_token, torch.cat([nodes, torch.tensor([-1])]), 2)
    assert children.valid.tolist() == [[True, True], [True, False], [True, True], [False, False]]
    assert children.tokens[children.valid].tolist() == [5, 6, 5, 5, 6]
    assert children.nodes[~children.valid].eq(-1).all()
    # Items 1 (3 5 8) and 2 (3 6 9) excluded for a row at node "3 5": one item below child 8, none below child 9.
    node = trie.walk(torch.tensor([[3, 5]]))
    below = fixed_children(trie.indptr, trie.edge_token, node, 2)
    paths = trie.item_path[torch.tensor([[1, 2]])][..., 2:4]
    assert below.tokens.tolist() == [[8, 9]] and excluded_below(below, node, paths).tolist() == [[1, 0]]
    assert trie.root_allowed.nonzero().flatten().tolist() == [3, 4]


def test_trie_rejects_colliding_or_out_of_range_codes():
    with pytest.raises(ValueError, match="bijection"):
        SemanticIDTrie(torch.tensor([[3, 4], [3, 4]]), vocab_size=6)
    with pytest.raises(ValueError, match="outside"):
        SemanticIDTrie(torch.tensor([[3, 9]]), vocab_size=6)


def oracle_allowed_tokens(item_tokens, tokens, num_items, forbid_repeats=True, excluded=()):
    """The session rule in plain Python, independent of ``SessionConstraint``: the tokens that may follow ``tokens``
    (decoder start, then ``BOS c1..cL`` per item, then EOS). A code token is allowed when some item that is neither
    excluded nor (with ``forbid_repeats``) earlier in the session has the current prefix plus that token as a prefix
    of its code; a row with none may only emit PAD."""
    codes = [tuple(row) for row in torch.as_tensor(item_tokens).tolist()]
    item_of_code = {code: item for item, code in enumerate(codes)}
    period = len(codes[0]) + 1
    generated = len(tokens) - 1
    if generated >= num_items * period:
        return [EOS] if generated == num_items * period else [PAD]
    slot, within = divmod(generated, period)
    if within == 0:
        return [BOS]
    banned = set(excluded)
    if forbid_repeats:
        banned |= {item_of_code.get(tuple(tokens[2 + s * period : 1 + (s + 1) * period]), -1) for s in range(slot)}
    prefix = tuple(tokens[2 + slot * period :])
    allowed = {
        code[within - 1] for item, code in enumerate(codes) if code[: within - 1] == prefix and item not in banned
    }
    return sorted(allowed) or [PAD]


def _random_prefix(tokenizer, generator, slot, level, num_items, invalid=False):
    """A decoder input in the middle of item ``slot`` (``level`` code tokens of it already generated)."""
    items = torch.randint(tokenizer.num_items, (slot + 1,), generator=generator)
    tokens = [PAD]
    for position, item in enumerate(items.tolist()):
        code = tokenizer.item_tokens[item].tolist()
        tokens += [BOS] + (code if position < slot else code[:level])
    if invalid and len(tokens) > 2:
        tokens[-1] = tokenizer.level_offsets[0]  # a level-1 token where another level belongs
    return tokens


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 10_000),
    slot=st.integers(0, 2),
    level=st.integers(0, 3),
    forbid=st.booleans(),
    exclude=st.booleans(),
    invalid=st.booleans(),
)
def test_fast_mask_equals_reference_allowed_tokens(small_tokenizer, seed, slot, level, forbid, exclude, invalid):
    tokenizer = small_tokenizer
    generator = torch.Generator().manual_seed(seed)
    level = min(level, tokenizer.num_levels - 1)
    rows = [_random_prefix(tokenizer, generator, slot, level, 3, invalid and r == 0) for r in range(6)]
    history = None
    if exclude:  # exclude many items, so that whole subtrees are exhausted
        history = [
            [tokenizer.item_ids[i] for i in torch.randint(tokenizer.num_items, (150,), generator=generator)]
            for _ in range(6)
        ]
    fast = tokenizer.session_logits_processor(3, forbid_repeats=forbid, exclude_items=history, num_beams=1)
    reference = tokenizer.prefix_allowed_tokens_fn(3, forbid_repeats=forbid, exclude_items=history)
    mask = fast.allowed_mask(torch.tensor(rows))
    for row, tokens in enumerate(rows):
        allowed = (mask[row] == 0).nonzero().flatten().tolist()
        assert allowed == reference(row, torch.tensor(tokens))
        excluded = [tokenizer.item_index(item) for item in history[row]] if history else ()
        assert allowed == oracle_allowed_tokens(tokenizer.item_tokens, tokens, 3, forbid, excluded)
        assert allowed  # never empty: a dead row may only emit PAD


def test_excluding_everything_allows_only_pad(small_tokenizer):
    tokenizer = small_tokenizer
    processor = tokenizer.session_logits_processor(1, exclude_items=[tokenizer.item_ids], num_beams=1)
    mask = processor.allowed_mask(torch.tensor([[PAD, BOS]]))
    assert (mask[0] == 0).nonzero().flatten().tolist() == [PAD]


def _generate(model, tokenizer, histories, num_items, beams, use_processor, **constraint):
    inputs = tokenizer.batch_encode_histories(histories)
    kwargs = every_beam(tokenizer, num_items, beams)
    if use_processor:
        kwargs["logits_processor"] = [tokenizer.session_logits_processor(num_items, num_beams=beams, **constraint)]
    else:
        kwargs["prefix_allowed_tokens_fn"] = tokenizer.prefix_allowed_tokens_fn(num_items, **constraint)
    return model.generate(**inputs, **kwargs)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 1000),
    num_items=st.integers(1, 3),
    beams=st.sampled_from([1, 4, 8]),
    exclude_history=st.booleans(),
)
def test_generate_paths_agree_and_every_item_is_real(small_tokenizer, seed, num_items, beams, exclude_history):
    tokenizer = small_tokenizer
    model = tiny_t5(tokenizer.vocab_size, seed)
    generator = torch.Generator().manual_seed(seed)
    histories = [
        [tokenizer.item_ids[i] for i in torch.randint(tokenizer.num_items, (n,), generator=generator)] for n in (5, 2)
    ]
    constraint = dict(forbid_repeats=True, exclude_items=histories if exclude_history else None)
    fast = _generate(model, tokenizer, histories, num_items, beams, True, **constraint)
    reference = _generate(model, tokenizer, histories, num_items, beams, False, **constraint)
    assert torch.equal(fast.sequences, reference.sequences)
    if beams > 1:
        assert torch.allclose(fast.sequences_scores, reference.sequences_scores)
    catalogue = set(tokenizer.item_ids)
    for row, sequence in enumerate(fast.sequences):
        session = tokenizer.decode_session(sequence, prefix_length=1)
        assert len(session) == num_items
        assert all(item in catalogue for item in session)  # 100% valid: no None, no junk
        assert len(set(session)) == num_items  # no repeats
        if exclude_history:
            assert not set(session) & set(histories[row // beams])
    if beams > 1:  # beams return distinct sessions
        assert len({tuple(s.tolist()) for s in fast.sequences[:beams]}) == beams


def test_more_beams_than_reachable_items_is_flagged_not_junk():
    tokenizer = semantic_id_tokenizer([str(i) for i in range(6)], num_levels=2, codebook_size=2, seed=1)
    model = tiny_t5(tokenizer.vocab_size)
    histories = [["0", "1"]]  # 4 items reachable once the history is excluded
    out = _generate(model, tokenizer, histories, 1, 8, True, exclude_items=histories)
    sessions = [tokenizer.decode_session(s, prefix_length=1) for s in out.sequences]
    scores = out.sequences_scores.tolist()
    valid = [s for s, score in zip(sessions, scores) if score > -1e8]
    assert sorted(s[0] for s in valid) == ["2", "3", "4", "5"]  # each reachable item once
    # generate pads the beam with copies scored about -1e9 .. -1e8: callers drop rows by score
    assert all(score <= -1e8 for score in scores[len(valid) :])
    assert all(s in valid for s in sessions[len(valid) :])


def test_processor_rejects_wrong_exclusion_batch(small_tokenizer):
    exclude = [["item0"], ["item1"]]
    processor = small_tokenizer.session_logits_processor(1, exclude_items=exclude, num_beams=2)
    # 4 users x 2 beams: 8 rows divide evenly by 2 exclusion rows, which used to spread
    # user 0's exclusions over users 0-1 and user 1's over users 2-3 without a word.
    with pytest.raises(ValueError, match="one exclusion list per input row"):
        processor(torch.tensor([[PAD, BOS]] * 8), torch.zeros(8, small_tokenizer.vocab_size))
    assert processor(torch.tensor([[PAD, BOS]] * 4), torch.zeros(4, small_tokenizer.vocab_size)).shape == (
        4,
        small_tokenizer.vocab_size,
    )
    with pytest.raises(ValueError, match="num_beams=None: excluded_items needs num_beams"):
        small_tokenizer.session_logits_processor(1, exclude_items=exclude)
    reference = small_tokenizer.prefix_allowed_tokens_fn(1, exclude_items=exclude)
    with pytest.raises(ValueError, match="excluded_items has 2 rows but generate\\(\\) asks for input 2"):
        reference(2, torch.tensor([PAD, BOS]))


def test_forced_positions(small_tokenizer):
    tokenizer = small_tokenizer
    processor = tokenizer.session_logits_processor(1)
    period = tokenizer.num_levels + 1
    code = tokenizer.item_tokens[0].tolist()
    scores = torch.zeros(1, tokenizer.vocab_size)
    assert processor(torch.tensor([[PAD]]), scores)[0].argmax() == BOS
    after_item = processor(torch.tensor([[PAD, BOS] + code]), scores)[0]
    assert after_item[EOS] == 0 and torch.isinf(after_item).sum() == tokenizer.vocab_size - 1
    after_eos = processor(torch.tensor([[PAD, BOS] + code + [EOS]]), scores)[0]
    assert after_eos[PAD] == 0 and math.isinf(after_eos[EOS])
    assert len(code) + 1 == period


def test_item_both_in_history_and_generated_is_counted_once():
    # Items A=(3,5), B=(3,6), C=(4,5). A is in the history and was also generated as the session's first item:
    # counting it twice would make the subtree under token 3 look exhausted although B is still valid.
    from tokenization_semantic_id import SessionConstrainedLogitsProcessor, SessionPrefixAllowedTokensFn

    tokens = torch.tensor([[3, 5], [3, 6], [4, 5]])
    kwargs = dict(
        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, num_items=2, forbid_repeats=True, excluded_items=[[0]]
    )
    fast = SessionConstrainedLogitsProcessor(SemanticIDTrie(tokens, vocab_size=7), num_beams=1, **kwargs)
    reference = SessionPrefixAllowedTokensFn(tokens, **kwargs)
    second_item_start = torch.tensor([[PAD, BOS, 3, 5, BOS]])
    allowed = (fast.allowed_mask(second_item_start)[0] == 0).nonzero().flatten().tolist()
    assert allowed == [3, 4] == reference(0, second_item_start[0])
    assert allowed == oracle_allowed_tokens(tokens, second_item_start[0].tolist(), 2, excluded=[0])
    below_3 = torch.tensor([[PAD, BOS, 3, 5, BOS, 3]])
    assert (fast.allowed_mask(below_3)[0] == 0).nonzero().flatten().tolist() == [6]


def test_empty_trie_has_no_children():
    trie = SemanticIDTrie(torch.zeros((0, 2), dtype=torch.long), vocab_size=5)
    assert trie.child(torch.tensor([0, 0]), torch.tensor([3, 4])).tolist() == [-1, -1]
    assert trie.walk(torch.tensor([[3, 4]])).tolist() == [-1]
