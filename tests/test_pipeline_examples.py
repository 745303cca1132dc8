"""The example scripts chained as the main job chains them: semantic IDs -> pretrain -> evaluate -> recommend,
on the bundled Scientific data with tiny settings; plus the user sampling and held-out sessions they rely on."""

import json
import math
import shutil

import pytest
from datasets import Dataset
from test_examples import FAST_SEMANTIC_IDS, QUIET_CPU_TRAINING, load_example  # tests/ is on sys.path under pytest
from transformers import pipeline

from trainers.data.arguments import named_weights
from trainers.evaluation import held_out_sessions, read_topk_json, sample_users


def test_sample_users_is_seeded_ordered_and_checked():
    rows = Dataset.from_dict({"user_id": [str(i) for i in range(100)]})
    first = sample_users(rows, 10, seed=3)
    assert first["user_id"] == sample_users(rows, 10, seed=3)["user_id"]
    assert first["user_id"] != sample_users(rows, 10, seed=4)["user_id"]
    assert len(set(first["user_id"])) == 10
    assert [int(u) for u in first["user_id"]] == sorted(int(u) for u in first["user_id"])  # original order
    assert first["user_id"] != [str(i) for i in range(10)]  # not the first rows
    assert len(sample_users(rows, None)) == 100 and len(sample_users(rows, 500)) == 100
    with pytest.raises(ValueError, match="num_users"):
        sample_users(rows, 0)


def test_held_out_sessions_joins_validation_and_test():
    validation = Dataset.from_dict({"user_id": ["a", "b"], "history": [["1", "2"], ["3"]], "target": [["4"], ["5"]]})
    test = Dataset.from_dict(
        {"user_id": ["a", "b"], "history": [["1", "2", "4"], ["3", "5"]], "target": [["6"], ["7"]]}
    )
    rows = held_out_sessions(validation, test)
    assert rows == [
        {"user_id": "a", "history": ["1", "2"], "target": ["4", "6"]},
        {"user_id": "b", "history": ["3"], "target": ["5", "7"]},
    ]
    with pytest.raises(ValueError, match="User order"):
        held_out_sessions(validation, test.select([1, 0]))


def pretrain_arguments(root, max_steps: int, test_users: int) -> list:
    """A tiny, fast examples/pretrain.py run on the tokenizer of ``root / "sid"`` (add --output_dir)."""
    return ["--dataset", "scientific", "--tokenizer_dir", str(root / "sid" / "tokenizer"), "--preset", "tiny",
            "--max_steps", str(max_steps), "--per_device_train_batch_size", "8", "--ranking_eval_users", "0",
            "--test_users", str(test_users), "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none",
            "--disable_tqdm", "true", "--use_cpu", "true"]  # fmt: skip


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    load_example("build_semantic_ids").main(FAST_SEMANTIC_IDS + ["--output_dir", str(root / "sid")])
    report = load_example("pretrain").main(
        pretrain_arguments(root, max_steps=3, test_users=12) + ["--output_dir", str(root / "run"), "--num_beams", "16"]
    )
    return root, report


def test_pretrain_reports_ranking_and_sessions(trained_run):
    root, report = trained_run
    assert report["steps"] == 3 and report["test_users"] == 12
    for setting in ("exclude_history", "all_items"):
        assert set(report["test"][setting]) >= {"recall@5", "ndcg@5", "recall@10", "ndcg@10", "num_beams"}
        assert len(read_topk_json(root / "run" / f"topk_test_{setting}.json")) == 12
        assert report["test"][setting]["renormalize_logits"] is False  # no validation users: the default scoring
    session = report["test"]["session"]
    assert session["num_users"] == 12 and session["mean_session_length"] == 5
    assert session["session_mode"].startswith("generated")
    # The saved model folder carries the recommendation pipeline.
    final = root / "run" / "final"
    assert (final / "pipeline_onerec.py").exists()
    recommend = pipeline("generative-recommendation", model=str(final), trust_remote_code=True)
    catalogue = set(recommend.tokenizer.item_ids)
    sessions = recommend([sorted(catalogue)[0]], num_sessions=2)
    assert len(sessions) == 2 and all(set(s["items"]) <= catalogue for s in sessions)


def test_evaluate_rescoring_a_runs_file_matches_the_run(trained_run, tmp_path):
    root, report = trained_run
    result = load_example("evaluate").main(
        [
            "--dataset",
            "scientific",
            "--test_users",
            "12",
            "--num_beams",
            "16",
            "--output_dir",
            str(tmp_path),
            "--model_dirs",
            f"OneRec={root / 'run' / 'final'}",
            "--session_eval_length",
            "0",
            "--topk_files",
            f"again={root / 'run' / 'topk_test_exclude_history.json'}",
            "--popularity_edges",
            "1",
            "10",
            "--code_prefix_tokenizer_dir",
            str(root / "sid" / "tokenizer"),
            "--code_level_mass",
            "true",
        ]
    )
    rows = {(row["model"], row["history"]): row["test"] for row in result["rows"]}
    assert set(rows) == {
        ("OneRec", "excluded"),
        ("OneRec", "allowed"),
        ("most-popular", "excluded"),
        ("most-popular", "allowed"),
        ("successor", "excluded"),
        ("successor", "allowed"),
        ("again", "from file"),
    }
    # Same users, same model: evaluate.py, pretrain.py and the rescored JSON agree exactly.
    for metric in ("recall@10", "ndcg@10"):
        assert rows[("OneRec", "excluded")][metric] == report["test"]["exclude_history"][metric]
        assert rows[("again", "from file")][metric] == rows[("OneRec", "excluded")][metric]
    assert rows[("successor", "excluded")]["num_users"] == 12
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["test_users"] == 12 and len(saved["rows"]) == 7
    assert (tmp_path / "hit_ranks.png").stat().st_size > 1000  # where each model's hits land in its top 10
    # Where the hits are won: per group of target popularity (users add up) and per semantic-ID level.
    groups = saved["by_target_popularity"]["again"]["rows"]
    assert [row["group"] for row in groups] == ["[0, 1)", "[1, 10)", ">= 10"] and sum(r["users"] for r in groups) == 12
    assert (tmp_path / "by_target_popularity.png").stat().st_size > 1000
    # How the top item hangs on each recent history item: four shares per list.
    follows = saved["top_item_follows_history"]
    assert set(follows) == {"OneRec", "again", "most-popular", "successor"}
    assert all(len(row) == 4 and all(0 <= share <= 1 for share in row) for row in follows.values())
    groups = saved["by_history_transition"]["again"]
    assert sum(row["users"] for row in groups) == 12 and len(groups) == 3
    # Per code level of the model: every code allowed at the first level, and the two log-probs differ by -log mass.
    mass = saved["code_level_mass"]["OneRec"]
    assert set(saved["code_level_mass"]) == {"OneRec"} and mass["valid_mass"][0] == pytest.approx(1.0, abs=1e-5)
    for level, share in enumerate(mass["valid_mass"]):
        assert 0 < share <= 1 + 1e-6
        assert mass["log_prob_renormalized"][level] >= mass["log_prob_level"][level] - 1e-6
    shares = saved["code_prefix_hit_rates"]["again"]
    assert shares == sorted(shares, reverse=True) and shares[-1] == pytest.approx(
        rows[("again", "from file")]["recall@10"]
    )


def test_evaluate_rejects_a_file_missing_the_chosen_users(trained_run, tmp_path):
    root, _ = trained_run
    with pytest.raises(ValueError, match="no list for"):
        load_example("evaluate").main(
            [
                "--dataset",
                "scientific",
                "--test_users",
                "30",
                "--output_dir",
                str(tmp_path),
                "--baselines",
                "false",
                "--topk_files",
                f"run={root / 'run' / 'topk_test_exclude_history.json'}",
            ]
        )
    with pytest.raises(ValueError, match="NAME=PATH"):
        load_example("evaluate").main(["--dataset", "scientific", "--topk_files", "no-name.json"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_example("evaluate").main(["--dataset", "scientific", "--model_dirs", "A (T=2)=x"])


def test_recommend_returns_sessions_without_history_items(trained_run, tmp_path):
    root, _ = trained_run
    result = load_example("recommend").main(
        [
            "--model_dir",
            str(root / "run" / "final"),
            "--dataset",
            "scientific",
            "--user_ids",
            "1",
            "2",
            "--num_sessions",
            "3",
            "--output_json",
            str(tmp_path / "sessions.json"),
        ]
    )
    sequences = load_example("recommend").DatasetArguments(dataset="scientific").load()["sequences"]
    history = dict(zip(sequences["user_id"], sequences["item_ids"]))
    for user in ("1", "2"):
        sessions = result[user]
        assert len(sessions) == 3
        assert [s["score"] for s in sessions] == sorted((s["score"] for s in sessions), reverse=True)
        for session in sessions:
            assert len(session["items"]) == 5 and len(set(session["items"])) == 5
            assert not set(session["items"]) & set(history[user])
    assert json.loads((tmp_path / "sessions.json").read_text()) == result
    with pytest.raises(KeyError, match="not in scientific"):
        load_example("recommend").main(
            ["--model_dir", str(root / "run" / "final"), "--dataset", "scientific", "--user_ids", "no-such-user"]
        )


# ---------------------------------------------------------------------------------------------------- alignment


class _FixedRanker:
    def rank(self, histories, k, exclude_history=True):
        return [[str(i) for i in range(100, 100 + k)] for _ in histories]


class _ItemSumScorer:
    """Fake SessionRewardScorer: tower 'a' = mean item id / 1000, tower 'b' = 1 - that."""

    reward_names = ["a", "b"]

    def tower_rewards(self, histories, sessions):
        import numpy as np

        return [
            np.array([[sum(map(int, s)) / len(s) / 1000, 1 - sum(map(int, s)) / len(s) / 1000] for s in user])
            for user in sessions
        ]


def test_sessions_rewards_and_ground_truth_summaries():
    from trainers.evaluation.alignment import ground_truth_summary, reward_summary, sessions_from_ranking

    ranked = _FixedRanker().rank([["1"], ["2"]], 7)  # 7 items: three full sessions of 2, the 7th dropped
    sessions = sessions_from_ranking(ranked, num_sessions=3, session_length=2)
    assert sessions[0] == [["100", "101"], ["102", "103"], ["104", "105"]] and sessions[1] == sessions[0]
    summary = reward_summary(_ItemSumScorer(), [["1"], ["2"], ["3"]], [sessions[0], [["200", "202"]], []])
    # user 1: session means 100.5, 102.5, 104.5 -> mean 102.5, max 104.5; user 2: 201; the empty user is skipped
    assert summary["a_mean"] == pytest.approx((0.1025 + 0.201) / 2)
    assert summary["a_max"] == pytest.approx((0.1045 + 0.201) / 2)
    assert summary["b_max"] == pytest.approx((1 - 0.1005 + 1 - 0.201) / 2)
    assert summary["users_without_sessions"] == 1
    truth = ground_truth_summary([["7", "8"], ["9"]], [[["8", "1"]], [["2", "3"]]], ["8", "9"])
    assert truth["recall@10"] == 1.0 and truth["session_hit_rate"] == 0.5
    assert truth["ndcg@10"] == pytest.approx((1 / math.log2(3) + 1) / 2)


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reward")
    load_example("train_reward_model").main(
        ["--dataset", "scientific", "--output_dir", str(folder)]
        + "--num_train_epochs 1 --max_train_samples 300 --hidden_size 16 --tower_hidden_size 16".split()
        + QUIET_CPU_TRAINING
    )
    return folder


def test_reward_model_report_names_its_test_metrics(reward_model_dir):
    test = json.loads((reward_model_dir / "metrics.json").read_text())["test"]
    assert "" not in test and "epoch" in test  # regression: "epoch" (no "test_" prefix) was saved under ""
    assert 0 <= test["auc_engaged"] <= 1 and test["loss"] > 0


def test_align_ipa_then_table_one(trained_run, reward_model_dir, tmp_path):
    root, _ = trained_run
    report = load_example("align_ipa").main(
        ["--dataset", "scientific", "--model_dir", str(root / "run" / "final")]
        + ["--reward_model_dir", str(reward_model_dir), "--output_dir", str(tmp_path / "ipa")]
        + "--dpo_sample_ratio 0.0003 --num_candidates 4 --num_iterations 2 --per_device_train_batch_size 4".split()
        + QUIET_CPU_TRAINING
    )
    assert [state["iteration"] for state in report["iterations"]] == [1, 2]
    for state in report["iterations"]:
        assert state["pairs_mined"] > 0
        assert state["mean_chosen_reward"] > state["mean_rejected_reward"]
    pairs = json.loads((tmp_path / "ipa" / "iteration-1" / "pairs.json").read_text())["pairs"]
    assert all(row["chosen_reward"] > row["rejected_reward"] and len(row["chosen"]) == 5 for row in pairs)

    table = load_example("evaluate_alignment").main(
        [
            "--dataset",
            "scientific",
            "--reward_model_dir",
            str(reward_model_dir),
            "--test_users",
            "8",
            "--num_sessions",
            "2",
            "--session_beams",
            "4",
            "--output_dir",
            str(tmp_path / "table"),
            "--models",
            f"OneRec={root / 'run' / 'final'}",
            f"OneRec+IPA={tmp_path / 'ipa' / 'iteration-2'}",
        ]
    )
    rows = {row["model"]: row for row in table["rows"]}
    assert list(rows) == ["OneRec", "OneRec+IPA", "successor"]
    for row in rows.values():
        assert 0.0 <= row["engaged_mean"] <= row["engaged_max"] <= 1.0
        assert 0.0 <= row["recall@10"] <= 1.0
    assert rows["OneRec"]["sessions_from"] == "generated" and rows["successor"]["sessions_from"] == "ranking"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_example("evaluate_alignment").main(
            ["--dataset", "scientific", "--reward_model_dir", str(reward_model_dir), "--models", "IPA (T=2)=somewhere"]
        )
    with pytest.raises(ValueError, match="--reward_weights expects NAME=WEIGHT"):
        named_weights(["liked"], "--reward_weights")
    assert named_weights(["liked=1", "engaged=0.5"], "--reward_weights") == {"liked": 1.0, "engaged": 0.5}


def test_align_grpo_resumes_and_its_model_scores_with_a_held_out_reward_model(trained_run, reward_model_dir, tmp_path):
    root, _ = trained_run
    common = (
        ["--dataset", "scientific", "--model_dir", str(root / "run" / "final")]
        + ["--reward_model_dir", str(reward_model_dir), "--output_dir", str(tmp_path / "grpo")]
        + "--max_prompts 8 --num_generations 4 --per_device_train_batch_size 8 --num_iterations 2".split()
        + "--save_steps 2 --logging_steps 1".split()
        + QUIET_CPU_TRAINING
    )
    first = load_example("align_grpo").main(common + ["--max_steps", "2"])
    assert first["steps"] == 2 and first["prompts"] == 8
    assert first["reward_functions"] == ["reward_model", "next_items"] and first["reward_weights"] == [1.0, 1.0]
    resumed = load_example("align_grpo").main(common + ["--max_steps", "4"])
    assert resumed["steps"] == 4 and (tmp_path / "grpo" / "checkpoint-2").is_dir()
    assert (tmp_path / "grpo" / "final" / "model.safetensors").is_file()
    with pytest.raises(ValueError, match="No reward"):
        load_example("align_grpo").main(
            common[:4] + ["--output_dir", str(tmp_path / "none"), "--next_items_weight", "0"] + QUIET_CPU_TRAINING
        )

    table = load_example("evaluate_alignment").main(
        ["--dataset", "scientific", "--reward_model_dir", str(reward_model_dir)]
        + ["--heldout_reward_model_dir", str(reward_model_dir), "--test_users", "8", "--num_sessions", "2"]
        + ["--session_beams", "4", "--output_dir", str(tmp_path / "table"), "--no_successor"]
        + ["--models", f"OneRec={root / 'run' / 'final'}", f"OneRec+ECPO={tmp_path / 'grpo' / 'final'}"]
    )
    for row in table["rows"]:
        assert row["heldout_engaged_mean"] == pytest.approx(row["engaged_mean"])  # the same model, as a check
        assert 0 < row["coverage"] <= 1 and 0 < row["diversity"] <= 1


def test_pretrain_never_replaces_a_finished_run_and_saves_what_it_trains(trained_run):
    root, _ = trained_run
    common = pretrain_arguments(root, max_steps=1, test_users=0)
    before = (root / "run" / "metrics.json").read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite_output_dir"):
        load_example("pretrain").main(common + ["--output_dir", str(root / "run")])
    assert (root / "run" / "metrics.json").read_bytes() == before  # untouched
    # Regression: values given with --model_name_or_path were trained with but the old ones were saved.
    report = load_example("pretrain").main(
        common
        + [
            "--output_dir",
            str(root / "continued"),
            "--model_name_or_path",
            str(root / "run" / "final"),
            "--session_length",
            "1",
            "--max_history_items",
            "7",
            "--dropout_rate",
            "0.2",
        ]
    )
    saved = json.loads((root / "continued" / "final" / "config.json").read_text())
    assert (saved["session_length"], saved["max_history_items"], saved["dropout_rate"]) == (1, 7, 0.2)
    # The tokenizer saved beside it reads histories as the model does (recommend() and the pipeline agree, no warning).
    saved_tokenizer = json.loads((root / "continued" / "final" / "tokenizer_config.json").read_text())
    assert saved_tokenizer["max_history_items"] == 7
    assert report["session_length"] == 1 and report["dropout_rate"] == 0.2
    refused = (
        ("--num_experts", "2", "--num_experts 2 cannot change"),
        ("--history_prefix_buckets", "auto", "--history_prefix_buckets \\d+ cannot change"),
        ("--history_prefix_buckets", "many", "neither an integer"),
    )
    for argument, value, message in refused:
        with pytest.raises(ValueError, match=message):
            load_example("pretrain").main(
                common
                + ["--output_dir", str(root / "other"), "--model_name_or_path", str(root / "run" / "final")]
                + [argument, value]
            )


def test_evaluate_refuses_model_names_that_share_a_file(trained_run):
    # Regression: "One-Rec" and "one rec" both wrote topk_one_rec_*.json, the second overwriting the first.
    root, _ = trained_run
    final = root / "run" / "final"
    with pytest.raises(ValueError, match="share the file name topk_one_rec"):
        load_example("evaluate").main(
            [
                "--dataset",
                "scientific",
                "--output_dir",
                str(root / "ev"),
                "--test_users",
                "2",
                "--model_dirs",
                f"One-Rec={final}",
                f"one rec={final}",
            ]  # fmt: skip
        )
    assert not (root / "ev").exists() or not list((root / "ev").glob("topk_*"))


def test_pretrain_pairs_resume_and_whole_history_exclusion(trained_run, caplog):
    from trainers.data import leave_one_out_split, load_named_dataset

    root, _ = trained_run
    common = pretrain_arguments(root, max_steps=4, test_users=12) + ["--max_history_items", "2", "--num_beams", "16"]
    # A random-window run stopped after its checkpoint at step 2 (final/ and metrics.json never written) ...
    out = root / "windows"
    stopped = [
        "--max_steps",
        "2",
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
        "--test_users",
        "0",
    ]  # argparse: last wins
    load_example("pretrain").main(common + stopped + ["--output_dir", str(out), "--pairs", "random_window"])
    shutil.rmtree(out / "final")
    (out / "metrics.json").unlink()
    # ... is resumed by the same command (here with the full budget), not restarted.
    with caplog.at_level("INFO", logger="pretrain"):
        report = load_example("pretrain").main(common + ["--output_dir", str(out), "--pairs", "random_window"])
    assert "Resuming the unfinished run" in caplog.text and "checkpoint-2" in caplog.text
    assert report["steps"] == 4 and report["pairs"] == "random_window" and report["max_history_items"] == 2
    assert report["epochs"] is None and report["epochs_trained"] > 0  # --max_steps set the budget, not the epochs
    assert report["resumed_from_step"] == 2  # its train_seconds and windows/s cover the last 2 steps only
    assert "the last 2 in" in (out / "final" / "README.md").read_text()  # the model card says so too
    # The model reads 2 history items, yet "history excluded" excludes every item the user ever consumed before.
    splits = leave_one_out_split(load_named_dataset("scientific")["sequences"])
    history = {user: set(items[:-1]) for user, items in zip(splits["test"]["user_id"], splits["test"]["item_ids"])}
    lists = read_topk_json(out / "topk_test_exclude_history.json")
    assert len(lists) == 12 and any(len(history[user]) > 2 for user in lists)
    assert all(not set(items) & history[user] for user, items in lists.items())
    # The same folder resumed with another model shape: the differing settings are named, not torch's size mismatch.
    shutil.rmtree(out / "final")
    (out / "metrics.json").unlink()
    with pytest.raises(ValueError, match=r"another shape \(d_model: 32 in the checkpoint, 128 now"):
        load_example("pretrain").main(common + ["--output_dir", str(out), "--preset", "small"])
    with pytest.raises(ValueError, match=r"tie_output_embeddings: True in the checkpoint, False now"):
        load_example("pretrain").main(common + ["--output_dir", str(out), "--tie_output_embeddings", "false"])
    windows = load_example("pretrain").main(common + ["--output_dir", str(root / "all"), "--pairs", "all_windows"])
    assert windows["pairs"] == "all_windows" and windows["train_samples"] > report["train_samples"]


def test_pretrain_chooses_the_code_scoring_on_validation_and_saves_it(trained_run):
    from modeling_onerec import OneRecForConditionalGeneration
    from tokenization_semantic_id import SemanticIDTokenizer

    root, _ = trained_run
    common = pretrain_arguments(root, max_steps=2, test_users=0) + ["--num_beams", "16"]
    chosen = load_example("pretrain").main(common + ["--ranking_eval_users", "10", "--output_dir", str(root / "auto")])
    scoring = chosen["code_scoring"]
    assert scoring["chosen_by"] == "validation (10 users)"
    level, renormalized = (scoring["validation"][f"renormalize_logits={value}"] for value in (False, True))
    expected = (renormalized["recall@10"], renormalized["ndcg@10"]) > (level["recall@10"], level["ndcg@10"])
    assert scoring["renormalize_logits"] is expected
    saved = OneRecForConditionalGeneration.from_pretrained(root / "auto" / "final")
    assert saved.generation_config.renormalize_logits is expected
    assert (
        f"renormalize_logits={expected}, validation (10 users)" in (root / "auto" / "final" / "README.md").read_text()
    )

    # Given as an argument, it is saved as given; recommend() and the pipeline then score that way by default.
    forced = load_example("pretrain").main(
        common + ["--ranking_eval_users", "0", "--renormalize_logits", "true", "--output_dir", str(root / "forced")]
    )
    assert forced["code_scoring"] == {"renormalize_logits": True, "chosen_by": "argument"}
    model = OneRecForConditionalGeneration.from_pretrained(root / "forced" / "final").eval()
    tokenizer = SemanticIDTokenizer.from_pretrained(root / "forced" / "final")
    histories = [list(tokenizer.item_ids[:3]), [tokenizer.item_ids[7]]]

    def scores(**kwargs):
        found = model.recommend(tokenizer, histories, num_sessions=4, num_beams=8, session_length=2, **kwargs)
        return [[round(session.score, 4) for session in user] for user in found]

    assert scores() == scores(renormalize_logits=True) != scores(renormalize_logits=False)
    recommend = pipeline("generative-recommendation", model=str(root / "forced" / "final"), trust_remote_code=True)
    piped = recommend(histories[0], num_sessions=4, num_beams=8, session_length=2)
    assert [round(session["score"], 4) for session in piped] == scores()[0]
