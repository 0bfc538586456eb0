"""Screening on real sweeps (#12): the same sweep with and without `eval.screen`, back to back, per seed.

    .venv/bin/python bench/screen_sweeps.py [--space search_spaces/organism.yaml] [--seeds 42 43 44]
        [--screen "{items: 16, confidence: 0.8}"] [--summary-only]

For each seed it runs `python -m sweep.run --space SPACE --final-eval none` as `<space>-noscreen-s<seed>` and
then as `<space>-screen<items>-s<seed>` with `eval.screen` set (a finished sweep of that name is not run again:
`--summary-only` only reads MLflow). Printed per seed, from MLflow (`eval_s`, `eval/screen_s`, tags):

- the evaluation seconds of all trials, screened against unscreened (the issue's target: <= 0.5x), and the
  model of docs/performance.md, f + q(1 - f), with f = the median screen's share of the median full evaluation
  and q = the share of trials that went on;
- why trials were screened out, and for each screened-out trial whether the unscreened sweep found it
  infeasible or off its front (the screen must not drop a trial that would have been on the front);
- whether both sweeps sampled the same hyperparameters and gave the trials both evaluated in full the same
  objective values, and whether their fronts are the same hyperparameter sets.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

import yaml
from pydantic import ValidationError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eval.config import ScreenConfig  # noqa: E402
from sweep.results.pareto import Point, feasible, read_sweep  # noqa: E402
from sweep.space.config import ConfigError, load_space  # noqa: E402

HPARAMS = ("layer", "steering_rel", "alpha", "beta", "gamma", "lr")


def finished(uri: str, name: str) -> bool:
    try:
        parent, points, _ = read_sweep(uri, name)
    except ValueError:
        return False
    return parent.info.status == "FINISHED" and bool(points)


def run_sweep(space: str, name: str, seed: int, screen: str | None) -> None:
    cmd = [sys.executable, "-m", "sweep.run", "--space", space, "--final-eval", "none",
           "--set", f"name={name}", "--set", f"train.seed={seed}"]
    if screen:
        cmd += ["--set", f"eval.screen={screen}"]
    print("==", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def key(p: Point) -> tuple:
    return tuple(p.params.get(h) for h in HPARAMS)


def compare(uri: str, plain: str, screened: str, objectives: dict, constraints: dict) -> float:
    """Print one seed's comparison; returns the evaluation-seconds ratio."""
    parent_a, a, base_a = read_sweep(uri, plain)
    parent_b, b, _ = read_sweep(uri, screened)
    for parent, name in ((parent_a, plain), (parent_b, screened)):
        if parent.info.status != "FINISHED":
            print(f"  note: {name} is {parent.info.status.lower()}, not finished: its numbers are partial")
    eval_a = sum(p.metrics.get("eval_s", 0.0) for p in a)
    eval_b = sum(p.metrics.get("eval_s", 0.0) for p in b)
    full_a = [p.metrics["eval_s"] for p in a if "eval_s" in p.metrics]
    screens = [p.metrics["eval/screen_s"] for p in b if "eval/screen_s" in p.metrics]
    if not full_a or not screens:
        raise SystemExit(f"{plain} has no fully evaluated trial or {screened} no screen: nothing to compare")
    out = [p for p in b if p.tags.get("eval_stage") == "screen"]
    went_on = [p for p in b if p.tags.get("eval_stage") == "full"]
    f = statistics.median(screens) / statistics.median(full_a)
    q = len(went_on) / len(b)
    ratio = eval_b / eval_a
    print(f"{plain} vs {screened}: {len(a)} / {len(b)} trials")
    print(f"  evaluation, all trials: {eval_a:.1f} s unscreened, {eval_b:.1f} s screened (screens "
          f"{sum(screens):.1f} s): {ratio:.2f}x")
    print(f"  q = {len(went_on)}/{len(b)} went on; f = median screen {statistics.median(screens):.2f} s / median "
          f"full {statistics.median(full_a):.2f} s = {f:.2f}; f + q(1 - f) = {f + q * (1 - f):.2f}")
    by_key = {key(p): p for p in a}
    front_a = {key(p) for p in a if p.tags.get("pareto") == "true"}
    front_b = {key(p) for p in b if p.tags.get("pareto") == "true"}
    reasons: dict[str, int] = {}
    for p in out:
        reason = p.tags.get("screen_reason", "")
        kind = "dominated" if reason.startswith("dominated") else reason.split(" ")[0]
        twin = by_key.get(key(p))
        fate = ("not sampled unscreened" if twin is None else "on the unscreened front" if key(p) in front_a
                else "infeasible unscreened" if not feasible(twin, objectives, constraints, base_a)
                else "feasible, off the unscreened front")
        reasons[f"{kind} ({fate})"] = reasons.get(f"{kind} ({fate})", 0) + 1
    print("  screened out:", ", ".join(f"{n} by {r}" for r, n in sorted(reasons.items())) or "none")
    same = [p for p in b if key(p) in by_key]
    both_full = [p for p in went_on if key(p) in by_key]
    identical = sum(all(p.metrics.get(m) == by_key[key(p)].metrics.get(m) for m in objectives) for p in both_full)
    print(f"  same hyperparameters in {len(same)} of {len(b)} trials; of the {len(both_full)} evaluated in full by "
          f"both, {identical} have identical objective values; fronts {'the same' if front_a == front_b else 'differ'}"
          f" ({len(front_a)} / {len(front_b)} trials)")
    return ratio


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="search_spaces/organism.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    ap.add_argument("--screen", default="{items: 16, confidence: 0.8}", help="eval.screen of the screened sweeps")
    ap.add_argument("--summary-only", action="store_true", help="run nothing: compare the sweeps MLflow has")
    args = ap.parse_args(argv)
    os.chdir(ROOT)  # the space's tracking URI is relative to the project (sqlite:///mlflow.db)
    try:  # every argument checked before the first sweep starts
        cfg = load_space(ROOT / args.space)
    except ConfigError as e:
        ap.error(str(e))
    try:
        screen = ScreenConfig.model_validate(yaml.safe_load(args.screen))
    except ValidationError as e:
        ap.error("--screen: " + "; ".join(f"{'.'.join(map(str, err['loc'])) or 'value'}: {err['msg']}"
                                          for err in e.errors()) + " (e.g. '{items: 16, confidence: 0.8}')")
    except yaml.YAMLError as e:
        ap.error(f"--screen: not YAML ({str(e).splitlines()[0]}); e.g. '{{items: 16, confidence: 0.8}}'")
    items = screen.items
    stem = Path(args.space).stem
    uri = cfg.mlflow.tracking_uri
    pairs = [(f"{stem}-noscreen-s{s}", f"{stem}-screen{items}-s{s}", s) for s in args.seeds]
    if not args.summary_only:
        for plain, screened, seed in pairs:
            for name, screen in ((plain, None), (screened, args.screen)):
                if not finished(uri, name):
                    run_sweep(args.space, name, seed, screen)
    ratios = [compare(uri, plain, screened, cfg.search.objectives, cfg.search.constraints)
              for plain, screened, _ in pairs]
    spread = f" ± {statistics.stdev(ratios):.2f}" if len(ratios) > 1 else ""
    print(f"evaluation seconds, screened / unscreened, over {len(ratios)} seed(s): "
          f"{statistics.mean(ratios):.2f}{spread} [{min(ratios):.2f}-{max(ratios):.2f}] (target <= 0.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
