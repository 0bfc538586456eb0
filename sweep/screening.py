"""Screening (`eval.screen`): spend a full evaluation only on a trial that could still be on the Pareto front.

Each trial is first evaluated on a small fixed subset of the selection split (`eval.screen.items` per set), its
rates with intervals at `eval.screen.confidence`. It goes on to the rest of the selection split (the screen's
items are not evaluated again: both parts are rated together, `eval.result.merge`) unless, given the intervals,
it is out of the running:

- **infeasible**: a constraint fails even at the favourable end of the trial's interval, or
- **dominated**: a fully evaluated feasible trial is better on every objective and strictly on one, comparing
  that trial's unfavourable bound with this trial's favourable bound, both at the screen's confidence (the
  full trial's logged 95% interval rescaled by z_c / z_0.95, the normal approximation).

Both tests give the screened trial the benefit of the doubt, so a trial that might be on the front is not
dropped except by the chance the confidence allows. A screened-out trial reports its screening values to
Optuna and is logged with `status=screened`, `eval_stage=screen`; the front is made of fully evaluated trials
only (`sweep.results.pareto.feasible` needs `status=ok`). A metric without an interval counts as exact.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

from sweep.results.pareto import Point, _value, dominates, feasible
from sweep.space.config import Constraint


@dataclass(frozen=True)
class Verdict:
    go_on: bool
    reason: str  # why a trial was screened out ('' when it goes on)


def _bound(metrics: Mapping[str, float], metric: str, favourable_high: bool, scale: float = 1.0) -> float | None:
    """The end of the metric's interval that is good (favourable_high: the upper end) or its value; `scale`
    shrinks or widens the interval's half on that side (a 95% interval to another confidence)."""
    v = metrics.get(metric)
    if v is None:
        return None
    end = float(metrics.get(f"{metric}_hi" if favourable_high else f"{metric}_lo", v))
    return v + (end - v) * scale


def z_ratio(confidence: float) -> float:
    """How much narrower (< 1) or wider a `confidence` interval is than a 95% one, in the normal approximation."""
    return NormalDist().inv_cdf(0.5 + confidence / 2) / NormalDist().inv_cdf(0.975)


def screen(metrics: Mapping[str, float], full: Sequence[Point], objectives: Mapping[str, str],
           constraints: Mapping[str, Constraint], baseline: Mapping[str, float] | None = None,
           confidence: float = 0.95) -> Verdict:
    """Whether a trial screened with `metrics` (intervals at `confidence`) goes on to the full evaluation,
    against the fully evaluated trials `full` (only their feasible ones count; their 95% intervals are rescaled
    to `confidence`)."""
    scale = z_ratio(confidence)
    for metric, c in constraints.items():
        best = _bound(metrics, metric, favourable_high=c.op in (">=", ">"))
        if best is not None and not c.satisfied(best, (baseline or {}).get(metric)):
            return Verdict(False, f"{metric} {c} fails at the end of its interval ({best:.3f})")
    best_case = {m: _bound(metrics, m, favourable_high=(mode == "max")) for m, mode in objectives.items()}
    if any(v is None for v in best_case.values()):
        return Verdict(True, "")  # an objective was not measured: nothing to compare
    for p in full:
        if not feasible(p, objectives, constraints, baseline):
            continue
        worst_case = {m: _bound(p.metrics, m, favourable_high=(mode == "min"), scale=scale)
                      for m, mode in objectives.items()}
        if dominates(Point(p.run_id, worst_case), Point("screened", best_case), objectives):
            return Verdict(False, f"dominated by {p.name or p.run_id}")
    return Verdict(True, "")


def fully_evaluated(points: Sequence[Point]) -> list[Point]:
    """The trials whose evaluation covered the full selection split (every trial when nothing is screened)."""
    return [p for p in points if p.tags.get("eval_stage", "full") == "full" and _value(p, "eval_s") is not None]
