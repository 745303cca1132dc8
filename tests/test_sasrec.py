"""SASRec baseline: learns a successor rule, is causal, ranks only real unexcluded items, plugs into the evaluator."""

import json

import pytest
import torch
from datasets import Dataset, DatasetDict

from trainers.baselines.sasrec import PAD_ID, SASRec, SASRecConfig, SASRecRecommender, left_pad, trim_padding
from trainers.evaluation import Recommender, evaluate_recommender

NUM_ITEMS = 12


def cyclic_splits(num_users: int = 48, num_items: int = NUM_ITEMS) -> DatasetDict:
    """Every user walks the cycle 1 -> 2 -> ... -> num_items -> 1 from a different start, for 5 to 11 steps
    (varied lengths, so that the left-padded positions carry no shortcut); leave-one-out splits."""
    rows = [[str((user + step) % num_items + 1) for step in range(5 + user % 7)] for user in range(num_users)]
    users = [str(user) for user in range(num_users)]

    def split(cut):
        return Dataset.from_dict({"user_id": users, "item_ids": [row[: len(row) - cut] for row in rows]})

    return DatasetDict({"train": split(2), "validation": split(1), "test": split(0)})


def successor(item: str) -> str:
    return str(int(item) % NUM_ITEMS + 1)


def tiny_config(**overrides) -> SASRecConfig:
    values = dict(
        hidden_size=32,
        num_blocks=1,
        num_heads=2,
        ffn_size=32,
        max_len=10,
        dropout=0.1,
        lr=1e-2,
        batch_size=16,
        epochs=12,
        patience=0,
        device="cpu",
        seed=0,
    )
    values.update(overrides)
    return SASRecConfig(**values)


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(2)
    return SASRecRecommender.fit(cyclic_splits(), tiny_config(), progress=False)


def test_learns_the_successor(trained):
    assert isinstance(trained, Recommender)
    histories = [
        [str((start + step) % NUM_ITEMS + 1) for step in range(length)]
        for start in range(NUM_ITEMS)
        for length in (3, 6, 9)
    ]
    truth = [successor(history[-1]) for history in histories]
    top1 = trained.rank(histories, k=1, exclude_history=True)
    assert sum(ranked == [item] for ranked, item in zip(top1, truth)) / len(histories) >= 0.9
    # Kept history: with tied input/output embeddings the last item itself tends to score first (no sequence
    # here, nor in Amazon Beauty, repeats an item), so the successor is still in the top 2.
    top2 = trained.rank(histories, k=2, exclude_history=False)
    assert sum(item in ranked for ranked, item in zip(top2, truth)) / len(histories) >= 0.9
    assert trained.history[-1]["val_recall@10"] >= 0.9
    assert trained.history[-1]["train_loss"] < trained.history[0]["train_loss"]
    assert trained.training_summary["epochs_run"] == 12


def test_evaluate_recommender_and_internal_validation_agree(trained):
    splits = cyclic_splits()
    samples = [
        {"user_id": u, "history": row[:-1][-4:], "target": [row[-1]]}
        for u, row in zip(splits["test"]["user_id"], splits["test"]["item_ids"])
    ]
    for exclude in (True, False):
        metrics, ranked = evaluate_recommender(trained, samples, ks=(1, 5), exclude_history=exclude, progress=False)
        encoded = [trained.encode(sample["history"]) for sample in samples]
        targets = [trained.index[sample["target"][0]] for sample in samples]
        internal = trained.evaluate(encoded, targets, ks=(1, 5), exclude_history=exclude)
        for key, value in internal.items():
            assert metrics[key] == pytest.approx(value)
        assert all(len(items) == 5 for items in ranked)
    assert metrics["recall@5"] >= 0.9  # history kept


def test_causal_mask():
    torch.manual_seed(0)
    model = SASRec(NUM_ITEMS, tiny_config(num_blocks=2)).eval()
    inputs = torch.tensor([[0, 0, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6, 7, 8]])
    changed = inputs.clone()
    changed[:, 5:] = torch.tensor([11, 12, 1])
    with torch.no_grad():
        before, after = model(inputs), model(changed)
    torch.testing.assert_close(before[:, :5], after[:, :5])
    assert not torch.allclose(before[:, 5:], after[:, 5:])
    # Padding columns that every row shares can be trimmed without changing anything.
    with torch.no_grad():
        full = model(left_pad([[3, 4, 5]], 10))
        (trimmed_input,) = trim_padding(left_pad([[3, 4, 5]], 10))
        trimmed = model(trimmed_input)
    assert trimmed_input.shape == (1, 3)
    torch.testing.assert_close(full[:, -3:], trimmed)


def test_exclusion_padding_and_duplicates(trained):
    histories = [["1", "2", "3"], [str(i) for i in range(1, NUM_ITEMS)], [], ["5", "unknown-item", "6"]]
    for exclude in (True, False):
        ranked = trained.rank(histories, k=NUM_ITEMS + 5, exclude_history=exclude)
        for history, items in zip(histories, ranked):
            assert len(items) == len(set(items))
            assert str(PAD_ID) not in items and all(item in trained.index for item in items)
            if exclude:
                assert not set(items) & set(history)
                assert len(items) == NUM_ITEMS - len(set(history) & set(trained.index))
            else:
                assert len(items) == NUM_ITEMS
    # Every item of the catalogue in the history: nothing left to recommend.
    assert trained.rank([[str(i) for i in range(1, NUM_ITEMS + 1)]], k=3, exclude_history=True) == [[]]
    # A history longer than max_len (10) is excluded entirely, not just its newest max_len items.
    long_history = [str(i) for i in range(1, trained.config.max_len + 2)]
    assert trained.rank([long_history], k=NUM_ITEMS, exclude_history=True) == [[str(trained.config.max_len + 2)]]


def test_deterministic_bce_and_save_load(tmp_path, trained):
    splits = cyclic_splits(num_users=24)
    config = tiny_config(epochs=2, loss="bce")
    first = SASRecRecommender.fit(splits, config, progress=False)
    second = SASRecRecommender.fit(splits, config, progress=False)
    assert [r["train_loss"] for r in first.history] == [r["train_loss"] for r in second.history]
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    trained.save_pretrained(tmp_path)
    loaded = SASRecRecommender.from_pretrained(tmp_path)
    histories = [["1", "2"], ["7", "8", "9"]]
    assert loaded.rank(histories, 5, True) == trained.rank(histories, 5, True)
    assert json.loads((tmp_path / "sasrec_config.json").read_text())["item_ids"] == trained.item_ids


def test_early_stopping_restores_best():
    config = tiny_config(epochs=30, patience=2, lr=3e-2)
    recommender = SASRecRecommender.fit(cyclic_splits(num_users=24), config, progress=False)
    summary = recommender.training_summary
    scores = [record["val_ndcg@10"] for record in recommender.history]
    assert summary["best_epoch"] == 1 + scores.index(max(scores))
    assert summary["best_val_ndcg@10"] == max(scores)
    assert summary["epochs_run"] == summary["best_epoch"] + 2 < 30 and "early stopping" in summary["stop_reason"]
    # The restored weights are the best epoch's: validating them again gives its score.
    rows = cyclic_splits(num_users=24)["validation"]["item_ids"]
    histories = [recommender.encode(row[:-1]) for row in rows]
    targets = [recommender.index[row[-1]] for row in rows]
    assert recommender.evaluate(histories, targets, ks=(10,))["ndcg@10"] == pytest.approx(max(scores))


def test_bad_config():
    with pytest.raises(ValueError, match="loss"):
        SASRecConfig(loss="bpr")
    with pytest.raises(ValueError, match="num_heads"):
        SASRecConfig(hidden_size=64, num_heads=3)


def test_item_embeddings_feed_the_array_semantic_id_source(trained):
    from tokenization_semantic_id import ItemEmbeddingConfig, build_item_embeddings

    vectors = trained.item_embeddings()
    assert vectors.shape == (NUM_ITEMS, trained.config.hidden_size) and vectors.dtype.name == "float32"
    # Row j is item_ids[j]'s vector (index j + 1 in the model; 0 is padding).
    item = trained.item_ids[3]
    assert torch.equal(torch.from_numpy(vectors[3]), trained.model.item_embedding.weight[trained.index[item]].detach())
    loaded = build_item_embeddings(ItemEmbeddingConfig(source="array"), trained.item_ids, array=vectors)
    assert torch.allclose(loaded, torch.from_numpy(vectors))
