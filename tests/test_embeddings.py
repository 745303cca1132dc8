"""Tests for `tokenization_semantic_id.embeddings`: text, collaborative, array and concat item embeddings."""

import os

# Must precede any sentence-transformers / huggingface_hub import: the hub is unreachable in CI.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gzip  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from tokenization_semantic_id import embeddings as embeddings_module  # noqa: E402
from tokenization_semantic_id.embeddings import (  # noqa: E402
    ItemEmbeddingConfig,
    UnknownItemIdError,
    build_item_embeddings,
    collaborative_item_embeddings,
    load_embedding_array,
    text_item_embeddings,
    validate_item_embeddings,
)

BUNDLED = Path(__file__).resolve().parents[1] / "trainers" / "data" / "bundled"
LOGGER_NAME = "tokenization_semantic_id.embeddings"

# Two clusters of items that co-occur only within their cluster; "z" is never in a training sequence.
CLUSTER_SEQUENCES = [
    ["a", "b", "c", "d"],
    ["b", "d", "a", "c"],
    ["c", "a", "d", "b"],
    ["e", "f", "g", "h"],
    ["f", "h", "e", "g"],
    ["g", "e", "h", "f"],
]
CLUSTER_ITEMS = list("abcdefghz")


def cosine(embeddings: torch.Tensor, first: int, second: int) -> float:
    return float(torch.nn.functional.cosine_similarity(embeddings[first], embeddings[second], dim=0))


# ------------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scientific_texts() -> list[str]:
    """Title and category path of the first 20 real Amazon Scientific items."""
    with gzip.open(BUNDLED / "amazon18_scientific" / "Scientific.item.json.gz", "rt", encoding="utf-8") as file:
        items = json.load(file)
    return [f"{items[str(i)]['title']} Categories: {items[str(i)]['categories']}" for i in range(20)]


@pytest.fixture(scope="module")
def sentence_model():
    """The bundled encoder, loaded once through the library's own loader."""
    path, _ = embeddings_module._resolve_text_model("all-MiniLM-L6-v2")
    return embeddings_module._load_sentence_transformer(path, "cpu")


@pytest.fixture
def counted_loader(monkeypatch, sentence_model):
    """Replace the model loader by one that returns the shared model and counts its calls."""
    calls = []

    def load(model_path, device):
        calls.append((model_path, device))
        return sentence_model

    monkeypatch.setattr(embeddings_module, "_load_sentence_transformer", load)
    return calls


@pytest.fixture(scope="module")
def scientific_text_embeddings(scientific_texts, sentence_model) -> torch.Tensor:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(embeddings_module, "_load_sentence_transformer", lambda path, device: sentence_model)
        return text_item_embeddings(scientific_texts, device="cpu")


@pytest.fixture(scope="module")
def beauty_train_sequences() -> list[list[str]]:
    """Training parts of the bundled Beauty sequences: last two items (validation, test) dropped."""
    sequences = []
    with gzip.open(BUNDLED / "amazon_beauty" / "Beauty.txt.gz", "rt", encoding="utf-8") as file:
        for line in file:
            items = line.split()[1:]
            sequences.append(items[:-2])
    return sequences


# ------------------------------------------------------------------------------------------------
# Text
# ------------------------------------------------------------------------------------------------


def test_text_embeddings_shape_and_unit_norm(scientific_text_embeddings):
    assert scientific_text_embeddings.shape == (20, 384)
    assert scientific_text_embeddings.dtype == torch.float32
    torch.testing.assert_close(scientific_text_embeddings.norm(dim=1), torch.ones(20))


def test_text_embeddings_place_same_category_items_closer(scientific_text_embeddings):
    # Items 1 and 2: Stanley staples (Fasteners > Collated Fasteners > Staples); item 0: a capacitor kit.
    assert cosine(scientific_text_embeddings, 1, 2) > cosine(scientific_text_embeddings, 1, 0) + 0.2
    assert cosine(scientific_text_embeddings, 1, 2) > cosine(scientific_text_embeddings, 2, 0) + 0.2
    # Items 3 and 13: Kreg pocket screws (Fasteners > Screws).
    assert cosine(scientific_text_embeddings, 3, 13) > cosine(scientific_text_embeddings, 3, 0) + 0.2


def test_text_embeddings_are_deterministic(scientific_texts, scientific_text_embeddings, counted_loader):
    again = text_item_embeddings(scientific_texts, device="cpu")
    assert torch.equal(again, scientific_text_embeddings)
    assert len(counted_loader) == 1


def test_empty_texts_get_zero_rows_and_a_warning(scientific_texts, scientific_text_embeddings, counted_loader, caplog):
    texts = [scientific_texts[0], "", scientific_texts[1], "   ", None, scientific_texts[2]]
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        embeddings = text_item_embeddings(texts, device="cpu")
    assert embeddings.shape == (6, 384)
    for empty_row in (1, 3, 4):
        assert torch.count_nonzero(embeddings[empty_row]) == 0
    # Non-empty rows keep their own embedding: the zero rows did not shift the alignment.
    torch.testing.assert_close(embeddings[[0, 2, 5]], scientific_text_embeddings[:3], atol=1e-5, rtol=0)
    assert "3 of 6 items have an empty text" in caplog.text


def test_all_empty_texts_raise(counted_loader):
    with pytest.raises(ValueError, match="All 2 texts are empty"):
        text_item_embeddings(["", " "])
    assert counted_loader == []


def test_text_cache_is_reused_without_loading_the_model(scientific_texts, tmp_path, counted_loader, monkeypatch):
    cache_path = tmp_path / "cache" / "text.safetensors"
    first = text_item_embeddings(scientific_texts, device="cpu", cache_path=cache_path)
    assert cache_path.is_file() and len(counted_loader) == 1

    def fail(model_path, device):
        raise AssertionError("the model must not be loaded when the cache matches")

    monkeypatch.setattr(embeddings_module, "_load_sentence_transformer", fail)
    second = text_item_embeddings(scientific_texts, device="cpu", cache_path=cache_path)
    assert torch.equal(first, second)


def test_text_cache_is_invalidated_when_texts_change(scientific_texts, tmp_path, counted_loader):
    cache_path = tmp_path / "text.safetensors"
    first = text_item_embeddings(scientific_texts[:5], device="cpu", cache_path=cache_path)
    changed = list(scientific_texts[:5])
    changed[4] = scientific_texts[10]
    second = text_item_embeddings(changed, device="cpu", cache_path=cache_path)
    assert len(counted_loader) == 2
    torch.testing.assert_close(second[:4], first[:4], atol=1e-5, rtol=0)
    assert not torch.allclose(second[4], first[4], atol=1e-3)
    # The cache now holds the new texts: a third call reuses it.
    third = text_item_embeddings(changed, device="cpu", cache_path=cache_path)
    assert len(counted_loader) == 2 and torch.equal(third, second)


def test_corrupt_text_cache_is_recomputed(scientific_texts, tmp_path, counted_loader, caplog):
    cache_path = tmp_path / "text.safetensors"
    cache_path.write_bytes(b"not a safetensors file")
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        embeddings = text_item_embeddings(scientific_texts[:3], device="cpu", cache_path=cache_path)
    assert "Could not read the text-embedding cache" in caplog.text
    assert len(counted_loader) == 1 and embeddings.shape == (3, 384)
    assert text_item_embeddings(scientific_texts[:3], device="cpu", cache_path=cache_path).equal(embeddings)
    assert len(counted_loader) == 1


def test_text_model_local_directory_keys_the_cache(tmp_path):
    model_dir = tmp_path / "my-encoder"
    model_dir.mkdir()
    path, identity = embeddings_module._resolve_text_model(str(model_dir))
    assert path == model_dir.resolve() and identity == str(model_dir.resolve())
    # Same texts, another model: another cache file, so neither overwrites the other.
    own_cache = embeddings_module._text_cache_path(tmp_path, ["a drill"], str(model_dir))
    default_cache = embeddings_module._text_cache_path(tmp_path, ["a drill"], "all-MiniLM-L6-v2")
    assert own_cache.name.startswith("text-my-encoder-") and own_cache != default_cache


def test_text_model_must_be_a_local_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="must be 'all-MiniLM-L6-v2' .* or a local directory"):
        text_item_embeddings(["a drill"], model=str(tmp_path / "missing-model"))


def test_text_cache_path_must_be_safetensors(tmp_path, counted_loader):
    with pytest.raises(ValueError, match="must end in '.safetensors'"):
        text_item_embeddings(["a drill"], cache_path=tmp_path / "cache.npy")


def test_build_text_embeddings_uses_cache_dir(scientific_texts, tmp_path, counted_loader, monkeypatch):
    config = ItemEmbeddingConfig(source="text", cache_dir=str(tmp_path), device="cpu")
    item_ids = [f"item-{i}" for i in range(5)]
    first = build_item_embeddings(config, item_ids, texts=scientific_texts[:5])
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    monkeypatch.setattr(embeddings_module, "_load_sentence_transformer", lambda *args: pytest.fail("reloaded"))
    assert torch.equal(build_item_embeddings(config, item_ids, texts=scientific_texts[:5]), first)


# ------------------------------------------------------------------------------------------------
# Collaborative
# ------------------------------------------------------------------------------------------------


def test_collaborative_items_that_co_occur_are_nearer():
    embeddings = collaborative_item_embeddings(CLUSTER_SEQUENCES, CLUSTER_ITEMS, dim=3)
    a, b, e, f = (CLUSTER_ITEMS.index(item) for item in "abef")
    assert embeddings.shape == (9, 3) and embeddings.dtype == torch.float32
    assert cosine(embeddings, a, b) > cosine(embeddings, a, e) + 0.3
    assert cosine(embeddings, e, f) > cosine(embeddings, b, f) + 0.3


def test_collaborative_is_deterministic():
    first = collaborative_item_embeddings(CLUSTER_SEQUENCES, CLUSTER_ITEMS, dim=4, seed=3)
    second = collaborative_item_embeddings(CLUSTER_SEQUENCES, CLUSTER_ITEMS, dim=4, seed=3)
    assert torch.equal(first, second)


def test_collaborative_uses_only_training_sequences(caplog):
    held_out = [["a", "z"], ["e", "z"]]  # what a caller must NOT pass: "z" is only in held-out data
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        embeddings = collaborative_item_embeddings(CLUSTER_SEQUENCES, CLUSTER_ITEMS, dim=3)
    assert torch.count_nonzero(embeddings[CLUSTER_ITEMS.index("z")]) == 0
    assert "1 of 9 items have no positive co-occurrence" in caplog.text
    norms = embeddings.norm(dim=1)
    torch.testing.assert_close(norms[:8], torch.ones(8))
    # Passing the held-out lists too would give "z" an embedding: the function uses exactly what it is given.
    leaked = collaborative_item_embeddings(CLUSTER_SEQUENCES + held_out, CLUSTER_ITEMS, dim=3)
    assert torch.count_nonzero(leaked[CLUSTER_ITEMS.index("z")]) > 0


def test_collaborative_unknown_item_id_is_named():
    with pytest.raises(UnknownItemIdError, match="contains item id 'q', which is not in `item_ids`") as info:
        collaborative_item_embeddings([["a", "b"], ["a", "q"]], CLUSTER_ITEMS, dim=1)
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    with pytest.raises(ValueError, match="convert them with `str\\(\\)`"):
        collaborative_item_embeddings([[1, 2]], ["1", "2"], dim=1)


def test_collaborative_dim_larger_than_data_supports():
    with pytest.raises(ValueError, match="dim=8 exceeds what the training data supports: only 8 of 9 items"):
        collaborative_item_embeddings(CLUSTER_SEQUENCES, CLUSTER_ITEMS, dim=8)
    with pytest.raises(ValueError, match="only 0 of 9 items"):
        collaborative_item_embeddings([], CLUSTER_ITEMS, dim=1)


def test_collaborative_rejects_a_string_as_sequence():
    with pytest.raises(ValueError, match="must be a list of item-id strings"):
        collaborative_item_embeddings(["abcd"], CLUSTER_ITEMS, dim=1)


def test_collaborative_on_bundled_beauty(beauty_train_sequences):
    item_ids = [str(item) for item in range(1, 12102)]
    # CPU time, not wall time: other jobs on a shared 2-core machine must not fail this test. About 1-2 s
    # normally; a dense SVD of the 12k x 12k matrix would take minutes.
    start = time.process_time()
    embeddings = collaborative_item_embeddings(beauty_train_sequences, item_ids)
    cpu_seconds = time.process_time() - start
    assert embeddings.shape == (12101, 64)
    assert cpu_seconds < 30, f"collaborative embeddings on Beauty took {cpu_seconds:.1f} s of CPU"
    norms = embeddings.norm(dim=1)
    is_zero = norms == 0
    assert int(is_zero.sum()) < 100  # only items without training co-occurrence
    torch.testing.assert_close(norms[~is_zero], torch.ones(int((~is_zero).sum())))
    # Behaviour signal: consecutive training items are far more similar than random pairs.
    pairs = torch.tensor([[int(s[-2]) - 1, int(s[-1]) - 1] for s in beauty_train_sequences if len(s) >= 2])
    random_partner = torch.randint(0, 12101, (len(pairs),), generator=torch.Generator().manual_seed(0))
    consecutive = (embeddings[pairs[:, 0]] * embeddings[pairs[:, 1]]).sum(1).mean()
    random = (embeddings[pairs[:, 0]] * embeddings[random_partner]).sum(1).mean()
    assert consecutive > random + 0.15


# ------------------------------------------------------------------------------------------------
# Array
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def matrix() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)


def test_array_round_trips(matrix, tmp_path):
    np.save(tmp_path / "emb.npy", matrix)
    torch.save(torch.from_numpy(matrix), tmp_path / "emb.pt")
    torch.save({"embeddings": torch.from_numpy(matrix), "other": torch.zeros(3)}, tmp_path / "dict.pt")
    save_file({"whatever": torch.from_numpy(matrix)}, str(tmp_path / "emb.safetensors"))
    sources = [
        tmp_path / "emb.npy",
        str(tmp_path / "emb.pt"),
        tmp_path / "dict.pt",
        tmp_path / "emb.safetensors",
        matrix,
        matrix.astype(np.float64),
        torch.from_numpy(matrix),
    ]
    for source in sources:
        loaded = load_embedding_array(source, num_items=7)
        assert loaded.dtype == torch.float32 and loaded.is_contiguous()
        assert torch.equal(loaded, torch.from_numpy(matrix)), f"round trip failed for {source!r:.60}"


def test_array_wrong_rows(matrix, tmp_path):
    np.save(tmp_path / "emb.npy", matrix)
    with pytest.raises(ValueError, match="has 7 rows but the catalogue has 8 items"):
        load_embedding_array(tmp_path / "emb.npy", num_items=8)


def test_array_wrong_dim(matrix):
    with pytest.raises(ValueError, match="must be 2-D"):
        load_embedding_array(matrix[0], num_items=7)
    with pytest.raises(ValueError, match="has dimension 5 but 4 was expected"):
        validate_item_embeddings(load_embedding_array(matrix, num_items=7), dim=4)


def test_array_file_errors(matrix, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_embedding_array(tmp_path / "missing.npy", num_items=7)
    with pytest.raises(ValueError, match="unsupported suffix"):
        load_embedding_array(tmp_path / "emb.csv", num_items=7)
    save_file({"a": torch.zeros(7, 2), "b": torch.zeros(7, 2)}, str(tmp_path / "two.safetensors"))
    with pytest.raises(ValueError, match="holds 2 tensors"):
        load_embedding_array(tmp_path / "two.safetensors", num_items=7)


def test_build_array_from_config_path(matrix, tmp_path):
    np.save(tmp_path / "emb.npy", matrix)
    config = ItemEmbeddingConfig(source="array", array_path=str(tmp_path / "emb.npy"))
    built = build_item_embeddings(config, [str(i) for i in range(7)])
    assert torch.equal(built, torch.from_numpy(matrix))
    with pytest.raises(ValueError, match="pass only one of them"):
        build_item_embeddings(config, [str(i) for i in range(7)], array=matrix)


# ------------------------------------------------------------------------------------------------
# Concat
# ------------------------------------------------------------------------------------------------


def test_concat_shape_and_weights(scientific_texts, counted_loader, matrix):
    item_ids = CLUSTER_ITEMS[:7]
    sequences = [[item for item in sequence if item in item_ids] for sequence in CLUSTER_SEQUENCES]
    config = ItemEmbeddingConfig(
        source="concat",
        concat_sources=("text", "collaborative", "array"),
        concat_weights=(2.0, 0.5, 1.0),
        collaborative_dim=3,
        device="cpu",
    )
    built = build_item_embeddings(config, item_ids, texts=scientific_texts[:7], train_sequences=sequences, array=matrix)
    assert built.shape == (7, 384 + 3 + 5)
    text_block, collaborative_block, array_block = built[:, :384], built[:, 384:387], built[:, 387:]
    torch.testing.assert_close(text_block.norm(dim=1), torch.full((7,), 2.0**0.5))
    torch.testing.assert_close(collaborative_block.norm(dim=1), torch.full((7,), 0.5**0.5))
    torch.testing.assert_close(array_block.norm(dim=1), torch.ones(7))
    # Each block is its source, normalised and scaled: directions are kept.
    expected_array = torch.from_numpy(matrix) / torch.from_numpy(matrix).norm(dim=1, keepdim=True)
    torch.testing.assert_close(array_block, expected_array)


def test_concat_default_weights_are_equal(matrix):
    config = ItemEmbeddingConfig(concat_sources=("collaborative", "array"), collaborative_dim=2)
    built = build_item_embeddings(config, CLUSTER_ITEMS[:7], train_sequences=CLUSTER_SEQUENCES[:3], array=matrix)
    assert built.shape == (7, 7)
    collaborative_norms = built[:, :2].norm(dim=1)
    # Items a-d co-occur: unit block; e-g are absent from these sequences: zero block, not a made-up vector.
    torch.testing.assert_close(collaborative_norms, torch.tensor([1.0, 1, 1, 1, 0, 0, 0]))
    torch.testing.assert_close(built[:, 2:].norm(dim=1), torch.ones(7))


# ------------------------------------------------------------------------------------------------
# Build: missing inputs
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source, argument",
    [("text", "texts="), ("collaborative", "train_sequences="), ("array", "array="), ("concat", "texts=")],
)
def test_build_missing_input_names_the_argument(source, argument):
    with pytest.raises(ValueError, match=f"needs `{argument}`"):
        build_item_embeddings(ItemEmbeddingConfig(source=source), ["1", "2"])


def test_build_texts_must_align_with_item_ids():
    with pytest.raises(ValueError, match="`texts` has 1 entries but `item_ids` has 2"):
        build_item_embeddings(ItemEmbeddingConfig(source="text"), ["1", "2"], texts=["only one"])


def test_build_rejects_duplicate_and_non_string_item_ids(matrix):
    config = ItemEmbeddingConfig(source="array")
    with pytest.raises(ValueError, match="lists '1' twice"):
        build_item_embeddings(config, ["1", "1"], array=matrix[:2])
    with pytest.raises(ValueError, match="item ids must be strings"):
        build_item_embeddings(config, [1, 2], array=matrix[:2])


# ------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------


def test_config_defaults_and_list_conversion():
    config = ItemEmbeddingConfig(concat_sources=["text", "array"], concat_weights=[1, 3.0])
    assert config.source == "concat" and config.text_model == "all-MiniLM-L6-v2"
    assert config.concat_sources == ("text", "array") and config.concat_weights == (1, 3.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"source": "image"}, "`source` must be one of"),
        ({"text_model": ""}, "`text_model` must be"),
        ({"text_batch_size": 0}, "`text_batch_size` must be a positive integer"),
        ({"collaborative_dim": 2.5}, "`collaborative_dim` must be a positive integer"),
        ({"collaborative_window": True}, "`collaborative_window` must be a positive integer"),
        ({"concat_sources": ()}, "`concat_sources` is empty"),
        ({"concat_sources": "text"}, "`concat_sources` must be a tuple"),
        ({"concat_sources": ("text", "concat")}, "entries must be among"),
        ({"concat_sources": ("text", "text")}, "lists a source twice"),
        ({"concat_weights": (1.0,)}, "`concat_weights` has 1 entries but `concat_sources` has 2"),
        ({"concat_weights": (1.0, -1.0)}, "positive finite numbers"),
        ({"concat_weights": (1.0, float("nan"))}, "positive finite numbers"),
        ({"array_path": 3}, "`array_path` must be None or a non-empty string"),
        ({"cache_dir": ""}, "`cache_dir` must be None or a non-empty string"),
        ({"seed": -1}, "`seed` must be a non-negative integer"),
        ({"device": "not-a-device"}, "`device` must be None or a torch device string"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ItemEmbeddingConfig(**kwargs)


# ------------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------------


def test_validate_returns_float32_contiguous():
    matrix = np.arange(12, dtype=np.float64).reshape(3, 4).T  # non-contiguous float64
    validated = validate_item_embeddings(matrix, num_items=4, dim=3)
    assert validated.dtype == torch.float32 and validated.is_contiguous()
    assert torch.equal(validated, torch.from_numpy(matrix).float())
    assert validate_item_embeddings([[1, 2], [3, 4]]).dtype == torch.float32


def test_validate_nan():
    matrix = torch.zeros(5, 3)
    matrix[2, 1] = float("nan")
    matrix[4, 0] = float("nan")
    with pytest.raises(ValueError, match=r"`item vectors` has NaN or inf values in 2 of 5 rows \(first bad row: 2\)"):
        validate_item_embeddings(matrix, name="item vectors")


def test_validate_inf():
    matrix = np.zeros((4, 2), dtype=np.float32)
    matrix[3, 1] = -np.inf
    with pytest.raises(ValueError, match=r"NaN or inf values in 1 of 4 rows \(first bad row: 3\)"):
        validate_item_embeddings(matrix)


def test_validate_one_dimensional():
    with pytest.raises(ValueError, match=r"must be 2-D \[num_items, dim\], got shape \(6,\)"):
        validate_item_embeddings(torch.zeros(6))


def test_validate_wrong_dim():
    with pytest.raises(ValueError, match="has dimension 3 but 8 was expected"):
        validate_item_embeddings(torch.zeros(4, 3), dim=8)


def test_validate_wrong_count():
    with pytest.raises(ValueError, match="has 4 rows but the catalogue has 5 items"):
        validate_item_embeddings(torch.zeros(4, 3), num_items=5)


def test_validate_non_numeric():
    with pytest.raises(ValueError, match="does not convert to float"):
        validate_item_embeddings(np.array([["a", "b"]]))
    with pytest.raises(ValueError, match="at least one column"):
        validate_item_embeddings(torch.zeros(3, 0))
