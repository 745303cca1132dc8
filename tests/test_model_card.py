"""Model card: the top-level card follows the template, rendering from the config, save_pretrained / push_to_hub (hub calls faked, no network)."""

import importlib.util
import json
import os
import types
from pathlib import Path

import huggingface_hub
import huggingface_hub.repocard
import pytest
import torch
from huggingface_hub import ModelCard
from huggingface_hub.errors import LocalEntryNotFoundError

from modeling_onerec import OneRecConfig, OneRecForConditionalGeneration
from modeling_onerec.model_card import (
    DEFAULT_TAGS,
    MODEL_CARD_TEMPLATE,
    render_model_card,
    write_model_card,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def config():
    return OneRecConfig.from_preset("tiny", codebook_sizes=[8, 8, 8])


@pytest.fixture(scope="module")
def model(config):
    torch.manual_seed(0)
    return OneRecForConditionalGeneration(config)


def _count_text(count):
    return f"{count:,}"


def test_top_level_model_card_follows_the_template():
    # model_card.md is the card of the project's reference runs: the sections every saved checkpoint's card has
    # (MODEL_CARD_TEMPLATE, filled by render_model_card), in the same order, with nothing left unfilled.
    card = (ROOT / "model_card.md").read_text(encoding="utf-8")
    headings = [line for line in card.splitlines() if line.startswith("## ")]
    template_headings = [line for line in MODEL_CARD_TEMPLATE.splitlines() if line.startswith("## ")]
    assert headings[: len(template_headings)] == template_headings
    assert "{{" not in card and "}}" not in card
    for required in ("Recall@10", "NDCG@10", "successor", "TIGER", "SASRec", "Limitations"):
        assert required in card


def test_render_fills_everything_from_the_config(config):
    text = render_model_card(config)
    assert "{{" not in text and "}}" not in text
    assert "template-only" not in text
    card = ModelCard(text)  # valid front matter
    assert card.data.library_name == "transformers"
    assert card.data.license == "apache-2.0"
    assert card.data.tags == DEFAULT_TAGS
    assert getattr(card.data, "pipeline_tag", None) is None
    assert "pipeline_tag" not in text

    counts = config.parameter_counts()
    assert _count_text(counts["total"]) in text
    assert _count_text(counts["activated"]) in text
    assert f"{100 * counts['activated'] / counts['total']:.1f}% of the total" in text
    assert f"| Experts per sparse layer / top-k | {config.num_experts} / {config.num_experts_per_token};" in text
    assert f"all {config.num_decoder_layers} decoder layers" in text
    assert "[8, 8, 8]" in text
    assert f"| Session length (items generated) | {config.session_length} |" in text
    assert f"| History length (items read) | {config.max_history_items} |" in text
    assert (
        "| Encoder positions / output head / history prefix embeddings | one per code token / tied to the token "
        "embeddings / none |" in text
    )
    assert (
        "| History recency: encoder embeddings / cross-attention bias / newest item in the decoder input "
        "| none / none / none |" in text
    )
    other = OneRecConfig.from_preset(
        "tiny",
        codebook_sizes=[8, 8, 8],
        tie_output_embeddings=False,
        history_prefix_buckets=1024,
        history_recency_embeddings=True,
        cross_attention_recency_bias=True,
        newest_item_decoder_input=True,
    )
    other_card = render_model_card(other)
    assert "| one per code token / its own matrix / 1,024 (1.02K) buckets |" in other_card
    assert "| one per recency rank / one per recency rank and head / a learned map of its encoder state |" in other_card
    assert f"session of {config.session_length} items ({config.session_decoder_length} tokens" in text
    assert f"{config.router_aux_loss_coef} x load-balancing loss" in text
    assert "## Intended use and limitations" in text


def test_render_with_fields_and_partly_sparse_decoder():
    config = OneRecConfig.from_preset("tiny", codebook_sizes=[4, 4], num_decoder_layers=3, sparse_decoder_layers=[2])
    text = render_model_card(
        config,
        model_name="me/onerec-beauty",
        semantic_id_summary="SID TEXT",
        data_summary="Amazon Beauty, leave-one-out.",
        training_summary="TRAIN TEXT",
        results_table="| metric | value |\n|---|---|\n| Recall@10 | 0.1 |",
        tags=["beauty", "onerec"],
    )
    assert text.count("# OneRec (me/onerec-beauty)") == 1
    for piece in (
        "SID TEXT",
        "Amazon Beauty, leave-one-out.",
        "TRAIN TEXT",
        "| Recall@10 | 0.1 |",
        "decoder layers [2] of 3",
    ):
        assert piece in text
    assert ModelCard(text).data.tags == DEFAULT_TAGS + ["beauty"]  # no duplicates


def test_render_dense_config_without_semantic_ids():
    text = render_model_card(OneRecConfig.from_preset("tiny", sparse_decoder_layers=[]))
    assert "none (dense T5 decoder)" in text and "| Expert parameters | 0 |" in text
    assert "| Codebook sizes | not set |" in text and "no semantic-ID layout" in text
    assert "100.0% of the total" in text


def test_custom_template_and_unfilled_field(config):
    assert render_model_card(config, template="{{ model_name }}: {{ foo }}", model_name="x", foo="bar") == "x: bar"
    with pytest.raises(ValueError, match=r"\['foo'\]"):
        render_model_card(config, template="{{ model_name }} {{ foo }}")


def test_write_model_card_never_overwrites(tmp_path, config):
    assert write_model_card(tmp_path, config) == str(tmp_path / "README.md")
    (tmp_path / "README.md").write_text("my own card")
    assert write_model_card(tmp_path, config, data_summary="new") is None
    assert (tmp_path / "README.md").read_text() == "my own card"
    write_model_card(tmp_path, config, overwrite=True, data_summary="new")
    assert "new" in (tmp_path / "README.md").read_text()


def test_save_pretrained_has_no_side_effect_and_model_card_is_explicit(tmp_path, model, config):
    model.save_pretrained(tmp_path / "a")
    assert not (tmp_path / "a" / "README.md").exists()  # transformers' save, nothing more
    assert {"model_card.py", "modeling_onerec.py", "configuration_onerec.py"} <= set(os.listdir(tmp_path / "a"))
    card = model.model_card(data_summary="DATA FROM FIELDS", tags=["beauty"])
    assert isinstance(card, ModelCard)
    card.save(tmp_path / "a" / "README.md")
    readme = (tmp_path / "a" / "README.md").read_text()
    assert _count_text(config.parameter_counts()["total"]) in readme and "DATA FROM FIELDS" in readme
    assert set(DEFAULT_TAGS) | {"beauty"} <= set(ModelCard.load(tmp_path / "a" / "README.md").data.tags)


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """Fakes the hub calls push_to_hub makes (create_repo, the remote card download, create_commit)."""
    uploads = {}
    state = {"remote_card": None}

    def create_repo(self, repo_id, *args, **kwargs):
        return types.SimpleNamespace(repo_id=repo_id)

    def hf_hub_download(repo_id, filename, *args, **kwargs):
        if state["remote_card"] is None:
            raise LocalEntryNotFoundError(f"{repo_id} has no {filename}")
        path = tmp_path / "remote_README.md"
        path.write_text(state["remote_card"], encoding="utf-8")
        return str(path)

    def create_commit(self, repo_id, operations, *args, **kwargs):
        for operation in operations:
            with operation.as_file() as handle:
                uploads[operation.path_in_repo] = handle.read()
        return types.SimpleNamespace(repo_id=repo_id)

    def create_branch(self, *args, **kwargs):
        return None

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", create_commit)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_branch", create_branch)
    monkeypatch.setattr(huggingface_hub.repocard, "hf_hub_download", hf_hub_download)
    return types.SimpleNamespace(uploads=uploads, state=state)


def test_push_to_hub_then_the_card(fake_hub, monkeypatch, model, config):
    # The public route: transformers pushes the model (with its generic card), then the hub's ModelCard pushes ours.
    monkeypatch.setattr(ModelCard, "validate", lambda self, *args, **kwargs: None)  # a network call
    model.push_to_hub("me/onerec-tiny")
    assert {
        "model.safetensors",
        "config.json",
        "configuration_onerec.py",
        "modeling_onerec.py",
        "model_card.py",
    } <= set(fake_hub.uploads)
    model.model_card(model_name="me/onerec-tiny").push_to_hub("me/onerec-tiny")
    readme = fake_hub.uploads["README.md"].decode("utf-8")
    assert "# OneRec (me/onerec-tiny)" in readme
    counts = config.parameter_counts()
    assert _count_text(counts["total"]) in readme and _count_text(counts["activated"]) in readme
    assert json.loads(fake_hub.uploads["config.json"])["model_type"] == "onerec"


def test_trainer_push_writes_our_card(tmp_path, model, config):
    # Trainer.push_to_hub calls create_model_card before uploading output_dir: ours replaces the generic draft.
    from trainers.pretraining import OneRecPretrainer, OneRecPretrainingConfig

    args = OneRecPretrainingConfig(output_dir=str(tmp_path / "run"), use_cpu=True, report_to=[])
    trainer = OneRecPretrainer(model=model, args=args)
    trainer.create_model_card(model_name="me/onerec-run", tags="beauty")
    card = ModelCard.load(tmp_path / "run" / "README.md")
    assert "# OneRec (me/onerec-run)" in card.text and _count_text(config.parameter_counts()["total"]) in card.text
    assert "beauty" in card.data.tags and set(DEFAULT_TAGS) <= set(card.data.tags)


def test_copied_model_card_module_is_self_contained(tmp_path, model, config):
    """save_pretrained copies model_card.py (a relative import of modeling_onerec.py) next to the weights for
    trust_remote_code; loaded on its own, outside the package, it renders the same card (the template is inside)."""
    model.save_pretrained(tmp_path / "model")
    copied = tmp_path / "model" / "model_card.py"
    assert "from ." not in copied.read_text(encoding="utf-8")  # nothing else of the package is needed
    spec = importlib.util.spec_from_file_location("copied_model_card", copied)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.MODEL_CARD_TEMPLATE == MODEL_CARD_TEMPLATE
    assert module.render_model_card(config, model_name="x") == render_model_card(config, model_name="x")
