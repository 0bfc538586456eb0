"""The front, the knee and the constraints, checked against a brute-force definition."""

from __future__ import annotations

import itertools
import random

from sweep.results.pareto import (
    Point,
    dominates,
    format_table,
    indistinguishable,
    knee,
    knee_line,
    pareto_front,
    plot_front,
)
from sweep.space.config import Constraint

OBJ = {"trace_leak": "min", "reason_acc": "max"}


def pt(i, leak, reason, retain=0.9, status="ok"):
    return Point(f"r{i}", {"trace_leak": leak, "reason_acc": reason, "retain_acc": retain}, status=status,
                 name=f"t{i}")


def test_front_by_hand():
    pts = [pt(0, 0.9, 0.95), pt(1, 0.1, 0.9), pt(2, 0.1, 0.8), pt(3, 0.0, 0.5), pt(4, 0.5, 0.95)]
    front = {p.run_id for p in pareto_front(pts, OBJ)}
    # r2 is dominated by r1 (same leak, worse reasoning); r0 by r4 (same reasoning, more leak)
    assert front == {"r1", "r3", "r4"}


def test_constraints_and_failures_are_excluded():
    pts = [pt(0, 0.0, 1.0, retain=0.5), pt(1, 0.2, 0.9), pt(2, 0.0, 1.0, status="diverged")]
    front = pareto_front(pts, OBJ, {"retain_acc": Constraint.parse(">= baseline - 0.05")}, {"retain_acc": 0.9})
    assert [p.run_id for p in front] == ["r1"]


def test_front_matches_brute_force():
    rng = random.Random(0)
    objectives = {"trace_leak": "min", "forget_acc": "min", "reason_acc": "max"}
    for _ in range(20):
        pts = [Point(f"r{i}", {m: round(rng.random(), 1) for m in objectives}) for i in range(15)]
        front = {p.run_id for p in pareto_front(pts, objectives)}
        sign = {m: (1 if d == "min" else -1) for m, d in objectives.items()}
        brute = set()
        for p in pts:
            beaten = False
            for q in pts:
                le = all(sign[m] * q.metrics[m] <= sign[m] * p.metrics[m] for m in objectives)
                lt = any(sign[m] * q.metrics[m] < sign[m] * p.metrics[m] for m in objectives)
                beaten |= le and lt
            if not beaten:
                brute.add(p.run_id)
        assert front == brute
        for a, b in itertools.permutations(pts, 2):
            assert not (dominates(a, b, objectives) and dominates(b, a, objectives))


def test_knee_is_the_balanced_point():
    front = [pt(0, 0.0, 0.2), pt(1, 0.05, 0.9), pt(2, 0.6, 1.0)]
    assert knee(front, OBJ).run_id == "r1"


def test_plot_is_written(tmp_path):
    pts = [pt(i, i / 10, 1 - i / 20) for i in range(6)]
    out = plot_front(pts, pareto_front(pts, OBJ), OBJ, tmp_path / "p.png", {"trace_leak": 0.9, "reason_acc": 1})
    assert out.stat().st_size > 5000 and out.read_bytes()[:4] == b"\x89PNG"


def with_iv(p: Point, half: float) -> Point:
    for m in OBJ:
        p.metrics[f"{m}_lo"], p.metrics[f"{m}_hi"] = p.metrics[m] - half, p.metrics[m] + half
    return p


def test_indistinguishable_from_the_knee_needs_overlap_on_every_objective():
    best = with_iv(pt(1, 0.05, 0.9), 0.05)
    close = with_iv(pt(2, 0.12, 0.85), 0.05)      # overlaps on both
    half = with_iv(pt(3, 0.0, 0.5), 0.05)         # overlaps on leak, not on reasoning
    no_iv = pt(4, 0.05, 0.9)                      # no interval logged: never claimed indistinguishable
    same = indistinguishable([best, close, half, no_iv], best, OBJ)
    assert [p.run_id for p in same] == ["r2"]
    line = knee_line([best, close, half], best, OBJ)
    assert "knee: t1" in line and line.endswith(": t2")


def test_table_prints_intervals_run_ids_and_flags():
    a, b = with_iv(pt(1, 0.05, 0.9), 0.04), pt(2, 0.5, 0.95)
    b.tags["objective_check"] = "did not fall: forget x1.12"
    table = format_table([a, b], [a], OBJ, ["layer"], {"trace_leak": 0.98, "reason_acc": 0.9})
    assert "0.050 [0.01, 0.09]" in table and "r1" in table.splitlines()[2]
    row_b = next(line for line in table.splitlines() if line[2:].startswith("t2"))
    assert row_b.startswith(" !") and "forget or unthink loss term did not fall (1 trials" in table


def test_loss_changes_and_objective_check():
    from sweep.lifecycle import loss_changes, rising_terms

    falling = [{"step": i, "forget": 10 - i, "unthink": 5.0, "loss": 20 - i} for i in range(10)]
    ch = loss_changes(falling)
    assert ch["train/rel/forget"] == 1 / 10 and ch["train/rel/unthink"] == 1.0
    assert rising_terms(ch) == "unthink x1.00"   # a flat term did not fall either
    rising = [{"step": i, "forget": 2.97 + i * 0.035, "unthink": 3.0 - i * 0.1} for i in range(10)]
    ch = loss_changes(rising)
    assert ch["train/rel/forget"] > 1 and rising_terms(ch).startswith("forget x1.1")
    assert loss_changes([]) == {}


def test_table_prints_full_trial_names():
    """Names are not cut (the run id beside each is what `export --run` and `final --runs` take)."""
    long = pt(3, 0.2, 0.8)
    long.name = "trial-0123456789abcdef-with-a-long-tail"
    table = format_table([pt(1, 0.05, 0.9), long], [long], OBJ, ["layer"], {"trace_leak": 0.9, "reason_acc": 0.9})
    head, base, *rows = table.splitlines()[:4]
    assert rows[0].startswith("* trial-0123456789abcdef-with-a-long-tail ") and rows[0].endswith("  r3")
    # the columns stay aligned: every row's cells end where the header's do
    assert len(head) - len("run") == len(rows[0]) - len("r3") == len(rows[1]) - len("r1")
    assert head.index("trace_leak") + len("trace_leak") == base.index("0.9") + len("0.9")
