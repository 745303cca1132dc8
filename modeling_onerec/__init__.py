"""OneRec model: T5 with a sparse-MoE decoder (paper §3.2), registered with the transformers Auto classes."""

from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

from .configuration_onerec import PRESETS, OneRecConfig
from .configuration_reward import DEFAULT_REWARD_NAMES, REWARD_PAD_INDEX, OneRecRewardConfig
from .conversion import upcycle_dense_t5
from .modeling_onerec import (
    OneRecDecoderStack,
    OneRecExperts,
    OneRecForConditionalGeneration,
    OneRecLayerSparseFF,
    OneRecModel,
    OneRecPreTrainedModel,
    OneRecRouter,
    OneRecSeq2SeqLMOutput,
    OneRecSparseMLP,
    SessionRecommendation,
    expert_capacity,
    expert_load,
    level_restricted_cross_entropy,
    load_balancing_loss,
    ntp_token_mask,
    route_tokens,
    router_z_loss,
)
from .modeling_reward import (
    OneRecRewardModel,
    OneRecRewardOutput,
    RewardTower,
    TargetAwareItemEncoder,
    masked_sum_pool,
    register_reward_auto_classes,
    reward_bce_loss,
)
from .pipeline_onerec import TASK as RECOMMENDATION_TASK
from .pipeline_onerec import GenerativeRecommendationPipeline, register_pipeline


def register_auto_classes() -> None:
    """``AutoConfig`` / ``AutoModel`` / ``AutoModelForSeq2SeqLM`` resolve ``model_type: onerec`` in this process,
    and ``save_pretrained`` writes ``auto_map`` plus the module files for ``trust_remote_code`` loading."""
    AutoConfig.register(OneRecConfig.model_type, OneRecConfig, exist_ok=True)
    AutoModel.register(OneRecConfig, OneRecModel, exist_ok=True)
    AutoModelForSeq2SeqLM.register(OneRecConfig, OneRecForConditionalGeneration, exist_ok=True)
    OneRecConfig.register_for_auto_class()
    OneRecModel.register_for_auto_class("AutoModel")
    OneRecForConditionalGeneration.register_for_auto_class("AutoModelForSeq2SeqLM")
    register_reward_auto_classes()
    register_pipeline()


register_auto_classes()

__all__ = [
    "PRESETS",
    "OneRecConfig",
    "OneRecDecoderStack",
    "OneRecExperts",
    "OneRecForConditionalGeneration",
    "OneRecLayerSparseFF",
    "OneRecModel",
    "OneRecPreTrainedModel",
    "OneRecRouter",
    "OneRecSeq2SeqLMOutput",
    "OneRecSparseMLP",
    "SessionRecommendation",
    "expert_capacity",
    "expert_load",
    "level_restricted_cross_entropy",
    "load_balancing_loss",
    "ntp_token_mask",
    "GenerativeRecommendationPipeline",
    "RECOMMENDATION_TASK",
    "register_auto_classes",
    "register_pipeline",
    "upcycle_dense_t5",
    "route_tokens",
    "router_z_loss",
    "DEFAULT_REWARD_NAMES",
    "REWARD_PAD_INDEX",
    "OneRecRewardConfig",
    "OneRecRewardModel",
    "OneRecRewardOutput",
    "RewardTower",
    "TargetAwareItemEncoder",
    "masked_sum_pool",
    "register_reward_auto_classes",
    "reward_bce_loss",
]
