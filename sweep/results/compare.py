"""`r2mu-sweep compare --experiments organism organism-rmu`: two or more sweeps' Pareto fronts side by side.

The question a method comparison asks (R²MU against plain RMU, one sampler against another): whose front is
better under the same objectives and constraints? A method is one sweep, or several sweeps that differ only
in their seed: `--experiments r2mu=organism-s0,organism-s1,organism-s2 rmu=organism-rmu-s0,...` (a plain
name is a method of one seed, named after its experiment). Printed:
  - per method: its seeds and the mean, sample standard deviation and min-max over seeds of the hypervolume
    its fronts dominate (objectives are rates in [0, 1]; each is turned into a cost in [0, 1], so every sweep
    shares one reference point, the worst corner, and the ideal point scores 1);
  - per sweep: trials, front size, hypervolume and knee;
  - with `--at 8 16 24`: the hypervolume of the front of each sweep's first n trials (in the order their runs
    started), per sweep and as mean and spread over each method's seeds: how fast a sampler finds a front;
  - for each pair of methods, the coverage C(A, B): the share of B's front that A's front dominates. With
    several seeds it is the MEAN of C over every pair (a seed of A, a seed of B), not C of pooled fronts: a
    pool of more seeds would dominate more just by being larger, and with one seed each it is plain C.
With `--split test`, each front (chosen on the selection split, as the search saw it) is scored by its test-split
numbers (`test/<objective>`, from the sweep's final evaluation or `sweep.results.final`): hypervolume, coverage and knee
on items that played no part in the choice. `--at` reads the selection split only (other trials have no test
numbers).
An overlay plot shows every front on each pair of objectives, one colour per method.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sweep import mlflow_store
from sweep.results.pareto import Point, _value, dominates, knee, pareto_front, read_sweep

EXPERIMENTS_FORMS = ("give plain experiment names (one seed each) or METHOD=EXP,EXP,... (one method, several "
                     "seeds), e.g. --experiments r2mu=organism-s0,organism-s1 rmu=organism-rmu-s0,organism-rmu-s1")


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


@dataclass
class Spread:
    """A value over a method's seeds: mean, sample standard deviation (None for one seed), min and max."""

    values: list[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    def text(self, of: int) -> str:
        """`mean ± std [min-max]`; `(k of n seeds)` when only k of the method's n seeds have a value."""
        if not self.values:
            return "-"
        std = "-" if self.std is None else f"{self.std:.4f}"
        out = f"{self.mean:.4f} ± {std} [{min(self.values):.4f}-{max(self.values):.4f}]"
        return out + (f" ({len(self.values)} of {of} seeds)" if len(self.values) < of else "")


def parse_methods(items: Sequence[str]) -> dict[str, list[str]]:
    """`--experiments` items -> {method: [experiment per seed]}; a plain name is a one-seed method."""
    methods: dict[str, list[str]] = {}
    seen: set[str] = set()
    for item in items:
        method, eq, rest = item.partition("=")
        method = method.strip()
        exps = [e.strip() for e in rest.split(",")] if eq else [item]
        if not method or not all(exps):
            raise ValueError(f"--experiments: {item!r} has an empty method or experiment name; {EXPERIMENTS_FORMS}")
        if not eq and "," in item:
            raise ValueError(f"--experiments: {item!r} lists experiments without a method name; write "
                             f"METHOD={item} (e.g. r2mu={item})")
        if method in methods:
            raise ValueError(f"--experiments: method {method!r} is given twice; list all its seeds in one "
                             f"{method}=EXP,EXP,...")
        if twice := sorted({e for e in exps if e in seen or exps.count(e) > 1}):
            raise ValueError(f"--experiments: {', '.join(twice)} is listed more than once; each sweep counts "
                             "as one seed of one method")
        seen.update(exps)
        methods[method] = exps
    if len(seen) < 2:
        raise ValueError("--experiments: give two or more experiments to compare (two methods, or one method "
                         f"with several seeds); {EXPERIMENTS_FORMS}")
    return methods


def first_trials(points: Sequence[Point], n: int) -> list[Point]:
    """The sweep's first n trials in the order their runs started (a failed or diverged one counts: it used
    the budget). Name breaks ties, and orders a run without a start time last."""
    return sorted(points, key=lambda p: (p.start_time is None, p.start_time or 0, p.name))[:n]


def _front_hv(points: Sequence[Point], objectives: Mapping[str, str], constraints: Mapping,
              baseline: Mapping[str, float] | None) -> tuple[list[Point], float]:
    front = pareto_front(points, objectives, constraints, baseline)
    return front, hypervolume([costs(p, objectives) for p in front])


def on_test(front: Sequence[Point], objectives: Mapping[str, str], experiment: str) -> list[Point]:
    """The front's points with their test-split values as the objectives (a clear error for a trial that has
    none: the command that adds them)."""
    missing = [p.name or p.run_id for p in front if any(f"test/{m}" not in p.metrics for m in objectives)]
    if missing:
        raise ValueError(f"--split test: {experiment}: front trial(s) {', '.join(missing)} have no test-split "
                         f"numbers; python -m sweep.results.final --experiment {experiment} --runs "
                         + " ".join(p.run_id for p in front if (p.name or p.run_id) in missing))
    return [Point(p.run_id, {m: p.metrics[f"test/{m}"] for m in objectives}, p.params, p.status, p.name, p.tags,
                  p.start_time) for p in front]


def compare(tracking_uri: str, experiments: Sequence[str] | Mapping[str, Sequence[str]],
            objectives: Mapping[str, str], constraints: Mapping | None = None, at: Sequence[int] = (),
            split: str = "selection") -> dict:
    """Per sweep: points, front, knee, hypervolume (and at each n of `at`); per method: their spread over
    seeds; per pair of methods: the mean coverage over seed pairs. `experiments`: {method: [experiment per
    seed]}, or plain names (one seed each). A sweep with fewer than n trials has no value at n (None).
    `split="test"`: each front as chosen, scored by its test-split values (its points are then the front's)."""
    methods = dict(experiments) if isinstance(experiments, Mapping) else {e: [e] for e in experiments}
    constraints = constraints or {}
    if split == "test" and at:
        raise ValueError("--at reads the selection split (only the front has test numbers); drop --split test")
    sweeps = {}
    for method, names in methods.items():
        for name in names:
            parent, points, baseline = read_sweep(tracking_uri, name)
            front, hv = _front_hv(points, objectives, constraints, baseline)
            if split == "test":
                chosen, trials = (knee(front, objectives).run_id if front else None), len(points)
                points = front = on_test(front, objectives, name)
                hv = hypervolume([costs(p, objectives) for p in front])
                sweeps[name] = {"method": method, "parent": parent.info.run_id, "points": points,
                                "baseline": baseline, "front": front, "hypervolume": hv, "at": {},
                                "knee": next((p for p in front if p.run_id == chosen), None), "trials": trials}
                continue
            hv_at = {n: _front_hv(first_trials(points, n), objectives, constraints, baseline)[1]
                     if len(points) >= n else None for n in at}
            sweeps[name] = {"method": method, "parent": parent.info.run_id, "points": points, "baseline": baseline,
                            "front": front, "knee": knee(front, objectives) if front else None,
                            "hypervolume": hv, "at": hv_at}
    summary = {m: {"seeds": list(names), "hypervolume": Spread([sweeps[e]["hypervolume"] for e in names]),
                   "at": {n: Spread([sweeps[e]["at"][n] for e in names if sweeps[e]["at"][n] is not None])
                          for n in at}}
               for m, names in methods.items()}
    cover = {(a, b): statistics.fmean(coverage(sweeps[x]["front"], sweeps[y]["front"], objectives)
                                      for x in methods[a] for y in methods[b])
             for a in methods for b in methods if a != b}
    return {"methods": summary, "sweeps": sweeps, "coverage": cover}


def format_comparison(result: dict, objectives: Mapping[str, str]) -> str:
    methods, sweeps = result["methods"], result["sweeps"]
    mw = max(8, *(len(m) for m in methods)) + 2
    sw = max(12, *(len(n) for n in sweeps)) + 2
    rows = [f"{'method':<{mw}}{'seeds':>5}  hypervolume: mean ± std [min-max] over seeds"]
    for m, s in methods.items():
        rows.append(f"{m:<{mw}}{len(s['seeds']):>5}  {s['hypervolume'].text(len(s['seeds']))}")
    at = list(next(iter(methods.values()))["at"])
    rows.append("")
    rows.append(f"{'method':<{mw}}{'sweep':<{sw}}{'trials':>7}{'front':>7}{'hypervol':>10}"
                + "".join(f"{f'hv@{n}':>9}" for n in at) + "  knee: " + "  ".join(objectives))
    for name, s in sweeps.items():
        k = s["knee"]
        knee_text = "  ".join(f"{_value(k, m):.3f}" for m in objectives) if k else "-"
        hv_at = "".join(f"{'-' if s['at'][n] is None else format(s['at'][n], '.4f'):>9}" for n in at)
        rows.append(f"{s['method']:<{mw}}{name:<{sw}}{s.get('trials', len(s['points'])):>7}{len(s['front']):>7}"
                    f"{s['hypervolume']:>10.4f}{hv_at}  {knee_text}")
    if at:
        rows.append("")
        rows.append("hypervolume of the front of each sweep's first n trials (in start order), mean ± std "
                    "[min-max] over seeds; a sweep with fewer than n trials has no value at n (-):")
        for n in at:
            for m, s in methods.items():
                rows.append(f"  n={n:<5}{m:<{mw}}{s['at'][n].text(len(s['seeds']))}")
    if result["coverage"]:
        several = any(len(s["seeds"]) > 1 for s in methods.values())
        rows.append("")
        rows.append("coverage C(A, B) = share of B's front dominated by A's front"
                    + (" (mean over every pair of a seed of A and a seed of B):" if several else ":"))
        for (a, b), c in result["coverage"].items():
            rows.append(f"  C({a}, {b}) = {c:.2f}")
    return "\n".join(rows)


def plot_fronts(result: dict, objectives: Mapping[str, str], out: str | Path) -> Path:
    """Every sweep's front (and its other trials, faint) on each pair of objectives, one colour per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(objectives)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]] or [(names[0], names[0])]
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(result["methods"])}
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.6 * len(pairs), 4.2), squeeze=False)
    for ax, (x, y) in zip(axes[0], pairs, strict=True):
        labelled = set()
        for s in result["sweeps"].values():
            m, color = s["method"], colors[s["method"]]
            ax.scatter([_value(p, x) for p in s["points"]], [_value(p, y) for p in s["points"]], color=color,
                       alpha=0.2, s=18)
            seeds = len(result["methods"][m]["seeds"])
            label = None if m in labelled else f"{m} front" + (f" ({seeds} seeds)" if seeds > 1 else "")
            labelled.add(m)
            ax.scatter([_value(p, x) for p in s["front"]], [_value(p, y) for p in s["front"]], color=color, s=40,
                       label=label)
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


def _trial_count(text: str) -> int:
    n = int(text) if text.isdigit() else 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of trials >= 1")
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sweep.results.compare", description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiments", nargs="+", required=True, metavar="EXP | METHOD=EXP,EXP,...",
                    help="MLflow experiments (space file names): a plain name is a method of one seed; "
                         "METHOD=EXP,EXP,... is one method whose seeds are those sweeps")
    mlflow_store.add_flag(ap)
    ap.add_argument("--space", help="objectives and constraints from this space file (default: the first "
                                    "experiment's latest sweep)")
    ap.add_argument("--at", nargs="+", type=_trial_count, default=[], metavar="N",
                    help="also the hypervolume of the front of each sweep's first N trials (by run start), "
                         "e.g. --at 8 16 24")
    ap.add_argument("--split", choices=["selection", "test"], default="selection",
                    help="score each front on the selection split (what the search saw; default) or by its "
                         "test-split numbers (the front as chosen, on held-out items)")
    ap.add_argument("--plot", help="write the overlay plot here (PNG)")
    args = ap.parse_args(argv)
    from sweep.results.pareto import _sweep_config
    from sweep.space.config import ConfigError

    try:
        methods = parse_methods(args.experiments)
        uri = mlflow_store.existing_store(args.tracking_uri)
        first = next(iter(methods.values()))[0]
        cfg = _sweep_config(argparse.Namespace(space=args.space, tracking_uri=uri, experiment=first, parent=None))
        at = sorted(set(args.at))
        result = compare(uri, methods, cfg.search.objectives, cfg.search.constraints, at, args.split)
    except (ValueError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.split == "test":
        print("each front as chosen on the selection split, scored by its test-split numbers:")
    print(format_comparison(result, cfg.search.objectives))
    if args.plot:
        print(f"plot: {plot_fronts(result, cfg.search.objectives, args.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
