"""The main job's first stage runs end to end on bundled real data (small codebooks to stay fast)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# The example tests' semantic IDs: bundled Scientific, collaborative embeddings, 16 codes a level, 5 k-means rounds.
FAST_SEMANTIC_IDS = (
    "--dataset scientific --embedding_source collaborative --codebook_size 16 --max_iterations 5".split()
)
# The Trainer flags of every example test that trains: on the CPU, no logging integrations, no progress bars.
QUIET_CPU_TRAINING = "--use_cpu true --report_to none --disable_tqdm true".split()


def load_example(name):
    # A prefixed module name: examples/evaluate.py must not shadow the `evaluate` library in sys.modules.
    module_name = f"onerec_example_{name}"
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_build_semantic_ids_on_scientific(tmp_path):
    report = load_example("build_semantic_ids").main(
        FAST_SEMANTIC_IDS + ["--compare_unbalanced", "--output_dir", str(tmp_path)]
    )
    assert report["dataset"]["items"] == 4344
    balanced, unbalanced = report["variants"]
    assert balanced["name"] == "balanced" and unbalanced["name"] == "unbalanced"
    for level in balanced["stats"]["levels"][:3]:
        assert (level["min_cluster"], level["max_cluster"]) == (271, 272)  # 4344 / 16 = 271.5
    assert balanced["stats"]["collision_rate_after"] == 0.0
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tokenizer")
    assert tokenizer.num_items == 4344
    assert (tmp_path / "codebook_balance.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "semantic_id_report.json").read_text())
    assert saved["samples"]["test"] == 8317


@pytest.mark.parametrize("name", sorted(path.stem for path in EXAMPLES.glob("*.py")))
def test_every_example_prints_its_help(name, capsys):
    # argparse %-formats each help string: one bare "%" in a field's help broke `pretrain.py --help`.
    with pytest.raises(SystemExit) as exit_info:
        load_example(name).main(["--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("usage:")


@pytest.mark.parametrize(
    "name, arguments, error, match",
    [
        ("build_semantic_ids", ["--codebook_size", "1"], ValueError, "codebook size must be an int >= 2"),
        ("build_semantic_ids", ["--max_history", "0"], ValueError, "--max_history 0 is invalid"),
        ("evaluate", ["--test_users", "-3"], ValueError, "--test_users -3 is invalid"),
        ("evaluate_baselines", ["--top_k_json", "0"], ValueError, "--top_k_json 0 is invalid"),
        ("evaluate_baselines", ["--data_path", "/nonexistent/seq.txt"], FileNotFoundError, "/nonexistent/seq.txt"),
        ("train_sasrec", ["--lr", "-1"], ValueError, "lr=-1.0 must be > 0"),
        ("pretrain", ["--ranking_eval_users", "-1"], ValueError, "--ranking_eval_users -1 is invalid"),
        ("recommend", ["--num_sessions", "0"], ValueError, "--num_sessions 0 is invalid"),
        ("align_ipa", ["--num_candidates", "0"], ValueError, "--num_candidates 0 is invalid"),
        ("evaluate_alignment", ["--session_beams", "0"], ValueError, "--session_beams 0 is invalid"),
        ("train_reward_model", ["--negatives_per_session", "-1"], ValueError, "--negatives_per_session -1 is invalid"),
    ],
)
def test_bad_arguments_fail_before_any_work_and_leave_no_output(tmp_path, name, arguments, error, match):
    # Checked when parsed: build_semantic_ids used to embed every item text (minutes) before refusing
    # --codebook_size 1, and the evaluation scripts created their output folder before failing.
    output_dir = tmp_path / "out"
    output = (
        ["--output_json", str(output_dir / "sessions.json")]
        if name == "recommend"
        else ["--output_dir", str(output_dir)]
    )
    with pytest.raises(error, match=match):
        load_example(name).main(["--dataset", "scientific"] + output + arguments)
    assert not output_dir.exists()


def test_train_sasrec_never_recommends_an_item_older_than_its_window(tmp_path):
    # Users with 12 items and a 4-item window: the model reads the newest 4, and with history excluded none of the
    # 11 history items (older ones included) may be recommended.
    lines = [" ".join([str(user)] + [str((user + step) % 30 + 1) for step in range(12)]) for user in range(1, 41)]
    (tmp_path / "log.txt").write_text("\n".join(lines) + "\n")
    load_example("train_sasrec").main(
        ["--dataset", "toy", "--data_path", str(tmp_path / "log.txt"), "--output_dir", str(tmp_path / "out")]
        + "--max_len 4 --hidden_size 8 --num_heads 1 --ffn_size 8 --epochs 1 --batch_size 16 --no_progress".split()
        + "--device cpu --num_threads 1".split()
    )
    top = json.loads((tmp_path / "out" / "topk_test.json").read_text())
    histories = {line.split()[0]: set(line.split()[1:-1]) for line in lines}
    assert len(top) == 40 and all(len(items) == 10 and not set(items) & histories[user] for user, items in top.items())
