"""``pipeline("generative-recommendation")``: raw item-id histories in, ranked sessions of item ids out.

A ``transformers.Pipeline`` registered as a custom task. Saved with the model (``pipe.save_pretrained(dir)``), its
code travels in the folder, so that any process loads it without this project::

    from transformers import pipeline

    recommender = pipeline("generative-recommendation", model="onerec-beauty", trust_remote_code=True)
    recommender(["12", "7", "301"], num_sessions=3)  # one history
    # [{"items": ["88", "12017", "5", "640", "31"], "score": -9.7, "item_scores": [...]}, ...]
    recommender([["12", "7"], ["3"]], batch_size=2)  # several histories: one list of sessions each

The three steps are those of ``model.recommend`` and run the model's own methods (one home for each): ``preprocess``
validates and tokenises a history (``model.check_histories``, ``model.encode_histories``), ``_forward`` runs the
trie-constrained session beam search (``model.search_sessions``: the encoder runs once per user and the decoder's KV
cache is reused across beams), ``postprocess`` decodes item ids and scores (``model.decode_sessions``). Every item is
a real catalogue item, by default never one of the user's history items and never twice in a session. Unknown item
ids raise the tokenizer's error, which names the item. This module imports only transformers (and the standard
library): it must load from a saved folder, where the model's methods come with the model.
"""

from dataclasses import asdict
from typing import Any, Dict, List, Optional

from transformers import AutoModelForSeq2SeqLM, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

TASK = "generative-recommendation"


def _is_history(value: Any) -> bool:
    """A single history: a list/tuple of item ids (strings or ints), not a list of histories."""
    return isinstance(value, (list, tuple)) and all(isinstance(item, (str, int)) for item in value)


class GenerativeRecommendationPipeline(Pipeline):
    """Ranked sessions of item ids for raw item-id histories (see the module docstring).

    Call arguments (all optional):
        num_sessions (`int`, defaults to 1): Sessions per history, best first.
        num_beams (`int`, defaults to ``max(32, num_sessions)``): Beam width of the session search.
        session_length (`int`, defaults to the model's ``session_length``): Items per session ``m``.
        exclude_history (`bool`, defaults to `True`): Never recommend the user's own history items.
        forbid_repeats (`bool`, defaults to `True`): No item twice in one session.
        renormalize_logits (`bool`, defaults to the model's ``generation_config.renormalize_logits``): Score codes
            renormalised over the trie's valid codes instead of by the model's softmax over each level
            (``OneRecForConditionalGeneration.recommend``).

    Returns, per history, a list of ``{"items": [item ids], "score": log-probability, "item_scores": [...]}``.
    """

    _load_tokenizer = True
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False

    def _sanitize_parameters(
        self,
        num_sessions: Optional[int] = None,
        num_beams: Optional[int] = None,
        session_length: Optional[int] = None,
        exclude_history: Optional[bool] = None,
        forbid_repeats: Optional[bool] = None,
        renormalize_logits: Optional[bool] = None,
        **unused,
    ):
        if unused:
            raise TypeError(
                f"Unknown argument(s) {sorted(unused)} for the {TASK} pipeline; it takes num_sessions, num_beams, "
                "session_length, exclude_history, forbid_repeats and renormalize_logits (and the pipeline's "
                "batch_size)."
            )
        given = {
            "num_sessions": num_sessions,
            "num_beams": num_beams,
            "session_length": session_length,
            "exclude_history": exclude_history,
            "forbid_repeats": forbid_repeats,
            "renormalize_logits": renormalize_logits,
        }
        return {}, {name: value for name, value in given.items() if value is not None}, {}

    def __call__(self, inputs, **kwargs):
        """``inputs``: one history (a list of item ids) or a list of histories; see the class docstring."""
        if _is_history(inputs) and len(inputs) > 0:
            return super().__call__([list(inputs)], **kwargs)[0]
        if isinstance(inputs, (str, bytes)) or not isinstance(inputs, (list, tuple)) or not inputs:
            raise TypeError(
                f"{TASK} takes a history (a list of item ids, e.g. ['12', '7']) or a list of histories, got "
                f"{type(inputs).__name__} {inputs!r:.60}."
            )
        return super().__call__([list(history) for history in inputs], **kwargs)

    def preprocess(self, history: List[Any]) -> Dict[str, Any]:
        """Validation and tokenisation: ``input_ids`` / ``attention_mask`` ``[1, S]`` and the history's catalogue rows
        ``excluded_items`` / ``excluded_items_mask`` ``[1, H]`` (batches are padded by transformers' collation)."""
        if not _is_history(history) or not history:
            raise TypeError(
                f"Each history must be a non-empty list of item ids (str or int), got {history!r:.80}; pass ['12', "
                "'7'] for one user or [['12', '7'], ['3']] for several."
            )
        history = [str(item) for item in history]  # item ids are strings in the catalogue
        item_indices = self.model.check_histories(self.tokenizer, [history])
        return dict(self.model.encode_histories(self.tokenizer, [history], item_indices))

    def _forward(self, model_inputs: Dict[str, Any], **search) -> Dict[str, Any]:
        counts = self.model.check_search_arguments(
            search.get("num_sessions", 1), search.get("num_beams"), search.get("session_length"), default_beams=32
        )
        return self.model.search_sessions(
            self.tokenizer,
            model_inputs,
            **counts,
            exclude_history=search.get("exclude_history", True),
            forbid_repeats=search.get("forbid_repeats", True),
            renormalize_logits=search.get("renormalize_logits"),
        )

    def postprocess(self, model_outputs: Dict[str, Any]) -> List[Dict[str, Any]]:
        (sessions,) = self.model.decode_sessions(self.tokenizer, model_outputs)  # one history per call
        return [asdict(session) for session in sessions]


def register_pipeline() -> None:
    """Register the ``"generative-recommendation"`` task with transformers' public ``PIPELINE_REGISTRY``
    (``import modeling_onerec`` does; a folder saved by ``pipe.save_pretrained`` needs no registration)."""
    if TASK in PIPELINE_REGISTRY.get_supported_tasks():
        return
    PIPELINE_REGISTRY.register_pipeline(
        TASK, pipeline_class=GenerativeRecommendationPipeline, pt_model=AutoModelForSeq2SeqLM, type="text"
    )


__all__ = ["GenerativeRecommendationPipeline", "TASK", "register_pipeline"]
