"""MLflow bookkeeping: the experiment, one parent run per sweep, a child run per trial and the baseline.

Runs are found again by tags (`role`, `tune_trial_id`), so a resumed sweep reuses its parent run and never
duplicates a trial's run. Every run is ended (FINISHED or FAILED); none is left RUNNING.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from sweep import mlflow_store
from sweep.space.config import ConfigError, SweepConfig


def default_artifact_location(tracking_uri: str) -> str | None:
    """Beside a SQLite store: `<db folder>/mlartifacts` (explicit, so trials on any worker agree)."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///")).resolve()
        return (db.parent / "mlartifacts").as_uri()
    return None


def client_for(cfg: SweepConfig) -> MlflowClient:
    """A client of the sweep's store; a new SQLite store is created once even when processes race to open it."""
    return MlflowClient(mlflow_store.ready(cfg.mlflow.tracking_uri))


def ensure_experiment(cfg: SweepConfig) -> str:
    """The sweep's experiment (created on first use), with the tags that set up MLflow's UI for it
    (sweep/mlflow_ui.py: the classic runs view, a runs table with the objectives as columns)."""
    from sweep.mlflow_ui import set_ui_tags

    client = client_for(cfg)
    exp = client.get_experiment_by_name(cfg.experiment)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise ConfigError("mlflow", [("name", f"MLflow experiment {cfg.experiment!r} is deleted at "
                                              f"{cfg.mlflow.tracking_uri}; restore it or rename the sweep")])
        experiment_id = exp.experiment_id
    else:
        location = cfg.mlflow.artifact_location or default_artifact_location(cfg.mlflow.tracking_uri)
        experiment_id = client.create_experiment(cfg.experiment, artifact_location=location)
    set_ui_tags(client, experiment_id, cfg)
    return experiment_id


def start_parent(cfg: SweepConfig, experiment_id: str, space_text: str, resume: bool) -> str:
    """A new parent run, or (resume) the latest unfinished one of this experiment."""
    client = client_for(cfg)
    if resume:
        runs = client.search_runs([experiment_id], "tags.role = 'sweep'", order_by=["start_time DESC"],
                                  max_results=1)
        if runs:
            run = runs[0]
            if run.info.status != "RUNNING":
                client.update_run(run.info.run_id, status="RUNNING")
            return run.info.run_id
    run = client.create_run(experiment_id, run_name=f"{cfg.name}-sweep", tags={"role": "sweep"})
    rid = run.info.run_id
    try:
        client.log_text(rid, space_text, "space.yaml")
        client.log_text(rid, json.dumps(cfg.model_dump(mode="json"), indent=2), "config.json")
        log_result(cfg.mlflow.tracking_uri, rid, {"algorithm": cfg.search.algorithm, "model": cfg.model.path,
                                                  "num_samples": cfg.search.num_samples,
                                                  "max_concurrent": cfg.search.max_concurrent}, {})
    except Exception:
        end_run(cfg.mlflow.tracking_uri, rid, ok=False)
        raise
    return rid


def end_run(tracking_uri: str, run_id: str, ok: bool) -> None:
    MlflowClient(tracking_uri).set_terminated(run_id, RunStatus.to_string(
        RunStatus.FINISHED if ok else RunStatus.FAILED))


def end_stale_children(tracking_uri: str, experiment_id: str, parent_id: str) -> int:
    """Mark children still RUNNING (a trial killed with the sweep) as KILLED; a resume replaces them."""
    client = MlflowClient(tracking_uri)
    stale = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_id}' and "
                               "attributes.status = 'RUNNING'", max_results=1000)
    for run in stale:
        client.set_terminated(run.info.run_id, "KILLED")
    return len(stale)


def drop_lost_trials(tracking_uri: str, experiment_id: str, parent_id: str, started_before_ms: int) -> int:
    """Trial runs an earlier driver opened and never ended, which this (resumed) sweep did not run again:
    the Tune state it resumed from was saved before they started, so no trial will ever finish them (their
    Optuna point is marked FAIL). Deleted, as `new_child` deletes a crashed attempt; MLflow keeps deleted runs
    until `mlflow gc`. A trial of this driver reopens its run with a new start time, so it is never one of them."""
    client = MlflowClient(tracking_uri)
    lost = [r for r in client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_id}' and "
                                          "tags.role = 'trial'", max_results=5000)
            if r.info.status in ("RUNNING", "KILLED") and r.info.start_time < started_before_ms]
    for run in lost:
        client.delete_run(run.info.run_id)
    return len(lost)


def find_child(client: MlflowClient, experiment_id: str, parent_id: str, key: str, value: str):
    runs = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_id}' and tags.{key} = '{value}'",
                              max_results=10)
    return runs


def new_child(tracking_uri: str, experiment_id: str, parent_id: str, name: str, tags: Mapping[str, str],
              dedupe_tag: str) -> str:
    """A child run; an unfinished run with the same `dedupe_tag` value (a crashed attempt) is deleted first."""
    client = MlflowClient(tracking_uri)
    for old in find_child(client, experiment_id, parent_id, dedupe_tag, tags[dedupe_tag]):
        if old.info.status == "FINISHED":
            return old.info.run_id  # already complete (resume): the caller checks `is_finished`
        client.delete_run(old.info.run_id)  # an attempt that crashed or was killed: replaced, not duplicated
    run = client.create_run(experiment_id, run_name=name, tags={"mlflow.parentRunId": parent_id, **tags})
    return run.info.run_id


def is_finished(tracking_uri: str, run_id: str) -> bool:
    return MlflowClient(tracking_uri).get_run(run_id).info.status == "FINISHED"


def logged_config(tracking_uri: str, run_id: str) -> Any:
    """The validated SweepConfig a sweep logged to its parent run (config.json); one logged before a field
    existed is read with that field's old behaviour (`study_store.with_logged_storage`)."""
    import mlflow

    from sweep.space.config import parse_space
    from sweep.space.study_store import with_logged_storage

    mlflow.set_tracking_uri(tracking_uri)
    raw = json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/config.json"))
    return parse_space(with_logged_storage(raw), f"run {run_id} config.json")


def reported_result(tracking_uri: str, run_id: str) -> dict[str, Any]:
    """What a finished trial reported to Tune, read back from its run: the final metrics (not the loss
    curves), its status and the run id."""
    run = MlflowClient(tracking_uri).get_run(run_id)
    metrics = {k: v for k, v in run.data.metrics.items() if not k.startswith("loss/")}
    return metrics | {"status": run.data.tags.get("status", "ok"), "mlflow_run_id": run_id}


def log_result(tracking_uri: str, run_id: str, params: Mapping[str, Any], metrics: Mapping[str, float],
               history: list[dict] | None = None, records: list[dict] | None = None,
               delta_dir: str | None = None, tags: Mapping[str, str] | None = None,
               history_streamed: bool = False, records_file: str = "eval_records.json") -> None:
    """Params, final metrics, per-step loss curves (`loss/forget`, ..., `loss/total`), per-item eval records
    (an MLflow table, `records_file`: the test split's go to `test_eval_records.json`) and the delta.
    `history_streamed`: the trainer already sent the curves while it ran (`TrialSpec.tracking`,
    trainables/curves.py, with real timestamps), so `history` is not logged again."""
    from mlflow.entities import Metric, Param, RunTag

    from eval.suite import EvalResult
    from trainables.curves import curve_points

    client = MlflowClient(tracking_uri)
    now = int(time.time() * 1000)
    ms = [Metric(k, float(v), now, 0) for k, v in metrics.items() if isinstance(v, int | float)]
    for row in [] if history_streamed else history or []:
        ms += [Metric(*p) for p in curve_points(row, now)]
    ps = [Param(k, str(v)) for k, v in params.items()]
    ts = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
    for i in range(0, max(len(ms), 1), 900):  # MLflow caps a batch at 1000 entries
        client.log_batch(run_id, metrics=ms[i:i + 900], params=ps if i == 0 else [], tags=ts if i == 0 else [])
    if records:
        client.log_table(run_id, EvalResult({}, records).table(), records_file)
    if delta_dir:
        client.log_artifacts(run_id, delta_dir, "delta")

