"""GRPO, ECPO, GBPO and the k3 KL term (trainers/alignment/policy_losses.py) against hand-computed values.

Sign convention under test: every function returns a loss to minimise, so a negative advantage gives a positive loss
and a positive d loss / d log pi (gradient descent lowers that sample's log-probability). Sequence-level inputs are
1-D with ``mask=None``; the loss is the mean over the batch, so a single element's gradient is ``N`` times smaller
than its per-sample derivative and the tests multiply by ``N``.
"""

import itertools
import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from trl.trainer.grpo_trainer import GRPOTrainer
from trl.trainer.utils import nanstd

from trainers.alignment.policy_losses import ecpo_loss, gbpo_loss, group_advantages, grpo_loss, kl_penalty

torch.set_num_threads(1)
F64 = torch.float64


def _sequence_case(ratios, advantages, log_pi=None):
    """Per-sequence log-probs (leaf, float64) with ``pi_theta / pi_old`` = ``ratios``."""
    ratios = torch.tensor(ratios, dtype=F64)
    log_probs = torch.full_like(ratios, math.log(0.05)) if log_pi is None else torch.tensor(log_pi, dtype=F64)
    log_probs.requires_grad_(True)
    old_log_probs = log_probs.detach() - ratios.log()
    return log_probs, old_log_probs, torch.tensor(advantages, dtype=F64)


def _loss_and_grad(loss_fn, log_probs, *args, **kwargs):
    loss, metrics = loss_fn(log_probs, *args, **kwargs)
    (grad,) = torch.autograd.grad(loss, log_probs)
    return loss.detach(), grad, metrics


# ---------------------------------------------------------------------------------------------------------------------
# group_advantages
# ---------------------------------------------------------------------------------------------------------------------


def test_group_advantages_one_hit_uses_unbiased_std():
    # r = [1, 0, 0, 0]: mean 1/4, deviations [3/4, -1/4, -1/4, -1/4]; sum of squares 9/16 + 3/16 = 3/4.
    # Unbiased variance (3/4) / 3 = 1/4 -> std 1/2 (the biased one would be sqrt(3/16) = 0.433).
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=F64)
    expected = torch.tensor([[0.75, -0.25, -0.25, -0.25]], dtype=F64) / (0.5 + 1e-4)
    torch.testing.assert_close(group_advantages(rewards), expected)
    torch.testing.assert_close(group_advantages(rewards, scale=True), expected)
    assert group_advantages(rewards)[0, 0].item() == pytest.approx(1.4997, abs=1e-4)  # not 1.732 (biased std)
    torch.testing.assert_close(group_advantages(rewards, scale="none"), expected * (0.5 + 1e-4))
    torch.testing.assert_close(group_advantages(rewards, scale=False), expected * (0.5 + 1e-4))


def test_group_advantages_batch_scale():
    # Group means 1/4 and 3/4; the std is over all 8 rewards: mean 1/2, every deviation +-1/2,
    # unbiased variance 8 * (1/4) / 7 = 2/7.
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]], dtype=F64)
    centred = torch.tensor([[0.75, -0.25, -0.25, -0.25], [0.25, 0.25, 0.25, -0.75]], dtype=F64)
    expected = centred / (math.sqrt(2 / 7) + 1e-4)
    torch.testing.assert_close(group_advantages(rewards, scale="batch"), expected)


def test_group_advantages_constant_single_and_unscored():
    constant = torch.tensor([[2.0, 2.0, 2.0], [0.0, 0.0, 0.0]])
    for scale in ("group", "batch", "none"):
        advantages = group_advantages(constant, scale=scale)
        assert not torch.isnan(advantages).any()
        torch.testing.assert_close(advantages, torch.zeros_like(constant))
    # G = 1: deviation 0 as in TRL, advantage 0.
    torch.testing.assert_close(group_advantages(torch.tensor([[3.0], [1.0]])), torch.zeros(2, 1))
    # NaN = unscored: out of the mean and std, advantage 0. Scored [1, 0, 0]: mean 1/3, unbiased var 1/3.
    rewards = torch.tensor([[1.0, float("nan"), 0.0, 0.0]], dtype=F64)
    std = math.sqrt(1 / 3)
    expected = torch.tensor([[2 / 3, 0.0, -1 / 3, -1 / 3]], dtype=F64) / (std + 1e-4)
    torch.testing.assert_close(group_advantages(rewards), expected)
    # Integer rewards are accepted.
    assert group_advantages(torch.tensor([[1, 0]])).dtype == torch.float32
    with pytest.raises(ValueError):
        group_advantages(constant, scale="max")
    with pytest.raises(ValueError):
        group_advantages(torch.ones(4))


def test_group_advantages_match_trl_formula():
    """TRL 1.16 (grpo_trainer.py 2761-2787): (r - nanmean_group) / (nanstd + 1e-4), nanstd from trl.trainer.utils."""
    generator = torch.Generator().manual_seed(0)
    rewards = torch.rand(5, 6, generator=generator, dtype=F64)
    rewards[1, 2] = float("nan")
    mean = torch.nanmean(rewards, dim=1, keepdim=True)
    trl_group = torch.nan_to_num((rewards - mean) / (nanstd(rewards, dim=1, keepdim=True) + 1e-4), nan=0.0)
    trl_batch = torch.nan_to_num((rewards - mean) / (nanstd(rewards) + 1e-4), nan=0.0)
    torch.testing.assert_close(group_advantages(rewards, scale="group"), trl_group)
    torch.testing.assert_close(group_advantages(rewards, scale="batch"), trl_batch)


# ---------------------------------------------------------------------------------------------------------------------
# The notes' example and gradients at chosen ratios
# ---------------------------------------------------------------------------------------------------------------------


def test_notes_example_ecpo_grpo_and_trl_delta():
    # A = -1, pi_theta / pi_old = 5, eps 0.2, delta 0.1.
    # GRPO: -min(5 * -1, 1.2 * -1) = 5; unclipped branch, d/dlogp = -A * rho = 5.
    # ECPO: pi'_old = pi_theta / 1.3 -> rho = 1.3; -min(-1.3, -1.2) = 1.3; d/dlogp = -A * rho = 1.3.
    # TRL's delta (INTELLECT-2) at the same bound 1.3: value 1.3 from clamp(rho, max=1.3), but the clamp
    # is flat there, so d/dlogp = 0.
    log_probs, old, advantages = _sequence_case([5.0], [-1.0])
    loss, grad, _ = _loss_and_grad(grpo_loss, log_probs, old, advantages, 0.2)
    assert (loss.item(), grad.item()) == (pytest.approx(5.0), pytest.approx(5.0))
    loss, grad, metrics = _loss_and_grad(ecpo_loss, log_probs, old, advantages, 0.2, 0.1)
    assert (loss.item(), grad.item()) == (pytest.approx(1.3), pytest.approx(1.3))
    assert metrics["early_clip_fraction"].item() == 1.0 and metrics["ratio_mean"].item() == pytest.approx(5.0)
    loss, grad, _ = _loss_and_grad(grpo_loss, log_probs, old, advantages, 0.2, delta=1.3)
    assert (loss.item(), grad.item()) == (pytest.approx(1.3), pytest.approx(0.0))


# (A, rho = pi_theta / pi_old) -> (per-sample loss, d loss / d log pi_theta), eps 0.2, delta 0.1, worked out by hand:
#   loss = -min(r A, clip(r, 0.8, 1.2) A) with r = min(rho, 1.3) for ECPO (rho for GRPO); gradient -A r on the
#   unclipped branch, 0 on the clipped one.
ECPO_CASES = [
    (-1.0, 5.0, 1.3, 1.3),  # capped ratio, unclipped branch (-1.3 < -1.2): capped non-zero gradient
    (-2.0, 5.0, 2.6, 2.6),  # the cap scales with |A|
    (-1.0, 1.25, 1.25, 1.25),  # 1.2 < rho < 1.3: below the cap, GRPO's unclipped branch
    (-1.0, 0.5, 0.8, 0.0),  # rho < 0.8 with A < 0: clipped branch -0.8 A, zero gradient
    (1.0, 5.0, -1.2, 0.0),  # A > 0, rho > 1.2: clipped branch 1.2 A, zero gradient (as GRPO)
    (1.0, 1.1, -1.1, -1.1),  # inside the clip range
    (1.0, 0.5, -0.5, -0.5),  # A > 0, rho < 0.8: the unclipped 0.5 A is the minimum
]
GRPO_CASES = [  # the same rows under GRPO: only the capped ones differ
    (-1.0, 5.0, 5.0, 5.0),
    (-2.0, 5.0, 10.0, 10.0),
    (-1.0, 1.25, 1.25, 1.25),
    (-1.0, 0.5, 0.8, 0.0),
    (1.0, 5.0, -1.2, 0.0),
    (1.0, 1.1, -1.1, -1.1),
    (1.0, 0.5, -0.5, -0.5),
]


@pytest.mark.parametrize("loss_fn,cases", [(ecpo_loss, ECPO_CASES), (grpo_loss, GRPO_CASES)], ids=["ecpo", "grpo"])
def test_clipped_losses_at_chosen_ratios(loss_fn, cases):
    advantages, ratios, losses, grads = (list(column) for column in zip(*cases))
    log_probs, old, advantages = _sequence_case(ratios, advantages, log_pi=[math.log(0.02 * (i + 1)) for i in range(7)])
    loss, grad, _ = _loss_and_grad(loss_fn, log_probs, old, advantages)
    n = len(cases)
    assert loss.item() == pytest.approx(sum(losses) / n)
    torch.testing.assert_close(grad * n, torch.tensor(grads, dtype=F64))


def test_ecpo_equals_grpo_for_positive_advantages_at_any_ratio():
    generator = torch.Generator().manual_seed(1)
    log_probs = (torch.rand(32, generator=generator, dtype=F64) * -5).requires_grad_(True)
    old = log_probs.detach() + torch.randn(32, generator=generator, dtype=F64) * 1.5
    advantages = torch.rand(32, generator=generator, dtype=F64) + 0.1
    ecpo, ecpo_grad, _ = _loss_and_grad(ecpo_loss, log_probs, old, advantages)
    grpo, grpo_grad, _ = _loss_and_grad(grpo_loss, log_probs, old, advantages)
    torch.testing.assert_close(ecpo, grpo)
    torch.testing.assert_close(ecpo_grad, grpo_grad)


# GBPO: (A, pi_theta, pi_old) -> (loss, d loss / d log pi_theta), worked out by hand:
#   pi'_old = max(pi_old, pi) for A >= 0, max(pi_old, 1 - pi) for A < 0; loss = -A pi / pi'_old; gradient the same
#   (d pi / d log pi = pi, pi'_old constant).
GBPO_CASES = [
    (1.0, 0.1, 0.2, -0.5, -0.5),  # pi'_old = 0.2: rho = 0.5
    (1.0, 0.4, 0.2, -1.0, -1.0),  # pi'_old = sg(pi) = 0.4: rho = 1, REINFORCE's -A
    (-1.0, 0.3, 0.2, 3 / 7, 3 / 7),  # pi'_old = 1 - 0.3 = 0.7
    (-1.0, 0.9, 0.5, 1.8, 1.8),  # pi'_old = pi_old = 0.5 (> 1 - 0.9)
    (-0.5, 0.6, 0.01, 0.75, 0.75),  # pi'_old = 0.4: 0.5 * 0.6 / 0.4
    (0.0, 0.3, 0.1, 0.0, 0.0),
]


def test_gbpo_at_chosen_probabilities():
    advantages, pi, pi_old, losses, grads = (list(column) for column in zip(*GBPO_CASES))
    log_probs = torch.tensor(pi, dtype=F64).log().requires_grad_(True)
    old = torch.tensor(pi_old, dtype=F64).log()
    loss, grad, metrics = _loss_and_grad(gbpo_loss, log_probs, old, torch.tensor(advantages, dtype=F64))
    n = len(GBPO_CASES)
    assert loss.item() == pytest.approx(sum(losses) / n)
    torch.testing.assert_close(grad * n, torch.tensor(grads, dtype=F64))
    # The stop-gradient term replaced pi_old in rows 2, 3 and 5 (and 6: A = 0 >= 0, pi 0.3 > 0.1).
    assert metrics["bound_fraction"].item() == pytest.approx(4 / 6)


def test_gbpo_negative_gradient_is_bce_gradient():
    """For A = -1 and pi_old <= 1 - pi, d loss / d pi = 1 / (1 - pi) = d/dp [-log(1 - p)] (BCE's negative term)."""
    pi = torch.tensor([0.05, 0.3, 0.6, 0.95], dtype=F64, requires_grad=True)
    old = torch.tensor([0.01, 0.2, 0.3, 0.04], dtype=F64).log()
    loss, _ = gbpo_loss(pi.log(), old, torch.full((4,), -1.0, dtype=F64))
    (grad,) = torch.autograd.grad(loss * 4, pi)
    bce = torch.tensor([0.05, 0.3, 0.6, 0.95], dtype=F64, requires_grad=True)
    (bce_grad,) = torch.autograd.grad(-torch.log1p(-bce).sum(), bce)
    torch.testing.assert_close(grad, bce_grad)
    torch.testing.assert_close(grad, 1 / (1 - pi.detach()))


def test_gbpo_is_stable_for_extreme_log_probs():
    # log pi near 0 (pi ~ 1: 1 - pi by expm1) and far below (a whole session): finite values and gradients.
    log_probs = torch.tensor([-1e-12, -1e-3, -60.0, 0.0], dtype=F64, requires_grad=True)
    old = torch.tensor([-1e-12, -2.0, -59.0, -0.5], dtype=F64)
    for advantages in (torch.full((4,), -1.0, dtype=F64), torch.full((4,), 1.0, dtype=F64)):
        loss, grad, _ = _loss_and_grad(gbpo_loss, log_probs, old, advantages)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
    # A < 0, pi = 1 - 1e-3: pi'_old = max(e^-2, 1 - pi) = e^-2 (1 - pi ~ 1e-3), gradient pi / e^-2.
    loss, grad, _ = _loss_and_grad(gbpo_loss, log_probs[1:2], old[1:2], torch.tensor([-1.0], dtype=F64))
    assert grad.item() == pytest.approx(math.exp(-1e-3) / math.exp(-2.0))
    # A < 0, a session with pi = e^-60: 1 - pi rounds to 1, the gradient is ~pi (vanishing).
    loss, grad, _ = _loss_and_grad(gbpo_loss, log_probs[2:3], old[2:3], torch.tensor([-1.0], dtype=F64))
    assert grad.item() == pytest.approx(math.exp(-60.0), rel=1e-9)


def test_ecpo_equals_grpo_at_ratio_one():
    """One update per generated batch: old = sg(current), ratio 1, ECPO == GRPO == -mean(A), gradient -A / N."""
    generator = torch.Generator().manual_seed(2)
    log_probs = (torch.rand(16, generator=generator, dtype=F64) * -8).requires_grad_(True)
    advantages = torch.randn(16, generator=generator, dtype=F64)
    results = [
        _loss_and_grad(fn, log_probs, old, advantages)
        for fn in (grpo_loss, ecpo_loss)
        for old in (None, log_probs.detach())
    ]
    for loss, grad, metrics in results:
        torch.testing.assert_close(loss, -advantages.mean())
        torch.testing.assert_close(grad, -advantages / 16)
        assert metrics["ratio_mean"].item() == pytest.approx(1.0)
    # GBPO agrees for A >= 0 (pi'_old = pi) but not for A < 0 (pi'_old = max(pi, 1 - pi)).
    positive = advantages.abs()
    gbpo, gbpo_grad, _ = _loss_and_grad(gbpo_loss, log_probs, None, positive)
    torch.testing.assert_close(gbpo, -positive.mean())
    torch.testing.assert_close(gbpo_grad, -positive / 16)


def test_per_token_inputs_and_aggregation():
    # On-policy (ratio 1): per-token loss = -A. A = [1, -3], mask [[1, 1, 0], [1, 0, 0]]:
    # token losses row 0: -1, -1; row 1: 3. Masked positions hold NaN and must not leak.
    log_probs = torch.tensor([[-0.5, -1.0, float("nan")], [-2.0, float("nan"), float("nan")]], dtype=F64)
    log_probs.requires_grad_(True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    advantages = torch.tensor([1.0, -3.0], dtype=F64)
    expected = {
        ("grpo", None): (-1 + 3) / 2,  # token mean per sequence (-1, 3), then the mean
        ("bnpo", None): (-1 - 1 + 3) / 3,  # over the 3 valid tokens
        ("dapo", None): (-1 - 1 + 3) / 3,  # default normalizer = valid tokens here
        ("dapo", 4): (-1 - 1 + 3) / 4,  # e.g. TRL's global count over processes
        ("dr_grpo", None): (-1 - 1 + 3) / (2 * 3),  # N * T
    }
    for (loss_type, items), value in expected.items():
        for fn in (grpo_loss, ecpo_loss):  # (GBPO at ratio 1 weights negative tokens by pi / max(pi, 1 - pi))
            loss, grad, _ = _loss_and_grad(
                fn, log_probs, None, advantages, mask=mask, loss_type=loss_type, num_items_in_batch=items
            )
            assert loss.item() == pytest.approx(value), (fn.__name__, loss_type)
            assert torch.isfinite(grad).all() and (grad[~mask] == 0).all()
    loss, _ = grpo_loss(log_probs, None, advantages, mask=mask, loss_type="dr_grpo", max_completion_length=5)
    assert loss.item() == pytest.approx(1 / 10)
    # Per-token advantages [N, T] are accepted too; sequence advantages of the wrong length are not.
    loss, _ = grpo_loss(log_probs, None, advantages[:, None].expand(2, 3), mask=mask, loss_type="bnpo")
    assert loss.item() == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        grpo_loss(log_probs, None, torch.ones(3), mask=mask)
    with pytest.raises(ValueError):
        grpo_loss(log_probs, None, advantages, mask=mask, loss_type="sapo")
    with pytest.raises(ValueError):
        grpo_loss(log_probs[0], None, advantages[:1], mask=mask[0])


def test_kl_penalty_k3():
    # log pi = -1, log ref = -2: d = -1, k3 = e^-1 + 1 - 1 = 0.3679; d k3 / d log pi = 1 - e^-1.
    log_probs = torch.tensor([-1.0, -3.0], dtype=F64, requires_grad=True)
    ref = torch.tensor([-2.0, -3.0], dtype=F64)
    kl = kl_penalty(log_probs, ref)
    (grad,) = torch.autograd.grad(kl, log_probs)
    assert kl.item() == pytest.approx((math.exp(-1.0) + 1 - 1) / 2)  # the second element's k3 is 0
    torch.testing.assert_close(grad, torch.tensor([(1 - math.exp(-1.0)) / 2, 0.0], dtype=F64))


# ---------------------------------------------------------------------------------------------------------------------
# TRL 1.16's own loss code on the same tensors
# ---------------------------------------------------------------------------------------------------------------------


class _Accelerator:
    num_processes = 1

    def gather(self, tensor):
        return tensor

    gather_for_metrics = gather

    def reduce(self, tensor, reduction="sum"):
        return tensor


def _trl_loss(per_token_logps, old, advantages, mask, loss_type, beta=0.0, ref=None, delta=None, max_length=None):
    """``GRPOTrainer._compute_loss`` (TRL 1.16) run unbound on a stand-in ``self`` that returns the given log-probs.

    It reads private attributes of the trainer (the list below), so it follows TRL's minor version (setup.py pins
    ``trl>=1.16,<1.17``); a failure here after an upgrade means re-reading ``_compute_loss``, not a broken loss.
    """
    n, t = per_token_logps.shape
    trainer = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *args, **kwargs: (per_token_logps, torch.zeros(n, t), None),
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level="token",
        beta=beta,
        loss_type=loss_type,
        epsilon_low=0.2,
        epsilon_high=0.28,
        args=SimpleNamespace(delta=delta, use_bias_correction_kl=False, steps_per_generation=1),
        use_vllm=False,
        vllm_importance_sampling_correction=False,
        model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1,
        max_completion_length=max_length,
        accelerator=_Accelerator(),
        _entropy_bonus_enabled=False,
        aux_loss_enabled=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
    )
    inputs = {
        "prompt_ids": torch.zeros(n, 1, dtype=torch.long),
        "prompt_mask": torch.ones(n, 1, dtype=torch.long),
        "completion_ids": torch.zeros(n, t, dtype=torch.long),
        "completion_mask": mask.long(),
        "advantages": advantages,
        "old_per_token_logps": old,
        "num_items_in_batch": mask.sum(),
    }
    if ref is not None:
        inputs["ref_per_token_logps"] = ref
    loss = GRPOTrainer._compute_loss(trainer, None, inputs)
    return loss, trainer._metrics["train"]


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize("beta,delta", [(0.0, None), (0.04, None), (0.0, 1.5)])
def test_grpo_loss_matches_trl(loss_type, beta, delta):
    generator = torch.Generator().manual_seed(3)
    n, t = 6, 5
    per_token_logps = (torch.rand(n, t, generator=generator) * -4).requires_grad_(True)
    old = per_token_logps.detach() + torch.randn(n, t, generator=generator) * 0.6  # stale: ratios around 1
    ref = per_token_logps.detach() + torch.randn(n, t, generator=generator) * 0.3
    mask = torch.rand(n, t, generator=generator) > 0.3
    mask[:, 0] = True
    advantages = torch.randn(n, generator=generator).abs() * torch.tensor([-1.0, 1.0] * 3)
    trl_loss, trl_metrics = _trl_loss(per_token_logps, old, advantages, mask, loss_type, beta, ref, delta, max_length=7)
    (trl_grad,) = torch.autograd.grad(trl_loss, per_token_logps)
    options = dict(mask=mask, loss_type=loss_type, max_completion_length=7)
    loss, metrics = grpo_loss(per_token_logps, old, advantages, 0.2, epsilon_high=0.28, delta=delta, **options)
    if beta:
        loss = loss + beta * kl_penalty(per_token_logps, ref, **options)
        assert kl_penalty(per_token_logps, ref, mask=mask, loss_type="bnpo").item() == pytest.approx(
            trl_metrics["kl"][0], rel=1e-5
        )
    (grad,) = torch.autograd.grad(loss, per_token_logps)
    torch.testing.assert_close(loss, trl_loss)
    torch.testing.assert_close(grad, trl_grad)
    for name in ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"):
        if delta is None:  # TRL computes its clip metrics after clamping the ratio at delta
            assert metrics[name].item() == pytest.approx(trl_metrics[name][0], abs=1e-6)
    assert 0 < metrics["clip_ratio/region_mean"].item() < 1  # the case exercises clipping
    if delta is not None:  # ... and TRL's delta bound (ratios above 1.5 with A < 0)
        assert loss.item() != pytest.approx(
            grpo_loss(per_token_logps, old, advantages, 0.2, epsilon_high=0.28, **options)[0].item()
        )


# ---------------------------------------------------------------------------------------------------------------------
# Expected GRPO gradient on an enumerable policy
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("group_size", [2, 3, 4])
def test_expected_grpo_gradient_is_scaled_policy_gradient(group_size):
    """Exact expectation over all ordered groups of G draws (with replacement) from a softmax policy over 8 sessions.

    With ``scale="none"`` the advantage is ``A_i = r_i - (1/G) sum_j r_j`` and, on-policy (ratio 1), the loss
    gradient of one group is ``-(1/G) sum_i A_i grad log pi(o_i)``. Taking the expectation, for ``j != i`` draws are
    independent and ``E[grad log pi(o_i)] = 0``, so ``E[r_j grad log pi(o_i)] = 0``; for ``j = i`` it is
    ``E[r grad log pi] = grad E_pi[r]``. Hence ``E[sum_i A_i grad log pi(o_i)] = G grad J - (1/G) G grad J``,
    and ``E[grad loss] = -((G - 1) / G) grad J`` exactly, ``J = sum_k pi_k r_k``. (The leave-one-out baseline,
    ``A_i * G / (G - 1)``, is unbiased: ``-grad J``.) With ``scale="group"`` the division by the group's std, a
    function of the same draws, breaks the equality, so that variant is not exact and is not tested here.

    The expectation ``sum_d P(d) grad loss_d`` over the ``8^G`` groups ``d`` is computed in one call: at ratio 1
    the surrogate is linear in ``A`` with positive weights (``min(w a, w a) = w a``), so feeding advantages
    ``A_di * P(d) * D`` (``P`` detached, ``D`` groups) into the batch mean gives ``sum_d P(d) loss_d``. For
    ``G = 2`` the same sum is also computed group by group.
    """
    generator = torch.Generator().manual_seed(4)
    logits = torch.randn(8, generator=generator, dtype=F64).requires_grad_(True)
    rewards = torch.rand(8, generator=generator, dtype=F64) * 2 - 0.5
    log_pi = torch.log_softmax(logits, dim=0)

    (exact,) = torch.autograd.grad((log_pi.exp() * rewards).sum(), logits, retain_graph=True)

    draws = torch.tensor(list(itertools.product(range(8), repeat=group_size)))  # [D, G]
    probability = log_pi.detach()[draws].sum(1).exp()  # P(d), [D]
    assert probability.sum().item() == pytest.approx(1.0)
    advantages = group_advantages(rewards[draws], scale="none")  # [D, G]
    weighted = advantages * probability[:, None] * len(draws)
    for loss_fn in (grpo_loss, ecpo_loss):
        loss, _ = loss_fn(log_pi[draws], None, weighted)
        (expected_grad,) = torch.autograd.grad(loss, logits, retain_graph=True)
        torch.testing.assert_close(expected_grad, -(group_size - 1) / group_size * exact)
    loss, _ = grpo_loss(log_pi[draws], None, weighted * group_size / (group_size - 1))
    (leave_one_out,) = torch.autograd.grad(loss, logits, retain_graph=True)
    torch.testing.assert_close(leave_one_out, -exact)

    if group_size == 2:
        total = torch.zeros_like(logits)
        for group, p, group_advantage in zip(draws, probability, advantages):
            loss, _ = grpo_loss(log_pi[group], None, group_advantage)
            total += p * torch.autograd.grad(loss, logits, retain_graph=True)[0]
        torch.testing.assert_close(total, -0.5 * exact)
