"""Tokenise-once data path: integer columns equal the per-sample tokenizer, the collator only pads, bad rows fail
loudly, and length-grouped sampling reads the stored lengths."""

import random

import pytest
import torch
from datasets import Dataset, DatasetDict

from tests.conftest import tiny_onerec, tiny_pretrainer
from trainers.alignment import PreferenceDataCollator
from trainers.data import (
    TOKENIZED_COLUMNS,
    build_session_samples,
    leave_one_out_split,
    tokenize_session_samples,
)
from trainers.data.collation import check_batch_columns, pad_rows
from trainers.pretraining import SessionDataCollator, TokenizedSessionCollator, history_lengths


@pytest.fixture(scope="module")
def tokenizer(forty_item_tokenizer):
    return forty_item_tokenizer


@pytest.fixture(scope="module")
def samples():
    generator = random.Random(0)
    sequences = Dataset.from_dict(
        {
            "user_id": [f"u{u}" for u in range(30)],
            "item_ids": [[f"i{generator.randrange(40)}" for _ in range(generator.randint(3, 25))] for _ in range(30)],
        }
    )
    return build_session_samples(leave_one_out_split(sequences), max_history=20, session_length=4)


@pytest.mark.parametrize("max_items,session_length", [(20, 4), (3, 2), (1, 1)])
def test_tokenized_columns_equal_the_tokenizer_row_by_row(tokenizer, samples, max_items, session_length):
    tokenized = tokenize_session_samples(
        samples, tokenizer, max_history_items=max_items, session_length=session_length, batch_size=7
    )  # several map batches
    assert isinstance(tokenized, DatasetDict)
    for split in ("train", "validation", "test"):
        for row in tokenized[split]:
            assert row["input_ids"] == tokenizer.encode_history(row["history"], max_items=max_items)
            assert row["labels"] == tokenizer.encode_session(row["target"][:session_length])
            assert row["num_history_items"] == min(len(row["history"]), max_items)


def test_collator_gives_the_reference_collators_batches(tokenizer, samples):
    tokenized = tokenize_session_samples(samples["train"], tokenizer, max_history_items=5, session_length=3)
    slim = tokenized.select_columns(list(TOKENIZED_COLUMNS))
    reference, fast = SessionDataCollator(tokenizer, 5, 3), TokenizedSessionCollator(tokenizer.pad_token_id)
    generator = random.Random(1)
    for _ in range(10):
        indices = generator.sample(range(len(tokenized)), 9)
        expected, got = reference(tokenized.__getitems__(indices)), fast(slim.__getitems__(indices))
        assert set(got) == {"input_ids", "attention_mask", "labels"}
        for key in expected:
            assert got[key].dtype == torch.long and torch.equal(got[key], expected[key]), key


def test_check_batch_columns_names_the_missing_column_and_the_builder(tokenizer):
    check_batch_columns([{"history": [], "target": []}], ("history", "target"), "build()")
    with pytest.raises(ValueError, match="Empty batch"):
        check_batch_columns([], ("history",), "build()")
    with pytest.raises(KeyError, match=r"missing \['target'\].*has \['history'\].*build_session_samples"):
        check_batch_columns([{"history": []}], ("history", "target"), "build_session_samples(...)")
    # The collators all go through it.
    with pytest.raises(KeyError, match=r"missing \['target'\].*build_session_samples"):
        SessionDataCollator(tokenizer)([{"history": ["i1"]}])
    with pytest.raises(KeyError, match=r"missing \['chosen'\].*mine_preference_pairs"):
        PreferenceDataCollator(tokenizer)([{"history": ["i1"], "rejected": ["i2"]}])


def test_pad_rows_pads_and_masks():
    padded, mask = pad_rows([[5, 6, 7], [8], []], pad_value=-1)
    assert padded.tolist() == [[5, 6, 7], [8, -1, -1], [-1, -1, -1]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    assert pad_rows([[1]], 0, width=3)[0].tolist() == [[1, 0, 0]]
    with pytest.raises(ValueError, match="shorter than the longest row"):
        pad_rows([[1, 2]], 0, width=1)


def test_unknown_item_and_empty_rows_are_named(tokenizer):
    bad = Dataset.from_dict({"user_id": ["u1", "u2"], "history": [["i1"], ["i2", "nope"]], "target": [["i3"], ["i4"]]})
    with pytest.raises(ValueError, match=r"Unknown item id 'nope' in the history of user 'u2'"):
        tokenize_session_samples(bad, tokenizer, max_history_items=5, session_length=1)
    empty = Dataset.from_dict({"user_id": ["u1", "u2"], "history": [["i1"], ["i2"]], "target": [["i3"], []]})
    with pytest.raises(ValueError, match=r"user 'u2'.*empty target"):
        tokenize_session_samples(empty, tokenizer, max_history_items=5, session_length=1)
    with pytest.raises(ValueError, match="'history' and 'target'"):
        tokenize_session_samples(
            Dataset.from_dict({"items": [["i1"]]}), tokenizer, max_history_items=5, session_length=1
        )
    with pytest.raises(ValueError, match="session_length=0"):
        tokenize_session_samples(bad, tokenizer, max_history_items=5, session_length=0)
    with pytest.raises(KeyError, match="tokenize_session_samples"):
        TokenizedSessionCollator(tokenizer.pad_token_id)([{"history": ["i1"], "target": ["i2"]}])


def test_pretrainer_groups_tokenized_samples_by_stored_length(tokenizer, samples, tmp_path):
    tokenized = tokenize_session_samples(samples["train"], tokenizer, max_history_items=20, session_length=4)
    slim = tokenized.select_columns(list(TOKENIZED_COLUMNS)).shuffle(seed=2)
    assert history_lengths(slim) == [min(n, 20) for n in slim["num_history_items"]]
    model = tiny_onerec(tokenizer, session_length=4)
    trainer = tiny_pretrainer(
        model,
        tokenizer,
        TokenizedSessionCollator(tokenizer.pad_token_id),
        tmp_path,
        train_dataset=slim,
        per_device_train_batch_size=4,
        seed=0,
    )
    batches = list(trainer.get_train_dataloader())
    assert sum(len(batch["input_ids"]) for batch in batches) == len(slim)
    grouped_padding = sum(int((batch["attention_mask"] == 0).sum()) for batch in batches)
    trainer.args.train_sampling_strategy = "random"
    random_padding = sum(int((batch["attention_mask"] == 0).sum()) for batch in trainer.get_train_dataloader())
    assert grouped_padding < random_padding
    loss = model(**batches[0]).loss
    assert torch.isfinite(loss)


def test_early_stopping_needs_a_restorable_best_checkpoint(tokenizer, samples, tmp_path):
    from transformers import EarlyStoppingCallback

    model = tiny_onerec(tokenizer, session_length=4)
    validation = tokenize_session_samples(samples["validation"], tokenizer, max_history_items=20, session_length=4)
    collator = TokenizedSessionCollator(tokenizer.pad_token_id)
    with pytest.raises(ValueError, match="load_best_model_at_end"):
        tiny_pretrainer(model, tokenizer, collator, tmp_path, early_stopping_patience=2)
    trainer = tiny_pretrainer(
        model,
        tokenizer,
        collator,
        tmp_path,
        eval_dataset=validation,
        early_stopping_patience=2,
        load_best_model_at_end=True,
        metric_for_best_model="loss",
        eval_strategy="epoch",
        save_strategy="epoch",
    )
    stoppers = [c for c in trainer.callback_handler.callbacks if isinstance(c, EarlyStoppingCallback)]
    assert len(stoppers) == 1 and stoppers[0].early_stopping_patience == 2
