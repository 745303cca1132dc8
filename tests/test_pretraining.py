"""Session collator and the OneRec pretrainer on a tiny synthetic catalogue."""

import pytest
import torch
from datasets import Dataset

from tests.conftest import tiny_onerec, tiny_pretrainer
from trainers.pretraining import (
    OneRecPretrainingConfig,
    SessionDataCollator,
    check_process_count,
    global_batch_losses,
    history_lengths,
)


@pytest.fixture(scope="module")
def tokenizer(forty_item_tokenizer):
    return forty_item_tokenizer


def test_collator_encodes_history_and_session_labels(tokenizer):
    collator = SessionDataCollator(tokenizer, max_history_items=2, session_length=2)
    batch = collator(
        [{"history": ["i1", "i2", "i3"], "target": ["i4", "i5", "i6"]}, {"history": ["i7"], "target": ["i8"]}]
    )
    assert batch["input_ids"][0].tolist() == tokenizer.encode_history(["i2", "i3"])  # newest 2 kept
    assert batch["attention_mask"][1].sum() == len(tokenizer.encode_history(["i7"]))
    assert batch["labels"][0].tolist() == tokenizer.encode_session(["i4", "i5"])  # cut to session_length
    short = tokenizer.encode_session(["i8"])
    assert batch["labels"][1, : len(short)].tolist() == short and (batch["labels"][1, len(short) :] == -100).all()
    with pytest.raises(KeyError, match="history"):
        collator([{"items": ["i1"]}])


def test_pretrainer_learns_a_deterministic_successor_and_logs_moe_terms(tokenizer, tmp_path):
    # Each item is always followed by the next one: a learnable signal, so the NTP loss must fall.
    rows = [
        {"history": [f"i{(s + j) % 40}" for j in range(3)], "target": [f"i{(s + 3) % 40}", f"i{(s + 4) % 40}"]}
        for s in range(40)
    ]
    model = tiny_onerec(tokenizer, seed=0, session_length=2, dropout_rate=0.0)
    trainer = tiny_pretrainer(
        model,
        tokenizer,
        SessionDataCollator(tokenizer, 3, 2),
        tmp_path,
        train_dataset=Dataset.from_list(rows * 2),
        per_device_train_batch_size=16,
        num_train_epochs=20,
        learning_rate=1e-2,
        logging_steps=10,
        save_strategy="no",
        seed=0,
    )
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logs and all(
        {"ntp_loss", "aux_loss", "z_loss", "expert_load_max", "expert_load_min"} <= set(e) for e in logs
    )
    assert logs[-1]["ntp_loss"] < 0.6 * logs[0]["ntp_loss"]
    assert (tmp_path / "training_curves.png").exists() and (tmp_path / "expert_load.png").exists()
    # The trained model recommends through the same code path as serving (only real, new items).
    recommendations = model.eval().recommend(tokenizer, [rows[5]["history"]], num_sessions=2, num_beams=4)
    assert all(len(s.items) == 2 and not set(s.items) & set(rows[5]["history"]) for s in recommendations[0])


def test_history_lengths_follow_the_dataset_order():
    dataset = Dataset.from_list([{"history": ["i0"] * n, "target": ["i1"]} for n in (1, 2, 3, 4, 5)])
    shuffled = dataset.shuffle(seed=3).select([4, 0, 2])
    assert history_lengths(shuffled) == [len(h) for h in shuffled["history"]]


def test_default_sampler_groups_histories_of_similar_length(tokenizer, tmp_path):
    # Short-tailed history lengths as in real logs: length-grouped batches (the default) must see every sample once
    # and pad far less than random batches.
    lengths = [1 + min((7 * index) % 97, (11 * index) % 89) // 3 for index in range(800)]
    dataset = Dataset.from_list([{"history": [f"i{j % 40}" for j in range(n)], "target": ["i1"]} for n in lengths])
    model = tiny_onerec(tokenizer, session_length=1)
    tokens_per_item = len(tokenizer.encode_history(["i1", "i2"])) - len(tokenizer.encode_history(["i1"]))

    def padding_and_tokens(strategy):
        trainer = tiny_pretrainer(
            model,
            tokenizer,
            SessionDataCollator(tokenizer, 40, 1),
            tmp_path,
            train_dataset=dataset,
            per_device_train_batch_size=8,
            seed=0,
            train_sampling_strategy=strategy,
        )
        masks = [batch["attention_mask"] for batch in trainer.get_train_dataloader()]
        return sum(int((m == 0).sum()) for m in masks), sum(int(m.sum()) for m in masks), sum(len(m) for m in masks)

    assert OneRecPretrainingConfig(output_dir=str(tmp_path)).train_sampling_strategy == "group_by_length"
    grouped_padding, grouped_tokens, grouped_rows = padding_and_tokens("group_by_length")
    random_padding, random_tokens, random_rows = padding_and_tokens("random")
    assert grouped_rows == random_rows == 800 and grouped_tokens == random_tokens
    assert grouped_tokens - len(tokenizer.encode_history(["i1"])) * 800 == tokens_per_item * (sum(lengths) - 800)
    assert grouped_padding < random_padding / 4


def test_ranking_metrics_reach_callbacks_and_early_stopping_on_recall_stops(tokenizer, tmp_path):
    # Regression: the ranking metrics were logged after the Trainer had fired on_evaluate, so EarlyStoppingCallback
    # never saw eval_recall@10 ("early stopping is disabled") and runs went on to the last epoch.
    from transformers import TrainerCallback

    class Seen(TrainerCallback):
        keys = []

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            self.keys.append(set(metrics))

    rows = [{"history": [f"i{(s + j) % 40}" for j in range(3)], "target": [f"i{(s + 3) % 40}"]} for s in range(40)]
    dataset = Dataset.from_list(rows)
    seen = Seen()
    trainer = tiny_pretrainer(
        tiny_onerec(tokenizer, seed=0, session_length=1),
        tokenizer,
        SessionDataCollator(tokenizer, 3, 1),
        tmp_path,
        train_dataset=dataset,
        eval_dataset=dataset,
        ranking_eval_samples=dataset.select(range(8)),
        callbacks=[seen],
        per_device_train_batch_size=16,
        num_train_epochs=6,
        learning_rate=0.0,
        eval_strategy="epoch",
        save_strategy="epoch",
        load_best_model_at_end=True,
        metric_for_best_model="recall@10",
        early_stopping_patience=1,
    )
    trainer.train()
    assert seen.keys and all({"eval_loss", "eval_recall@10", "eval_ndcg@10"} <= keys for keys in seen.keys)
    # lr 0: recall never improves, so patience 1 stops after the second evaluation, long before epoch 6.
    assert len(seen.keys) == 2 and trainer.state.epoch == pytest.approx(2.0)
    assert trainer.state.best_metric == trainer.state.log_history[0]["eval_recall@10"]


def test_global_batch_losses_split_over_two_processes_sum_to_the_whole_batch(tokenizer):
    model = tiny_onerec(tokenizer, seed=0, session_length=3, dropout_rate=0.0).eval()
    rows = [
        {"history": [f"i{(s * 7 + j) % 40}" for j in range(1 + s % 4)], "target": [f"i{(s * 3 + j) % 40}" for j in range(1 + s % 3)]}
        for s in range(10)
    ]  # fmt: skip
    batch = SessionDataCollator(tokenizer, session_length=3)(rows)
    whole = model(**batch, output_router_logits=True)
    alone = global_batch_losses(whole, batch["labels"], model.config, lambda tensor: tensor)
    for name in ("ntp_loss", "aux_loss", "z_loss"):
        torch.testing.assert_close(alone[name], getattr(whole, name))

    # Two "processes" holding 4 and 6 of the rows (uneven token counts): each all-reduce returns the sum of both.
    halves = [SessionDataCollator(tokenizer, session_length=3)(part) for part in (rows[:4], rows[4:])]
    outputs = [model(**half, output_router_logits=True) for half in halves]
    local = []
    for half, output in zip(halves, outputs):
        global_batch_losses(output, half["labels"], model.config, lambda tensor: local.append(tensor) or tensor)
    total = local[0] + local[1]
    shares = [global_batch_losses(o, h["labels"], model.config, lambda _: total) for h, o in zip(halves, outputs)]
    for name in ("ntp_loss", "aux_loss", "z_loss"):
        torch.testing.assert_close(shares[0][name] + shares[1][name], getattr(whole, name))
    # What each process would compute alone (the per-process balance loss) is not the whole batch's.
    per_process = (outputs[0].aux_loss + outputs[1].aux_loss) / 2
    assert not torch.allclose(per_process, whole.aux_loss)


def test_processes_that_would_each_train_alone_are_refused(monkeypatch):
    # torchrun on CPUs without --use_cpu: the Trainer sees one process in each of the N it was launched as.
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="Launched as 2 processes .* --use_cpu true"):
        check_process_count(1)
    check_process_count(2)
    monkeypatch.delenv("WORLD_SIZE")
    check_process_count(1)


def test_sampler_reads_lengths_once_and_is_a_function_of_seed_and_epoch(tokenizer, tmp_path):
    import inspect

    from transformers import Trainer

    from trainers.pretraining import EpochLengthGroupedSampler

    # The override below replaces a private Trainer method: fail loudly if transformers changes its signature.
    assert list(inspect.signature(Trainer._get_train_sampler).parameters) == ["self", "train_dataset"]
    lengths = [1 + (7 * index) % 13 for index in range(300)]
    dataset = Dataset.from_list([{"history": ["i0"] * n, "target": ["i1"]} for n in lengths]).shuffle(seed=1)
    trainer = tiny_pretrainer(
        tiny_onerec(tokenizer, session_length=1),
        tokenizer,
        lambda rows: rows,
        tmp_path,
        train_dataset=dataset,
        per_device_train_batch_size=10,
    )
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, EpochLengthGroupedSampler)
    assert type(sampler.lengths) is list and sampler.lengths == history_lengths(trainer.train_dataset)
    orders = {}
    for epoch in (0, 1, 0):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(300))
        orders.setdefault(epoch, order)
        assert order == orders[epoch]  # the same epoch, the same order (what a resumed run relies on)
    assert orders[0] != orders[1]
    batch_spread = [
        max(sampler.lengths[i] for i in b) - min(sampler.lengths[i] for i in b) for b in zip(*[iter(order)] * 10)
    ]
    assert sum(batch_spread) / len(batch_spread) < 3  # still grouped by length (random batches: ~10)


def test_random_window_pretraining_resumes_exactly(tokenizer, tmp_path):
    # A run killed after a checkpoint and resumed ends with the weights of the run that was never stopped: the same
    # windows each epoch (drawn from seed and epoch), the same batch order, the same dropout and optimiser state.
    from transformers import TrainerCallback

    from trainers.data import RandomWindowDataset, leave_one_out_split
    from trainers.pretraining import TokenizedSessionCollator

    rows = {f"u{u}": [f"i{(3 * u + 5 * j) % 40}" for j in range(4 + u % 9)] for u in range(48)}
    splits = leave_one_out_split(Dataset.from_dict({"user_id": list(rows), "item_ids": list(rows.values())}))

    class Kill(TrainerCallback):  # the run stops right after step 9 (and its checkpoint), as if it were killed
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step == 9

    def run(output_dir, resume=None, killed=False):
        model = tiny_onerec(tokenizer, seed=0, session_length=2, dropout_rate=0.1)
        data = RandomWindowDataset(splits["train"], tokenizer, max_history=5, session_length=2, seed=0)
        trainer = tiny_pretrainer(
            model,
            tokenizer,
            TokenizedSessionCollator(tokenizer.pad_token_id),
            output_dir,
            train_dataset=data,
            callbacks=[Kill()] if killed else None,
            per_device_train_batch_size=8,
            max_steps=20,
            learning_rate=1e-2,
            save_strategy="steps",
            save_steps=9,
            seed=0,
            expert_load_plot=False,
        )
        trainer.train(resume_from_checkpoint=resume)
        return model, data

    whole, data = run(tmp_path / "whole")  # 6 batches an epoch: 3+ epochs, a fresh draw each
    assert data.epoch == 3
    run(tmp_path / "stopped", killed=True)  # checkpoint-9, in the middle of epoch 1
    resumed, _ = run(tmp_path / "stopped", resume=str(tmp_path / "stopped" / "checkpoint-9"))
    for (name, expected), got in zip(whole.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(got, expected, msg=name)
