"""The sweep on a real two-node Ray cluster (two raylets, one GCS, on this machine) with a real MLflow server.

What a cluster run changes: the driver connects (`ray.address: auto`), the storage is a `file://` path that
every node mounts, MLflow is a server, and the trials' training lands on both nodes. The trace file reaches
the trials through the object store.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.sweep.test_sweep_e2e import ROOT, clean_env, small_space


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """`mlflow server` on a free port (SQLite store, proxied artifacts); stopped by its process group."""
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--artifacts-destination",
           str(tmp_path / "server-artifacts"), "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        import urllib.request

        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(uri + "/health", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("mlflow server did not come up") from None
                time.sleep(0.5)
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def two_nodes(monkeypatch, tmp_path):
    """A head node and a worker node of one CPU each: a trial's training worker (0.9 CPU) fills a node."""
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the nodes' workers import this checkout, as on a real cluster
    monkeypatch.setenv("R2MU_CACHE", str(tmp_path / "node-local"))  # what a node's disk would hold

    def ports() -> dict:  # free ones: the defaults (6379, 52365, ...) may be taken on a shared machine
        return {"dashboard_agent_listen_port": free_port(), "runtime_env_agent_port": free_port(),
                "metrics_export_port": free_port()}

    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 1, "include_dashboard": False, "gcs_server_port": free_port(),
                                      **ports()})
    try:
        cluster.add_node(num_cpus=1, **ports())
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()


def test_sweep_on_two_nodes_with_an_mlflow_server(tmp_path, mlflow_server, two_nodes):
    from mlflow import MlflowClient

    space = small_space(tmp_path, "cluster", num_samples=2, concurrent=2)
    raw = yaml.safe_load(space.read_text())
    raw["ray"] = {"address": "auto", "storage_path": f"file://{tmp_path}/shared"}
    raw["mlflow"] = {"tracking_uri": mlflow_server}
    raw["search"]["storage"] = f"sqlite:///{tmp_path}/optuna.db"  # a server MLflow has no file to put it beside
    raw["eval"]["engines"] = 2  # a pool: one engine per node
    space.write_text(yaml.safe_dump(raw))
    env = clean_env() | {"RAY_ADDRESS": two_nodes.address}
    p = subprocess.run([sys.executable, "-m", "sweep.run", "--space", str(space)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "the running cluster" in p.stdout
    assert "evaluator: 2 x hf backend up in" in p.stdout and "on 2 node(s)" in p.stdout, p.stdout[-3000:]

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("cluster")
    runs = client.search_runs([exp.experiment_id], "tags.role = 'trial'")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    nodes = {r.data.tags["train_node"] for r in runs}
    assert len(nodes) == 2 and "" not in nodes  # one trial trained on each node, at the same time
    assert {r.data.tags["eval_engine"] for r in runs} == {"0", "1"}  # the balancer used both engines
    for r in runs:  # the delta went through the server's artifact proxy
        assert any(a.path.endswith(".safetensors") for a in client.list_artifacts(r.info.run_id, "delta"))
    assert (tmp_path / "shared" / "cluster").is_dir()  # Tune's state on the shared path
    assert not list(Path(tmp_path / "shared").rglob("*.safetensors"))  # deltas only in MLflow
    assert list((tmp_path / "node-local" / "prefix").rglob("*.safetensors"))  # the prefix cache on the node
    import optuna  # the study is where search.storage says (the driver wrote it), both trials in it

    (study,) = optuna.get_all_study_summaries(f"sqlite:///{tmp_path}/optuna.db")
    assert study.study_name.startswith("cluster-") and study.n_trials == 2
    assert f"optuna     SQLite {tmp_path}/optuna.db" in p.stdout  # the plan named it
