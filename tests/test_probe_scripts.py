"""The probe scripts of docs/results.md: their pair construction, checked by hand on tiny windows."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dpo_probe():
    path = ROOT / "scripts" / "probes" / "dpo_against_real_next_item.py"
    spec = importlib.util.spec_from_file_location("dpo_against_real_next_item", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


HISTORIES = [["a", "b"], ["c"], ["d"], ["e", "x"]]
TARGETS = [["x", "y"], ["x"], ["z"], ["x"]]
RANKED = [["p", "x", "q"], ["x", "p", "q"], ["p", "q", "r"], ["p", "q", "r"]]


def test_top_wrong_items_are_rejected_for_every_window(dpo_probe):
    rows = dpo_probe.preference_rows(HISTORIES, TARGETS, RANKED, near_misses=False, negatives=1)
    # the last window's real item is in its history: never rankable, skipped
    assert [(row["history"], row["chosen"], row["rejected"]) for row in rows] == [
        (["a", "b"], ["x"], ["p"]),
        (["c"], ["x"], ["p"]),
        (["d"], ["z"], ["p"]),
    ]
    assert rows[0]["target"] == ["x", "y"]  # the whole real session, for the NTP term


def test_near_misses_reject_every_item_in_front_of_the_real_one(dpo_probe):
    rows = dpo_probe.preference_rows(HISTORIES, TARGETS, RANKED, near_misses=True, negatives=15)
    # window 0: "x" ranked second -> one pair against "p"; window 1: ranked first, nothing to fix; window 2: not found
    assert [(row["chosen"], row["rejected"]) for row in rows] == [(["x"], ["p"])]
    two_in_front = dpo_probe.preference_rows([["a"]], [["r"]], [["p", "q", "r"]], near_misses=True, negatives=15)
    assert [row["rejected"] for row in two_in_front] == [["p"], ["q"]]
    capped = dpo_probe.preference_rows([["a"]], [["r"]], [["p", "q", "r"]], near_misses=True, negatives=1)
    assert [row["rejected"] for row in capped] == [["p"]]
