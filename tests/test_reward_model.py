"""Session reward model (paper §3.3.1): config checks, Eq. 5-7 mechanics, padding, save/load, learning, data."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset, DatasetDict
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoConfig, AutoModel

from modeling_onerec.configuration_reward import OneRecRewardConfig
from modeling_onerec.modeling_reward import (
    OneRecRewardModel,
    OneRecRewardOutput,
    masked_sum_pool,
    register_reward_auto_classes,
    reward_bce_loss,
)
from tests.conftest import CPU_TRAINING
from trainers.alignment.reward_model import (
    RewardDataCollator,
    RewardItemVocabulary,
    RewardModelTrainer,
    RewardModelTrainingConfig,
)
from trainers.data import build_reward_samples, default_reward_names
from trainers.evaluation import format_auc_table, reward_metrics, roc_auc

CONFIG_ERRORS = (ValueError, StrictDataclassError)  # @strict wraps the ValueError of validate_architecture


def tiny_config(**overrides) -> OneRecRewardConfig:
    values = dict(
        num_items=30,
        hidden_size=16,
        num_attention_heads=2,
        num_session_layers=1,
        tower_hidden_size=8,
        reward_names=("liked", "engaged"),
        max_history_items=8,
        max_session_items=4,
        dropout=0.0,
        initializer_range=0.2,
    )  # larger than the default 0.02, so that outputs differ visibly
    values.update(overrides)
    return OneRecRewardConfig(**values)


def tiny_model(seed: int = 0, **overrides) -> OneRecRewardModel:
    torch.manual_seed(seed)
    return OneRecRewardModel(tiny_config(**overrides)).eval()


HISTORY = torch.tensor([[1, 2, 3, 4], [5, 6, 0, 0], [7, 0, 0, 0]])
SESSION = torch.tensor([[10, 11, 12], [13, 0, 0], [14, 15, 0]])


# ---------------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(num_items=1), "num_items must be >= 2"),
        (dict(hidden_size=10, num_attention_heads=3), "divisible by num_attention_heads"),
        (dict(reward_names=()), "at least one reward tower"),
        (dict(reward_names=("liked", "liked")), "distinct"),
        (dict(reward_names=("not valid",)), "identifiers"),
        (dict(dropout=1.0), "dropout must be in"),
        (dict(max_session_items=0), "max_session_items must be >= 1"),
        (dict(num_session_layers=-1), "num_session_layers"),
        (dict(initializer_range=0.0), "initializer_range"),
        (dict(num_items="30"), "num_items"),  # strict type check
    ],
)
def test_config_rejects_invalid_fields_naming_them(overrides, message):
    with pytest.raises(CONFIG_ERRORS, match=message):
        tiny_config(**overrides)


def test_config_round_trips_through_json(tmp_path):
    config = tiny_config(reward_names=["engaged"], intermediate_size=24)
    assert config.reward_names == ("engaged",) and config.num_rewards == 1
    config.save_pretrained(tmp_path)
    stored = json.loads((tmp_path / "config.json").read_text())
    assert stored["model_type"] == "onerec_reward" and stored["reward_names"] == ["engaged"]
    loaded = OneRecRewardConfig.from_pretrained(tmp_path)
    assert loaded.reward_names == ("engaged",) and loaded.session_intermediate_size == 24
    assert tiny_config().session_intermediate_size == 64  # 4 * hidden_size by default


# ---------------------------------------------------------------------------------------------------- model


def test_forward_shapes_loss_and_tuple_output():
    model = tiny_model()
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 1.0]])
    out = model(history_ids=HISTORY, session_ids=SESSION, labels=labels)
    assert isinstance(out, OneRecRewardOutput)
    assert out.logits.shape == out.rewards.shape == (3, 2)
    torch.testing.assert_close(out.rewards, torch.sigmoid(out.logits))
    torch.testing.assert_close(out.loss, reward_bce_loss(out.logits, labels))
    as_tuple = model(history_ids=HISTORY, session_ids=SESSION, labels=labels, return_dict=False)
    assert len(as_tuple) == 3 and torch.equal(as_tuple[1], out.logits)
    assert model(history_ids=HISTORY, session_ids=SESSION).loss is None
    out.loss.backward()  # gradients reach the embeddings through both attention paths
    assert model.item_embeddings.weight.grad[1:16].abs().sum() > 0


def test_padding_anywhere_does_not_change_rewards():
    model = tiny_model()
    reference = model.score_sessions(HISTORY, SESSION)
    # Extra padded columns, and padding moved between real items.
    history = torch.tensor([[0, 1, 2, 0, 3, 4, 0, 0], [5, 0, 0, 6, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 7]])
    session = torch.tensor([[10, 0, 11, 12], [0, 0, 13, 0], [14, 0, 0, 15]])
    torch.testing.assert_close(model.score_sessions(history, session), reference, atol=1e-5, rtol=1e-5)
    # A row without any history is allowed (cold start) and does not depend on the padding width either.
    cold = model.score_sessions(torch.zeros(1, 3, dtype=torch.long), SESSION[:1])
    cold_wide = model.score_sessions(torch.zeros(1, 8, dtype=torch.long), SESSION[:1])
    assert torch.isfinite(cold).all()
    torch.testing.assert_close(cold, cold_wide)
    assert (cold - reference[:1]).abs().max() > 1e-3  # the history does matter


def test_sum_pooling_ignores_padded_slots_and_sums_real_ones():
    hidden = torch.randn(2, 4, 3)
    mask = torch.tensor([[True, False, True, False], [False, False, False, True]])
    corrupted = hidden.clone()
    corrupted[~mask] = float("nan")  # whatever a padded slot holds, it must not leak
    pooled = masked_sum_pool(corrupted, mask)
    torch.testing.assert_close(pooled, torch.stack([hidden[0, 0] + hidden[0, 2], hidden[1, 3]]))


def test_rewards_do_not_depend_on_item_order():
    # No position embeddings anywhere: order within history and session is irrelevant by design.
    model = tiny_model()
    reference = model.score_sessions(HISTORY, SESSION)
    shuffled = model.score_sessions(HISTORY[:, [3, 1, 0, 2]], SESSION[:, [2, 0, 1]])
    torch.testing.assert_close(shuffled, reference, atol=1e-5, rtol=1e-5)


def test_session_items_interact_only_with_self_attention_layers():
    # With num_session_layers=0 each item contributes independently, so the reward of {a, b} is a function of
    # e_a + e_b; with self-attention (Eq. 5) it is not. Check the pooled input is additive without layers.
    model = tiny_model(num_session_layers=0)
    assert model.session_encoder is None
    with torch.no_grad():
        history = HISTORY[:1]
        both = model.item_encoder(
            model.item_embeddings(torch.tensor([[10, 11]])), model.item_embeddings(history), history != 0
        ).sum(dim=1)
        alone = [
            model.item_encoder(
                model.item_embeddings(torch.tensor([[i]])), model.item_embeddings(history), history != 0
            ).sum(dim=1)
            for i in (10, 11)
        ]
    torch.testing.assert_close(both, alone[0] + alone[1])
    assert tiny_model().session_encoder is not None


def test_reward_bce_loss_equals_hand_computation():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 3, generator=generator)
    labels = torch.rand(5, 3, generator=generator)
    expected = sum(F.binary_cross_entropy_with_logits(logits[:, t], labels[:, t]) for t in range(3))
    torch.testing.assert_close(reward_bce_loss(logits, labels), expected)
    # A masked label drops its term; the batch mean still divides by the batch size.
    mask = torch.ones(5, 3)
    mask[0, 1] = mask[3, 2] = 0
    terms = F.binary_cross_entropy_with_logits(logits, labels, reduction="none") * mask
    torch.testing.assert_close(reward_bce_loss(logits, labels, mask), terms.sum() / 5)
    # By hand: logit 0 costs log 2 whatever the label; two towers, one sample -> 2 log 2.
    assert math.isclose(
        float(reward_bce_loss(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]))), 2 * math.log(2), rel_tol=1e-6
    )
    with pytest.raises(ValueError, match="labels must have the shape"):
        reward_bce_loss(logits, labels[:, :2])
    with pytest.raises(ValueError, match="label_mask must have the shape"):
        reward_bce_loss(logits, labels, mask[:4])


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    register_reward_auto_classes()
    register_reward_auto_classes()  # idempotent
    model = tiny_model(seed=3)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    for loaded in (OneRecRewardModel.from_pretrained(tmp_path), AutoModel.from_pretrained(tmp_path)):
        assert isinstance(loaded, OneRecRewardModel)
        loaded.eval()
        assert torch.equal(
            loaded(history_ids=HISTORY, session_ids=SESSION).logits,
            model(history_ids=HISTORY, session_ids=SESSION).logits,
        )
    assert isinstance(AutoConfig.from_pretrained(tmp_path), OneRecRewardConfig)


def test_score_sessions_restores_mode_and_needs_no_grad():
    model = tiny_model(dropout=0.5).train()
    first, second = model.score_sessions(HISTORY, SESSION), model.score_sessions(HISTORY, SESSION)
    assert torch.equal(first, second)  # eval mode: no dropout noise
    assert not first.requires_grad and model.training


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(history_ids=torch.tensor([[1, 30]])), "history_ids holds indices outside"),
        (dict(session_ids=torch.tensor([[-1, 2]])), "session_ids holds indices outside"),
        (dict(session_ids=torch.tensor([[0, 0]])), r"session_ids rows \[0\] hold only padding"),
        (dict(history_ids=torch.tensor([[1], [2]])), "batch size"),
        (dict(history_ids=torch.tensor([[1.0]])), "history_ids must be an integer tensor"),
        (dict(session_ids=torch.tensor([1, 2])), "session_ids must be an integer tensor"),
        (dict(history_ids=torch.ones(1, 9, dtype=torch.long)), "history_ids has 9 positions"),
        (dict(labels=torch.ones(1, 3)), r"labels must have shape \(batch, num_rewards\)"),
        (dict(labels=torch.ones(1, 2), label_mask=torch.ones(2, 2)), "label_mask must have shape"),
        (dict(labels=torch.tensor([[2.0, 0.0]])), r"labels must lie in \[0, 1\]"),
        (dict(label_mask=torch.ones(1, 2)), "label_mask was given without labels"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(kwargs, message):
    inputs = {"history_ids": torch.tensor([[1, 2]]), "session_ids": torch.tensor([[3, 0]]), **kwargs}
    with pytest.raises(ValueError, match=message):
        tiny_model()(**inputs)


# ---------------------------------------------------------------------------------------------------- metrics


def test_roc_auc_matches_hand_examples():
    # Pairs (pos, neg): (0.35 > 0.1), (0.35 < 0.4), (0.8 > 0.1), (0.8 > 0.4) -> 3 of 4.
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert roc_auc(np.array([0.5, 0.5, 0.9]), np.array([1, 0, 0])) == pytest.approx(0.25)  # a tie counts 1/2
    assert roc_auc(np.array([3.0, 1.0]), np.array([1, 0])) == 1.0
    assert math.isnan(roc_auc(np.array([0.1, 0.2]), np.array([1, 1])))


def test_reward_metrics_skip_masked_labels_and_threshold_soft_ratings():
    logits = np.array([[2.0, 0.1], [1.0, 0.9], [-1.0, 0.5], [0.0, -3.0]])
    labels = np.array([[1.0, 0.9], [0.0, 0.8], [0.0, 0.5], [1.0, 0.0]])
    mask = np.array([[1, 1], [1, 1], [1, 1], [0, 1]])  # sample 3 lacks 'liked'
    metrics = reward_metrics(logits, labels, mask, ("liked", "rating"))
    assert metrics["auc_liked"] == 1.0 and metrics["samples_liked"] == 3  # with sample 3 it would be 0.75
    # rating positives: labels >= 0.75 -> samples 0, 1; scores 0.1, 0.9 vs 0.5, -3 -> 3 of 4 pairs.
    assert metrics["auc_rating"] == pytest.approx(0.75) and metrics["positive_rate_rating"] == 0.5
    assert "pearson_rating" in metrics and "pearson_liked" not in metrics
    table = format_auc_table(metrics, ("liked", "rating"))
    assert "| liked | 3 | 0.333 | 1.0000 |" in table


# ---------------------------------------------------------------------------------------------------- data


def tiny_feedback() -> DatasetDict:
    """Two users with ratings and timestamps; item ids 'i0'..'i29'."""
    hour = 3600
    sequences = Dataset.from_dict(
        {
            "user_id": ["u1", "u2", "u3"],
            # u1: a time session of 5 items, a 2-hour gap, then 3 items.
            "item_ids": [["i0", "i1", "i2", "i3", "i4", "i5", "i6", "i7"], ["i8", "i9", "i10"], ["i11", "i12"]],
            "timestamps": [[0, 10, 20, 30, 40, 40 + 2 * hour, 50 + 2 * hour, 60 + 2 * hour], [0, 5, 9], [0, 1]],
            "ratings": [[3, 5, 5, 4, 2, 5, 5, 1], [1, 4, 4], [5, 5]],
        }
    )
    items = Dataset.from_dict({"item_id": [f"i{i}" for i in range(30)], "text": [""] * 30})
    return DatasetDict({"sequences": sequences, "items": items})


def test_build_reward_samples_labels_sessions_and_negatives():
    data = tiny_feedback()
    samples = build_reward_samples(data, session_length=3, test_user_fraction=0.0, seed=0)
    assert samples["test"].num_rows == 0
    real = samples["train"].filter(lambda row: not row["sampled"])
    rows = {(row["user_id"], tuple(row["session"])): row for row in real}
    # u1: pieces [1, 4) and [4, 5) of the first time session, then [5, 8) after the gap; u2: [1, 3); u3: [1, 2).
    assert sorted(rows) == [
        ("u1", ("i1", "i2", "i3")),
        ("u1", ("i4",)),
        ("u1", ("i5", "i6", "i7")),
        ("u2", ("i9", "i10")),
        ("u3", ("i12",)),
    ]
    names = default_reward_names(data["sequences"])
    assert names == ("liked", "loved", "rating", "engaged")
    # ratings 5, 5, 4: liked (3/3 >= 4), loved (2/3 == 5), rating mean 14/3 -> (14/3 - 1) / 4.
    first = rows[("u1", ("i1", "i2", "i3"))]
    assert first["history"] == ["i0"] and first["label_mask"] == [1.0] * 4
    assert first["labels"] == pytest.approx([1.0, 1.0, (14 / 3 - 1) / 4, 1.0])
    assert rows[("u1", ("i4",))]["labels"] == pytest.approx([0.0, 0.0, 0.25, 1.0])  # rated 2
    # 5, 5, 1: liked and loved by majority; history is everything before the piece.
    assert rows[("u1", ("i5", "i6", "i7"))]["labels"] == pytest.approx([1.0, 1.0, (11 / 3 - 1) / 4, 1.0])
    assert rows[("u1", ("i5", "i6", "i7"))]["history"] == ["i0", "i1", "i2", "i3", "i4"]
    assert rows[("u2", ("i9", "i10"))]["labels"] == pytest.approx([1.0, 0.0, 0.75, 1.0])  # 4, 4: liked only

    negatives = samples["train"].filter(lambda row: row["sampled"])
    assert negatives.num_rows == real.num_rows  # one sampled session per real one
    sequences = dict(zip(data["sequences"]["user_id"], data["sequences"]["item_ids"]))
    for positive, negative in zip(real, negatives):
        assert negative["user_id"] == positive["user_id"] and negative["history"] == positive["history"]
        assert len(negative["session"]) == len(positive["session"]) == len(set(negative["session"]))
        assert not set(negative["session"]) & set(sequences[negative["user_id"]])  # never an item the user saw
        assert negative["labels"] == [0.0] * 4 and negative["label_mask"] == [0.0, 0.0, 0.0, 1.0]


def test_build_reward_samples_splits_users_deterministically_and_checks_targets():
    data = tiny_feedback()
    first = build_reward_samples(data, session_length=2, test_user_fraction=0.34, seed=7)
    again = build_reward_samples(data, session_length=2, test_user_fraction=0.34, seed=7)
    assert first["train"].to_dict() == again["train"].to_dict() and first["test"].to_dict() == again["test"].to_dict()
    train_users, test_users = set(first["train"]["user_id"]), set(first["test"]["user_id"])
    assert len(test_users) == 1 and not train_users & test_users
    # Without timestamps the whole sequence is cut into fixed pieces; without ratings only 'engaged' exists.
    implicit = data["sequences"].remove_columns(["ratings", "timestamps"])
    samples = build_reward_samples(implicit, session_length=4, test_user_fraction=0.0)
    u1 = [row["session"] for row in samples["train"] if row["user_id"] == "u1" and not row["sampled"]]
    assert u1 == [["i1", "i2", "i3", "i4"], ["i5", "i6", "i7"]]
    assert set(map(tuple, samples["train"]["labels"])) == {(1.0,), (0.0,)}
    with pytest.raises(ValueError, match="need a 'ratings' column"):
        build_reward_samples(implicit, reward_names=("liked", "engaged"))
    with pytest.raises(ValueError, match="negatives_per_session"):
        build_reward_samples(data, negatives_per_session=0)
    with pytest.raises(ValueError, match="session_length"):
        build_reward_samples(data, session_length=0)


def test_vocabulary_and_collator(tmp_path):
    vocabulary = RewardItemVocabulary.from_dataset(tiny_feedback())
    assert len(vocabulary) == 30 and vocabulary.num_indices == 31
    assert vocabulary.encode(["i0", "i10", "i2"]) == [1, 3, 13]  # non-numeric ids sort as strings
    assert vocabulary.decode([13, 0, 3]) == ["i2", "i10"]  # padding skipped
    with pytest.raises(KeyError, match="'nope' is not in the reward model's vocabulary"):
        vocabulary.encode(["nope"])
    vocabulary.save_pretrained(tmp_path)
    assert RewardItemVocabulary.from_pretrained(tmp_path).item_ids == vocabulary.item_ids
    with pytest.raises(ValueError, match="distinct"):
        RewardItemVocabulary(["a", "a"])

    collator = RewardDataCollator(vocabulary, max_history_items=2, max_session_items=2)
    batch = collator(
        [
            {"history": ["i0", "i1", "i2"], "session": ["i3", "i4", "i5"], "labels": [1.0], "label_mask": [1.0]},
            {"history": [], "session": ["i6"], "labels": [0.0], "label_mask": [0.0]},
        ]
    )
    encode = vocabulary.encode
    assert batch["history_ids"].tolist() == [encode(["i1", "i2"]), [0, 0]]  # newest history kept
    assert batch["session_ids"].tolist() == [encode(["i3", "i4"]), encode(["i6"]) + [0]]  # first items kept
    assert batch["labels"].tolist() == [[1.0], [0.0]] and batch["label_mask"].dtype == torch.float32


# ---------------------------------------------------------------------------------------------------- learning


def genre_task(num_users: int, seed: int) -> Dataset:
    """Items 'g0-*' and 'g1-*': a user's history comes from one genre; 'liked' = the session shares it. Only the
    interaction of history and session can solve it (each item is liked as often as not)."""
    rng = np.random.default_rng(seed)
    rows = {"user_id": [], "history": [], "session": [], "labels": [], "label_mask": []}
    for user in range(num_users):
        genre = int(rng.integers(2))
        for _ in range(4):
            other = int(rng.integers(2))
            rows["user_id"].append(f"{seed}-{user}")
            rows["history"].append([f"g{genre}-{i}" for i in rng.choice(10, size=int(rng.integers(2, 7)))])
            rows["session"].append(
                [f"g{other}-{i}" for i in rng.choice(10, size=int(rng.integers(1, 4)), replace=False)]
            )
            rows["labels"].append([float(genre == other)])
            rows["label_mask"].append([1.0])
    return Dataset.from_dict(rows)


def test_tiny_training_learns_a_learnable_task(tmp_path):
    vocabulary = RewardItemVocabulary([f"g{g}-{i}" for g in range(2) for i in range(10)])
    config = tiny_config(
        num_items=vocabulary.num_indices, reward_names=("liked",), hidden_size=16, tower_hidden_size=16
    )
    torch.manual_seed(0)
    model = OneRecRewardModel(config)
    args = RewardModelTrainingConfig(
        output_dir=str(tmp_path),
        num_train_epochs=12,
        per_device_train_batch_size=32,
        learning_rate=1e-2,
        eval_strategy="no",
        logging_steps=1000,
        save_strategy="steps",
        save_steps=36,
        seed=0,
        **CPU_TRAINING,
    )
    trainer = RewardModelTrainer(model=model, args=args, train_dataset=genre_task(80, seed=1), vocabulary=vocabulary)
    trainer.train()
    held_out = genre_task(40, seed=2)  # different users
    metrics = trainer.predict(held_out).metrics
    assert metrics["test_samples_liked"] == 160
    assert metrics["test_auc_liked"] > 0.8, metrics
    trainer.save_model(str(tmp_path / "final"))
    assert (tmp_path / "final" / RewardItemVocabulary.FILE_NAME).is_file()
    # Checkpoints carry it too (the vocabulary is the Trainer's processing_class), so a resumed run can be served.
    assert (tmp_path / f"checkpoint-{trainer.state.global_step}" / RewardItemVocabulary.FILE_NAME).is_file()


# ---------------------------------------------------------------------------------------------------- real data


def test_ml100k_reward_samples_are_consistent_with_ratings(ml100k_dir):
    from trainers.data import load_named_dataset

    data = load_named_dataset("ml-100k", data_path=str(ml100k_dir))
    samples = build_reward_samples(data, session_length=5, seed=0)
    train, test = samples["train"], samples["test"]
    assert not set(train["user_id"]) & set(test["user_id"])
    assert abs(len(set(test["user_id"])) - round(0.2 * 943)) <= 1
    ratings = {
        (user, item): rating
        for user, items, scores in zip(
            data["sequences"]["user_id"], data["sequences"]["item_ids"], data["sequences"]["ratings"]
        )
        for item, rating in zip(items, scores)
    }
    for row in train.select(range(0, train.num_rows, 997)):
        if row["sampled"]:
            assert row["label_mask"] == [0.0, 0.0, 0.0, 1.0]
            continue
        scores = np.array([ratings[(row["user_id"], item)] for item in row["session"]])
        assert 1 <= len(scores) <= 5
        assert row["labels"] == pytest.approx(
            [float((scores >= 4).mean() > 0.5), float((scores == 5).mean() > 0.5), (scores.mean() - 1) / 4, 1.0]
        )


# ---------------------------------------------------------------------------------------------------- scorer


def test_session_reward_scorer_matches_the_model_and_weights_towers():
    from trainers.alignment.reward_model import SessionRewardScorer

    model = tiny_model()
    vocabulary = RewardItemVocabulary([str(i) for i in range(1, 30)])  # item "k" -> index k
    histories = [["1", "2", "3"], ["5"]]
    sessions = [[["10", "11"], ["12"], ["13", "14", "15"]], [["16", "17"]]]
    towers = SessionRewardScorer(model, vocabulary).tower_rewards(histories, sessions)
    assert [t.shape for t in towers] == [(3, 2), (1, 2)]
    direct = model.score_sessions(torch.tensor([[1, 2, 3]]), torch.tensor([[13, 14, 15]]))
    assert torch.allclose(torch.from_numpy(towers[0][2]), direct[0], atol=1e-6)
    mean = SessionRewardScorer(model, vocabulary)(histories, sessions)
    assert mean[0] == pytest.approx(towers[0].mean(axis=1).tolist(), abs=1e-6)
    only_liked = SessionRewardScorer(model, vocabulary, weights={"liked": 2.0})(histories, sessions)
    assert only_liked[1] == pytest.approx([float(towers[1][0, 0])], abs=1e-6)
    with pytest.raises(ValueError, match="does not have"):
        SessionRewardScorer(model, vocabulary, weights={"watch_time": 1.0})
    with pytest.raises(KeyError, match="not in the reward model's vocabulary"):
        SessionRewardScorer(model, vocabulary)([["1"]], [[["999"]]])
