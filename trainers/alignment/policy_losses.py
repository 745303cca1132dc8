"""Policy-gradient losses for on-policy alignment of OneRec: GRPO, ECPO (OneRec) and GBPO (OneRec-V2).

Plain, standalone torch functions (no trainer, no model): a trainer generates a group of ``G`` sessions per user
history, scores them (reward model or real feedback), turns rewards into advantages with :func:`group_advantages`,
and calls one of the losses on the sessions' log-probabilities.

* :func:`group_advantages` -- GRPO's group-relative advantage ``(r - mean_group) / (std + eps)``.
* :func:`grpo_loss` -- GRPO / PPO clipped surrogate (DeepSeekMath, arXiv 2402.03300, §4.1), TRL 1.16's formula.
* :func:`ecpo_loss` -- Early-Clipped GRPO, OneRec Technical Report (arXiv 2506.13695), the RL stage (§2.4).
* :func:`gbpo_loss` -- Gradient-Bounded Policy Optimization, OneRec-V2 Technical Report (arXiv 2508.20900), §3.
* :func:`kl_penalty` -- the k3 estimator of KL(pi_theta || pi_ref), TRL's ``beta`` term.

Sign convention
    Every function returns a **loss to minimise**. For GRPO and ECPO that is ``-J`` with ``J`` the papers' surrogate
    objective (to maximise); OneRec-V2 already writes GBPO's ``J`` as a loss (``J = -E[ratio * A]``), so
    :func:`gbpo_loss` returns that ``J`` itself. A positive advantage therefore gives a negative loss whose gradient
    w.r.t. ``log pi_theta`` is negative (gradient descent raises the sample's log-probability); a negative advantage
    gives a positive loss and a positive gradient. Example (the project's notes): ``A = -1``, ratio 5, ``eps = 0.2``,
    ``delta = 0.1``: ECPO loss ``1.30`` and d loss / d log pi ``1.30``; GRPO ``5.00`` and ``5.00``.

Unit of the policy
    OneRec's action is a whole session (or one item): ``log pi(session | history)`` is the sum of its code-token
    log-probabilities, each normalised over its level (:func:`~trainers.alignment.session_scoring.session_log_probs`,
    one definition for DPO and RL). Pass such per-sequence log-probabilities with ``mask=None``: every element of
    ``log_probs`` is then one sequence, its ratio is the exact sequence ratio ``pi_theta(o) / pi_old(o) =
    exp(sum_t log_ratio_t)`` and the loss is the mean over all elements (over the batch of ``B * G`` sessions, i.e.
    ``E_u[(1/G) sum_i ...]`` for equal groups). This is *not* TRL's ``importance_sampling_level="sequence"`` (GSPO),
    whose ratio is the geometric mean ``exp(mean_t log_ratio_t)``.

    Per-token log-probabilities ``[N, T]`` with a ``mask`` are also accepted: then each token has its own ratio
    ``pi_theta(o_t | o_<t) / pi_old(o_t | o_<t)`` (TRL's default ``importance_sampling_level="token"``), the
    sequence's advantage is broadcast to its tokens, and the per-token losses are aggregated as TRL 1.16
    (``trl/trainer/grpo_trainer.py`` lines 3153-3174) does for ``loss_type``:

    - ``"grpo"``: ``mean_i [ sum_t m_it l_it / max(1, sum_t m_it) ]`` (each sequence's token mean, then the mean);
    - ``"bnpo"``: ``sum_it m_it l_it / max(1, sum_it m_it)`` (mean over the batch's valid tokens);
    - ``"dapo"`` (TRL's default): ``sum_it m_it l_it / max(1, num_items_in_batch)``; ``num_items_in_batch``
      defaults to ``sum_it m_it`` (then equal to ``"bnpo"``). TRL passes the valid-token count of the whole
      generation batch over all processes, divided by the number of processes and rescaled by
      ``gradient_accumulation_steps / steps_per_generation`` in training, so that DDP's gradient average and the
      accumulated micro-batches give one token mean over the global batch: pass that number to reproduce it;
    - ``"dr_grpo"``: ``sum_it m_it l_it / (N * max_completion_length)`` (default ``T``).

    TRL's trainer also divides ``grpo``/``bnpo``/``dr_grpo`` by the gradient-accumulation steps; that is the trainer's
    business, not these functions'. The clip metrics are means over the valid elements (TRL's ``*_mean`` metrics).

Not implemented here (TRL options with no counterpart): GSPO's sequence-level geometric-mean ratio, ``cispo``,
``sapo``, ``vespo``, ``luspo``, the vLLM importance-sampling correction, ``use_bias_correction_kl``, the
off-policy sequence mask, entropy masking and the entropy bonus. Log-ratios are not clamped (as in TRL): a
log-ratio above ~88 overflows float32; ECPO and GBPO bound the negative side, where stale ratios do damage.

Advantages are treated as constants (detached). Computation is in float32 at least (float64 stays float64).
"""

from __future__ import annotations

import math
from typing import Dict, Literal, Optional, Tuple, Union

import torch

__all__ = [
    "LossType",
    "RewardScale",
    "ecpo_loss",
    "gbpo_loss",
    "group_advantages",
    "grpo_loss",
    "kl_penalty",
]

RewardScale = Literal["group", "batch", "none"]
LossType = Literal["grpo", "bnpo", "dapo", "dr_grpo"]
LOSS_TYPES = ("grpo", "bnpo", "dapo", "dr_grpo")


# ---------------------------------------------------------------------------------------------------------------------
# Advantages
# ---------------------------------------------------------------------------------------------------------------------


def _nanstd(values: torch.Tensor, dim: Optional[int] = None) -> torch.Tensor:
    """Standard deviation ignoring NaNs, with Bessel's correction (``n - 1``): NaN where fewer than 2 values.

    The same estimator as TRL 1.16's ``trl.trainer.utils.nanstd`` (``variance *= count / (count - 1)``).
    """
    if dim is None:
        values, dim = values.reshape(-1), 0
    mean = torch.nanmean(values, dim=dim, keepdim=True)
    variance = torch.nanmean((values - mean) ** 2, dim=dim)
    count = (~torch.isnan(values)).sum(dim=dim).to(values.dtype)
    correction = torch.where(count > 1, count / (count - 1).clamp(min=1), torch.full_like(count, float("nan")))
    return torch.sqrt(variance * correction)


def group_advantages(
    rewards: torch.Tensor, scale: Union[RewardScale, bool] = "group", eps: float = 1e-4
) -> torch.Tensor:
    """GRPO's group-relative advantages (DeepSeekMath §4.1.2; OneRec Technical Report §2.4, ECPO's ``A_i``).

    ``A_ij = (r_ij - mean_j r_ij) / (s + eps)`` where ``s`` is, by ``scale`` (TRL 1.16's ``scale_rewards``):

    - ``"group"`` (or ``True``): the standard deviation of user ``i``'s group of ``G`` rewards;
    - ``"batch"``: the standard deviation of all ``B * G`` rewards (the baseline is still the group mean);
    - ``"none"`` (or ``False``): no division, ``A = r - mean_group`` (Dr. GRPO; OneRec-V2's +1/0/-1 rewards are used
      unnormalised, which is ``"none"`` without the mean either: pass those rewards directly as advantages).

    The standard deviation is the **unbiased** one (Bessel's correction, divide by ``n - 1``), as TRL 1.16 computes
    it (``trl/trainer/utils.py`` ``nanstd``, used at ``grpo_trainer.py`` lines 2767-2787). A constant group has
    ``s = 0`` and gets advantages ``0 / eps = 0`` (no NaN). With ``G = 1`` the deviation is 0 (TRL's choice), so the
    advantage is 0. NaN rewards mark unscored samples (TRL: every reward function returned ``None``): they are left
    out of the mean and the deviation, and their advantage is 0.

    TRL normalises the rewards gathered from all processes; do the same (gather before calling) when a group or the
    ``"batch"`` statistics span processes.

    Args:
        rewards: ``[B, G]`` rewards, one row per user history (prompt), ``G`` generated sessions each.
        scale: ``"group"``, ``"batch"`` or ``"none"`` (``True``/``False`` as TRL's ``scale_rewards``).
        eps: Added to the deviation (TRL: ``1e-4``).

    Returns:
        ``[B, G]`` advantages (flatten with ``.reshape(-1)`` for the losses), same dtype as ``rewards`` (float).
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [B, G], got shape {tuple(rewards.shape)}")
    scale = {True: "group", False: "none"}.get(scale, scale)
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    rewards = rewards.float() if not rewards.is_floating_point() else rewards
    advantages = rewards - torch.nanmean(rewards, dim=1, keepdim=True)
    if scale == "group":
        std = _nanstd(rewards, dim=1)[:, None] if rewards.shape[1] > 1 else torch.zeros_like(rewards)
        advantages = advantages / (std + eps)
    elif scale == "batch":
        std = _nanstd(rewards) if rewards.numel() > 1 else torch.zeros((), dtype=rewards.dtype, device=rewards.device)
        advantages = advantages / (std + eps)
    return torch.nan_to_num(advantages, nan=0.0)


# ---------------------------------------------------------------------------------------------------------------------
# Shared plumbing
# ---------------------------------------------------------------------------------------------------------------------


def _prepare(
    log_probs: torch.Tensor,
    other_log_probs: Optional[torch.Tensor],
    advantages: Optional[torch.Tensor],
    mask: Optional[torch.Tensor],
) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Check shapes, upcast, broadcast advantages over tokens; masked positions get log-prob 0 (no NaN leaks)."""
    dtype = torch.promote_types(log_probs.dtype, torch.float32)
    log_probs = log_probs.to(dtype)
    other = log_probs.detach() if other_log_probs is None else other_log_probs.detach().to(dtype)
    if other.shape != log_probs.shape:
        raise ValueError(f"old/ref log-probs have shape {tuple(other.shape)}, log_probs {tuple(log_probs.shape)}")
    if mask is not None:
        if log_probs.dim() != 2 or mask.shape != log_probs.shape:
            raise ValueError(
                f"with a mask, log_probs must be per-token [N, T] and mask the same shape; got log_probs "
                f"{tuple(log_probs.shape)}, mask {tuple(mask.shape)}"
            )
        mask = mask.to(device=log_probs.device, dtype=torch.bool)
        log_probs = torch.where(mask, log_probs, torch.zeros_like(log_probs))
        other = torch.where(mask, other, torch.zeros_like(other))
    if advantages is not None:
        advantages = advantages.detach().to(device=log_probs.device, dtype=dtype)
        if mask is not None and advantages.dim() == 1:
            advantages = advantages[:, None]  # [N] -> [N, 1]: one advantage per sequence, broadcast to its tokens
        try:
            advantages = torch.broadcast_to(advantages, log_probs.shape)
        except RuntimeError as error:
            raise ValueError(
                f"advantages of shape {tuple(advantages.shape)} do not broadcast to log_probs "
                f"{tuple(log_probs.shape)} (per-token inputs take [N] or [N, T] advantages)"
            ) from error
    return log_probs, other, advantages, mask


def _aggregate(
    values: torch.Tensor,
    mask: Optional[torch.Tensor],
    loss_type: str,
    num_items_in_batch: Optional[Union[int, float, torch.Tensor]],
    max_completion_length: Optional[int],
) -> torch.Tensor:
    """Reduce per-element losses to a scalar: the mean without a mask, else TRL 1.16's ``loss_type`` aggregation."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if mask is None:
        return values.mean()
    weights = mask.to(values.dtype)
    masked = values * weights
    if loss_type == "grpo":
        return (masked.sum(-1) / weights.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "bnpo":
        return masked.sum() / weights.sum().clamp(min=1.0)
    if loss_type == "dapo":
        normalizer = weights.sum() if num_items_in_batch is None else num_items_in_batch
        normalizer = torch.as_tensor(normalizer, dtype=values.dtype, device=values.device)
        return masked.sum() / normalizer.clamp(min=1.0)
    length = values.shape[-1] if max_completion_length is None else max_completion_length
    return masked.sum() / (values.shape[0] * length)


def _mean(values: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Detached mean over the valid elements (all elements without a mask)."""
    values = values.detach().to(torch.float32 if not values.is_floating_point() else values.dtype)
    if mask is None:
        return values.mean()
    weights = mask.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp(min=1.0)


def _clipped_surrogate(
    log_ratio: torch.Tensor,
    advantages: torch.Tensor,
    epsilon_low: float,
    epsilon_high: float,
    delta: Optional[float],
    mask: Optional[torch.Tensor],
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """``-min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A)`` per element, and TRL's clip metrics."""
    ratio = torch.exp(log_ratio)
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    unclipped = ratio if delta is None else torch.clamp(ratio, max=delta)
    per_element = -torch.min(unclipped * advantages, clipped * advantages)
    low = (ratio < 1 - epsilon_low) & (advantages < 0)
    high = (ratio > 1 + epsilon_high) & (advantages > 0)
    metrics = {
        "clip_ratio/low_mean": _mean(low, mask),
        "clip_ratio/high_mean": _mean(high, mask),
        "clip_ratio/region_mean": _mean(low | high, mask),
    }
    return per_element, metrics


# ---------------------------------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------------------------------


def grpo_loss(
    log_probs: torch.Tensor,
    old_log_probs: Optional[torch.Tensor],
    advantages: torch.Tensor,
    epsilon: float = 0.2,
    *,
    epsilon_high: Optional[float] = None,
    delta: Optional[float] = None,
    mask: Optional[torch.Tensor] = None,
    loss_type: LossType = "dapo",
    num_items_in_batch: Optional[Union[int, float, torch.Tensor]] = None,
    max_completion_length: Optional[int] = None,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """GRPO's clipped surrogate (DeepSeekMath, arXiv 2402.03300, §4.1; PPO's objective with group advantages).

    ``loss = -mean[ min(rho A, clip(rho, 1 - eps, 1 + eps_high) A) ]``, ``rho = pi_theta / pi_old =
    exp(log_probs - old_log_probs)``. The gradient w.r.t. ``log pi_theta`` is ``-A rho`` (divided by the
    aggregation's count) where the unclipped term is the minimum, and 0 where the clipped one is (``rho > 1 + eps``
    with ``A > 0``, ``rho < 1 - eps`` with ``A < 0``). With ``A < 0`` and ``rho > 1 + eps`` nothing is clipped: the
    gradient grows with ``rho`` without bound (what ECPO caps). The KL term is separate (:func:`kl_penalty`).

    Identical to TRL 1.16's ``GRPOTrainer._compute_loss`` for ``loss_type`` in ``grpo/bnpo/dapo/dr_grpo`` with
    ``importance_sampling_level="token"`` on per-token inputs (``grpo_trainer.py`` lines 3082-3119: ``coef_1 =
    exp(log_ratio)``, ``coef_2 = clamp(coef_1, 1 - epsilon_low, 1 + epsilon_high)``, ``-min(coef_1 A, coef_2 A)``),
    including ``delta`` (INTELLECT-2's two-sided clip, ``coef_1 = clamp(coef_1, max=delta)``: for ``A < 0`` and
    ``rho > delta`` the loss is ``-delta A`` with **zero** gradient -- unlike ECPO's capped, non-zero gradient).

    Args:
        log_probs: ``[N]`` (or any shape) per-sequence log-probabilities ``log pi_theta(o | u)`` with ``mask=None``,
            or ``[N, T]`` per-token log-probabilities with ``mask``; differentiable.
        old_log_probs: Same shape, from the policy that generated the samples (no gradient). ``None``: on-policy,
            ``log_probs.detach()`` (ratio 1), as TRL with ``num_iterations=1``.
        advantages: Broadcastable to ``log_probs`` (``[N]`` for per-token inputs is broadcast over tokens).
        epsilon: Clip range (lower, and upper unless ``epsilon_high``).
        epsilon_high: Upper clip range (DAPO's clip-higher); defaults to ``epsilon``.
        delta: TRL's optional upper bound on the unclipped ratio (``None``: off).
        mask: ``[N, T]`` valid tokens; ``None`` when each element of ``log_probs`` is one sequence.
        loss_type / num_items_in_batch / max_completion_length: Token aggregation with a mask (module docstring);
            ignored without one (mean over elements).

    Returns:
        ``(loss, metrics)``: the scalar loss, and detached ``ratio_mean`` (mean ``pi_theta / pi_old``) and TRL's
        ``clip_ratio/low_mean``, ``clip_ratio/high_mean``, ``clip_ratio/region_mean``.
    """
    log_probs, old_log_probs, advantages, mask = _prepare(log_probs, old_log_probs, advantages, mask)
    log_ratio = log_probs - old_log_probs
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    per_element, metrics = _clipped_surrogate(log_ratio, advantages, epsilon, epsilon_high, delta, mask)
    loss = _aggregate(per_element, mask, loss_type, num_items_in_batch, max_completion_length)
    return loss, {"ratio_mean": _mean(torch.exp(log_ratio), mask), **metrics}


def ecpo_loss(
    log_probs: torch.Tensor,
    old_log_probs: Optional[torch.Tensor],
    advantages: torch.Tensor,
    epsilon: float = 0.2,
    delta: float = 0.1,
    *,
    mask: Optional[torch.Tensor] = None,
    loss_type: LossType = "dapo",
    num_items_in_batch: Optional[Union[int, float, torch.Tensor]] = None,
    max_completion_length: Optional[int] = None,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Early-Clipped GRPO (ECPO), OneRec Technical Report (arXiv 2506.13695), §2.4.

    ``J = E[(1/G) sum_i min(rho_i A_i, clip(rho_i, 1 - eps, 1 + eps) A_i)]``, ``rho_i = pi_theta(o_i|u) /
    pi'_old(o_i|u)``, ``pi'_old = max(sg(pi_theta) / (1 + eps + delta), pi_old)``; loss ``= -J`` (mean over the
    batch). Computed in log space: ``log pi'_old = max(sg(log pi_theta) - log(1 + eps + delta), log pi_old)``.

    Effect: the ratio's *value* becomes ``min(pi_theta / pi_old, 1 + eps + delta)`` while ``d rho / d log pi_theta =
    rho`` still (``pi'_old`` is a constant for autograd). For ``A < 0`` a stale sample with ``pi_theta >> pi_old``
    (the unclipped branch of GRPO's ``min``, gradient ``-A pi_theta / pi_old``, unbounded) has its loss and its
    gradient capped at ``-(1 + eps + delta) A``: capped, never zeroed (TRL's ``delta`` zeroes it). For ``A > 0``
    it is plain GRPO: where the cap binds, ``rho > 1 + eps`` before and after, so the clipped branch ``(1 + eps) A``
    (zero gradient) is taken either way. With ``old_log_probs == log_probs`` (one update per generated batch) the
    ratio is 1 and ECPO equals GRPO exactly.

    OneRec uses no KL term (the NTP loss on real sessions is trained jointly) and ``delta = 0.1``.

    Args:
        log_probs / old_log_probs / advantages / mask / loss_type / num_items_in_batch / max_completion_length:
            As :func:`grpo_loss` (per-sequence ``[N]`` without a mask, per-token ``[N, T]`` with one).
        epsilon: Clip range (``eps``).
        delta: Early-clip margin; the negative-advantage ratio is capped at ``1 + epsilon + delta``.

    Returns:
        ``(loss, metrics)``: ``ratio_mean`` (raw ``pi_theta / pi_old``), ``early_clip_fraction`` (elements with
        ``A < 0`` whose raw ratio exceeds ``1 + eps + delta``), and the clip metrics of :func:`grpo_loss` computed on
        the early-clipped ratio.
    """
    log_probs, old_log_probs, advantages, mask = _prepare(log_probs, old_log_probs, advantages, mask)
    log_cap = math.log1p(epsilon + delta)
    raw_log_ratio = (log_probs - old_log_probs).detach()
    log_old_prime = torch.maximum(log_probs.detach() - log_cap, old_log_probs)
    per_element, metrics = _clipped_surrogate(log_probs - log_old_prime, advantages, epsilon, epsilon, None, mask)
    loss = _aggregate(per_element, mask, loss_type, num_items_in_batch, max_completion_length)
    early = (raw_log_ratio > log_cap) & (advantages < 0)
    return loss, {
        "ratio_mean": _mean(torch.exp(raw_log_ratio), mask),
        "early_clip_fraction": _mean(early, mask),
        **metrics,
    }


def _log1mexp(log_p: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(log_p))`` for ``log_p <= 0``, stable at both ends (Maechler 2012): ``log(-expm1(x))`` for
    ``x > -log 2``, ``log1p(-exp(x))`` otherwise. ``-inf`` at ``log_p = 0``; inputs above 0 are clamped to 0."""
    log_p = log_p.clamp(max=0.0)
    near_zero = log_p > -math.log(2.0)
    return torch.where(near_zero, torch.log(-torch.expm1(log_p)), torch.log1p(-torch.exp(log_p)))


def gbpo_loss(
    log_probs: torch.Tensor,
    old_log_probs: Optional[torch.Tensor],
    advantages: torch.Tensor,
    *,
    mask: Optional[torch.Tensor] = None,
    loss_type: LossType = "dapo",
    num_items_in_batch: Optional[Union[int, float, torch.Tensor]] = None,
    max_completion_length: Optional[int] = None,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Gradient-Bounded Policy Optimization (GBPO), OneRec-V2 Technical Report (arXiv 2508.20900), §3.

    ``J = -E[(1/G) sum_i pi_theta(o_i|u) / pi'_old(o_i|u) * A_i]`` (already a loss: this returns ``J``), with
    ``pi'_old = max(pi_old, sg(pi_theta))`` for ``A >= 0`` and ``pi'_old = max(pi_old, 1 - sg(pi_theta))`` for
    ``A < 0``. No ratio clipping. The gradient w.r.t. ``log pi_theta`` is ``-A pi_theta / pi'_old``:

    - ``A >= 0``: ``-A min(1, pi_theta / pi_old)``, at most the on-policy REINFORCE gradient ``-A``;
    - ``A < 0``: ``|A| pi_theta / max(pi_old, 1 - pi_theta)``. Where ``pi_old <= 1 - pi_theta`` the gradient w.r.t.
      ``pi_theta`` is ``|A| / (1 - pi_theta)``, a binary cross-entropy's ``d/dp [-log(1 - p)]``: bounded by the
      BCE's, and by ``|A| pi_theta / pi_old`` always (no blow-up as ``pi_theta`` grows past ``pi_old``).

    Stable computation from log-probabilities: ``log pi'_old = max(log pi_old, sg(log pi_theta))`` for ``A >= 0`` and
    ``max(log pi_old, log(1 - exp(sg(log pi_theta))))`` for ``A < 0``, with ``log(1 - e^x)`` by ``log(-expm1(x))``
    near ``x = 0`` and ``log1p(-exp(x))`` below ``-log 2`` (no cancellation either way); then ``ratio =
    exp(log pi_theta - log pi'_old)``.

    Note: for a whole session ``pi_theta`` is tiny (a sum of many code log-probs), so ``1 - pi_theta ~ 1`` and the
    negative gradient is about ``|A| pi_theta``, nearly zero. OneRec-V2's ``o_i`` is one item; per-token inputs (with
    ``mask``) make ``1 - pi`` the mass of the other codes at that step.

    Args:
        As :func:`grpo_loss` (no clip parameters).

    Returns:
        ``(loss, metrics)``: ``ratio_mean`` (raw ``pi_theta / pi_old``), ``gbpo_ratio_mean`` (``pi_theta /
        pi'_old``), ``bound_fraction`` (elements where the stop-gradient term replaced ``pi_old``).
    """
    log_probs, old_log_probs, advantages, mask = _prepare(log_probs, old_log_probs, advantages, mask)
    detached = log_probs.detach()
    bound = torch.where(advantages >= 0, detached, _log1mexp(detached))
    log_old_prime = torch.maximum(old_log_probs, bound)
    ratio = torch.exp(log_probs - log_old_prime)
    loss = _aggregate(-ratio * advantages, mask, loss_type, num_items_in_batch, max_completion_length)
    return loss, {
        "ratio_mean": _mean(torch.exp(detached - old_log_probs), mask),
        "gbpo_ratio_mean": _mean(ratio, mask),
        "bound_fraction": _mean(bound > old_log_probs, mask),
    }


def kl_penalty(
    log_probs: torch.Tensor,
    ref_log_probs: torch.Tensor,
    *,
    mask: Optional[torch.Tensor] = None,
    loss_type: LossType = "dapo",
    num_items_in_batch: Optional[Union[int, float, torch.Tensor]] = None,
    max_completion_length: Optional[int] = None,
) -> torch.Tensor:
    """k3 estimator of ``KL(pi_theta || pi_ref)`` (Schulman 2020; DeepSeekMath Eq. 4), aggregated like the losses.

    ``k3 = exp(log pi_ref - log pi_theta) - (log pi_ref - log pi_theta) - 1 >= 0``, per element (token or sequence);
    ``d k3 / d log pi_theta = 1 - pi_ref / pi_theta``. As TRL 1.16 (``grpo_trainer.py`` lines 3097-3103, without
    ``use_bias_correction_kl``), which adds ``beta * k3`` to each token's loss before aggregating; the aggregation is
    linear, so ``policy_loss + beta * kl_penalty(...)`` with the same ``mask``/``loss_type`` is TRL's loss.

    Per token is the usual choice: on whole sessions ``log pi_ref - log pi_theta`` can be tens of nats and
    ``exp`` of it explodes (the estimator is unbiased but heavy-tailed there). OneRec itself uses no KL term.

    Args:
        log_probs: Policy log-probabilities, ``[N]`` per sequence or ``[N, T]`` per token with ``mask``.
        ref_log_probs: Reference-model log-probabilities, same shape (no gradient).
        mask / loss_type / num_items_in_batch / max_completion_length: As :func:`grpo_loss`.

    Returns:
        The scalar aggregated k3 (log it as ``kl``).
    """
    log_probs, ref_log_probs, _, mask = _prepare(log_probs, ref_log_probs, None, mask)
    difference = ref_log_probs - log_probs
    k3 = torch.exp(difference) - difference - 1
    return _aggregate(k3, mask, loss_type, num_items_in_batch, max_completion_length)
