"""MLflow bookkeeping of a resumed sweep (sweep/tracking.py), on a real SQLite store."""

from __future__ import annotations

import time

from mlflow.tracking import MlflowClient

from sweep import tracking


def test_a_resume_deletes_only_the_trial_runs_an_earlier_driver_left_open(tmp_path):
    """The driver died with trial B running, before Tune saved it: B's run stays RUNNING and no resumed trial
    reopens it. A (finished) and C (opened by the resumed driver) are kept; so is the crashed trial D of the
    resumed driver (its run is still open, but it is this driver's to end)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("resume")
    parent = client.create_run(exp, tags={"role": "sweep"}).info.run_id

    def child(trial: str) -> str:
        return tracking.new_child(uri, exp, parent, f"trial-{trial}", {"role": "trial", "tune_trial_id": trial},
                                  "tune_trial_id")

    a, b = child("a"), child("b")
    tracking.end_run(uri, a, ok=True)
    time.sleep(0.01)
    resumed_at_ms = int(time.time() * 1000)
    time.sleep(0.01)
    c, d = child("c"), child("d")
    tracking.end_run(uri, c, ok=True)

    assert tracking.drop_lost_trials(uri, exp, parent, resumed_at_ms) == 1
    assert client.get_run(b).info.lifecycle_stage == "deleted"
    assert all(client.get_run(r).info.lifecycle_stage == "active" for r in (a, c, d))
    assert tracking.drop_lost_trials(uri, exp, parent, resumed_at_ms) == 0
