"""Forward+backward throughput of one sparse-MoE FFN layer: grouped dispatch vs the formulations it replaces.

For the MoE shapes of each preset (``d_model``, expert ``d_ff``, ``E`` experts, top-``k``) and each token count this
times one ``forward`` + ``backward`` (gradient of a fixed random ``[N, d]`` output gradient w.r.t. the input and every
weight) of

* (a) ``grouped``: :class:`~modeling_onerec.OneRecSparseMLP` exactly as the model runs it -- router, top-k,
  assignments sorted by expert, one matmul pair per expert over exactly its own tokens, ``index_add`` back;
* (a') ``grouped_unbind``: the same dispatch, but the stacked expert weights are ``unbind``-ed once per forward
  instead of indexed per expert (``input_proj[e]``). Indexing makes autograd's ``SelectBackward`` allocate a
  full-size zero ``[E, d, f]`` gradient for every expert call and sum them (``E`` full-size tensors per backward);
  (a) vs (a') measures that overhead, which is a property of the current ``OneRecExperts`` code, not of grouped
  dispatch;
* (b) ``masked_loop``: the per-expert masked reference loop (Mixtral / Switch-HF style): for each expert,
  ``torch.where(expert_index == e)`` picks its tokens, the expert runs on them and its gated output is
  ``index_add``-ed back. Same FLOPs as (a), no sort; weights unbound once like separate ``nn.Linear`` experts,
  so (a') vs (b) isolates sort/split vs mask dispatch;
* (b') ``token_loop``: the naive reference: every token, its top-k experts one by one (``N * k`` single-row
  matmul pairs, weights unbound once). Only timed when an estimate (from a 64-token probe) fits
  ``--variant-budget-s``;
* (c) ``dense_ffn``: a plain dense FFN of the same *activated* size, ``d -> k * d_ff -> d`` (no router): the
  FLOPs floor that (a) should approach;
* (d) ``dense_moe``: every expert on every token (two batched ``[E, N, .]`` matmuls) and the gate-weighted
  combination -- ``E / k`` times the FLOPs of (a), and ``E * N * d_ff`` activations; what grouped dispatch
  avoids. Skipped (and said so) when its estimated time (``E / k`` x (a)) or memory exceeds
  ``--variant-budget-s`` / ``--max-dense-moe-gb``.

All variants share the layer's weights and the router's decisions, so their outputs are comparable: (a') and (b) vs (a)
are checked on the full batch (max abs diff of the output, the input gradient and the expert-weight gradients), (b')
and (d) on the first ``--check-tokens`` tokens even when they are not timed. Dropout is 0 and the capacity limit
off (the presets' defaults), so all variants compute the same function.

Timings: median of ``--repeats`` (fewer when a variant would overrun ``--variant-budget-s``; the table says how
many), after ``--warmup`` untimed calls; ``torch.cuda.synchronize()`` around every timed call on GPU. Tokens/s =
tokens per batch / median seconds of forward + backward (``--forward-only`` times inference-style forwards under
``torch.no_grad()`` instead).

Run from the repository root::

    PYTHONPATH=. python benchmarks/bench_moe.py --device cpu --threads 2
    PYTHONPATH=. python benchmarks/bench_moe.py --device cpu --threads 2 --tokens 1024 --repeats 3   # quick
    PYTHONPATH=. python benchmarks/bench_moe.py --device cuda
    PYTHONPATH=. python benchmarks/bench_moe.py --device cuda --dtype bfloat16   # -> outputs/benchmarks/moe_cuda_bfloat16.json

Defaults: presets ``small`` and ``onerec-0.1b``; 4096 and 16384 tokens on GPU, 1024 and 4096 on CPU.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn
from transformers.activations import ACT2FN

from benchmarks import common
from benchmarks.common import DTYPES
from modeling_onerec import OneRecConfig, OneRecSparseMLP, route_tokens

VARIANTS = ("grouped", "grouped_unbind", "masked_loop", "token_loop", "dense_ffn", "dense_moe")
LABELS = {
    "grouped": "(a) grouped dispatch (OneRecSparseMLP)",
    "grouped_unbind": "(a') grouped dispatch, weights unbound once",
    "masked_loop": "(b) per-expert masked loop",
    "token_loop": "(b') per-token top-k loop",
    "dense_ffn": "(c) dense FFN, activated size",
    "dense_moe": "(d) dense MoE, all experts on all tokens",
}
PROBE_TOKENS = 64


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="MoE FFN forward+backward tokens/s: grouped dispatch vs reference loops, dense FFN, dense MoE.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    common.add_device_argument(parser)
    common.add_dtype_argument(parser, help="Weights and activations (the router always computes in float32).")
    parser.add_argument(
        "--presets",
        nargs="+",
        default=["small", "onerec-0.1b"],
        help="OneRecConfig presets whose MoE shapes are measured.",
    )
    parser.add_argument(
        "--tokens",
        type=int,
        nargs="+",
        default=None,
        help="Tokens per batch (default: 4096 16384 on GPU, 1024 4096 on CPU).",
    )
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--repeats", type=int, default=10, help="Timed calls per variant (median reported).")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed calls per variant before timing.")
    parser.add_argument(
        "--variant-budget-s",
        type=float,
        default=20.0,
        help="Seconds one variant may take per shape (warm-up + repeats): repeats are cut to fit, "
        "and a variant whose estimated iteration does not fit is skipped.",
    )
    parser.add_argument(
        "--max-dense-moe-gb",
        type=float,
        default=None,
        help="Skip (d) when its [E, N, d_ff] activations and gradients would exceed this many GB "
        "(default: 40 on GPU, 4 on CPU).",
    )
    parser.add_argument(
        "--check-tokens", type=int, default=256, help="Tokens on which (b') and (d) are checked against (a)."
    )
    parser.add_argument(
        "--forward-only",
        action="store_true",
        help="Time forward passes under torch.no_grad() instead of forward + backward.",
    )
    common.add_run_arguments(
        parser,
        threads_help="torch CPU threads (torch.set_num_threads).",
        output_help="JSON file (default: outputs/benchmarks/moe_<device>[_<dtype>].json).",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 1:
        raise ValueError(f"--repeats and --warmup must be >= 1, got {args.repeats} and {args.warmup}.")
    if args.tokens is not None and min(args.tokens) < 1:
        raise ValueError(f"--tokens must be >= 1, got {args.tokens}.")
    if "grouped" not in args.variants:
        args.variants = ["grouped"] + list(args.variants)  # the baseline every ratio is taken against
    return args


# --------------------------------------------------------------------------------------------------
# The layer and the variants
# --------------------------------------------------------------------------------------------------


def build_layer(preset: str, device: torch.device, dtype: torch.dtype, seed: int):
    """``(config, OneRecSparseMLP, dense FFN)`` with the model's initialisation, on ``device`` in ``dtype``."""
    config = OneRecConfig.from_preset(preset, codebook_sizes=[256] * 3, dropout_rate=0.0)
    torch.manual_seed(seed)
    mlp = OneRecSparseMLP(config)
    d, f = config.d_model, config.expert_hidden_size
    # OneRecPreTrainedModel._init_weights for the router and the stacked experts.
    nn.init.normal_(mlp.router.weight, std=d**-0.5)
    nn.init.normal_(mlp.experts.input_proj, std=d**-0.5)
    nn.init.normal_(mlp.experts.output_proj, std=f**-0.5)
    width = config.num_experts_per_token * f
    dense = nn.Sequential(
        nn.Linear(d, width * (2 if config.is_gated_act else 1), bias=False),
        GatedAct(config.dense_act_fn) if config.is_gated_act else ACT2FN[config.dense_act_fn],
        nn.Linear(width, d, bias=False),
    )
    nn.init.normal_(dense[0].weight, std=d**-0.5)
    nn.init.normal_(dense[2].weight, std=width**-0.5)
    mlp.to(device=device, dtype=dtype).eval()
    dense.to(device=device, dtype=dtype).eval()
    return config, mlp, dense


class GatedAct(nn.Module):
    """``act(gate) * linear`` over the two halves of the last dimension (gated-GELU configs)."""

    def __init__(self, act: str):
        super().__init__()
        self.act = ACT2FN[act]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        gate, linear = hidden.chunk(2, dim=-1)
        return self.act(gate) * linear


def route(mlp: OneRecSparseMLP, x: torch.Tensor):
    """The layer's own router and top-k: ``(gates [N, k] float32, expert_index [N, k])``."""
    gates, expert_index, _ = route_tokens(mlp.router(x), mlp.top_k, mlp.normalize)
    return gates, expert_index


def unbound_experts(mlp: OneRecSparseMLP):
    """One apply function per expert over weight views from a single ``unbind``.

    ``OneRecExperts.expert_forward`` indexes the stacked ``[E, d, f]`` parameters (``input_proj[e]``): autograd's
    ``SelectBackward`` then materialises a full-size zero ``[E, d, f]`` gradient per expert call and sums them, i.e.
    ``E`` (or, in a per-token loop, ``N * k``) full-size tensors per backward. ``unbind(0)`` once per forward gives
    the same views with one ``stack`` in the backward (like separate ``nn.Linear`` experts, as in Mixtral).
    """
    experts = mlp.experts
    inputs, outputs = experts.input_proj.unbind(0), experts.output_proj.unbind(0)

    def apply(expert: int, hidden_states: torch.Tensor) -> torch.Tensor:  # = OneRecExperts.expert_forward
        hidden = hidden_states @ inputs[expert]
        if experts.is_gated:
            gate, linear = hidden.chunk(2, dim=-1)
            hidden = experts.act(gate) * linear
        else:
            hidden = experts.act(hidden)
        return experts.dropout(hidden) @ outputs[expert]

    return apply


def run_grouped(mlp: OneRecSparseMLP, x: torch.Tensor) -> torch.Tensor:
    return mlp(x)


def run_grouped_unbind(mlp: OneRecSparseMLP, x: torch.Tensor) -> torch.Tensor:
    """``OneRecExperts.forward``'s dispatch (sort by expert, split, one call per expert, ``index_add``) with the
    expert weights unbound once instead of indexed per expert (no capacity limit: the presets have none)."""
    gates, expert_index = route(mlp, x)
    apply = unbound_experts(mlp)
    top_k = expert_index.shape[1]
    flat_expert = expert_index.reshape(-1)
    order = torch.argsort(flat_expert, stable=True)
    sorted_token = torch.div(order, top_k, rounding_mode="floor")
    sorted_gate = gates.reshape(-1)[order]
    counts = torch.bincount(flat_expert, minlength=mlp.experts.num_experts)
    groups = x[sorted_token].split(counts.tolist())
    y = torch.cat([apply(expert, tokens) for expert, tokens in enumerate(groups) if tokens.shape[0] > 0])
    y = y * sorted_gate.to(y.dtype)[:, None]
    return torch.zeros_like(x).index_add_(0, sorted_token, y.to(x.dtype))


def run_masked_loop(mlp: OneRecSparseMLP, x: torch.Tensor) -> torch.Tensor:
    """Per expert: its tokens by a boolean mask, the expert on them, gated ``index_add`` back (Mixtral-style)."""
    gates, expert_index = route(mlp, x)
    apply = unbound_experts(mlp)
    out = torch.zeros_like(x)
    for expert in range(mlp.experts.num_experts):
        token, slot = torch.where(expert_index == expert)
        if token.numel() == 0:
            continue
        y = apply(expert, x[token])
        y = y * gates[token, slot].to(y.dtype)[:, None]
        out.index_add_(0, token, y.to(x.dtype))
    return out


def run_token_loop(mlp: OneRecSparseMLP, x: torch.Tensor) -> torch.Tensor:
    """Every token, each of its top-k experts one by one: ``N * k`` single-row expert calls."""
    gates, expert_index = route(mlp, x)
    apply = unbound_experts(mlp)
    chosen = expert_index.tolist()
    # split() once: indexing x[t] per token would give a full-size [N, d] gradient per slice (quadratic backward).
    x_rows, gate_rows = x.split(1), gates.split(1)
    rows = []
    for token, experts in enumerate(chosen):
        total = None
        for slot, expert in enumerate(experts):
            y = apply(expert, x_rows[token])
            y = y * gate_rows[token][:, slot : slot + 1].to(y.dtype)
            total = y if total is None else total + y
        rows.append(total.to(x.dtype))
    return torch.cat(rows)


def run_dense_moe(mlp: OneRecSparseMLP, x: torch.Tensor) -> torch.Tensor:
    """Every expert on every token, then ``sum_e w[n, e] * y[e, n]`` with ``w`` zero off the top-k."""
    gates, expert_index = route(mlp, x)
    experts = mlp.experts
    weights = torch.zeros((x.shape[0], experts.num_experts), dtype=gates.dtype, device=x.device)
    weights.scatter_(1, expert_index, gates)
    hidden = torch.matmul(x.unsqueeze(0), experts.input_proj)  # [E, N, f or 2f]
    if experts.is_gated:
        gate, linear = hidden.chunk(2, dim=-1)
        hidden = experts.act(gate) * linear
    else:
        hidden = experts.act(hidden)
    y = torch.matmul(hidden, experts.output_proj)  # [E, N, d]
    return torch.einsum("ne,end->nd", weights.to(y.dtype), y).to(x.dtype)


def variant_function(name: str, mlp: OneRecSparseMLP, dense: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    return {
        "grouped": lambda x: run_grouped(mlp, x),
        "grouped_unbind": lambda x: run_grouped_unbind(mlp, x),
        "masked_loop": lambda x: run_masked_loop(mlp, x),
        "token_loop": lambda x: run_token_loop(mlp, x),
        "dense_ffn": dense,
        "dense_moe": lambda x: run_dense_moe(mlp, x),
    }[name]


def dense_moe_gb(config: OneRecConfig, tokens: int, dtype: torch.dtype, backward: bool) -> float:
    """Rough peak of (d)'s big intermediates: ``[E, N, f_in]`` pre-activation, ``[E, N, f]`` activation,
    ``[E, N, d]`` expert outputs, and their gradients when training."""
    e, d, f = config.num_experts, config.d_model, config.expert_hidden_size
    f_in = f * (2 if config.is_gated_act else 1)
    elements = e * tokens * (f_in + f + d)
    return elements * torch.finfo(dtype).bits / 8 * (2 if backward else 1) / 1e9


# --------------------------------------------------------------------------------------------------
# Timing and checks
# --------------------------------------------------------------------------------------------------


def clear_grads(modules: Sequence[nn.Module], x: torch.Tensor) -> None:
    x.grad = None
    for module in modules:
        for parameter in module.parameters():
            parameter.grad = None


def one_call(fn, x: torch.Tensor, grad: torch.Tensor, modules, device: torch.device, backward: bool) -> float:
    """Seconds of one synchronised forward (+ backward) call."""
    clear_grads(modules, x)
    if backward:
        return common.timed(lambda: fn(x).backward(grad), device)[0]
    with torch.no_grad():
        return common.timed(fn, device, x)[0]


def outputs_and_grads(fn, x: torch.Tensor, grad: torch.Tensor, mlp: OneRecSparseMLP) -> Dict[str, torch.Tensor]:
    """Output, input gradient and expert-weight gradients of one forward + backward, in float32."""
    x = x.detach().clone().requires_grad_(True)
    clear_grads([mlp], x)
    out = fn(x)
    out.backward(grad)
    result = {
        "output": out.detach().float(),
        "input_grad": x.grad.float(),
        "input_proj_grad": mlp.experts.input_proj.grad.float(),
        "output_proj_grad": mlp.experts.output_proj.grad.float(),
    }
    clear_grads([mlp], x)
    return result


def max_abs_diffs(left: Dict[str, torch.Tensor], right: Dict[str, torch.Tensor]) -> Dict[str, float]:
    return {key: float((left[key] - right[key]).abs().max()) for key in left}


def warm_up(
    fn,
    x: torch.Tensor,
    grad: torch.Tensor,
    modules,
    device: torch.device,
    args: argparse.Namespace,
    budget_s: float,
    estimate_s: Optional[float],
) -> dict:
    """Warm-up calls and the number of timed calls that fit in ``budget_s``; a ``skipped`` reason when
    ``estimate_s`` (one call, when known beforehand) or the warm-up itself shows that none fits."""
    backward = not args.forward_only
    if estimate_s is not None and estimate_s * (args.warmup + 1) > budget_s:
        return {
            "skipped": f"estimated {estimate_s:.1f} s per call x ({args.warmup} warm-up + 1) > "
            f"--variant-budget-s {budget_s:g}",
            "estimate_s": estimate_s,
        }
    start = time.perf_counter()
    warmup_times = [one_call(fn, x, grad, modules, device, backward) for _ in range(args.warmup)]
    spent = time.perf_counter() - start
    planned = min(args.repeats, int((budget_s - spent) // max(warmup_times[-1], 1e-9)))
    if planned < 1:
        return {
            "skipped": f"warm-up call took {warmup_times[-1]:.1f} s; no timed call fits --variant-budget-s "
            f"{budget_s:g}",
            "warmup_s": warmup_times,
        }
    return {"warmup_s": warmup_times, "planned": planned, "left_s": budget_s - spent}


def timed_rounds(
    functions: Dict[str, tuple],
    plans: Dict[str, dict],
    x: torch.Tensor,
    grad: torch.Tensor,
    device: torch.device,
    args: argparse.Namespace,
    tokens: int,
) -> Dict[str, dict]:
    """Timed calls interleaved round-robin over the variants (so that a machine slowing down mid-run hits them
    all alike), each variant stopping at its planned count or when its next call would overrun its budget."""
    backward = not args.forward_only
    times: Dict[str, List[float]] = {name: [] for name in plans}
    for round_index in range(max(plan["planned"] for plan in plans.values())):
        for name, plan in plans.items():
            done = times[name]
            if round_index >= plan["planned"] or (done and sum(done) + done[-1] > plan["left_s"]):
                continue
            fn, modules = functions[name]
            done.append(one_call(fn, x, grad, modules, device, backward))
    results = {}
    for name, values in times.items():
        median = statistics.median(values)
        results[name] = {
            "median_s": median,
            "min_s": min(values),
            "times_s": values,
            "repeats": len(values),
            "tokens_per_s": tokens / median,
            "warmup_s": plans[name]["warmup_s"],
            "repeats_cut": len(values) < args.repeats,
        }
    return results


def check_variants(
    mlp: OneRecSparseMLP, x: torch.Tensor, grad: torch.Tensor, tokens: int, args: argparse.Namespace
) -> Dict[str, dict]:
    """Max |difference| of each variant's outputs and gradients from the grouped path the model runs."""
    checks = {}
    reference = outputs_and_grads(lambda t: run_grouped(mlp, t), x, grad, mlp)
    for name, fn in (("grouped_unbind", run_grouped_unbind), ("masked_loop", run_masked_loop)):
        if name in args.variants:
            checks[f"{name}_vs_grouped"] = max_abs_diffs(
                outputs_and_grads(lambda t, fn=fn: fn(mlp, t), x, grad, mlp), reference
            )
    subset = min(tokens, args.check_tokens)
    reference_subset = outputs_and_grads(lambda t: run_grouped(mlp, t), x[:subset], grad[:subset], mlp)
    for name, fn in (("token_loop", run_token_loop), ("dense_moe", run_dense_moe)):
        if name in args.variants:
            checks[f"{name}_vs_grouped_first_{subset}_tokens"] = max_abs_diffs(
                outputs_and_grads(lambda t, fn=fn: fn(mlp, t), x[:subset], grad[:subset], mlp), reference_subset
            )
    return checks


def run_shape(preset: str, tokens: int, device: torch.device, dtype: torch.dtype, args: argparse.Namespace) -> dict:
    config, mlp, dense = build_layer(preset, device, dtype, args.seed)
    generator = torch.Generator().manual_seed(args.seed + tokens)
    x = torch.randn((tokens, config.d_model), generator=generator).to(device=device, dtype=dtype)
    grad = torch.randn((tokens, config.d_model), generator=generator).to(device=device, dtype=dtype)
    x.requires_grad_(True)
    backward = not args.forward_only
    budget = args.variant_budget_s

    with torch.no_grad():
        _, expert_index = route(mlp, x)
    counts = torch.bincount(expert_index.reshape(-1), minlength=config.num_experts).float()
    shape = {
        "preset": preset,
        "d_model": config.d_model,
        "expert_d_ff": config.expert_hidden_size,
        "num_experts": config.num_experts,
        "top_k": config.num_experts_per_token,
        "tokens": tokens,
        "activation": config.dense_act_fn,
        "gated": config.is_gated_act,
        "expert_load_max_over_mean": float(counts.max() / counts.mean()),
        "expert_load_min_over_mean": float(counts.min() / counts.mean()),
    }
    print(
        f"\n{preset}: d_model={config.d_model} expert d_ff={config.expert_hidden_size} E={config.num_experts} "
        f"k={config.num_experts_per_token}, {tokens} tokens (expert load max/mean "
        f"{shape['expert_load_max_over_mean']:.2f}, min/mean {shape['expert_load_min_over_mean']:.2f})",
        flush=True,
    )

    # ---------------------------------------------------------------- checks
    checks = check_variants(mlp, x, grad, tokens, args)
    for name, diffs in checks.items():
        print(
            f"  check {name}: max |diff| " + ", ".join(f"{key} {value:.2e}" for key, value in diffs.items()), flush=True
        )

    # ---------------------------------------------------------------- timings
    skipped: Dict[str, dict] = {}
    plans: Dict[str, dict] = {}
    functions: Dict[str, tuple] = {}
    for name in args.variants:
        fn = variant_function(name, mlp, dense)
        modules = [dense] if name == "dense_ffn" else [mlp]
        functions[name] = (fn, modules)
        estimate = None
        if name == "token_loop":
            probe_x = x[:PROBE_TOKENS].detach().clone().requires_grad_(True)
            one_call(fn, probe_x, grad[:PROBE_TOKENS], modules, device, backward)  # warm the probe
            estimate = one_call(fn, probe_x, grad[:PROBE_TOKENS], modules, device, backward) * tokens / probe_x.shape[0]
        elif name == "dense_moe":
            need_gb = dense_moe_gb(config, tokens, dtype, backward)
            if need_gb > args.max_dense_moe_gb:
                skipped[name] = {
                    "skipped": f"needs ~{need_gb:.1f} GB of [E, N, d_ff] activations > "
                    f"--max-dense-moe-gb {args.max_dense_moe_gb:g}"
                }
                continue
            # E / k times the expert FLOPs of grouped dispatch; (a') when measured, since (a) carries the
            # SelectBackward overhead that (d) (whole-tensor matmuls) does not have.
            baseline = [min(plans[name]["warmup_s"]) for name in ("grouped", "grouped_unbind") if name in plans]
            if baseline:
                estimate = min(baseline) * config.num_experts / config.num_experts_per_token
        plan = warm_up(fn, x, grad, modules, device, args, budget, estimate)
        if "skipped" in plan:
            skipped[name] = plan
        else:
            plans[name] = plan
    timed = timed_rounds(functions, plans, x, grad, device, args, tokens)
    results = {name: timed[name] if name in timed else skipped[name] for name in args.variants}
    for name, result in results.items():
        if "skipped" in result:
            print(f"  {LABELS[name]:44s} skipped: {result['skipped']}", flush=True)
        else:
            print(
                f"  {LABELS[name]:44s} {1e3 * result['median_s']:10.2f} ms  {result['tokens_per_s']:12,.0f} tok/s"
                f"  (x{result['repeats']})",
                flush=True,
            )
    del x, grad, mlp, dense
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {**shape, "checks": checks, "variants": results}


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def markdown_table(runs: List[dict], args: argparse.Namespace, device: torch.device) -> str:
    mode = "forward only (no_grad)" if args.forward_only else "forward + backward"
    lines = [
        f"One MoE FFN layer, {mode}, {args.dtype}, device {device}; median of up to {args.repeats} timed calls "
        f"after {args.warmup} warm-up; random init and activations, seed {args.seed}. Ratio = variant time / "
        "grouped time (lower is faster).",
        "",
        "| preset | d_model / expert d_ff / E / k | tokens | variant | median ms | tokens/s | vs (a) | repeats |",
        "|---|---|---:|---|---:|---:|---:|---|",
    ]
    for run in runs:
        shapes = f"{run['d_model']} / {run['expert_d_ff']} / {run['num_experts']} / {run['top_k']}"
        grouped = run["variants"]["grouped"].get("median_s")
        for name, result in run["variants"].items():
            if "skipped" in result:
                lines.append(
                    f"| {run['preset']} | {shapes} | {run['tokens']} | {LABELS[name]} | - | - | - "
                    f"| skipped: {result['skipped']} |"
                )
                continue
            ratio = f"{result['median_s'] / grouped:.2f}x" if grouped else "-"
            lines.append(
                f"| {run['preset']} | {shapes} | {run['tokens']} | {LABELS[name]} "
                f"| {1e3 * result['median_s']:.2f} | {result['tokens_per_s']:,.0f} | {ratio} "
                f"| {result['repeats']}{' (cut to budget)' if result['repeats_cut'] else ''} |"
            )
    lines += [
        "",
        "Agreement with (a) (max abs diff; (a') and (b) on the full batch, (b') and (d) on the first "
        f"{args.check_tokens} tokens):",
        "",
        "| preset | tokens | check | output | input grad | expert W_in grad | expert W_out grad |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for run in runs:
        for name, diffs in run["checks"].items():
            lines.append(
                f"| {run['preset']} | {run['tokens']} | {name} | {diffs['output']:.2e} "
                f"| {diffs['input_grad']:.2e} | {diffs['input_proj_grad']:.2e} "
                f"| {diffs['output_proj_grad']:.2e} |"
            )
    lines += [
        "",
        "Expert load of the random router (assignments per expert / mean): "
        + "; ".join(
            f"{run['preset']} N={run['tokens']}: max {run['expert_load_max_over_mean']:.2f}, "
            f"min {run['expert_load_min_over_mean']:.2f}"
            for run in runs
        )
        + ".",
    ]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    device = common.setup_device(args.device, args.threads)
    dtype = DTYPES[args.dtype]
    if args.tokens is None:
        args.tokens = [4096, 16384] if device.type == "cuda" else [1024, 4096]
    if args.max_dense_moe_gb is None:
        args.max_dense_moe_gb = 40.0 if device.type == "cuda" else 4.0
    if dtype != torch.float32 and device.type == "cpu":
        print(f"WARNING: {args.dtype} on CPU is slow and not what this benchmark is meant for.", flush=True)
    output = common.output_path(args.output, "moe", device, args.dtype)
    env = common.print_environment(device)

    runs = [run_shape(preset, tokens, device, dtype, args) for preset in args.presets for tokens in args.tokens]

    table = markdown_table(runs, args, device)
    print("\n" + table)
    common.write_results(output, env, args, runs=runs, markdown=table)
    print(f"\nwrote {output}")
    # A reference that disagrees with grouped dispatch is a bug, not a timing: fail loudly.
    tolerance = 1e-3 if dtype == torch.float32 else 5e-2
    bad = [
        (run["preset"], run["tokens"], name)
        for run in runs
        for name, diffs in run["checks"].items()
        if not math.isfinite(diffs["output"]) or diffs["output"] > tolerance
    ]
    return common.exit_status(f"outputs disagree with grouped dispatch beyond {tolerance:g}: {bad}" if bad else None)


if __name__ == "__main__":
    sys.exit(main())
