"""On-policy alignment: groups under the trie, the one policy log-probability, rewards, and OneRecGRPOTrainer on TRL."""

import inspect
import math
import random

import pytest
import torch
import torch.nn.functional as F
from conftest import CPU_TRAINING, semantic_id_tokenizer, tiny_onerec

from trainers.alignment.grpo_config import OneRecGRPOConfig
from trainers.alignment.grpo_trainer import OneRecGRPOTrainer
from trainers.alignment.ipa import mine_preference_pairs
from trainers.alignment.policy_losses import grpo_loss
from trainers.alignment.rewards import NextItemsReward, SessionRewardModelReward
from trainers.alignment.rollouts import (
    constrained_token_log_probs,
    history_prompt_ids,
    session_groups,
    split_prompt,
)

HISTORIES = [["i1", "i2", "i3"], ["i5"], ["i7", "i8", "i30", "i31"]]


@pytest.fixture(scope="module")
def tokenizer():
    return semantic_id_tokenizer([f"i{i}" for i in range(40)], num_levels=2, codebook_size=4)


@pytest.fixture
def model(tokenizer):
    return tiny_onerec(tokenizer, seed=0, session_length=2).eval()


def left_padded_prompts(tokenizer, histories):
    prompts = [history_prompt_ids(tokenizer, history) for history in histories]
    width = max(map(len, prompts))
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def policy_scores(model, tokenizer, histories, completion_ids, group, temperature=1.0):
    rows = [history for history in histories for _ in range(group)]
    encoder_ids, encoder_mask, excluded = split_prompt(
        *left_padded_prompts(tokenizer, rows), tokenizer, model.config.max_history_items
    )
    scores = constrained_token_log_probs(
        model, tokenizer, encoder_ids, encoder_mask, completion_ids, excluded_items=excluded, temperature=temperature
    )
    return scores


# ---------------------------------------------------------------------------------------------------------- rollouts
def test_split_prompt_gives_the_encoder_inputs_and_the_whole_history(tokenizer):
    histories = [[f"i{i}" for i in range(12)], ["i5"]]
    ids, mask = left_padded_prompts(tokenizer, histories)
    encoder_ids, encoder_mask, excluded = split_prompt(ids, mask, tokenizer, max_history_items=3)
    expected = tokenizer.batch_encode_histories(histories, max_items=3)
    assert torch.equal(encoder_ids, expected["input_ids"])
    assert torch.equal(encoder_mask, expected["attention_mask"])
    assert excluded[0].tolist() == [tokenizer.item_index(f"i{i}") for i in range(12)]  # all 12, not the newest 3
    assert excluded[1].tolist() == [tokenizer.item_index("i5")] + [-1] * 11
    with pytest.raises(ValueError, match="not a history"):
        split_prompt(ids[:, 1:], mask[:, 1:], tokenizer, max_history_items=3)


def test_policy_log_probs_equal_a_plain_per_position_reference(model, tokenizer):
    groups = session_groups(model, tokenizer, HISTORIES, group_size=4)
    scores = policy_scores(model, tokenizer, HISTORIES, groups.completion_ids, 4)
    # Reference: teacher-forced logits, each position's softmax over the tokens the plain (per-beam Python) prefix
    # function allows.
    rows = [history for history in HISTORIES for _ in range(4)]
    allowed_fn = tokenizer.prefix_allowed_tokens_fn(2, exclude_items=rows)
    encoded = tokenizer.batch_encode_histories(rows, max_items=model.config.max_history_items)
    start = torch.full((len(rows), 1), model.config.decoder_start_token_id)
    decoder = torch.cat([start, groups.completion_ids], dim=1)
    with torch.no_grad():
        logits = model(**encoded, decoder_input_ids=decoder[:, :-1]).logits
    for row in range(len(rows)):
        for t in range(groups.completion_ids.shape[1]):
            allowed = allowed_fn(row, decoder[row, : t + 1])
            token = int(decoder[row, t + 1])
            assert token in allowed
            expected = 0.0
            if token >= tokenizer.level_offsets[0]:
                expected = (logits[row, t, token] - torch.logsumexp(logits[row, t, allowed], dim=0)).item()
            assert scores.log_probs[row, t].item() == pytest.approx(expected, abs=1e-5)
    assert scores.code_mask.sum(1).tolist() == [2 * tokenizer.num_levels] * len(rows)  # m * L codes, BOS/EOS are forced


def test_beam_groups_are_distinct_valid_scored_by_the_policy_and_equal_through_generate(model, tokenizer):
    native = session_groups(model, tokenizer, HISTORIES, group_size=6)
    through_generate = session_groups(model, tokenizer, HISTORIES, group_size=6, backend="generate")
    assert through_generate.sessions == native.sessions
    assert torch.equal(through_generate.completion_ids, native.completion_ids)
    assert bool(native.valid.all())
    for user, history in enumerate(HISTORIES):
        group = native.sessions[user * 6 : (user + 1) * 6]
        assert len({tuple(s) for s in group}) == 6
        for session in group:
            assert len(set(session)) == 2 and not set(session) & set(history)
    # The beam scores are the policy's session log-probabilities, best first.
    item_indices = model.check_histories(tokenizer, HISTORIES)
    found = model.search_sessions(
        tokenizer,
        model.encode_histories(tokenizer, HISTORIES, item_indices),
        num_sessions=6,
        num_beams=6,
        session_length=2,
        renormalize_logits=True,
    )
    scores = policy_scores(model, tokenizer, HISTORIES, native.completion_ids, 6)
    assert torch.allclose(scores.log_probs.sum(1), found["scores"].reshape(-1), atol=1e-5)


def test_sampler_log_probs_are_the_policy_log_probs(model, tokenizer):
    torch.manual_seed(0)
    groups = session_groups(model, tokenizer, HISTORIES, group_size=5, strategy="sample", temperature=0.7)
    assert groups.sampler_log_probs is not None and bool(groups.valid.all())
    scores = policy_scores(model, tokenizer, HISTORIES, groups.completion_ids, 5, temperature=0.7)
    assert torch.allclose(groups.sampler_log_probs, scores.log_probs, atol=1e-5)
    for user, history in enumerate(HISTORIES):
        for session in groups.sessions[user * 5 : (user + 1) * 5]:
            assert not set(session) & set(history)


def test_sampling_draws_sessions_with_the_policy_probabilities():
    tokenizer = semantic_id_tokenizer([f"i{i}" for i in range(8)], num_levels=3, codebook_size=2)
    model = tiny_onerec(tokenizer, seed=1, session_length=1).eval()
    history = ["i0"]
    candidates = [f"i{i}" for i in range(1, 8)]
    completion = torch.tensor([tokenizer.encode_session([item]) for item in candidates])
    probabilities = policy_scores(model, tokenizer, [history], completion, 7).log_probs.sum(1).exp()
    assert probabilities.sum().item() == pytest.approx(1.0, abs=1e-5)  # the 7 allowed items are the whole policy
    torch.manual_seed(0)
    draws = session_groups(model, tokenizer, [history], group_size=3000, strategy="sample").sessions
    frequencies = torch.tensor([sum(s == [item] for s in draws) / len(draws) for item in candidates])
    assert (frequencies - probabilities).abs().max().item() < 0.03


def test_ipa_mining_through_generate_finds_the_pairs_of_the_native_search(model, tokenizer):
    def reward(histories, sessions):
        return [[-sum(int(item[1:]) for item in session) for session in candidates] for candidates in sessions]

    kwargs = dict(num_candidates=6, session_length=2, batch_size=2, progress=False)
    native = mine_preference_pairs(model, tokenizer, HISTORIES, reward, **kwargs)
    through_generate = mine_preference_pairs(model, tokenizer, HISTORIES, reward, search_backend="generate", **kwargs)
    assert len(native) == len(HISTORIES) and list(through_generate) == list(native)
    with pytest.raises(ValueError, match="search_backend"):
        mine_preference_pairs(model, tokenizer, HISTORIES, reward, search_backend="vllm", **kwargs)


# ----------------------------------------------------------------------------------------------------------- rewards
def test_next_items_reward_by_hand():
    reward = NextItemsReward()
    best = 1 + 1 / math.log2(3)
    values = reward(
        prompts=[["x"]] * 4,
        session=[["a", "b", "c"], ["b", "x", "a"], None, ["a"]],
        target=[["b", "x"], ["b", "x"], ["b"], []],
    )
    assert values[0] == pytest.approx((1 / math.log2(3)) / best)
    assert values[1] == pytest.approx(1.0)
    assert values[2] is None and values[3] == 0.0
    with pytest.raises(ValueError, match="'target' column"):
        reward(prompts=[["x"]], session=[["a"]])


def test_reward_model_reward_scores_each_session_once():
    calls = []

    def scorer(histories, sessions):
        calls.append((histories, sessions))
        return [[float(len(h) + len(s[0]))] for h, s in zip(histories, sessions)]

    reward = SessionRewardModelReward(scorer)
    values = reward(prompts=[["a"], ["a", "b"], ["c"]], session=[["x", "y"], None, ["z"]])
    assert values == [3.0, None, 2.0]
    assert calls == [([["a"], ["c"]], [[["x", "y"]], [["z"]]])]


# ---------------------------------------------------------------------------------------------------- policy gradient
def test_averaged_grpo_gradient_is_the_exact_policy_gradient_on_eight_items():
    """Eight items, one-item sessions: J = sum_i pi(i) R(i) is enumerable. With A = R - mean of the group (no scaling)
    E[-grad GRPO loss] = (1 - 1/G) grad J (the sample's own reward is in its baseline)."""
    tokenizer = semantic_id_tokenizer([f"i{i}" for i in range(8)], num_levels=3, codebook_size=2)
    model = tiny_onerec(tokenizer, seed=2, session_length=1).eval()
    items = [f"i{i}" for i in range(8)]
    rewards = torch.tensor([0.1, 0.9, 0.3, 0.0, 0.7, 0.2, 0.5, 0.4])
    completion = torch.tensor([tokenizer.encode_session([item]) for item in items])
    encoded = tokenizer.batch_encode_histories([["i0"]] * 8, max_items=model.config.max_history_items)
    parameters = [p for p in model.parameters() if p.requires_grad]

    def log_pi():
        scores = constrained_token_log_probs(
            model, tokenizer, encoded["input_ids"], encoded["attention_mask"], completion
        )
        return scores.log_probs.sum(1)  # [8], no exclusions: all eight items allowed

    exact = torch.autograd.grad((log_pi().exp() * rewards).sum(), parameters)
    log_probs = log_pi()
    group, groups = 4, 40000
    generator = torch.Generator().manual_seed(0)
    drawn = torch.multinomial(log_probs.exp().detach(), groups * group, replacement=True, generator=generator)
    drawn = drawn.view(groups, group)
    advantages = rewards[drawn] - rewards[drawn].mean(dim=1, keepdim=True)
    loss, _ = grpo_loss(log_probs[drawn].reshape(-1), None, advantages.reshape(-1))
    estimate = torch.autograd.grad(loss, parameters)
    exact_flat = torch.cat([g.reshape(-1) for g in exact]) * (1 - 1 / group)
    estimate_flat = -torch.cat([g.reshape(-1) for g in estimate])
    assert F.cosine_similarity(exact_flat, estimate_flat, dim=0).item() > 0.99
    assert estimate_flat.norm().item() == pytest.approx(exact_flat.norm().item(), rel=0.05)


# ------------------------------------------------------------------------------------------------------------ trainer
def rows_of(count, seed=0, num_items=40):
    rng = random.Random(seed)
    return [
        {
            "prompt": [f"i{rng.randrange(num_items)}" for _ in range(rng.randint(1, 5))],
            "target": [f"i{rng.randrange(num_items)}" for _ in range(2)],
        }
        for _ in range(count)
    ]


def grpo_trainer(model, tokenizer, rows, reward_funcs, tmp_path, **config):
    settings = dict(
        output_dir=str(tmp_path / "grpo"),
        num_generations=4,
        per_device_train_batch_size=8,
        max_steps=2,
        logging_steps=1,
        save_strategy="no",
        seed=0,
        **CPU_TRAINING,
    )
    args = OneRecGRPOConfig(**{**settings, **config})
    return OneRecGRPOTrainer(model.train(), reward_funcs, args=args, train_dataset=rows, processing_class=tokenizer)


def test_config_refuses_unknown_choices(tmp_path):
    base = dict(output_dir=str(tmp_path), **CPU_TRAINING)
    with pytest.raises(ValueError, match="objective must be one of"):
        OneRecGRPOConfig(**base, objective="ppo")
    with pytest.raises(ValueError, match="ratio_level='session'"):
        OneRecGRPOConfig(**base, objective="grpo", ratio_level="session")
    with pytest.raises(ValueError, match="rollout_strategy"):
        OneRecGRPOConfig(**base, rollout_strategy="greedy")


def test_trainer_touch_points_in_trl_are_as_written_against():
    from trl import GRPOTrainer

    scoring = inspect.signature(GRPOTrainer._get_per_token_logps_and_entropies).parameters
    assert list(scoring)[:8] == [
        "self",
        "model",
        "input_ids",
        "attention_mask",
        "logits_to_keep",
        "batch_size",
        "compute_entropy",
        "compute_aux_loss",
    ]
    assert list(inspect.signature(GRPOTrainer._generate_and_score_completions).parameters) == ["self", "inputs"]
    assert list(inspect.signature(GRPOTrainer._compute_loss).parameters) == ["self", "model", "inputs"]
    assert "rollout_func" in inspect.signature(GRPOTrainer.__init__).parameters
    source = inspect.getsource(GRPOTrainer)
    for needle in ('extra_fields.pop("env_mask"', "create_model_from_path(get_config_model_id", "add_fused_lm_head("):
        assert needle in source, needle


def test_trainer_scores_trls_batch_with_the_policy_and_keeps_groups_whole(model, tokenizer, tmp_path):
    trainer = grpo_trainer(model, tokenizer, rows_of(8), [NextItemsReward()], tmp_path, beta=0.1, ntp_weight=0.0)
    assert "forward" not in vars(trainer.model)  # TRL's fused causal-LM head removed again
    assert trainer.ref_model is not trainer.model and not any(p.requires_grad for p in trainer.ref_model.parameters())
    rows = [row for row in rows_of(2, seed=3) for _ in range(4)]
    trainer.model.eval()
    batch = trainer._generate_and_score_completions(rows)
    # Sessions are scored exactly as the policy scores them, the history excluded, forced tokens out of the loss.
    expected = policy_scores(
        trainer.model, tokenizer, [r["prompt"] for r in rows[::4]], batch["completion_ids"], 4
    ).log_probs
    logps, _, _ = trainer._get_per_token_logps_and_entropies(
        trainer.model,
        torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1),
        torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1),
        batch["completion_ids"].shape[1],
    )
    assert torch.allclose(logps, expected, atol=1e-5)
    assert torch.allclose(batch["ref_per_token_logps"], expected, atol=1e-5)  # the untrained reference: equal
    assert batch["tool_mask"].sum(1).tolist() == [2 * tokenizer.num_levels] * 8
    assert batch["advantages"].view(2, 4).sum(1).abs().max().item() < 1e-4  # group-relative
    with pytest.raises(ValueError, match="groups were split"):
        trainer.generate_groups([r["prompt"] for r in rows[1:]] + [rows[0]["prompt"]])
    # One update per generated batch: ECPO is GRPO (ratio 1), and TRL's GRPO loss is the project's grpo_loss.
    losses = {}
    for objective in ("grpo", "ecpo"):
        trainer.args.objective = objective
        losses[objective] = trainer.compute_loss(trainer.model, batch).item()
    mask = batch["completion_mask"] * batch["tool_mask"]
    reference, _ = grpo_loss(
        logps, None, batch["advantages"], mask=mask, num_items_in_batch=batch["num_items_in_batch"]
    )
    kl = 0.0  # policy == reference
    assert losses["grpo"] == pytest.approx(losses["ecpo"], abs=1e-6)
    assert losses["grpo"] == pytest.approx(reference.item() + kl, abs=1e-6)


@pytest.mark.parametrize("objective", ["grpo", "ecpo", "gbpo"])
def test_each_objective_trains_with_ntp_and_several_iterations(model, tokenizer, tmp_path, objective):
    trainer = grpo_trainer(
        model, tokenizer, rows_of(16), [NextItemsReward()], tmp_path, objective=objective, num_iterations=2,
        max_steps=4, learning_rate=1e-2,
    )  # fmt: skip
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 4 and all(math.isfinite(entry["loss"]) for entry in logs)
    assert all("ntp_loss" in entry and "aux_loss" in entry for entry in logs)
    assert any(entry.get("rollout/valid_fraction") == 1.0 for entry in logs)
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
    if objective != "grpo":
        assert all("ratio_mean" in entry for entry in logs)
        # the second pass over a generated batch sees the updated policy: the ratio moved off 1
        assert any(abs(entry["ratio_mean"] - 1) > 1e-6 for entry in logs)


# ------------------------------------------------------------------------------------------------- known reward
HIDDEN = {f"i{i}" for i in range(0, 40, 4)}  # 10 of the 40 items


def hidden_share(prompts, completions=None, session=(), **unused):
    return [None if s is None else sum(item in HIDDEN for item in s) / len(s) for s in session]


def negated_hidden_share(prompts, completions=None, session=(), **unused):
    return [None if s is None else -sum(item in HIDDEN for item in s) / len(s) for s in session]


def random_reward(prompts, completions=None, session=(), **unused):
    return [random.random() for _ in session]


def expected_hidden_share(model, tokenizer, history):
    """E_pi[share of the session's item in HIDDEN] for one-item sessions, enumerated, and the top-1 item."""
    candidates = [f"i{i}" for i in range(40) if f"i{i}" not in history]
    completion = torch.tensor([tokenizer.encode_session([item]) for item in candidates])
    model.eval()
    with torch.no_grad():
        probabilities = policy_scores(model, tokenizer, [history], completion, len(candidates)).log_probs.sum(1).exp()
    share = sum(p.item() for p, item in zip(probabilities, candidates) if item in HIDDEN)
    return share, candidates[int(probabilities.argmax())]


@pytest.mark.parametrize(
    "reward, direction", [(hidden_share, 1), (negated_hidden_share, -1), (random_reward, 0)], ids=lambda x: str(x)
)
def test_known_reward_moves_the_policy_the_right_way(tokenizer, tmp_path, reward, direction):
    random.seed(0)
    model = tiny_onerec(tokenizer, seed=0, session_length=1)
    history = ["i1", "i2", "i3"]
    before, _ = expected_hidden_share(model, tokenizer, history)
    rows = [{"prompt": history} for _ in range(8)]
    trainer = grpo_trainer(
        model, tokenizer, rows, [reward], tmp_path, rollout_strategy="sample", num_generations=8,
        max_steps=12, learning_rate=3e-3, ntp_weight=0.0, objective="ecpo", session_length=1,
    )  # fmt: skip
    trainer.train()
    after, top = expected_hidden_share(trainer.model, tokenizer, history)
    if direction > 0:
        assert after > before + 0.3 and top in HIDDEN
    elif direction < 0:
        assert after < before / 2 and top not in HIDDEN
    else:
        assert abs(after - before) < 0.1
