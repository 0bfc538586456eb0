"""`python -m sweep.compare --experiments organism organism-rmu`: two or more sweeps' Pareto fronts side by side.

The question a method comparison asks (R²MU against plain RMU, or one space against another): whose front is
better under the same objectives and constraints? Printed per sweep: trials, front size, the hypervolume the
front dominates (objectives are rates in [0, 1]; each is turned into a cost in [0, 1], so the reference point
is the worst corner and the ideal point scores 1), and its knee; then, for each pair, the share of one
front's points that some point of the other front dominates (the coverage C(A, B)). An overlay plot shows
every front on each pair of objectives.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from sweep import mlflow_store
from sweep.pareto import Point, _value, dominates, knee, pareto_front, read_sweep


def costs(p: Point, objectives: Mapping[str, str]) -> tuple[float, ...]:
    """The point as costs in [0, 1] (0 = ideal): `min` objectives as they are, `max` ones as 1 - x."""
    out = []
    for metric, mode in objectives.items():
        x = _value(p, metric)
        if x is None or not 0.0 <= x <= 1.0:
            raise ValueError(f"{p.name or p.run_id}: objective {metric} = {x} is not a rate in [0, 1]; "
                             "the hypervolume needs bounded objectives (compare on trace_leak, forget_acc, "
                             "reason_acc, retain_acc, prefill_acc)")
        out.append(x if mode == "min" else 1.0 - x)
    return tuple(out)


def hypervolume(points: Sequence[tuple[float, ...]], ref: tuple[float, ...] | None = None) -> float:
    """Volume dominated by `points` (costs, minimised) inside the box up to `ref` (default all ones).

    Exact, by slicing along the last axis and recursing (HSO): fine for the tens of points a front has."""
    if not points:
        return 0.0
    ref = ref or (1.0,) * len(points[0])
    inside = sorted({p for p in points if all(a < r for a, r in zip(p, ref, strict=True))}, key=lambda p: p[-1])
    if not inside:
        return 0.0
    if len(ref) == 1:
        return ref[0] - inside[0][0]
    volume = 0.0
    for i, p in enumerate(inside):
        top = inside[i + 1][-1] if i + 1 < len(inside) else ref[-1]
        if top > p[-1]:  # the slab [p[-1], top) is dominated by every point at or below p[-1]
            volume += (top - p[-1]) * hypervolume([q[:-1] for q in inside[:i + 1]], ref[:-1])
    return volume


def coverage(a: Sequence[Point], b: Sequence[Point], objectives: Mapping[str, str]) -> float:
    """C(A, B): the share of B's points that some point of A dominates (1: A beats all of B)."""
    if not b:
        return 0.0
    return sum(any(dominates(x, y, objectives) for x in a) for y in b) / len(b)


def compare(tracking_uri: str, experiments: Sequence[str], objectives: Mapping[str, str],
            constraints: Mapping | None = None) -> dict:
    """Each sweep's points, front, knee and hypervolume, and the pairwise coverage, as plain data."""
    sweeps = {}
    for name in experiments:
        parent, points, baseline = read_sweep(tracking_uri, name)
        front = pareto_front(points, objectives, constraints or {}, baseline)
        sweeps[name] = {"parent": parent.info.run_id, "points": points, "baseline": baseline, "front": front,
                        "knee": knee(front, objectives) if front else None,
                        "hypervolume": hypervolume([costs(p, objectives) for p in front])}
    cover = {(a, b): coverage(sweeps[a]["front"], sweeps[b]["front"], objectives)
             for a in experiments for b in experiments if a != b}
    return {"sweeps": sweeps, "coverage": cover}


def format_comparison(result: dict, objectives: Mapping[str, str]) -> str:
    names = list(result["sweeps"])
    width = max(12, *(len(n) for n in names)) + 2
    head = f"{'sweep':<{width}}{'trials':>7}{'front':>7}{'hypervol':>10}  knee: " + "  ".join(objectives)
    rows = [head]
    for name, s in result["sweeps"].items():
        k = s["knee"]
        knee_text = "  ".join(f"{_value(k, m):.3f}" for m in objectives) if k else "-"
        rows.append(f"{name:<{width}}{len(s['points']):>7}{len(s['front']):>7}{s['hypervolume']:>10.4f}  "
                    f"{knee_text}")
    rows.append("coverage C(A, B) = share of B's front dominated by A's front:")
    for (a, b), c in result["coverage"].items():
        rows.append(f"  C({a}, {b}) = {c:.2f}")
    return "\n".join(rows)


def plot_fronts(result: dict, objectives: Mapping[str, str], out: str | Path) -> Path:
    """Every sweep's front (and its other trials, faint) on each pair of objectives."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(objectives)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]] or [(names[0], names[0])]
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.6 * len(pairs), 4.2), squeeze=False)
    for ax, (x, y) in zip(axes[0], pairs, strict=True):
        for color, (name, s) in zip(("tab:red", "tab:blue", "tab:green", "tab:purple"), result["sweeps"].items(),
                                    strict=False):
            ax.scatter([_value(p, x) for p in s["points"]], [_value(p, y) for p in s["points"]], c=color,
                       alpha=0.2, s=18)
            ax.scatter([_value(p, x) for p in s["front"]], [_value(p, y) for p in s["front"]], c=color, s=40,
                       label=f"{name} front")
        ax.set_xlabel(f"{x} ({objectives[x]})")
        ax.set_ylabel(f"{y} ({objectives[y]})")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sweep.compare", description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiments", nargs="+", required=True, help="MLflow experiments (space file names)")
    mlflow_store.add_flag(ap)
    ap.add_argument("--space", help="objectives and constraints from this space file (default: the first "
                                    "experiment's latest sweep)")
    ap.add_argument("--plot", help="write the overlay plot here (PNG)")
    args = ap.parse_args(argv)
    if len(args.experiments) < 2:
        print("error: --experiments: give two or more experiments to compare", file=sys.stderr)
        return 2
    from sweep.config import ConfigError
    from sweep.pareto import _sweep_config

    try:
        uri = mlflow_store.existing_store(args.tracking_uri)
        cfg = _sweep_config(argparse.Namespace(space=args.space, tracking_uri=uri,
                                               experiment=args.experiments[0], parent=None))
        result = compare(uri, args.experiments, cfg.search.objectives, cfg.search.constraints)
    except (ValueError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_comparison(result, cfg.search.objectives))
    if args.plot:
        print(f"plot: {plot_fronts(result, cfg.search.objectives, args.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
