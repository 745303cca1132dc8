"""OneRec model: MoE layer against a naive reference (forward and backward), router losses by hand, model losses,
config validation and parameter counts, hub conventions (Auto classes, dtypes, remote code in a fresh process),
generate() with a decoder deeper than the encoder, and sparse upcycling of a dense T5."""

import json
import math
import os
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM, T5Config, T5ForConditionalGeneration
from transformers.activations import ACT2FN
from transformers.testing_utils import CaptureLogger

from modeling_onerec import (
    PRESETS,
    OneRecConfig,
    OneRecForConditionalGeneration,
    OneRecLayerSparseFF,
    OneRecModel,
    OneRecSparseMLP,
    expert_capacity,
    level_restricted_cross_entropy,
    load_balancing_loss,
    route_tokens,
    router_z_loss,
)
from modeling_onerec.conversion import logger as conversion_logger
from modeling_onerec.conversion import upcycle_dense_t5
from tests.conftest import run_without_the_project, tiny_t5

CODEBOOKS = [4, 4, 4]  # vocab 3 + 12 = 15
VOCAB = 3 + sum(CODEBOOKS)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: one intra-op thread is faster, and far faster on a busy machine (thread spin-waits)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(**overrides) -> OneRecConfig:
    return OneRecConfig.from_preset("tiny", **{"codebook_sizes": CODEBOOKS, "dropout_rate": 0.0, **overrides})


def tiny_model(seed=0, **overrides) -> OneRecForConditionalGeneration:
    torch.manual_seed(seed)
    return OneRecForConditionalGeneration(tiny_config(**overrides)).eval()


def batch(seed=0, batch_size=2, source_len=6, target_len=5):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (batch_size, source_len), generator=generator)
    labels = torch.randint(3, VOCAB, (batch_size, target_len), generator=generator)
    return input_ids, labels


# ----------------------------------------------------------------------------------------------------
# 1. OneRecSparseMLP against a deliberately naive reference
# ----------------------------------------------------------------------------------------------------


def reference_moe(x, router_weight, input_proj, output_proj, config):
    """Token by token, choice by choice; drops an expert's assignments beyond capacity in token order."""
    act = ACT2FN[config.dense_act_fn]
    num_experts, top_k = router_weight.shape[0], config.num_experts_per_token
    hidden = config.expert_hidden_size
    probs = torch.softmax(x @ router_weight.t(), dim=-1)
    capacity = (
        math.ceil(config.expert_capacity_factor * x.shape[0] * top_k / num_experts)
        if config.expert_capacity_factor is not None
        else None
    )
    taken = [0] * num_experts
    dropped = 0
    rows = []
    for n in range(x.shape[0]):
        order = sorted(range(num_experts), key=lambda e: -probs[n, e].item())[:top_k]
        chosen = [probs[n, e] for e in order]
        total = sum(chosen)
        out = torch.zeros_like(x[n])
        for e, gate in zip(order, chosen):
            if config.normalize_expert_weights:
                gate = gate / total
            if capacity is not None and taken[e] >= capacity:
                dropped += 1
                continue
            taken[e] += 1
            if config.is_gated_act:  # T5 gated FFN: act(x W_gate) * (x W_linear), gate half first
                h = act(x[n] @ input_proj[e][:, :hidden]) * (x[n] @ input_proj[e][:, hidden:])
            else:
                h = act(x[n] @ input_proj[e])
            out = out + gate * (h @ output_proj[e])
        rows.append(out)
    return torch.stack(rows), dropped


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"feed_forward_proj": "gated-gelu"},
        {"normalize_expert_weights": True},
        {"expert_capacity_factor": 0.5},
        {
            "expert_capacity_factor": 0.75,
            "feed_forward_proj": "gated-gelu",
            "normalize_expert_weights": True,
            "num_experts_per_token": 3,
            "expert_d_ff": 24,
        },
        {"expert_dispatch": "dense"},
        {"expert_dispatch": "dense", "feed_forward_proj": "gated-gelu", "num_experts_per_token": 3},
        {"expert_dispatch": "grouped_mm"},
        {
            "expert_dispatch": "grouped_mm",
            "expert_capacity_factor": 0.75,
            "feed_forward_proj": "gated-gelu",
            "num_experts_per_token": 3,
        },
    ],
    ids=[
        "relu-top2",
        "gated",
        "normalized",
        "capacity",
        "all",
        "dense-dispatch",
        "dense-dispatch-gated",
        "grouped-mm",
        "grouped-mm-capacity-gated",
    ],
)
def test_sparse_mlp_matches_naive_reference_forward_and_backward(overrides):
    config = tiny_config(**overrides)
    torch.manual_seed(0)
    mlp = OneRecSparseMLP(config)
    with torch.no_grad():
        mlp.router.weight.normal_(0, 1.0)
        mlp.experts.input_proj.normal_(0, config.d_model**-0.5)
        mlp.experts.output_proj.normal_(0, config.expert_hidden_size**-0.5)
    x = torch.randn(3, 4, config.d_model)  # 12 tokens

    x1 = x.clone().requires_grad_(True)
    out = mlp(x1)
    upstream = torch.randn_like(out)
    (out * upstream).sum().backward()

    params = [mlp.router.weight, mlp.experts.input_proj, mlp.experts.output_proj]
    ref_params = [p.detach().clone().requires_grad_(True) for p in params]
    x2 = x.clone().requires_grad_(True)
    ref_out, dropped = reference_moe(x2.reshape(-1, config.d_model), *ref_params, config)
    (ref_out.reshape(x.shape) * upstream).sum().backward()

    if config.expert_capacity_factor is not None:
        assert dropped > 0  # the capacity really binds in this example
    assert out.shape == x.shape
    torch.testing.assert_close(out, ref_out.reshape(x.shape), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-5, rtol=1e-4)
    for param, ref in zip(params, ref_params):
        assert param.grad.abs().sum() > 0
        torch.testing.assert_close(param.grad, ref.grad, atol=1e-5, rtol=1e-4)


def test_capacity_drops_later_tokens_and_fully_dropped_token_gives_zero():
    config = tiny_config(num_experts_per_token=1, expert_capacity_factor=0.25)  # capacity ceil(.25*8/4) = 1
    torch.manual_seed(0)
    mlp = OneRecSparseMLP(config)
    with torch.no_grad():
        mlp.router.weight.zero_()
        mlp.router.weight[2, 0] = 10.0  # every token with x[:, 0] > 0 goes to expert 2
        mlp.experts.input_proj.normal_()
        mlp.experts.output_proj.normal_()
    x = torch.randn(8, config.d_model)
    x[:, 0] = 1.0
    out = mlp(x)
    assert (route_tokens(mlp.router(x), 1)[1][:, 0] == 2).all()
    assert expert_capacity(8, 1, 4, 0.25) == 1
    assert out[0].abs().sum() > 0  # the first token keeps its slot
    assert torch.equal(out[1:], torch.zeros_like(out[1:]))  # the rest overflow and are dropped


# ----------------------------------------------------------------------------------------------------
# 2. Router functions by hand
# ----------------------------------------------------------------------------------------------------


def test_load_balancing_loss_uniform_collapsed_and_by_hand():
    uniform = torch.full((4, 4), 0.25)
    assert load_balancing_loss(uniform, torch.tensor([[0], [1], [2], [3]])).item() == pytest.approx(1.0)
    collapsed_probs = torch.softmax(torch.tensor([[10.0, 0, 0, 0]] * 4), dim=-1)
    collapsed = load_balancing_loss(collapsed_probs, torch.zeros(4, 1, dtype=torch.long))
    assert collapsed.item() > 3.9  # -> E = 4 when all mass and all tokens go to one expert

    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])
    index = torch.tensor([[0, 1], [1, 2]])
    # f = [1, 2, 1] / (2 tokens * 2) = [.25, .5, .25]; P = [.3, .45, .25]; 3 * (.075 + .225 + .0625) = 1.0875
    assert load_balancing_loss(probs, index).item() == pytest.approx(1.0875)
    # Mask out token 1: f = [.5, .5, 0], P = [.5, .3, .2]; 3 * (.25 + .15) = 1.2
    masked = load_balancing_loss(probs, index, token_mask=torch.tensor([True, False]))
    assert masked.item() == pytest.approx(1.2)
    assert masked.item() == pytest.approx(load_balancing_loss(probs[:1], index[:1]).item())


def test_router_z_loss_by_hand():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])  # logsumexp: ln 2, ln 4
    assert router_z_loss(logits).item() == pytest.approx((math.log(2) ** 2 + math.log(4) ** 2) / 2)
    assert router_z_loss(logits, torch.tensor([True, False])).item() == pytest.approx(math.log(2) ** 2)


def test_route_tokens_gates_are_softmax_top_k():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [0.5, -1.0, 0.0, 4.0]])
    probs = torch.softmax(logits, dim=-1)
    gates, index, router_probs = route_tokens(logits, 2)
    assert index.tolist() == [[1, 2], [3, 0]]
    torch.testing.assert_close(gates, torch.stack([probs[0, [1, 2]], probs[1, [3, 0]]]))
    torch.testing.assert_close(router_probs, probs)
    normalized, _, _ = route_tokens(logits, 2, normalize=True)
    torch.testing.assert_close(normalized.sum(-1), torch.ones(2))
    torch.testing.assert_close(normalized, gates / gates.sum(-1, keepdim=True))


# ----------------------------------------------------------------------------------------------------
# 3. Model: losses, load, gradients, config
# ----------------------------------------------------------------------------------------------------


def test_loss_is_ntp_plus_weighted_aux_and_z_and_padding_is_excluded():
    model = tiny_model(
        num_decoder_layers=3, sparse_decoder_layers=[0, 2], router_aux_loss_coef=0.3, router_z_loss_coef=0.05
    )
    input_ids, labels = batch()
    labels[0, -2:] = -100
    out = model(input_ids=input_ids, labels=labels, output_router_logits=True)

    # Level-restricted NTP (the default with a semantic-ID layout): code tokens only, softmax over their level.
    flat_logits, flat_labels = out.logits.reshape(-1, VOCAB), labels.reshape(-1)
    terms, start = [], 3
    for size in CODEBOOKS:
        for position in ((flat_labels >= start) & (flat_labels < start + size)).nonzero().flatten().tolist():
            terms.append(
                -torch.log_softmax(flat_logits[position, start : start + size], -1)[flat_labels[position] - start]
            )
        start += size
    torch.testing.assert_close(out.ntp_loss, torch.stack(terms).mean())
    # level_restricted_loss=False: plain cross-entropy over the whole vocabulary at every labelled position.
    model.config.level_restricted_loss = False
    plain = model(input_ids=input_ids, labels=labels)
    model.config.level_restricted_loss = True
    expected_ntp = F.cross_entropy(plain.logits.reshape(-1, VOCAB), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(plain.ntp_loss, expected_ntp)
    torch.testing.assert_close(out.loss, out.ntp_loss + 0.3 * out.aux_loss + 0.05 * out.z_loss)

    assert len(out.router_logits) == 2
    mask = labels.reshape(-1) != -100
    aux, z = [], []
    for logits in out.router_logits:
        gates, index, probs = route_tokens(logits, 2)
        aux.append(load_balancing_loss(probs, index, mask))
        z.append(router_z_loss(logits[mask]))
    # The model's fast path (router_loss_sums, all layers at once) equals the plain per-layer reference functions.
    torch.testing.assert_close(out.aux_loss, torch.stack(aux).mean())
    torch.testing.assert_close(out.z_loss, torch.stack(z).mean())

    assert out.expert_load.shape == (2, 4)
    torch.testing.assert_close(out.expert_load.sum(-1), torch.ones(2))
    counts = [F.one_hot(route_tokens(logits, 2)[1][mask], 4).sum((0, 1)).float() for logits in out.router_logits]
    torch.testing.assert_close(out.expert_load, torch.stack([c / c.sum() for c in counts]))


def test_router_logits_come_from_transformers_output_recording():
    # Recorded by the decoder stack's capture_outputs hooks (OneRecPreTrainedModel._can_record_outputs), in layer
    # order, and equal to what each router computes; no module keeps routing state between calls.
    model = tiny_model(num_decoder_layers=3, sparse_decoder_layers=[0, 2])
    input_ids, labels = batch()
    out = model(input_ids=input_ids, labels=labels, output_router_logits=True)
    routers = [block.layer[-1].mlp.router for block in model.decoder.block if hasattr(block.layer[-1], "mlp")]
    seen = []
    handles = [router.register_forward_hook(lambda module, args, output: seen.append(output)) for router in routers]
    try:
        decoder = model.decoder(
            input_ids=model._shift_right(labels),
            encoder_hidden_states=out.encoder_last_hidden_state,
            output_router_logits=True,
        )
    finally:
        for handle in handles:
            handle.remove()
    assert len(decoder.router_logits) == len(seen) == 2
    for recorded, direct, from_forward in zip(decoder.router_logits, seen, out.router_logits):
        assert recorded.shape == (labels.numel(), 4)
        torch.testing.assert_close(recorded, direct, rtol=0, atol=0)
        torch.testing.assert_close(recorded, from_forward)
    assert model(input_ids=input_ids, labels=labels).router_logits is None  # recorded for the loss, not returned
    assert model(input_ids=input_ids, decoder_input_ids=labels).expert_load is None  # nothing recorded: no routing
    assert not any(hasattr(module, "last_routing") for module in model.modules())
    # The default grouped dispatch syncs with the host per sparse layer: the class says it cannot compile fullgraph.
    assert OneRecForConditionalGeneration._can_compile_fullgraph is False


def reference_level_restricted_cross_entropy(logits, labels, level_offsets, vocab_size):
    """Plain per-level loop with boolean indexing: each code position's cross-entropy over its own level."""
    bounds = list(level_offsets) + [vocab_size]
    flat_logits, flat_labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
    losses = []
    for position, label in enumerate(flat_labels.tolist()):
        for start, end in zip(bounds[:-1], bounds[1:]):
            if start <= label < end:
                losses.append(
                    F.cross_entropy(flat_logits[position, start:end][None].float(), torch.tensor([label - start]))
                )
    return torch.stack(losses).mean() if losses else torch.tensor(0.0)


def test_level_restricted_cross_entropy_matches_reference_and_is_sync_free_shaped():
    torch.manual_seed(0)
    offsets, vocab = [3, 7, 11], 15  # 3 special tokens, three levels of 4 codes
    logits = torch.randn(2, 9, vocab, requires_grad=True)
    labels = torch.tensor([[2, 3, 8, 14, 2, 6, 7, 12, 1], [2, 4, 9, 11, 1, -100, -100, -100, -100]])
    loss = level_restricted_cross_entropy(logits, labels, offsets, vocab)
    reference_logits = logits.detach().clone().requires_grad_(True)
    expected = reference_level_restricted_cross_entropy(reference_logits, labels, offsets, vocab)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    expected.backward()
    torch.testing.assert_close(logits.grad, reference_logits.grad)
    # BOS/EOS/PAD and ignored positions get no gradient; no code position at all gives a zero that keeps the graph.
    assert logits.grad[1, 5:].abs().sum() == 0 and logits.grad[0, 0].abs().sum() == 0
    empty = level_restricted_cross_entropy(logits, torch.full((2, 9), -100), offsets, vocab)
    assert empty.item() == 0.0 and empty.requires_grad


def test_gradients_reach_router_and_experts():
    model = tiny_model().train()
    input_ids, labels = batch()
    model(input_ids=input_ids, labels=labels).loss.backward()
    layers = model.decoder.sparse_layers()
    assert len(layers) == 2
    for layer in layers:
        assert layer.mlp.router.weight.grad.abs().sum() > 0
        assert layer.mlp.experts.input_proj.grad.abs().sum() > 0
        assert layer.mlp.experts.output_proj.grad.abs().sum() > 0
    assert model.shared.weight.grad.abs().sum() > 0


def test_dense_path_has_no_router_losses():
    model = tiny_model(sparse_decoder_layers=[])
    assert not any(isinstance(m, OneRecLayerSparseFF) for m in model.modules())
    out = model(input_ids=batch()[0], labels=batch()[1])
    assert out.aux_loss is None and out.z_loss is None and out.expert_load is None
    assert torch.equal(out.loss, out.ntp_loss)


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"num_experts_per_token": 5}, "num_experts_per_token"),
        ({"num_experts_per_token": 0}, "num_experts_per_token"),
        ({"sparse_decoder_layers": [2]}, "sparse_decoder_layers"),
        ({"sparse_decoder_layers": [0, 0]}, "sparse_decoder_layers"),
        ({"vocab_size": 20}, "vocab_size=20 does not match codebook_sizes"),
        ({"codebook_sizes": [4, 0, 4], "vocab_size": 11}, "codebook_sizes"),
        ({"expert_capacity_factor": 0.0}, "expert_capacity_factor"),
        ({"router_jitter_noise": 1.5}, "router_jitter_noise"),
        ({"expert_dispatch": "sparse"}, "expert_dispatch"),
        ({"expert_dispatch": "dense", "expert_capacity_factor": 1.0}, "expert_dispatch='dense'"),
        ({"num_experts": "4"}, "num_experts"),
        ({"sparse_decoder_layers": "0"}, "sparse_decoder_layers"),
        ({"normalize_expert_weights": "yes"}, "normalize_expert_weights"),
        ({"codebook_sizes": [4, "a", 4]}, "codebook_sizes"),
        ({"history_encoding": "item"}, "history_encoding must be 'tokens' or 'items', got 'item'"),
        ({"history_encoding": "items", "codebook_sizes": None, "vocab_size": 15}, "needs the semantic-ID layout"),
        ({"history_prefix_buckets": -1}, "history_prefix_buckets must be an int >= 0"),
        ({"history_prefix_buckets": 8, "codebook_sizes": None, "vocab_size": 15}, "hashes each history item's code"),
        ({"history_prefix_buckets": 2.5}, "history_prefix_buckets"),
        ({"history_recency_embeddings": "yes"}, "history_recency_embeddings"),
        ({"cross_attention_recency_bias": 1}, "cross_attention_recency_bias"),
        ({"cross_attention_recency_bias": True, "codebook_sizes": None, "vocab_size": 15}, "counts each history item"),
        ({"history_recency_embeddings": True, "codebook_sizes": None, "vocab_size": 15}, "counts each history item"),
        ({"newest_item_decoder_input": "on"}, "newest_item_decoder_input"),
        ({"newest_item_decoder_input": True, "codebook_sizes": None, "vocab_size": 15}, "counts each history item"),
    ],
)
def test_config_validation_names_the_field(overrides, field):
    with pytest.raises(Exception, match=field) as info:
        tiny_config(**overrides)
    assert isinstance(info.value, (ValueError, TypeError)) or "StrictDataclass" in type(info.value).__name__


def test_config_accepts_ints_for_float_fields():
    config = tiny_config(router_aux_loss_coef=0, router_z_loss_coef=0, expert_capacity_factor=1)
    assert config.expert_capacity_factor == 1 and config.router_aux_loss_coef == 0


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"feed_forward_proj": "gated-gelu"},
        {"num_decoder_layers": 3, "sparse_decoder_layers": [1]},
        {"feed_forward_proj": "gated-silu", "expert_d_ff": 24, "num_layers": 2},
        {"sparse_decoder_layers": []},
        {"tie_output_embeddings": False},
        {"history_prefix_buckets": 7},
        {"history_recency_embeddings": True, "max_history_items": 9},
        {"cross_attention_recency_bias": True, "max_history_items": 9},
        {"newest_item_decoder_input": True},
    ],
)
def test_parameter_counts_are_exact(overrides):
    config = tiny_config(**overrides)
    model = OneRecForConditionalGeneration(config)
    counts = config.parameter_counts()
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    experts = sum(p.numel() for name, p in model.named_parameters() if ".experts." in name)
    assert counts["expert"] == experts
    extra = [
        module.embedding.weight.numel()
        for module in (model.encoder.prefix_embeddings, model.encoder.recency_embeddings)
        if module
    ]
    assert counts["embedding"] == model.shared.weight.numel() + sum(extra)
    if config.sparse_layer_indices:
        assert counts["activated"] < counts["total"]
    else:
        assert counts["activated"] == counts["total"]


def test_from_tokenizer_and_check_tokenizer(small_tokenizer):
    config = OneRecConfig.from_tokenizer(small_tokenizer, preset="tiny")
    assert config.codebook_sizes == list(small_tokenizer.codebook_sizes)
    assert config.vocab_size == small_tokenizer.vocab_size
    assert config.level_offsets == list(small_tokenizer.level_offsets)
    assert (config.pad_token_id, config.eos_token_id, config.bos_token_id) == (0, 1, 2)
    assert config.num_experts == PRESETS["tiny"]["num_experts"]
    config.check_tokenizer(small_tokenizer)  # no error

    layout = dict(
        vocab_size=small_tokenizer.vocab_size,
        level_offsets=list(small_tokenizer.level_offsets),
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    shifted = dict(layout, level_offsets=[3, 10, 15, 21])  # same vocabulary, different level boundaries
    with pytest.raises(ValueError, match="code levels start at token ids"):
        config.check_tokenizer(SimpleNamespace(**shifted))
    with pytest.raises(ValueError, match="vocab_size: tokenizer 99"):
        config.check_tokenizer(SimpleNamespace(**dict(layout, vocab_size=99)))
    with pytest.raises(ValueError, match="eos_token_id"):
        config.check_tokenizer(SimpleNamespace(**dict(layout, eos_token_id=2)))
    with pytest.raises(ValueError, match="does not match"):
        tiny_config().check_tokenizer(small_tokenizer)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_construct(name):
    config = OneRecConfig.from_preset(name, codebook_sizes=[256, 256, 256])
    counts = config.parameter_counts()
    assert config.vocab_size == 3 + 768
    assert 0 < counts["activated"] < counts["total"]


def test_documented_preset_table_states_the_real_parameter_counts():
    # Every row of the preset table in docs/model.md, recomputed: shape columns from PRESETS, counts from parameter_counts()
    # (itself checked against the built model in test_parameter_counts_are_exact).
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "docs" / "model.md").read_text(encoding="utf-8")
    rows = re.findall(
        r"^\| `([\w.-]+)` \| (\d+) \| (\d+) / (\d+) \| (\d+) / top-(\d+) \| (\d+) \| ([\d.]+)M \| "
        r"([\d.]+)M \((\d+)%\) \| ([\d.]+)M \|$",
        readme,
        flags=re.MULTILINE,
    )
    assert {row[0] for row in rows} == set(PRESETS)
    for name, d_model, enc, dec, experts, top_k, expert_d_ff, total_8k, active_8k, share, total_256 in rows:
        config = OneRecConfig.from_preset(name, codebook_sizes=[8192] * 3)
        assert (
            config.d_model,
            config.num_layers,
            config.num_decoder_layers,
            config.num_experts,
            config.num_experts_per_token,
            config.expert_hidden_size,
        ) == tuple(int(v) for v in (d_model, enc, dec, experts, top_k, expert_d_ff)), name
        counts = config.parameter_counts()
        assert f"{counts['total'] / 1e6:.1f}" == total_8k, name
        assert f"{counts['activated'] / 1e6:.1f}" == active_8k, name
        assert round(100 * counts["activated"] / counts["total"]) == int(share), name
        small_vocab = OneRecConfig.from_preset(name, codebook_sizes=[256] * 3).parameter_counts()
        assert f"{small_vocab['total'] / 1e6:.1f}" == total_256, name


def test_unknown_preset(small_tokenizer):
    with pytest.raises(ValueError, match="Unknown preset"):
        OneRecConfig.from_preset("onerec-7b")
    with pytest.raises(ValueError, match="Unknown preset 'unknown'"):  # not a bare KeyError
        OneRecConfig.from_tokenizer(small_tokenizer, preset="unknown")


# ----------------------------------------------------------------------------------------------------
# 4. Hub conventions
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    model = tiny_model(num_decoder_layers=3, sparse_decoder_layers=[0, 2])
    path = tmp_path_factory.mktemp("onerec")
    model.save_pretrained(path)
    return model, path


def test_save_pretrained_layout(saved_model):
    _, path = saved_model
    files = set(os.listdir(path))
    assert {"model.safetensors", "config.json", "configuration_onerec.py", "modeling_onerec.py"} <= files
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "onerec"
    assert config["auto_map"]["AutoConfig"] == "configuration_onerec.OneRecConfig"
    assert config["auto_map"]["AutoModelForSeq2SeqLM"] == "modeling_onerec.OneRecForConditionalGeneration"
    assert config["codebook_sizes"] == CODEBOOKS and config["sparse_decoder_layers"] == [0, 2]


def test_a_checkpoint_holds_the_shared_embedding_once_and_loading_it_fills_the_tied_weights(saved_model):
    # What the Trainer's load_best_model_at_end does, and why its "missing keys" warning is harmless (docs/errors.md).
    from safetensors.torch import load_file

    model, path = saved_model
    state = load_file(path / "model.safetensors")
    assert "shared.weight" in state and "lm_head.weight" not in state
    fresh = tiny_model(num_decoder_layers=3, sparse_decoder_layers=[0, 2])
    result = fresh.load_state_dict(state, strict=False)
    assert set(result.missing_keys) == {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"}
    for tied in (fresh.lm_head.weight, fresh.encoder.embed_tokens.weight, fresh.decoder.embed_tokens.weight):
        assert torch.equal(tied, model.shared.weight)


def test_auto_classes_load_identically(saved_model):
    model, path = saved_model
    input_ids, labels = batch()
    expected = model(input_ids=input_ids, labels=labels, output_hidden_states=True)

    config = AutoConfig.from_pretrained(path)
    volatile = {"architectures", "dtype", "_name_or_path", "auto_map", "transformers_version"}
    assert isinstance(config, OneRecConfig)
    assert {k: v for k, v in config.to_dict().items() if k not in volatile} == {
        k: v for k, v in model.config.to_dict().items() if k not in volatile
    }
    loaded = AutoModelForSeq2SeqLM.from_pretrained(path).eval()
    assert type(loaded) is OneRecForConditionalGeneration
    torch.testing.assert_close(loaded(input_ids=input_ids, labels=labels).logits, expected.logits, rtol=0, atol=0)
    bare = AutoModel.from_pretrained(path).eval()
    assert type(bare) is OneRecModel
    hidden = bare(input_ids=input_ids, decoder_input_ids=model._shift_right(labels)).last_hidden_state
    torch.testing.assert_close(hidden, expected.decoder_hidden_states[-1], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_loading_keeps_expert_dtype_and_a_float32_router(saved_model, dtype):
    model, path = saved_model
    loaded = AutoModelForSeq2SeqLM.from_pretrained(path, dtype=dtype).eval()
    experts = [p for name, p in loaded.named_parameters() if ".experts." in name]
    routers = [p for name, p in loaded.named_parameters() if ".router." in name]
    assert len(experts) == 4 and all(p.dtype == dtype for p in experts)
    assert len(routers) == 2 and all(p.dtype == torch.float32 for p in routers)  # _keep_in_fp32_modules_strict
    input_ids, labels = batch()
    out = loaded(input_ids=input_ids, labels=labels, output_router_logits=True)
    assert out.logits.dtype == dtype and torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
    originals = dict(model.named_parameters())
    for name, param in loaded.named_parameters():  # each weight is the saved one, rounded to its dtype
        assert torch.equal(param, originals[name].to(param.dtype)), name
    # With float32 routers the routing decisions are the float32 model's, and the loss moves by rounding alone.
    reference = model(input_ids=input_ids, labels=labels, output_router_logits=True)
    for half, full in zip(out.router_logits, reference.router_logits):
        assert torch.equal(half.topk(2).indices.sort(-1).values, full.topk(2).indices.sort(-1).values)
    assert abs(out.loss.item() - reference.loss.item()) < 1e-3


def test_remote_code_load_in_a_fresh_process_without_the_package(saved_model, tmp_path):
    model, path = saved_model
    input_ids, labels = batch(seed=3)
    with torch.no_grad():
        expected = model(input_ids=input_ids, labels=labels).logits
    torch.save({"input_ids": input_ids, "labels": labels, "logits": expected}, tmp_path / "expected.pt")
    out = run_without_the_project(
        f"""
        import torch
        from transformers import AutoModel, AutoModelForSeq2SeqLM
        data = torch.load({str(tmp_path / "expected.pt")!r})
        model = AutoModelForSeq2SeqLM.from_pretrained({str(path)!r}, trust_remote_code=True).eval()
        bare = AutoModel.from_pretrained({str(path)!r}, trust_remote_code=True)
        with torch.no_grad():
            logits = model(input_ids=data["input_ids"], labels=data["labels"]).logits
        print(json.dumps({{"cls": type(model).__module__, "bare": type(bare).__name__,
                          "max_diff": (logits - data["logits"]).abs().max().item()}}))
    """,
        tmp_path,
    )
    assert out["cls"].startswith("transformers_modules")  # the directory's code, not this package
    assert out["bare"] == "OneRecModel"  # auto_map carries the bare model too
    assert out["max_diff"] == 0.0


# ----------------------------------------------------------------------------------------------------
# 5. generate() with a decoder deeper than the encoder
# ----------------------------------------------------------------------------------------------------


def test_generate_beam_search_with_cache_on_deeper_decoder():
    model = tiny_model(num_layers=1, num_decoder_layers=3, sparse_decoder_layers=[0, 2])
    assert model.config.get_text_config(decoder=True).num_layers == 3
    input_ids, _ = batch()
    kwargs = dict(
        input_ids=input_ids,
        num_beams=3,
        num_return_sequences=2,
        max_new_tokens=6,
        do_sample=False,
        return_dict_in_generate=True,
        output_scores=True,
    )
    cached = model.generate(**kwargs, use_cache=True)
    uncached = model.generate(**kwargs, use_cache=False)
    assert cached.sequences.shape == (4, 7)
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(cached.sequences_scores, uncached.sequences_scores, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------
# 6. Sparse upcycling of a dense T5
# ----------------------------------------------------------------------------------------------------


def dense_t5(feed_forward_proj="relu", seed=0, **overrides):
    shape = dict(d_model=16, d_kv=4, d_ff=32, num_layers=2, num_decoder_layers=3, feed_forward_proj=feed_forward_proj)
    model = tiny_t5(VOCAB, seed, **{**shape, **overrides})
    with torch.no_grad():  # norms start at 1: randomise them so that a norm that is not copied shows
        for name, param in model.named_parameters():
            if "layer_norm" in name:
                param.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("feed_forward_proj", ["relu", "gated-gelu"])
@pytest.mark.parametrize(
    "overrides",
    [
        {"num_experts_per_token": 1},
        {"num_experts_per_token": 2},
        {"num_experts_per_token": 3, "sparse_decoder_layers": [1], "codebook_sizes": CODEBOOKS},
    ],
)
def test_upcycled_model_computes_the_dense_model(feed_forward_proj, overrides):
    t5 = dense_t5(feed_forward_proj)
    with CaptureLogger(conversion_logger) as captured:
        model = upcycle_dense_t5(t5, {"num_experts": 4, "normalize_expert_weights": True, **overrides}).eval()
    assert "copy of that layer's dense FFN" in captured.out and "routers are random" in captured.out
    assert isinstance(model, OneRecForConditionalGeneration)
    assert model.config.num_experts == 4 and model.config.is_gated_act == (feed_forward_proj != "relu")
    sparse = model.config.sparse_layer_indices
    assert len(model.decoder.sparse_layers()) == len(sparse)
    for layer in model.decoder.sparse_layers():  # every expert is the same FFN ...
        assert torch.equal(layer.mlp.experts.input_proj[0], layer.mlp.experts.input_proj[-1])
    input_ids, labels = batch()
    with torch.no_grad():
        dense = t5(input_ids=input_ids, labels=labels)
        out = model(input_ids=input_ids, labels=labels)
    # ... and the gates sum to 1, so the output is the dense model's whatever the (random) router picks.
    torch.testing.assert_close(out.logits, dense.logits, atol=1e-5, rtol=1e-5)
    expected = (
        dense.loss
        if model.config.codebook_sizes is None
        else level_restricted_cross_entropy(dense.logits, labels, model.config.level_offsets, model.config.vocab_size)
    )
    torch.testing.assert_close(out.ntp_loss, expected, atol=1e-5, rtol=1e-5)
    assert out.aux_loss is not None


def test_upcycling_with_raw_gates_or_noise_moves_away_from_dense(tmp_path):
    t5 = dense_t5("gated-gelu")
    t5.save_pretrained(tmp_path)
    input_ids, labels = batch()
    with torch.no_grad():
        dense = t5(input_ids=input_ids, labels=labels).logits
        with CaptureLogger(conversion_logger) as captured:
            raw = upcycle_dense_t5(str(tmp_path), {"num_experts": 4, "num_experts_per_token": 1}).eval()
        assert "normalize_expert_weights=False" in captured.out
        assert (raw(input_ids=input_ids, labels=labels).logits - dense).abs().max() > 1e-3
        noisy = upcycle_dense_t5(
            t5,
            {"num_experts": 4, "normalize_expert_weights": True},
            noise_std=0.01,
            generator=torch.Generator().manual_seed(0),
        ).eval()
        experts = noisy.decoder.sparse_layers()[0].mlp.experts
        assert not torch.equal(experts.input_proj[0], experts.input_proj[1])
        close = noisy(input_ids=input_ids, labels=labels).logits
        assert 0 < (close - dense).abs().max() < 0.1


def test_upcycling_keeps_an_untied_output_head():
    t5 = dense_t5()
    t5.lm_head.weight = torch.nn.Parameter(torch.randn_like(t5.shared.weight))
    model = upcycle_dense_t5(t5, {"num_experts": 3, "normalize_expert_weights": True}).eval()
    assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()
    input_ids, labels = batch()
    with torch.no_grad():
        torch.testing.assert_close(
            model(input_ids=input_ids, labels=labels).logits,
            t5(input_ids=input_ids, labels=labels).logits,
            atol=1e-5,
            rtol=1e-5,
        )


def test_upcycling_rejects_bad_input(saved_model):
    with pytest.raises(TypeError, match="T5ForConditionalGeneration"):
        upcycle_dense_t5(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="T5ForConditionalGeneration"):
        upcycle_dense_t5(tiny_model())
    with pytest.raises(TypeError, match="model_type 'onerec'"):
        upcycle_dense_t5(str(saved_model[1]))
    with pytest.raises(ValueError, match="vocab_size=15.*codebook_sizes"):
        upcycle_dense_t5(dense_t5(), {"codebook_sizes": [8, 8, 8]})
    with pytest.raises(ValueError, match="d_ff"):
        upcycle_dense_t5(dense_t5(), {"d_ff": 64})
    with pytest.raises(ValueError, match="noise_std"):
        upcycle_dense_t5(dense_t5(), noise_std=-1.0)


def test_initialisation_matches_t5_for_every_shared_weight():
    """Regression: transformers skipped T5's parent-module init for 'custom code', leaving the decoder's attention
    and FFN weights at N(0, 1) -- about 15x too large -- and training far slower than plain T5."""

    torch.manual_seed(0)
    config = tiny_config(d_model=64, d_kv=16, d_ff=128, sparse_decoder_layers=[1])
    model = OneRecForConditionalGeneration(config)
    t5 = T5ForConditionalGeneration(
        T5Config(
            vocab_size=VOCAB,
            d_model=64,
            d_kv=16,
            num_heads=config.num_heads,
            d_ff=128,
            num_layers=config.num_layers,
            num_decoder_layers=config.num_decoder_layers,
            decoder_start_token_id=0,
        )
    )
    reference = dict(t5.named_parameters())
    checked = 0
    for name, parameter in model.named_parameters():
        if name in reference and parameter.dim() == 2 and "relative_attention_bias" not in name:
            expected = reference[name].std().item()
            assert abs(parameter.std().item() - expected) < 0.25 * expected, name
            checked += 1
    assert checked >= 20
    experts = model.decoder.block[1].layer[-1].mlp.experts
    assert abs(experts.input_proj.std().item() - 64**-0.5) < 0.02
    assert abs(experts.output_proj.std().item() - 128**-0.5) < 0.02


@pytest.mark.parametrize("dispatch", ["dense", "grouped_mm"])
def test_training_forward_traces_as_one_graph(dispatch):
    # The training step must not sync with the host: dynamo traces forward + loss as one graph (fullgraph=True
    # raises at any graph break), across batch shapes without a data-dependent branch. backend="eager" checks the
    # tracing only (inductor's code generation takes minutes on a CPU; benchmarks/bench_training_path.py times it).
    torch._dynamo.reset()
    config = tiny_config(expert_dispatch=dispatch, dropout_rate=0.0)
    model = OneRecForConditionalGeneration(config).train()
    compiled = torch.compile(model, backend="eager", fullgraph=True, dynamic=True)
    # grouped_mm's shape function accepts bfloat16 inputs only (torch 2.13): trace it under autocast, as it is trained.
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dispatch == "grouped_mm")
    for batch_size, length in ((3, 7), (5, 11)):
        input_ids = torch.randint(3, config.vocab_size, (batch_size, length))
        labels = torch.randint(3, config.vocab_size, (batch_size, 6))
        labels[0, -2:] = -100
        with autocast:
            expected = model(input_ids=input_ids, labels=labels)
            got = compiled(input_ids=input_ids, labels=labels)
        torch.testing.assert_close(got.loss, expected.loss)
        got.loss.backward()
        assert model.decoder.sparse_layers()[0].mlp.experts.input_proj.grad is not None
    torch._dynamo.reset()


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_cpu_dropout_mask_keeps_each_element_with_probability_one_minus_p(p):
    from modeling_onerec.modeling_onerec import cpu_dropout_keep_mask

    torch.manual_seed(0)
    keep = cpu_dropout_keep_mask((1000, 1024), p)
    assert keep.dtype == torch.bool and keep.shape == (1000, 1024)
    # Each of the four 16-bit quarters of a 64-bit draw is a fair uniform (the int64's clear top bit is masked off):
    # the rate at every position modulo 4 is 1 - p within 4 standard errors.
    tolerance = 4 * math.sqrt(p * (1 - p) / (keep.numel() / 4))
    for quarter in range(4):
        assert abs(keep.reshape(-1)[quarter::4].float().mean().item() - (1 - p)) < tolerance
    torch.manual_seed(0)
    assert torch.equal(cpu_dropout_keep_mask((1000, 1024), p), keep)  # the global generator decides
    # Neighbouring elements are independent (a shared draw would correlate them).
    flat = keep.reshape(-1).float()
    assert abs(torch.corrcoef(torch.stack([flat[:-1], flat[1:]]))[0, 1].item()) < 0.01


def test_onerec_dropout_behaves_as_torch_dropout():
    from modeling_onerec.modeling_onerec import OneRecDropout

    x = torch.randn(64, 300, requires_grad=True)
    dropout = OneRecDropout(0.25).train()
    out = dropout(x)
    kept = out != 0
    torch.testing.assert_close(out[kept], x[kept] / 0.75)  # inverted dropout, as nn.Dropout
    assert abs(kept.float().mean().item() - 0.75) < 0.02
    out.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.75)
    assert torch.equal(dropout.eval()(x), x) and torch.equal(OneRecDropout(0.0).train()(x), x)
    assert torch.equal(OneRecDropout(1.0).train()(x), torch.zeros_like(x))


def test_every_dropout_is_onerec_dropout_and_attention_dropout_is_its_own_rate(tmp_path):
    from transformers.models.t5.modeling_t5 import T5Attention

    from modeling_onerec.modeling_onerec import OneRecDropout

    model = tiny_model(dropout_rate=0.1)
    assert not [m for m in model.modules() if type(m) is torch.nn.Dropout]
    assert {m.p for m in model.modules() if isinstance(m, OneRecDropout)} == {0.1}
    assert {m.dropout for m in model.modules() if isinstance(m, T5Attention)} == {0.1}  # T5's single rate
    model = tiny_model(dropout_rate=0.1, attention_dropout_rate=0.0)
    assert {m.dropout for m in model.modules() if isinstance(m, T5Attention)} == {0.0}
    assert {m.p for m in model.modules() if isinstance(m, OneRecDropout)} == {0.1}
    model.save_pretrained(tmp_path)
    reloaded = OneRecForConditionalGeneration.from_pretrained(tmp_path)
    assert reloaded.config.attention_dropout_rate == 0.0
    assert {m.dropout for m in reloaded.modules() if isinstance(m, T5Attention)} == {0.0}
    with pytest.raises(Exception, match="attention_dropout_rate must be in"):  # the config's validation error
        tiny_config(attention_dropout_rate=1.5)


def test_generate_names_bad_token_ids_and_beam_counts():
    model = tiny_model()
    good = torch.randint(3, VOCAB, (2, 5))
    assert model.generate(input_ids=good, max_new_tokens=2, num_beams=2).shape[0] == 2
    assert model.generate(good, max_new_tokens=2).shape[0] == 2  # positional inputs, as transformers allows
    bad = good.clone()
    bad[1, 2] = VOCAB + 7
    with pytest.raises(ValueError, match=rf"input_ids holds token ids outside .*\[{VOCAB + 7}\]"):
        model.generate(input_ids=bad, max_new_tokens=2)
    with pytest.raises(ValueError, match="num_beams must be an integer >= 1, got 0"):
        model.generate(input_ids=good, max_new_tokens=2, num_beams=0)


def test_from_pretrained_names_a_missing_local_folder(tmp_path, monkeypatch):
    from tokenization_semantic_id import SemanticIDTokenizer

    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    for missing in (str(tmp_path / "nope"), "./nope", "outputs/run/final", "outputs/final", "~/nope-onerec"):
        for loader in (OneRecForConditionalGeneration, SemanticIDTokenizer):
            with pytest.raises(FileNotFoundError, match="no such folder"):
                loader.from_pretrained(missing)
    model = tiny_model()
    model.save_pretrained(tmp_path / "outputs" / "final")
    assert OneRecForConditionalGeneration.from_pretrained("outputs/final").config.vocab_size == VOCAB


@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "tokenizer_config.json"])
def test_a_truncated_file_of_a_saved_folder_is_named(tmp_path, name):
    from tests.conftest import clustered_embeddings
    from tokenization_semantic_id import ResidualKMeansConfig, SemanticIDTokenizer, build_semantic_ids

    tokenizer = build_semantic_ids(
        [f"i{i}" for i in range(40)], clustered_embeddings(40), ResidualKMeansConfig(2, 4), progress=False
    )
    model = OneRecForConditionalGeneration(OneRecConfig.from_tokenizer(tokenizer, preset="tiny"))
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    data = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) // 2])
    loader = SemanticIDTokenizer if name.startswith("tokenizer") else OneRecForConditionalGeneration
    with pytest.raises(ValueError, match=rf"{name} is not readable .*truncated or corrupted"):
        loader.from_pretrained(tmp_path)


# ----------------------------------------------------------------------------------------------------
# history_encoding="items": one encoder position per history item
# ----------------------------------------------------------------------------------------------------


def test_pool_history_items_sums_each_items_tokens_by_hand():
    from modeling_onerec import pool_history_items

    # L = 3 tokens per item. User 0: items (3, 4, 5) and (6, 7, 8), then EOS (1). User 1: item (9, 10, 11), EOS, pad.
    input_ids = torch.tensor([[3, 4, 5, 6, 7, 8, 1], [9, 10, 11, 1, 0, 0, 0]])
    attention_mask = (input_ids != 0).long()
    embeddings = F.one_hot(input_ids, 12).float() * torch.arange(1, 13).float()  # token t -> (t + 1) at index t
    items, item_mask, token_to_item = pool_history_items(embeddings, attention_mask, tokens_per_item=3)
    assert items.shape == (2, 3, 12)
    expected = torch.zeros(2, 3, 12)
    for user, groups in enumerate([[[3, 4, 5], [6, 7, 8], [1]], [[9, 10, 11], [1], []]]):
        for group, tokens in enumerate(groups):
            for token in tokens:
                expected[user, group, token] = token + 1
    assert torch.equal(items, expected)  # padding adds nothing, the EOS is a position of its own
    assert item_mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert token_to_item.tolist() == [0, 0, 0, 1, 1, 1, 2]


def test_items_encoding_matches_a_plain_encoder_over_hand_pooled_items_and_ignores_padding():
    model = tiny_model(history_encoding="items")
    levels = len(CODEBOOKS)
    generator = torch.Generator().manual_seed(3)
    long = torch.cat([torch.randint(3, VOCAB, (3 * levels,), generator=generator), torch.tensor([1])])
    short = torch.cat([torch.randint(3, VOCAB, (levels,), generator=generator), torch.tensor([1])])
    input_ids = torch.stack([long, F.pad(short, (0, len(long) - len(short)))])
    attention_mask = (torch.arange(len(long)) < torch.tensor([[len(long)], [len(short)]])).long()
    with torch.no_grad():
        batched = model.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        for row, ids in enumerate([long, short]):
            # Reference: each item's token embeddings summed by a loop, the EOS alone, then the plain T5 stack.
            embedded = model.shared(ids)
            items = [embedded[i : i + levels].sum(0) for i in range(0, len(ids) - 1, levels)] + [embedded[-1]]
            reference = super(type(model.encoder), model.encoder).forward(inputs_embeds=torch.stack(items)[None])
            states = reference.last_hidden_state[0]
            token_states = states[torch.arange(len(ids)) // levels]  # each token carries its item's state
            torch.testing.assert_close(batched[row, : len(ids)], token_states, rtol=1e-5, atol=1e-6)
    # The decoder reads the same positions either way: the loss trains and differs from the token encoder's.
    input_ids, labels = batch(source_len=2 * levels + 1)
    loss = model(input_ids=input_ids, labels=labels).loss
    loss.backward()
    assert model.shared.weight.grad.abs().sum() > 0
    tokens = tiny_model(history_encoding="tokens")
    assert not torch.isclose(loss, tokens(input_ids=input_ids, labels=labels).loss)


def test_history_encoding_is_saved(tmp_path):
    model = tiny_model(history_encoding="items")
    model.save_pretrained(tmp_path)
    loaded = OneRecForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert loaded.config.history_encoding == "items"
    input_ids, labels = batch(source_len=7)
    torch.testing.assert_close(
        loaded(input_ids=input_ids, labels=labels).logits, model(input_ids=input_ids, labels=labels).logits
    )


def test_untied_output_head_has_its_own_matrix_and_keeps_it_through_save_and_load(tmp_path):
    tied, untied = tiny_model(), tiny_model(tie_output_embeddings=False)
    assert tied.lm_head.weight is tied.shared.weight
    assert untied.lm_head.weight is not untied.shared.weight
    for stack in (untied.encoder, untied.decoder):  # only the output head is untied
        assert stack.embed_tokens.weight is untied.shared.weight
    assert abs(untied.lm_head.weight.std().item() - 1.0) < 0.15  # initialised like the shared matrix (T5: N(0, 1))
    input_ids, labels = batch(source_len=7)
    untied.train()
    untied(input_ids=input_ids, labels=labels).loss.backward()
    assert not torch.allclose(untied.lm_head.weight.grad, untied.shared.weight.grad)
    untied.eval().save_pretrained(tmp_path)
    loaded = OneRecForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert loaded.config.tie_output_embeddings is False and loaded.lm_head.weight is not loaded.shared.weight
    assert torch.equal(loaded.lm_head.weight, untied.lm_head.weight)
    torch.testing.assert_close(
        loaded(input_ids=input_ids, labels=labels).logits, untied(input_ids=input_ids, labels=labels).logits
    )


def reference_prefix_buckets(input_ids, sizes, num_buckets):
    """Item by item in Python integers: the hash of codes (c_0 .. c_l) for the token of level l >= 1, else -1."""
    from modeling_onerec.modeling_onerec import _PREFIX_HASH_MULTIPLIERS, _PREFIX_MODULUS

    offsets = [3 + sum(sizes[:level]) for level in range(len(sizes))]
    rows = []
    for ids in input_ids.tolist():
        row = []
        for start in range(0, len(ids), len(sizes)):
            prefix, valid = 0, True
            for level, token in enumerate(ids[start : start + len(sizes)]):
                code = token - offsets[level]
                valid = valid and 0 <= code < sizes[level]
                prefix = (prefix * sizes[level] + min(max(code, 0), sizes[level] - 1)) % _PREFIX_MODULUS
                hashed = (prefix * _PREFIX_HASH_MULTIPLIERS[level] + level) % num_buckets
                row.append(hashed if valid and level > 0 else -1)
        rows.append(row)
    return torch.tensor(rows)


def test_history_prefix_buckets_match_a_per_item_reference_and_tell_items_apart():
    from modeling_onerec import history_prefix_buckets

    # CODEBOOKS = [4, 4, 4]: level 0 is ids 3-6, level 1 7-10, level 2 11-14. User 0: items (0, 0, 1), (0, 0, 2) and
    # (0, 0, 1) again, then EOS. User 1: item (0, 1, 1), EOS, padding.
    input_ids = torch.tensor([[3, 7, 12, 3, 7, 13, 3, 7, 12, 1], [3, 8, 12, 1, 0, 0, 0, 0, 0, 0]])
    buckets = history_prefix_buckets(input_ids, CODEBOOKS, 1_000_003)
    torch.testing.assert_close(buckets, reference_prefix_buckets(input_ids, CODEBOOKS, 1_000_003))
    assert buckets[:, 0].tolist() == [-1, -1] and buckets[0, 9] == -1 and (buckets[1, 3:] == -1).all()
    assert buckets[0, 1] == buckets[0, 4] == buckets[0, 7]  # the same two-code prefix (0, 0)
    assert buckets[0, 2] == buckets[0, 8] != buckets[0, 5]  # the same item twice, another item once
    assert len({buckets[0, 1].item(), buckets[1, 1].item(), buckets[0, 2].item(), buckets[1, 2].item()}) == 4
    generator = torch.Generator().manual_seed(0)
    random_ids = torch.randint(0, VOCAB, (4, 13), generator=generator)  # any ids, also out of layout
    torch.testing.assert_close(
        history_prefix_buckets(random_ids, CODEBOOKS, 11), reference_prefix_buckets(random_ids, CODEBOOKS, 11)
    )


def test_history_prefix_embeddings_start_at_zero_learn_and_survive_save_and_load(tmp_path):
    plain, model = tiny_model(), tiny_model(history_prefix_buckets=32)
    model.load_state_dict(plain.state_dict(), strict=False)  # everything but the prefix embeddings
    assert model.encoder.prefix_embeddings.embedding.weight.shape == (32, plain.config.d_model)
    assert torch.count_nonzero(model.encoder.prefix_embeddings.embedding.weight) == 0
    input_ids, labels = batch(source_len=3 * len(CODEBOOKS) + 1)
    with torch.no_grad():  # zero-initialised: the same model as without them
        torch.testing.assert_close(
            model(input_ids=input_ids, labels=labels).logits, plain(input_ids=input_ids, labels=labels).logits
        )
    model.train()
    model(input_ids=input_ids, labels=labels).loss.backward()
    grad = model.encoder.prefix_embeddings.embedding.weight.grad
    used = history_prefix_buckets_of(model, input_ids)
    assert grad[used].abs().sum() > 0 and grad[[b for b in range(32) if b not in used]].abs().sum() == 0
    with torch.no_grad():
        model.encoder.prefix_embeddings.embedding.weight.normal_()
    model.eval()
    with torch.no_grad():
        changed = model(input_ids=input_ids, labels=labels).logits
    assert not torch.allclose(changed, plain(input_ids=input_ids, labels=labels).logits)
    model.save_pretrained(tmp_path)
    loaded = OneRecForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert loaded.config.history_prefix_buckets == 32
    assert torch.equal(
        loaded.encoder.prefix_embeddings.embedding.weight, model.encoder.prefix_embeddings.embedding.weight
    )
    torch.testing.assert_close(loaded(input_ids=input_ids, labels=labels).logits, changed)
    with pytest.raises(ValueError, match="pass input_ids instead of inputs_embeds"):
        model.encoder(inputs_embeds=model.shared(input_ids))


def history_prefix_buckets_of(model, input_ids):
    from modeling_onerec import history_prefix_buckets

    buckets = history_prefix_buckets(input_ids, model.config.codebook_sizes, model.config.history_prefix_buckets)
    return sorted(set(buckets[buckets >= 0].tolist()))


@pytest.mark.parametrize("encoding", ["tokens", "items"])
@pytest.mark.parametrize(
    "option,table",
    [
        ({"history_prefix_buckets": 16}, "prefix_embeddings"),
        # Recency ranks count from the user's own newest item, not from the batch's width.
        ({"history_recency_embeddings": True, "max_history_items": 8}, "recency_embeddings"),
    ],
)
def test_encoder_history_embeddings_ignore_padding(encoding, option, table):
    model = tiny_model(history_encoding=encoding, **option).eval()
    with torch.no_grad():
        getattr(model.encoder, table).embedding.weight.normal_()
    history = torch.tensor([3, 7, 12, 4, 8, 13, 1])
    padded = torch.stack([F.pad(history, (0, 6)), torch.tensor([5, 9, 14, 3, 7, 12, 6, 10, 11, 4, 8, 13, 1])])
    mask = (torch.arange(13) < torch.tensor([[7], [13]])).long()
    with torch.no_grad():
        alone = model.encoder(input_ids=history[None]).last_hidden_state[0]
        batched = model.encoder(input_ids=padded, attention_mask=mask).last_hidden_state[0, :7]
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-6)


def reference_recency_ranks(input_ids, pad_token_id, tokens_per_item, num_ranks):
    """Row by row in Python: the real tokens (not padding, wherever it is), cut into items of ``tokens_per_item``
    tokens from the first; the newest whole item is rank 0; a trailing partial group (the EOS) and padding are -1."""
    rows = []
    for ids in input_ids.tolist():
        real = [position for position, token in enumerate(ids) if token != pad_token_id]
        items = len(real) // tokens_per_item
        row = [-1] * len(ids)
        for order, position in enumerate(real):
            item = order // tokens_per_item
            if item < items:
                row[position] = min(items - 1 - item, num_ranks - 1)
        rows.append(row)
    return torch.tensor(rows)


def test_history_recency_ranks_count_back_from_the_newest_item():
    from modeling_onerec import history_recency_ranks

    # CODEBOOKS = [4, 4, 4]: 3 tokens per item. User 0: three items then EOS; user 1: one item, EOS, padding; user 2
    # the same as user 1, left-padded; user 3: three items without an EOS.
    input_ids = torch.tensor(
        [
            [3, 7, 12, 4, 8, 13, 5, 9, 14, 1],
            [3, 8, 12, 1, 0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 3, 8, 12, 1],
            [3, 7, 12, 4, 8, 13, 5, 9, 14, 0],
        ]
    )
    mask = (input_ids != 0).long()
    ranks = history_recency_ranks(mask, 3, 50)
    assert ranks.tolist() == [
        [2, 2, 2, 1, 1, 1, 0, 0, 0, -1],
        [0, 0, 0, -1, -1, -1, -1, -1, -1, -1],
        [-1, -1, -1, -1, -1, -1, 0, 0, 0, -1],
        [2, 2, 2, 1, 1, 1, 0, 0, 0, -1],
    ]
    assert history_recency_ranks(mask, 3, 2)[0].tolist() == [1, 1, 1, 1, 1, 1, 0, 0, 0, -1]  # older items share
    generator = torch.Generator().manual_seed(0)
    random_ids = torch.randint(0, VOCAB, (6, 17), generator=generator)  # padding (0) anywhere
    torch.testing.assert_close(
        history_recency_ranks((random_ids != 0).long(), 3, 4), reference_recency_ranks(random_ids, 0, 3, 4)
    )


def assert_saved_and_loaded_alike(model, tmp_path, option: str, input_ids, labels, logits) -> None:
    """``model`` (in eval mode) saved and loaded keeps ``config.<option>`` on and gives the same ``logits``."""
    model.save_pretrained(tmp_path)
    loaded = OneRecForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert getattr(loaded.config, option) is True
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=input_ids, labels=labels).logits, logits)


@pytest.mark.parametrize("encoding", ["tokens", "items"])
def test_history_recency_embeddings_start_at_zero_learn_and_survive_save_and_load(tmp_path, encoding):
    plain = tiny_model(history_encoding=encoding)
    model = tiny_model(history_recency_embeddings=True, max_history_items=4, history_encoding=encoding)
    model.load_state_dict(plain.state_dict(), strict=False)  # everything but the recency embeddings
    table = model.encoder.recency_embeddings.embedding.weight
    assert table.shape == (4, plain.config.d_model) and torch.count_nonzero(table) == 0
    input_ids, labels = batch(source_len=2 * len(CODEBOOKS) + 1)  # two items and one more token: ranks 1, 0
    with torch.no_grad():  # zero-initialised: the same model as without them
        torch.testing.assert_close(
            model(input_ids=input_ids, labels=labels).logits, plain(input_ids=input_ids, labels=labels).logits
        )
    model.train()
    model(input_ids=input_ids, labels=labels).loss.backward()
    grad = table.grad
    assert grad[:2].abs().sum(dim=1).gt(0).all() and grad[2:].abs().sum() == 0  # only the ranks present learn
    with torch.no_grad():
        table.normal_()
    model.eval()
    with torch.no_grad():
        changed = model(input_ids=input_ids, labels=labels).logits
    assert not torch.allclose(changed, plain(input_ids=input_ids, labels=labels).logits)
    assert_saved_and_loaded_alike(model, tmp_path, "history_recency_embeddings", input_ids, labels, changed)
    with torch.no_grad():  # inputs_embeds take the same path as input_ids
        by_embeds = model.encoder(inputs_embeds=model.shared(input_ids)).last_hidden_state
        by_ids = model.encoder(input_ids=input_ids).last_hidden_state
    torch.testing.assert_close(by_embeds, by_ids)


def test_cross_attention_recency_bias_starts_at_zero_learns_and_reaches_the_logits(tmp_path):
    plain = tiny_model()
    model = tiny_model(cross_attention_recency_bias=True, max_history_items=4)
    model.load_state_dict(plain.state_dict(), strict=False)  # everything but the bias table
    table = model.decoder.cross_attention_recency.bias.weight
    assert table.shape == (5, plain.config.num_heads) and torch.count_nonzero(table) == 0
    input_ids, labels = batch(
        source_len=2 * len(CODEBOOKS) + 1
    )  # two items (ranks 1, 0), then one more token (EOS row)
    with torch.no_grad():  # zero bias: the same model as without it
        torch.testing.assert_close(
            model(input_ids=input_ids, labels=labels).logits, plain(input_ids=input_ids, labels=labels).logits
        )
    model.train()
    model(input_ids=input_ids, labels=labels).loss.backward()
    used = table.grad.abs().sum(dim=1)
    assert (used[[0, 1, 4]] > 0).all() and (used[[2, 3]] == 0).all()  # ranks 0, 1 and the EOS row
    with torch.no_grad():
        table.normal_(std=2.0)
    model.eval()
    with torch.no_grad():
        changed = model(input_ids=input_ids, labels=labels).logits
        # Masking the newest item's tokens out of the cross-attention by the bias changes the output; the same
        # bias on every rank (a constant per head) cancels in the softmax.
        table.copy_(table[:1].expand_as(table))
        constant = model(input_ids=input_ids, labels=labels).logits
    assert not torch.allclose(changed, plain(input_ids=input_ids, labels=labels).logits)
    torch.testing.assert_close(constant, plain(input_ids=input_ids, labels=labels).logits, rtol=1e-4, atol=1e-5)
    assert_saved_and_loaded_alike(model, tmp_path, "cross_attention_recency_bias", input_ids, labels, constant)


def test_newest_item_decoder_input_starts_at_zero_learns_and_reads_the_newest_item_only(tmp_path):
    plain = tiny_model()
    model = tiny_model(newest_item_decoder_input=True)
    model.load_state_dict(plain.state_dict(), strict=False)  # everything but the projection
    projection = model.decoder.newest_item_input.projection.weight
    assert projection.shape == (plain.config.d_model, plain.config.d_model) and torch.count_nonzero(projection) == 0
    input_ids, labels = batch(source_len=2 * len(CODEBOOKS) + 1)  # two items, then one more token
    with torch.no_grad():  # zero map: the same model as without it
        torch.testing.assert_close(
            model(input_ids=input_ids, labels=labels).logits, plain(input_ids=input_ids, labels=labels).logits
        )
    model.train()
    model(input_ids=input_ids, labels=labels).loss.backward()
    assert torch.count_nonzero(projection.grad) > 0
    # The pooled state is the mean of the encoder's output over the newest item's code tokens, nothing else.
    with torch.no_grad():
        encoder_states = torch.randn(2, input_ids.shape[1], plain.config.d_model)
        mask = torch.ones_like(input_ids)
        projection.copy_(torch.eye(plain.config.d_model))
        added = model.decoder.newest_item_input(encoder_states, mask)
    newest = slice(len(CODEBOOKS), 2 * len(CODEBOOKS))
    torch.testing.assert_close(added[:, 0], encoder_states[:, newest].mean(dim=1))
    model.eval()
    with torch.no_grad():
        changed = model(input_ids=input_ids, labels=labels).logits
    assert not torch.allclose(changed, plain(input_ids=input_ids, labels=labels).logits)
    assert_saved_and_loaded_alike(model, tmp_path, "newest_item_decoder_input", input_ids, labels, changed)


@pytest.mark.parametrize(
    "option,table",
    [
        ({"cross_attention_recency_bias": True, "max_history_items": 8}, "cross_attention_recency.bias"),
        ({"newest_item_decoder_input": True}, "newest_item_input.projection"),
    ],
)
def test_decoder_history_options_ignore_padding(option, table):
    model = tiny_model(**option).eval()
    with torch.no_grad():
        model.decoder.get_parameter(f"{table}.weight").normal_(std=2.0)
    history = torch.tensor([3, 7, 12, 4, 8, 13, 1])
    padded = torch.stack([F.pad(history, (0, 6)), torch.tensor([5, 9, 14, 3, 7, 12, 6, 10, 11, 4, 8, 13, 1])])
    mask = (torch.arange(13) < torch.tensor([[7], [13]])).long()
    labels = torch.tensor([[2, 3, 7, 11, 1], [2, 4, 8, 12, 1]])
    with torch.no_grad():
        alone = model(input_ids=history[None], labels=labels[:1]).logits[0]
        batched = model(input_ids=padded, attention_mask=mask, labels=labels).logits[0]
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)
