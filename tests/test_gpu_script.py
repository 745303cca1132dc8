"""The one-call GPU script (scripts/gpu_beauty.sh), dry-run on the CPU: every stage runs and the outputs it promises
(metrics with both history settings, per-user top-10 JSON, the restored best checkpoint) are written."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(600)
def test_gpu_script_dry_run_writes_the_full_table(tmp_path):
    env = dict(
        os.environ,
        DRY_RUN="1",
        OUT_DIR=str(tmp_path / "out"),
        PYTHON=sys.executable,
        OMP_NUM_THREADS="1",
        HF_HOME=str(tmp_path / "hf"),
    )
    result = subprocess.run(
        ["bash", "scripts/gpu_beauty.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "== [" in result.stdout and "pretraining small" in result.stdout
    report = json.loads((tmp_path / "out/onerec/metrics.json").read_text())
    assert report["steps"] == 4 and report["test_users"] == 8
    assert {"exclude_history", "all_items"} <= set(report["test"])
    assert 0.0 <= report["test"]["exclude_history"]["recall@10"] <= 1.0
    top10 = json.loads((tmp_path / "out/onerec/topk_test_exclude_history.json").read_text())
    assert len(top10) == 8 and all(len(items) == 10 for items in top10.values())
    assert (tmp_path / "out/onerec/final/model.safetensors").exists()
