"""One Tune trial, from the hyperparameters Optuna proposed to its MLflow run: train -> evaluate -> record.

`run_trial` is the Tune function trainable; read it top to bottom:

  1. **open**: the trial's MLflow run (a child of the sweep's run). A run already FINISHED (the driver died
     after logging it) is reported from MLflow, not trained again.
  2. **train**: a Ray Train `TorchTrainer` runs `trainables.trainer.train_loop_per_worker` under DeepSpeed on
     `train.num_workers` workers (with `ray.train_in_trial`, one CPU worker: in Ray Train's local mode, in this
     process). Rank 0 streams the loss curves to the run while it trains
     (trainables/curves.py) and reports once, with the checkpoint (trainables/checkpoint.py: the delta and
     the curves, or status.json when a step was not finite). MLflow samples the node's CPU/GPU meanwhile.
  3. **evaluate**: the delta goes to the sweep's evaluator actor (sweep/evaluator.py), which holds the base
     model and returns every metric; a diverged trial gets the worst value of each objective instead. Where
     an objective or constraint names an attack metric (eval.attacks), the evaluator attacks the delta too.
  4. **record**: params, metrics, tags, per-item records and the delta are logged to the run; Ray Train's copy
     of the checkpoint is deleted; Tune (and through it Optuna) gets the metrics.

What crosses each boundary is typed: `TrialSpec` (sweep -> trainer), `trainables.checkpoint.Trained`
(trainer -> sweep), `TrialOutcome` (what is recorded and reported).
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import tune

from eval.paths import resolve_uri
from sweep import screening, tracking
from sweep.engine_pool import EnginePool, train_worker_gpus
from sweep.space.config import SweepConfig, storage_uri
from sweep.traces import prefix_cache_dir
from trainables.checkpoint import Trained
from trainables.config import Hyperparams, TrackingTarget, TrialSpec


@dataclass
class SweepContext:
    """What every trial function needs, shipped once through `tune.with_parameters`."""

    cfg: SweepConfig  # the validated object itself: Ray pickles it, nothing parses it again
    experiment_id: str
    parent_run_id: str
    traces_name: str  # the trace cache file's name (content-addressed: traces-<key>.jsonl)
    traces_text: str  # and its content: trials on other nodes need no shared filesystem for it
    scales: dict[int, float]
    evaluator_name: str  # the engine pool's name (sweep/engine_pool.py)
    baseline: dict | None
    engines: int = 1


@dataclass
class TrialOutcome:
    """One trial, trained and evaluated: what is logged to MLflow and reported to Tune."""

    status: str  # "ok" | "diverged" | "screened" (evaluated on the screening subset only)
    metrics: dict[str, float]  # objectives, eval, train/*, time/* (Tune and MLflow)
    params: dict[str, Any]
    tags: dict[str, str]
    history: list[dict] = field(default_factory=list)  # per-step loss terms
    records: list[dict] = field(default_factory=list)  # per-item evaluation records


def run_trial(params: dict, ctx: SweepContext) -> None:
    """One Tune trial: open its MLflow run, train, evaluate, record, report once."""
    cfg = ctx.cfg
    uri, trial_id = cfg.mlflow.tracking_uri, tune.get_context().get_trial_id()
    hp = cfg.hyperparams(params)
    run_id = tracking.new_child(uri, ctx.experiment_id, ctx.parent_run_id, f"trial-{trial_id}",
                                {"role": "trial", "tune_trial_id": trial_id, "status": "running"}, "tune_trial_id")
    if tracking.is_finished(uri, run_id):  # logged before the driver died; Tune's saved state missed it
        tune.report(tracking.reported_result(uri, run_id))
        return
    ok, system = False, system_metrics(uri, run_id)
    try:
        t_fit, fit_started_at = time.monotonic(), time.time()
        train_metrics, train_checkpoint = train(cfg, hp, ctx, trial_id, run_id)
        fit_s = time.monotonic() - t_fit
        # rank 0's process existed before the fit: a prestarted one (sweep/warm_workers.py)
        train_metrics["prestarted"] = float(train_metrics.get("process_started_at", 1e18) < fit_started_at)
        with train_checkpoint.as_directory() as ckpt_dir:
            from trainables import checkpoint

            trained = checkpoint.read(ckpt_dir)
            outcome = evaluate_trial(cfg, ctx, hp, train_metrics, trained, fit_s)
            record(uri, run_id, outcome, ckpt_dir if trained.delta is not None else None,
                   streamed=train_metrics.get("curve_points_unsent") == 0)
        drop_train_checkpoint(train_checkpoint)
        ok = True
        tune.report(outcome.metrics | {"status": outcome.status, "mlflow_run_id": run_id}
                    | {k: v for k, v in outcome.tags.items() if k in ("eval_stage", "screen_reason")})
    finally:
        if system:
            system.finish()
        tracking.end_run(uri, run_id, ok)


def train(cfg: SweepConfig, hp: Hyperparams, ctx: SweepContext, trial_id: str, run_id: str) -> tuple[dict, Any]:
    """The trial's Ray Train fit: rank 0's metrics and its checkpoint (in Ray Train's storage, or with
    `ray.train_in_trial` the directory the loop wrote in this process)."""
    from ray.train import Checkpoint, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from sweep.warm_workers import TRAIN_WORKER_ENV
    from trainables.trainer import one_process_env, train_loop_per_worker

    out_dir = tempfile.mkdtemp(prefix=f"r2mu-{trial_id}-")
    spec = trial_spec(cfg, hp, str(node_traces(ctx)), out_dir, ctx.scales.get(hp.layer))
    spec = spec.model_copy(update={"tracking": TrackingTarget(uri=cfg.mlflow.tracking_uri, run_id=run_id)})
    t = cfg.train
    per_worker = {"CPU": t.cpus_per_worker}
    if (share := train_worker_gpus(cfg)) is not None:  # colocated: the card's other share is an engine's
        per_worker["GPU"] = share
    if cfg.train_in_trial:  # Ray Train's local mode: the one worker is this process (trial_resources holds its CPUs)
        scaling = ScalingConfig(num_workers=0)
        os.environ.update(one_process_env())  # the loop makes the group (a file store), Ray ends it
    else:
        scaling = ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker=per_worker)
    trainer = TorchTrainer(
        train_loop_per_worker, train_loop_config={"spec": spec, "in_trial": cfg.train_in_trial},
        scaling_config=scaling,
        run_config=RunConfig(name=f"train-{trial_id}", storage_path=storage_uri(cfg, cfg.name, "train"),
                             worker_runtime_env=TRAIN_WORKER_ENV),  # matches the prestarted warm workers
    )
    result = trainer.fit()
    if cfg.train_in_trial:
        out = result.return_value
        return out["metrics"], Checkpoint.from_directory(out["checkpoint_dir"])
    return dict(result.metrics), result.checkpoint


def trial_resources(cfg: SweepConfig) -> dict[str, float]:
    """What a Tune trial's own process reserves: a token CPU when Ray Train starts its workers (they reserve
    theirs), the worker's CPUs when the worker runs in it (`ray.train_in_trial`)."""
    if not cfg.train_in_trial:
        return {"CPU": 0.01}
    gpus = {"GPU": train_worker_gpus(cfg) or 1.0} if cfg.train.use_gpu else {}
    return {"CPU": cfg.train.cpus_per_worker} | gpus


def evaluate_trial(cfg: SweepConfig, ctx: SweepContext, hp: Hyperparams, train_metrics: dict, trained: Trained,
             fit_s: float) -> TrialOutcome:
    """Every metric of the trial: the evaluator's on the delta (the worst of each objective when the trial
    diverged), the trainer's as train/*, the loss terms' changes and where the time went."""
    status = train_metrics.get("status", "ok")
    records: list[dict] = []
    engine = None
    stage = verdict = None
    if status == "ok" and trained.delta is not None:
        pool = EnginePool.attach(ctx.evaluator_name, ctx.engines, cfg.eval.engine.max_restarts)
        eval_s, lost_screen = 0.0, 0
        if cfg.eval.screen:  # a subset first; the full selection split only if the trial could be on the front
            out, lost_screen, engine = pool.evaluate_delta(trained.delta, "screen")
            eval_s = out["eval_s"]
            verdict = screening.screen(out["metrics"], screening.fully_evaluated(logged_trials(cfg, ctx)),
                                       cfg.search.objectives, cfg.search.constraints, ctx.baseline,
                                       cfg.eval.screen.confidence)
        stage = "full" if verdict is None or verdict.go_on else "screen"
        if stage == "full" and verdict is not None:  # the rest of the selection split, rated with the screen's items
            out, lost, engine = pool.evaluate_delta(trained.delta, "rest", out["screen"])
        elif stage == "full":
            out, lost, engine = pool.evaluate_delta(trained.delta)
        else:
            status, lost = "screened", 0
        metrics = {k: v for k, v in out["metrics"].items() if v is not None}
        metrics["eval_s"] = eval_s + out["eval_s"] if stage == "full" else eval_s  # screened out: `out` is the screen
        if verdict is not None:
            metrics["eval/screen_s"] = eval_s
        records = out["records"]
        if stage == "full" and (names := cfg.searched_attacks()):  # an objective or constraint names an attack
            attacked, lost_attack, _ = pool.attack_delta(trained.delta, names, "selection")
            metrics |= {k: v for k, v in attacked["metrics"].items() if v is not None}
            metrics["eval/attack_s"] = attacked["eval_s"]
            records = records + attacked["records"]
            lost += lost_attack
        metrics["eval/lost_to_restarts"] = lost + lost_screen  # evaluations that died with the engine, run again
    else:
        metrics = {}
    for m, mode in cfg.search.objectives.items():  # Optuna needs every objective
        metrics.setdefault(m, worst_value(m, mode))
    metrics |= summarize_train({k: v for k, v in train_metrics.items() if k not in ("status", "process_started_at")})
    # Ray Train's start-up, imports, model load and checkpoint upload vs the training loop itself
    metrics["time/fit_s"] = fit_s
    metrics["time/fit_overhead_s"] = fit_s - float(train_metrics.get("train_seconds", 0.0))
    changes = loss_changes(trained.history)
    metrics |= changes
    tags = {"status": status, "layer": str(hp.layer), "train_node": str(train_metrics.get("node_id", ""))}
    if engine is not None:
        tags["eval_engine"] = str(engine)
    if stage is not None and cfg.eval.screen:
        tags["eval_stage"] = stage
        if verdict is not None and not verdict.go_on:
            tags["screen_reason"] = verdict.reason
    if rising_terms(changes):
        tags["objective_check"] = f"did not fall: {rising_terms(changes)}"
    params = hp.model_dump() | {"steering_coeff_abs": train_metrics.get("steering_coeff")}
    return TrialOutcome(status, metrics, params, tags, trained.history, records)


def logged_trials(cfg: SweepConfig, ctx: SweepContext) -> list:
    """The sweep's trials as MLflow has them now (the ones still running have no metrics yet)."""
    from sweep.results.pareto import read_sweep

    return read_sweep(cfg.mlflow.tracking_uri, cfg.experiment, ctx.parent_run_id)[1]


def record(uri: str, run_id: str, outcome: TrialOutcome, delta_dir: str | None, streamed: bool) -> None:
    """Everything about the trial in its MLflow run; the curves only if the trainer could not stream them."""
    tracking.log_result(uri, run_id, outcome.params, outcome.metrics, outcome.history, outcome.records,
                        delta_dir, tags=outcome.tags, history_streamed=streamed)


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
    train_cfg = cfg.train.model_copy(update={"prefix_cache": pc.model_copy(update={"dir": prefix_cache_dir(cfg)})})
    return TrialSpec(model=model, data=data, train=train_cfg, hparams=hp, traces_path=traces_path,
                     out_dir=out_dir, activation_scale=scale)


def node_traces(ctx: SweepContext) -> Path:
    """The trace cache as a file on this node (written once per node; its name is its content's key)."""
    path = Path(tempfile.gettempdir()) / "r2mu-traces" / ctx.traces_name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(ctx.traces_text, encoding="utf-8")
        tmp.replace(path)  # atomic: concurrent trials on a node never read half a file
    return path


def system_metrics(uri: str, run_id: str) -> Any:
    """MLflow's CPU/memory/disk (and GPU, where pynvml sees one) sampler for the trial's run, every 5 s; None
    where it cannot start (it only observes)."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, sampling_interval=5, tracking_uri=uri)
        monitor.start()
        return monitor
    except Exception as e:  # e.g. psutil missing on a worker image
        print(f"system metrics: not sampled ({type(e).__name__}: {e})", file=sys.stderr, flush=True)
        return None


def worst_value(metric: str, mode: str) -> float:
    """What a diverged trial reports: the worst end of a rate metric (throughput has no bound: 0 / 1e12)."""
    if metric == "gen_tokens_per_s":
        return 0.0 if mode == "max" else 1e12
    return 0.0 if mode == "max" else 1.0


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


def rising_terms(changes: dict[str, float]) -> str:
    """'' when the terms R2MU pushes toward the control vector fell; else which did not (a trial whose leak
    fell anyway got there through a disturbance, not the misdirection it optimises)."""
    rose = [t for t in ("forget", "unthink") if changes.get(f"train/rel/{t}", 0.0) >= 1.0]
    return ", ".join(f"{t} x{changes[f'train/rel/{t}']:.2f}" for t in rose)


def summarize_train(metrics: dict) -> dict[str, float]:
    return {f"train/{k}": float(v) for k, v in metrics.items() if isinstance(v, int | float)}


def drop_train_checkpoint(checkpoint: Any) -> None:
    """The delta is an MLflow artifact now (what export and the final evaluation read): the second copy in
    Ray Train's storage goes (350 MB per trial for Llama-8B). Only after the MLflow log succeeded."""
    try:
        checkpoint.filesystem.delete_dir(checkpoint.path)
    except Exception as e:  # a copy left behind is not an error
        print(f"warning: could not remove the train checkpoint {checkpoint.path}: {e}", file=sys.stderr)
