"""The shared evaluation path: hand-computed metrics, the offline `evaluate` module, baselines, top-k JSON."""

import importlib.util
import json
import math
import sys

import numpy as np
import pytest
import scipy.sparse as sp
from datasets import Dataset
from test_examples import load_example  # tests/ is on sys.path under pytest

from trainers.baselines import MostPopularRecommender, SuccessorRecommender, tune_successor
from trainers.data import build_session_samples, leave_one_out_split
from trainers.evaluation import (
    RECALL_NDCG_METRIC_PATH,
    Recommender,
    code_prefix_hit_rates,
    evaluate_recommender,
    metrics_by_history_transition,
    metrics_by_target_popularity,
    ranking_metrics,
    read_topk_json,
    session_metrics,
    top_item_follows_history,
    training_followers,
    write_topk_json,
)

# Five users: hit at rank 0, hit at rank 4, hit at rank 7, a miss, and a short list holding the target.
RANKED = [
    ["a", "b", "c", "d", "e"],
    ["a", "b", "c", "d", "e", "f"],
    [str(i) for i in range(10)],
    ["a", "b", "c"],
    ["t"],
]
TARGETS = ["a", "e", "7", "z", "t"]


def test_ranking_metrics_hand_computed():
    metrics = ranking_metrics(RANKED, TARGETS, ks=(5, 10))
    assert set(metrics) == {"recall@5", "ndcg@5", "recall@10", "ndcg@10"}
    assert metrics["recall@5"] == pytest.approx(3 / 5)  # ranks 0, 4 and 0
    assert metrics["recall@10"] == pytest.approx(4 / 5)  # plus rank 7
    assert metrics["ndcg@5"] == pytest.approx((1 + 1 / math.log2(6) + 1) / 5)
    assert metrics["ndcg@10"] == pytest.approx((1 + 1 / math.log2(6) + 1 / math.log2(9) + 1) / 5)
    # Cut-offs are sorted; k=1 counts only first positions; a one-item target list is accepted.
    assert ranking_metrics(RANKED, [[t] for t in TARGETS], ks=(10, 1)) == {
        "recall@1": pytest.approx(2 / 5),
        "ndcg@1": pytest.approx(2 / 5),
        "recall@10": metrics["recall@10"],
        "ndcg@10": metrics["ndcg@10"],
    }
    # Short lists are misses beyond their end; ids compare as strings.
    assert ranking_metrics([[], [1, 2]], ["x", "2"], ks=(5,)) == {
        "recall@5": 0.5,
        "ndcg@5": pytest.approx(0.5 / math.log2(3)),
    }


def test_ranking_metrics_errors():
    with pytest.raises(ValueError, match="User 1: .*more than once"):
        ranking_metrics([["a"], ["b", "c", "b"]], ["a", "b"])
    with pytest.raises(ValueError, match="2 ranked lists for 1 targets"):
        ranking_metrics([["a"], ["b"]], ["a"])
    with pytest.raises(ValueError, match="holds 2 items"):
        ranking_metrics([["a"]], [["a", "b"]])
    with pytest.raises(ValueError, match="ks="):
        ranking_metrics([["a"]], ["a"], ks=(0,))
    with pytest.raises(ValueError, match="empty"):
        ranking_metrics([], [])


def test_metrics_by_target_popularity_groups_users_by_their_targets_training_count():
    # Targets a (never in training), e (3 times), 7 (3), z (40), t (7): groups [0, 1), [1, 5), [5, 20), >= 20.
    counts = {"e": 3, "7": 3, "z": 40, "t": 7, "unused": 100}
    rows = metrics_by_target_popularity(RANKED, TARGETS, counts, edges=(1, 5, 20))
    assert [(row["group"], row["users"]) for row in rows] == [
        ("[0, 1)", 1),
        ("[1, 5)", 2),
        ("[5, 20)", 1),
        (">= 20", 1),
    ]
    assert [row["share"] for row in rows] == pytest.approx([0.2, 0.4, 0.2, 0.2])
    assert rows[0]["recall@5"] == 1.0 and rows[0]["ndcg@10"] == 1.0  # "a" first
    assert rows[1]["recall@5"] == 0.5 and rows[1]["recall@10"] == 1.0  # e at rank 4, 7 at rank 7
    assert rows[1]["ndcg@10"] == pytest.approx((1 / math.log2(6) + 1 / math.log2(9)) / 2)
    assert rows[2]["recall@10"] == 1.0 and rows[3]["recall@10"] == 0.0  # t found, z missed
    # The groups' users add up to all users, and their weighted metrics to the overall ones.
    overall = ranking_metrics(RANKED, TARGETS)
    assert sum(row["share"] * row["ndcg@10"] for row in rows) == pytest.approx(overall["ndcg@10"])
    # An empty group keeps its row, without metrics.
    rows = metrics_by_target_popularity(RANKED, TARGETS, counts, edges=(1, 100, 200))
    assert rows[-1] == {"group": ">= 200", "users": 0, "share": 0.0}
    for bad in ((), (5, 5), (0, 3), (5, 1)):
        with pytest.raises(ValueError, match="strictly increasing"):
            metrics_by_target_popularity(RANKED, TARGETS, counts, edges=bad)
    with pytest.raises(ValueError, match="2 ranked lists for 1 targets"):
        metrics_by_target_popularity([["a"], ["b"]], ["a"], counts)


def test_code_prefix_hit_rates_reach_down_the_code_hierarchy():
    codes = {"t1": (0, 1, 2), "t2": (3, 4, 5), "x": (0, 1, 9), "y": (0, 7, 2), "w": (3, 4, 5), "v": (8, 8, 8)}
    # User 0: best shared prefix 2 (x; y shares only the first code). User 1: w shares all 3 codes of t2 (a full-code
    # collision, not a hit). User 2: t1 itself, second.
    ranked = [["y", "x"], ["v", "w"], ["v", "t1"]]
    assert code_prefix_hit_rates(ranked, ["t1", "t2", "t1"], codes) == pytest.approx([1, 1, 2 / 3])
    assert code_prefix_hit_rates(ranked, ["t1", "t2", "t1"], codes, k=1) == pytest.approx([1 / 3, 0, 0])
    with pytest.raises(ValueError, match="'q' has no semantic ID"):
        code_prefix_hit_rates([["q"]], ["t1"], codes)
    with pytest.raises(ValueError, match="k=0"):
        code_prefix_hit_rates(ranked, ["t1", "t2", "t1"], codes, k=0)


def _load_script_module():
    path = RECALL_NDCG_METRIC_PATH / "recall_ndcg.py"
    spec = importlib.util.spec_from_file_location("recall_ndcg_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_evaluate_metric_module_matches_ranking_metrics():
    import evaluate

    metric = evaluate.load(str(RECALL_NDCG_METRIC_PATH))
    result = metric.compute(predictions=RANKED, references=TARGETS, k_values=[5, 10])
    assert result == ranking_metrics(RANKED, TARGETS, ks=(5, 10))
    # Inside the project the loaded copy delegates to trainers.evaluation.ranking_metrics.
    assert sys.modules[type(metric).__module__].RANKING_METRICS_SOURCE == "trainers.evaluation"
    # The standalone fallback (used when the script is copied without the package) gives the same numbers.
    standalone = _load_script_module()._standalone_ranking_metrics
    rng = np.random.default_rng(0)
    ranked = [[str(i) for i in rng.permutation(30)[: rng.integers(0, 12)]] for _ in range(200)]
    targets = [str(t) for t in rng.integers(0, 30, size=200)]
    for ks in [(5, 10), (1, 3, 20)]:
        assert standalone(ranked, targets, ks) == ranking_metrics(ranked, targets, ks)
    with pytest.raises(ValueError, match="User 0"):
        standalone([["a", "a"]], ["a"])


def test_session_metrics_with_mapping_and_tokenizer(small_tokenizer):
    sessions = [
        [["a", "b", "c"], ["z"]],  # best session holds the target "a"; the second session is ignored
        [["d", "e"]],  # misses
        ["a", "f", "g", "h"],  # a flat single session with two of the three true next items
    ]
    targets = ["a", "x", ["f", "h", "q"]]
    categories = {"a": 0, "b": 0, "c": 1, "d": 2, "e": 2, "f": 3, "g": 4, "h": 5, "z": 9}
    metrics = session_metrics(sessions, targets, item_categories=categories)
    assert metrics["session_hit_rate"] == pytest.approx(2 / 3)
    assert metrics["session_consumed_items"] == pytest.approx((1 + 0 + 2) / 3)
    assert metrics["coverage"] == pytest.approx(8 / 9)  # a..h recommended, z only in a second session
    assert metrics["intra_session_diversity"] == pytest.approx((2 / 3 + 1 / 2 + 4 / 4) / 3)
    assert metrics["mean_session_length"] == pytest.approx(3)
    assert "coverage" not in session_metrics(sessions, targets)
    with pytest.raises(ValueError, match="no category"):
        session_metrics([["a", "unknown"]], ["a"], item_categories=categories)
    # With a tokenizer the category is the first semantic-ID code.
    items = small_tokenizer.item_ids[:6]
    first_codes = small_tokenizer.item_codes[:6, 0].tolist()
    metrics = session_metrics([items], [items[0]], item_categories=small_tokenizer)
    assert metrics["intra_session_diversity"] == pytest.approx(len(set(first_codes)) / 6)
    assert metrics["coverage"] == pytest.approx(6 / small_tokenizer.num_items)


class _Echo:
    """Recommends the history backwards (so it always violates exclusion), then fillers."""

    def rank(self, histories, k, exclude_history):
        return [(list(reversed(h)) + [f"fill{i}" for i in range(k)])[:k] for h in histories]


def test_evaluate_recommender_batches_and_enforces_exclusion():
    samples = [{"user_id": f"u{i}", "history": ["a", f"h{i}"], "target": [f"h{i}" if i % 2 else "a"]} for i in range(5)]
    assert isinstance(_Echo(), Recommender)
    metrics, ranked = evaluate_recommender(
        _Echo(), samples, ks=(1, 2), exclude_history=False, batch_size=2, progress=False
    )
    assert len(ranked) == 5 and ranked[0] == ["h0", "a"]
    assert metrics["recall@1"] == pytest.approx(2 / 5) and metrics["recall@2"] == 1.0
    assert metrics["num_users"] == 5 and metrics["exclude_history"] is False
    same, _ = evaluate_recommender(
        _Echo(), Dataset.from_list(samples), ks=(1, 2), exclude_history=False, progress=False
    )
    assert same == metrics
    with pytest.raises(ValueError, match="history item"):
        evaluate_recommender(_Echo(), samples, exclude_history=True, progress=False)


# Tiny synthetic logs: "x" is followed by "y" in three training sequences; "p" -> "q" once.
SEQUENCES = [
    ["x", "y", "c", "m", "n"],
    ["b", "x", "y", "m", "n"],
    ["c", "x", "y", "c", "n"],
    ["p", "q", "c", "n", "m"],
    ["a", "b", "c", "v", "w"],  # v (validation target) and w (test target) never occur in training
]
CATALOGUE = ["a", "b", "c", "m", "n", "p", "q", "v", "w", "x", "y"]


def _splits():
    sequences = Dataset.from_dict({"user_id": [f"u{i}" for i in range(len(SEQUENCES))], "item_ids": SEQUENCES})
    return leave_one_out_split(sequences)


def test_most_popular_order_and_exclusion():
    splits = _splits()
    # Training rows: [x y c] [b x y] [c x y] [p q c] [a b c] -> c: 4, x: 3, y: 3, b: 2, a/p/q: 1, rest 0.
    recommender = MostPopularRecommender(splits["train"], catalogue=CATALOGUE)
    assert recommender.rank([[]], 11, exclude_history=False) == [
        ["c", "x", "y", "b", "a", "p", "q", "m", "n", "v", "w"]
    ]  # ties: catalogue order
    assert recommender.rank([["c", "x", "zzz"]], 3, exclude_history=True) == [["y", "b", "a"]]
    assert recommender.rank([["c", "x"]], 3, exclude_history=False) == [["c", "x", "y"]]
    # The catalogue minus the history can be shorter than k.
    assert recommender.rank([CATALOGUE[:-1]], 5, exclude_history=True) == [["y"]]
    with pytest.raises(TypeError, match=r"splits\['train'\]"):
        MostPopularRecommender(splits)


def test_successor_recommends_the_successor_without_leakage():
    splits = _splits()
    recommender = SuccessorRecommender(splits["train"], window=1, max_gap=1, catalogue=CATALOGUE)
    index = recommender.item_index
    assert recommender.rank([["a", "x"]], 3, exclude_history=False)[0][0] == "y"
    # Only training transitions: c -> v (into the validation target) and v -> w (validation -> test) are
    # after the training cut, so neither is counted and v, w have no popularity either.
    transitions = recommender.transitions.toarray()
    assert transitions[index["c"], index["v"]] == 0 and transitions[index["v"], index["w"]] == 0
    assert transitions.sum() == 10  # 5 training rows of 3 items -> 2 transitions each
    assert recommender.popularity[index["v"]] == recommender.popularity[index["w"]] == 0
    assert recommender.rank([["v"]], 11, exclude_history=False)[0][-2:] == ["v", "w"]
    # End-to-end on the test split: nobody's test target is ranked by a leaked transition.
    samples = build_session_samples(splits, max_history=50, session_length=1)
    _, ranked = evaluate_recommender(recommender, samples["test"], ks=(3,), exclude_history=True, progress=False)
    assert "w" not in ranked[4]


def test_successor_window_decay_and_gap():
    train = [["u", "p"], ["v", "q"], ["v", "q"], ["a", "b", "c"]]
    immediate = SuccessorRecommender(train, window=1, max_gap=1)
    assert immediate.rank([["u", "v"]], 2, exclude_history=True) == [["q", "a"]]  # a: next most popular
    two = immediate.with_query(window=2, decay=0.5)
    assert two.rank([["u", "v"]], 2, exclude_history=True) == [["q", "p"]]
    assert immediate.rank([["u", "v"]], 2, exclude_history=True) == [["q", "a"]]  # the copy is independent
    gapped = SuccessorRecommender(train, window=1, max_gap=2)
    assert gapped.transitions[gapped.item_index["a"], gapped.item_index["c"]] == pytest.approx(0.5)
    assert immediate.transitions[immediate.item_index["a"], immediate.item_index["c"]] == 0
    assert gapped.rank([["a"]], 2, exclude_history=True) == [["b", "c"]]
    with pytest.raises(ValueError, match="decay"):
        SuccessorRecommender(train, decay=0)


def test_sparse_top_k_selection_matches_brute_force():
    rng = np.random.default_rng(1)
    catalogue = [str(i) for i in range(40)]
    train = [[str(x) for x in rng.integers(0, 40, size=rng.integers(2, 8))] for _ in range(100)]
    recommender = MostPopularRecommender(train, catalogue=catalogue)
    for _ in range(100):
        batch, k = int(rng.integers(1, 5)), int(rng.integers(1, 8))
        scores = rng.integers(0, 4, size=(batch, 40)) * rng.choice([0.5, 1.0])  # many ties
        scores[rng.random((batch, 40)) < rng.random()] = 0
        blocked = rng.random((batch, 40)) < 0.2
        got = recommender._select(sp.csr_matrix(scores), sp.csr_matrix(blocked.astype(float)), k, batch)
        for row in range(batch):
            allowed = [i for i in range(40) if not blocked[row, i]]
            expected = sorted(allowed, key=lambda i: (-scores[row, i], recommender.popularity_position[i]))[:k]
            assert [i for i in got[row] if i >= 0] == expected


def test_tune_successor_uses_the_grid_on_validation():
    splits = _splits()
    samples = build_session_samples(splits, max_history=50, session_length=1)
    best, table = tune_successor(
        splits["train"],
        samples["validation"],
        exclude_history=True,
        catalogue=CATALOGUE,
        grid={"window": (1, 2), "decay": (0.5, 1.0), "max_gap": (1, 2)},
        ks=(1, 3),
        metric="recall@3",
    )
    assert len(table) == 6  # window 1 runs once per gap (decay has no effect), window 2 twice
    assert {row["max_gap"] for row in table} == {1, 2}
    assert set(best) == {"window", "decay", "max_gap", "normalize"}
    assert max(row["recall@3"] for row in table) == next(
        row["recall@3"] for row in table if all(row[name] == value for name, value in best.items())
    )
    with pytest.raises(ValueError, match="metric="):
        tune_successor(splits["train"], samples["validation"], exclude_history=True, metric="ndcg@20")


def test_topk_json_round_trip(tmp_path):
    path = write_topk_json(tmp_path / "sub" / "top.json", ["7", 8], [["1", "2", "3"], [4]], k=2)
    assert read_topk_json(path) == {"7": ["1", "2"], "8": ["4"]}
    packed = write_topk_json(tmp_path / "top.json.gz", ["7", 8], [["1", "2", "3"], [4]], k=2)
    assert packed.read_bytes()[:2] == b"\x1f\x8b" and read_topk_json(packed) == read_topk_json(path)
    again = write_topk_json(tmp_path / "again.json.gz", ["7", 8], [["1", "2", "3"], [4]], k=2)
    assert again.read_bytes() == packed.read_bytes()  # reproducible bytes
    (tmp_path / "broken.json.gz").write_bytes(packed.read_bytes()[:10])
    with pytest.raises(ValueError, match="broken.json.gz"):
        read_topk_json(tmp_path / "broken.json.gz")
    assert json.loads(path.read_text()) == {"7": ["1", "2"], "8": ["4"]}
    with pytest.raises(ValueError, match="twice"):
        write_topk_json(tmp_path / "dup.json", ["1", "1"], [["a"], ["b"]])


def test_evaluate_baselines_example_on_an_s3rec_file(tmp_path):
    data = tmp_path / "tiny.txt"
    data.write_text("\n".join(f"{i + 1} " + " ".join(row) for i, row in enumerate(SEQUENCES)) + "\n")
    report = load_example("evaluate_baselines").main(
        [
            "--data_path",
            str(data),
            "--output_dir",
            str(tmp_path / "out"),
            "--windows",
            "1",
            "2",
            "--decays",
            "0.5",
            "--max_gaps",
            "1",
            "--ks",
            "1",
            "3",
            "--tune_metric",
            "ndcg@3",
        ]
    )
    assert [(row["model"], row["exclude_history"]) for row in report["results"]] == [
        ("most-popular", True),
        ("successor", True),
        ("most-popular", False),
        ("successor", False),
    ]
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["results"][1]["test"]["ndcg@3"] == report["results"][1]["test"]["ndcg@3"]
    top = read_topk_json(tmp_path / "out" / "top10_successor_exclude_history.json")
    assert sorted(top) == ["1", "2", "3", "4", "5"] and all(len(items) <= 10 for items in top.values())


def test_markdown_table_aligns_and_checks_its_columns():
    from trainers.evaluation import markdown_table

    table = markdown_table(["model", "Recall@10"], [["a", "0.1000"], ["b", 2]], align="lr")
    assert table.splitlines() == ["| model | Recall@10 |", "|---|---:|", "| a | 0.1000 |", "| b | 2 |"]
    assert markdown_table(["x"], []).splitlines() == ["| x |", "|---|"]
    with pytest.raises(ValueError, match="one 'l' or 'r' per column"):
        markdown_table(["a", "b"], [], align="l")


def test_top_item_follows_history_counts_transitions_of_each_recent_item():
    train = training_followers([["a", "b", "c"], ["x", "y"], ["d", "a"]])  # a->b, b->c, x->y, d->a
    assert train == {"a": {"b"}, "b": {"c"}, "x": {"y"}, "d": {"a"}}
    histories = [["d", "x", "a"], ["a", "b", "x"], ["b", "x", "d"], ["q"]]
    ranked = [["b", "z"], ["y"], ["c"], ["b"]]  # the last user has too short a history and is left out
    # User 0: b follows a (newest) -> p=1. User 1: y follows x (newest) -> p=1. User 2: c follows b (third newest).
    shares = top_item_follows_history(ranked, histories, train, positions=(1, 2, 3))
    assert shares == pytest.approx([2 / 3, 0.0, 1 / 3])
    assert top_item_follows_history([["a"]], [["d"]], train, positions=(1,)) == [1.0]
    with pytest.raises(ValueError, match="positions"):
        top_item_follows_history(ranked, histories, train, positions=(0,))
    with pytest.raises(ValueError, match="No user has 5"):
        top_item_follows_history(ranked, histories, train, positions=(5,))
    with pytest.raises(ValueError, match="2 ranked lists for 4 histories"):
        top_item_follows_history(ranked[:2], histories, train)


def test_metrics_by_history_transition_groups_users_by_their_newest_items():
    train = training_followers([["a", "b", "c"], ["x", "y"], ["d", "a"]])  # a->b, b->c, x->y, d->a
    histories = [["d", "x", "a"], ["a", "b", "x"], ["b", "x", "d"], ["q"]]
    targets = ["b", "c", "a", "z"]  # follows the newest / follows b (2nd newest) / follows d (newest) / neither
    ranked = [["b"], ["y", "c"], ["q"], ["z"]]
    rows = metrics_by_history_transition(ranked, targets, histories, train, recent=3, ks=(1, 2))
    assert [row["group"] for row in rows] == [
        "follows the newest item",
        "follows one of the 2 before it only",
        "neither",
    ]
    assert [row["users"] for row in rows] == [2, 1, 1] and sum(row["share"] for row in rows) == pytest.approx(1)
    assert rows[0]["recall@1"] == pytest.approx(0.5) and rows[1]["recall@1"] == 0 and rows[1]["recall@2"] == 1
    assert rows[2]["recall@1"] == 1
    empty = metrics_by_history_transition([["b"]], ["b"], [["a"]], train)  # one user, in the first group
    assert [row["users"] for row in empty] == [1, 0, 0] and "recall@10" not in empty[1]
    with pytest.raises(ValueError, match="recent"):
        metrics_by_history_transition(ranked, targets, histories, train, recent=1)
    with pytest.raises(ValueError, match="3 histories for 4 targets"):
        metrics_by_history_transition(ranked, targets, histories[:3], train)
