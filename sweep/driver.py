"""The sweep's driver: what `python -m sweep.run` does once the space file has passed its checks.

`run_sweep` opens the sweep's parent MLflow run and runs three phases, the way lifecycle.py runs a trial:

1. `start`: Ray, the engine pool (the base model loaded once), the base model's reasoning traces on the forget
   questions and its activation scales, then the baseline run. Nothing is trained yet.
2. `search`: the Tune run, new or restored (`--resume`). Optuna proposes, and each trial trains and is
   evaluated (sweep/lifecycle.py). Afterwards it cleans out what a driver that died earlier left behind in
   Optuna and MLflow.
3. `finish`: the Pareto front marked in MLflow, the baseline and the front evaluated on the test split and
   attacked, the tables printed, and the next commands (export, report) shown.

Whatever happens, every MLflow run ends FINISHED or FAILED and Ray is shut down.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.paths import resolve_uri
from sweep import lifecycle, traces, tracking, tuner
from sweep.engine_pool import EnginePool, engine_count, engine_start_error
from sweep.evaluator import RestartWatch, call_with_retry
from sweep.ray_start import init_ray
from sweep.space.config import SweepConfig, local_storage, storage_uri


@dataclass
class Sweep:
    """What the phases hand on: the sweep's names, its engines and its baseline."""

    cfg: SweepConfig
    experiment_id: str
    parent: str  # the sweep's MLflow run id
    plots: Path  # where the Pareto plot is written
    pool: EnginePool | None = None
    engines: int = 1
    baseline: dict = field(default_factory=dict)
    context: lifecycle.SweepContext | None = None  # what every trial receives
    watches: list[RestartWatch] = field(default_factory=list)  # a line per engine restart
    warm: Any = None  # the Tune callback that keeps Train processes warm, if any

    @property
    def tune_name(self) -> str:
        return f"tune-{self.parent[:8]}"

    @property
    def study_name(self) -> str:
        return f"{self.cfg.name}-{self.parent[:8]}"


@dataclass
class Searched:
    results: Any  # Tune's ResultGrid
    ran: int  # trials that finished or failed
    errors: int
    complete: bool  # False: stopped early (Ctrl-C); the front is not final


def run_sweep(cfg: SweepConfig, space_text: str, resume: bool = False, final_eval: str = "test",
              verbose: bool = False) -> int:
    """Run the three phases under the sweep's parent run. Returns 0, or 1 when every trial failed."""
    import ray

    uri = cfg.mlflow.tracking_uri
    experiment_id = tracking.ensure_experiment(cfg)
    parent = tracking.start_parent(cfg, experiment_id, space_text, resume)
    local = local_storage(cfg)  # the plot is logged to MLflow either way
    plots = local / cfg.name / "pareto" if local else Path(tempfile.mkdtemp(prefix="r2mu-pareto-"))
    sweep = Sweep(cfg, experiment_id, parent, plots)
    print(f"mlflow: experiment {cfg.experiment!r}, sweep run {parent} ({uri})")
    tune_log = tune_log_to_file((plots.parent if local else plots) / f"{sweep.tune_name}.log")
    print(f"tune log: {tune_log.baseFilename} (tracebacks of failed and retried trials)")
    ok, t0, started_ms = False, time.monotonic(), int(time.time() * 1000)
    try:
        start(sweep, verbose)
        searched = search(sweep, resume, started_ms)
        front = finish(sweep, searched, final_eval)
        print(f"sweep done in {time.monotonic() - t0:.0f} s: {len(searched.results)} trials, {searched.errors} "
              f"failed, front {len(front)}; pareto plot: {plots / 'pareto.png'}")
        ok = searched.errors < len(searched.results)
        return 0 if ok else 1
    finally:
        for w in sweep.watches:
            w.__exit__()
        logging.getLogger("ray.tune").removeHandler(tune_log)
        tune_log.close()
        tracking.end_stale_children(uri, experiment_id, parent)
        tracking.end_run(uri, parent, ok)
        if ray.is_initialized():
            ray.shutdown()


def start(sweep: Sweep, verbose: bool) -> None:
    """1. Ray, with the next trials' Train processes warming up where that pays (sweep/warm_workers.py).
    2. The engine pool; an engine that cannot start is a ConfigError naming the field that fixes it.
    3. The base model's traces on the forget questions (cached by content) and, for `steering_rel`, the
       activation scale of each searched layer.
    4. The baseline: the base model evaluated as its own child run, once."""
    import ray

    from sweep import warm_workers

    cfg = sweep.cfg
    init_ray(cfg, verbose)
    sweep.warm = warm_workers.keep_warm(cfg)
    sweep.engines = engine_count(cfg, ray.cluster_resources().get("GPU", 0))
    evaluator_name = f"evaluator-{cfg.name}-{sweep.parent[:8]}"
    sweep.pool = EnginePool.start(evaluator_name, sweep.engines, resolve_uri(cfg.model.path), cfg)
    try:
        infos = sweep.pool.infos()
    except ray.exceptions.RayActorError as err:  # nothing trained yet: say why, and which fields fix it
        raise engine_start_error(cfg, err) from None
    nodes = len({i["node"] for i in infos})
    print(f"evaluator: {sweep.engines} x {infos[0]['backend']} backend up in "
          f"{max(i['start_s'] for i in infos):.1f} s" + (f" on {nodes} node(s)" if sweep.engines > 1 else ""))
    evaluator, restarts = sweep.pool.engines[0], cfg.eval.engine.max_restarts
    sweep.watches = sweep.pool.watch()
    trace_file = traces.ensure_traces(
        cfg, evaluator, call=lambda _method, *a: call_with_retry(evaluator, "traces", *a, max_restarts=restarts)[0])
    scales = traces.activation_scales(cfg, layers) if (layers := cfg.scaled_layers()) else {}
    sweep.baseline = ensure_baseline(cfg, sweep.experiment_id, sweep.parent, evaluator)
    sweep.context = lifecycle.SweepContext(
        cfg, sweep.experiment_id, sweep.parent, trace_file.name,
        trace_file.read_text(encoding="utf-8"), scales, evaluator_name, sweep.baseline, sweep.engines)


def search(sweep: Sweep, resume: bool, started_ms: int) -> Searched:
    """1. The trainable: lifecycle.run_trial with the sweep's context and each trial's resources.
    2. A new Tuner with the Optuna searcher, or the interrupted one restored (`--resume`).
    3. Fit: trials run `search.max_concurrent` at a time; a failed one is retried `search.max_failures` times.
    4. Once every trial has run: Optuna trials a dead driver proposed but never ran are marked FAIL, and with
       `--resume` MLflow runs that the restored Tune state does not know are deleted.
    5. The Optuna study's summary is logged to the parent run."""
    from mlflow.tracking import MlflowClient
    from ray import tune

    cfg, uri = sweep.cfg, sweep.cfg.mlflow.tracking_uri
    study = tuner.optuna_storage(cfg)  # the Optuna study's URL (None: in memory)
    trainable = tune.with_resources(tune.with_parameters(lifecycle.run_trial, ctx=sweep.context),
                                    lifecycle.trial_resources(cfg))
    path = f"{storage_uri(cfg, cfg.name)}/{sweep.tune_name}"
    if resume and tune.Tuner.can_restore(path):
        print(f"resuming {path}")
        t = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        t = tune.Tuner(
            trainable,
            # reuse_actors: a trial's function runs in the process of a finished one (its imports done)
            tune_config=tune.TuneConfig(
                search_alg=tuner.make_searcher(cfg, sweep.study_name, study, sweep.baseline),
                num_samples=cfg.search.num_samples, reuse_actors=True, max_concurrent_trials=cfg.search.max_concurrent),
            run_config=tune.RunConfig(
                name=sweep.tune_name, storage_path=storage_uri(cfg, cfg.name), verbose=0,
                callbacks=[tuner.Progress(cfg, sweep.baseline, sweep.parent), *([sweep.warm] if sweep.warm else [])],
                failure_config=tune.FailureConfig(max_failures=cfg.search.max_failures)))
    results = t.fit()
    errors = sum(1 for r in results if r.error is not None)
    finished = sum(1 for r in results if r.error is None and "status" in (r.metrics or {}))
    complete = finished + errors >= cfg.search.num_samples
    if complete and (lost := tuner.fail_orphans(study, sweep.study_name)):
        print(f"optuna: {lost} trial(s) proposed before the driver died were never run: marked FAIL")
    if complete and resume and (lost := tracking.drop_lost_trials(uri, sweep.experiment_id, sweep.parent, started_ms)):
        print(f"mlflow: {lost} trial run(s) the earlier driver left unfinished, missing from the Tune state "
              "this sweep resumed from, were deleted (MLflow keeps them until `mlflow gc`)")
    if summary := tuner.study_summary(study, sweep.study_name):
        MlflowClient(uri).log_dict(sweep.parent, summary, "optuna_study.json")
    return Searched(results, finished + errors, errors, complete)


def finish(sweep: Sweep, searched: Searched, final_eval: str) -> list:
    """1. The Pareto front of the selection split, marked in MLflow (`pareto=true`), and its table printed.
    2. Unless the search stopped early or `--final-eval none`: the baseline and the front on the test split,
       then the space's attacks on them; the front is marked again and the test-split table printed.
    3. The knee, and the commands that export it and show the sweep. Returns the front."""
    from sweep.mlflow_ui import view_url
    from sweep.results.final import attack_evaluation, test_evaluation
    from sweep.results.pareto import knee_line, test_table, update_front

    cfg, uri, pool = sweep.cfg, sweep.cfg.mlflow.tracking_uri, sweep.pool

    def mark_front() -> tuple[list, Any]:
        table, front, best = update_front(uri, cfg.experiment, cfg.search.objectives, cfg.search.constraints,
                                          list(cfg.search.searched()), sweep.parent, sweep.plots)
        print("\n" + table)
        return front, best

    front, best = mark_front()
    if not searched.complete:
        print(f"\nthe search stopped after {searched.ran} of {cfg.search.num_samples} trials: the "
              "test-split evaluation of the front runs when it finishes (--resume)")
    elif final_eval == "test" and front:
        test_evaluation(cfg, front, sweep.parent, lambda delta: pool.evaluate_delta(delta, "test")[0],
                        workers=sweep.engines)
        if cfg.eval.attacks:
            attack_evaluation(cfg, front, sweep.parent, lambda delta, names: pool.attack_delta(delta, names)[0],
                              workers=sweep.engines)
        front, best = mark_front()
        print("\n" + test_table(uri, cfg.experiment, sweep.parent, cfg.search.objectives, list(cfg.search.constraints)))
    if best is not None:
        print(knee_line(front, best, cfg.search.objectives))
        print(f"export it with\n  r2mu-sweep export --experiment {cfg.experiment} --pick knee "
              f"--out exported/{cfg.name}{uri_flag(uri)}")
    print(f"look at it: r2mu-sweep report --experiment {cfg.experiment}{uri_flag(uri)} (one HTML page), "
          f"or `mlflow ui --backend-store-uri {uri} --host 127.0.0.1` at {view_url(sweep.experiment_id)}")
    return front


def uri_flag(uri: str) -> str:
    """` --tracking-uri URI` for a printed command, unless the command would find this store on its own."""
    from sweep.mlflow_store import resolve, same_store

    return "" if same_store(uri, resolve()[0]) else f" --tracking-uri {uri}"


def tune_log_to_file(path: Path) -> logging.FileHandler:
    """Tune's own log goes to `path`: a retried trial's ~40-line traceback is there, and the console keeps the
    sweep's one line per failure, which names the trial's error file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log = logging.getLogger("ray.tune")
    log.addHandler(handler)
    log.propagate = False  # not to Ray's console handler on the "ray" logger
    return handler


def ensure_baseline(cfg: SweepConfig, experiment_id: str, parent: str, evaluator: Any) -> dict:
    """The base model with the sweep's eval settings, as its own child run (role=baseline), once."""
    uri = cfg.mlflow.tracking_uri
    run_id = tracking.new_child(uri, experiment_id, parent, "baseline", {"role": "baseline"}, "role")
    if tracking.is_finished(uri, run_id):
        from mlflow.tracking import MlflowClient

        print("baseline: cached run", run_id)
        return dict(MlflowClient(uri).get_run(run_id).data.metrics)
    ok = False
    try:
        restarts = cfg.eval.engine.max_restarts
        out, _ = call_with_retry(evaluator, "evaluate", None, max_restarts=restarts)
        if names := cfg.searched_attacks():  # an objective or constraint names an attack: the base's reference
            attacked, _ = call_with_retry(evaluator, "attack", None, names, "selection", max_restarts=restarts)
            out = {"metrics": out["metrics"] | attacked["metrics"], "records": out["records"] + attacked["records"]}
        metrics = {k: v for k, v in out["metrics"].items() if v is not None}
        tracking.log_result(uri, run_id, {"model": cfg.model.path}, metrics, records=out["records"])
        ok = True
    finally:
        tracking.end_run(uri, run_id, ok)
    shown = [k for k in metrics if "/" not in k and not k.endswith(("_lo", "_hi", "_n"))]
    print("baseline (selection split): " + ", ".join(
        f"{k}={metrics[k]:.3f}" + (f" [{metrics[k + '_lo']:.2f}, {metrics[k + '_hi']:.2f}]" if k + "_lo" in metrics
                                   else "") for k in shown))
    return metrics
