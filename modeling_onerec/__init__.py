"""OneRec model: T5 with a sparse-MoE decoder (paper §3.2), registered with the transformers Auto classes.

As in transformers' model packages, each module's ``__all__`` is the one list of its public names; this package
re-exports them (plus ``RECOMMENDATION_TASK``, the pipeline's task name).
"""

from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

from . import configuration_onerec, configuration_reward, conversion, modeling_onerec, modeling_reward
from .configuration_onerec import *  # noqa: F403
from .configuration_reward import *  # noqa: F403
from .conversion import *  # noqa: F403
from .modeling_onerec import *  # noqa: F403
from .modeling_reward import *  # noqa: F403
from .pipeline_onerec import TASK as RECOMMENDATION_TASK
from .pipeline_onerec import GenerativeRecommendationPipeline, register_pipeline


def register_auto_classes() -> None:
    """``AutoConfig`` / ``AutoModel`` / ``AutoModelForSeq2SeqLM`` resolve ``model_type: onerec`` in this process,
    and ``save_pretrained`` writes ``auto_map`` plus the module files for ``trust_remote_code`` loading."""
    config, model = configuration_onerec.OneRecConfig, modeling_onerec.OneRecModel
    AutoConfig.register(config.model_type, config, exist_ok=True)
    AutoModel.register(config, model, exist_ok=True)
    AutoModelForSeq2SeqLM.register(config, modeling_onerec.OneRecForConditionalGeneration, exist_ok=True)
    config.register_for_auto_class()
    model.register_for_auto_class("AutoModel")
    modeling_onerec.OneRecForConditionalGeneration.register_for_auto_class("AutoModelForSeq2SeqLM")
    modeling_reward.register_reward_auto_classes()
    register_pipeline()


register_auto_classes()

__all__ = [
    *configuration_onerec.__all__,
    *configuration_reward.__all__,
    *conversion.__all__,
    *modeling_onerec.__all__,
    *modeling_reward.__all__,
    "GenerativeRecommendationPipeline",
    "RECOMMENDATION_TASK",
    "register_auto_classes",
    "register_pipeline",
]
