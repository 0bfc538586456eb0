"""Ray Tune + Optuna: the search's wiring (the driver's `search` phase, sweep/driver.py).

Optuna proposes the next point (several objectives; constraint violations are told to its sampler as
infeasible); Tune runs each as a trial (`sweep/lifecycle.py: run_trial`: train, evaluate, record) and this
module's `Progress` prints a line per trial.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from ray import tune
from ray.tune.search.optuna import OptunaSearch

from sweep.lifecycle import rising_terms
from sweep.results.pareto import Point, pareto_front
from sweep.space import stores, study_store
from sweep.space.config import Constraint, Param, SweepConfig

# Worker environment: one thread per process on CPU (oversubscribed torch threads slow every trial), fast
# Train V2 controller shutdown, no tokenizer thread pools.
WORKER_ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
              "PYTHONWARNINGS": "ignore::DeprecationWarning"}


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
    return stores.optuna_storage(cfg)


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


class Progress(tune.Callback):
    """A line when a trial starts (its hyperparameters) and when it ends (its objectives, the front, the ETA).

    The clock starts with the sweep's MLflow run; after `--resume` the counter and the front include the
    trials an earlier driver finished (read from MLflow when the first event arrives: Tune restores this
    callback from its pickled state, so nothing else can tell it), and the ETA uses this session's pace.
    """

    def __init__(self, cfg: SweepConfig, baseline: dict | None, parent_run_id: str | None = None):
        self.cfg, self.baseline, self.parent_run_id = cfg, baseline, parent_run_id
        self.points: list[Point] = []
        self.t0 = time.time()
        self._fresh_state()

    def _fresh_state(self) -> None:  # what this driver process counts: earlier trials load on the first event
        self.session_t0, self.session_done, self.loaded = time.time(), 0, False

    def __setstate__(self, state: dict) -> None:  # restored by Tune on --resume, in a new driver
        self.__dict__.update(state)
        self._fresh_state()

    def _load_earlier(self) -> None:
        if self.loaded or self.parent_run_id is None:
            return
        self.loaded = True
        from mlflow.tracking import MlflowClient

        from sweep.results.pareto import read_sweep

        uri = self.cfg.mlflow.tracking_uri
        parent, points, _ = read_sweep(uri, self.cfg.experiment, self.parent_run_id)
        self.t0 = parent.info.start_time / 1000
        finished = {p.tags.get("tune_trial_id") for p in points
                    if MlflowClient(uri).get_run(p.run_id).info.status == "FINISHED"}
        known = {p.run_id for p in self.points}
        self.points += [Point(p.tags.get("tune_trial_id", p.name), p.metrics, status=p.status,
                              name=p.tags.get("tune_trial_id", p.name))
                        for p in points if p.tags.get("tune_trial_id") in finished and p.run_id not in known]

    def _clock(self) -> str:
        return f"[{time.time() - self.t0:6.0f}s]"

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._load_earlier()
        hp = "  ".join(f"{k}={_fmt(trial.config.get(k))}" for k in self.cfg.search.searched())
        running = sum(1 for t in trials if t.status == "RUNNING")
        print(f"{self._clock()} trial {trial.trial_id} started ({running} running): {hp}", flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._load_earlier()
        r = trial.last_result or {}
        self.points = [p for p in self.points if p.name != trial.trial_id]  # reported again after a resume
        self.points.append(Point(trial.trial_id, {k: v for k, v in r.items() if isinstance(v, int | float)},
                                 status=r.get("status", "ok"), name=trial.trial_id))
        self.session_done += 1
        front = pareto_front(self.points, self.cfg.search.objectives, self.cfg.search.constraints, self.baseline)
        objs = "  ".join(f"{m}={r.get(m, float('nan')):.3f}" for m in self.cfg.search.objectives)
        hp = "  ".join(f"{k}={_fmt(trial.config.get(k))}" for k in self.cfg.search.searched())
        cached = ""
        if "train/prefix_cache_hits" in r:  # how many of its steps came from the prefix cache
            cached = f"  | cached {int(r['train/prefix_cache_hits'])}/{int(r.get('train/steps_done', 0))}"
        flag = rising_terms({k: v for k, v in r.items() if k.startswith("train/rel/")})
        flag = f"  | loss did not fall: {flag}" if flag else ""
        if r.get("eval_stage"):  # screening: did the trial get the full evaluation?
            flag += "  | full evaluation" if r["eval_stage"] == "full" else \
                f"  | screened out ({r.get('screen_reason', '')})"
        if r.get("eval/lost_to_restarts"):
            flag += f"  | evaluated again after {int(r['eval/lost_to_restarts'])} engine restart(s)"
        print(f"{self._clock()} trial {len(self.points)}/{self.cfg.search.num_samples} "
              f"{trial.trial_id} {r.get('status', '?')}: {objs}  | {hp}  | front {len(front)}{cached}{flag}"
              f"{self._eta()}", flush=True)

    def _eta(self) -> str:
        left = self.cfg.search.num_samples - len(self.points)
        if left <= 0 or not self.session_done:
            return ""
        return f"  | ETA {_duration((time.time() - self.session_t0) / self.session_done * left)}"

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        print(f"trial {trial.trial_id} crashed; Tune runs it again (search.max_failures="
              f"{self.cfg.search.max_failures}): {trial.error_file}", file=sys.stderr, flush=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        print(f"trial {trial.trial_id} failed, retries used up (search.max_failures="
              f"{self.cfg.search.max_failures}): {trial.error_file}", file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")  # Tune reads it from the driver's env
