"""study/organism.sh --list on a real MLflow store: which sweeps are done, stopped (resumed) or missing."""

import shutil
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]


def test_list_names_each_sweeps_state_and_command(tmp_path):
    (tmp_path / "study").mkdir()
    for script in ("organism.sh", "state.sh"):  # it runs from its parent directory
        shutil.copy(ROOT / "study" / script, tmp_path / "study" / script)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    for name, status in (("study-r2mu-s42", "FINISHED"), ("study-rmu-s42", "KILLED")):
        run = client.create_run(client.create_experiment(name), tags={"role": "sweep"})
        client.set_terminated(run.info.run_id, status)
    env = {"PATH": "/usr/bin:/bin", "PY": sys.executable, "SEEDS": "42 43", "STUDY_ONLY": "r2mu,rmu no-cot"}
    p = subprocess.run(["bash", "study/organism.sh", "--list"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert [ln.split()[:2] for ln in lines] == [
        ["done", "study-r2mu-s42"], ["partial", "study-rmu-s42"], ["missing", "study-r2mu-s43"],
        ["missing", "study-rmu-s43"], ["missing", "study-no-cot-s42"], ["missing", "study-no-cot-s43"]]
    assert lines[1].endswith("--set name=study-rmu-s42 --set train.seed=42 --resume")  # stopped: resumed
    assert "search_spaces/rmu.yaml" in lines[1] and lines[4].endswith("--set search.space.gamma=0")


def test_smollm2_list_and_an_unknown_sweep(tmp_path):
    (tmp_path / "study").mkdir()
    for script in ("smollm2.sh", "state.sh"):
        shutil.copy(ROOT / "study" / script, tmp_path / "study" / script)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.create_run(client.create_experiment("smollm2-skip-bos"), tags={"role": "sweep"})
    client.set_terminated(run.info.run_id, "FINISHED")
    env = {"PATH": "/usr/bin:/bin", "PY": sys.executable}
    p = subprocess.run(["bash", "study/smollm2.sh", "--list"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert [ln.split()[:2] for ln in lines] == [["done", "smollm2-skip-bos"], ["missing", "smollm2-screen3"]]
    assert lines[0].endswith("--set data.skip_first_position=true")
    assert lines[1].endswith("--set eval.screen={items: 12, confidence: 0.8}")  # kept whole, spaces and all
    p = subprocess.run(["bash", "study/smollm2.sh", "--list"], cwd=tmp_path, env={**env, "SWEEPS": "smollm2-rmu"},
                       capture_output=True, text=True, timeout=300)
    assert p.stdout.split()[:2] == ["missing", "smollm2-rmu"]
    assert p.stdout.strip().endswith("--set search.space.beta=0 --set search.space.gamma=0")
    # a bad name after a good one is refused before the good one's sweep starts
    p = subprocess.run(["bash", "study/smollm2.sh"], cwd=tmp_path,
                       env={**env, "SWEEPS": "smollm2-screen3 smollm2-nope"}, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 2 and "SWEEPS: unknown sweep smollm2-nope" in p.stderr
    assert "sweep.run" not in p.stdout


def test_testbed_list_runs_the_precondition_first(tmp_path):
    (tmp_path / "study").mkdir()
    for script in ("testbed.sh", "state.sh"):
        shutil.copy(ROOT / "study" / script, tmp_path / "study" / script)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.create_run(client.create_experiment("testbed-rmu-s42"), tags={"role": "sweep"})
    client.set_terminated(run.info.run_id, "KILLED")
    env = {"PATH": "/usr/bin:/bin", "PY": sys.executable, "SEEDS": "42 43"}
    p = subprocess.run(["bash", "study/testbed.sh", "--list"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert [ln.split()[:2] for ln in lines] == [
        ["partial", "testbed-rmu-s42"], ["missing", "testbed-r2mu-s42"], ["missing", "testbed-rmu-s43"],
        ["missing", "testbed-r2mu-s43"]]
    assert lines[0].endswith("--set search.space.beta=0 --set search.space.gamma=0 --resume")
    assert "search_spaces/testbed.yaml" in lines[1] and lines[1].endswith("--set train.seed=42")
