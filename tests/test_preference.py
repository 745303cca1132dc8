"""DPO for OneRec (trainers/alignment/dpo_trainer.py) and Iterative Preference Alignment (trainers/alignment/ipa.py) on tiny models.

Losses are checked against a hand computation: session log-probabilities from the model's logits with a plain
per-position level-restricted log-softmax (float64), then the paper's / TRL's formula written out here.
"""

import copy
import itertools
import json
import os
import shutil

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from safetensors.torch import load_file, save_file

from modeling_onerec import OneRecForConditionalGeneration
from modeling_onerec.generation_onerec import session_beam_search
from tests.conftest import CPU_TRAINING, tiny_onerec
from tokenization_semantic_id import SemanticIDTokenizer
from trainers.alignment import (
    OneRecDPOConfig,
    OneRecDPOTrainer,
    PreferenceDataCollator,
    code_token_scores,
    session_log_probs,
)
from trainers.alignment.ipa import IPAConfig, PreferencePairs, mine_preference_pairs, run_ipa

NUM_ITEMS = 16


def make_tokenizer(codebook_sizes, num_items, seed=0):
    """Distinct random codes from the full grid (no k-means: fast and exact)."""
    grid = list(itertools.product(*[range(size) for size in codebook_sizes]))
    order = torch.randperm(len(grid), generator=torch.Generator().manual_seed(seed))[:num_items]
    codes = torch.tensor([grid[i] for i in order])
    return SemanticIDTokenizer(
        codebook_sizes=list(codebook_sizes),
        num_semantic_levels=len(codebook_sizes),
        item_ids=[f"i{i}" for i in range(num_items)],
        item_codes=codes,
        codebooks=None,
    )


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer([4, 5], NUM_ITEMS)  # 16 of the 20 code pairs: the trie prunes


def make_model(tokenizer, seed=0, **overrides):
    return tiny_onerec(tokenizer, seed, session_length=2, dropout_rate=0.0, **overrides)


def item(i):
    return f"i{i % NUM_ITEMS}"


def pair_rows(count=8, with_target=True):
    rows = []
    for s in range(count):
        row = {
            "history": [item(s + j) for j in range(3)],
            "chosen": [item(s + 5), item(s + 6)],
            "rejected": [item(s + 9), item(s + 11)],
        }
        if with_target:
            row["target"] = [item(s + 3), item(s + 4)]
        rows.append(row)
    return rows


def dpo_args(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path / "dpo"),
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        seed=0,
        **CPU_TRAINING,
    )
    values.update(overrides)
    return OneRecDPOConfig(**values)


def hand_session_logps(model, batch, labels, tokenizer):
    """Per row: sum over code tokens of log_softmax(logits[level slice])[code], in float64, one position at a time.
    Returns ``(log-probs [B], code tokens per row [B])``."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).logits
    bounds = list(tokenizer.level_offsets) + [tokenizer.vocab_size]
    totals, counts = [], []
    for row in range(labels.shape[0]):
        total, count = torch.zeros((), dtype=torch.float64), 0
        for position in range(labels.shape[1]):
            token = int(labels[row, position])
            for lo, hi in zip(bounds[:-1], bounds[1:]):
                if lo <= token < hi:
                    total = total + torch.log_softmax(logits[row, position, lo:hi].double(), dim=-1)[token - lo]
                    count += 1
        totals.append(total)
        counts.append(count)
    return torch.stack(totals), torch.tensor(counts, dtype=torch.float64)


def pair_logps(policy, reference, batch, tokenizer):
    """``(policy chosen, policy rejected), (reference chosen, reference rejected), (chosen code counts, rejected
    code counts)``, each by :func:`hand_session_logps`."""
    policy_c, counts_c = hand_session_logps(policy, batch, batch["chosen_labels"], tokenizer)
    policy_r, counts_r = hand_session_logps(policy, batch, batch["rejected_labels"], tokenizer)
    ref_c, _ = hand_session_logps(reference, batch, batch["chosen_labels"], tokenizer)
    ref_r, _ = hand_session_logps(reference, batch, batch["rejected_labels"], tokenizer)
    return (policy_c, policy_r), (ref_c, ref_r), (counts_c, counts_r)


# ----------------------------------------------------------------------------------------------------
# Collator
# ----------------------------------------------------------------------------------------------------


def test_collator_encodes_pairs_targets_and_pads(tokenizer):
    collator = PreferenceDataCollator(tokenizer, max_history_items=2, session_length=1)
    rows = [
        {
            "history": ["i1", "i2", "i3"],
            "chosen": ["i4"],
            "rejected": ["i5", "i6"],
            "target": ["i7", "i8"],
            "ref_chosen_logps": -1.5,
            "ref_rejected_logps": -2.5,
        },
        {
            "history": ["i9"],
            "chosen": ["i10", "i11"],
            "rejected": ["i12", "i13"],
            "target": None,
            "ref_chosen_logps": -3.0,
            "ref_rejected_logps": -4.0,
            "chosen_reward": 9.0,
        },
    ]
    batch = collator(rows)
    assert batch["input_ids"][0].tolist() == tokenizer.encode_history(["i2", "i3"])  # newest 2 kept
    assert batch["attention_mask"][1].sum() == len(tokenizer.encode_history(["i9"]))
    # chosen and rejected share one width T (= the longest session), padded with -100
    width = len(tokenizer.encode_session(["i5", "i6"]))
    assert batch["chosen_labels"].shape == batch["rejected_labels"].shape == (2, width)
    short = tokenizer.encode_session(["i4"])
    assert batch["chosen_labels"][0, : len(short)].tolist() == short
    assert (batch["chosen_labels"][0, len(short) :] == -100).all()
    assert batch["rejected_labels"][1].tolist() == tokenizer.encode_session(["i12", "i13"])
    # target cut to session_length=1; a row without target is all -100
    assert batch["target_labels"][0].tolist() == tokenizer.encode_session(["i7"])
    assert (batch["target_labels"][1] == -100).all()
    assert batch["ref_chosen_logps"].tolist() == [-1.5, -3.0]
    assert "target_labels" not in collator([{k: v for k, v in rows[0].items() if k != "target"}])


def test_bad_rows_raise_errors_naming_row_and_column(tokenizer, tmp_path):
    collator = PreferenceDataCollator(tokenizer)
    good = {"history": ["i1"], "chosen": ["i2"], "rejected": ["i3"]}
    with pytest.raises(ValueError, match=r"Row 1, column 'chosen' is empty"):
        collator([good, {**good, "chosen": []}])
    with pytest.raises(KeyError, match=r"Row 0, column 'rejected'.*Unknown item id 'nope'"):
        collator([{**good, "rejected": ["i1", "nope"]}])
    with pytest.raises(KeyError, match=r"Row 0, column 'history'.*Unknown item id"):
        collator([{**good, "history": ["zzz"]}])
    with pytest.raises(TypeError, match=r"column 'history' must be a list of item ids"):
        collator([{**good, "history": "i1"}])
    with pytest.raises(KeyError, match="rejected"):
        collator([{"history": ["i1"], "chosen": ["i2"]}])
    # The trainer validates the whole dataset up front (no text tokenisation is attempted).
    model = make_model(tokenizer)
    with pytest.raises(KeyError, match=r"train dataset, row 2, column 'chosen'.*Unknown item id 'x9'"):
        OneRecDPOTrainer(
            model=model,
            args=dpo_args(tmp_path),
            processing_class=tokenizer,
            train_dataset=Dataset.from_list([good, good, {**good, "chosen": ["x9"]}]),
        )
    with pytest.raises(ValueError, match="processing_class"):
        OneRecDPOTrainer(model=model, args=dpo_args(tmp_path), train_dataset=Dataset.from_list([good]))
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_args(tmp_path, label_smoothing=0.1)  # TRL's sigmoid would silently ignore it
    with pytest.raises(ValueError, match="ntp_weight"):
        dpo_args(tmp_path, ntp_weight=-1.0)


# ----------------------------------------------------------------------------------------------------
# Session log-probabilities
# ----------------------------------------------------------------------------------------------------


def test_session_log_probs_match_hand_computation_and_ntp_loss(tokenizer):
    model = make_model(tokenizer).eval()
    batch = PreferenceDataCollator(tokenizer)(pair_rows(4))
    labels = batch["chosen_labels"]
    with torch.no_grad():
        ours = session_log_probs(model, batch["input_ids"], batch["attention_mask"], labels, tokenizer)
        hand, counts = hand_session_logps(model, batch, labels, tokenizer)
        outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels)
    torch.testing.assert_close(ours.double(), hand, atol=1e-5, rtol=0)
    # Same distribution as the model's own NTP loss (level-restricted cross-entropy, mean over code tokens).
    torch.testing.assert_close(
        -ours.sum() / counts.sum(), outputs.ntp_loss.double(), atol=1e-5, rtol=0, check_dtype=False
    )
    # Full-vocabulary variant (config.level_restricted_loss=False): codes scored against every token.
    full = code_token_scores(
        outputs.logits, labels, tokenizer.level_offsets, tokenizer.vocab_size, level_restricted=False
    )
    is_code = labels >= tokenizer.level_offsets[0]
    expected = torch.log_softmax(outputs.logits.double(), -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    torch.testing.assert_close(full.log_probs.double(), expected * is_code, atol=1e-5, rtol=0)
    restricted = code_token_scores(outputs.logits, labels, tokenizer.level_offsets, tokenizer.vocab_size)
    # Normalising over a superset of the level's codes can only lower a code's log-probability.
    assert torch.equal(full.mask, is_code) and (full.log_probs <= restricted.log_probs + 1e-6).all()
    assert (full.log_probs < restricted.log_probs - 1e-4).any()


def test_session_log_prob_is_the_beam_search_score(tokenizer):
    full_grid = make_tokenizer([3, 4], 12)  # every code pair is an item: each trie node has every child
    model = make_model(full_grid).eval()
    encoded = full_grid.batch_encode_histories([["i1", "i2"], ["i5"]])
    search = session_beam_search(
        model,
        encoded["input_ids"],
        encoded["attention_mask"],
        full_grid.trie,
        num_beams=6,
        num_items=2,
        bos_token_id=full_grid.bos_token_id,
        eos_token_id=full_grid.eos_token_id,
        pad_token_id=full_grid.pad_token_id,
        forbid_repeats=False,
        level_offsets=full_grid.level_offsets,
    )
    assert bool(search.valid.all())
    items = [[[full_grid.item_ids[i] for i in beam] for beam in row] for row in search.item_indices.tolist()]
    flat = [session for row in items for session in row]
    labels = torch.tensor([full_grid.encode_session(session) for session in flat])
    with torch.no_grad():
        ours = session_log_probs(
            model,
            encoded["input_ids"].repeat_interleave(6, 0),
            encoded["attention_mask"].repeat_interleave(6, 0),
            labels,
            full_grid,
        )
    torch.testing.assert_close(ours, search.scores.reshape(-1), atol=1e-4, rtol=0)

    # Where the trie prunes (16 of 20 code pairs, history excluded, no repeats) the default search still scores the
    # model's own log-probability; renormalised over the surviving children, its score is never below it, and above
    # it here.
    model = make_model(tokenizer).eval()
    history = ["i1", "i2", "i3"]
    encoded = tokenizer.batch_encode_histories([history] * 5, max_items=model.config.max_history_items)
    for renormalize in (False, True):
        found = model.recommend(tokenizer, [history], num_sessions=5, num_beams=5, renormalize_logits=renormalize)
        labels = torch.tensor([tokenizer.encode_session(r.items) for r in found[0]])
        with torch.no_grad():
            ours = session_log_probs(model, encoded["input_ids"], encoded["attention_mask"], labels, tokenizer)
        searched = torch.tensor([r.score for r in found[0]])
        if renormalize:
            assert (searched >= ours - 1e-5).all() and (searched > ours + 1e-4).any()
        else:
            torch.testing.assert_close(searched, ours, atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------------------------------
# Loss against the formulas
# ----------------------------------------------------------------------------------------------------


def dpo_formula(loss_type, beta, smoothing, policy, reference, counts):
    """The paper's / TRL's per-pair losses, written out. ``policy``/``reference``/``counts`` are (chosen, rejected)."""
    chosen_ratio, rejected_ratio = policy[0] - reference[0], policy[1] - reference[1]
    x = beta * (chosen_ratio - rejected_ratio)
    if loss_type == "sigmoid":  # DPO, paper Eq. 10
        losses = -F.logsigmoid(x)
    elif loss_type == "hinge":
        losses = torch.relu(1 - x)
    elif loss_type == "ipo":  # TRL averages the log-ratios per token before the squared loss
        losses = (chosen_ratio / counts[0] - rejected_ratio / counts[1] - 1 / (2 * beta)) ** 2
    elif loss_type == "robust":  # rDPO: unbiased under flip probability eps
        losses = (-(1 - smoothing) * F.logsigmoid(x) + smoothing * F.logsigmoid(-x)) / (1 - 2 * smoothing)
    elif loss_type == "cdpo":  # conservative DPO: labels smoothed by eps
        losses = -(1 - smoothing) * F.logsigmoid(x) - smoothing * F.logsigmoid(-x)
    else:
        raise AssertionError(loss_type)
    return losses.mean()


@pytest.mark.parametrize(
    "loss_type, smoothing", [("sigmoid", 0.0), ("ipo", 0.0), ("robust", 0.2), ("hinge", 0.0), ("cdpo", 0.2)]
)
def test_loss_matches_hand_computation(tokenizer, tmp_path, loss_type, smoothing):
    policy, reference = make_model(tokenizer, seed=0).eval(), make_model(tokenizer, seed=1).eval()
    rows = pair_rows(4)
    rows[1]["chosen"] = [item(20)]  # chosen and rejected of different lengths: IPO's per-token averaging matters
    args = dpo_args(tmp_path, loss_type=loss_type, label_smoothing=smoothing, beta=0.5, ntp_weight=0.5, dpo_weight=2.0)
    trainer = OneRecDPOTrainer(
        model=policy, ref_model=reference, args=args, train_dataset=rows, processing_class=tokenizer
    )
    batch = trainer.data_collator(rows)
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
        logged = trainer._metrics["eval"]
        (policy_c, policy_r), (ref_c, ref_r), (counts_c, counts_r) = pair_logps(policy, reference, batch, tokenizer)
        expected_dpo = dpo_formula(
            loss_type, 0.5, smoothing, (policy_c, policy_r), (ref_c, ref_r), (counts_c, counts_r)
        )
        target = policy(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["target_labels"]
        )
    expected = 2.0 * expected_dpo + 0.5 * target.ntp_loss.double() + (target.loss - target.ntp_loss).double()
    assert abs(float(expected_dpo) - logged["dpo_loss"][-1]) < 1e-4
    assert abs(float(loss) - float(expected)) < 1e-4, (float(loss), float(expected))
    assert abs(logged["ntp_loss"][-1] - float(target.ntp_loss)) < 1e-6
    rewards_chosen = 0.5 * (policy_c - ref_c)
    assert abs(logged["rewards/chosen"][-1] - float(rewards_chosen.mean())) < 1e-4
    assert abs(logged["rewards/margins"][-1] - float((rewards_chosen - 0.5 * (policy_r - ref_r)).mean())) < 1e-4


def test_precomputed_reference_and_rows_without_target(tokenizer, tmp_path):
    rows = pair_rows(4, with_target=False)
    policy, reference = make_model(tokenizer, seed=0).eval(), make_model(tokenizer, seed=1).eval()
    live = OneRecDPOTrainer(
        model=policy, ref_model=reference, args=dpo_args(tmp_path), train_dataset=rows, processing_class=tokenizer
    )
    batch = live.data_collator(rows)
    with torch.no_grad():
        loss = live.compute_loss(live.model, batch)
        # No target: the DPO loss plus the model's router terms of the chosen/rejected pass, no NTP.
        (policy_c, policy_r), (ref_c, ref_r), _ = pair_logps(policy, reference, batch, tokenizer)
        pair_labels = torch.cat([batch["chosen_labels"], batch["rejected_labels"]])
        code_only = pair_labels.masked_fill(pair_labels < tokenizer.level_offsets[0], -100)
        pair_pass = policy(
            input_ids=batch["input_ids"].repeat(2, 1),
            attention_mask=batch["attention_mask"].repeat(2, 1),
            decoder_input_ids=policy._shift_right(pair_labels),
            labels=code_only,
        )
    expected = dpo_formula("sigmoid", 0.1, 0.0, (policy_c, policy_r), (ref_c, ref_r), None)
    expected = expected + (pair_pass.loss - pair_pass.ntp_loss).double()
    assert abs(float(loss) - float(expected)) < 1e-4
    assert "ntp_loss" not in live._metrics["eval"] and live._metrics["eval"]["aux_loss"]

    # precompute_ref_log_probs: the reference runs once over the dataset, before training; same loss.
    precomputed = OneRecDPOTrainer(
        model=policy,
        ref_model=reference,
        train_dataset=rows,
        processing_class=tokenizer,
        args=dpo_args(tmp_path, precompute_ref_log_probs=True),
    )
    row = precomputed.train_dataset[0]
    assert abs(row["ref_chosen_logps"] - float(ref_c[0])) < 1e-4
    batch = precomputed.data_collator([precomputed.train_dataset[i] for i in range(4)])
    with torch.no_grad():
        assert abs(float(precomputed.compute_loss(precomputed.model, batch)) - float(loss)) < 1e-5


# ----------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------


def test_training_raises_the_margin_and_leaves_the_reference_frozen(tokenizer, tmp_path):
    model = make_model(tokenizer)
    rows = pair_rows(8)
    trainer = OneRecDPOTrainer(
        model=model,
        ref_model=None,
        args=dpo_args(tmp_path, max_steps=12, beta=0.5),
        train_dataset=Dataset.from_list(rows),
        eval_dataset=rows[:4],
        processing_class=tokenizer,
    )
    reference = trainer.ref_model
    assert reference is not model and not any(p.requires_grad for p in reference.parameters())
    frozen = {name: tensor.clone() for name, tensor in reference.state_dict().items()}
    batch = trainer.data_collator(rows)

    def margin():
        with torch.no_grad():
            chosen = hand_session_logps(model.eval(), batch, batch["chosen_labels"], tokenizer)[0]
            rejected = hand_session_logps(model, batch, batch["rejected_labels"], tokenizer)[0]
            ref_chosen = hand_session_logps(reference, batch, batch["chosen_labels"], tokenizer)[0]
            ref_rejected = hand_session_logps(reference, batch, batch["rejected_labels"], tokenizer)[0]
        return float(((chosen - ref_chosen) - (rejected - ref_rejected)).mean())

    assert abs(margin()) < 1e-4  # the reference is a copy of the policy at step 0
    trainer.train()
    assert margin() > 2.0  # about 8.5 here (rewards/margins = beta * margin reaches about 4.2)
    assert all(torch.equal(frozen[name], tensor) for name, tensor in reference.state_dict().items())
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    keys = {
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "dpo_loss",
        "ntp_loss",
        "aux_loss",
        "z_loss",
    }
    assert keys <= set(logs[-1]) and logs[-1]["rewards/margins"] > logs[0]["rewards/margins"]
    assert logs[-1]["rewards/accuracies"] == 1.0
    evaluation = trainer.evaluate()
    assert evaluation["eval_rewards/margins"] > 0 and evaluation["eval_loss"] < logs[0]["loss"]
    # TRL's fused-LM-head patch is undone: a deep copy of the trained model runs its own weights, not the original's.
    assert "forward" not in vars(model)
    clone = copy.deepcopy(model).eval()
    with torch.no_grad():
        clone.lm_head.weight.mul_(0.0)
        assert not torch.equal(
            clone(**{k: batch[k] for k in ("input_ids", "attention_mask")}, labels=batch["chosen_labels"]).logits,
            model(**{k: batch[k] for k in ("input_ids", "attention_mask")}, labels=batch["chosen_labels"]).logits,
        )


# ----------------------------------------------------------------------------------------------------
# Mining
# ----------------------------------------------------------------------------------------------------


class RecordingReward:
    """A deterministic toy reward that remembers what it scored (per user: candidates and scores)."""

    def __init__(self, tie_users=()):
        self.calls, self.seen, self.tie_users = 0, {}, set(tie_users)

    def __call__(self, histories, sessions):
        self.calls += 1
        scores = []
        for history, candidates in zip(histories, sessions):
            if tuple(history) in self.tie_users:
                user_scores = [1.0] * len(candidates)
            else:
                user_scores = [float((sum(int(i[1:]) * (p + 3) for p, i in enumerate(s)) * 7) % 23) for s in candidates]
            self.seen[tuple(history)] = (candidates, user_scores)
            scores.append(user_scores)
        return scores


def test_mining_picks_best_and_worst_valid_sessions(tokenizer):
    model = make_model(tokenizer).train()
    crowded = [item(i) for i in range(NUM_ITEMS - 1)]  # one item left: no session of 2 distinct new items
    tie = ["i3", "i4"]
    histories = [["i1", "i2", "i3"], crowded, ["i7"], tie, ["i10", "i12"]]
    reward = RecordingReward(tie_users=[tuple(tie)])
    pairs = mine_preference_pairs(
        model, tokenizer, histories, reward, num_candidates=6, session_length=2, batch_size=2, progress=False
    )
    assert isinstance(pairs, PreferencePairs) and model.training  # the model's mode is restored
    assert (pairs.num_users, pairs.skipped_users, pairs.tied_users, len(pairs)) == (5, 1, 1, 3)
    # Batches go by history length ([i7] + tie, [i10 i12] + [i1 i2 i3], crowded alone): the crowded user has no
    # two valid sessions, so its batch needs no reward call; rows come back in user order.
    assert [row["index"] for row in pairs] == [0, 2, 4] and reward.calls == 2
    catalogue = set(tokenizer.item_ids)
    for row in pairs:
        candidates, scores = reward.seen[tuple(row["history"])]
        assert len(candidates) == 6 and len({tuple(c) for c in candidates}) == 6
        assert row["chosen"] == candidates[scores.index(max(scores))]
        assert row["rejected"] == candidates[scores.index(min(scores))]
        assert (row["chosen_reward"], row["rejected_reward"]) == (max(scores), min(scores))
        for session in candidates:
            assert len(session) == 2 and len(set(session)) == 2 and set(session) <= catalogue
            assert not set(session) & set(row["history"])


def test_mining_rejects_bad_arguments(tokenizer):
    model = make_model(tokenizer)
    reward = RecordingReward()
    with pytest.raises(ValueError, match="num_candidates"):
        mine_preference_pairs(model, tokenizer, [["i1"]], reward, num_candidates=1)
    with pytest.raises(KeyError, match=r"histories\[1\].*Unknown item id 'ghost'"):
        mine_preference_pairs(model, tokenizer, [["i1"], ["ghost"]], reward, num_candidates=2)
    with pytest.raises(ValueError, match=r"histories\[0\] is empty"):
        mine_preference_pairs(model, tokenizer, [[]], reward, num_candidates=2)
    with pytest.raises(ValueError, match="batch_size"):
        mine_preference_pairs(model, tokenizer, [["i1"]], reward, num_candidates=2, batch_size=0)
    with pytest.raises(ValueError, match="reward_fn returned 1 scores for the 3 candidate sessions of user 0"):
        mine_preference_pairs(model, tokenizer, [["i1"]], lambda h, s: [[0.0]], num_candidates=3, progress=False)
    with pytest.raises(ValueError, match="non-finite"):
        mine_preference_pairs(
            model, tokenizer, [["i1"]], lambda h, s: [[0.0, float("nan")]], num_candidates=2, progress=False
        )
    with pytest.raises(ValueError, match="num_candidates"):
        IPAConfig(num_candidates=1)
    with pytest.raises(ValueError, match="dpo_sample_ratio"):
        IPAConfig(dpo_sample_ratio=0.0)


# ----------------------------------------------------------------------------------------------------
# Iterative Preference Alignment: resume
# ----------------------------------------------------------------------------------------------------


def ipa_samples():
    return Dataset.from_list(
        [{"history": [item(s + j) for j in range(3)], "target": [item(s + 3), item(s + 4)]} for s in range(16)]
    )


def ipa_config(**overrides):
    values = dict(
        dpo_sample_ratio=0.25,
        num_candidates=4,
        num_iterations=2,
        mining_batch_size=2,
        progress=False,
        training_args=OneRecDPOConfig(
            output_dir="unused",
            per_device_train_batch_size=2,
            learning_rate=1e-2,
            logging_steps=1,
            save_steps=1,
            **CPU_TRAINING,
        ),
    )
    values.update(overrides)
    return IPAConfig(**values)


def weights(directory):
    return load_file(os.path.join(directory, "model.safetensors"))


def assert_same_weights(first, second):
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], atol=1e-6, rtol=0)


def test_run_ipa_skips_done_iterations_and_reuses_mined_pairs(tokenizer, tmp_path):
    out = tmp_path / "ipa"
    reward = RecordingReward()
    result = run_ipa(make_model(tokenizer), tokenizer, ipa_samples(), reward, ipa_config(), out)
    assert [s["iteration"] for s in result.iterations] == [1, 2] and reward.calls == 4  # 2 batches x 2 iterations
    first, second = out / "iteration-1", out / "iteration-2"
    state = json.loads((second / "ipa_state.json").read_text())
    assert state["pairs_mined"] == 4 and state["trained_from"] == "iteration-1" and not state["pairs_reused"]
    assert state["mean_chosen_reward"] > state["mean_rejected_reward"]
    assert {"mining_seconds", "training_seconds", "iteration_seconds"} <= set(state["timings"])
    assert not (second / "checkpoints").exists()  # removed once the snapshot is saved
    pairs = json.loads((first / "pairs.json").read_text())["pairs"]
    assert len(pairs) == 4 and {"history", "target", "chosen", "rejected"} <= set(pairs[0])
    samples = ipa_samples()
    assert all(p["target"] == samples[p["sample_index"]]["target"] for p in pairs)
    pairs_mtime = (first / "pairs.json").stat().st_mtime_ns
    first_weights, second_weights = weights(first), weights(second)
    second_pairs = json.loads((second / "pairs.json").read_text())["pairs"]
    assert OneRecForConditionalGeneration.from_pretrained(str(second)).config.vocab_size == tokenizer.vocab_size

    # Iteration 2 deleted: only it is redone, with identical pairs and weights: M_1 is read back from disk (training
    # the in-memory seed M_0 again would give other weights). Another seed model is refused (the run records it).
    shutil.rmtree(second)
    with pytest.raises(ValueError, match="seed_model_weights"):
        run_ipa(make_model(tokenizer, seed=5), tokenizer, ipa_samples(), RecordingReward(), ipa_config(), out)
    reward = RecordingReward()
    result = run_ipa(make_model(tokenizer), tokenizer, ipa_samples(), reward, ipa_config(), out)
    assert reward.calls == 2 and [s["iteration"] for s in result.iterations] == [1, 2]
    assert (first / "pairs.json").stat().st_mtime_ns == pairs_mtime
    assert_same_weights(weights(first), first_weights)
    assert json.loads((second / "pairs.json").read_text())["pairs"] == second_pairs  # mined again, same pairs
    assert_same_weights(weights(second), second_weights)

    # Killed after mining, before the snapshot: the pairs are reused, nothing is mined again.
    (second / "ipa_state.json").unlink()
    (second / "model.safetensors").unlink()
    reward = RecordingReward()
    result = run_ipa(make_model(tokenizer), tokenizer, ipa_samples(), reward, ipa_config(), out)
    assert reward.calls == 0 and result.iterations[-1]["pairs_reused"]
    assert_same_weights(weights(second), second_weights)
    in_memory = result.model.state_dict()  # the returned model is M_2 (tied copies of `shared` are not saved)
    assert_same_weights({name: in_memory[name] for name in second_weights}, second_weights)

    with pytest.raises(FileExistsError, match="resume=True"):
        run_ipa(make_model(tokenizer), tokenizer, ipa_samples(), reward, ipa_config(), out, resume=False)
    shutil.rmtree(first)
    with pytest.raises(ValueError, match="later iterations"):
        run_ipa(make_model(tokenizer), tokenizer, ipa_samples(), reward, ipa_config(), out)


def test_run_ipa_resumes_an_interrupted_training_from_its_checkpoint(tokenizer, tmp_path):
    out = tmp_path / "ipa"
    config = ipa_config(num_iterations=1, keep_checkpoints=True)  # 4 pairs, batch 2: two steps, a checkpoint each
    run_ipa(make_model(tokenizer), tokenizer, ipa_samples(), RecordingReward(), config, out)
    snapshot = out / "iteration-1"
    finished = weights(snapshot)
    assert {"checkpoint-1", "checkpoint-2"} <= set(os.listdir(snapshot / "checkpoints"))
    # Simulate a kill after the first optimiser step.
    shutil.rmtree(snapshot / "checkpoints" / "checkpoint-2")
    (snapshot / "ipa_state.json").unlink()
    (snapshot / "model.safetensors").unlink()
    reward = RecordingReward()
    result = run_ipa(make_model(tokenizer), tokenizer, ipa_samples(), reward, config, out)
    state = result.iterations[0]
    assert reward.calls == 0 and state["pairs_reused"]
    assert state["resumed_from_checkpoint"].endswith("checkpoint-1")
    assert_same_weights(weights(snapshot), finished)  # optimiser, scheduler, data order and RNG restored too

    # The checkpoint's weights are really the starting point: spoil them and the result changes.
    shutil.rmtree(snapshot / "checkpoints" / "checkpoint-2")
    (snapshot / "ipa_state.json").unlink()
    checkpoint_file = snapshot / "checkpoints" / "checkpoint-1" / "model.safetensors"
    spoiled = {name: tensor * 0.5 for name, tensor in load_file(checkpoint_file).items()}
    save_file(spoiled, checkpoint_file, metadata={"format": "pt"})
    run_ipa(make_model(tokenizer), tokenizer, ipa_samples(), RecordingReward(), config, out)
    assert not torch.allclose(weights(snapshot)["shared.weight"], finished["shared.weight"], atol=1e-3)


def test_peft_run_uses_trls_adapter_disabled_reference(tokenizer, tmp_path):
    # With peft_config and no ref_model no copy is made: the reference is the policy with its LoRA adapter disabled
    # (TRL's mechanism), i.e. exactly the base model.
    from peft import LoraConfig

    rows = pair_rows(4)
    trainer = OneRecDPOTrainer(
        model=make_model(tokenizer, seed=0),
        args=dpo_args(tmp_path),
        train_dataset=rows,
        processing_class=tokenizer,
        peft_config=LoraConfig(
            r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q", "v"], task_type="SEQ_2_SEQ_LM"
        ),
    )
    assert trainer.ref_model is None
    policy = trainer.model.eval()
    with torch.no_grad():  # move the adapter away from its zero init, so that policy and reference differ
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    base = make_model(tokenizer, seed=0).eval()  # the same initial weights, no adapter
    batch = trainer.data_collator(rows)
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
        (policy_c, policy_r), (ref_c, ref_r), _ = pair_logps(policy, base, batch, tokenizer)
        target = policy(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["target_labels"]
        )
    assert (policy_c - ref_c).abs().max() > 1e-3  # the adapter matters
    expected = dpo_formula("sigmoid", 0.1, 0.0, (policy_c, policy_r), (ref_c, ref_r), None)
    expected = expected + target.ntp_loss.double() + (target.loss - target.ntp_loss).double()
    assert abs(float(loss) - float(expected)) < 1e-4
    assert trainer.ref_model is None  # restored after the call


def test_run_ipa_refuses_to_resume_from_other_inputs(tokenizer, tmp_path):
    # Regression: re-running into a folder with another seed model or beta skipped the finished iterations and
    # reported the new inputs as if they had produced them.
    out = tmp_path / "ipa"
    config = ipa_config(num_iterations=1)

    def run(config, model_dir):
        return run_ipa(make_model(tokenizer), tokenizer, ipa_samples(), RecordingReward(), config, out,
                       run_inputs={"model_dir": model_dir})  # fmt: skip

    run(config, "/models/a")
    stored = json.loads((out / "ipa_inputs.json").read_text())
    assert stored["inputs"]["model_dir"] == "/models/a"
    assert set(stored["inputs"]) == {"model_dir", "seed_model_weights", "reward_fn"}
    assert stored["config"]["num_candidates"] == config.num_candidates
    before = sorted(p.name for p in out.rglob("*"))
    with pytest.raises(ValueError, match=r"inputs.model_dir: '/models/a' -> '/models/b'"):
        run(config, "/models/b")
    with pytest.raises(ValueError, match=r"config.training_args"):
        run(ipa_config(num_iterations=1, training_args=dpo_args(tmp_path, beta=0.5)), "/models/a")
    assert sorted(p.name for p in out.rglob("*")) == before  # nothing written by the refused calls
    # The same inputs resume (here: nothing left to do).
    assert [state["iteration"] for state in run(config, "/models/a").iterations] == [1]


def test_run_ipa_records_its_seed_model_and_reward_itself(tokenizer, tmp_path):
    # Regression: called without run_inputs, run_ipa resumed a finished run made from another seed model (or reward)
    # and returned the old model with an INFO line.
    from trainers.alignment.ipa import fingerprint

    out = tmp_path / "ipa"
    config = ipa_config(num_iterations=1)
    run_ipa(make_model(tokenizer, seed=0), tokenizer, ipa_samples(), RecordingReward(), config, out)
    with pytest.raises(ValueError, match=r"inputs.seed_model_weights"):
        run_ipa(make_model(tokenizer, seed=1), tokenizer, ipa_samples(), RecordingReward(), config, out)

    class OtherReward(RecordingReward):
        pass

    with pytest.raises(ValueError, match=r"inputs.reward_fn"):
        run_ipa(make_model(tokenizer, seed=0), tokenizer, ipa_samples(), OtherReward(), config, out)
    resumed = run_ipa(make_model(tokenizer, seed=0), tokenizer, ipa_samples(), RecordingReward(), config, out)
    assert [state["iteration"] for state in resumed.iterations] == [1]
    # The digest follows the weights, not the object.
    assert fingerprint(make_model(tokenizer, seed=0)) == fingerprint(make_model(tokenizer, seed=0))
    weights = torch.tensor([1.0, 2.0])
    assert fingerprint(weights) != fingerprint(weights * 2)
