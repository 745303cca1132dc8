"""Training-pair constructions (trainers.data.windows): exact windows on tiny sequences, written out by hand."""

from collections import Counter

import numpy as np
import pytest
from datasets import Dataset

from trainers.data import RandomWindowDataset, build_session_samples, leave_one_out_split, tokenize_session_samples
from trainers.data.windows import random_window_bounds, window_bounds


def _splits(rows):
    # Two extra items per user: leave-one-out keeps them for validation and test.
    return leave_one_out_split(
        Dataset.from_dict({"user_id": list(rows), "item_ids": [items + ["val", "test"] for items in rows.values()]})
    )


def _pairs(dataset):
    return [(tuple(h), tuple(t)) for h, t in zip(dataset["history"], dataset["target"])]


def test_prefix_and_all_windows_by_hand():
    splits = _splits({"u": ["a", "b", "c", "d"], "v": ["x"], "w": ["p", "q"]})
    prefix = build_session_samples(splits, max_history=2, session_length=2, pairs="prefix")["train"]
    assert _pairs(prefix) == [
        (("a",), ("b", "c")),
        (("a", "b"), ("c", "d")),
        (("b", "c"), ("d",)),
        (("p",), ("q",)),
    ]
    windows = build_session_samples(splits, max_history=2, session_length=2, pairs="all_windows")["train"]
    assert _pairs(windows) == [
        (("a",), ("b", "c")),
        (("a", "b"), ("c", "d")),
        (("b",), ("c", "d")),
        (("b", "c"), ("d",)),
        (("c",), ("d",)),
        (("p",), ("q",)),
    ]
    assert windows["user_id"] == ["u"] * 5 + ["w"]
    # The default is today's prefix construction; an unknown name is refused with the choices.
    assert _pairs(build_session_samples(splits, max_history=2, session_length=2)["train"]) == _pairs(prefix)
    with pytest.raises(ValueError, match="all_windows"):
        build_session_samples(splits, pairs="sliding")
    with pytest.raises(ValueError, match="RandomWindowDataset"):
        build_session_samples(splits, pairs="random_window")


def test_all_windows_never_leak_and_cover_every_window():
    rng = np.random.default_rng(0)
    rows = {f"u{u}": [f"i{j}" for j in rng.integers(0, 50, size=rng.integers(1, 12))] for u in range(30)}
    splits = _splits(rows)
    for cap in (1, 3, 20):
        windows = build_session_samples(splits, max_history=cap, session_length=3, pairs="all_windows")["train"]
        got = Counter(zip(windows["user_id"], map(tuple, windows["history"]), map(tuple, windows["target"])))
        expected = Counter(
            (user, tuple(items[t - h : t]), tuple(items[t : t + 3]))
            for user, items in rows.items()
            for t in range(1, len(items))
            for h in range(1, min(t, cap) + 1)
        )
        assert got == expected  # every contiguous window once, nothing else (no validation/test item anywhere)


def test_random_window_is_a_seeded_uniform_draw_from_all_windows():
    offsets = np.array([0, 4, 5, 7])  # rows of 4, 1 and 2 items
    draws = [random_window_bounds(offsets, max_history=2, seed=3, epoch=epoch) for epoch in range(4000)]
    # One window per row with a target (row 1 has none), the same for the same (seed, epoch), another for another.
    assert all(list(d["rows"]) == [0, 2] for d in draws)
    again = random_window_bounds(offsets, max_history=2, seed=3, epoch=7)
    assert all(np.array_equal(again[key], draws[7][key]) for key in again)
    assert any(draws[0]["history_starts"][0] != d["history_starts"][0] for d in draws[1:10])
    # Row 0's windows (history start, target start) are all_windows' five, each drawn about 1/5 of the time.
    all_windows = window_bounds(offsets, "all_windows", 2)
    row0 = {(int(s), int(t)) for r, s, t in zip(*all_windows.values()) if r == 0}
    assert row0 == {(0, 1), (0, 2), (1, 2), (1, 3), (2, 3)}
    counts = Counter((int(d["history_starts"][0]), int(d["target_starts"][0])) for d in draws)
    assert set(counts) == row0
    assert all(abs(count / len(draws) - 0.2) < 0.03 for count in counts.values())


def test_random_window_dataset_tokenises_like_the_samples(small_tokenizer):
    items = list(small_tokenizer.item_ids)
    rows = {"u": items[:9], "v": items[20:23], "w": items[40:41]}
    splits = _splits(rows)
    dataset = RandomWindowDataset(splits["train"], small_tokenizer, max_history=3, session_length=2, seed=1)
    assert len(dataset) == 2  # w has a single training item: no window
    # Every drawn row is exactly the tokens of one of all_windows' samples for that user.
    windows = build_session_samples(splits, max_history=3, session_length=2, pairs="all_windows")["train"]
    tokenized = tokenize_session_samples(windows, small_tokenizer, max_history_items=3, session_length=2)
    allowed = {(tuple(r["input_ids"]), tuple(r["labels"])) for r in tokenized}
    seen = set()
    for epoch in range(30):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            row = dataset[index]
            pair = (tuple(row["input_ids"].tolist()), tuple(row["labels"].tolist()))
            assert pair in allowed
            assert row["num_history_items"] == (len(row["input_ids"]) - 1) // small_tokenizer.num_levels
            seen.add(pair)
    assert len(seen) > 5  # fresh windows across epochs
    first = [dataset[i]["input_ids"].tolist() for i in range(2)]
    dataset.set_epoch(3)
    dataset.set_epoch(29)
    assert [dataset[i]["input_ids"].tolist() for i in range(2)] == first  # a function of (seed, epoch) only
    with pytest.raises(ValueError, match="max_history=0"):
        RandomWindowDataset(splits["train"], small_tokenizer, max_history=0, session_length=2)
    unknown = _splits({"u": ["not-an-item", items[0]]})
    with pytest.raises(ValueError, match="not-an-item"):
        RandomWindowDataset(unknown["train"], small_tokenizer, max_history=3, session_length=2)


def test_evaluation_samples_keep_the_whole_history_with_no_cap():
    items = [f"i{j}" for j in range(60)]
    splits = _splits({"u": items})
    capped = build_session_samples(splits, max_history=20, session_length=1)
    whole = build_session_samples(splits, max_history=None, session_length=1)
    assert capped["test"]["history"] == [(items + ["val"])[-20:]]
    assert whole["test"]["history"] == [items + ["val"]]  # what "exclude the history" must exclude
    assert whole["validation"]["history"] == [items] and whole["validation"]["target"] == [["val"]]
    assert len(whole["train"]) == len(capped["train"]) == 59
