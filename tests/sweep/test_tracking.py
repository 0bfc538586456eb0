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


# Two processes open one new SQLite store at the same instant, then each creates its own experiment. Without
# `mlflow_store.ready`, 12 of 16 such processes failed on this 2-core machine (MLflow's migrations racing:
# `table ... already exists` or an alembic row-count error).
RACER = """
import sys, time
from mlflow.tracking import MlflowClient
from sweep import mlflow_store
uri, start, name = sys.argv[1], float(sys.argv[2]), sys.argv[3]
while time.time() < start:
    time.sleep(0.001)
MlflowClient(mlflow_store.ready(uri)).create_experiment(name)
"""


def test_processes_that_open_a_new_sqlite_store_at_once_all_work(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "racer.py"
    script.write_text(RACER)
    for attempt in range(2):
        uri = f"sqlite:///{tmp_path}/store{attempt}/mlflow.db"
        start = time.time() + 6  # both interpreters are up and waiting by then
        procs = [subprocess.Popen([sys.executable, str(script), uri, str(start), f"exp-{who}"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for who in "ab"]
        outs = [p.communicate(timeout=120)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-1500:] for o in outs)
        names = {e.name for e in MlflowClient(uri).search_experiments()}
        assert {"exp-a", "exp-b"} <= names
        assert sorted(p.name for p in (tmp_path / f"store{attempt}").iterdir()) == ["mlflow.db"]  # no lock file
