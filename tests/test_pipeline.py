"""The "generative-recommendation" pipeline: equal to model.recommend(), and loadable where the project is not."""

import json

import pytest
import torch
from transformers import pipeline

from modeling_onerec import RECOMMENDATION_TASK as TASK
from modeling_onerec import OneRecConfig, OneRecForConditionalGeneration
from tests.conftest import run_without_the_project

HISTORIES = [["item1", "item2", "item3"], ["item5"], ["item7", "item200", "item9", "item30"]]


@pytest.fixture(scope="module")
def recommender(small_tokenizer):
    torch.manual_seed(0)
    model = OneRecForConditionalGeneration(
        OneRecConfig.from_tokenizer(small_tokenizer, preset="tiny", session_length=3)
    )
    return pipeline(TASK, model=model.eval(), tokenizer=small_tokenizer)


def expected_sessions(pipe, histories, **kwargs):
    found = pipe.model.recommend(pipe.tokenizer, histories, **kwargs)
    return [[(s.items, s.score) for s in user] for user in found]


def as_pairs(result):
    return [(session["items"], session["score"]) for session in result]


def assert_same_sessions(results, expected):
    assert len(results) == len(expected)
    for result, sessions in zip(results, expected):
        assert [items for items, _ in as_pairs(result)] == [items for items, _ in sessions]
        assert [score for _, score in as_pairs(result)] == pytest.approx([score for _, score in sessions], abs=1e-4)


def test_pipeline_returns_what_recommend_returns(recommender, small_tokenizer):
    expected = expected_sessions(recommender, HISTORIES, num_sessions=3, num_beams=32)
    one = recommender(HISTORIES[0], num_sessions=3)  # one history -> its list of sessions
    assert_same_sessions([one], expected[:1])
    assert_same_sessions(recommender(HISTORIES, num_sessions=3), expected)
    assert_same_sessions(recommender(HISTORIES, num_sessions=3, batch_size=2), expected)  # batched
    catalogue = set(small_tokenizer.item_ids)
    for history, result in zip(HISTORIES, recommender(HISTORIES, num_sessions=3)):
        for session in result:
            assert set(session["items"]) <= catalogue and not set(session["items"]) & set(history)
            assert len(set(session["items"])) == len(session["items"]) == 3
    # The options reach the search.
    allowed = recommender(HISTORIES, num_sessions=2, num_beams=8, session_length=2, exclude_history=False)
    assert_same_sessions(
        allowed,
        expected_sessions(recommender, HISTORIES, num_sessions=2, num_beams=8, session_length=2, exclude_history=False),
    )


@pytest.mark.parametrize(
    "inputs, kwargs, error, match",
    [
        (["item1", "nope"], {}, KeyError, "nope"),
        ("item1", {}, TypeError, "a history"),
        ([], {}, TypeError, "a history"),
        ([["item1"], []], {}, TypeError, "non-empty list of item ids"),
        (["item1"], {"temperature": 0.7}, TypeError, "temperature"),
        (["item1"], {"num_sessions": 0}, ValueError, "num_sessions"),
    ],
)
def test_pipeline_errors_name_the_bad_input(recommender, inputs, kwargs, error, match):
    with pytest.raises(error, match=match):
        recommender(inputs, **kwargs)


def test_pipeline_loads_from_its_folder_in_a_process_that_cannot_import_the_project(recommender, tmp_path):
    folder = tmp_path / "saved"
    recommender.save_pretrained(folder)
    assert json.loads((folder / "config.json").read_text())["custom_pipelines"][TASK]["impl"] == (
        "pipeline_onerec.GenerativeRecommendationPipeline"
    )
    out = run_without_the_project(
        f"""
        import torch
        from transformers import pipeline
        pipe = pipeline({TASK!r}, model={str(folder)!r}, trust_remote_code=True)
        half = pipeline({TASK!r}, model={str(folder)!r}, trust_remote_code=True, dtype=torch.bfloat16)
        print(json.dumps({{
            "cls": type(pipe).__module__,
            "results": pipe({HISTORIES!r}, num_sessions=3, batch_size=2),
            "half_dtype": str(half.model.dtype),
            "half": half({HISTORIES!r}, num_sessions=3),
            "catalogue": list(pipe.tokenizer.item_ids),
        }}))
    """,
        tmp_path,
    )
    assert out["cls"].startswith("transformers_modules")  # the folder's code, not this package
    assert_same_sessions(out["results"], expected_sessions(recommender, HISTORIES, num_sessions=3, num_beams=32))
    assert out["half_dtype"] == "torch.bfloat16"
    catalogue = set(out["catalogue"])
    for history, result in zip(HISTORIES, out["half"]):
        assert len(result) == 3
        for session in result:
            assert set(session["items"]) <= catalogue and not set(session["items"]) & set(history)
