"""The pretraining data path and training step, before and after tokenising once, side by side in one run.

Two measurements on a real dataset (default: Amazon Beauty), the same length-grouped batches everywhere:

1. **Collation** (windows/s on the calling thread): the per-sample collator that tokenises every sample as it is
   batched (``SessionDataCollator`` on item-id samples) against padding pre-tokenised integer rows
   (``tokenize_session_samples`` once, then ``TokenizedSessionCollator``), each including the ``datasets`` row fetch
   the Trainer's dataloader does. The two must give identical batches (checked on every timed batch).
2. **Training step** (windows/s of forward + backward + AdamW step): for each ``--batch_sizes``, the variants in
   ``--variants``:

   * ``before``: per-sample collator, ``expert_dispatch="grouped"``, ``dropout_rate=0.1``, eager;
   * ``after``: pre-tokenised rows, otherwise as ``before`` (equal learning per window);
   * ``after-dropout0``: as ``after`` with ``dropout_rate=0`` (what dropout's random numbers cost);
   * ``after-dense``: as ``after`` with ``expert_dispatch="dense"`` (fixed shapes, no host sync);
   * ``after-compiled``: as ``after`` with ``torch.compile(model, dynamic=True)`` (compile time reported apart);
   * ``after-dense-compiled``: both;
   * ``after-grouped_mm``: as ``after`` with ``expert_dispatch="grouped_mm"`` (chosen experts' FLOPs, fixed shapes);
   * ``after-grouped_mm-compiled``: that, compiled (one graph: forward, loss, backward);
   * ``after-bf16`` / ``after-grouped_mm-bf16-compiled``: the same under bfloat16 autocast (what the Trainer's
     ``--bf16 true`` does), float32 weights and optimizer states;
   * any variant with ``-fusedadam``: ``torch.optim.AdamW(fused=True)`` (the Trainer's ``--optim adamw_torch_fused``);
   * any variant with ``-torchdropout``: ``nn.Dropout`` in place of ``OneRecDropout`` (the step before the CPU masks);
   * any variant with ``-attn0``: ``attention_dropout_rate=0`` (hidden states keep dropout 0.1);
   * any variant with ``-items``: ``history_encoding="items"`` (one encoder position per history item);
   * any variant with ``-experts16`` / ``-experts32``: that many experts per sparse decoder layer instead of the
     preset's (still top-2: more parameters at about the same FLOPs per token);
   * any variant with ``-fixedbias``: the encoder's relative position bias detached from the graph (a probe, not a
     model option: what learning T5's bias costs, since a float attention mask that needs a gradient sends
     ``scaled_dot_product_attention`` to its materialising math path on the CPU instead of the fused kernel).

With ``--eval_windows N`` every variant also reports its loss on the first N validation windows after its timed
steps: equal learning per window shows as equal losses (within the noise of dropout's random numbers).

Run from the repository root::

    PYTHONPATH=. python benchmarks/bench_training_path.py --threads 2
    PYTHONPATH=. python benchmarks/bench_training_path.py --device cuda --batch_sizes 256 1024 --variants after after-dense-compiled
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import torch
from transformers.trainer_pt_utils import LengthGroupedSampler

from benchmarks import common
from trainers.data import TOKENIZED_COLUMNS, tokenize_session_samples
from trainers.pretraining import SessionDataCollator, TokenizedSessionCollator, history_lengths

VARIANTS = (
    "before",
    "after",
    "after-dropout0",
    "after-dense",
    "after-compiled",
    "after-dense-compiled",
    "after-grouped_mm",
    "after-grouped_mm-compiled",
    "after-bf16",
    "after-dense-bf16-compiled",
    "after-grouped_mm-bf16-compiled",
    "after-grouped_mm-bf16-compiled-fusedadam",
    "after-torchdropout",
    "after-attn0",
    "after-grouped_mm-attn0",
    "after-torchdropout-attn0",
    "after-bf16-attn0",
    "after-attn0-items",
    "after-attn0-fixedbias",
    "after-attn0-experts16",
    "after-attn0-experts32",
)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_pretraining_data_arguments(parser)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--collate_batches", type=int, default=200, help="Batches of 64 timed for collation.")
    parser.add_argument(
        "--eval_windows", type=int, default=0, help="Validation windows scored after each variant's steps (0: none)."
    )
    parser.add_argument(
        "--step_windows",
        type=int,
        default=6144,
        help="Windows per timed training measurement (rounded up to whole batches, at least 3).",
    )
    common.add_device_argument(parser)
    common.add_run_arguments(
        parser, output_help="JSON output (default outputs/benchmarks/training_path_<device>.json)."
    )
    args = parser.parse_args(argv)
    if min(args.batch_sizes) < 1 or args.collate_batches < 1 or args.step_windows < 1:
        parser.error("--batch_sizes, --collate_batches and --step_windows must be >= 1")
    return args


def grouped_batches(lengths: List[int], batch_size: int, seed: int) -> List[List[int]]:
    """The pretrainer's batches: ``LengthGroupedSampler`` order cut into ``batch_size`` chunks."""
    order = list(LengthGroupedSampler(batch_size, lengths=lengths, generator=torch.Generator().manual_seed(seed)))
    return [order[start : start + batch_size] for start in range(0, len(order) - batch_size + 1, batch_size)]


def time_collation(raw, tokenized, tokenizer, args) -> Dict[str, Any]:
    """Windows/s of both collators on the same batches (row fetch included); asserts identical outputs."""
    batches = grouped_batches(history_lengths(raw), 64, args.seed)[: args.collate_batches]
    reference = SessionDataCollator(tokenizer, args.max_history_items, args.session_length)
    fast = TokenizedSessionCollator(tokenizer.pad_token_id)
    results = {}
    outputs = {}
    for name, dataset, collator in (("per_sample_tokenising", raw, reference), ("pre_tokenized", tokenized, fast)):
        start = time.perf_counter()
        outputs[name] = [collator(dataset.__getitems__(batch)) for batch in batches]
        seconds = time.perf_counter() - start
        results[name] = {"windows_per_s": round(64 * len(batches) / seconds, 1)}
    for before, after in zip(outputs["per_sample_tokenising"], outputs["pre_tokenized"]):
        for key in before:
            if not torch.equal(before[key], after[key]):
                raise AssertionError(f"The two collators disagree on {key!r}.")
    results["speedup"] = round(
        results["pre_tokenized"]["windows_per_s"] / results["per_sample_tokenising"]["windows_per_s"], 2
    )
    results["identical_batches"] = len(batches)
    return results


def expert_count(variant: str) -> Dict[str, int]:
    """``{"num_experts": N}`` for a variant named ``...-expertsN``, else ``{}`` (the preset's count)."""
    for part in variant.split("-"):
        if part.startswith("experts"):
            return {"num_experts": int(part[len("experts") :])}
    return {}


def time_training(
    variant: str, batch_size: int, raw, tokenized, tokenizer, args, device, validation=None
) -> Dict[str, Any]:
    """Windows/s of forward + backward + AdamW over consecutive length-grouped batches (collation included), and the
    loss on ``validation`` (tokenised windows) afterwards when given."""
    model = common.pretraining_model(
        tokenizer,
        args,
        dropout_rate=0.0 if "dropout0" in variant else 0.1,
        attention_dropout_rate=0.0 if "attn0" in variant else None,
        expert_dispatch="dense" if "dense" in variant else "grouped_mm" if "grouped_mm" in variant else "grouped",
        history_encoding="items" if "items" in variant else "tokens",
        **expert_count(variant),
    )
    if "torchdropout" in variant:
        swap_dropout(model)
    if "fixedbias" in variant:
        detach_encoder_position_bias(model)
    model = model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True if "fusedadam" in variant else None)
    forward = torch.compile(model, dynamic=True) if "compiled" in variant else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled="bf16" in variant)
    if variant == "before":
        dataset, collator = raw, SessionDataCollator(tokenizer, args.max_history_items, args.session_length)
    else:
        dataset, collator = tokenized, TokenizedSessionCollator(tokenizer.pad_token_id)
    batches = grouped_batches(history_lengths(raw), batch_size, args.seed)
    num_steps = max(3, -(-args.step_windows // batch_size))
    warmup = 3 if "compiled" in variant else 1
    # Every step a different batch, spread over the epoch (the sampler's order mixes lengths batch to batch).
    stride = max(1, len(batches) // (num_steps + warmup))
    chosen = batches[::stride][: num_steps + warmup]

    def step(indices):
        batch = {key: value.to(device) for key, value in collator(dataset.__getitems__(indices)).items()}
        with autocast:
            loss = forward(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    def steps(batches):
        for indices in batches:
            loss = step(indices)
        return loss

    warmup_seconds, _ = common.timed(steps, device, chosen[:warmup])
    seconds, loss = common.timed(steps, device, chosen[warmup:])
    windows = sum(len(indices) for indices in chosen[warmup:])
    row = {
        "variant": variant,
        "batch_size": batch_size,
        "steps": len(chosen) - warmup,
        "windows_per_s": round(windows / seconds, 1),
        "warmup_s": round(warmup_seconds, 1),
        "final_loss": round(float(loss), 4),
    }
    if validation is not None:
        row["validation_loss"] = round(
            validation_loss(model, validation, TokenizedSessionCollator(tokenizer.pad_token_id), device), 4
        )
    return row


def swap_dropout(model) -> None:
    """``nn.Dropout`` back in place of every ``OneRecDropout`` (the step as it was before the CPU masks)."""
    from modeling_onerec.modeling_onerec import OneRecDropout

    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, OneRecDropout):
                setattr(module, name, torch.nn.Dropout(child.p))


def detach_encoder_position_bias(model) -> None:
    """The encoder's relative position bias without gradient (it stays at its initial values). transformers 5.24
    offers no public switch for this: the probe wraps ``T5Attention.compute_bias`` of the encoder's first layer,
    the one layer that computes the bias the others reuse."""
    attention = model.encoder.block[0].layer[0].SelfAttention
    compute_bias = attention.compute_bias
    attention.compute_bias = lambda *args, **kwargs: compute_bias(*args, **kwargs).detach()


@torch.no_grad()
def validation_loss(model, validation, collator, device, batch_size: int = 256) -> float:
    """Token-weighted mean NTP loss (float32, eval mode) of the model over tokenised validation windows."""
    model.eval()
    total, tokens = 0.0, 0
    for start in range(0, len(validation), batch_size):
        rows = validation.__getitems__(list(range(start, min(start + batch_size, len(validation)))))
        batch = {key: value.to(device) for key, value in collator(rows).items()}
        outputs = model(**batch)
        total += float(outputs.ntp_loss) * int(outputs.ntp_num_tokens)
        tokens += int(outputs.ntp_num_tokens)
    model.train()
    return total / max(tokens, 1)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    device = common.setup_device(args.device, args.threads)
    tokenizer, samples = common.load_pretraining_data(args)
    raw = samples["train"]
    start = time.perf_counter()
    tokenized = tokenize_session_samples(
        raw,
        tokenizer,
        max_history_items=args.max_history_items,
        session_length=args.session_length,
        load_from_cache_file=False,
    )
    tokenize_seconds = time.perf_counter() - start
    tokenized = tokenized.select_columns(list(TOKENIZED_COLUMNS))
    raw = raw.select_columns(["history", "target"])
    collation = time_collation(raw, tokenized, tokenizer, args)
    collation["tokenize_once_s"] = round(tokenize_seconds, 2)
    print(
        f"collation ({len(raw)} windows; tokenising once took {tokenize_seconds:.1f} s): per-sample "
        f"{collation['per_sample_tokenising']['windows_per_s']:.0f} windows/s, pre-tokenised "
        f"{collation['pre_tokenized']['windows_per_s']:.0f} windows/s ({collation['speedup']}x), "
        f"{collation['identical_batches']} batches identical",
        flush=True,
    )
    validation = None
    if args.eval_windows > 0:
        validation = tokenize_session_samples(
            samples["validation"].select(range(min(args.eval_windows, len(samples["validation"])))),
            tokenizer,
            max_history_items=args.max_history_items,
            session_length=args.session_length,
        ).select_columns(list(TOKENIZED_COLUMNS))
    training = []
    for batch_size in args.batch_sizes:
        for variant in args.variants:
            try:
                row = time_training(variant, batch_size, raw, tokenized, tokenizer, args, device, validation)
            except Exception as error:  # a variant that cannot run here (e.g. no compiler) is reported, not fatal
                row = {"variant": variant, "batch_size": batch_size, "error": f"{type(error).__name__}: {error}"[:300]}
            training.append(row)
            print(row, flush=True)
    base = {
        row["batch_size"]: row["windows_per_s"] for row in training if row["variant"] == "before" and "error" not in row
    }
    print("\n| batch | " + " | ".join(args.variants) + " |\n|---:|" + "---:|" * len(args.variants))
    for batch_size in args.batch_sizes:
        cells = []
        for variant in args.variants:
            row = next(r for r in training if r["variant"] == variant and r["batch_size"] == batch_size)
            if "error" in row:
                cells.append("failed")
            else:
                ratio = f" ({row['windows_per_s'] / base[batch_size]:.2f}x)" if batch_size in base else ""
                cells.append(f"{row['windows_per_s']:.0f}{ratio}")
        print(f"| {batch_size} | " + " | ".join(cells) + " |")
    path = common.output_path(args.output, "training_path", device)
    common.write_results(path, common.environment(device), args, collation=collation, training=training)
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
