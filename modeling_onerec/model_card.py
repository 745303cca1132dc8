"""Model cards (``README.md``) for OneRec checkpoints, filled from the config.

:data:`MODEL_CARD_TEMPLATE` is the canonical template text. It lives in this module (not in a data file) so that it
is there wherever the model code is: in a non-editable install, and next to the weights, where ``save_pretrained``
copies this file with ``modeling_onerec.py`` for ``trust_remote_code`` loading. The repository's top-level
``model_card.md`` is the card of the project's reference runs, written with the same sections in the same order
(``tests/test_model_card.py`` checks that); ``python -m modeling_onerec.model_card`` prints the bare template.

Only depends on the standard library and ``huggingface_hub``: this file travels with the remote code.
"""

import os
import re
from typing import Dict, List, Optional, Sequence

from huggingface_hub import ModelCardData

MODEL_CARD_TEMPLATE = """\
---
{{ card_data }}
---

# OneRec ({{ model_name }})

<!-- template-only: the canonical text of this template is MODEL_CARD_TEMPLATE in modeling_onerec/model_card.py; the top-level model_card.md is the card of the project's reference runs with the same sections (tests/test_model_card.py checks them). render_model_card() fills the {{ }} fields from the model config and drops these template-only lines. -->

A generative recommender in the style of OneRec (arXiv 2502.18965): an encoder reads a user's history as
semantic-ID tokens, a sparse-MoE decoder generates the next session of items under a trie constraint.

## Model
{{ architecture_summary }}

## Semantic IDs
Items are tokenized by `SemanticIDTokenizer` (balanced residual k-means, paper Algorithm 1):
{{ semantic_id_summary }}

## Data
{{ data_summary }}

## Training
{{ training_summary }}

## Results
{{ results_table }}

## Intended use and limitations
Research and engineering on sequential / generative recommendation. A model only recommends items of its
tokenizer's catalogue (plus items added with `add_items`, which it has never seen in training). Offline
metrics on public Amazon and MovieLens splits do not predict online behaviour.
"""

# Front-matter tags every OneRec card carries (extra ones, e.g. from ``push_to_hub(tags=...)``, are appended).
DEFAULT_TAGS = ["recommendation", "generative-recommendation", "semantic-ids", "onerec", "mixture-of-experts"]
# No Hub pipeline tag describes "history of semantic IDs -> session of items", so ``pipeline_tag`` is left out.

_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_TEMPLATE_ONLY_LINE = re.compile(r"^<!-- template-only:.*-->\n(\n)?", re.MULTILINE)


def _human(count: int) -> str:
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= scale:
            return f"{count / scale:.3g}{suffix}"
    return str(count)


def _count(count: int) -> str:
    return f"{count:,} ({_human(count)})" if count >= 1000 else str(count)


def _default_model_name(config) -> str:
    name = os.path.basename(str(getattr(config, "name_or_path", "") or "").rstrip("/\\"))
    if name:
        return name
    return f"{_human(config.parameter_counts()['total'])} parameters"


def architecture_summary(config) -> str:
    """Markdown table of the shape, parameter counts and MoE settings of the model ``config`` builds."""
    counts = config.parameter_counts()
    total, activated = counts["total"], counts["activated"]
    sparse = list(config.sparse_layer_indices)
    if not sparse:
        sparse_text = "none (dense T5 decoder)"
    elif len(sparse) == config.num_decoder_layers:
        sparse_text = f"all {config.num_decoder_layers} decoder layers"
    else:
        sparse_text = f"decoder layers {sparse} of {config.num_decoder_layers}"
    capacity = (
        "no capacity limit"
        if config.expert_capacity_factor is None
        else f"capacity factor {config.expert_capacity_factor}"
    )
    gates = "renormalised top-k gates" if config.normalize_expert_weights else "raw softmax gates as in the paper"
    rows = [
        ("Parameters (total)", _count(total)),
        ("Parameters activated per token", f"{_count(activated)}, {100.0 * activated / total:.1f}% of the total"),
        ("Expert parameters", _count(counts["expert"])),
        (
            "Experts per sparse layer / top-k",
            f"{config.num_experts} / {config.num_experts_per_token}; {gates}; {capacity}",
        ),
        ("Sparse (MoE) FFN layers", sparse_text),
        ("Encoder / decoder layers", f"{config.num_layers} / {config.num_decoder_layers}"),
        (
            "d_model / heads x d_kv / d_ff / expert d_ff",
            f"{config.d_model} / {config.num_heads} x {config.d_kv} / {config.d_ff} / {config.expert_hidden_size}",
        ),
        ("Vocabulary", f"{config.vocab_size} tokens"),
        ("Codebook sizes", str(config.codebook_sizes) if config.codebook_sizes is not None else "not set"),
        ("Session length (items generated)", str(config.session_length)),
        ("History length (items read)", str(config.max_history_items)),
        (
            "Encoder positions / output head / history prefix embeddings",
            f"one per {'code token' if config.history_encoding == 'tokens' else 'item'} / "
            f"{'tied to the token embeddings' if config.tie_output_embeddings else 'its own matrix'} / "
            f"{_count(config.history_prefix_buckets) + ' buckets' if config.history_prefix_buckets else 'none'}",
        ),
        (
            "History recency: encoder embeddings / cross-attention bias / newest item in the decoder input",
            f"{'one per recency rank' if config.history_recency_embeddings else 'none'} / "
            f"{'one per recency rank and head' if config.cross_attention_recency_bias else 'none'} / "
            f"{'a learned map of its encoder state' if config.newest_item_decoder_input else 'none'}",
        ),
    ]
    lines = ["| | |", "|---|---|"] + [f"| {key} | {value} |" for key, value in rows]
    return "\n".join(lines)


def _default_semantic_id_summary(config) -> str:
    sizes = config.codebook_sizes
    if sizes is None:
        return "The config records no semantic-ID layout (`codebook_sizes` is not set)."
    levels = len(sizes)
    return (
        f"{levels} code levels with codebook sizes {list(sizes)} ({sum(sizes)} code tokens; vocabulary "
        f"{config.vocab_size} with `<pad>`, `</s>`, `<s>`). An item is {levels} tokens. The encoder reads up to "
        f"{config.max_history_items} history items ({config.max_history_items * levels + 1} tokens); the decoder "
        f"generates a session of {config.session_length} items ({config.session_decoder_length} tokens: `<s>` "
        "before each item, `</s>` at the end). Use the tokenizer saved with this model."
    )


def _default_training_summary(config) -> str:
    return (
        "Objective: next-token cross-entropy over the session tokens (paper Eq. 4) "
        f"+ {config.router_aux_loss_coef} x load-balancing loss + {config.router_z_loss_coef} x router z-loss. "
        "Training data, schedule and hyper-parameters: not documented."
    )


def render_model_card(
    config,
    model_name: Optional[str] = None,
    semantic_id_summary: Optional[str] = None,
    data_summary: Optional[str] = None,
    training_summary: Optional[str] = None,
    results_table: Optional[str] = None,
    template: Optional[str] = None,
    *,
    tags: Optional[Sequence[str]] = None,
    **extra_fields: str,
) -> str:
    """The model card (``README.md`` text) of a OneRec model.

    Args:
        config: The model's :class:`OneRecConfig`; parameter counts, MoE settings and the semantic-ID layout are
            read from it.
        model_name: Shown in the title; defaults to the config's ``name_or_path`` (or the parameter count).
        semantic_id_summary, data_summary, training_summary, results_table: Markdown for those sections. The
            semantic-ID and training sections default to what the config says; data and results to "not documented".
        template: Template text (defaults to :data:`MODEL_CARD_TEMPLATE`). ``{{ name }}`` fields are filled;
            lines starting with ``<!-- template-only:`` are dropped.
        tags: Front-matter tags added after :data:`DEFAULT_TAGS`.
        extra_fields: Values for any other ``{{ field }}`` of a custom template (they also override the computed
            ``card_data`` and ``architecture_summary``).
    Raises:
        ValueError: If the template has a field nothing fills.
    """
    all_tags: List[str] = []
    for tag in list(DEFAULT_TAGS) + list(tags or []):
        if tag not in all_tags:
            all_tags.append(tag)
    card_data = ModelCardData(library_name="transformers", license="apache-2.0", tags=all_tags)
    fields: Dict[str, str] = {
        "card_data": card_data.to_yaml(),
        "model_name": model_name or _default_model_name(config),
        "architecture_summary": architecture_summary(config),
        "semantic_id_summary": semantic_id_summary or _default_semantic_id_summary(config),
        "data_summary": data_summary or "Not documented.",
        "training_summary": training_summary or _default_training_summary(config),
        "results_table": results_table or "No results reported.",
    }
    fields.update({key: str(value) for key, value in extra_fields.items()})

    text = _TEMPLATE_ONLY_LINE.sub("", MODEL_CARD_TEMPLATE if template is None else template)
    missing = sorted({name for name in _PLACEHOLDER.findall(text) if name not in fields})
    if missing:
        raise ValueError(
            f"The model card template has fields nothing fills: {missing}; pass them as keyword "
            "arguments to render_model_card."
        )
    return _PLACEHOLDER.sub(lambda match: fields[match.group(1)].strip(), text)


def write_model_card(save_directory, config, overwrite: bool = False, **fields) -> Optional[str]:
    """Writes ``save_directory/README.md`` from :func:`render_model_card` unless a ``README.md`` is already there.

    A card that exists is the user's (or an earlier save's) and is never replaced unless ``overwrite=True``.
    Returns the path written, or ``None`` if nothing was written.
    """
    path = os.path.join(save_directory, "README.md")
    if os.path.exists(path) and not overwrite:
        return None
    text = render_model_card(config, **fields)
    os.makedirs(save_directory, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path


__all__ = [
    "DEFAULT_TAGS",
    "MODEL_CARD_TEMPLATE",
    "architecture_summary",
    "render_model_card",
    "write_model_card",
]


if __name__ == "__main__":  # python -m modeling_onerec.model_card > model_card.md
    print(MODEL_CARD_TEMPLATE, end="")
