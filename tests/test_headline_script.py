"""scripts/headline.sh (the headline run: two torchrun CPU processes, validation ranking, early stopping, every test
user ranked) with a tiny budget on the bundled Scientific data; rerun on a finished run it refuses to overwrite it (the
resume of an unfinished one is tests/test_pipeline_examples.py's)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_examples import load_example  # tests/ is on sys.path under pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(900)
def test_headline_script_trains_on_two_processes_and_ranks_the_test_users(tmp_path):
    load_example("build_semantic_ids").main(
        ["--dataset", "scientific", "--embedding_source", "collaborative", "--codebook_size", "16",
         "--max_iterations", "5", "--output_dir", str(tmp_path / "sid")]
    )  # fmt: skip
    env = dict(
        os.environ,
        DATASET="scientific",
        OUT=str(tmp_path / "run"),
        TOKENIZER=str(tmp_path / "sid" / "tokenizer"),
        STEPS="4",
        EVAL_STEPS="2",
        BATCH="16",
        VAL_USERS="8",
        EVAL_WINDOWS="64",
        BEAMS="16",
        TEST_USERS="12",
        TIE_OUTPUT="false",
        PREFIX_BUCKETS="auto",
        EXPERTS="6",
        HF_HOME=str(tmp_path / "hf"),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )
    first = subprocess.run(["bash", "scripts/headline.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "onerec" / "metrics.json").read_text())
    assert report["processes"] == 2 and report["global_batch_size"] == 16 and report["steps"] == 4
    assert (report["pairs"], report["max_history_items"], report["attention_dropout_rate"]) == ("prefix", 20, 0.0)
    assert report["history_encoding"] == "tokens" and report["tie_output_embeddings"] is False
    assert report["history_prefix_buckets"] > 0  # auto: twice the catalogue's distinct code prefixes
    assert report["test_users"] == 12 and report["last_evaluation"]["eval_recall@10"] >= 0
    saved = json.loads((tmp_path / "run" / "onerec" / "final" / "config.json").read_text())
    assert saved["num_experts"] == 6  # EXPERTS overrides the preset's 8
    lists = json.loads((tmp_path / "run" / "onerec" / "topk_test_exclude_history.json").read_text())
    assert len(lists) == 12 and all(len(items) == 10 for items in lists.values())
    # The same command again on the finished run is refused: a finished run is never overwritten.
    again = subprocess.run(["bash", "scripts/headline.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert again.returncode != 0 and "already holds a run" in again.stderr
