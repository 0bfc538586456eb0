"""Replay finished sweeps' per-item records through screening tests (#12): what could a screen drop at all?

    .venv/bin/python bench/screen_replay.py [--space search_spaces/organism.yaml] [--seeds 42 43 44]
        [--items 16] [--confidence 0.8]

Needs, per seed, the sweeps of `bench/screen_sweeps.py` in MLflow: `<space>-noscreen-s<seed>` (every trial
evaluated in full, its per-item records logged) and, if there is one, `<space>-screen<items>-s<seed>` (for f,
the screen's share of a full evaluation, and to check the replay; without it only q is printed). Runs no
model: each unscreened trial's screen is its own records on the screen's items (`eval.suite.load_sets(...,
"screen")`, the same items a screened sweep uses), compared, as a sweep would, with the trials fully evaluated
before it ended. Three tests:

- `screen`: the project's (`sweep.screening.screen`). Its replay must drop exactly what the screened sweep did.
- `paired`: `screen`, and also dominated when a full trial beats this one on every objective on the same
  items, paired: improvement lower bound = Wilson lower end of (items it wins) - Wilson upper end of (items it
  loses), each at the confidence, >= 0 on every objective, > 0 in wins on one. Sound, since a tie proves nothing.
- `bootstrap-paired`: the same with a percentile bootstrap of the paired differences: degenerate at 0 when
  the items tie, so it claims "at least as good" from ties. Shown to say why it is not used.

Printed per seed: trials infeasible / feasible off the front / on the front (selection split), what each test
drops of each kind (a test that drops a front trial is wrong), the model f + q(1 - f) of each test's q, and
the floor for any screen that evaluates the front in full: f + (front / trials)(1 - f).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from statistics import NormalDist

import numpy as np
from pydantic import ValidationError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from eval.config import ScreenConfig  # noqa: E402
from eval.stats import interval, interval_metrics, wilson  # noqa: E402
from eval.suite import load_sets  # noqa: E402
from sweep import screening  # noqa: E402
from sweep.results.pareto import Point, feasible, pareto_front, read_sweep  # noqa: E402
from sweep.space.config import ConfigError, load_space  # noqa: E402

# an item without a score (None: not judged) is left out, as `eval.suite` leaves it out of the rate
SCORE_COLUMN = {"trace_leak": "leak", "trace_coherence": "coherence"}  # the rest: `correct`
Scores = dict[str, dict[str, dict[str, float]]]  # metric -> set label -> item id -> score


def item_scores(client, run_id: str) -> Scores:
    with tempfile.TemporaryDirectory() as tmp:
        table = json.loads(Path(client.download_artifacts(run_id, "eval_records.json", tmp)).read_text())
    out: Scores = {}
    for row in table["data"]:
        r = dict(zip(table["columns"], row, strict=True))
        v = r.get(SCORE_COLUMN.get(r["metric"], "correct"))
        if v is not None:
            out.setdefault(r["metric"], {}).setdefault(r["set"], {})[str(r["id"])] = float(v)
    return out


def rated(scores: Scores, ids: dict[str, list[str]], confidence: float, seed: int) -> dict[str, float]:
    """The metrics (with intervals at `confidence`) of the items `ids` (set label -> ids), as a screen rates them."""
    out: dict[str, float] = {}
    for metric, per_set in scores.items():
        out |= interval_metrics(metric, interval([[s[i] for i in ids[label] if i in s] for label, s in per_set.items()],
                                                 seed, confidence))
    return out


def paired_gains(full: Scores, trial: Scores, ids: dict[str, list[str]], metric: str, mode: str) -> list[float]:
    """Per screen item scored in both, how much better the full trial is on the objective (< 0: worse)."""
    sign = 1 if mode == "max" else -1
    return [(full[metric][label][i] - trial[metric][label][i]) * sign for label in full[metric] for i in ids[label]
            if i in full[metric][label] and i in trial[metric].get(label, {})]


def paired_dominates(full: Scores, trial: Scores, ids: dict[str, list[str]], objectives: dict[str, str],
                     confidence: float, bootstrap: bool) -> bool:
    z, rng, strict = NormalDist().inv_cdf(0.5 + confidence / 2), np.random.default_rng(0), False
    for metric, mode in objectives.items():
        d = np.array(paired_gains(full, trial, ids, metric, mode))
        if bootstrap:
            lo = np.quantile(d[rng.integers(0, len(d), (2000, len(d)))].mean(1), 0.5 - confidence / 2)
        else:
            lo = wilson(float((d > 0).sum()), len(d), z)[0] - wilson(float((d < 0).sum()), len(d), z)[1]
        if lo < 0:
            return False
        strict = strict or bool((d > 0).sum() > (d < 0).sum())
    return strict


def paired_record(full: Scores, trial: Scores, ids: dict[str, list[str]], metric: str, mode: str) -> str:
    """On the screen's items, how often the full trial is better / worse / the same on the objective."""
    d = paired_gains(full, trial, ids, metric, mode)
    return f"{sum(x > 0 for x in d)} better, {sum(x < 0 for x in d)} worse, {sum(x == 0 for x in d)} tied"


def replay(uri: str, plain: str, screened: str, cfg, items: int, confidence: float) -> None:
    from mlflow.tracking import MlflowClient

    client, (objectives, constraints) = MlflowClient(uri), (cfg.search.objectives, cfg.search.constraints)
    parent, trials, base = read_sweep(uri, plain)
    try:
        _, screened_trials, _ = read_sweep(uri, screened)
    except ValueError:  # no screened sweep of this size: the drops only, no f and no check
        screened_trials = []
    with tempfile.TemporaryDirectory() as tmp:  # the config the sweep ran with (its eval sets and seeds)
        cfg = type(cfg).model_validate_json(Path(client.download_artifacts(parent.info.run_id, "config.json",
                                                                           tmp)).read_text())
    ends = {p.run_id: client.get_run(p.run_id).info.end_time for p in trials}
    trials.sort(key=lambda p: ends[p.run_id])
    scores = {p.run_id: item_scores(client, p.run_id) for p in trials}
    for p in trials:  # the records must give back the logged numbers, or this replay means nothing
        for metric in (*objectives, *constraints):
            per_set = scores[p.run_id][metric].values()
            mean = statistics.mean(statistics.mean(s.values()) for s in per_set)
            if abs(mean - p.metrics[metric]) > 1e-9:
                raise SystemExit(f"{p.name}: {metric} from its records {mean} != logged {p.metrics[metric]}")
    eval_cfg = cfg.eval.model_copy(update={"screen": ScreenConfig(items=items, confidence=confidence)})
    ids = load_sets(eval_cfg, "screen").item_ids()
    front = {p.run_id for p in pareto_front(trials, objectives, constraints, base)}
    kind = {p.run_id: "front" if p.run_id in front else "feasible" if feasible(p, objectives, constraints, base)
            else "infeasible" for p in trials}
    n = len(trials)
    screens = [p.metrics["eval/screen_s"] for p in screened_trials if "eval/screen_s" in p.metrics]
    f = statistics.median(screens) / statistics.median(p.metrics["eval_s"] for p in trials) if screens else None
    counts = {k: sum(v == k for v in kind.values()) for k in ("infeasible", "feasible", "front")}
    print(f"{plain}: {n} trials: {counts['infeasible']} infeasible, {counts['feasible']} feasible off the front, "
          f"{counts['front']} on the front; " + (f"f = {f:.2f} (from {screened})" if f is not None else
                                                  f"no sweep {screened}: f unknown, q only"))
    actual = {tuple(sorted(p.params.items())) for p in screened_trials if p.tags.get("eval_stage") == "screen"}
    wrong: list[str] = []
    for test in ("screen", "paired", "bootstrap-paired"):
        went_on: list[Point] = []
        dropped = {"infeasible": 0, "feasible": 0, "front": 0}
        keys = set()
        for p in trials:
            earlier = [q for q in went_on if ends[q.run_id] < ends[p.run_id]]
            mine = scores[p.run_id]
            go_on = screening.screen(rated(mine, ids, confidence, cfg.eval.seed), earlier, objectives,
                                     constraints, base, confidence).go_on
            by = None
            if go_on and test != "screen":
                by = next((q for q in earlier if feasible(q, objectives, constraints, base) and paired_dominates(
                    scores[q.run_id], mine, ids, objectives, confidence, test == "bootstrap-paired")), None)
                go_on = by is None
            if go_on:
                went_on.append(p)
            else:
                dropped[kind[p.run_id]] += 1
                keys.add(tuple(sorted(p.params.items())))
            if by is not None and kind[p.run_id] == "front":
                wrong.append(f"    {test} drops front trial {p.name} as dominated by {by.name}: "
                             + "; ".join(f"{m} {p.metrics[m]:.3f} vs {by.metrics[m]:.3f} on all items, on the "
                                         f"screen's {paired_record(scores[by.run_id], mine, ids, m, mode)}"
                                         for m, mode in objectives.items()))
        q = len(went_on) / n
        check = (f"; the same trials as {screened}: {'yes' if keys == actual else 'NO'}"
                 if test == "screen" and screened_trials else "")
        cost = f"f + q(1 - f) = {f + q * (1 - f):.2f}" if f is not None else f"q = {len(went_on)}/{n}"
        print(f"  {test:>16}: drops {n - len(went_on)} ({dropped['infeasible']} infeasible, {dropped['feasible']} "
              f"feasible off the front, {dropped['front']} ON THE FRONT); {cost}{check}")
    if f is not None:
        print(f"  {'floor':>16}: only the front goes on: f + {counts['front']}/{n} (1 - f) = "
              f"{f + counts['front'] / n * (1 - f):.2f}")
    print("\n".join(wrong) or "  no test dropped a front trial")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="search_spaces/organism.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    ap.add_argument("--items", type=int, default=16, help="eval.screen.items of the screened sweeps")
    ap.add_argument("--confidence", type=float, default=0.8, help="eval.screen.confidence of the screened sweeps")
    args = ap.parse_args(argv)
    os.chdir(ROOT)  # the space's tracking URI is relative to the project (sqlite:///mlflow.db)
    try:
        cfg = load_space(ROOT / args.space)
    except ConfigError as e:
        ap.error(str(e))
    try:
        ScreenConfig(items=args.items, confidence=args.confidence)
    except ValidationError as e:
        ap.error("; ".join(f"--{err['loc'][0]}: {err['msg']}" for err in e.errors()))
    stem = Path(args.space).stem
    for seed in args.seeds:
        try:
            replay(cfg.mlflow.tracking_uri, f"{stem}-noscreen-s{seed}", f"{stem}-screen{args.items}-s{seed}", cfg,
                   args.items, args.confidence)
        except ValueError as e:  # a sweep is missing
            hint = f"run `python bench/screen_sweeps.py --space {args.space} --seeds {seed}` first"
            raise SystemExit(f"{e}\n{hint}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
