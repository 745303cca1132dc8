"""Configuration of the OneRec session reward model R(u, S) (paper §3.3.1, Eq. 5-7).

Only depends on ``transformers``, like ``configuration_onerec.py``.
"""

from typing import List, Optional, Tuple, Union

from huggingface_hub.dataclasses import strict
from transformers import PretrainedConfig

# Index 0 of the item vocabulary is padding in every history / session tensor.
REWARD_PAD_INDEX = 0
DEFAULT_REWARD_NAMES = ("liked", "loved", "rating", "engaged")


@strict(accept_kwargs=True)
class OneRecRewardConfig(PretrainedConfig):
    r"""Configuration of :class:`~modeling_onerec.modeling_reward.OneRecRewardModel`.

    The model reads integer item indices ``1 .. num_items - 1`` (``0`` is padding); a
    ``trainers.alignment.reward_model.RewardItemVocabulary`` maps dataset item ids to them.

    Args:
        num_items (`int`, defaults to 1024):
            Size of the item-index vocabulary, padding index 0 included (catalogue size + 1).
        hidden_size (`int`, defaults to 64):
            Width of item embeddings, of the target-aware representations ``e_i`` and of the session layers.
        num_attention_heads (`int`, defaults to 2):
            Heads of the target attention (session item -> user history) and of the session self-attention.
            Must divide ``hidden_size``.
        num_session_layers (`int`, defaults to 1):
            Transformer encoder layers through which the session items attend to each other (Eq. 5); 0 skips the
            interaction (an ablation: the towers then see the plain sum of ``e_i``).
        intermediate_size (`int`, *optional*):
            Feed-forward width of the session layers; defaults to ``4 * hidden_size``.
        tower_hidden_size (`int`, defaults to 64):
            Hidden width of each reward tower ``MLP -> logit`` (Eq. 6).
        reward_names (`tuple[str, ...]`, defaults to `("liked", "loved", "rating", "engaged")`):
            One tower per name, in this order in ``logits`` / ``rewards`` / ``labels`` (the paper's
            ``swt, vtr, wtr, ltr``). Names must be distinct Python identifiers.
        max_history_items (`int`, defaults to 50):
            Most history items per user the model accepts (data collators keep the newest).
        max_session_items (`int`, defaults to 5):
            Most items per session ``m`` the model accepts.
        dropout (`float`, defaults to 0.1):
            Dropout in the attention layers and the towers, in ``[0, 1)``.
        initializer_range (`float`, defaults to 0.02):
            Standard deviation of the normal initialisation of embeddings and linear weights.
    """

    model_type = "onerec_reward"
    # Trainer.predict/evaluate return only the logits (the rewards are their sigmoid).
    keys_to_ignore_at_inference = ["rewards"]

    num_items: int = 1024
    hidden_size: int = 64
    num_attention_heads: int = 2
    num_session_layers: int = 1
    intermediate_size: Optional[int] = None
    tower_hidden_size: int = 64
    # A list is accepted because config.json stores the tuple as a JSON list.
    reward_names: Union[Tuple[str, ...], List[str]] = DEFAULT_REWARD_NAMES
    max_history_items: int = 50
    max_session_items: int = 5
    dropout: Union[float, int] = 0.1
    initializer_range: Union[float, int] = 0.02

    def __post_init__(self, **kwargs):
        self.reward_names = tuple(self.reward_names)
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Called by ``@strict`` after ``__init__``: collects every problem, then raises one ``ValueError``."""
        super().validate_architecture()
        problems = []
        if self.num_items < 2:
            problems.append(
                f"num_items must be >= 2 (padding index 0 plus at least one item), got {self.num_items}; "
                "pass the vocabulary size, e.g. RewardItemVocabulary.num_indices"
            )
        for name in (
            "hidden_size",
            "num_attention_heads",
            "tower_hidden_size",
            "max_history_items",
            "max_session_items",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_attention_heads >= 1 and self.hidden_size % self.num_attention_heads:
            problems.append(
                f"hidden_size={self.hidden_size} must be divisible by num_attention_heads="
                f"{self.num_attention_heads}; change one of them"
            )
        if self.num_session_layers < 0:
            problems.append(f"num_session_layers must be >= 0, got {self.num_session_layers}")
        if self.intermediate_size is not None and self.intermediate_size < 1:
            problems.append(f"intermediate_size must be >= 1 or None (4 * hidden_size), got {self.intermediate_size}")
        if not self.reward_names:
            problems.append("reward_names must name at least one reward tower, e.g. ('engaged',)")
        bad = [name for name in self.reward_names if not name.isidentifier()]
        if bad:
            problems.append(f"reward_names must be Python identifiers (they name tower modules and metrics), got {bad}")
        if len(set(self.reward_names)) != len(self.reward_names):
            problems.append(f"reward_names must be distinct, got {list(self.reward_names)}")
        if not 0 <= self.dropout < 1:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if self.initializer_range <= 0:
            problems.append(f"initializer_range must be > 0, got {self.initializer_range}")
        if problems:
            raise ValueError("Invalid OneRecRewardConfig: " + "; ".join(problems) + ".")

    @property
    def num_rewards(self) -> int:
        return len(self.reward_names)

    @property
    def session_intermediate_size(self) -> int:
        return self.intermediate_size if self.intermediate_size is not None else 4 * self.hidden_size


__all__ = ["DEFAULT_REWARD_NAMES", "OneRecRewardConfig", "REWARD_PAD_INDEX"]
