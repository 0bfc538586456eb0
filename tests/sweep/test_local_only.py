"""Nothing leaves the machine (docs/security.md): the sweep's local Ray listens on loopback only, usage
statistics are off in the driver and in Ray's workers unless the user turned them on, and `ray.shutdown()`
leaves no process behind. Real Ray, no mocks: `init_ray` of sweep/ray_start.py in a fresh driver process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import trainables
from eval.telemetry import TELEMETRY_OFF, telemetry_off
from sweep.ray_start import CLUSTER_SWITCH, LOCAL_ENV, is_loopback, loopback_ray, ray_env

ROOT = Path(__file__).resolve().parents[2]

# What MLflow takes for CI or a test run (mlflow/telemetry/utils.py): any of them disables its telemetry by
# itself, and the check that our switch does it would prove nothing. The driver asserts MLflow saw none.
MLFLOW_CI_MARKERS = ("PYTEST_CURRENT_TEST", "GITHUB_ACTIONS", "CI", "CIRCLECI", "GITLAB_CI", "JENKINS_URL", "TRAVIS",
                     "TF_BUILD", "BITBUCKET_BUILD_NUMBER", "CODEBUILD_BUILD_ARN", "BUILDKITE", "TEAMCITY_VERSION",
                     "CLOUD_RUN_EXECUTION", "RUNBOT_HOST_URL", "RUNBOT_BUILD_NAME", "RUNBOT_WORKER_ID")

# No Ray component is exempt: with the node IP 127.0.0.1 every one of them binds loopback (measured, Ray 2.60).
# A listener that cannot be bound there would be named here, with the reason, and reported by the test.
KNOWN_EXCEPTIONS: dict[str, str] = {}

DRIVER = r"""
import json, os, sys, time
import psutil

import sweep.run  # importing the sweep package sets the telemetry switches, before MLflow, Ray or vLLM
from sweep.space.config import load_space
from sweep.ray_start import init_ray

KEYS = sys.argv[2].split(",")
me = psutil.Process()
before = {p.pid for p in me.children(recursive=True)}
cfg = load_space(sys.argv[1])
cfg = cfg.model_copy(update={"ray": cfg.ray.model_copy(update={"address": None, "num_cpus": 2})})
t0 = time.monotonic()
init_ray(cfg)
init_s = time.monotonic() - t0

import ray
import ray._private.ray_constants as ray_constants
from ray._common.usage import usage_lib

def seen():
    return {"env": {k: os.environ.get(k) for k in KEYS}, "usage_stats": usage_lib.usage_stats_enabled(),
            "node_ip": ray.util.get_node_ip_address(), "pid": os.getpid()}

@ray.remote(num_cpus=0)
class Probe:  # like the evaluator: an actor with env_vars of its own, merged with the job's
    def seen(self):
        return seen()

actor = Probe.options(runtime_env={"env_vars": {"R2MU_PROBE": "actor"}}).remote()
out = {"actor": ray.get(actor.seen.remote()), "task": ray.get(ray.remote(seen).remote()), "init_s": init_s}
out["driver"] = seen() | {"switch_env": os.environ.get(sys.argv[3]), "cluster_flag": ray_constants.ENABLE_RAY_CLUSTER}

import huggingface_hub.constants as hf
import mlflow
from mlflow.telemetry import get_telemetry_client
from mlflow.telemetry import utils as mlflow_telemetry

out["hf_telemetry_disabled"] = hf.HF_HUB_DISABLE_TELEMETRY
out["mlflow"] = {"client": get_telemetry_client() is not None, "disabled": mlflow_telemetry.is_telemetry_disabled(),
                 "ci_or_test": mlflow_telemetry._IS_IN_CI_ENV_OR_TESTING}

time.sleep(1)  # the agents' and workers' servers are up well before this; a slow one still gets a second
procs = {}
for p in [me] + [c for c in me.children(recursive=True) if c.pid not in before]:
    try:
        socks = sorted({f"{c.laddr.ip}:{c.laddr.port}" for c in p.net_connections(kind="inet")
                        if c.status == psutil.CONN_LISTEN})
        procs[p.pid] = {"name": p.name(), "cmd": " ".join(p.cmdline())[:160], "listen": socks,
                        "created": p.create_time()}
    except psutil.NoSuchProcess:
        pass
out["procs"] = procs
t0 = time.monotonic()
ray.shutdown()
out["shutdown_s"] = time.monotonic() - t0
print("RESULT " + json.dumps(out))
"""


def driver_env() -> dict[str, str]:
    """This environment minus the switches under test, MLflow's CI markers, any Ray address/auth settings and
    an inherited torch.distributed rendezvous; plus one user choice that must survive (vLLM's stats on)."""
    drop = set(TELEMETRY_OFF) | set(LOCAL_ENV) | set(MLFLOW_CI_MARKERS) | {CLUSTER_SWITCH} | {
        "RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("RAY_")}
    return env | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "VLLM_NO_USAGE_STATS": "0"}


def alive(pid: int, created: float) -> bool:
    try:
        p = psutil.Process(pid)
        return p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(scope="module")
def local_ray_run():
    keys = [*TELEMETRY_OFF, *LOCAL_ENV, "R2MU_PROBE", CLUSTER_SWITCH]
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-c", DRIVER, str(ROOT / "search_spaces/organism.yaml"), ",".join(keys),
                        CLUSTER_SWITCH], cwd=ROOT, env=driver_env(), capture_output=True, text=True, timeout=180)
    wall = time.monotonic() - t0
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    assert p.returncode == 0 and lines, p.stdout[-3000:] + p.stderr[-3000:]
    out = json.loads(lines[-1].removeprefix("RESULT "))
    out["wall_s"] = wall
    # whatever the assertions say, nothing the driver started outlives this fixture
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(alive(int(pid), q["created"]) for pid, q in out["procs"].items()):
        time.sleep(0.2)
    out["left"] = {pid: q for pid, q in out["procs"].items() if alive(int(pid), q["created"])}
    for pid, q in out["left"].items():  # exactly those pids, checked by start time
        if alive(int(pid), q["created"]):
            psutil.Process(int(pid)).kill()
    return out


def test_every_process_of_the_local_ray_listens_on_loopback_only(local_ray_run):
    procs = local_ray_run["procs"]
    names = " ".join(q["name"] for q in procs.values())
    # the driver, GCS, raylet, both agents, the actor and the task's worker are all in what was checked
    for component in ("gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent", "ray::Probe"):
        assert component in names, names
    listeners = {pid: q["listen"] for pid, q in procs.items() if q["listen"]}
    assert str(local_ray_run["driver"]["pid"]) in listeners  # the driver's own gRPC server was seen
    assert len(listeners) >= 5, procs  # driver, GCS, raylet, runtime-env agent, actor, workers
    wide = {f"{q['name']} ({pid}) {s}": q["cmd"] for pid, q in procs.items() for s in q["listen"]
            if not is_loopback(s.rsplit(":", 1)[0])}
    excepted = {k: v for k, v in wide.items() if any(name in k for name in KNOWN_EXCEPTIONS)}
    assert not (set(wide) - set(excepted)), wide
    for ip in {local_ray_run[w]["node_ip"] for w in ("driver", "actor", "task")}:
        assert ip == "127.0.0.1"


def test_usage_statistics_are_off_in_the_driver_and_the_workers_unless_the_user_set_them(local_ray_run):
    for where in ("driver", "actor", "task"):
        seen = local_ray_run[where]
        assert seen["usage_stats"] is False, where  # Ray's own flag
        env = seen["env"]
        for k, v in TELEMETRY_OFF.items():
            assert env[k] == ("0" if k == "VLLM_NO_USAGE_STATS" else v), (where, k, env[k])  # the user's 0 kept
        if where != "driver":
            assert env["GLOO_SOCKET_IFNAME"] == "lo", where  # a local Ray's trainers: gloo on loopback
            assert env[CLUSTER_SWITCH] == "0", where  # inherited from the Ray processes; harmless in a worker
    assert local_ray_run["actor"]["env"]["R2MU_PROBE"] == "actor"  # the actor's own env_vars merged with the job's
    assert local_ray_run["hf_telemetry_disabled"] is True
    assert local_ray_run["mlflow"] == {"client": False, "disabled": True, "ci_or_test": False}
    # the switch that made the node IP 127.0.0.1 is undone in the driver once Ray is up
    assert local_ray_run["driver"]["switch_env"] is None
    assert local_ray_run["driver"]["cluster_flag"] is True


def test_shutdown_leaves_no_process_behind_and_it_is_fast(local_ray_run):
    assert not local_ray_run["left"], local_ray_run["left"]
    assert local_ray_run["shutdown_s"] < 15
    assert local_ray_run["wall_s"] < 60, local_ray_run["wall_s"]


# ---------------------------------------------------------------- the pieces, without Ray


@pytest.mark.parametrize("ip,loop", [("127.0.0.1", True), ("127.0.1.1", True), ("::1", True),
                                     ("::ffff:127.0.0.1", True), ("0.0.0.0", False), ("::", False),
                                     ("192.0.2.2", False), ("::ffff:192.0.2.2", False), ("fe80::1%eth0", False)])
def test_is_loopback(ip, loop):
    assert is_loopback(ip) is loop


def test_trainables_keeps_the_same_telemetry_table_as_eval():
    assert trainables.TELEMETRY_OFF == TELEMETRY_OFF


def test_telemetry_off_keeps_what_the_user_set():
    env = {"DO_NOT_TRACK": "0", "OTHER": "x"}
    assert telemetry_off(env) == TELEMETRY_OFF | {"DO_NOT_TRACK": "0"}
    assert env["OTHER"] == "x" and env["MLFLOW_DISABLE_TELEMETRY"] == "true"


def test_ray_env_adds_telemetry_everywhere_and_loopback_gloo_only_for_a_local_ray(monkeypatch):
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "0")
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    local, cluster = ray_env({"OMP_NUM_THREADS": "1"}, True), ray_env({"OMP_NUM_THREADS": "1"}, False)
    assert local["HF_HUB_DISABLE_TELEMETRY"] == cluster["HF_HUB_DISABLE_TELEMETRY"] == "0"  # the user's choice
    assert local["RAY_USAGE_STATS_ENABLED"] == cluster["RAY_USAGE_STATS_ENABLED"] == "0"
    assert local["GLOO_SOCKET_IFNAME"] == "lo" and "GLOO_SOCKET_IFNAME" not in cluster  # cluster: every node's own
    assert local["OMP_NUM_THREADS"] == "1"


def test_loopback_ray_restores_the_switch_it_sets(monkeypatch):
    import ray
    import ray._private.ray_constants as ray_constants

    if ray.is_initialized():
        pytest.skip("a Ray is already up in this process")
    monkeypatch.setenv(CLUSTER_SWITCH, "1")
    with loopback_ray():
        assert os.environ[CLUSTER_SWITCH] == "0" and ray_constants.ENABLE_RAY_CLUSTER is False
        assert ray.util.get_node_ip_address() == "127.0.0.1"  # what ray.init() would take for the node IP
    assert os.environ[CLUSTER_SWITCH] == "1" and ray_constants.ENABLE_RAY_CLUSTER is True


# ---------------------------------------------------------------- training's process group

TORCH_DIST = r"""
import os, psutil
os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # what a local Ray gives its workers (LOCAL_ENV)
from trainables.trainer import _init_distributed, one_process_env
os.environ.update(one_process_env())  # what the lifecycle sets for a trial that trains in its own process
_init_distributed(use_gpu=False)
import torch.distributed as dist
assert dist.is_initialized() and dist.get_world_size() == 1
print(" ".join(sorted({f"{c.laddr.ip}:{c.laddr.port}" for c in psutil.Process().net_connections("inet")
                       if c.status == psutil.CONN_LISTEN})))
dist.destroy_process_group()
"""


@pytest.fixture(scope="module")
def torch_listeners() -> list[str]:
    """Every listening socket of a process once the trainer has made its one-process group, as a trial does."""
    env = {k: v for k, v in os.environ.items() if k not in {"RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                            "MASTER_PORT"}}
    p = subprocess.run([sys.executable, "-c", TORCH_DIST], env=env | {"OMP_NUM_THREADS": "1"}, capture_output=True,
                       text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout.strip().splitlines()[-1].split()  # the last line (DeepSpeed prints a warning first)


def test_the_trainers_process_group_listens_on_loopback_only(torch_listeners):
    """The group's store is a file (no TCPStore server, which torch binds on every interface), and gloo's own
    listener, where it opens one, is on loopback."""
    assert all(is_loopback(s.rsplit(":", 1)[0]) for s in torch_listeners), torch_listeners
