"""OneRec end to end on the tokenizer: generate() with the session constraint, recommend(), bad input."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modeling_onerec import OneRecConfig
from tests.conftest import clustered_embeddings, constrained_generate, semantic_id_tokenizer, tiny_onerec
from tokenization_semantic_id import SemanticIDTokenizer, UnknownItemError


@pytest.fixture(scope="module")
def catalogue():
    tokenizer = semantic_id_tokenizer([f"sku{i}" for i in range(80)], num_levels=3, codebook_size=4)
    return tokenizer, tiny_onerec(tokenizer, seed=0, session_length=3).eval()


def _generate(model, tokenizer, histories, num_items, beams):
    inputs = tokenizer.batch_encode_histories(histories)
    return constrained_generate(model, tokenizer, inputs, num_items, beams, exclude=histories)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 1000), num_items=st.integers(1, 3), beams=st.sampled_from([2, 5, 8]))
def test_every_generated_item_is_a_real_unexcluded_item(catalogue, seed, num_items, beams):
    tokenizer, model = catalogue
    generator = torch.Generator().manual_seed(seed)
    histories = [
        [tokenizer.item_ids[i] for i in torch.randint(80, (int(n),), generator=generator)]
        for n in torch.randint(1, 30, (2,), generator=generator)
    ]
    out = _generate(model, tokenizer, histories, num_items, beams)
    for row, sequence in enumerate(out.sequences):
        session = tokenizer.decode_session(sequence, prefix_length=1)
        assert len(session) == num_items and None not in session
        assert len(set(session)) == num_items
        assert not set(session) & set(histories[row // beams])
    scores = out.sequences_scores.view(len(histories), beams)
    assert torch.isfinite(scores).all() and (scores[:, :-1] >= scores[:, 1:] - 1e-6).all()


def test_generate_is_transformers_own_and_recommend_drops_filler_beams(catalogue):
    # generate() is transformers' own after two input checks (the same sequences and scores as GenerationMixin's):
    # when the constraint leaves fewer sessions than beams, transformers fills the beam with rows scored about -1e9;
    # recommend() / session_beam_search report only the real sessions.
    from transformers import GenerationMixin

    tokenizer, model = catalogue
    histories = [tokenizer.item_ids[:77]]  # 3 items left -> exactly 3 * 2 = 6 ordered 2-item sessions
    out = _generate(model, tokenizer, histories, num_items=2, beams=10)
    original = type(model).generate
    try:
        type(model).generate = GenerationMixin.generate  # transformers' generate, without the checks
        plain = _generate(model, tokenizer, histories, num_items=2, beams=10)
    finally:
        type(model).generate = original
    assert torch.equal(out.sequences, plain.sequences) and torch.equal(out.sequences_scores, plain.sequences_scores)
    scores = out.sequences_scores
    assert torch.isfinite(scores[:6]).all() and (scores[:6] > -1e5).all() and (scores[6:] < -1e5).all()
    sessions = [tokenizer.decode_session(row, prefix_length=1) for row in out.sequences[:6]]
    assert all(len(s) == 2 and set(s) <= set(tokenizer.item_ids[77:]) for s in sessions)
    assert len({tuple(s) for s in sessions}) == 6
    found = model.recommend(tokenizer, histories, num_sessions=10, session_length=2)[0]
    assert sorted(tuple(s.items) for s in found) == sorted(tuple(s) for s in sessions)
    assert [s.score for s in found] == pytest.approx(scores[:6].tolist(), abs=1e-4)


def test_generate_honours_a_passed_generation_config(catalogue):
    from transformers import GenerationConfig

    tokenizer, model = catalogue
    inputs = tokenizer.batch_encode_histories([tokenizer.item_ids[:4]])
    config = GenerationConfig(
        max_new_tokens=3,
        num_beams=2,
        num_return_sequences=2,
        do_sample=False,
        decoder_start_token_id=model.config.decoder_start_token_id,
    )
    out = model.generate(**inputs, generation_config=config)
    assert out.shape == (2, 1 + 3)


def test_recommend_returns_ranked_real_sessions(catalogue):
    tokenizer, model = catalogue
    histories = [["sku1", "sku2", "sku3"], ["sku40"]]
    recommendations = model.recommend(tokenizer, histories, num_sessions=4, num_beams=8)
    assert len(recommendations) == 2
    for history, sessions in zip(histories, recommendations):
        assert len(sessions) == 4
        assert [s.score for s in sessions] == sorted((s.score for s in sessions), reverse=True)
        for session in sessions:
            assert len(session.items) == 3 and len(set(session.items)) == 3
            assert set(session.items) <= set(tokenizer.item_ids) and not set(session.items) & set(history)
            assert math.isclose(sum(session.item_scores), session.score, rel_tol=1e-4, abs_tol=1e-4)
    # The best recommended session is generate()'s best session (same model, same constraint, same scores).
    out = _generate(model, tokenizer, histories[:1], num_items=3, beams=8)
    assert tokenizer.decode_session(out.sequences[0], prefix_length=1) == recommendations[0][0].items
    assert math.isclose(out.sequences_scores[0].item(), recommendations[0][0].score, abs_tol=1e-4)


def test_recommend_returns_only_valid_sessions_when_catalogue_runs_out(catalogue):
    tokenizer, model = catalogue
    recommendations = model.recommend(tokenizer, [tokenizer.item_ids[:78]], num_sessions=10, session_length=1)
    assert sorted(s.items[0] for s in recommendations[0]) == sorted(tokenizer.item_ids[78:])


def test_recommend_truncates_long_histories_to_the_configured_maximum(catalogue):
    tokenizer, model = catalogue
    long_history = [tokenizer.item_ids[i % 80] for i in range(500)]
    newest = long_history[-model.config.max_history_items :]
    first = model.recommend(tokenizer, [long_history], num_sessions=2, exclude_history=False)
    second = model.recommend(tokenizer, [newest], num_sessions=2, exclude_history=False)
    assert [s.items for s in first[0]] == [s.items for s in second[0]]


def test_recommend_bad_input_is_a_clear_error(catalogue):
    tokenizer, model = catalogue
    with pytest.raises(ValueError, match="History 1 is empty"):
        model.recommend(tokenizer, [["sku1"], []])
    with pytest.raises(UnknownItemError, match="History 0: Unknown item id 'nope'"):
        model.recommend(tokenizer, [["nope"]])
    with pytest.raises(TypeError, match="list of item-id lists"):
        model.recommend(tokenizer, "sku1")
    with pytest.raises(ValueError, match="num_sessions <= num_beams"):
        model.recommend(tokenizer, [["sku1"]], num_sessions=5, num_beams=2)
    other = semantic_id_tokenizer([f"x{i}" for i in range(40)], num_levels=2, codebook_size=4)
    with pytest.raises(ValueError, match="does not match this OneRec model"):
        model.recommend(other, [["x1"]])


def test_out_of_vocabulary_token_ids_are_a_clear_error(catalogue):
    tokenizer, model = catalogue
    with pytest.raises(ValueError, match=r"input_ids holds token ids outside this model's vocabulary .*\[999\]"):
        model(input_ids=torch.tensor([[3, 999]]), labels=torch.tensor([[3]]))
    with pytest.raises(ValueError, match="labels holds token ids"):
        model(input_ids=torch.tensor([[3]]), labels=torch.tensor([[-5]]))


def test_recommend_keeps_the_callers_user_order_when_batching_by_length(catalogue):
    # Users are batched by history length; with distinct lengths both input orders give the same batches, so each
    # user's sessions must match exactly, and the one-user call agrees with the batched one.
    tokenizer, model = catalogue
    histories = [[f"sku{(5 * user + j) % 80}" for j in range(length)] for user, length in enumerate((6, 1, 4, 2, 8))]
    forward = model.recommend(tokenizer, histories, num_sessions=2, num_beams=4, batch_size=2)
    backward = model.recommend(tokenizer, histories[::-1], num_sessions=2, num_beams=4, batch_size=2)[::-1]
    assert [[s.items for s in user] for user in forward] == [[s.items for s in user] for user in backward]
    assert all(not set(s.items) & set(h) for user, h in zip(forward, histories) for s in user)
    alone = model.recommend(tokenizer, histories[1:2], num_sessions=2, num_beams=4)
    assert [s.items for s in alone[0]] == [s.items for s in forward[1]]


def test_length_sorted_batches_is_a_shortest_first_partition():
    from modeling_onerec.generation_onerec import length_sorted_batches

    lengths = [5, 1, 3, 1, 9, 2, 3]
    histories = [["x"] * n for n in lengths]
    batches = length_sorted_batches(histories, 3)
    flat = [index for batch in batches for index in batch]
    assert sorted(flat) == list(range(7)) and [len(b) for b in batches] == [3, 3, 1]
    assert [lengths[i] for i in flat] == sorted(lengths) and flat[:2] == [1, 3]  # stable among equal lengths
    # Read up to 3 items: 5, 9 and both 3s tie at the cap and keep their input order (0, 2, 4, 6).
    assert [i for batch in length_sorted_batches(histories, 3, max_items=3) for i in batch] == [1, 3, 5, 0, 2, 4, 6]
    with pytest.raises(ValueError, match="batch_size"):
        length_sorted_batches(histories, 0)


def test_recommend_searches_in_eval_mode_and_restores_the_training_mode(catalogue):
    # A model handed over in training mode (dropout 0.5, router jitter) must give the eval-mode sessions.
    tokenizer, _ = catalogue
    model = tiny_onerec(tokenizer, seed=1, session_length=2, dropout_rate=0.5, router_jitter_noise=0.5).eval()
    histories = [tokenizer.item_ids[:5], tokenizer.item_ids[40:47]]
    expected = model.recommend(tokenizer, histories, num_sessions=4)
    model.train()
    for _ in range(2):
        found = model.recommend(tokenizer, histories, num_sessions=4)
        assert [[s.items for s in user] for user in found] == [[s.items for s in user] for user in expected]
        assert [s.score for user in found for s in user] == pytest.approx([s.score for user in expected for s in user])
    assert model.training and all(module.training for module in model.modules())


def test_max_history_items_has_one_source_of_truth(catalogue):
    from trainers.pretraining import SessionDataCollator

    tokenizer, _ = catalogue
    config = OneRecConfig.from_tokenizer(tokenizer, preset="tiny")
    assert config.max_history_items == tokenizer.max_history_items  # copied, not the config's own default
    assert OneRecConfig.from_tokenizer(tokenizer, preset="tiny", max_history_items=7).max_history_items == 7
    assert SessionDataCollator(tokenizer).max_history_items == tokenizer.max_history_items
    # generate() after batch_encode_histories and recommend() read the same newest items.
    history = [tokenizer.item_ids[i % 80] for i in range(3 * tokenizer.max_history_items)]
    encoded = tokenizer.batch_encode_histories([history])
    assert encoded["input_ids"].shape[1] == config.max_history_items * tokenizer.num_levels + 1
    with pytest.warns(UserWarning, match="tokenizer keeps .* history items but the model reads 7"):
        OneRecConfig.from_tokenizer(tokenizer, preset="tiny", max_history_items=7).check_tokenizer(tokenizer)


def test_recommend_rejects_non_integer_counts(catalogue):
    tokenizer, model = catalogue
    for kwargs, name in (
        ({"num_sessions": 2.5}, "num_sessions"),
        ({"num_beams": 4.0}, "num_beams"),
        ({"batch_size": "8"}, "batch_size"),
    ):
        with pytest.raises(TypeError, match=f"{name} must be an int"):
            model.recommend(tokenizer, [["sku1"]], **kwargs)
    with pytest.raises(ValueError, match="num_sessions <= num_beams"):
        model.recommend(tokenizer, [["sku1"]], num_sessions=4, num_beams=0)


def test_nan_weights_are_an_error_not_an_empty_list(catalogue):
    # Regression: a checkpoint with NaN weights gave [] for every user without a word.
    import copy

    tokenizer, model = catalogue
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.lm_head.weight[5, 0] = float("nan")
    with pytest.raises(ValueError, match="not finite"):
        broken.recommend(tokenizer, [["sku1", "sku2"]], num_sessions=2)


def test_session_beam_search_names_out_of_vocabulary_ids(catalogue):
    from modeling_onerec.generation_onerec import session_beam_search

    tokenizer, model = catalogue
    bad = torch.tensor([[3, 4, model.config.vocab_size + 7, 1]])
    with pytest.raises(ValueError, match=r"outside the model's vocabulary .*max \d+"):
        session_beam_search(
            model,
            bad,
            torch.ones_like(bad),
            tokenizer.trie,
            num_beams=2,
            num_items=1,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )


def test_a_tokenizer_with_the_same_layout_but_another_catalogue_is_refused(catalogue):
    # Regression: only the layout was compared, so another catalogue of the same size loaded silently and every
    # recommended item id was wrong.
    tokenizer, _ = catalogue
    config = OneRecConfig.from_tokenizer(tokenizer, preset="tiny")
    assert config.catalogue_size == 80 and config.catalogue_fingerprint == tokenizer.catalogue_fingerprint()
    renamed = semantic_id_tokenizer([f"other{i}" for i in range(80)], num_levels=3, codebook_size=4)
    assert renamed.level_offsets == tokenizer.level_offsets and renamed.vocab_size == tokenizer.vocab_size
    with pytest.raises(ValueError, match="another catalogue"):
        config.check_tokenizer(renamed)
    # Cold-start items appended later keep the trained catalogue's fingerprint.
    grown = SemanticIDTokenizer.from_pretrained(_saved(tokenizer))
    grown.add_items(["new-sku"], clustered_embeddings(81)[80:])
    config.check_tokenizer(grown)
    assert grown.catalogue_fingerprint() != tokenizer.catalogue_fingerprint()


def _saved(tokenizer):
    import tempfile

    directory = tempfile.mkdtemp()
    tokenizer.save_pretrained(directory)
    return directory


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=st.sampled_from(["num_sessions", "num_beams", "session_length", "batch_size"]),
    value=st.one_of(st.integers(-3, 0), st.floats(0.5, 4.5), st.text(max_size=3), st.booleans()),
)
def test_every_invalid_count_is_a_clear_error_naming_it(catalogue, name, value):
    # Property: any non-positive, non-integer or boolean count raises a TypeError/ValueError naming the argument
    # (num_beams=0 also breaks num_sessions <= num_beams, which names both).
    tokenizer, model = catalogue
    kwargs = {"num_sessions": 2, "num_beams": 4, name: value}
    with pytest.raises((TypeError, ValueError), match=name):
        model.recommend(tokenizer, [["sku1", "sku2"]], **kwargs)


def test_recommend_accepts_numpy_counts_and_any_iterable_of_histories(catalogue):
    import numpy as np

    tokenizer, model = catalogue
    histories = [["sku1", "sku2"], ["sku3"]]
    expected = model.recommend(tokenizer, histories, num_sessions=2, num_beams=4)
    got = model.recommend(
        tokenizer, (list(h) for h in histories), num_sessions=np.int64(2), num_beams=np.int32(4), session_length=None
    )
    assert [[s.items for s in user] for user in got] == [[s.items for s in user] for user in expected]
    with pytest.raises(TypeError, match="list of item-id lists"):
        model.recommend(tokenizer, {"u1": ["sku1"]})


def test_history_longer_than_the_encoder_window_is_excluded_whole(catalogue, tmp_path):
    # The model reads the newest 5 items; 70 of the 80 items are in the history, so every recommended item must be
    # one of the 10 others: in recommend(), in the pipeline, and in generate() with the tokenizer's processor.
    tokenizer, model = catalogue
    model = tiny_onerec(tokenizer, session_length=3, max_history_items=5).eval()
    history = [f"sku{i}" for i in range(70)]
    allowed = {f"sku{i}" for i in range(70, 80)}
    sessions = model.recommend(tokenizer, [history], num_sessions=8, num_beams=16)[0]
    assert len(sessions) == 8 and all(set(s.items) <= allowed for s in sessions)
    from transformers import pipeline

    from modeling_onerec import RECOMMENDATION_TASK

    recommender = pipeline(RECOMMENDATION_TASK, model=model, tokenizer=tokenizer)
    assert all(set(s["items"]) <= allowed for s in recommender(history, num_sessions=4, num_beams=8))
    out = _generate(model, tokenizer, [history], 3, 8)
    decoded = [tokenizer.decode_session(row, prefix_length=1) for row in out.sequences]
    assert all(items and set(items) <= allowed for items in decoded)


@pytest.mark.parametrize(
    "encoder",
    [
        {"history_encoding": "items"},
        {"history_prefix_buckets": 64},
        {"history_encoding": "items", "history_prefix_buckets": 64},
    ],
)
def test_encoder_options_recommend_valid_sessions_and_batching_changes_nothing(encoder):
    tokenizer = semantic_id_tokenizer([f"sku{i}" for i in range(80)], num_levels=3, codebook_size=4)
    model = tiny_onerec(tokenizer, seed=0, session_length=2, **encoder).eval()
    if model.encoder.prefix_embeddings is not None:  # zero at initialisation: make them count
        torch.nn.init.normal_(
            model.encoder.prefix_embeddings.embedding.weight, generator=torch.Generator().manual_seed(0)
        )
    histories = [["sku1", "sku2", "sku3", "sku9"], ["sku40"], ["sku7", "sku70"]]
    together = model.recommend(tokenizer, histories, num_sessions=4, num_beams=8)
    for history, sessions in zip(histories, together):
        assert len(sessions) == 4
        for session in sessions:
            assert len(session.items) == 2 and set(session.items) <= set(tokenizer.item_ids)
            assert not set(session.items) & set(history)
    for history, sessions in zip(histories, together):  # a user alone: no padding, the same sessions and scores
        alone = model.recommend(tokenizer, [history], num_sessions=4, num_beams=8)[0]
        assert [s.items for s in alone] == [s.items for s in sessions]
        assert [s.score for s in alone] == pytest.approx([s.score for s in sessions], abs=1e-5)
