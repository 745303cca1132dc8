"""LoRA (PEFT 0.21) on OneRec: T5 attention and the stacked MoE experts.

What works (checked below: training, gradients, adapter save/reload, merge_and_unload):

* Attention: ``LoraConfig(target_modules=["q", "v"], task_type="SEQ_2_SEQ_LM")`` -- every ``q``/``v`` ``nn.Linear``
  of the encoder self-attention and the decoder self- and cross-attention.
* Experts: ``LoraConfig(target_parameters=["experts.input_proj", "experts.output_proj"], lora_dropout=0.0,
  task_type="SEQ_2_SEQ_LM")`` (no ``target_modules`` needed). PEFT wraps ``mlp.experts`` in two nested
  ``lora.ParamWrapper`` s that, during each forward, reparametrise the 3-D ``nn.Parameter`` to
  ``W[e] + scaling * B[e] @ A[e]`` (one rank-r update per expert) via ``torch.nn.utils.parametrize``.
  Matching is by exact name or by suffix at a dot boundary on ``"<module path>.<param name>"`` (bare
  ``"input_proj"`` works too; regexes do not). ParamWrapper rejects ``lora_dropout != 0``, DoRA, ``lora_bias`` and
  ``fan_in_fan_out``. Layout: PEFT takes 3-D weights as ``[E, out, in]`` unless the owning module has
  ``is_transposed = True``, meaning ``[E, in, out]``; ``OneRecExperts`` sets it (its weights are used as
  ``x @ W[e]``), so ``lora_A`` reads the expert input as in ordinary LoRA. Without the flag training still works,
  only with lora_A and lora_B in swapped roles (and adapters saved one way do not load the other way).
"""

import copy
import json
import os
import warnings

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import ParamWrapper
from peft.tuners.lora.layer import Linear as LoraLinear

from modeling_onerec import OneRecConfig, OneRecForConditionalGeneration

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # PEFT's call

CASES = {
    "attention": dict(target_modules=["q", "v"]),
    "experts": dict(target_parameters=["experts.input_proj", "experts.output_proj"]),
}
STEPS = 8


def lora_config(case):
    return LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="SEQ_2_SEQ_LM", **CASES[case])


@pytest.fixture(scope="module")
def config():
    return OneRecConfig.from_preset("tiny", codebook_sizes=[8, 8, 8], dropout_rate=0.0)


@pytest.fixture(scope="module")
def batch(config):
    generator = torch.Generator().manual_seed(0)
    return dict(
        input_ids=torch.randint(3, config.vocab_size, (4, 9), generator=generator),
        labels=torch.randint(3, config.vocab_size, (4, 7), generator=generator),
    )


def fresh_base(config, state_dict):
    model = OneRecForConditionalGeneration(config)
    model.load_state_dict(state_dict)
    return model.eval()


@pytest.fixture(scope="module", params=list(CASES))
def trained(request, config, batch, tmp_path_factory):
    """A LoRA model trained for a few steps, with the base weights it started from and its saved adapter."""
    case = request.param
    torch.manual_seed(0)
    base = OneRecForConditionalGeneration(config)
    base_state = copy.deepcopy(base.state_dict())
    model = get_peft_model(base, lora_config(case))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses, grad_names = [], None
    for step in range(STEPS):
        loss = model(**batch).loss
        loss.backward()
        if step == 0:
            grad_names = {name for name, p in model.named_parameters() if p.grad is not None}
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.eval()
    adapter_dir = tmp_path_factory.mktemp(f"adapter-{case}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT warns that it cannot find a hub config for the base model offline
        model.save_pretrained(adapter_dir)
    with torch.no_grad():
        logits = model(**batch).logits
    return dict(
        case=case,
        model=model,
        base_state=base_state,
        losses=losses,
        grad_names=grad_names,
        adapter_dir=adapter_dir,
        logits=logits,
    )


def test_lora_targets(trained, config):
    model = trained["model"]
    if trained["case"] == "attention":
        wrapped = sorted(name for name, m in model.named_modules() if isinstance(m, LoraLinear))
        expected = config.num_layers * 2 + config.num_decoder_layers * 4  # enc self q,v; dec self + cross q,v
        assert len(wrapped) == expected
        assert any(".encoder." in n for n in wrapped) and any("EncDecAttention" in n for n in wrapped)
    else:
        wrappers = [m for m in model.modules() if isinstance(m, ParamWrapper)]
        assert len(wrappers) == 2 * len(config.sparse_layer_indices)  # two nested wrappers per experts module
        d, f = config.d_model, config.expert_hidden_size
        shapes = {w.parameter_name: (w.in_features, w.out_features, w.num_experts) for w in wrappers}
        assert shapes == {"input_proj": (d, f, config.num_experts), "output_proj": (f, d, config.num_experts)}


def test_training_reduces_loss_and_only_lora_is_trained(trained, config):
    model, losses = trained["model"], trained["losses"]
    assert losses[-1] < losses[0] - 0.05, losses
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    assert trained["grad_names"] == trainable
    # The base weights (experts included: LoRA reparametrises them only inside each forward) did not move.
    base_now = {
        key.replace(".base_layer", ""): value
        for key, value in model.get_base_model().state_dict().items()
        if "lora_" not in key
    }
    assert base_now.keys() == trained["base_state"].keys()
    for key, value in trained["base_state"].items():
        assert torch.equal(base_now[key], value), key
    # ... and the adapter does change the output.
    with torch.no_grad():
        base_logits = fresh_base(config, trained["base_state"])(
            input_ids=torch.zeros(1, 1, dtype=torch.long), labels=torch.zeros(1, 1, dtype=torch.long)
        ).logits
        adapted = model(
            input_ids=torch.zeros(1, 1, dtype=torch.long), labels=torch.zeros(1, 1, dtype=torch.long)
        ).logits
    assert not torch.allclose(base_logits, adapted)


def test_adapter_save_and_reload_on_a_fresh_base(trained, config, batch):
    adapter_dir = trained["adapter_dir"]
    assert {"adapter_model.safetensors", "adapter_config.json"} <= set(os.listdir(adapter_dir))
    saved = json.loads((adapter_dir / "adapter_config.json").read_text())
    if trained["case"] == "experts":
        assert sorted(saved["target_parameters"]) == ["experts.input_proj", "experts.output_proj"]
    reloaded = PeftModel.from_pretrained(fresh_base(config, trained["base_state"]), adapter_dir).eval()
    with torch.no_grad():
        logits = reloaded(**batch).logits
    torch.testing.assert_close(logits, trained["logits"], rtol=0, atol=1e-6)


def test_merge_and_unload_matches_the_adapter(trained, config, batch, tmp_path):
    adapted = PeftModel.from_pretrained(fresh_base(config, trained["base_state"]), trained["adapter_dir"]).eval()
    generate_kwargs = dict(input_ids=batch["input_ids"], max_new_tokens=6, do_sample=False, num_beams=1)
    with torch.no_grad():
        unmerged_tokens = adapted.generate(**generate_kwargs)
    merged = adapted.merge_and_unload()
    assert type(merged) is OneRecForConditionalGeneration
    assert set(merged.state_dict()) == set(trained["base_state"])  # plain checkpoint, no LoRA keys left
    with torch.no_grad():
        logits = merged(**batch).logits
        merged_tokens = merged.generate(**generate_kwargs)
    # float32: folding B @ A into the weights reorders the sums (float64 agrees to ~1e-14)
    torch.testing.assert_close(logits, trained["logits"], rtol=1e-4, atol=1e-3)
    assert torch.equal(merged_tokens, unmerged_tokens)

    # The merged model is an ordinary OneRec checkpoint (its card rendered from its config).
    merged.save_pretrained(tmp_path / "merged")
    assert "# OneRec" in merged.model_card().text
    loaded = OneRecForConditionalGeneration.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, logits, rtol=0, atol=0)
