"""Sparse upcycling: a dense T5 checkpoint -> a OneRec (T5 with a sparse-MoE decoder).

Every weight the two architectures share is copied (embeddings, attention, relative position biases, layer norms,
the encoder FFNs and the FFNs of decoder layers that stay dense). In each sparse decoder layer every expert starts
as a copy of that layer's dense FFN, optionally plus a little Gaussian noise to break the symmetry, and the router
starts random (Komatsuzaki et al. 2022, "Sparse Upcycling"). With ``noise_std=0`` and gates that sum to one
(``normalize_expert_weights=True``, any top-k) the upcycled model computes exactly what the dense one did, whatever
the router says. With the paper's raw softmax gates (the default) each sparse FFN output is scaled by the sum of the
kept gate values, so training starts near, not at, the dense model.

Only depends on ``torch``, ``transformers`` and this folder.
"""

import os
from typing import Optional, Union

import torch
from torch import nn
from transformers import T5Config, T5ForConditionalGeneration
from transformers.utils import logging

from .configuration_onerec import NUM_SPECIAL_TOKENS, T5_SHAPE_KEYS, OneRecConfig
from .modeling_onerec import OneRecForConditionalGeneration, OneRecLayerSparseFF

logger = logging.get_logger(__name__)

# Keys of a T5 config that describe the checkpoint, not the architecture (or are derived from other keys).
_CONFIG_KEYS_NOT_COPIED = (
    "model_type",
    "architectures",
    "transformers_version",
    "_name_or_path",
    "auto_map",
    "dense_act_fn",
    "is_gated_act",
)


def _load_dense_t5(t5) -> T5ForConditionalGeneration:
    if isinstance(t5, (str, os.PathLike)):
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(t5)
        if getattr(config, "model_type", None) != "t5":
            raise TypeError(
                f"upcycle_dense_t5 needs a dense T5 checkpoint (model_type 't5'); {str(t5)!r} has "
                f"model_type {getattr(config, 'model_type', None)!r}."
            )
        t5 = T5ForConditionalGeneration.from_pretrained(t5)
    if isinstance(t5, OneRecForConditionalGeneration) or not isinstance(t5, T5ForConditionalGeneration):
        raise TypeError(
            "upcycle_dense_t5 needs a dense transformers T5ForConditionalGeneration (or a path to a saved "
            f"one), got {type(t5).__name__}."
        )
    if type(t5.config) is not T5Config:
        raise TypeError(f"upcycle_dense_t5 needs a plain T5Config, got {type(t5.config).__name__}.")
    return t5


def _onerec_config(t5: T5ForConditionalGeneration, overrides: dict) -> OneRecConfig:
    base = {key: value for key, value in t5.config.to_dict().items() if key not in _CONFIG_KEYS_NOT_COPIED}
    overrides = dict(overrides)
    for key in T5_SHAPE_KEYS:
        if key in overrides and overrides[key] != base.get(key):
            raise ValueError(
                f"config_overrides cannot change {key} ({base.get(key)!r} in the dense T5, "
                f"{overrides[key]!r} requested): the dense weights would not fit."
            )
    if overrides.get("expert_d_ff") not in (None, t5.config.d_ff):
        raise ValueError(
            f"config_overrides cannot set expert_d_ff={overrides['expert_d_ff']}: upcycled experts are "
            f"copies of the dense FFN, whose hidden size is d_ff={t5.config.d_ff}."
        )
    codebook_sizes = overrides.get("codebook_sizes")
    if codebook_sizes is not None:
        expected = NUM_SPECIAL_TOKENS + sum(int(size) for size in codebook_sizes)
        if expected != t5.config.vocab_size:
            raise ValueError(
                f"The dense T5 has vocab_size={t5.config.vocab_size}, but codebook_sizes={list(codebook_sizes)} "
                f"needs {expected} ({NUM_SPECIAL_TOKENS} special tokens + {expected - NUM_SPECIAL_TOKENS} "
                "codes). Resize the T5 first (t5.resize_token_embeddings(...)) or pass matching "
                "codebook_sizes."
            )
        overrides.setdefault("bos_token_id", NUM_SPECIAL_TOKENS - 1)  # <s> of the semantic-ID layout
    return OneRecConfig(**{**base, **overrides})


@torch.no_grad()
def upcycle_dense_t5(
    t5: Union[T5ForConditionalGeneration, str, os.PathLike],
    config_overrides: Optional[dict] = None,
    noise_std: float = 0.0,
    generator: Optional[torch.Generator] = None,
) -> OneRecForConditionalGeneration:
    """Builds a :class:`OneRecForConditionalGeneration` from a dense T5 by sparse upcycling.

    Args:
        t5: A ``T5ForConditionalGeneration`` or the path of a saved one.
        config_overrides: OneRec fields on top of the T5's config, e.g. ``num_experts``, ``num_experts_per_token``,
            ``sparse_decoder_layers``, ``normalize_expert_weights``, ``codebook_sizes`` (must match the T5's
            vocabulary). Shape fields of the T5 (``d_model``, ``d_ff``, depths, ...) cannot be changed.
        noise_std: Standard deviation of Gaussian noise added to each expert copy, relative to the standard deviation
            of the copied weight (0 = exact copies).
        generator: Optional ``torch.Generator`` for the noise.
    Returns:
        The OneRec model, in the T5's dtype and on its device, in eval mode if the T5 was.
    """
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}.")
    t5 = _load_dense_t5(t5)
    config = _onerec_config(t5, config_overrides or {})
    reference = next(t5.parameters())
    model = OneRecForConditionalGeneration(config).to(device=reference.device, dtype=reference.dtype)

    dense_state = t5.state_dict()
    sparse = set(config.sparse_layer_indices)
    skipped = {
        key
        for key in dense_state
        if key.startswith("decoder.block.") and int(key.split(".")[2]) in sparse and ".DenseReluDense." in key
    }
    shared_state = {key: value for key, value in dense_state.items() if key not in skipped}
    lm_head_untied = t5.lm_head.weight.data_ptr() != t5.shared.weight.data_ptr()
    if lm_head_untied:  # the T5 loaded with its own output head: give the OneRec model its own as well
        model.lm_head.weight = nn.Parameter(t5.lm_head.weight.detach().clone())
        model.all_tied_weights_keys.pop("lm_head.weight", None)
    result = model.load_state_dict(shared_state, strict=False)
    unexpected = list(result.unexpected_keys)
    missing = [key for key in result.missing_keys if ".mlp.router." not in key and ".mlp.experts." not in key]
    if unexpected or missing:
        raise RuntimeError(
            f"The dense T5 does not line up with the OneRec model: unexpected {unexpected[:5]}, missing {missing[:5]}."
        )

    gated = config.is_gated_act
    for index in config.sparse_layer_indices:
        dense_ff = t5.decoder.block[index].layer[-1]
        sparse_ff = model.decoder.block[index].layer[-1]
        assert isinstance(sparse_ff, OneRecLayerSparseFF)
        sparse_ff.layer_norm.weight.copy_(dense_ff.layer_norm.weight)
        ffn = dense_ff.DenseReluDense
        # nn.Linear stores [out, in]; experts store [in, out]. Gated: input_proj = [gate (wi_0), linear (wi_1)],
        # the order OneRecExperts.expert_forward chunks it in.
        input_proj = torch.cat([ffn.wi_0.weight.t(), ffn.wi_1.weight.t()], dim=-1) if gated else ffn.wi.weight.t()
        output_proj = ffn.wo.weight.t()
        experts = sparse_ff.mlp.experts
        for target, source in ((experts.input_proj, input_proj), (experts.output_proj, output_proj)):
            copies = source.to(target.dtype).unsqueeze(0).expand_as(target).clone()
            if noise_std > 0:
                noise = torch.randn(copies.shape, generator=generator, dtype=torch.float32)
                copies += (noise * noise_std * source.float().std()).to(copies)
            target.copy_(copies)

    dense_layers = [i for i in range(config.num_decoder_layers) if i not in sparse]
    logger.warning(
        f"Upcycled a dense T5 into OneRec: copied embeddings{' and output head' if lm_head_untied else ''}, attention, "
        f"norms, {config.num_layers} encoder FFNs and {len(dense_layers)} dense decoder FFNs {dense_layers}; each of the "
        f"{config.num_experts} experts of decoder layers {sorted(sparse)} is a copy of that layer's dense FFN"
        f"{f' plus N(0, ({noise_std} * std)^2) noise' if noise_std > 0 else ' (no noise)'}; routers are random "
        f"(top-{config.num_experts_per_token})."
    )
    if not config.normalize_expert_weights:
        logger.warning(
            "normalize_expert_weights=False: each upcycled FFN output is scaled by the sum of its top-k gate values "
            "(about k/num_experts with a random router), so the upcycled model does not start at the dense one. Pass "
            "config_overrides={'normalize_expert_weights': True} to start exactly where the dense T5 is."
        )
    model.train(t5.training)
    return model


__all__ = ["upcycle_dense_t5"]
