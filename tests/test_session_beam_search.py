"""Native session beam search: the same sessions and scores as generate() with the trie processor.

The references are ``model.generate(..., logits_processor=[SessionConstrainedLogitsProcessor], renormalize_logits=True,
length_penalty=0.0)`` and, for catalogues small enough that the beam holds every session, a brute-force scoring of
every valid session by one teacher-forced forward pass (:func:`_exhaustive_scores`).
"""

import itertools
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modeling_onerec.generation_onerec import (
    SessionConstraint,
    SessionSearchOutput,
    constrained_step,
    drop_duplicate_items,
    session_beam_search,
)
from tests.conftest import clustered_embeddings, constrained_generate, tiny_onerec, tiny_t5
from tokenization_semantic_id import (
    ResidualKMeansConfig,
    SemanticIDTrie,
    SessionPrefixAllowedTokensFn,
    build_semantic_ids,
)

BOS, EOS, PAD = 2, 1, 0
SPECIAL = dict(bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)


def _search(model, tokenizer, inputs, num_items, beams, forbid_repeats=True, exclude=None, **kwargs):
    return session_beam_search(
        model,
        inputs["input_ids"],
        inputs["attention_mask"],
        tokenizer.trie,
        num_beams=beams,
        num_items=num_items,
        forbid_repeats=forbid_repeats,
        excluded_items=tokenizer._excluded_indices(exclude),
        level_offsets=tokenizer.level_offsets,
        **SPECIAL,
        **kwargs,
    )


def _assert_same_as_generate(out: SessionSearchOutput, reference, batch: int, beams: int) -> None:
    sequences = reference.sequences.view(batch, beams, -1)
    scores = reference.sequences_scores.view(batch, beams)
    assert out.sequences.shape == sequences.shape
    for row in range(batch):
        real = scores[row] > -1e8  # generate pads missing beams with copies scored about -1e9
        assert int(out.num_valid[row]) == int(real.sum())
        n = int(real.sum())
        ours = {tuple(s): float(v) for s, v in zip(out.sequences[row, :n].tolist(), out.scores[row, :n])}
        theirs = {tuple(s): float(v) for s, v in zip(sequences[row, :n].tolist(), scores[row, :n])}
        assert ours.keys() == theirs.keys()
        for key, value in theirs.items():
            assert ours[key] == pytest.approx(value, abs=1e-4)
        # the ranking: best first, and the same order wherever scores are not (near) ties
        assert torch.allclose(out.scores[row, :n], scores[row, :n], atol=1e-4)
        assert torch.all(out.scores[row, :n][:-1] >= out.scores[row, :n][1:])
        for rank in range(n):
            if all(abs(float(scores[row, rank] - scores[row, other])) > 1e-4 for other in range(n) if other != rank):
                assert out.sequences[row, rank].tolist() == sequences[row, rank].tolist()
        assert not out.valid[row, n:].any() and (out.item_indices[row, n:] == -1).all()
        assert torch.isinf(out.scores[row, n:]).all()


def _level_slices(tokenizer):
    """``[(first, end)]``: each code level's token ids."""
    offsets = list(tokenizer.level_offsets)
    return list(zip(offsets, offsets[1:] + [tokenizer.vocab_size]))


def _histories(tokenizer, seed, lengths):
    generator = torch.Generator().manual_seed(seed)
    return [
        [tokenizer.item_ids[i] for i in torch.randint(tokenizer.num_items, (n,), generator=generator)] for n in lengths
    ]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("num_items,beams", [(1, 4), (1, 16), (3, 4), (3, 8), (3, 16)])
@pytest.mark.parametrize("forbid_repeats,exclude_history", [(True, True), (True, False), (False, False), (False, True)])
@pytest.mark.parametrize("renormalize", [False, True])
def test_equals_generate(small_tokenizer, seed, num_items, beams, forbid_repeats, exclude_history, renormalize):
    tokenizer = small_tokenizer
    model = tiny_t5(tokenizer.vocab_size, seed)
    histories = _histories(tokenizer, seed, (5, 2, 30))
    inputs = tokenizer.batch_encode_histories(histories)
    exclude = histories if exclude_history else None
    out = _search(model, tokenizer, inputs, num_items, beams, forbid_repeats, exclude, renormalize_logits=renormalize)
    reference = constrained_generate(
        model, tokenizer, inputs, num_items, beams, forbid_repeats, exclude, renormalize_logits=renormalize
    )
    _assert_same_as_generate(out, reference, 3, beams)
    assert (out.num_valid == beams).all()
    # item_indices / item_scores agree with the sequences and the session score
    period = tokenizer.num_levels + 1
    codes = out.sequences[:, :, 1:-1].reshape(3, beams, num_items, period)[..., 1:]
    leaves = tokenizer.trie.walk(codes.reshape(-1, tokenizer.num_levels))
    assert torch.equal(tokenizer.trie.leaf_item[leaves].view(3, beams, num_items), out.item_indices)
    assert torch.allclose(out.item_scores.sum(-1), out.scores, atol=1e-5)


@pytest.mark.parametrize("renormalize", [False, True])
def test_equals_generate_with_recency_embeddings_cross_attention_bias_and_newest_item_input(
    small_tokenizer, renormalize
):
    # The three recency options read the encoder's padding mask in the encoder and at every decoder step; the native
    # search (its own encoder pass, the mask reordered with the beams) must still match generate() exactly.
    tokenizer = small_tokenizer
    model = tiny_onerec(
        tokenizer,
        seed=6,
        history_recency_embeddings=True,
        cross_attention_recency_bias=True,
        newest_item_decoder_input=True,
        max_history_items=8,
    ).eval()
    with torch.no_grad():
        model.encoder.recency_embeddings.embedding.weight.normal_()
        model.decoder.cross_attention_recency.bias.weight.normal_(std=2.0)
        model.decoder.newest_item_input.projection.weight.normal_(std=0.5)
    histories = _histories(tokenizer, 6, (5, 2, 12))
    inputs = tokenizer.batch_encode_histories(histories, max_items=8)
    out = _search(model, tokenizer, inputs, 2, 8, True, histories, renormalize_logits=renormalize)
    reference = constrained_generate(model, tokenizer, inputs, 2, 8, True, histories, renormalize_logits=renormalize)
    _assert_same_as_generate(out, reference, 3, 8)


@pytest.mark.parametrize("seed", [3, 4])
@pytest.mark.parametrize("renormalize", [False, True])
def test_heavy_exclusions_prune_subtrees_like_generate(small_tokenizer, seed, renormalize):
    # 150 of 240 items excluded per row: whole subtrees are exhausted at every level.
    tokenizer = small_tokenizer
    model = tiny_t5(tokenizer.vocab_size, seed)
    histories = _histories(tokenizer, seed, (150, 150))
    inputs = tokenizer.batch_encode_histories(histories, max_items=4)  # short encoder input, long exclusion list
    out = _search(model, tokenizer, inputs, 3, 12, True, histories, renormalize_logits=renormalize)
    reference = constrained_generate(model, tokenizer, inputs, 3, 12, True, histories, renormalize_logits=renormalize)
    _assert_same_as_generate(out, reference, 2, 12)
    for row, history in enumerate(histories):
        excluded = {tokenizer.item_index(item) for item in history}
        assert not set(out.item_indices[row].flatten().tolist()) & excluded


def test_length_penalty_and_unfused_feeding_match_generate(small_tokenizer):
    tokenizer = small_tokenizer
    model = tiny_t5(tokenizer.vocab_size, 7)
    histories = _histories(tokenizer, 7, (4, 9))
    inputs = tokenizer.batch_encode_histories(histories)
    reference = constrained_generate(model, tokenizer, inputs, 2, 8, length_penalty=1.0)  # generate's default penalty
    _assert_same_as_generate(_search(model, tokenizer, inputs, 2, 8, length_penalty=1.0), reference, 2, 8)
    fused = _search(model, tokenizer, inputs, 2, 8)
    unfused = _search(model, tokenizer, inputs, 2, 8, fuse_forced_tokens=False)
    assert torch.equal(fused.sequences, unfused.sequences)
    assert torch.allclose(fused.scores, unfused.scores, atol=1e-5)


def test_deeper_unscaled_model_matches_generate(small_tokenizer):
    # several decoder layers (the cache of every layer is reordered), no output scaling (tie_word_embeddings=False)
    tokenizer = small_tokenizer
    model = tiny_t5(tokenizer.vocab_size, 11, num_layers=3, num_decoder_layers=2, tie_word_embeddings=False)
    assert not model.config.scale_decoder_outputs
    histories = _histories(tokenizer, 11, (6, 3))
    inputs = tokenizer.batch_encode_histories(histories)
    out = _search(model, tokenizer, inputs, 3, 6, True, histories)
    _assert_same_as_generate(out, constrained_generate(model, tokenizer, inputs, 3, 6, True, histories), 2, 6)


def test_decoder_deeper_than_encoder(six_item_tokenizer):
    # transformers 5.24 generate() sizes its cache from num_layers (the encoder's) and fails with IndexError when
    # num_decoder_layers > num_layers; the native search grows its cache lazily. Checked against brute force.
    tokenizer = six_item_tokenizer
    model = tiny_t5(tokenizer.vocab_size, 2, num_layers=1, num_decoder_layers=3)
    inputs = tokenizer.batch_encode_histories([["2", "3"]])
    out = _search(model, tokenizer, inputs, 2, 32)
    slices = _level_slices(tokenizer)
    exhaustive = _exhaustive_scores(model, tokenizer.item_tokens, inputs["input_ids"], 2, True, [], slices)
    assert int(out.num_valid[0]) == len(exhaustive) == 30
    for sequence, score in zip(out.sequences[0].tolist(), out.scores[0].tolist()):
        if score > -math.inf:
            assert score == pytest.approx(exhaustive[tuple(sequence)], abs=1e-4)


def test_encoder_once_decoder_per_code_and_no_full_vocabulary_head(small_tokenizer):
    tokenizer = small_tokenizer
    model = tiny_t5(tokenizer.vocab_size, 0)
    calls = {"encoder": 0, "decoder": 0}
    model.get_encoder().register_forward_hook(lambda *_: calls.__setitem__("encoder", calls["encoder"] + 1))
    model.decoder.register_forward_hook(lambda *_: calls.__setitem__("decoder", calls["decoder"] + 1))

    def full_head(*_):
        raise AssertionError("the full-vocabulary lm_head must not be evaluated")

    model.lm_head.register_forward_pre_hook(full_head)
    inputs = tokenizer.batch_encode_histories(_histories(tokenizer, 0, (3, 5)))
    out = _search(model, tokenizer, inputs, 3, 8)
    assert calls == {"encoder": 1, "decoder": 3 * tokenizer.num_levels}  # BOS fused with the token before it
    assert out.sequences.shape == (2, 8, 2 + 3 * (tokenizer.num_levels + 1))
    assert out.sequences.dtype == out.item_indices.dtype == torch.long and out.scores.dtype == torch.float32
    assert out.item_indices.shape == out.item_scores.shape == (2, 8, 3) and out.num_valid.shape == (2,)


def test_onerec_model_matches_generate(small_tokenizer):
    # the interface the search relies on, on the real model class (MoE decoder, deeper than the encoder)
    from modeling_onerec import OneRecConfig, OneRecForConditionalGeneration

    tokenizer = small_tokenizer
    torch.manual_seed(0)
    config = OneRecConfig.from_preset(
        "tiny", codebook_sizes=tokenizer.codebook_sizes, dropout_rate=0.0, num_decoder_layers=2
    )
    model = OneRecForConditionalGeneration(config).eval()
    histories = _histories(tokenizer, 1, (5, 9))
    inputs = tokenizer.batch_encode_histories(histories)
    out = _search(model, tokenizer, inputs, 2, 8, True, histories)
    _assert_same_as_generate(out, constrained_generate(model, tokenizer, inputs, 2, 8, True, histories), 2, 8)


# ---------------------------------------------------------------------------------------------- tiny catalogues
@pytest.fixture(scope="module")
def six_item_tokenizer():
    return build_semantic_ids(
        [str(i) for i in range(6)],
        clustered_embeddings(6, seed=1),
        ResidualKMeansConfig(num_levels=2, codebook_size=2),
        progress=False,
    )


def _exhaustive_scores(model, item_tokens, input_ids, num_items, forbid_repeats, excluded, level_slices=None):
    """Plain reference: every valid session of one row, scored by a teacher-forced forward pass with each code
    token's probability renormalised over the tokens the reference prefix function allows, or, given
    ``level_slices`` (``[(first, end)]`` token ids per level), its log-softmax over its level's slice (BOS/EOS: 0)."""
    allowed_fn = SessionPrefixAllowedTokensFn(
        item_tokens, **SPECIAL, num_items=num_items, forbid_repeats=forbid_repeats, excluded_items=[excluded]
    )
    codes = [tuple(row) for row in torch.as_tensor(item_tokens).tolist()]
    candidates = [i for i in range(len(codes)) if i not in set(excluded)]
    sessions = (
        itertools.permutations(candidates, num_items)
        if forbid_repeats
        else itertools.product(candidates, repeat=num_items)
    )
    result = {}
    for session in sessions:
        sequence = [PAD] + [t for item in session for t in (BOS,) + codes[item]] + [EOS]
        decoder_input = torch.tensor([sequence[:-1]])
        with torch.no_grad():
            logits = model(input_ids=input_ids, decoder_input_ids=decoder_input).logits[0].float()
        score = 0.0
        for position in range(1, len(sequence)):
            allowed = allowed_fn(0, torch.tensor(sequence[:position]))
            assert sequence[position] in allowed
            within_item = (position - 1) % (len(codes[0]) + 1)
            if level_slices is None:
                log_probs = torch.log_softmax(logits[position - 1, allowed], dim=-1)
                score += float(log_probs[allowed.index(sequence[position])])
            elif within_item > 0:  # a code of level within_item - 1; BOS and EOS cost nothing
                first, end = level_slices[within_item - 1]
                log_probs = torch.log_softmax(logits[position - 1, first:end], dim=-1)
                score += float(log_probs[sequence[position] - first])
        result[tuple(sequence)] = score
    return result


@pytest.mark.parametrize(
    "num_items,forbid_repeats,history,beams",
    [
        (1, True, ["0", "1"], 8),  # 4 sessions < 8 beams
        (2, True, ["0", "1"], 16),  # 4 * 3 = 12 ordered sessions < 16 beams
        (2, False, ["5"], 32),  # 5 * 5 = 25 sessions
        (3, True, [], 4),  # 120 sessions > 4 beams: compared with generate only
    ],
)
@pytest.mark.parametrize("renormalize", [False, True])
def test_tiny_catalogue_returns_only_real_sessions(
    six_item_tokenizer, num_items, forbid_repeats, history, beams, renormalize
):
    tokenizer = six_item_tokenizer
    model = tiny_t5(tokenizer.vocab_size, 5)
    inputs = tokenizer.batch_encode_histories([["2", "3"]])
    exclude = [history]
    out = _search(model, tokenizer, inputs, num_items, beams, forbid_repeats, exclude, renormalize_logits=renormalize)
    reference = constrained_generate(
        model, tokenizer, inputs, num_items, beams, forbid_repeats, exclude, renormalize_logits=renormalize
    )
    _assert_same_as_generate(out, reference, 1, beams)
    available = tokenizer.num_items - len(history)
    total = math.perm(available, num_items) if forbid_repeats else available**num_items
    assert int(out.num_valid[0]) == min(beams, total)
    if total <= beams:  # the beam holds every session: compare with brute force
        excluded = [tokenizer.item_index(item) for item in history]
        slices = None if renormalize else _level_slices(tokenizer)
        exhaustive = _exhaustive_scores(
            model, tokenizer.item_tokens, inputs["input_ids"], num_items, forbid_repeats, excluded, slices
        )
        n = int(out.num_valid[0])
        ours = {tuple(s): float(v) for s, v in zip(out.sequences[0, :n].tolist(), out.scores[0, :n])}
        assert ours.keys() == exhaustive.keys()
        for key, value in exhaustive.items():
            assert ours[key] == pytest.approx(value, abs=1e-4)


def test_no_valid_session_at_all(six_item_tokenizer):
    tokenizer = six_item_tokenizer
    model = tiny_t5(tokenizer.vocab_size, 0)
    inputs = tokenizer.batch_encode_histories([["1"], ["2"]])
    everything = [tokenizer.item_ids, []]  # row 0: every item excluded; row 1: nothing excluded
    out = _search(model, tokenizer, inputs, 1, 4, exclude=everything)
    assert out.num_valid.tolist() == [0, 4]
    assert (out.item_indices[0] == -1).all() and torch.isinf(out.scores[0]).all() and (out.sequences[0] == PAD).all()
    # more items per session than the catalogue holds, with forbid_repeats: no session exists anywhere
    out = _search(model, tokenizer, inputs, 7, 4)
    assert out.num_valid.tolist() == [0, 0] and not out.valid.any() and (out.item_indices == -1).all()
    # ... but repeats allowed: 6 ** 7 sessions
    assert _search(model, tokenizer, inputs, 7, 4, forbid_repeats=False).num_valid.tolist() == [4, 4]


@st.composite
def _catalogues(draw):
    num_levels = draw(st.integers(1, 3))
    size = draw(st.integers(2, 3))
    all_codes = list(itertools.product(range(size), repeat=num_levels))
    chosen = draw(st.lists(st.sampled_from(all_codes), min_size=1, max_size=min(len(all_codes), 12), unique=True))
    codes = torch.tensor(chosen, dtype=torch.long)
    tokens = codes + 3 + size * torch.arange(num_levels)
    num_items = len(chosen)
    excluded = [draw(st.lists(st.integers(0, num_items - 1), max_size=num_items)) for _ in range(2)]
    return tokens, 3 + size * num_levels, excluded


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    catalogue=_catalogues(),
    seed=st.integers(0, 10_000),
    num_items=st.integers(1, 3),
    beams=st.integers(1, 10),
    forbid=st.booleans(),
    use_exclusions=st.booleans(),
)
def test_every_item_is_real_distinct_and_allowed(catalogue, seed, num_items, beams, forbid, use_exclusions):
    tokens, vocab_size, excluded = catalogue
    trie = SemanticIDTrie(tokens, vocab_size)
    model = tiny_t5(vocab_size, seed)
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, vocab_size, (2, 4), generator=generator)
    excluded = excluded if use_exclusions else [[], []]
    out = session_beam_search(
        model,
        input_ids,
        None,
        trie,
        num_beams=beams,
        num_items=num_items,
        **SPECIAL,
        forbid_repeats=forbid,
        excluded_items=excluded if use_exclusions else None,
    )
    num_levels = tokens.shape[1]
    for row in range(2):
        available = trie.num_items - len(set(excluded[row]))
        total = math.perm(available, num_items) if forbid else available**num_items
        n = int(out.num_valid[row])
        assert n == min(beams, total)  # beam search with subtree pruning never loses a completable beam
        assert out.valid[row].tolist() == [True] * n + [False] * (beams - n)
        sessions = out.item_indices[row, :n].tolist()
        assert len(set(map(tuple, sessions))) == n  # distinct sessions
        for session, sequence in zip(sessions, out.sequences[row, :n]):
            assert all(0 <= item < trie.num_items for item in session)  # real items, no -1, no junk
            assert not set(session) & set(excluded[row])
            if forbid:
                assert len(set(session)) == num_items
            expected = [PAD] + [t for item in session for t in [BOS] + tokens[item].tolist()] + [EOS]
            assert sequence.tolist() == expected
        assert torch.isfinite(out.scores[row, :n]).all() and torch.isinf(out.scores[row, n:]).all()
        assert (out.scores[row, :n] <= 1e-5).all()
        assert (out.sequences[row, n:] == PAD).all() and (out.item_indices[row, n:] == -1).all()
        assert out.sequences.shape[-1] == 2 + num_items * (num_levels + 1)


# ---------------------------------------------------------------------------------------------- argument checks
def test_bad_arguments_raise_clear_errors(small_tokenizer):
    tokenizer = small_tokenizer
    model = tiny_t5(tokenizer.vocab_size, 0)
    inputs = tokenizer.batch_encode_histories(_histories(tokenizer, 0, (3, 5)))
    args = (model, inputs["input_ids"], inputs["attention_mask"], tokenizer.trie)
    with pytest.raises(ValueError, match="num_beams"):
        session_beam_search(*args, num_beams=0, num_items=1, **SPECIAL)
    with pytest.raises(ValueError, match="num_items"):
        session_beam_search(*args, num_beams=2, num_items=0, **SPECIAL)
    with pytest.raises(TypeError, match="renormalize_logits must be True or False, got 'false'"):
        session_beam_search(*args, num_beams=2, num_items=1, renormalize_logits="false", **SPECIAL)
    with pytest.raises(ValueError, match="one list of item indices per input row"):
        session_beam_search(*args, num_beams=2, num_items=1, excluded_items=[[1], [2], [3]], **SPECIAL)
    with pytest.raises(ValueError, match="outside"):
        session_beam_search(*args, num_beams=2, num_items=1, excluded_items=[[1], [10_000]], **SPECIAL)
    with pytest.raises(ValueError, match="attention_mask"):
        session_beam_search(
            model,
            inputs["input_ids"],
            inputs["attention_mask"][:, :1],
            tokenizer.trie,
            num_beams=2,
            num_items=1,
            **SPECIAL,
        )
    with pytest.raises(ValueError, match="lm_head"):
        session_beam_search(tiny_t5(tokenizer.vocab_size - 5), *args[1:], num_beams=2, num_items=1, **SPECIAL)
    with pytest.raises(ValueError, match="level_offsets"):
        session_beam_search(*args, num_beams=2, num_items=1, level_offsets=[3, 4, 5], **SPECIAL)
    with pytest.raises(ValueError, match="level_offsets has"):
        session_beam_search(*args, num_beams=2, num_items=1, level_offsets=[3], **SPECIAL)
    with pytest.raises(ValueError, match="SemanticIDTrie-like"):
        session_beam_search(*args[:3], object(), num_beams=2, num_items=1, **SPECIAL)
    with pytest.raises(ValueError, match="eos_token_id"):
        session_beam_search(*args, num_beams=2, num_items=1, bos_token_id=BOS, eos_token_id=10_000, pad_token_id=PAD)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_gpu_equals_cpu(small_tokenizer):
    tokenizer = small_tokenizer
    model = tiny_t5(tokenizer.vocab_size, 3)
    histories = _histories(tokenizer, 3, (40, 7, 2))
    inputs = tokenizer.batch_encode_histories(histories)
    cpu = _search(model, tokenizer, inputs, 3, 16, True, histories)
    tokenizer.trie.to("cuda")
    try:
        gpu = _search(model.cuda(), tokenizer, inputs.to("cuda"), 3, 16, True, histories)
    finally:
        tokenizer.trie.to("cpu")
    assert torch.equal(gpu.sequences.cpu(), cpu.sequences)
    assert torch.allclose(gpu.scores.cpu(), cpu.scores, atol=1e-4)


def test_constrained_step_compiles_whole_and_matches_eager(small_tokenizer):
    """The per-level step has fixed shapes and reads nothing back to the host: torch.compile captures it as one graph
    (fullgraph=True raises on any graph break, e.g. a .item(), nonzero or a data-dependent shape) and computes the
    same candidates. The eager backend checks the capture without needing a C++ compiler."""
    trie = small_tokenizer.trie
    level = 1
    num_catalogue = len(small_tokenizer.item_ids)
    generator = torch.Generator().manual_seed(0)
    batch, width, num_beams = 3, 4, 5
    nodes = trie.item_path[torch.randint(num_catalogue, (batch, width), generator=generator), level]
    nodes[0, -1] = -1  # a dead beam
    beam_scores = -torch.rand(batch, width, generator=generator)
    beam_scores[0, -1] = -math.inf
    lo = small_tokenizer.level_offsets[level]
    level_logits = torch.randn(batch * width, small_tokenizer.level_offsets[level + 1] - lo, generator=generator)
    excluded = drop_duplicate_items(torch.randint(num_catalogue, (batch * width, 6), generator=generator))
    constraint = SessionConstraint(trie, num_items=3, **SPECIAL)
    arguments = (level_logits, nodes, beam_scores, excluded, constraint, level, lo, num_beams)

    eager = constrained_step(*arguments)
    compiled = torch.compile(constrained_step, backend="eager", fullgraph=True)(*arguments)
    for name, expected, got in zip(eager._fields, eager, compiled):
        assert torch.equal(expected, got), name
    assert eager.scores.shape == (batch, num_beams)
    assert bool((eager.child >= 0).any())
    # every chosen child is a child of its beam's node, and not an exhausted subtree
    chosen = torch.isfinite(eager.scores)
    parents = nodes.gather(1, eager.beam)[chosen]
    children = eager.child[chosen]
    assert bool(((children > trie.indptr[parents]) & (children <= trie.indptr[parents + 1])).all())
