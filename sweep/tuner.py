"""Ray Tune + Optuna + MLflow: the sweep itself (DESIGN.md section 3).

Each Tune trial is a function (`run_trial`) that fits a Ray Train `TorchTrainer` running the R²MU trainer
under DeepSpeed (the Train V2 pattern), evaluates the trial's delta in the sweep's evaluator actor, logs a
child MLflow run and reports every metric once. Optuna proposes the next point (several objectives;
constraint violations are told to its sampler as infeasible).
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.search.optuna import OptunaSearch

from sweep import study_store, tracking
from sweep.checks import resolve_uri
from sweep.config import Constraint, Param, SweepConfig, storage_uri
from sweep.evaluator import call
from sweep.pareto import Point, pareto_front
from sweep.traces import prefix_cache_dir
from trainables.config import Hyperparams, TrialSpec

# Worker environment: one thread per process on CPU (STACK.md: 2 threads are ~8x slower here), fast
# Train V2 controller shutdown, no tokenizer thread pools.
WORKER_ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
              "PYTHONWARNINGS": "ignore::DeprecationWarning"}


def worst_value(metric: str, mode: str) -> float:
    """What a diverged trial reports: the worst end of a rate metric (throughput has no bound: 0 / 1e12)."""
    if metric == "gen_tokens_per_s":
        return 0.0 if mode == "max" else 1e12
    return 0.0 if mode == "max" else 1.0


def to_tune(p: Param) -> Any:
    if p.kind == "int":
        return tune.randint(int(p.low), int(p.high) + 1)  # randint's upper bound is exclusive
    if p.kind == "uniform":
        return tune.uniform(p.low, p.high)
    if p.kind == "loguniform":
        return tune.loguniform(p.low, p.high)
    return tune.choice(list(p.values))


class ConstraintValues:
    """A result's constraint values in Optuna's convention (<= 0 is feasible; a missing metric violates).

    A class, not a closure: Tune pickles the searcher (and so this) into its experiment state for resume.
    """

    def __init__(self, constraints: dict[str, Constraint], baseline: dict | None):
        self.constraints, self.baseline = constraints, baseline or {}

    def __call__(self, result: dict) -> list[float]:
        out = []
        for metric, c in self.constraints.items():
            v = result.get(metric)
            t = c.threshold(self.baseline.get(metric))
            out.append(1.0 if v is None else (t - v if c.op in (">=", ">") else v - t))
        return out


class ConstrainedOptunaSearch(OptunaSearch):
    """OptunaSearch that records each finished trial's constraint values on its Optuna trial.

    Optuna 5's samplers (TPE, NSGA-II) read `trial.constraints`: a violated trial is infeasible for them,
    not silently dropped and not treated as a good point.
    """

    def __init__(self, *args, constraint_fn=None, constraint_names=(), **kwargs):
        super().__init__(*args, **kwargs)
        self._constraint_fn, self._constraint_names = constraint_fn, list(constraint_names)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if result and ot_trial is not None and self._constraint_fn and trial_id not in self._completed_trials:
            for name, value in zip(self._constraint_names, self._constraint_fn(result), strict=True):
                ot_trial.set_constraint(name, value)
        super().on_trial_complete(trial_id, result, error)


def make_searcher(cfg: SweepConfig, study_name: str, storage_url: str | None, baseline: dict | None):
    import optuna

    seed = cfg.search.seed if cfg.search.seed is not None else cfg.train.seed
    if cfg.search.algorithm == "tpe":
        # Optuna's default is 10 random trials before TPE models anything: most of a small sweep's budget
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(4, min(10, cfg.search.num_samples // 4)))
    elif cfg.search.algorithm == "gp":
        # a Gaussian process per objective and per constraint (Optuna >= 4.5 with several objectives): the
        # sample-efficient choice for a few dozen trials over a handful of numeric parameters; same warm-up as TPE
        sampler = optuna.samplers.GPSampler(seed=seed, n_startup_trials=max(4, min(10, cfg.search.num_samples // 4)))
    elif cfg.search.algorithm == "nsga2":
        sampler = optuna.samplers.NSGAIISampler(seed=seed,
                                                population_size=max(4, min(20, cfg.search.num_samples // 3)))
    else:
        sampler = optuna.samplers.RandomSampler(seed=seed)
    storage = optuna.storages.RDBStorage(storage_url) if storage_url else None
    space = OptunaSearch.convert_search_space({k: to_tune(p) for k, p in cfg.search.searched().items()})
    constraints = dict(cfg.search.constraints)
    return ConstrainedOptunaSearch(
        space=space, metric=list(cfg.search.objectives), mode=list(cfg.search.objectives.values()),
        sampler=sampler, study_name=study_name, storage=storage,
        constraint_fn=ConstraintValues(constraints, baseline) if constraints else None,
        constraint_names=list(constraints),
    )


def optuna_storage(cfg: SweepConfig) -> str | None:
    """The study's RDB URL (`search.storage`; default optuna.db beside a SQLite MLflow store), None for `memory`:
    browse it with `optuna-dashboard URL`."""
    return study_store.optuna_storage(cfg)


def fail_orphans(storage_url: str | None, study_name: str) -> int:
    """Optuna trials still RUNNING after the search finished: proposed just before a driver died, they were not
    in the Tune state the sweep resumed from, so no trial will ever report them. Marked FAIL (as Optuna's own
    `fail_stale_trials` does) with the reason, so the study ends with nothing running."""
    if storage_url is None:
        return 0
    import optuna

    study = optuna.load_study(study_name=study_name, storage=storage_url)
    orphans = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for t in orphans:
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    return len(orphans)


def study_summary(storage_url: str | None, study_name: str) -> dict | None:
    """What the parent run records of the Optuna study: counts by state and the study's own front."""
    if storage_url is None:
        return None
    import optuna

    study = optuna.load_study(study_name=study_name, storage=storage_url)
    states: dict[str, int] = {}
    for t in study.trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    return {"study_name": study_name, "storage": study_store.public_url(storage_url),  # no password in MLflow
            "directions": [d.name for d in study.directions], "trials": states,
            "best_trials": [t.number for t in study.best_trials], "sampler": type(study.sampler).__name__}


def trial_spec(cfg: SweepConfig, hp: Hyperparams, traces_path: str | None, out_dir: str,
               scale: float | None) -> TrialSpec:
    """The trainer's view of one trial: the validated sections with every organism:// path resolved."""
    d = cfg.data
    data = d.model_copy(update={
        "forget": d.forget.model_copy(update={"path": resolve_uri(d.forget.path)}),
        "retain": d.retain.model_copy(update={"path": resolve_uri(d.retain.path)}),
        "cot": d.cot.model_copy(update={"path": resolve_uri(d.cot.path)}),
    })
    model = cfg.model.model_copy(update={"path": resolve_uri(cfg.model.path)})
    pc = cfg.train.prefix_cache
    train = cfg.train.model_copy(update={"prefix_cache": pc.model_copy(update={"dir": prefix_cache_dir(cfg)})})
    return TrialSpec(model=model, data=data, train=train, hparams=hp, traces_path=traces_path,
                     out_dir=out_dir, activation_scale=scale)


@dataclass
class SweepContext:
    """What every trial function needs, shipped once through `tune.with_parameters`."""

    cfg: dict
    experiment_id: str
    parent_run_id: str
    traces_name: str  # the trace cache file's name (content-addressed: traces-<key>.jsonl)
    traces_text: str  # and its content: trials on other nodes need no shared filesystem for it
    scales: dict[int, float]
    evaluator_name: str
    baseline: dict | None


def node_traces(ctx: SweepContext) -> Path:
    """The trace cache as a file on this node (written once per node; its name is its content's key)."""
    path = Path(tempfile.gettempdir()) / "r2mu-traces" / ctx.traces_name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(ctx.traces_text, encoding="utf-8")
        tmp.replace(path)  # atomic: concurrent trials on a node never read half a file
    return path


def loss_changes(history: list[dict]) -> dict[str, float]:
    """Each loss term's relative change: mean of the last 10% of steps over the mean of the first 10%
    (`train/rel/<term>`; < 1 means the term fell)."""
    out = {}
    w = max(1, len(history) // 10)
    for term in ("forget", "unthink", "retain", "cot", "loss"):
        values = [float(r[term]) for r in history if term in r and math.isfinite(float(r[term]))]
        if len(values) >= 2:
            first, last = sum(values[:w]) / len(values[:w]), sum(values[-w:]) / len(values[-w:])
            out[f"train/rel/{term}"] = last / first if first > 0 else float("nan")
    return out


def objective_check(changes: dict[str, float]) -> str:
    """'' when the terms R2MU pushes toward the control vector fell; else which did not (a trial whose leak
    fell anyway got there through a disturbance, not the misdirection it optimises)."""
    rose = [t for t in ("forget", "unthink") if changes.get(f"train/rel/{t}", 0.0) >= 1.0]
    return ", ".join(f"{t} x{changes[f'train/rel/{t}']:.2f}" for t in rose)


def summarize_train(metrics: dict) -> dict[str, float]:
    return {f"train/{k}": float(v) for k, v in metrics.items() if isinstance(v, int | float)}


def load_delta_and_history(ckpt_dir: str) -> tuple[dict | None, list[dict]]:
    from trainables.delta import load_delta

    p = Path(ckpt_dir)
    history = [json.loads(line) for line in (p / "history.jsonl").read_text().splitlines()] \
        if (p / "history.jsonl").exists() else []
    if (p / "status.json").exists():  # diverged: no delta
        return None, history
    tensors, _ = load_delta(p)
    return tensors, history


def run_trial(params: dict, ctx: SweepContext) -> None:
    """One Tune trial: train under Ray Train + DeepSpeed, evaluate the delta, log to MLflow, report once."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from sweep.config import parse_space
    from trainables.trainer import train_loop_per_worker

    cfg = parse_space(ctx.cfg)
    uri = cfg.mlflow.tracking_uri
    trial_id = tune.get_context().get_trial_id()
    hp = cfg.hyperparams(params)
    run_id = tracking.new_child(uri, ctx.experiment_id, ctx.parent_run_id, f"trial-{trial_id}",
                                {"role": "trial", "tune_trial_id": trial_id, "status": "running"}, "tune_trial_id")
    if tracking.is_finished(uri, run_id):  # logged before the driver died; Tune's saved state missed it
        tune.report(tracking.reported_result(uri, run_id))
        return
    ok = False
    try:
        out_dir = tempfile.mkdtemp(prefix=f"r2mu-{trial_id}-")
        spec = trial_spec(cfg, hp, str(node_traces(ctx)), out_dir, ctx.scales.get(hp.layer))
        t = cfg.train
        trainer = TorchTrainer(
            train_loop_per_worker, train_loop_config={"spec": spec.model_dump()},
            scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                         resources_per_worker={"CPU": t.cpus_per_worker}),
            run_config=RunConfig(name=f"train-{trial_id}", storage_path=storage_uri(cfg, cfg.name, "train")),
        )
        t_fit = time.monotonic()
        result = trainer.fit()
        fit_s = time.monotonic() - t_fit
        train_metrics = dict(result.metrics)
        with result.checkpoint.as_directory() as d:
            delta, history = load_delta_and_history(d)
        status = train_metrics.get("status", "ok")
        records: list[dict] = []
        if status == "ok" and delta is not None:
            evaluator = ray.get_actor(ctx.evaluator_name)
            out, lost = call(evaluator, "evaluate", delta, max_restarts=cfg.eval.engine.max_restarts)
            metrics = {k: v for k, v in out["metrics"].items() if v is not None}
            metrics["eval_s"] = out["eval_s"]
            metrics["eval/lost_to_restarts"] = lost  # evaluations that died with the engine and ran again
            records = out["records"]
        else:
            metrics = {m: worst_value(m, mode) for m, mode in cfg.search.objectives.items()}
        metrics |= summarize_train({k: v for k, v in train_metrics.items() if k != "status"})
        # where the trial's time went: Ray Train's start-up, imports, model load and checkpoint upload vs the
        # training loop itself
        metrics["time/fit_s"] = fit_s
        metrics["time/fit_overhead_s"] = fit_s - float(train_metrics.get("train_seconds", 0.0))
        for m, mode in cfg.search.objectives.items():  # Optuna needs every objective
            metrics.setdefault(m, worst_value(m, mode))
        changes = loss_changes(history)
        metrics |= changes
        params_logged = hp.model_dump() | {"steering_coeff_abs": train_metrics.get("steering_coeff")}
        tags = {"status": status, "layer": hp.layer, "train_node": str(train_metrics.get("node_id", ""))}
        if objective_check(changes):
            tags["objective_check"] = f"did not fall: {objective_check(changes)}"
        with result.checkpoint.as_directory() as d:
            tracking.log_result(uri, run_id, params_logged, metrics, history, records,
                                d if delta is not None else None, tags=tags)
        drop_train_checkpoint(result.checkpoint)
        ok = True
        tune.report(metrics | {"status": status, "mlflow_run_id": run_id})
    finally:
        tracking.end_run(uri, run_id, ok)


def drop_train_checkpoint(checkpoint: Any) -> None:
    """The delta is an MLflow artifact now (what export and the final evaluation read): the second copy in
    Ray Train's storage goes (350 MB per trial for Llama-8B). Only after the MLflow log succeeded."""
    try:
        checkpoint.filesystem.delete_dir(checkpoint.path)
    except Exception as e:  # a copy left behind is not an error
        print(f"warning: could not remove the train checkpoint {checkpoint.path}: {e}", file=sys.stderr)


class Progress(tune.Callback):
    """A line per finished trial: its objectives and the current front size."""

    def __init__(self, cfg: SweepConfig, baseline: dict | None):
        self.cfg, self.baseline, self.points = cfg, baseline, []
        self.t0 = time.monotonic()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        r = trial.last_result or {}
        self.points.append(Point(trial.trial_id, {k: v for k, v in r.items() if isinstance(v, int | float)},
                                 status=r.get("status", "ok"), name=trial.trial_id))
        front = pareto_front(self.points, self.cfg.search.objectives, self.cfg.search.constraints, self.baseline)
        objs = "  ".join(f"{m}={r.get(m, float('nan')):.3f}" for m in self.cfg.search.objectives)
        hp = "  ".join(f"{k}={_fmt(trial.config.get(k))}" for k in self.cfg.search.searched())
        cached = ""
        if "train/prefix_cache_hits" in r:  # how many of its steps came from the prefix cache
            cached = f"  | cached {int(r['train/prefix_cache_hits'])}/{int(r.get('train/steps_done', 0))}"
        flag = objective_check({k: v for k, v in r.items() if k.startswith("train/rel/")})
        flag = f"  | loss did not fall: {flag}" if flag else ""
        if r.get("eval/lost_to_restarts"):
            flag += f"  | evaluated again after {int(r['eval/lost_to_restarts'])} engine restart(s)"
        print(f"[{time.monotonic() - self.t0:6.0f}s] trial {len(self.points)}/{self.cfg.search.num_samples} "
              f"{trial.trial_id} {r.get('status', '?')}: {objs}  | {hp}  | front {len(front)}{cached}{flag}",
              flush=True)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        print(f"trial {trial.trial_id} crashed; Tune runs it again (search.max_failures="
              f"{self.cfg.search.max_failures}): {trial.error_file}", file=sys.stderr, flush=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        print(f"trial {trial.trial_id} failed, retries used up (search.max_failures="
              f"{self.cfg.search.max_failures}): {trial.error_file}", file=sys.stderr, flush=True)


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")  # must be in the driver's env (STACK.md)
