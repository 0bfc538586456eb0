"""The final evaluation: the baseline and chosen trials, once, on the test split.

`sweep.run` calls `test_evaluation` for the Pareto front after the search (through its evaluator actor). To
evaluate other trials of a finished sweep on the test split (any run a user names), without Ray:

    python -m sweep.results.final --experiment organism --runs RUN_ID [RUN_ID ...] [--force] [--attacks]

The numbers land on each run as `test/<metric>` (with `_lo`, `_hi`, `_n`), where `sweep.results.pareto` and the
export's model card read them. With `--attacks` (and after every search whose space has `eval.attacks`) the
attacks of eval/attacks.py run on the same runs, also on the test split: `test/attack/<name>/<metric>`, and
`test/attack/<name>/recovery/<metric>` for each objective the attack measures.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from typing import Any

from sweep import mlflow_store
from sweep.space.config import SweepConfig


def test_evaluation(cfg: SweepConfig, front: list, parent: str, evaluate: Any, force: bool = False,
                    workers: int = 1, baseline: bool = True) -> None:
    """The final evaluation: the baseline and each front trial, once, on the test split (items that played no
    part in the choice); logged as `test/<metric>` on their own runs. Runs that have test metrics already
    (a resumed sweep) are not evaluated again unless `force`. `evaluate(delta or None)` returns the evaluator's
    dict; `workers` evaluations run at once (one per engine of the sweep's pool); `baseline`: False leaves the
    baseline out."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    import mlflow
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one line per evaluation is enough

    from sweep import tracking
    from sweep.results.pareto import baseline_run_id

    uri = cfg.mlflow.tracking_uri
    client = MlflowClient(uri)
    mlflow.set_tracking_uri(uri)
    baseline_run = baseline_run_id(uri, parent) if baseline else None
    todo = ([("baseline", baseline_run)] if baseline_run else []) + [(p.name, p.run_id) for p in front]

    def one(i: int, name: str, run_id: str) -> None:
        if not force and any(k.startswith("test/") for k in client.get_run(run_id).data.metrics):
            return
        delta = None if name == "baseline" else run_delta(run_id)
        out = evaluate(delta)
        metrics = {f"test/{k}": v for k, v in out["metrics"].items() if v is not None}
        metrics["test/eval_s"] = out["eval_s"]
        # the per-item records too: what each trace said (python -m sweep.results.samples prints some by a fixed rule)
        tracking.log_result(uri, run_id, {}, metrics, records=out["records"], records_file="test_eval_records.json")
        objs = ", ".join(f"{m}={metrics[f'test/{m}']:.3f}" for m in cfg.search.objectives
                         if f"test/{m}" in metrics)  # an attack objective: on the attacks' line, below
        print(f"test split {i}/{len(todo)} {name}: {objs} ({out['eval_s']:.1f} s)", flush=True)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        list(pool.map(lambda job: one(*job), [(i, name, run_id) for i, (name, run_id) in enumerate(todo, 1)]))


def run_delta(run_id: str) -> dict:
    """A trial run's delta tensors, from its MLflow `delta` artifact (the tracking URI already set)."""
    import mlflow

    from trainables import checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        return checkpoint.read(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="delta",
                                                                   dst_path=tmp)).delta


def attack_evaluation(cfg: SweepConfig, front: list, parent: str, attack: Any, force: bool = False,
                      workers: int = 1, baseline: bool = True) -> None:
    """eval.attacks on the baseline and each front trial, on the test split, once (an attack a run has numbers
    of is not run again unless `force`), after `test_evaluation`: each trial's recovery is computed from its
    own and the baseline's test numbers. `attack(delta or None, names)` returns the evaluator's dict."""
    from concurrent.futures import ThreadPoolExecutor

    import mlflow
    from mlflow.tracking import MlflowClient

    from eval.attacks import WEIGHT_ATTACKS, recovery
    from eval.config import attack_metrics
    from sweep import tracking
    from sweep.results.pareto import baseline_run_id, plain_metric

    uri = cfg.mlflow.tracking_uri
    client = MlflowClient(uri)
    mlflow.set_tracking_uri(uri)
    objectives = {plain_metric(m) for m in cfg.search.objectives}  # what recovery and the printed line cover
    baseline_run = baseline_run_id(uri, parent)
    base_test = _test_metrics(client, baseline_run) if baseline_run else {}
    todo = ([("baseline", baseline_run)] if baseline_run and baseline else []) + [(p.name, p.run_id) for p in front]

    def one(i: int, name: str, run_id: str) -> None:
        logged = client.get_run(run_id).data.metrics
        names = [a for a in cfg.eval.attacks if force or not any(k.startswith(f"test/attack/{a}/") for k in logged)]
        if not names:
            return
        delta = None if name == "baseline" else run_delta(run_id)
        out = attack(delta, names)
        metrics = dict(out["metrics"])
        if name != "baseline":  # the share of what unlearning removed that each attack brings back
            own = _test_metrics(client, run_id)
            # weight attacks only: a decode attack measures another quantity (the whole output under another
            # prompt), whose reference is the base model attacked the same way, not its plain number
            for a_name, a in ((n, cfg.eval.attacks[n]) for n in names if cfg.eval.attacks[n].kind in WEIGHT_ATTACKS):
                wanted = [m for m in attack_metrics(a) if m in objectives]
                metrics |= recovery(a_name, metrics, own, base_test, wanted)
        logged = {f"test/{k}": v for k, v in metrics.items() if v is not None}
        tracking.log_result(uri, run_id, {}, logged, records=out["records"], records_file="attack_records.json")
        shown = ", ".join(f"{k.removeprefix('attack/')}={v:.3f}" for k, v in metrics.items()
                          if k.split("/")[-1] in objectives and not k.endswith(("_lo", "_hi", "_n")))
        print(f"attacks {i}/{len(todo)} {name}: {shown} ({out['eval_s']:.1f} s)", flush=True)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        list(pool.map(lambda job: one(*job), [(i, name, run_id) for i, (name, run_id) in enumerate(todo, 1)]))


def _test_metrics(client: Any, run_id: str) -> dict[str, float]:
    """A run's test-split numbers without the prefix (`test/trace_leak` -> `trace_leak`), attacks left out."""
    return {k.removeprefix("test/"): v for k, v in client.get_run(run_id).data.metrics.items()
            if k.startswith("test/") and not k.startswith("test/attack/")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sweep.results.final", description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", required=True, help="the sweep's MLflow experiment (its space file name)")
    ap.add_argument("--runs", nargs="+", required=True, metavar="RUN_ID", help="trial run ids (sweep.results.pareto "
                    "prints them); the baseline is evaluated too when it has no test numbers yet")
    mlflow_store.add_flag(ap)
    ap.add_argument("--parent", help="a sweep's parent run id (default: the latest sweep)")
    ap.add_argument("--force", action="store_true", help="evaluate again runs that have test numbers")
    ap.add_argument("--no-baseline", action="store_true", help="leave the baseline out (its test numbers "
                    "do not depend on the sweep: another sweep of the same model and eval settings has them)")
    ap.add_argument("--attacks", nargs="?", const="", metavar="SPACE", help="also run the eval.attacks of the "
                    "sweep's space (or of the space file SPACE: attacks a sweep did not have) on these runs and "
                    "the baseline, on the test split")
    args = ap.parse_args(argv)

    from eval.paths import resolve_uri
    from sweep.evaluator import Evaluator
    from sweep.results.pareto import read_sweep
    from sweep.space.config import ConfigError, load_space
    from sweep.tracking import logged_config

    try:
        args.tracking_uri = mlflow_store.existing_store(args.tracking_uri)
        parent, points, _ = read_sweep(args.tracking_uri, args.experiment, args.parent)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    chosen = [p for p in points if p.run_id in set(args.runs)]
    missing = set(args.runs) - {p.run_id for p in chosen}
    if missing:
        print(f"error: --runs: no trial run {', '.join(sorted(missing))} in the sweep {parent.info.run_id} of "
              f"{args.experiment!r} (python -m sweep.results.pareto --experiment {args.experiment} lists the run ids)",
              file=sys.stderr)
        return 2
    cfg = logged_config(args.tracking_uri, parent.info.run_id)
    cfg = cfg.model_copy(update={"mlflow": cfg.mlflow.model_copy(update={"tracking_uri": args.tracking_uri})})
    if args.attacks:  # another space file's attacks on this sweep's runs: only its eval.attacks is taken
        try:
            attacks = load_space(args.attacks).eval.attacks
        except (ConfigError, OSError) as e:
            print(f"error: --attacks {args.attacks}: {e}", file=sys.stderr)
            return 2
        cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"attacks": attacks})})
    if args.attacks is not None and not cfg.eval.attacks:
        print(f"error: --attacks: the sweep's space has no eval.attacks; name a space file that has "
              f"(python -m sweep.results.final ... --attacks search_spaces/{args.experiment}.yaml)", file=sys.stderr)
        return 2
    evaluator = Evaluator(resolve_uri(cfg.model.path), cfg.eval, cfg.model.dtype)
    try:
        test_evaluation(cfg, chosen, parent.info.run_id, lambda delta: evaluator.evaluate(delta, "test"),
                        args.force, baseline=not args.no_baseline)
        if args.attacks is not None:
            attack_evaluation(cfg, chosen, parent.info.run_id, lambda d, names: evaluator.attack(d, names, "test"),
                              args.force, baseline=not args.no_baseline)
    finally:
        evaluator.close()
    return 0


if __name__ == "__main__":  # the guard vLLM needs where it spawns engine processes
    sys.exit(main())
