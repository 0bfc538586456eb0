"""Loss curves streamed to MLflow while a trial trains (trainables/curves.py), against real SQLite stores."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.trainables.conftest import make_spec
from trainables.curves import CurveSink
from trainables.trainer import train

ROOT = str(Path(__file__).resolve().parents[2])
KEYS = ("loss/forget", "loss/retain", "loss/unthink", "loss/cot", "loss/total")


@pytest.fixture(scope="module")
def mlflow_db(tmp_path_factory) -> tuple[str, MlflowClient, str]:
    """One SQLite MLflow store for the module (creating its tables takes seconds) and an experiment in it."""
    d = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{d / 'mlflow.db'}"
    client = MlflowClient(uri)
    return uri, client, client.create_experiment("curves", artifact_location=(d / "artifacts").as_uri())


@pytest.fixture
def store(mlflow_db) -> tuple[str, MlflowClient, str]:
    """A new active run in the module's store."""
    uri, client, exp = mlflow_db
    return uri, client, client.create_run(exp).info.run_id


def points(client: MlflowClient, run_id: str, key: str = "loss/forget") -> list:
    return sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)


def row(step: int, forget: float | None = None) -> dict:
    return {"step": step, "forget": 10.0 - step if forget is None else forget, "retain": 0.5, "loss": 11.0 - step}


def test_sink_flushes_every_n_rows_and_loses_nothing_when_a_flush_fails(store, capsys):
    uri, client, run = store
    sink = CurveSink(uri, run, every=3)
    for i in range(2):
        sink.add(row(i))
        time.sleep(0.003)
    assert sink.wait() and points(client, run) == []  # nothing sent before the third row
    sink.add(row(2))
    assert sink.wait()
    got = points(client, run)
    assert [m.step for m in got] == [0, 1, 2] and [m.value for m in got] == [10.0, 9.0, 8.0]
    assert got[0].timestamp < got[1].timestamp < got[2].timestamp  # when each step finished, not one "now"
    assert [m.step for m in points(client, run, "loss/total")] == [0, 1, 2]
    assert abs(got[2].timestamp - time.time() * 1000) < 60_000

    # a real refusal for one flush: MLflow does not log to a deleted run; restored, the next flush sends all
    client.delete_run(run)
    for i in range(3, 6):
        sink.add(row(i))
    assert sink.wait()
    warning = capsys.readouterr().out
    assert warning.count("\n") == 1 and "[curves] warning: 9 loss points not logged" in warning
    client.restore_run(run)
    assert [m.step for m in points(client, run)] == [0, 1, 2]
    for i in range(6, 9):
        sink.add(row(i))
    sink.add(row(9, forget=float("nan")))  # the diverged row: sent as it is, by close()
    assert sink.close() == 0
    got = points(client, run)
    assert [m.step for m in got] == list(range(10))  # every step exactly once, in order of time too
    assert all(a.timestamp <= b.timestamp for a, b in zip(got, got[1:], strict=False))
    assert math.isnan(got[-1].value) and got[-2].value == 2.0


def test_sink_never_raises_when_the_server_is_down(monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    sink = CurveSink(f"http://127.0.0.1:{port}", "no-such-run", every=2)
    for i in range(5):
        sink.add(row(i))
    assert sink.close(timeout=60) == 5 * 3  # every point kept, none delivered
    assert "[curves] warning:" in capsys.readouterr().out
    with pytest.raises(ValueError):
        CurveSink("sqlite:///x.db", "r", every=0)


def test_diverged_trial_streams_its_last_row(tiny_dirs, tmp_path, store):
    uri, client, run = store
    spec = make_spec(tiny_dirs, tmp_path / "out", hparams={"steering_coeff": 1e30, "steps": 5},
                     tracking={"uri": uri, "run_id": run, "every": 10})
    res = train(spec)
    assert res.status == "diverged" and res.metrics["curve_points_unsent"] == 0
    total = points(client, run, "loss/total")
    assert [m.step for m in total] == [0]
    assert not math.isfinite(total[0].value) or total[0].value > 1e300  # MLflow clamps inf


def test_curves_of_a_running_trial_are_in_mlflow_before_it_ends(tiny_dirs, tmp_path, store):
    uri, client, run = store
    steps, every = 150, 5
    spec = make_spec(tiny_dirs, tmp_path / "out", hparams={"steps": steps}, train={"batch_size": 2},
                     tracking={"uri": uri, "run_id": run, "every": every})
    (tmp_path / "spec.json").write_text(spec.model_dump_json())
    code = ("import sys; from trainables.config import TrialSpec; from trainables.trainer import train; "
            "r = train(TrialSpec.model_validate_json(open(sys.argv[1]).read())); "
            "print('RESULT', r.status, r.metrics['curve_points_unsent'])")
    dist_env = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE")  # train() here set them
    env = {k: v for k, v in os.environ.items() if k not in dist_env} | {"OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "spec.json")], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        seen, deadline = [], time.monotonic() + 120
        while not seen and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
            try:
                got = points(client, run)
            except Exception:  # the writer holds the database for a moment
                continue
            if got and proc.poll() is None:  # read while the trainer was still running
                seen = got
        assert seen, f"no loss point reached MLflow while the trainer ran:\n{proc.communicate()[0][-3000:]}"
        out = proc.communicate(timeout=120)[0]
    finally:
        proc.kill()
    assert proc.returncode == 0 and "RESULT ok 0" in out, out[-3000:]
    # mid-run: the first steps, not yet the whole curve
    assert [m.step for m in seen] == list(range(len(seen))) and len(seen) < steps
    history = [json.loads(x) for x in (tmp_path / "out" / "checkpoint" / "history.jsonl").read_text().splitlines()]
    for key in KEYS:
        got = points(client, run, key)
        assert [m.step for m in got] == list(range(steps)), key  # every step exactly once
        assert all(a.timestamp <= b.timestamp for a, b in zip(got, got[1:], strict=False))
        name = "loss" if key == "loss/total" else key.removeprefix("loss/")
        assert [m.value for m in got] == pytest.approx([r[name] for r in history], rel=1e-12)
