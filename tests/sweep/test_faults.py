"""Faults a sweep survives (docs/reliability.md), with real Ray, Ray Train, MLflow and Optuna.

A training worker, the evaluator and the driver are killed with SIGKILL during an organism sweep; the resumed
sweep ends with every trial in MLflow once, none RUNNING, the Optuna study complete. Smaller tests pin the
pieces: an evaluation lost with its actor runs again, and the root cause of a Ray error is found by type.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import yaml

from sweep.engine_pool import root_cause
from tests.sweep.test_sweep_e2e import clean_env, run, runs_of, small_space


def test_root_cause_is_the_first_exception_of_a_chain_dotted_names_included():
    text = ("The actor died because of an error raised in its creation task, ray::Evaluator.__init__()\n"
            "Traceback (most recent call last):\n  File \"x.py\", line 1, in load\n"
            "safetensors._safetensors_rust.SafetensorError: Error while deserializing header: incomplete metadata\n"
            "\nThe above exception was the direct cause of the following exception:\n\n"
            "Traceback (most recent call last):\n  File \"y.py\", line 2, in start\n"
            "RuntimeError: Engine core initialization failed. See root cause above.\n")
    assert root_cause(RuntimeError(text)) == ("safetensors._safetensors_rust.SafetensorError",
                                              "Error while deserializing header: incomplete metadata")
    try:  # a chain of live exception objects is walked to its root
        try:
            raise KeyError("model.layers.0.mlp.down_proj.weight")
        except KeyError as e:
            raise RuntimeError("engine failed") from e
    except RuntimeError as e:
        assert root_cause(e) == ("KeyError", "'model.layers.0.mlp.down_proj.weight'")


@pytest.fixture
def local_ray():
    import ray

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


class _DiesOnce:
    """Dies by SIGKILL in the first call that creates `marker` (as an OOM kill would); answers afterwards."""

    def __init__(self, marker: str):
        self.marker = marker

    def work(self, x: int) -> int:
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return 2 * x
        os.kill(os.getpid(), signal.SIGKILL)


def test_a_call_lost_with_its_actor_runs_again_and_the_restart_is_announced(local_ray, tmp_path, capsys):
    from sweep.evaluator import RestartWatch, call_with_retry, restarts_of

    actor = local_ray.remote(_DiesOnce).options(max_restarts=2, max_task_retries=0).remote(str(tmp_path / "m"))
    with RestartWatch(actor, 2, interval_s=0.2):
        assert call_with_retry(actor, "work", 21, max_restarts=2) == (42, 1)
        time.sleep(1.0)
    assert restarts_of(actor) == (1, "ALIVE")
    assert "the engine died and Ray restarted it (restart 1 of at most 2" in capsys.readouterr().err


def test_a_call_does_not_retry_past_the_budget(local_ray, tmp_path):
    from sweep.evaluator import call_with_retry

    (tmp_path / "m").unlink(missing_ok=True)
    actor = local_ray.remote(_DiesOnce).options(max_restarts=0, max_task_retries=0).remote(str(tmp_path / "m"))
    with pytest.raises(local_ray.exceptions.RayActorError):
        call_with_retry(actor, "work", 1, max_restarts=0)


def test_the_root_cause_of_a_broken_model_file_is_found_through_ray(local_ray, tmp_path):
    """A truncated safetensors file read in an actor's constructor and wrapped by the engine's own error."""
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(64, 64)}, str(path))
    os.truncate(path, path.stat().st_size // 2)

    class Engine:
        def __init__(self, p: str):
            from safetensors.torch import load_file

            try:
                load_file(p)
            except Exception as e:
                raise RuntimeError("Engine core initialization failed. See root cause above.") from e

        def ping(self) -> int:
            return 1

    actor = local_ray.remote(Engine).remote(str(path))
    with pytest.raises(local_ray.exceptions.RayActorError) as err:
        local_ray.get(actor.ping.remote())
    kind, message = root_cause(err.value)
    assert kind == "safetensors._safetensors_rust.SafetensorError" and "header" in message


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _kill_all(procs: list[psutil.Process]) -> None:
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)


@pytest.mark.slow
def test_a_sweep_survives_sigkilled_worker_evaluator_and_driver(tmp_path):
    """Trial 1: one of its Ray Train workers is SIGKILLed (Tune or Train runs it again) and the evaluator is
    SIGKILLed in the middle of its evaluation (Ray restarts it, the evaluation runs again). After a trial is in
    MLflow the driver is SIGKILLed; `--resume` finishes the sweep: it keeps the finished trial, adds only the
    missing one, counts both, and evaluates the finished search's front on the test split, once. (A Ctrl-C
    stops Tune gracefully; this is the harder case of the same resume.)"""
    space = small_space(tmp_path, "faults", num_samples=2, concurrent=1)
    raw = yaml.safe_load(space.read_text())
    raw["train"]["steps"] = 4
    raw["eval"]["engines"] = 2  # the killed engine is one of a pool
    space.write_text(yaml.safe_dump(raw))
    eval_marker = tmp_path / "evaluator-killed"
    env = clean_env() | {"PYTHONUNBUFFERED": "1", "R2MU_FAULT_KILL_EVALUATOR_ONCE": str(eval_marker)}
    log_path = tmp_path / "sweep.log"
    log = log_path.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "sweep.run", "--space", str(space)], cwd=tmp_path, env=env,
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    started: list[psutil.Process] = []
    killed_worker = None
    try:
        deadline, first = time.monotonic() + 300, None
        while time.monotonic() < deadline and first is None and proc.poll() is None:
            time.sleep(0.2)
            started += [p for p in _descendants(proc.pid) if p not in started]
            if killed_worker is None:
                for p in started:
                    try:
                        if "RayTrainWorker" in " ".join(p.cmdline()):
                            p.send_signal(signal.SIGKILL)
                            killed_worker = p.pid
                            break
                    except psutil.NoSuchProcess:
                        continue
            if "mlflow: experiment" in log_path.read_text():
                try:
                    _, runs = runs_of(tmp_path, "faults")
                except Exception:  # the store is being created
                    continue
                done = [r for r in runs if r.data.tags.get("role") == "trial" and r.info.status == "FINISHED"]
                first = done[0] if done else None
        assert first is not None, "no trial finished in time:\n" + log_path.read_text()[-3000:]
        started += [p for p in _descendants(proc.pid) if p not in started]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _kill_all(started)  # what the killed driver left (Ray's agents outlive it by up to a minute)
        log.close()
    console = log_path.read_text()
    assert killed_worker is not None and eval_marker.exists(), console[-3000:]
    assert "evaluator 1/2: the engine died and Ray restarted it (restart 1 of at most 10" in console, console[-3000:]
    assert first.data.metrics["eval/lost_to_restarts"] == 1  # trial 1's evaluation died with the engine
    assert "Traceback" not in console, console[-3000:]  # Tune's tracebacks go to the tune log
    _, runs = runs_of(tmp_path, "faults")
    before = {r.info.run_id for r in runs if r.data.tags.get("role") == "trial" and r.info.status == "FINISHED"}
    assert len(before) == 1
    # an interrupted search has no final front yet: no test-split evaluation before it finishes
    assert not any("test/trace_leak" in r.data.metrics for r in runs)

    p = run("sweep.run", "--space", str(space), "--resume", cwd=tmp_path, timeout=400)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "trial 2/2" in p.stdout  # the counter includes the trial the first driver finished
    _, runs = runs_of(tmp_path, "faults")
    trials = [r for r in runs if r.data.tags.get("role") == "trial"]
    assert len(trials) == 2 and len({r.data.tags["tune_trial_id"] for r in trials}) == 2  # no duplicates
    assert before == {first.info.run_id} <= {r.info.run_id for r in trials}  # kept, not re-run
    assert all(r.info.status == "FINISHED" for r in runs), [(r.info.run_name, r.info.status) for r in runs]
    assert sum(r.data.tags.get("role") == "sweep" for r in runs) == 1  # the resumed sweep is the same run
    assert any("test/trace_leak" in r.data.metrics for r in trials)  # the finished search's front, once
    import optuna

    db = tmp_path / "optuna.db"
    (study,) = optuna.get_all_study_summaries(f"sqlite:///{db}")
    states = [t.state.name for t in optuna.load_study(study_name=study.study_name, storage=f"sqlite:///{db}").trials]
    # a point proposed just before the driver died, missing from the Tune state it resumed from, ends FAIL
    assert states.count("COMPLETE") == 2 and set(states) <= {"COMPLETE", "FAIL"}, states
