"""bench/screen_replay.py's paired tests: why the sweep does not screen on paired differences (docs/screening.md)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("screen_replay", Path(__file__).parents[2] / "bench/screen_replay.py")
replay = importlib.util.module_from_spec(spec)
spec.loader.exec_module(replay)

IDS = {"s": [f"i{k}" for k in range(16)]}
OBJECTIVES = {"leak": "min", "acc": "max"}


def scores(leak: list[int], acc: list[int]) -> dict:
    per_item = {"leak": leak, "acc": acc}
    return {m: {"s": {i: float(x) for i, x in zip(IDS["s"], xs, strict=True)}} for m, xs in per_item.items()}


def test_a_tie_on_the_screen_items_proves_nothing_to_the_wilson_test_but_passes_the_bootstrap():
    full = scores([0] * 16, [1] * 8 + [0] * 8)
    trial = scores([1] + [0] * 15, [1] * 8 + [0] * 8)  # one item worse on leak, every acc item tied
    assert not replay.paired_dominates(full, trial, IDS, OBJECTIVES, 0.8, bootstrap=False)
    assert replay.paired_dominates(full, trial, IDS, OBJECTIVES, 0.8, bootstrap=True)
    assert replay.paired_record(full, trial, IDS, "leak", "min") == "1 better, 0 worse, 15 tied"


def test_clear_wins_on_every_objective_dominate_in_both_tests():
    full = scores([0] * 16, [1] * 16)
    trial = scores([1] * 5 + [0] * 11, [0] * 5 + [1] * 11)
    for bootstrap in (False, True):
        assert replay.paired_dominates(full, trial, IDS, OBJECTIVES, 0.8, bootstrap=bootstrap)
    # and never the other way round
    assert not replay.paired_dominates(trial, full, IDS, OBJECTIVES, 0.8, bootstrap=False)
