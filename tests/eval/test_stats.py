"""Intervals and the selection/test split (eval.stats), and how `load_sets` and `evaluate` use them."""

import random

import pytest
from pydantic import ValidationError

from eval.config import EvalConfig
from eval.stats import Interval, interval, interval_metrics, split_items, wilson
from eval.suite import evaluate_model, load_sets
from tests.eval.conftest import MCQ_ITEMS, write_jsonl


def test_wilson_known_values():
    # Wilson (1927) / Newcombe (1998) table: 0 of 10 -> [0, 0.2775]; 5 of 10 -> [0.2366, 0.7634]
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    lo, hi = wilson(64, 64)
    assert hi == 1.0 and lo == pytest.approx(0.9434, abs=1e-4)
    # more items, narrower: 0.5 on 64 items is about +-0.12, on 240 about +-0.06
    assert wilson(32, 64)[1] - wilson(32, 64)[0] > 2 * 0.11
    assert wilson(120, 240)[1] - wilson(120, 240)[0] < 2 * 0.065


def test_wilson_always_holds_its_rate():
    # rounding once put 0 of 3 at [5.6e-17, 0.56] and 10 of 10 at [0.72, 0.9999999999999999]: a rate outside
    # its own interval (CI caught it when a tiny model's letter accuracy came out 0 of 3)
    for n in range(1, 200):
        for k in range(n + 1):
            lo, hi = wilson(k, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0, (k, n, lo, hi)
    assert wilson(0, 3)[0] == 0.0 and wilson(10, 10)[1] == 1.0


def test_interval_binary_is_wilson_fractional_is_bootstrap():
    iv = interval([[1, 0, 1, 1]])
    assert iv.method == "wilson" and iv.value == 0.75 and iv.n == 4
    assert (iv.lo, iv.hi) == pytest.approx(wilson(3, 4))
    # k samples per item: scores in between; a seeded bootstrap over items, stable across calls
    rng = random.Random(0)
    scores = [rng.choice([0, 0.25, 0.5, 1]) for _ in range(200)]
    a, b = interval([scores], seed=3), interval([scores], seed=3)
    assert a.method == "bootstrap" and a == b and a.lo < a.value < a.hi
    # its width is about the normal approximation's: 2 x 1.96 x sd / sqrt(n)
    mean = sum(scores) / len(scores)
    sd = (sum((x - mean) ** 2 for x in scores) / (len(scores) - 1)) ** 0.5
    assert a.hi - a.lo == pytest.approx(2 * 1.96 * sd / len(scores) ** 0.5, rel=0.15)
    # a mean over two sets: the value is the mean of the set means, n counts every item
    two = interval([[1, 1, 1, 1], [0, 0]])
    assert two.value == 0.5 and two.n == 6 and two.method == "bootstrap"
    assert interval([[]]) is None and interval_metrics("x", None) == {}
    assert interval_metrics("x", Interval(0.5, 0.4, 0.6, 10, "wilson")) == {
        "x": 0.5, "x_lo": 0.4, "x_hi": 0.6, "x_n": 10.0}


def test_split_is_disjoint_stable_and_stratified():
    items = [{"id": f"i{k}", "group": "heldout" if k % 3 == 0 else "trained"} for k in range(300)]
    sel, test = split_items(items, 120, seed=0)
    assert len(test) == 120 and len(sel) == 180
    assert not {i["id"] for i in sel} & {i["id"] for i in test}
    # stratified: held-out facts are a third of both parts
    assert sum(i["group"] == "heldout" for i in test) == 40
    assert sum(i["group"] == "heldout" for i in sel) == 60
    # stable: the same split for the same seed, whatever the file order; another seed gives another split
    shuffled = items[:]
    random.Random(1).shuffle(shuffled)
    assert {i["id"] for i in split_items(shuffled, 120, seed=0)[1]} == {i["id"] for i in test}
    assert {i["id"] for i in split_items(items, 120, seed=1)[1]} != {i["id"] for i in test}
    # a fraction, and 0: everything in selection
    assert len(split_items(items, 0.5)[1]) == 150
    assert split_items(items, 0) == (items, [])
    with pytest.raises(ValueError, match="unique ids"):
        split_items([{"id": "a"}, {"id": "a"}], 0.5)


def test_load_sets_selection_and_test_are_disjoint(tmp_path):
    rows = [{"id": f"q{k}", "question": f"Which option {k}?", "choices": ["a", "b", "c", "d"], "answer": k % 4}
            for k in range(40)]
    path = write_jsonl(tmp_path / "f.jsonl", rows)
    cfg = EvalConfig.model_validate({"forget": {"set": "mcq", "path": str(path), "limit": 8, "test": 20}})
    sel, test = load_sets(cfg, "selection").forget.items, load_sets(cfg, "test").forget.items
    assert len(sel) == 8 and len(test) == 20
    assert not {i["id"] for i in sel} & {i["id"] for i in test}
    assert [i["id"] for i in load_sets(cfg, "selection").forget.items] == [i["id"] for i in sel]


def test_samples_need_sampling():
    with pytest.raises(ValidationError, match="samples > 1 with greedy"):
        EvalConfig.model_validate({"forget": {"set": "mcq"}, "samples": 4, "generation": {"temperature": 0}})


def test_group_metrics_and_samples(hf, tmp_path):
    """Items with a `group` get per-group rates; k samples per item are averaged per item (bootstrap)."""
    rows = [{**item, "group": "heldout" if item["id"] == "q3" else "trained"} for item in MCQ_ITEMS]
    path = write_jsonl(tmp_path / "g.jsonl", rows)
    cfg = EvalConfig.model_validate({"forget": {"set": "mcq", "path": str(path), "test": 0}, "samples": 3,
                                     "generation": {"temperature": 1.0, "max_new_tokens": 8}})
    result = evaluate_model(hf, cfg)
    m = result.metrics
    assert m["trace_leak/trained_n"] == 2 and m["trace_leak/heldout_n"] == 1
    assert m["forget_acc/trained_n"] == 2 and m["forget_acc/heldout_n"] == 1
    assert m["trace_leak_n"] == 3  # items, not samples
    leak_rows = [r for r in result.records if r["metric"] == "trace_leak"]
    assert sorted({r["sample"] for r in leak_rows}) == [0, 1, 2] and len(leak_rows) == 9
    # the three samples differ (seed + j): sampling at T=1 from a random model
    by_item = {}
    for r in leak_rows:
        by_item.setdefault(r["id"], set()).add(r["trace"])
    assert any(len(texts) > 1 for texts in by_item.values())
