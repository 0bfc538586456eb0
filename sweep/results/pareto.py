"""The Pareto front of a sweep, computed by our own code from the trials' MLflow runs.

Tune's `get_best_result` is single-metric; here a trial is on the front when it satisfies the constraints
and no other feasible trial is at least as good on every objective and strictly better on one.
`python -m sweep.results.pareto --experiment NAME` re-prints the table of the latest sweep at any time.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sweep import mlflow_store
from sweep.space.config import ConfigError, Constraint


@dataclass
class Point:
    """One trial as the front sees it."""

    run_id: str
    metrics: dict[str, float]
    params: dict[str, str] = field(default_factory=dict)
    status: str = "ok"
    name: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    start_time: int | None = None  # the MLflow run's start (ms since the epoch): the order trials began in


def _value(p: Point, metric: str) -> float | None:
    v = p.metrics.get(metric)
    return None if v is None or not math.isfinite(v) else float(v)


def feasible(p: Point, objectives: Mapping[str, str], constraints: Mapping[str, Constraint],
             baseline: Mapping[str, float] | None = None) -> bool:
    """Finished, every objective measured, every constraint met."""
    if p.status != "ok" or any(_value(p, m) is None for m in objectives):
        return False
    for metric, c in constraints.items():
        v = _value(p, metric)
        if v is None or not c.satisfied(v, (baseline or {}).get(metric)):
            return False
    return True


def dominates(a: Point, b: Point, objectives: Mapping[str, str]) -> bool:
    """a is no worse than b on every objective and strictly better on at least one."""
    better = False
    for metric, mode in objectives.items():
        x, y = _value(a, metric), _value(b, metric)
        if mode == "max":
            x, y = -x, -y
        if x > y:
            return False
        better = better or x < y
    return better


def pareto_front(points: Sequence[Point], objectives: Mapping[str, str],
                 constraints: Mapping[str, Constraint] | None = None,
                 baseline: Mapping[str, float] | None = None) -> list[Point]:
    ok = [p for p in points if feasible(p, objectives, constraints or {}, baseline)]
    return [p for p in ok if not any(dominates(q, p, objectives) for q in ok if q is not p)]


def knee(front: Sequence[Point], objectives: Mapping[str, str]) -> Point:
    """The point closest to the ideal after scaling each objective to [0, 1] over the front (0 = best)."""
    if not front:
        raise ValueError("the front is empty: no trial satisfied the constraints")

    def scaled(p: Point) -> float:
        d = 0.0
        for metric, mode in objectives.items():
            vals = [_value(q, metric) for q in front]
            lo, hi = min(vals), max(vals)
            x = 0.0 if hi == lo else (_value(p, metric) - lo) / (hi - lo)
            d += (1 - x if mode == "max" else x) ** 2
        return d

    return min(front, key=scaled)


REPORTED = ("retain_trace_acc", "trace_coherence", "trace_leak/heldout")  # columns beside the objectives
FLAG_TAG = "objective_check"  # set by the trial when its forget or unthink term did not fall


def _iv(metrics: Mapping[str, float], metric: str) -> tuple[float, float] | None:
    lo, hi = metrics.get(f"{metric}_lo"), metrics.get(f"{metric}_hi")
    return None if lo is None or hi is None else (float(lo), float(hi))


def indistinguishable(front: Sequence[Point], best: Point, objectives: Mapping[str, str]) -> list[Point]:
    """Front points whose 95% intervals overlap the knee's on every objective (no interval: not claimed)."""
    out = []
    for p in front:
        if p.run_id == best.run_id:
            continue
        ivs = [(_iv(p.metrics, m), _iv(best.metrics, m)) for m in objectives]
        if all(a is not None and b is not None and a[0] <= b[1] and b[0] <= a[1] for a, b in ivs):
            out.append(p)
    return out


def knee_line(front: Sequence[Point], best: Point, objectives: Mapping[str, str]) -> str:
    same = indistinguishable(front, best, objectives)
    names = ", ".join(p.name for p in same) or "none"
    return (f"knee: {best.name} (run {best.run_id}); indistinguishable from it on the selection split "
            f"(95% intervals overlap on every objective): {names}")


def format_table(points: Sequence[Point], front: Sequence[Point], objectives: Mapping[str, str],
                 params: Sequence[str], baseline: Mapping[str, float] | None = None,
                 extra: Sequence[str] = ()) -> str:
    """Front first, then the rest; the baseline as the first row when given. Objectives with their 95%
    interval; `!` marks a trial whose forget or unthink loss term did not fall."""
    on_front = {p.run_id for p in front}
    metrics = list(objectives) + [m for m in extra if m not in objectives]
    names = {p.run_id: (p.name or p.run_id) + ("" if p.status == "ok" else f" ({p.status})") for p in points}
    width = max([20, *(len(n) + 2 for n in names.values())])  # full names: `sweep.results.export --run` takes the id
    head = (f"{'':2}{'trial':<{width}}" + "".join(f"{m:>{_w(m, objectives)}}" for m in metrics)
            + "".join(f"{k:>13}" for k in params) + "  run")
    rows = [head]
    if baseline:
        rows.append(f"{'':2}{'baseline':<{width}}" + "".join(_cell(baseline, m, objectives) for m in metrics))
    order = sorted(points, key=lambda p: (p.run_id not in on_front, p.name))
    flagged = 0
    for p in order:
        mark = ("*" if p.run_id in on_front else " ") + ("!" if p.tags.get(FLAG_TAG) else " ")
        flagged += bool(p.tags.get(FLAG_TAG))
        rows.append(mark + f"{names[p.run_id]:<{width}}" + "".join(_cell(p.metrics, m, objectives) for m in metrics)
                    + "".join(f"{_short(p.params.get(k)):>13}" for k in params) + f"  {p.run_id}")
    rows.append(f"* = Pareto front ({len(front)} of {len(points)} trials); objectives with their 95% interval "
                "on the selection split")
    if flagged:
        rows.append(f"! = the trial's forget or unthink loss term did not fall ({flagged} trials; its metrics may "
                    "come from a disturbance, not the misdirection R2MU optimises: see train/rel/* in MLflow)")
    return "\n".join(rows)


def _w(metric: str, objectives: Mapping[str, str]) -> int:
    return max(24, len(metric) + 2) if metric in objectives else max(12, len(metric) + 2)


def _cell(metrics: Mapping[str, float], metric: str, objectives: Mapping[str, str]) -> str:
    v = metrics.get(metric)
    v = None if v is None or not math.isfinite(v) else float(v)
    width = _w(metric, objectives)
    if v is None:
        return f"{'-':>{width}}"
    iv = _iv(metrics, metric)
    text = f"{v:.3f} [{iv[0]:.2f}, {iv[1]:.2f}]" if iv and metric in objectives else f"{v:.4g}"
    return f"{text:>{width}}"


def _short(v: str | None) -> str:
    if v is None:
        return "-"
    try:
        return f"{float(v):.4g}"
    except ValueError:
        return v[:13]


TEST_COLUMNS = ("trace_leak/trained", "trace_leak/heldout", "forget_acc/heldout", "prefill_acc",
                "trace_coherence", "retain_trace_acc")


def test_table(tracking_uri: str, experiment: str, parent_run_id: str | None = None,
               objectives: Mapping[str, str] | None = None, extra: Sequence[str] = ()) -> str:
    """The final evaluation: one column per run (baseline, then every trial with `test/` metrics), one row per
    metric (objectives first), each on the test split with its 95% interval, and the item count."""
    parent, points, baseline = read_sweep(tracking_uri, experiment, parent_run_id)
    runs = [("baseline", baseline or {})] + [(("*" if p.tags.get("pareto") == "true" else "") + p.name, p.metrics)
                                            for p in points if any(k.startswith("test/") for k in p.metrics)]
    if not any(k.startswith("test/") for _, m in runs for k in m):
        return "(no test-split evaluation yet: python -m sweep.run ... runs it after the search)"
    objectives = objectives or {}
    names = list(dict.fromkeys([*objectives, *map(plain_metric, objectives), *extra, *TEST_COLUMNS]))
    names = [m for m in names if any(f"test/{m}" in r for _, r in runs)]
    names = list(dict.fromkeys(names + attack_rows([k.removeprefix("test/") for _, r in runs for k in r], objectives)))
    width = max([24, *(len(name) + 2 for name, _ in runs)])  # full trial names
    label_width = max([20, *(len(m) + 2 for m in names)])
    rows = [f"{'test split':<{label_width}}{'items':>6}" + "".join(f"{name:>{width}}" for name, _ in runs)]
    for m in names:
        label = f"{m} ({objectives[m]})" if m in objectives else m
        n = max(int(r.get(f"test/{m}_n", 0)) for _, r in runs)
        cells = []
        for _, r in runs:
            v, iv = r.get(f"test/{m}"), _iv(r, f"test/{m}")
            text = "-" if v is None else f"{v:.3f} [{iv[0]:.2f}, {iv[1]:.2f}]" if iv else f"{v:.4g}"
            cells.append(f"{text:>{width}}")
        rows.append(f"{label:<{label_width}}{n or '-':>6}" + "".join(cells))
    rows.append("95% intervals; * = on the Pareto front (chosen on the selection split)" +
                ("; attack/<name>/recovery/<m>: the share of what unlearning removed that the attack brings back"
                 if any(m.startswith("attack/") for m in names) else ""))
    return "\n".join(rows)


def plain_metric(metric: str) -> str:
    """The metric an attack metric measures again: `attack/int4/trace_leak` -> `trace_leak`."""
    return metric.split("/", 2)[2] if metric.startswith("attack/") else metric


def attack_rows(keys: Sequence[str], objectives: Mapping[str, str]) -> list[str]:
    """The attack metrics worth a row (eval/attacks.py): each attack's value of every objective (and of its
    held-out facts), the probe's accuracy and control, and the recovery of each objective."""
    plain = {plain_metric(m) for m in objectives}  # attack/relearn/trace_leak as an objective: trace_leak rows
    shown = plain | {f"{m}/heldout" for m in plain} | {"probe_acc", "probe_control_acc"} | \
        {f"recovery/{m}" for m in plain}
    rows = {k for k in keys if k.startswith("attack/") and k.split("/", 2)[-1] in shown}
    return sorted(rows, key=lambda k: (k.split("/")[1], "recovery/" in k, k))


def plot_front(points: Sequence[Point], front: Sequence[Point], objectives: Mapping[str, str],
               out: str | Path, baseline: Mapping[str, float] | None = None, title: str = "",
               infeasible: set[str] = frozenset()) -> Path:
    """One panel per pair of objectives: all trials, the front highlighted, trials that break a constraint
    as crosses, the baseline as a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(objectives)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]] or [(names[0], names[0])]
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.6 * len(pairs), 4.2), squeeze=False)
    on_front = {p.run_id for p in front}
    for ax, (x, y) in zip(axes[0], pairs, strict=True):
        rest = [p for p in points if p.run_id not in on_front and _value(p, x) is not None
                and _value(p, y) is not None]
        ok = [p for p in rest if p.run_id not in infeasible]
        bad = [p for p in rest if p.run_id in infeasible]
        ax.scatter([_value(p, x) for p in ok], [_value(p, y) for p in ok], c="0.6", s=24, label="trials")
        if bad:
            ax.scatter([_value(p, x) for p in bad], [_value(p, y) for p in bad], c="0.6", marker="x", s=30,
                       label="breaks a constraint")
        ax.scatter([_value(p, x) for p in front], [_value(p, y) for p in front], c="tab:red", s=40,
                   label="Pareto front")
        if baseline and x in baseline and y in baseline:
            ax.scatter([baseline[x]], [baseline[y]], marker="*", s=220, c="tab:blue", label="baseline (base model)")
        ax.set_xlabel(f"{x} ({objectives[x]})")
        ax.set_ylabel(f"{y} ({objectives[y]})")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# ------------------------------------------------------------------ MLflow side


def read_sweep(tracking_uri: str, experiment: str, parent_run_id: str | None = None):
    """(parent run, trial points, baseline metrics) of the latest (or the given) sweep in the experiment."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"no MLflow experiment {experiment!r} at {tracking_uri}; "
                         f"{mlflow_store.known_experiments(client)}")
    if parent_run_id is None:
        parents = client.search_runs([exp.experiment_id], "tags.role = 'sweep'", order_by=["start_time DESC"],
                                     max_results=1)
        if not parents:
            raise ValueError(f"experiment {experiment!r} has no sweep run yet")
        parent = parents[0]
    else:
        parent = client.get_run(parent_run_id)
    pid = parent.info.run_id
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{pid}'", max_results=5000)
    points, baseline = [], None
    for r in children:
        role = r.data.tags.get("role")
        if role == "baseline":
            baseline = dict(r.data.metrics)
        elif role == "trial":
            points.append(Point(r.info.run_id, dict(r.data.metrics), dict(r.data.params),
                                r.data.tags.get("status", "ok"), r.info.run_name or "", dict(r.data.tags),
                                r.info.start_time))
    return parent, sorted(points, key=lambda p: p.name), baseline


def baseline_run_id(tracking_uri: str, parent_run_id: str) -> str | None:
    """The sweep's baseline child run (the base model evaluated with the sweep's settings)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}' and "
                              "tags.role = 'baseline'", max_results=1)
    return runs[0].info.run_id if runs else None


def update_front(tracking_uri: str, experiment: str, objectives: Mapping[str, str],
                 constraints: Mapping[str, Constraint], params: Sequence[str], parent_run_id: str | None = None,
                 out_dir: str | Path | None = None) -> tuple[str, list[Point], Point | None]:
    """Tag the front's runs `pareto=true` (others false), log the plot and table to the parent run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    parent, points, baseline = read_sweep(tracking_uri, experiment, parent_run_id)
    front = pareto_front(points, objectives, constraints, baseline)
    ids = {p.run_id for p in front}
    for p in points:
        client.set_tag(p.run_id, "pareto", "true" if p.run_id in ids else "false")
    best = knee(front, objectives) if front else None
    shown = list(dict.fromkeys([*constraints, *(m for m in REPORTED if any(m in p.metrics for p in points))]))
    table = format_table(points, front, objectives, params, baseline, extra=shown)
    if out_dir is not None and points:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        bad = {p.run_id for p in points if not feasible(p, objectives, constraints, baseline)}
        png = plot_front(points, front, objectives, out / "pareto.png", baseline, title=experiment, infeasible=bad)
        report = table
        if best is not None:
            report += "\n" + knee_line(front, best, objectives)
        if any(k.startswith("test/") for p in points for k in p.metrics):
            report += "\n\n" + test_table(tracking_uri, experiment, parent.info.run_id, objectives, list(constraints))
        (out / "pareto.txt").write_text(report + "\n")
        client.log_artifact(parent.info.run_id, str(png))
        client.log_artifact(parent.info.run_id, str(out / "pareto.txt"))
        client.set_tag(parent.info.run_id, "front_size", str(len(front)))
        if best is not None:
            client.set_tag(parent.info.run_id, "knee_run_id", best.run_id)
    return table, front, best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sweep.results.pareto", description="Print a sweep's Pareto front.")
    ap.add_argument("--experiment", required=True, help="MLflow experiment (the space file's name)")
    mlflow_store.add_flag(ap)
    ap.add_argument("--space", help="the space file (objectives and constraints); default: the sweep's own copy")
    ap.add_argument("--parent", help="a sweep's parent run id (default: the latest sweep)")
    args = ap.parse_args(argv)
    try:
        args.tracking_uri = mlflow_store.existing_store(args.tracking_uri)
        cfg = _sweep_config(args)
        params = list(cfg.search.searched())
        table, front, best = update_front(args.tracking_uri, args.experiment, cfg.search.objectives,
                                          cfg.search.constraints, params, args.parent)
    except (ValueError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table)
    if best is not None:
        print(knee_line(front, best, cfg.search.objectives))
    print("\n" + test_table(args.tracking_uri, args.experiment, args.parent, cfg.search.objectives,
                            list(cfg.search.constraints)))
    return 0


def _sweep_config(args: argparse.Namespace):
    """The space file given, or the copy the sweep logged to its parent run."""
    from sweep.space.config import load_space
    from sweep.tracking import logged_config

    if args.space:
        return load_space(args.space)
    parent, _, _ = read_sweep(args.tracking_uri, args.experiment, args.parent)
    return logged_config(args.tracking_uri, parent.info.run_id)


if __name__ == "__main__":
    sys.exit(main())
