"""OneRec configuration: T5 with a sparse Mixture-of-Experts decoder (paper §3.2, Eq. 2).

This file only depends on ``transformers``: ``save_pretrained`` copies it next to the weights so that
``AutoConfig.from_pretrained(path, trust_remote_code=True)`` works where this project is not installed.
"""

import copy
import os
import warnings
from typing import Dict, List, Optional, Union

from huggingface_hub.dataclasses import strict
from transformers import T5Config

# Paper scales (§5.1: 0.05B ... 1B total parameters; 24 experts, top-2). Shapes only; the vocabulary
# and the parameter counts come from the tokenizer and `OneRecConfig.parameter_counts()`.
PRESETS: Dict[str, dict] = {
    # Unit tests: a few thousand parameters per layer.
    "tiny": dict(
        d_model=32,
        d_kv=8,
        num_heads=4,
        d_ff=64,
        num_layers=1,
        num_decoder_layers=2,
        num_experts=4,
        num_experts_per_token=2,
    ),
    # CPU demo / small datasets (Amazon Beauty on 2 cores).
    "small": dict(
        d_model=128,
        d_kv=32,
        num_heads=4,
        d_ff=256,
        num_layers=2,
        num_decoder_layers=2,
        num_experts=8,
        num_experts_per_token=2,
    ),
    # TIGER's shape (4 + 4 layers, d_model 128, 6 heads of 64, FFN 1024; Rajput et al. 2023) with our MoE decoder:
    # 8 experts of width 512, top-2, so a decoder token activates TIGER's 1024 FFN units.
    "tiger-size": dict(
        d_model=128,
        d_kv=64,
        num_heads=6,
        d_ff=1024,
        num_layers=4,
        num_decoder_layers=4,
        num_experts=8,
        num_experts_per_token=2,
        expert_d_ff=512,
    ),
    # Paper scales, all with 24 experts top-2 and expert FFNs of 4 x d_model; parameter_counts() gives (with
    # 3 x 8192 codes): 0.05b 48M total / 28% activated, 0.1b 103M / 25%, 0.2b 197M / 21%, 0.5b 497M / 17%,
    # 1b 991M / 16% (the paper reports ~13% at 1B; its exact shapes are not published).
    "onerec-0.05b": dict(
        d_model=256,
        d_kv=64,
        num_heads=4,
        d_ff=1024,
        num_layers=3,
        num_decoder_layers=3,
        num_experts=24,
        num_experts_per_token=2,
    ),
    "onerec-0.1b": dict(
        d_model=384,
        d_kv=64,
        num_heads=6,
        d_ff=1536,
        num_layers=3,
        num_decoder_layers=3,
        num_experts=24,
        num_experts_per_token=2,
    ),
    "onerec-0.2b": dict(
        d_model=384,
        d_kv=64,
        num_heads=6,
        d_ff=1536,
        num_layers=6,
        num_decoder_layers=6,
        num_experts=24,
        num_experts_per_token=2,
    ),
    "onerec-0.5b": dict(
        d_model=512,
        d_kv=64,
        num_heads=8,
        d_ff=2048,
        num_layers=4,
        num_decoder_layers=9,
        num_experts=24,
        num_experts_per_token=2,
    ),
    "onerec-1b": dict(
        d_model=768,
        d_kv=64,
        num_heads=12,
        d_ff=3072,
        num_layers=4,
        num_decoder_layers=8,
        num_experts=24,
        num_experts_per_token=2,
    ),
}
# What one encoder position can be (OneRecConfig.history_encoding).
HISTORY_ENCODINGS = ("tokens", "items")
# Token layout shared with SemanticIDTokenizer: <pad>=0, </s>=1, <s>=2 (BOS before each session item), then codes.
NUM_SPECIAL_TOKENS = 3


def level_offsets(codebook_sizes: List[int]) -> List[int]:
    """Token id of code 0 at each level: the special tokens first, then each level's codes in turn."""
    offsets, start = [], NUM_SPECIAL_TOKENS
    for size in codebook_sizes:
        offsets.append(start)
        start += size
    return offsets


def load_saved_folder(path, load):
    """``load()`` (a ``from_pretrained`` of ``path``) with the two errors transformers (5.24) leaves unclear made clear.

    * A ``path`` that can only mean a local folder (it starts with ``/``, ``.`` or ``~``, has more than two parts, or
      its first part exists here) and is missing: a ``FileNotFoundError`` naming it (transformers reads it as a Hub
      repo id: "Repo id must be in the form ...").
    * A truncated or corrupted JSON or safetensors file of the folder (the parsers' errors name no file): a
      ``ValueError`` naming the first file that does not parse. The ValueErrors this package raises, which name
      their file already, pass through.
    """
    if isinstance(path, (str, os.PathLike)) and not os.path.isdir(os.path.expanduser(path)):
        text = os.fspath(path)
        parts = [part for part in text.replace(os.sep, "/").split("/") if part]
        if text.startswith(("/", ".", "~")) or len(parts) > 2 or (len(parts) == 2 and os.path.exists(parts[0])):
            raise FileNotFoundError(
                f"{text}: no such folder. Pass a folder written by save_pretrained() (a Hub repo id has the form "
                "'org/name')."
            )
    try:
        return load()
    except Exception as error:  # JSONDecodeError, SafetensorError, ...
        if type(error) is ValueError or not isinstance(path, (str, os.PathLike)) or not os.path.isdir(path):
            raise
        import json

        from safetensors import safe_open

        for name in sorted(os.listdir(path)):
            file = os.path.join(path, name)
            try:
                if name.endswith(".json"):
                    with open(file, encoding="utf-8") as handle:
                        json.load(handle)
                elif name.endswith(".safetensors"):
                    with safe_open(file, framework="pt") as handle:
                        for key in handle.keys():
                            handle.get_slice(key)
            except Exception as problem:  # any parser error: this file is the one to name
                raise ValueError(
                    f"{file} is not readable ({type(problem).__name__}: {problem}); it may be truncated or "
                    "corrupted. Copy the folder again from where it was saved, or save it again."
                ) from error
        raise


class SavedFolderLoading:
    """Mixin for a class with transformers' ``from_pretrained`` (the model, the tokenizer): the same loading, with
    :func:`load_saved_folder`'s clear errors. List it before the transformers base class."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' ``from_pretrained``; a missing local folder is a ``FileNotFoundError`` naming it, a truncated
        or corrupted file of the folder a ``ValueError`` naming the file."""
        return load_saved_folder(
            pretrained_model_name_or_path,
            lambda: super(SavedFolderLoading, cls).from_pretrained(pretrained_model_name_or_path, *args, **kwargs),
        )


#: The T5 settings that fix the shapes of the weights (shared by a dense T5 and the OneRec upcycled from it).
T5_SHAPE_KEYS = (
    "vocab_size",
    "d_model",
    "d_kv",
    "d_ff",
    "num_heads",
    "num_layers",
    "num_decoder_layers",
    "feed_forward_proj",
    "relative_attention_num_buckets",
)
#: Every setting that fixes a OneRec checkpoint's weights: T5's, the experts' and the codebooks'.
SHAPE_KEYS = T5_SHAPE_KEYS + (
    "num_experts",
    "num_experts_per_token",
    "expert_d_ff",
    "codebook_sizes",
    "tie_output_embeddings",
    "history_prefix_buckets",
    "history_recency_embeddings",
    "cross_attention_recency_bias",
    "newest_item_decoder_input",
)


@strict(accept_kwargs=True)
class OneRecConfig(T5Config):
    r"""Configuration of :class:`OneRecForConditionalGeneration`.

    Every :class:`~transformers.T5Config` argument applies (``d_model``, ``d_kv``, ``d_ff``, ``num_layers``,
    ``num_decoder_layers``, ``num_heads``, ``dropout_rate``, ``feed_forward_proj``, ...). On top of them:

    Regularisation:
        attention_dropout_rate (`float`, *optional*): Dropout on the attention probabilities. ``None`` (default):
            ``dropout_rate``, as in T5, which uses one rate everywhere. Other models keep the two apart (BERT's
            ``attention_probs_dropout_prob``, GPT-2's ``attn_pdrop``); 0 lets the attention of a CPU training step
            run as one fused kernel (``scaled_dot_product_attention`` without dropout) while the hidden states keep
            ``dropout_rate``.

    Output head:
        tie_output_embeddings (`bool`, defaults to True): The output head (``lm_head``) shares the token embedding
            matrix, as in T5 and every TIGER reproduction. False: it has its own ``[vocab_size, d_model]`` matrix,
            initialised like the shared one, with the decoder output still scaled by ``d_model ** -0.5``, so that only
            the sharing differs. (transformers' ``tie_word_embeddings`` cannot say this: ``T5Config`` sets it to True
            whatever it is given (5.24), and False would also untie the encoder's and decoder's input embeddings.)

    Mixture of experts (decoder FFNs, paper Eq. 2):
        num_experts (`int`, defaults to 24): Experts per sparse layer (``N_MoE``).
        num_experts_per_token (`int`, defaults to 2): Experts each token is routed to (``K_MoE``).
        expert_d_ff (`int`, *optional*): Hidden size of each expert FFN; defaults to ``d_ff``.
        sparse_decoder_layers (`list[int]`, *optional*): Indices of the decoder layers whose FFN is sparse;
            ``None`` (default) makes every decoder layer sparse, as in the paper. ``[]`` gives a dense T5.
        normalize_expert_weights (`bool`, defaults to False): Renormalise the top-k gate values to sum to 1.
            The paper keeps the raw softmax values (False).
        router_aux_loss_coef (`float`, defaults to 0.01): Weight of the load-balancing loss
            (Switch Transformer, ``N * sum_i f_i * P_i``; 1.0 at perfect balance) added to the loss.
        router_z_loss_coef (`float`, defaults to 0.001): Weight of the router z-loss (ST-MoE,
            mean of ``logsumexp(router_logits)**2``) added to the loss.
        router_jitter_noise (`float`, defaults to 0.0): While training, multiply router inputs by
            ``U(1 - eps, 1 + eps)`` noise; 0 disables it.
        expert_capacity_factor (`float`, *optional*): If set, each expert takes at most
            ``ceil(capacity_factor * tokens * k / num_experts)`` token assignments per forward; overflow
            assignments are dropped (the token keeps its residual). ``None`` (default): no capacity limit.
        expert_dispatch (`str`, defaults to ``"grouped"``): How tokens reach their experts. ``"grouped"``: tokens
            sorted by expert, one matmul per expert over its own tokens (only the chosen experts' FLOPs; group
            sizes are data-dependent, so one host synchronisation per sparse layer and a graph break under
            ``torch.compile``). ``"dense"``: every expert runs on every token (one batched matmul) and the outputs
            are weighted by the gates, zero for unchosen experts: the same result, ``num_experts /
            num_experts_per_token`` times the expert FLOPs, fixed shapes and no host synchronisation (the fast
            choice for small models on a GPU and under ``torch.compile``). Needs ``expert_capacity_factor=None``.
            ``"grouped_mm"``: the grouped computation in two ``torch.nn.functional.grouped_mm`` calls whose group
            boundaries stay on the device: only the chosen experts' FLOPs *and* fixed shapes without host
            synchronisation, so a training step compiles to one graph (the fast choice with ``torch.compile``, on a
            CPU too). Same result as ``"grouped"`` (a test checks it).

    Semantic-ID layout (read from the tokenizer with :meth:`from_tokenizer` / :meth:`check_tokenizer`):
        codebook_sizes (`list[int]`, *optional*): Codes per level, in vocabulary order (e.g. ``[256, 256, 256]``,
            plus the disambiguation level if the tokenizer has one). Token ``3 + sum(sizes[:l]) + c`` is code
            ``c`` of level ``l``.
        level_restricted_loss (`bool`, defaults to True): With ``codebook_sizes``, the NTP loss scores only code
            tokens, each with a softmax over its own level's codes (BOS/EOS are structure that constrained decoding
            forces). False: plain cross-entropy over the whole vocabulary at every labelled position. On Amazon
            Beauty (``small`` preset, 150 steps of 64 samples) the first-level code's loss reached 4.11 nats with
            the level-restricted loss against 5.24 with the full-vocabulary one.
        session_length (`int`, defaults to 5): Items per generated session ``m`` (1 = point-wise, as TIGER).
        history_encoding (`str`, defaults to ``"tokens"``): What one encoder position is. ``"tokens"``: one code
            token (TIGER, the paper): a history of ``n`` items is ``n * L + 1`` positions. ``"items"``: one history
            item, the sum of its ``L`` code-token embeddings (RPG and other item-level encoders), plus the EOS: ``n +
            1`` positions, so the encoder's attention and FFNs cost about ``L`` times less and its relative positions
            count items. The inputs (``input_ids`` from the tokenizer) are the same in both; with ``"items"`` the
            encoder's output repeats each item's state at each of its tokens, so the decoder's cross-attention and
            every ``attention_mask`` keep the token layout. Needs ``codebook_sizes``.
        history_prefix_buckets (`int`, defaults to 0): With ``B > 0`` the encoder adds to each history token of level
            ``l >= 1`` an embedding of its item's first ``l + 1`` codes, hashed into ``B`` buckets: the token of the
            last level then carries an embedding of the whole item (``SID prefix-ngram`` embeddings, Singh et al.,
            "Better Generalization with Semantic IDs", RecSys 2024). Code tokens are shared by every item with the
            same code at a level, so on their own they give an item little capacity of its own; these embeddings let
            the encoder tell individual (rarely seen) history items apart. ``B * d_model`` more parameters,
            initialised to zero (the model starts as the one without them); the decoder and the output are
            unchanged. 0 (default): off. Needs ``codebook_sizes`` and ``input_ids`` (not ``inputs_embeds``).
        history_recency_embeddings (`bool`, defaults to False): The encoder adds to each history token an embedding
            of its item's recency rank (0 for the newest item's code tokens, 1 for the item before, ...; one row per
            item up to ``max_history_items``; nothing on EOS and padding), as SASRec's position embeddings count back
            from the last item. T5's relative attention bias only tells the encoder how far apart two tokens are and
            the decoder's cross-attention has no positions at all, so without it the model must infer which item is
            the newest from the EOS that follows it; on Amazon Beauty a trained model's top item followed the user's
            last item in training no more often than it followed the second or fourth last (``docs/results.md``).
            ``max_history_items * d_model`` more parameters, initialised to zero (the model starts as the one
            without them). Needs ``codebook_sizes``.
        cross_attention_recency_bias (`bool`, defaults to False): The decoder's cross-attention adds a learned bias per
            head to each history token by its item's recency rank (one more row for the EOS), shared by the decoder's
            layers as T5 shares its relative attention bias: a head can then look at the newest item from the start.
            On Amazon Beauty all of an ID model's lead over OneRec sits with the users whose next item follows their
            newest item in training (``docs/results.md``); T5's cross-attention has no positions to find it by.
            ``(max_history_items + 1) * num_heads`` more parameters, initialised to zero (the model starts as the one
            without it). Needs ``codebook_sizes``.
        newest_item_decoder_input (`bool`, defaults to False): Every decoder input embedding gets a learned linear
            map of the encoder's output at the newest history item (the mean over its code tokens) added, as SASRec
            scores the next item from the state at the last position. Cross-attention only finds the newest item by
            content, so without it the decoder reads the history as a bag (``docs/results.md``). ``d_model ** 2``
            more parameters, initialised to zero (the model starts as the one without it). Needs ``codebook_sizes``.
        max_history_items (`int`, defaults to 50): History items ``n`` the encoder reads (the newest are kept);
            :meth:`from_tokenizer` copies the tokenizer's, so that ``recommend()`` (which truncates at this value) and
            ``tokenizer.batch_encode_histories`` (which truncates at the tokenizer's) agree. The paper reads 256.
        catalogue_size (`int`, *optional*): Items in the tokenizer's catalogue when the model was built
            (:meth:`from_tokenizer` fills it).
        catalogue_fingerprint (`str`, *optional*): ``tokenizer.catalogue_fingerprint(catalogue_size)`` at that time:
            :meth:`check_tokenizer` refuses a tokenizer with the same layout but another catalogue or other codes
            (items added later with ``add_items`` are allowed).
    """

    model_type = "onerec"

    attention_dropout_rate: Optional[Union[float, int]] = None
    tie_output_embeddings: bool = True
    num_experts: int = 24
    num_experts_per_token: int = 2
    expert_d_ff: Optional[int] = None
    sparse_decoder_layers: Optional[List[int]] = None
    normalize_expert_weights: bool = False
    # Union[float, int]: strict type checking would otherwise reject the natural `router_aux_loss_coef=0` or
    # `expert_capacity_factor=1` (T5Config does the same for dropout_rate).
    router_aux_loss_coef: Union[float, int] = 0.01
    router_z_loss_coef: Union[float, int] = 0.001
    router_jitter_noise: Union[float, int] = 0.0
    expert_capacity_factor: Optional[Union[float, int]] = None
    expert_dispatch: str = "grouped"
    codebook_sizes: Optional[List[int]] = None
    level_restricted_loss: bool = True
    session_length: int = 5
    history_encoding: str = "tokens"
    history_prefix_buckets: int = 0
    history_recency_embeddings: bool = False
    cross_attention_recency_bias: bool = False
    newest_item_decoder_input: bool = False
    max_history_items: int = 50
    catalogue_size: Optional[int] = None
    catalogue_fingerprint: Optional[str] = None

    def __post_init__(self, **kwargs):
        kwargs.setdefault("decoder_start_token_id", self.pad_token_id)  # T5 starts decoding from <pad>
        if self.codebook_sizes is not None:
            self.codebook_sizes = [int(size) for size in self.codebook_sizes]
            expected_vocab = NUM_SPECIAL_TOKENS + sum(self.codebook_sizes)
            if "vocab_size" not in kwargs and self.vocab_size == T5Config.vocab_size:
                self.vocab_size = expected_vocab
        super().__post_init__(**kwargs)

    # ------------------------------------------------------------------------------------------------
    # Validation (called by @strict after __post_init__)
    # ------------------------------------------------------------------------------------------------

    def validate_architecture(self):
        super().validate_architecture()
        problems = []
        if self.num_experts < 1:
            problems.append(f"num_experts must be >= 1, got {self.num_experts}")
        if not 1 <= self.num_experts_per_token <= max(self.num_experts, 1):
            problems.append(
                f"num_experts_per_token must be in [1, num_experts={self.num_experts}], "
                f"got {self.num_experts_per_token}"
            )
        if self.expert_d_ff is not None and self.expert_d_ff < 1:
            problems.append(f"expert_d_ff must be >= 1 or None, got {self.expert_d_ff}")
        if self.sparse_decoder_layers is not None:
            bad = [i for i in self.sparse_decoder_layers if not 0 <= i < self.num_decoder_layers]
            if bad or len(set(self.sparse_decoder_layers)) != len(self.sparse_decoder_layers):
                problems.append(
                    f"sparse_decoder_layers must be distinct indices in [0, num_decoder_layers="
                    f"{self.num_decoder_layers}), got {self.sparse_decoder_layers}"
                )
        for name in ("router_aux_loss_coef", "router_z_loss_coef", "router_jitter_noise"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.router_jitter_noise >= 1:
            problems.append(f"router_jitter_noise must be < 1, got {self.router_jitter_noise}")
        if self.expert_capacity_factor is not None and self.expert_capacity_factor <= 0:
            problems.append(f"expert_capacity_factor must be > 0 or None, got {self.expert_capacity_factor}")
        if self.attention_dropout_rate is not None and not 0 <= self.attention_dropout_rate < 1:
            problems.append(f"attention_dropout_rate must be in [0, 1) or None, got {self.attention_dropout_rate}")
        if self.expert_dispatch not in ("grouped", "grouped_mm", "dense"):
            problems.append(f"expert_dispatch must be 'grouped', 'grouped_mm' or 'dense', got {self.expert_dispatch!r}")
        elif self.expert_dispatch == "dense" and self.expert_capacity_factor is not None:
            problems.append(
                "expert_dispatch='dense' runs every expert on every token and has no capacity to enforce: "
                "set expert_capacity_factor=None or use expert_dispatch='grouped'"
            )
        if self.session_length < 1:
            problems.append(f"session_length must be >= 1, got {self.session_length}")
        if (self.catalogue_fingerprint is None) != (self.catalogue_size is None) or (
            self.catalogue_size is not None and self.catalogue_size < 1
        ):
            problems.append(
                f"catalogue_size ({self.catalogue_size}) and catalogue_fingerprint ({self.catalogue_fingerprint}) go "
                "together (OneRecConfig.from_tokenizer sets both)"
            )
        if self.history_encoding not in HISTORY_ENCODINGS:
            problems.append(
                f"history_encoding must be {' or '.join(map(repr, HISTORY_ENCODINGS))}, got {self.history_encoding!r}"
            )
        elif self.history_encoding == "items" and self.codebook_sizes is None:
            problems.append(
                "history_encoding='items' pools each item's code tokens and needs the semantic-ID layout: build the "
                "config with OneRecConfig.from_tokenizer(tokenizer)"
            )
        if isinstance(self.history_prefix_buckets, bool) or self.history_prefix_buckets < 0:
            problems.append(f"history_prefix_buckets must be an int >= 0 (0: off), got {self.history_prefix_buckets!r}")
        elif self.history_prefix_buckets > 0 and self.codebook_sizes is None:
            problems.append(
                "history_prefix_buckets hashes each history item's code prefixes and needs the semantic-ID layout: "
                "build the config with OneRecConfig.from_tokenizer(tokenizer)"
            )
        for name in ("history_recency_embeddings", "cross_attention_recency_bias", "newest_item_decoder_input"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                problems.append(f"{name} must be True or False, got {value!r}")
            elif value and self.codebook_sizes is None:
                problems.append(
                    f"{name} counts each history item's code tokens and needs the semantic-ID layout: build the config "
                    "with OneRecConfig.from_tokenizer(tokenizer)"
                )
        if self.max_history_items < 1:
            problems.append(f"max_history_items must be >= 1, got {self.max_history_items}")
        if self.codebook_sizes is not None:
            if not self.codebook_sizes or min(self.codebook_sizes) < 1:
                problems.append(f"codebook_sizes must be a non-empty list of positive ints, got {self.codebook_sizes}")
            elif self.vocab_size != NUM_SPECIAL_TOKENS + sum(self.codebook_sizes):
                problems.append(
                    f"vocab_size={self.vocab_size} does not match codebook_sizes {self.codebook_sizes} "
                    f"(expected {NUM_SPECIAL_TOKENS} special tokens + {sum(self.codebook_sizes)} codes = "
                    f"{NUM_SPECIAL_TOKENS + sum(self.codebook_sizes)}); build the config with "
                    "OneRecConfig.from_tokenizer(tokenizer)"
                )
        if problems:
            raise ValueError("Invalid OneRecConfig: " + "; ".join(problems) + ".")

    def get_text_config(self, decoder=None, encoder=None):
        """As T5's, but ``decoder=True`` reports the decoder's depth: ``generate()`` sizes its KV cache from it, and
        T5 would otherwise allocate ``num_layers`` (encoder) cache layers for a deeper decoder."""
        config = super().get_text_config(decoder=decoder, encoder=encoder)
        if decoder and not encoder and getattr(config, "num_layers", None) != self.num_decoder_layers:
            config = copy.copy(config)
            config.num_layers = self.num_decoder_layers
        return config

    # ------------------------------------------------------------------------------------------------
    # Derived quantities
    # ------------------------------------------------------------------------------------------------

    @property
    def sparse_layer_indices(self) -> List[int]:
        """Decoder layers with an MoE FFN, sorted."""
        if self.sparse_decoder_layers is None:
            return list(range(self.num_decoder_layers))
        return sorted(self.sparse_decoder_layers)

    @property
    def expert_hidden_size(self) -> int:
        return self.expert_d_ff if self.expert_d_ff is not None else self.d_ff

    @property
    def num_code_levels(self) -> Optional[int]:
        return len(self.codebook_sizes) if self.codebook_sizes is not None else None

    @property
    def level_offsets(self) -> Optional[List[int]]:
        """First token id of each code level (``None`` without a semantic-ID layout)."""
        return None if self.codebook_sizes is None else level_offsets(self.codebook_sizes)

    @property
    def session_decoder_length(self) -> Optional[int]:
        """New tokens of one generated session: ``m * (L + 1) + 1`` (a BOS before each item, EOS at the end)."""
        if self.codebook_sizes is None:
            return None
        return self.session_length * (len(self.codebook_sizes) + 1) + 1

    def parameter_counts(self) -> Dict[str, int]:
        """Exact parameter counts of the model this config builds, computed from the shapes.

        Returns ``{"total", "activated", "expert", "embedding"}``. ``activated`` counts what one token
        touches: everything but the experts, plus ``num_experts_per_token`` experts per sparse layer.
        (The shared embedding is counted once: encoder and decoder inputs are tied to it, and so is the output head
        unless ``tie_output_embeddings=False``, which adds its own matrix to ``total``. ``embedding`` includes the
        ``history_prefix_buckets`` and recency embeddings.)
        """
        d, inner = self.d_model, self.num_heads * self.d_kv
        ffn_in = 2 if self.is_gated_act else 1
        dense_ffn = ffn_in * d * self.d_ff + self.d_ff * d
        expert_ffn = ffn_in * d * self.expert_hidden_size + self.expert_hidden_size * d
        attention = 3 * d * inner + inner * d
        relative_bias = self.relative_attention_num_buckets * self.num_heads
        recency = self.max_history_items if self.history_recency_embeddings else 0
        embedding = (self.vocab_size + self.history_prefix_buckets + recency) * d
        output_head = 0 if self.tie_output_embeddings else self.vocab_size * d
        encoder = self.num_layers * (attention + dense_ffn + 2 * d) + relative_bias + d
        num_sparse = len(self.sparse_layer_indices)
        num_dense = self.num_decoder_layers - num_sparse
        decoder_common = self.num_decoder_layers * (2 * attention + 3 * d) + relative_bias + d
        if self.cross_attention_recency_bias:
            decoder_common += (self.max_history_items + 1) * self.num_heads
        if self.newest_item_decoder_input:
            decoder_common += d * d
        router = d * self.num_experts
        experts = num_sparse * self.num_experts * expert_ffn
        decoder = decoder_common + num_dense * dense_ffn + num_sparse * router + experts
        total = embedding + output_head + encoder + decoder
        activated = total - experts + num_sparse * self.num_experts_per_token * expert_ffn
        return {"total": total, "activated": activated, "expert": experts, "embedding": embedding}

    # ------------------------------------------------------------------------------------------------
    # Construction helpers
    # ------------------------------------------------------------------------------------------------

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "OneRecConfig":
        """A config at one of the paper's scales (``onerec-0.05b`` ... ``onerec-1b``), ``small`` or ``tiny``.

        The vocabulary is not part of a preset: pass ``codebook_sizes`` (or use :meth:`from_tokenizer`).
        """
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def from_tokenizer(cls, tokenizer, preset: Optional[str] = None, **overrides) -> "OneRecConfig":
        """Config whose vocabulary and semantic-ID layout are read from a ``SemanticIDTokenizer``.

        Args:
            tokenizer: A ``SemanticIDTokenizer`` (anything with ``level_offsets``, ``vocab_size`` and the
                ``pad/eos/bos_token_id`` of its layout).
            preset: Optional preset name for the model shape (see :data:`PRESETS`).
            overrides: Any other config argument (e.g. ``session_length=1`` for TIGER-style point-wise).
        """
        offsets = list(tokenizer.level_offsets) + [tokenizer.vocab_size]
        layout = dict(
            codebook_sizes=[offsets[i + 1] - offsets[i] for i in range(len(offsets) - 1)],
            vocab_size=tokenizer.vocab_size,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        )
        if getattr(tokenizer, "max_history_items", None) is not None:
            layout["max_history_items"] = int(tokenizer.max_history_items)
        if hasattr(tokenizer, "catalogue_fingerprint"):
            layout["catalogue_size"] = int(tokenizer.num_items)
            layout["catalogue_fingerprint"] = tokenizer.catalogue_fingerprint()
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"Unknown preset {preset!r}; choose one of {sorted(PRESETS)}.")
        shape = PRESETS[preset] if preset is not None else {}
        config = cls(**{**shape, **layout, **overrides})
        config._raise_on_layout_mismatch(tokenizer)  # an explicit max_history_items override is not a mismatch
        return config

    def check_tokenizer(self, tokenizer) -> None:
        """Raises ``ValueError`` naming the mismatch if ``tokenizer``'s layout is not this config's; warns if the two
        keep different numbers of history items."""
        self._raise_on_layout_mismatch(tokenizer)
        tokenizer_history = getattr(tokenizer, "max_history_items", None)
        if tokenizer_history is not None and tokenizer_history != self.max_history_items:
            warnings.warn(
                f"The tokenizer keeps {tokenizer_history} history items but the model reads "
                f"{self.max_history_items} (config.max_history_items): recommend() truncates histories at "
                f"{self.max_history_items}, tokenizer.batch_encode_histories at {tokenizer_history} unless "
                "you pass max_items=model.config.max_history_items.",
                stacklevel=3,
            )

    def _raise_on_layout_mismatch(self, tokenizer) -> None:
        problems = []
        if tokenizer.vocab_size != self.vocab_size:
            problems.append(f"vocab_size: tokenizer {tokenizer.vocab_size}, model {self.vocab_size}")
        if self.codebook_sizes is not None and list(tokenizer.level_offsets) != self.level_offsets:
            problems.append(
                f"code levels start at token ids {list(tokenizer.level_offsets)} in the tokenizer but "
                f"{self.level_offsets} in the model (codebook_sizes {self.codebook_sizes})"
            )
        for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
            if getattr(self, name, None) is not None and getattr(tokenizer, name) != getattr(self, name):
                problems.append(f"{name}: tokenizer {getattr(tokenizer, name)}, model {getattr(self, name)}")
        if not problems and self.catalogue_fingerprint is not None and hasattr(tokenizer, "catalogue_fingerprint"):
            if tokenizer.num_items < self.catalogue_size:
                problems.append(
                    f"the tokenizer has {tokenizer.num_items} items, the model was trained on a catalogue "
                    f"of {self.catalogue_size}"
                )
            elif tokenizer.catalogue_fingerprint(self.catalogue_size) != self.catalogue_fingerprint:
                problems.append(
                    "the tokenizer holds another catalogue (other item ids or codes) than the one the "
                    f"model was trained on (fingerprint {self.catalogue_fingerprint})"
                )
        if problems:
            raise ValueError(
                "The tokenizer does not match this OneRec model: "
                + "; ".join(problems)
                + ". Use the tokenizer saved with the model, or build the config with "
                "OneRecConfig.from_tokenizer(tokenizer)."
            )


__all__ = [
    "HISTORY_ENCODINGS",
    "OneRecConfig",
    "PRESETS",
    "SHAPE_KEYS",
    "T5_SHAPE_KEYS",
    "SavedFolderLoading",
    "load_saved_folder",
]
