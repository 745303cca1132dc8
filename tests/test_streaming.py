"""Streamed training windows equal the in-memory path; the synthetic log has the size and shape asked for."""

import numpy as np
import pytest
import torch

from tokenization_semantic_id import SemanticIDTokenizer
from trainers.data import (
    build_session_samples,
    leave_one_out_split,
    load_bundled,
    stream_training_windows,
    synthetic_sequences,
    tokenize_session_samples,
)
from trainers.pretraining import TokenizedSessionCollator


def random_code_tokenizer(item_ids, codebook_size=32, levels=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    codes = torch.unique(torch.randint(codebook_size, (len(item_ids) * 2, levels), generator=generator), dim=0)
    codes = codes[torch.randperm(codes.shape[0], generator=generator)[: len(item_ids)]]
    return SemanticIDTokenizer(
        codebook_sizes=[codebook_size] * levels,
        num_semantic_levels=levels,
        item_ids=list(item_ids),
        item_codes=codes,
        codebooks=None,
    )


@pytest.mark.parametrize("max_history_items, session_length", [(50, 5), (3, 1)])
def test_streamed_windows_equal_the_in_memory_path(max_history_items, session_length):
    data = load_bundled("scientific")
    tokenizer = random_code_tokenizer(data["items"]["item_id"])
    samples = build_session_samples(leave_one_out_split(data["sequences"]), max_history=50, session_length=5)
    expected = tokenize_session_samples(
        samples["train"], tokenizer, max_history_items=max_history_items, session_length=session_length
    )
    streamed = stream_training_windows(
        data["sequences"],
        tokenizer,
        max_history_items=max_history_items,
        session_length=session_length,
        users_per_chunk=1000,  # several chunks, the last one short
    )
    rows = list(streamed)
    assert len(rows) == len(expected)
    for index in np.random.default_rng(0).choice(len(rows), 500, replace=False).tolist() + [0, len(rows) - 1]:
        assert list(rows[index]["input_ids"]) == expected[index]["input_ids"]
        assert list(rows[index]["labels"]) == expected[index]["labels"]
        assert rows[index]["num_history_items"] == expected[index]["num_history_items"]
    # The Trainer's collator takes the streamed rows as they are.
    batch = TokenizedSessionCollator(tokenizer.pad_token_id)(rows[:8])
    assert batch["input_ids"].shape[0] == 8 and batch["labels"].shape[0] == 8


def test_an_unknown_item_is_named_with_its_user():
    data = load_bundled("scientific")
    tokenizer = random_code_tokenizer(data["items"]["item_id"][1:])  # the first item is missing
    missing = data["items"]["item_id"][0]
    with pytest.raises(ValueError, match=f"Unknown item id '{missing}' of user"):
        list(stream_training_windows(data["sequences"], tokenizer, max_history_items=5, session_length=2))


def test_synthetic_log_has_the_requested_size_and_a_popularity_tail(tmp_path):
    log = synthetic_sequences(2_000, 500, 30_000, seed=1, cache_dir=str(tmp_path), users_per_chunk=700)
    lengths = np.array([len(items) for items in log["item_ids"]])
    assert len(log) == 2_000 and lengths.min() >= 3
    assert abs(lengths.sum() - 30_000) / 30_000 < 0.05
    assert np.median(lengths) < lengths.mean()  # a long tail of heavy users
    counts = np.bincount(np.concatenate([np.array(items, dtype=int) for items in log["item_ids"]]), minlength=500)
    assert counts[0] > 20 * max(counts[-100:].mean(), 1)  # Zipf: item "0" far above the tail
    assert log.cache_files  # written to Arrow files, memory-mapped
    with pytest.raises(ValueError, match="below 3 per user"):
        synthetic_sequences(100, 10, 200, cache_dir=str(tmp_path))
