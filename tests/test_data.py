"""Tests for `trainers.data`: loaders on the real bundled data, leave-one-out splits and session samples."""

import gzip
import json
import logging
import re
import subprocess
import sys

import numpy as np
import pytest
from datasets import Dataset, DatasetDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import REPO_ROOT  # noqa: E402
from trainers.data import (
    BUNDLED_DATASET_NAMES,
    build_session_samples,
    build_time_sessions,
    describe,
    leave_one_out_split,
    load_bundled,
    load_inter_json,
    load_interactions,
    load_recbole,
    load_s3rec,
    natural_order,
    split_sessions_by_gap,
)


@pytest.fixture(scope="module")
def beauty():
    return load_bundled("beauty")


@pytest.fixture(scope="module")
def beauty_splits(beauty):
    return leave_one_out_split(beauty["sequences"])


@pytest.fixture(scope="module")
def beauty_samples(beauty_splits):
    return build_session_samples(beauty_splits, max_history=20, session_length=3)


@pytest.fixture(scope="module")
def ml100k(ml100k_dir):
    return load_recbole(ml100k_dir)


def _sequences(rows, **lists):
    """A tiny `"sequences"` dataset: rows = {user: [items]}, lists = {column: {user: [values]}}."""
    columns = {"user_id": list(rows), "item_ids": list(rows.values())}
    for name, per_user in lists.items():
        columns[name] = [per_user[user] for user in rows]
    return Dataset.from_dict(columns)


# ---------------------------------------------------------------------------------------------------------
# Real data
# ---------------------------------------------------------------------------------------------------------


def test_bundled_beauty_counts_and_schema(beauty):
    stats = describe(beauty)
    assert (stats["users"], stats["items"], stats["interactions"]) == (22_363, 12_101, 198_502)
    assert stats["interacted_items"] == 12_101
    sequences, items = beauty["sequences"], beauty["items"]
    assert sequences.column_names == ["user_id", "item_ids"]  # order only: no invented timestamps
    assert sequences[0] == {"user_id": "1", "item_ids": ["1", "2", "3", "4", "5"]}
    assert items["item_id"][:3] == ["1", "2", "3"] and items["item_id"][-1] == "12101"
    assert items[0]["text"] == "OPI, Makeup, Nails, Nail Polish"
    assert "Unknown" not in items[2]["text"] and "Unknown" in items[2]["attributes"]


def test_bundled_scientific_counts_and_text():
    data = load_bundled("Scientific")
    stats = describe(data)
    assert (stats["users"], stats["items"], stats["interactions"]) == (8_317, 4_344, 58_492)
    texts = data["items"]["text"][:]
    assert all(text.strip() for text in texts)
    assert max(len(text) for text in texts) <= 1000
    assert not any(re.search(r"</?(p|br|li|ul|b|div|span)\b[^<>]*>", text) for text in texts)  # HTML stripped
    assert texts[0].startswith("SUPCO SPP6 Relay/Capacitor Hard Start Kit") and "Sealed Unit Parts" in texts[0]
    assert data["items"]["item_id"][:3] == ["0", "1", "2"]


def test_ml100k_ratings_timestamps_and_users(ml100k):
    stats = describe(ml100k)
    assert (stats["users"], stats["items"], stats["interactions"]) == (943, 1_682, 100_000)
    sequences = ml100k["sequences"]
    assert sequences.column_names == ["user_id", "item_ids", "timestamps", "ratings"]
    columns = sequences.to_dict()
    ratings = np.concatenate([np.asarray(r) for r in columns["ratings"]])
    assert ratings.min() == 1 and ratings.max() == 5 and set(np.unique(ratings)) == {1, 2, 3, 4, 5}
    for times, items in zip(columns["timestamps"], columns["item_ids"]):
        assert len(times) == len(items)
        assert np.all(np.diff(times) >= 0)
    assert ml100k["items"][0]["text"] == "Toy Story (1995). Animation, Children's, Comedy"
    assert ml100k["users"].num_rows == 943
    assert ml100k["users"][0] == {
        "user_id": "1",
        "age": "24",
        "gender": "M",
        "occupation": "technician",
        "zip_code": "85711",
    }


def test_ml100k_equal_timestamps_keep_file_order(ml100k, ml100k_dir):
    # User 1 rated items 168 and 172 at the same second; 168 comes first in ml-100k.inter.
    lines = (ml100k_dir / "ml-100k.inter").read_text().splitlines()[1:]
    file_order = [
        line.split("\t")[1] for line in lines if line.split("\t")[0] == "1" and line.split("\t")[3] == "874965478"
    ]
    user_1 = ml100k["sequences"][0]
    assert user_1["timestamps"][:2] == [874965478.0, 874965478.0]
    assert user_1["item_ids"][: len(file_order)] == file_order


def test_natural_order():
    assert natural_order(["10", "2", "1"]) == ["1", "2", "10"]
    assert natural_order(["b10", "b2", "a"]) == ["a", "b10", "b2"]


# ---------------------------------------------------------------------------------------------------------
# Leave-one-out
# ---------------------------------------------------------------------------------------------------------


def test_leave_one_out_exact_rows_and_short_users(caplog):
    sequences = _sequences(
        {"u1": ["a", "b", "c", "d"], "u2": ["x", "y"], "u3": ["p", "q", "r"]},
        timestamps={"u1": [1.0, 2.0, 3.0, 4.0], "u2": [5.0, 6.0], "u3": [7.0, 8.0, 9.0]},
    )
    with caplog.at_level(logging.WARNING):
        splits = leave_one_out_split(sequences)
    assert "1 of 3 users" in caplog.text  # u2 is too short: kept in train, counted in a warning
    assert splits["train"].to_dict() == {
        "user_id": ["u1", "u2", "u3"],
        "item_ids": [["a", "b"], ["x", "y"], ["p"]],
        "timestamps": [[1.0, 2.0], [5.0, 6.0], [7.0]],
    }
    assert splits["validation"].to_dict() == {
        "user_id": ["u1", "u3"],
        "item_ids": [["a", "b", "c"], ["p", "q"]],
        "timestamps": [[1.0, 2.0, 3.0], [7.0, 8.0]],
    }
    assert splits["test"].to_dict() == sequences.select([0, 2]).to_dict()


def test_leave_one_out_respects_dataset_indices():
    sequences = _sequences({"u1": ["a", "b", "c"], "u2": ["d", "e", "f", "g"]}).select([1])
    assert leave_one_out_split(sequences)["test"]["item_ids"] == [["d", "e", "f", "g"]]


def test_leave_one_out_rejects_bad_input():
    with pytest.raises(ValueError, match="min_length=2"):
        leave_one_out_split(_sequences({"u": ["a", "b", "c"]}), min_length=2)
    with pytest.raises(ValueError, match="'ratings' is not aligned.*'u'"):
        leave_one_out_split(_sequences({"u": ["a", "b", "c"]}, ratings={"u": [1.0]}))


def test_beauty_test_target_is_last_item(beauty, beauty_splits):
    full = beauty["sequences"].to_dict()
    test = beauty_splits["test"].to_dict()
    assert test["user_id"] == full["user_id"]
    assert [items[-1] for items in test["item_ids"]] == [items[-1] for items in full["item_ids"]]
    assert test["item_ids"] == full["item_ids"]
    assert beauty_splits["validation"].to_dict()["item_ids"] == [items[:-1] for items in full["item_ids"]]
    assert beauty_splits["train"].to_dict()["item_ids"] == [items[:-2] for items in full["item_ids"]]


# ---------------------------------------------------------------------------------------------------------
# Session samples
# ---------------------------------------------------------------------------------------------------------


def test_session_samples_exact_on_synthetic():
    sequences = _sequences(
        {"u": ["a", "b", "c", "d", "e", "f", "g"]},
        ratings={"u": [1.0, 2.0, 3.0, 4.0, 5.0, 4.0, 3.0]},
        timestamps={"u": [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0]},
    )
    samples = build_session_samples(leave_one_out_split(sequences), max_history=2, session_length=2)
    train = samples["train"]
    assert train["history"] == [["a"], ["a", "b"], ["b", "c"], ["c", "d"]]  # newest kept
    assert train["target"] == [["b", "c"], ["c", "d"], ["d", "e"], ["e"]]  # never reaches f (validation)
    assert train["history_ratings"][2] == [2.0, 3.0] and train["target_ratings"][3] == [5.0]
    assert train["target_timestamps"][0] == [20.0, 30.0]
    assert samples["validation"].to_dict()["history"] == [["d", "e"]]
    assert samples["validation"]["target"] == [["f"]]
    assert samples["test"]["history"] == [["e", "f"]] and samples["test"]["target"] == [["g"]]
    assert samples["test"]["target_timestamps"] == [[70.0]]
    pointwise = build_session_samples(leave_one_out_split(sequences), session_length=1)
    assert pointwise["train"]["target"] == [["b"], ["c"], ["d"], ["e"]]
    assert pointwise["train"]["history"][-1] == ["a", "b", "c", "d"]


def test_session_samples_validate_arguments():
    splits = leave_one_out_split(_sequences({"u": ["a", "b", "c"]}))
    with pytest.raises(ValueError, match="max_history=0"):
        build_session_samples(splits, max_history=0)
    with pytest.raises(ValueError, match="session_length=-1"):
        build_session_samples(splits, session_length=-1)
    with pytest.raises(KeyError, match="validation"):
        build_session_samples(DatasetDict({"train": splits["train"]}))


def test_beauty_session_samples_windows_and_no_leakage(beauty, beauty_samples):
    sequences = beauty["sequences"].to_dict()
    full = dict(zip(sequences["user_id"], sequences["item_ids"]))
    train = beauty_samples["train"].to_dict()
    assert len(train["user_id"]) == sum(max(len(items) - 3, 0) for items in full.values()) == 131_413
    previous_user, t = None, 0
    for user, history, target in zip(train["user_id"], train["history"], train["target"]):
        t = t + 1 if user == previous_user else 1  # samples come in position order t = 1, 2, ...
        previous_user = user
        training_part = full[user][:-2]
        assert history == training_part[:t][-20:]
        assert target == training_part[t : t + 3]  # inside the training part: no validation/test item
        assert 1 <= len(history) <= 20 and 1 <= len(target) <= 3
    assert any(len(h) == 20 for h in train["history"])  # truncation was exercised
    for split, offset in (("validation", 1), ("test", 0)):
        samples = beauty_samples[split].to_dict()
        assert len(samples["user_id"]) == len(full)
        for user, history, target in zip(samples["user_id"], samples["history"], samples["target"]):
            items = full[user][: len(full[user]) - offset]
            assert target == [items[-1]] and history == items[:-1][-20:]


# ---------------------------------------------------------------------------------------------------------
# Time-based sessions
# ---------------------------------------------------------------------------------------------------------


def test_split_sessions_by_gap():
    timestamps = [0, 0, 10, 3610, 8000, 8000, 20000]
    assert split_sessions_by_gap(timestamps, 3600) == [(0, 4), (4, 6), (6, 7)]  # a gap of exactly 3600 joins
    assert split_sessions_by_gap(timestamps, 0) == [(0, 2), (2, 3), (3, 4), (4, 6), (6, 7)]
    assert split_sessions_by_gap([], 60) == []
    with pytest.raises(ValueError, match=r"timestamps\[2\] = 5.0"):
        split_sessions_by_gap([1, 9, 5], 60)
    with pytest.raises(ValueError, match="max_gap_seconds=-1"):
        split_sessions_by_gap([1, 2], -1)


def test_time_sessions_on_synthetic(caplog):
    sequences = _sequences(
        {"u1": list("abcdefgh"), "u2": list("xyz")},
        timestamps={"u1": [0, 5, 100, 5000, 5010, 9000, 20000, 20001], "u2": [0, 10, 20]},
        ratings={"u1": [1, 2, 3, 4, 5, 1, 2, 3], "u2": [1, 1, 1]},
    )
    with caplog.at_level(logging.WARNING):
        samples = build_time_sessions(sequences, max_gap_seconds=3600, max_history=3, session_length=1)
    assert "1 of 2 users have fewer than 3 sessions" in caplog.text
    # u1 sessions: abc | de | f | gh -> train: abc (no history: no sample), de; validation: f; test: gh.
    # u2 has a single session: train only, and it has no history.
    assert samples["train"].to_dict() == {
        "user_id": ["u1"],
        "history": [["a", "b", "c"]],
        "target": [["d"]],
        "history_ratings": [[1.0, 2.0, 3.0]],
        "target_ratings": [[4.0]],
        "target_timestamps": [[5000.0]],
        "session_size": [2],
    }
    assert samples["validation"]["history"] == [["c", "d", "e"]] and samples["validation"]["target"] == [["f"]]
    assert samples["test"]["target"] == [["g"]] and samples["test"]["session_size"] == [2]
    full = build_time_sessions(sequences, max_gap_seconds=3600, session_length=5, min_history=0)
    assert full["train"]["target"] == [["a", "b", "c"], ["d", "e"], ["x", "y", "z"]]
    assert full["train"]["history"][0] == [] and full["test"]["history"] == [list("abcdef")]


def test_time_sessions_need_timestamps():
    with pytest.raises(ValueError, match="load_recbole"):
        build_time_sessions(_sequences({"u": ["a", "b"]}))


def test_time_sessions_on_ml100k(ml100k):
    samples = build_time_sessions(ml100k["sequences"], max_gap_seconds=3600, session_length=5)
    assert samples["validation"].num_rows == samples["test"].num_rows > 100
    assert set(samples["test"]["user_id"]) == set(samples["validation"]["user_id"])
    by_user = {row["user_id"]: row for row in ml100k["sequences"]}
    for split in ("train", "validation", "test"):
        for sample in samples[split]:
            times = sample["target_timestamps"]
            assert 1 <= len(sample["target"]) == len(times) == len(sample["target_ratings"]) <= 5
            assert sample["session_size"] >= len(sample["target"])
            assert np.all(np.diff(times) <= 3600) and 1 <= len(sample["history"]) <= 50
            user = by_user[sample["user_id"]]
            start = user["timestamps"].index(times[0])  # first interaction at that time starts the session
            assert start == 0 or times[0] - user["timestamps"][start - 1] > 3600
            assert user["item_ids"][start : start + len(sample["target"])] == sample["target"]
            assert sample["history"] == user["item_ids"][:start][-50:]
    for validation, test in zip(samples["validation"], samples["test"]):
        assert validation["user_id"] == test["user_id"]
        assert validation["target_timestamps"][-1] < test["target_timestamps"][0]


# ---------------------------------------------------------------------------------------------------------
# Generic format
# ---------------------------------------------------------------------------------------------------------


INTERACTIONS = [  # (user, item, timestamp, rating), deliberately not grouped nor sorted
    ("bob", "i3", 300, 2.0),
    ("alice", "i1", 200, 5.0),
    ("bob", "i1", 100, 4.0),
    ("alice", "i2", 100, 3.0),
    ("alice", "i3", 200, 1.0),  # same second as i1: file order decides
]


def _expected_sequences():
    return {
        "user_id": ["alice", "bob"],
        "item_ids": [["i2", "i1", "i3"], ["i1", "i3"]],
        "timestamps": [[100.0, 200.0, 200.0], [100.0, 300.0]],
        "ratings": [[3.0, 5.0, 1.0], [4.0, 2.0]],
    }


def test_generic_csv_round_trip(tmp_path, caplog):
    path = tmp_path / "log.csv"
    path.write_text("uid,item,ts,stars,channel\n" + "".join(f"{u},{i},{t},{r},web\n" for u, i, t, r in INTERACTIONS))
    items = tmp_path / "items.csv"
    items.write_text('item,title,brand\ni1,"Red mug, large.",Acme\ni2,Blue cup,\ni9,Spoon,Acme\n')
    with caplog.at_level(logging.WARNING):
        data = load_interactions(
            path, user_column="uid", item_column="item", timestamp_column="ts", rating_column="stars", items_path=items
        )
    assert "1 of 3 items with interactions have no metadata" in caplog.text  # i3
    assert "ignoring 1 column(s)" in caplog.text and "channel" in caplog.text
    assert data["sequences"].to_dict() == _expected_sequences()
    assert data["items"]["item_id"] == ["i1", "i2", "i3", "i9"]
    assert data["items"]["text"] == ["Red mug, large. Acme", "Blue cup", "", "Spoon. Acme"]
    titles_only = load_interactions(
        path,
        user_column="uid",
        item_column="item",
        timestamp_column="ts",
        items_path=items,
        item_text_columns=["title"],
    )
    assert titles_only["items"]["text"][0] == "Red mug, large"
    assert titles_only["sequences"].column_names == ["user_id", "item_ids", "timestamps"]


def test_generic_jsonl_gz_round_trip_with_iso_times(tmp_path):
    path = tmp_path / "log.jsonl.gz"
    with gzip.open(path, "wt") as file:
        for user, item, time, rating in INTERACTIONS:
            iso = f"2024-01-01T00:0{time // 100}:00"  # 100 -> 00:01, 200 -> 00:02, 300 -> 00:03
            file.write(json.dumps({"user_id": user, "item_id": item, "timestamp": iso, "rating": rating}) + "\n")
    data = load_interactions(path, rating_column="rating")
    expected = _expected_sequences()
    assert data["sequences"]["item_ids"] == expected["item_ids"]
    assert data["sequences"]["ratings"] == expected["ratings"]
    assert data["sequences"]["timestamps"][1] == [1704067260.0, 1704067380.0]


def test_generic_parquet_and_file_order(tmp_path):
    path = tmp_path / "log.parquet"
    Dataset.from_dict({"user_id": [7, 7, 3], "item_id": [10, 2, 5]}).to_parquet(path)
    data = load_interactions(path, timestamp_column=None)
    assert data["sequences"].to_dict() == {"user_id": ["3", "7"], "item_ids": [["5"], ["10", "2"]]}
    assert data["items"]["item_id"] == ["2", "5", "10"]  # integer ids in numeric order, as strings


# ---------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------


def test_missing_files_name_the_path(tmp_path):
    missing = tmp_path / "nope.txt"
    for load in (load_s3rec, load_inter_json, load_interactions):
        with pytest.raises(FileNotFoundError, match="nope.txt"):
            load(missing)
    with pytest.raises(FileNotFoundError, match=r"nope\.inter"):
        load_recbole(tmp_path / "nope")
    sequences = tmp_path / "s.txt"
    sequences.write_text("1 1 2\n")
    with pytest.raises(FileNotFoundError, match="meta.json.*asin"):
        load_s3rec(sequences, tmp_path / "meta.json")


def test_s3rec_errors_give_line_numbers(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("1 1 2 3\n2\n")
    with pytest.raises(ValueError, match=r"bad.txt, line 2: user '2' has zero items"):
        load_s3rec(path)
    path.write_text("1 1 2 3\nuser_id,item_id\n")
    with pytest.raises(ValueError, match=r"line 2: malformed id 'user_id,item_id'.*user_id item_id"):
        load_s3rec(path)
    path.write_text("1 1 2\n2 3 4\n1 5\n")
    with pytest.raises(ValueError, match=r"line 3: user '1' already appeared on line 1"):
        load_s3rec(path)
    meta = tmp_path / "item2attributes.json"
    meta.write_text('{"1": [3, 4]}')
    path.write_text("1 1 2\n")
    with pytest.raises(ValueError, match="item2attributes.json: item '1'.*attribute ids"):
        load_s3rec(path, meta)


def test_inter_json_errors(tmp_path):
    path = tmp_path / "inter.json"
    path.write_text('{"0": [1, 2], "1": [3], "0": [4]}')
    with pytest.raises(ValueError, match="inter.json: duplicate user id '0'"):
        load_inter_json(path)
    path.write_text('{"0": [1, 2], "1": []}')
    with pytest.raises(ValueError, match="user '1' has zero items"):
        load_inter_json(path)
    path.write_text('{"0": [1, 2],\n "1": [3,}')
    with pytest.raises(ValueError, match="inter.json, line 2: invalid JSON"):
        load_inter_json(path)


def test_recbole_errors(tmp_path):
    path = tmp_path / "toy.inter"
    path.write_text("user_id:token\titem_id:token\n1\t2\n1\t2\t3\n")
    with pytest.raises(ValueError, match=r"toy.inter, line 3: 3 tab-separated fields, expected 2"):
        load_recbole(tmp_path)
    path.write_text("user_id:token\titem_id:int\n1\t2\n")
    with pytest.raises(ValueError, match=r"line 1: header field 'item_id:int'"):
        load_recbole(tmp_path / "toy")
    path.write_text("user_id:token\titem_id:token\ttimestamp:float\n1\t2\tnoon\n")
    with pytest.raises(ValueError, match=r"line 2, field 'timestamp': 'noon' is not a valid float"):
        load_recbole(path)


def test_recbole_round_trip_with_item_and_user_files(tmp_path):
    (tmp_path / "toy.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n2\t10\t4\t50\n1\t10\t5\t20\n1\t3\t1\t10\n"
    )
    (tmp_path / "toy.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n3\tThe Movie\t1999\tDrama War\n"
    )
    (tmp_path / "toy.user").write_text("user_id:token\tage:token\n1\t30\n2\t40\n")
    data = load_recbole(tmp_path)
    assert data["sequences"].to_dict() == {
        "user_id": ["1", "2"],
        "item_ids": [["3", "10"], ["10"]],
        "timestamps": [[10.0, 20.0], [50.0]],
        "ratings": [[1.0, 5.0], [4.0]],
    }
    assert data["items"]["item_id"] == ["3", "10"]
    assert data["items"]["text"] == ["The Movie (1999). Drama, War", ""]
    assert data["users"].to_dict() == {"user_id": ["1", "2"], "age": ["30", "40"]}


def test_generic_errors_name_columns_and_arguments(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user,item,time\nu,i,1\n")
    with pytest.raises(ValueError, match=r"no column 'user_id'.*\['user', 'item', 'time'\].*user_column="):
        load_interactions(path)
    with pytest.raises(ValueError, match=r"no column 'timestamp'.*timestamp_column=None"):
        load_interactions(path, user_column="user", item_column="item")
    path.write_text("user,item,time\nu,i,1\nu,i\n")
    with pytest.raises(ValueError, match=r"log.csv, line 3: 2 fields"):
        load_interactions(path, user_column="user", item_column="item", timestamp_column="time")
    path.write_text("user,item,time\nu,i,yesterday\n")
    with pytest.raises(ValueError, match=r"line 2, column 'time': timestamp 'yesterday'"):
        load_interactions(path, user_column="user", item_column="item", timestamp_column="time")
    path.write_text("user,item,time\nu,,1\n")
    with pytest.raises(ValueError, match=r"line 2, column 'item': invalid id ''"):
        load_interactions(path, user_column="user", item_column="item", timestamp_column="time")
    with pytest.raises(ValueError, match=r"item_text_columns=\['title'\] needs items_path"):
        load_interactions(path, item_text_columns=["title"])
    with pytest.raises(ValueError, match=r"log.xyz.*extension '.xyz'"):
        (tmp_path / "log.xyz").write_text("a")
        load_interactions(tmp_path / "log.xyz")


def test_unknown_bundled_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"'movies'.*\['beauty', 'scientific'\]"):
        load_bundled("movies")
    assert BUNDLED_DATASET_NAMES == ("beauty", "scientific")


def test_package_import_stays_light():
    code = "import sys, trainers, trainers.data; assert 'trl' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


def test_a_missing_local_directory_is_named_not_a_hub_repo_error(tmp_path):
    from trainers.data import check_local_dir

    assert check_local_dir(str(tmp_path), "--model_dir") == str(tmp_path)
    for missing in (str(tmp_path / "nope"), "./outputs/nope", "tests/nope", "a/b/c"):
        with pytest.raises(FileNotFoundError, match=r"--model_dir .*no such directory"):
            check_local_dir(missing, "--model_dir")
    assert check_local_dir("some-org/onerec-beauty", "--model_dir") == "some-org/onerec-beauty"  # a Hub repo id


def test_silent_misreads_of_logs_are_errors(tmp_path):
    from trainers.data import load_interactions, load_s3rec

    # A header line in an S3-Rec file would become a user named "user_id".
    (tmp_path / "seq.txt").write_text("user_id item_id item_id\n1 10 11\n2 12 13\n")
    with pytest.raises(ValueError, match=r"line 1: .* looks like a header line"):
        load_s3rec(tmp_path / "seq.txt")
    # ", " separators make " B1" another item than "B1".
    (tmp_path / "log.csv").write_text("user_id, item_id, timestamp\nu1, B1, 1\nu1,B1,2\n")
    with pytest.raises(ValueError, match=r"id ' B1' has spaces around it.*sep=', '"):
        load_interactions(tmp_path / "log.csv")
    # Seconds and milliseconds mixed would sort silently wrong.
    (tmp_path / "mixed.csv").write_text("user_id,item_id,timestamp\nu1,a,1600000000\nu1,b,1600000001000\n")
    with pytest.raises(ValueError, match="mix seconds .* and milliseconds"):
        load_interactions(tmp_path / "mixed.csv")
    (tmp_path / "ms.csv").write_text("user_id,item_id,timestamp\nu1,a,1600000002000\nu1,b,1600000001000\n")
    assert load_interactions(tmp_path / "ms.csv")["sequences"][0]["item_ids"] == ["b", "a"]  # one unit: fine


def test_undecodable_and_truncated_files_are_named_with_their_line(tmp_path):
    from trainers.data import load_interactions

    path = tmp_path / "seq.txt"
    path.write_bytes(b"1 1 2 3\n2 4 5\n3 6 \xe9t\xe9\n")  # latin-1 bytes on line 3
    with pytest.raises(ValueError, match=r"seq.txt, line 3: not UTF-8 text .*Re-save the file as UTF-8"):
        load_s3rec(path)
    csv_path = tmp_path / "log.csv"
    csv_path.write_bytes(b"user_id,item_id\nu1,a\nu2,caf\xe9\n")
    with pytest.raises(ValueError, match=r"log.csv, line \d: not UTF-8 text"):
        load_interactions(csv_path)
    gz = tmp_path / "seq.txt.gz"
    data = gzip.compress(("".join(f"{u} {u} {u + 1} {u + 2}\n" for u in range(2000))).encode())
    gz.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"seq.txt.gz: truncated or corrupted gzip data after line \d+"):
        load_s3rec(gz)


_ID = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-", min_size=1, max_size=6)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    logs=st.dictionaries(_ID, st.lists(_ID, min_size=1, max_size=6), min_size=1, max_size=6),
    fmt=st.sampled_from(["s3rec", "s3rec.gz", "inter_json", "recbole", "csv", "tsv", "jsonl", "parquet"]),
)
def test_every_format_loads_back_the_same_users_items_and_order(tmp_path_factory, logs, fmt):
    # Property: random logs written in each supported format load back to the same {user: [items in order]}.
    folder = tmp_path_factory.mktemp(fmt.replace(".", "_"))
    rows = [(user, item, float(step)) for user, items in logs.items() for step, item in enumerate(items)]
    if fmt.startswith("s3rec"):
        text = "".join(f"{user} {' '.join(items)}\n" for user, items in logs.items())
        path = folder / ("seq.txt.gz" if fmt.endswith(".gz") else "seq.txt")
        path.write_bytes(gzip.compress(text.encode()) if fmt.endswith(".gz") else text.encode())
        data = load_s3rec(path)
    elif fmt == "inter_json":
        (folder / "inter.json").write_text(json.dumps(logs))
        data = load_inter_json(folder / "inter.json")
    elif fmt == "recbole":
        lines = ["user_id:token\titem_id:token\ttimestamp:float"] + [f"{u}\t{i}\t{t}" for u, i, t in rows]
        (folder / "log.inter").write_text("\n".join(lines) + "\n")
        data = load_recbole(folder / "log.inter")
    elif fmt == "parquet":
        columns = dict(zip(("user_id", "item_id", "timestamp"), map(list, zip(*rows))))
        Dataset.from_dict(columns).to_parquet(folder / "log.parquet")
        data = load_interactions(folder / "log.parquet")
    elif fmt == "jsonl":
        text = "".join(json.dumps({"user_id": u, "item_id": i, "timestamp": t}) + "\n" for u, i, t in rows)
        (folder / "log.jsonl").write_text(text)
        data = load_interactions(folder / "log.jsonl")
    else:
        sep = "," if fmt == "csv" else "\t"
        text = (
            sep.join(("user_id", "item_id", "timestamp")) + "\n" + "".join(f"{u}{sep}{i}{sep}{t}\n" for u, i, t in rows)
        )
        (folder / f"log.{fmt}").write_text(text)
        data = load_interactions(folder / f"log.{fmt}")
    loaded = dict(zip(data["sequences"]["user_id"], data["sequences"]["item_ids"]))
    assert loaded == logs
