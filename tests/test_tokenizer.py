"""SemanticIDTokenizer: round trips, bijection, save/load (Auto and remote code), cold start, bad input."""

import json
import os

import pytest
import torch
from transformers import AutoTokenizer

from tests.conftest import clustered_embeddings, run_without_the_project
from tokenization_semantic_id import (
    ResidualKMeansConfig,
    SemanticIDTokenizer,
    UnknownItemError,
    build_semantic_ids,
    plot_semantic_ids,
)


def build(num_items=240, codebook_size=6, seed=0, **kwargs):
    return build_semantic_ids(
        [f"item{i}" for i in range(num_items)],
        clustered_embeddings(num_items, seed=seed),
        ResidualKMeansConfig(num_levels=3, codebook_size=codebook_size),
        progress=False,
        **kwargs,
    )


def test_item_code_map_is_a_bijection_and_round_trips(small_tokenizer):
    tokenizer = small_tokenizer
    tokens = tokenizer.item_tokens
    assert tokens.shape == (tokenizer.num_items, tokenizer.num_levels)
    assert torch.unique(tokens, dim=0).shape[0] == tokenizer.num_items
    assert tokenizer.decode_items(tokenizer.encode_items(tokenizer.item_ids)) == tokenizer.item_ids
    for level, (offset, size) in enumerate(zip(tokenizer.level_offsets, tokenizer.codebook_sizes)):
        assert ((tokens[:, level] >= offset) & (tokens[:, level] < offset + size)).all()
    assert tokenizer.statistics()["collision_rate_after"] == 0.0


def test_layout_and_vocabulary(small_tokenizer):
    tokenizer = small_tokenizer
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id) == (0, 1, 2)
    vocab = tokenizer.get_vocab()
    assert len(vocab) == tokenizer.vocab_size == len(tokenizer) == 3 + sum(tokenizer.codebook_sizes)
    assert vocab["<a_0>"] == 3 and vocab["<b_0>"] == 3 + tokenizer.codebook_sizes[0]
    text = "".join(tokenizer.convert_ids_to_tokens(tokenizer.item_tokens[5].tolist()))
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == tokenizer.item_tokens[5].tolist()
    with pytest.raises(ValueError, match="code tokens like"):
        tokenizer("hello world")
    with pytest.raises(ValueError, match="Unknown token"):
        tokenizer.convert_tokens_to_ids(["<z_1>"])


def test_history_and_session_encoding(small_tokenizer):
    tokenizer = small_tokenizer
    items = [f"item{i}" for i in range(10)]
    history = tokenizer.encode_history(items, max_items=3)
    assert history == tokenizer.encode_items(items[-3:]).reshape(-1).tolist() + [tokenizer.eos_token_id]
    session = tokenizer.encode_session(items[:2])
    codes = tokenizer.encode_items(items[:2]).tolist()
    assert session == [2] + codes[0] + [2] + codes[1] + [1]  # paper Eq. 3: BOS before each item
    assert tokenizer.decode_session([0] + session, prefix_length=1) == items[:2]
    batch = tokenizer.batch_encode_histories([items[:1], items[:3]])
    assert batch["input_ids"].shape == (2, 3 * tokenizer.num_levels + 1)
    assert batch["attention_mask"][0].sum() == tokenizer.num_levels + 1
    assert (batch["input_ids"][0, tokenizer.num_levels + 1 :] == tokenizer.pad_token_id).all()
    with pytest.raises(ValueError, match="Empty history"):
        tokenizer.encode_history([])
    with pytest.raises(ValueError, match="Empty session"):
        tokenizer.encode_session([])


def test_unknown_items_and_invalid_codes_fail_loudly(small_tokenizer):
    with pytest.raises(UnknownItemError, match="Unknown item id 'nope'.*add_items"):
        small_tokenizer.encode_history(["item1", "nope"])
    bad = [small_tokenizer.level_offsets[0]] * small_tokenizer.num_levels
    with pytest.raises(ValueError, match="not the code of any catalogue item"):
        small_tokenizer.decode_items([bad])
    assert small_tokenizer.decode_items([bad], strict=False) == [None]


def test_save_and_load_with_auto_tokenizer(tmp_path, small_tokenizer):
    small_tokenizer.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {"tokenizer_config.json", "semantic_ids.safetensors", "item_ids.json"} <= files
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["codebook_sizes"] == small_tokenizer.codebook_sizes
    assert "AutoTokenizer" in config["auto_map"]
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert type(loaded) is SemanticIDTokenizer
    assert loaded.item_ids == small_tokenizer.item_ids
    assert torch.equal(loaded.item_codes, small_tokenizer.item_codes)
    assert all(torch.equal(a, b) for a, b in zip(loaded.codebooks, small_tokenizer.codebooks))
    assert loaded.encode_history(["item3", "item9"]) == small_tokenizer.encode_history(["item3", "item9"])


def test_auto_tokenizer_registered_for_the_onerec_config():
    # Registered through the public `AutoTokenizer.register`: a OneRec model directory resolves its tokenizer.
    from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING

    from modeling_onerec import OneRecConfig

    assert TOKENIZER_MAPPING[OneRecConfig] is SemanticIDTokenizer


def test_remote_code_load_in_a_fresh_process_without_the_package(tmp_path, small_tokenizer):
    small_tokenizer.save_pretrained(tmp_path / "tok")
    # The offline build (k-means fitting orchestration, embeddings) is not part of the served tokenizer.
    copied = {name for name in os.listdir(tmp_path / "tok") if name.endswith(".py")}
    assert "tokenization_semantic_id.py" in copied and not {"builder.py", "embeddings.py"} & copied
    out = run_without_the_project(
        f"""
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained({str(tmp_path / "tok")!r}, trust_remote_code=True)
        print(json.dumps({{"cls": type(tok).__module__, "history": tok.encode_history(["item3", "item9"])}}))
    """,
        tmp_path,
    )
    assert not out["cls"].startswith("tokenization_semantic_id")  # loaded from the directory's code
    assert out["history"] == small_tokenizer.encode_history(["item3", "item9"])


@pytest.mark.parametrize("missing", ["semantic_ids.safetensors", "item_ids.json"])
def test_directory_with_files_missing(tmp_path, small_tokenizer, missing):
    small_tokenizer.save_pretrained(tmp_path)
    os.remove(tmp_path / missing)
    with pytest.raises(ValueError, match=f"missing {missing}.*save_pretrained"):
        SemanticIDTokenizer.from_pretrained(tmp_path)


def test_build_rejects_bad_input():
    ids = [f"i{i}" for i in range(20)]
    good = clustered_embeddings(20)
    config = ResidualKMeansConfig(num_levels=2, codebook_size=4)
    with pytest.raises(ValueError, match="empty catalogue"):
        build_semantic_ids([], torch.zeros(0, 16), config, progress=False)
    with pytest.raises(ValueError, match="larger than the catalogue"):
        build_semantic_ids(ids, good, ResidualKMeansConfig(num_levels=2, codebook_size=64), progress=False)
    nan = good.clone()
    nan[3, 1] = float("nan")
    with pytest.raises(ValueError, match="(?i)nan"):
        build_semantic_ids(ids, nan, config, progress=False)
    inf = good.clone()
    inf[0, 0] = float("inf")
    with pytest.raises(ValueError, match="(?i)inf"):
        build_semantic_ids(ids, inf, config, progress=False)
    with pytest.raises(ValueError, match="20"):
        build_semantic_ids(ids, good[:10], config, progress=False)
    with pytest.raises(ValueError, match="unique"):
        build_semantic_ids(ids[:-1] + ["i0"], good, config, progress=False)


def test_cold_start_items_are_decodable_and_generable_at_once():
    tokenizer = build(num_items=200)
    vocab_before = tokenizer.vocab_size
    new = clustered_embeddings(230, seed=0)[200:]  # same distribution, unseen items
    new[1] = new[0]  # two new items with identical embeddings must still get distinct codes
    new_ids = [f"new{i}" for i in range(30)]
    tokens = tokenizer.add_items(new_ids, new)
    assert tokenizer.vocab_size == vocab_before  # the vocabulary (and any trained model) is unchanged
    assert tokenizer.num_items == 230
    assert torch.unique(tokenizer.item_tokens, dim=0).shape[0] == 230
    assert tokenizer.decode_items(tokens) == new_ids
    processor = tokenizer.session_logits_processor(1, exclude_items=[tokenizer.item_ids[:200]], num_beams=1)
    # with every old item excluded, the first-level tokens allowed are exactly those of new items
    mask = processor.allowed_mask(torch.tensor([[0, 2]]))
    assert set((mask[0] == 0).nonzero().flatten().tolist()) == set(tokens[:, 0].tolist())
    with pytest.raises(ValueError, match="already in the catalogue"):
        tokenizer.add_items(["new0"], new[:1])
    with pytest.raises(ValueError, match="(?i)dim"):
        tokenizer.add_items(["other"], torch.randn(1, 7))


def test_cold_start_beyond_disambiguation_capacity_fails_clearly():
    tokenizer = build(num_items=40, codebook_size=2)
    size = tokenizer.codebook_sizes[-1]
    same = clustered_embeddings(1, seed=9).repeat(size + 1, 1)
    with pytest.raises(ValueError, match="larger disambiguation_size"):
        tokenizer.add_items([f"x{i}" for i in range(size + 1)], same)


def test_build_is_deterministic_and_records_how_it_was_built():
    first, second = build(seed=4), build(seed=4)
    assert torch.equal(first.item_codes, second.item_codes)
    info = first.build_info
    assert info["quantizer"]["balanced"] is True and info["quantizer"]["codebook_size"] == [6, 6, 6]
    assert info["collisions"]["collision_rate_after"] == 0.0
    stats = first.statistics()
    for level in stats["levels"][:3]:  # balanced: 240 items / 6 codes = exactly 40 per code
        assert level["min_cluster"] == level["max_cluster"] == 40


def test_plot_semantic_ids(tmp_path, small_tokenizer, saved_figures):
    path = plot_semantic_ids(small_tokenizer, tmp_path / "codebooks.png", title="tiny")
    assert path.stat().st_size > 1000
    (figure,) = saved_figures
    assert len(figure.axes) == small_tokenizer.num_levels
    for level, axis in enumerate(figure.axes):
        expected = (
            torch.bincount(small_tokenizer.item_codes[:, level], minlength=small_tokenizer.codebook_sizes[level])
            .sort(descending=True)
            .values
        )
        assert [line.get_ydata().tolist() for line in axis.lines] == [expected.tolist()]


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda tok: tok.encode_history("item3"), TypeError, "the history must be a list of item ids"),
        (lambda tok: tok.encode_session("item3"), TypeError, "the session must be a list of item ids"),
        (lambda tok: tok.encode_items(7), TypeError, "item_ids must be a list"),
        (lambda tok: tok.batch_encode_histories(["item3", "item9"]), TypeError, r"histories\[0\] must be a list"),
        (lambda tok: tok.batch_encode_histories("item3"), TypeError, "histories must be a list"),
        (lambda tok: tok.batch_encode_histories([]), ValueError, "histories is empty"),
        (lambda tok: tok.batch_encode_histories([["item3"], []]), ValueError, r"histories\[1\]: Empty history"),
        (
            lambda tok: tok.session_logits_processor(1, exclude_items=["item3"], num_beams=1),
            TypeError,
            r"exclude_items\[0\]",
        ),
    ],
)
def test_strings_and_empty_batches_are_clear_errors_not_other_items(small_tokenizer, call, error, match):
    # Regression: a string was read as a list of one-character item ids and encoded as other real items.
    with pytest.raises(error, match=match):
        call(small_tokenizer)
    assert small_tokenizer.encode_history(("item3", "item9")) == small_tokenizer.encode_history(["item3", "item9"])


def test_corrupt_files_and_too_many_levels_are_named(tmp_path, small_tokenizer):
    small_tokenizer.save_pretrained(tmp_path / "tok")
    (tmp_path / "tok" / "item_ids.json").write_text('["item0", "ite')  # truncated
    with pytest.raises(ValueError, match=r"item_ids.json is not valid UTF-8 JSON"):
        SemanticIDTokenizer.from_pretrained(tmp_path / "tok")
    small_tokenizer.save_pretrained(tmp_path / "tok2")
    data = (tmp_path / "tok2" / "semantic_ids.safetensors").read_bytes()
    (tmp_path / "tok2" / "semantic_ids.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"semantic_ids.safetensors is not a readable safetensors file"):
        SemanticIDTokenizer.from_pretrained(tmp_path / "tok2")
    with pytest.raises(ValueError, match=r"num_levels must be an int in \[1, 25\]"):
        ResidualKMeansConfig(num_levels=30, codebook_size=4)


def test_save_is_staged_and_a_folder_mixing_two_saves_is_refused(tmp_path, small_tokenizer):
    target = tmp_path / "tok"
    written = small_tokenizer.save_pretrained(target)
    assert all(str(path).startswith(str(target)) for path in written)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]  # no staging folder left behind
    config = json.loads((target / "tokenizer_config.json").read_text())
    assert config["semantic_ids_fingerprint"] == small_tokenizer.catalogue_fingerprint()
    # Another tokenizer's item list next to this one's codes and config (an interrupted save over an older one):
    other = build_semantic_ids(
        [f"other{i}" for i in range(240)],
        torch.randn(240, 16),
        ResidualKMeansConfig(num_levels=3, codebook_size=6),
        progress=False,
    )
    other.save_pretrained(tmp_path / "other")
    (target / "item_ids.json").write_bytes((tmp_path / "other" / "item_ids.json").read_bytes())
    with pytest.raises(ValueError, match="do not belong together"):
        SemanticIDTokenizer.from_pretrained(target)
    # A failing save leaves the existing folder as it was.
    small_tokenizer.save_pretrained(target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    with pytest.raises(ValueError, match="is a file"):
        small_tokenizer.save_pretrained(target / "item_ids.json")
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before


def test_missing_item_ids_and_ragged_token_counts_are_clear_errors(small_tokenizer):
    from tests.conftest import clustered_embeddings
    from tokenization_semantic_id import ResidualKMeansConfig, build_semantic_ids

    config = ResidualKMeansConfig(num_levels=2, codebook_size=4)
    for bad in (None, "", "  "):
        with pytest.raises(ValueError, match=r"item_ids\[2\] is .*non-empty id"):
            build_semantic_ids(["a", "b", bad, "d"], clustered_embeddings(4), config, progress=False)
    levels = small_tokenizer.num_levels
    codes = small_tokenizer.item_tokens[:2].reshape(-1).tolist()
    assert small_tokenizer.decode_items(codes) == list(small_tokenizer.item_ids[:2])
    with pytest.raises(ValueError, match=f"needs {levels} code tokens per item"):
        small_tokenizer.decode_items(codes[:-1])


def test_a_save_failing_while_files_are_moved_in_keeps_the_previous_tokenizer(tmp_path, small_tokenizer, monkeypatch):
    import tokenization_semantic_id.tokenization_semantic_id as module

    target = tmp_path / "tok"
    small_tokenizer.save_pretrained(target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    other = build_semantic_ids(
        [f"other{i}" for i in range(240)],
        torch.randn(240, 16),
        ResidualKMeansConfig(num_levels=3, codebook_size=6),
        progress=False,
    )
    real_replace, moves = os.replace, []

    def replace_failing_on_the_third_new_file(source, destination):
        if ".saving-" in str(source) and ".previous" not in str(destination) and ".previous" not in str(source):
            moves.append(destination)
            if len(moves) == 3:
                raise OSError("disk full")
        return real_replace(source, destination)

    monkeypatch.setattr(module.os, "replace", replace_failing_on_the_third_new_file)
    with pytest.raises(OSError, match="disk full"):
        other.save_pretrained(target)
    monkeypatch.undo()
    assert len(moves) == 3  # two new files were already in place when the third failed
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert SemanticIDTokenizer.from_pretrained(target).item_ids == small_tokenizer.item_ids
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]


def test_set_max_history_items_changes_the_cap_and_is_saved(tmp_path, small_tokenizer):
    small_tokenizer.save_pretrained(tmp_path / "built")
    tokenizer = SemanticIDTokenizer.from_pretrained(tmp_path / "built")
    history = tokenizer.item_ids[:30]
    tokenizer.set_max_history_items(20)
    assert tokenizer.encode_history(history) == tokenizer.encode_history(history[-20:])
    assert tokenizer.model_max_length == 20 * tokenizer.num_levels + 1
    tokenizer.save_pretrained(tmp_path / "capped")
    reloaded = SemanticIDTokenizer.from_pretrained(tmp_path / "capped")
    assert (reloaded.max_history_items, reloaded.model_max_length) == (20, 20 * tokenizer.num_levels + 1)
    assert small_tokenizer.max_history_items == 50  # the fixture it was loaded from keeps its own cap
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="max_history_items must be a positive integer"):
            tokenizer.set_max_history_items(bad)
