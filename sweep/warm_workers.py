"""Ray worker processes started ahead of time for the next trial's Ray Train actors, the training stack imported.

A trial's `TorchTrainer.fit()` starts two processes (the Train controller, then each training worker) and
the worker imports torch, DeepSpeed and transformers before it trains: most of a small trial's overhead
(bench/RESULTS.md). Ray gives a new actor an idle worker process whose runtime env matches the actor's
exactly, and its raylet starts idle workers on request (the `PrestartWorkers` call, which Ray 2.60 does not
expose in Python: called here with Ray's own gRPC stubs). So before each trial the sweep asks the raylet of
this node for one process in the controller's runtime env and `num_workers` in the training workers' (both
computed as Ray Train computes them); the job's `worker_process_setup_hook` (`trainables.warm.preload`)
imports the training stack in the latter as they start. When they match, the next trial's actors start in
a warm process; when they do not (another Ray release, another node), the actors start cold as before and
the prestarted processes exit after `KEEP_ALIVE_S`.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ray import tune

from trainables.warm import PRELOAD_VAR

SETUP_HOOK = "trainables.warm.preload"
TRAIN_WORKER_ENV = {"env_vars": {PRELOAD_VAR: "train"}}  # RunConfig.worker_runtime_env of every trial
KEEP_ALIVE_S = 1800


def _merged(parent: dict, env_vars: dict[str, str]) -> dict:
    """The runtime env an actor created with `runtime_env={"env_vars": env_vars}` ends up with: the parent's,
    its env_vars updated (as Ray's core worker merges them)."""
    out = json.loads(json.dumps(parent))
    out["env_vars"] = {**out.get("env_vars", {}), **env_vars}
    return out


def trainable_env(job: dict) -> dict:
    """The runtime env of a Tune trial's process (where `TorchTrainer.fit()` runs), as Tune 2.60 builds it:
    the job's, plus Tune's defaults and the variables it propagates from this (the driver's) environment."""
    from ray.tune.execution.class_cache import DEFAULT_ENV_VARS, ENV_VARS_TO_PROPAGATE

    return _merged(job, {**DEFAULT_ENV_VARS, **{k: os.environ[k] for k in ENV_VARS_TO_PROPAGATE if k in os.environ}})


def train_envs(parent: dict) -> tuple[dict, dict]:
    """The runtime envs of a fit's controller and of its training workers, as Ray Train 2.60 builds them from
    the env of the process that calls `fit()` (`parent`)."""
    from ray.train.v2._internal import constants as c

    propagated = c.get_env_vars_to_propagate()
    controller = {**propagated}
    controller.setdefault(c.RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR,
                          c.DEFAULT_RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_VALUE)
    controller_env = _merged(parent, controller)
    # the workers are the controller's children: its env, then the propagated variables and the trial's own
    return controller_env, _merged(controller_env, {**propagated, **TRAIN_WORKER_ENV["env_vars"]})


def _serialized(runtime_env: dict) -> Any:
    """Ray's RuntimeEnvInfo for `runtime_env`, its JSON as the core worker writes a merged env (compact, keys
    sorted): the raylet matches idle workers to actors by the hash of that string."""
    from ray._private.utils import get_runtime_env_info
    from ray.runtime_env import RuntimeEnv

    info = get_runtime_env_info(RuntimeEnv(**runtime_env), is_job_runtime_env=False, serialize=False)
    info.serialized_runtime_env = json.dumps(json.loads(info.serialized_runtime_env), separators=(",", ":"),
                                             sort_keys=True)
    return info


def prestart(num_workers: int, sets: int = 1, keep_alive_s: int = KEEP_ALIVE_S, parent_env: dict | None = None) -> bool:
    """Ask this node's raylet for `sets` x (two processes in the Train controller's env: the controller and its
    placement-group cleaner, and `num_workers` in the training workers' env).
    False (and nothing started) when this Ray cannot do it; never raises: warm workers only save time."""
    try:
        import ray
        from ray._private.grpc_utils import init_grpc_channel
        from ray.core.generated import common_pb2, node_manager_pb2, node_manager_pb2_grpc

        ctx = ray.get_runtime_context()
        node = next(n for n in ray.nodes() if n["NodeID"] == ctx.get_node_id())
        stub = node_manager_pb2_grpc.NodeManagerServiceStub(
            init_grpc_channel(f"{node['NodeManagerAddress']}:{node['NodeManagerPort']}"))
        # the fits run in Tune trials (bench/fit_overhead.py fits in its driver: `parent_env`, its own env)
        controller, worker = train_envs(parent_env or trainable_env(ctx.runtime_env))
        for env, n in ((controller, 2 * sets), (worker, num_workers * sets)):
            stub.PrestartWorkers(node_manager_pb2.PrestartWorkersRequest(
                language=common_pb2.PYTHON, job_id=bytes.fromhex(ctx.get_job_id()),
                runtime_env_info=_serialized(env), keep_alive_duration_secs=keep_alive_s, num_workers=n),
                timeout=10)
        return True
    except Exception as e:  # a Ray without the call, or another layout: trials start cold, as before
        print(f"warm workers: not available ({type(e).__name__}: {e}); trials start their workers cold",
              flush=True)
        return False


class KeepWarm(tune.Callback):
    """As each trial starts, one more warm set for a trial still to come."""

    def __init__(self, num_workers: int, num_samples: int, ahead: int):
        self.num_workers, self.num_samples, self.ahead, self.started = num_workers, num_samples, ahead, 0

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.started += 1
        if self.started + self.ahead <= self.num_samples:
            prestart(self.num_workers)


def enabled(cfg: Any) -> bool:
    """`ray.warm_workers`; auto = with GPUs. On a CPU-only machine the trials already keep every core busy and
    prestarting only moves the imports' CPU time around (the demo on 2 cores got slower: bench/RESULTS.md)."""
    return cfg.train.use_gpu if cfg.ray.warm_workers == "auto" else bool(cfg.ray.warm_workers)


def keep_warm(cfg: Any) -> KeepWarm | None:
    """Prestart the first `search.max_concurrent` sets now (the evaluator, traces and baseline come first, so
    they are warm when the first trials start) and return the callback that keeps one set ahead; None when
    `ray.warm_workers` is off or this Ray cannot prestart."""
    if not enabled(cfg):
        return None
    ahead = min(cfg.search.max_concurrent, cfg.search.num_samples)
    if not prestart(cfg.train.num_workers, sets=ahead):
        return None
    return KeepWarm(cfg.train.num_workers, cfg.search.num_samples, ahead)
