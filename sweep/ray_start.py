"""Starting Ray for a sweep: a local Ray listens on 127.0.0.1 only, and usage statistics stay off.

A plain `ray.init()` (Ray 2.60) listens on every interface: GCS, raylet, object manager and each worker's gRPC
server on `::`, the autoscaler monitor's metrics on 0.0.0.0, the runtime-env agent on the node's IP. Every Ray
component decides with one test, "is the node IP 127.0.0.1?", and binds only loopback when it is. But
`ray.init(_node_ip_address="127.0.0.1")` does not get there: Ray rewrites 127.0.0.1 to the machine's
routable address (`services.resolve_ip_for_localhost`) unless `ray_constants.ENABLE_RAY_CLUSTER` is off,
which is what Ray does on macOS and Windows and what `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` sets on import.
`loopback_ray()` turns it off around the `ray.init()` that starts the local Ray (the variable for the
processes Ray spawns, the constant for this already-imported Ray) and restores both after; Ray's processes
are then given `--node-ip-address=127.0.0.1`. What listens where, measured: docs/security.md.

`init_ray` is the one place a sweep (and `sweep.local_only`'s audit, and the benchmarks) starts Ray.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

from eval.telemetry import telemetry_off

if TYPE_CHECKING:
    from sweep.space.config import SweepConfig

CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # 0: Ray's node IP is 127.0.0.1 (ray_constants.py)

# for a local Ray only (all its processes on this machine): torch.distributed's gloo transport (the trainers'
# process group, vLLM's CPU group) binds the address the hostname resolves to, a LAN address on many hosts
LOCAL_ENV = {"GLOO_SOCKET_IFNAME": "lo"}


def is_loopback(ip: str) -> bool:
    """127.0.0.0/8, ::1, or an IPv4-mapped loopback (::ffff:127.0.0.1: how Ray's gRPC servers show)."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def ray_env(base: Mapping[str, str], local: bool) -> dict[str, str]:
    """The Ray job's `env_vars`: `base` (tuner.WORKER_ENV), the telemetry switches as this process has them
    (the user's own value wins), and for a local Ray the loopback-only settings unless the user set them."""
    env = {**base, **telemetry_off()}
    if local:
        env |= {k: os.environ.get(k, v) for k, v in LOCAL_ENV.items()}
    return env


@contextmanager
def loopback_ray() -> Iterator[None]:
    """Around the `ray.init()` that starts a local Ray: its node IP, and so every listener, is 127.0.0.1.
    Raises (and shuts that Ray down) if Ray came up on another address: a Ray release that changed this."""
    import ray
    import ray._private.ray_constants as ray_constants

    if not hasattr(ray_constants, "ENABLE_RAY_CLUSTER"):
        raise RuntimeError(f"Ray {ray.__version__} has no ray_constants.ENABLE_RAY_CLUSTER: the local Ray cannot be "
                           "bound to 127.0.0.1 this way (sweep/ray_start.py, docs/security.md)")
    saved_env, saved_flag = os.environ.get(CLUSTER_SWITCH), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[CLUSTER_SWITCH] = "0"  # inherited by GCS, raylet, agents and workers
    ray_constants.ENABLE_RAY_CLUSTER = False  # read by services.get_node_ip_address() at call time
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(CLUSTER_SWITCH, None)
        else:
            os.environ[CLUSTER_SWITCH] = saved_env
    if ray.is_initialized() and not is_loopback(ip := ray.util.get_node_ip_address()):
        ray.shutdown()
        raise RuntimeError(f"the local Ray came up on {ip}, not 127.0.0.1 (Ray {ray.__version__}); "
                           "see sweep/ray_start.py")



def init_ray(cfg: SweepConfig, verbose: bool = False) -> None:
    """Start (or join) the Ray a sweep runs on, with its workers' environment; a local Ray listens on 127.0.0.1."""
    import ray

    from sweep.tuner import WORKER_ENV
    from sweep.warm_workers import SETUP_HOOK
    from sweep.warm_workers import enabled as warm_enabled

    for k, v in WORKER_ENV.items():
        os.environ.setdefault(k, v)
    local = cfg.ray.address in (None, "local")
    env = ray_env(WORKER_ENV, local)  # + telemetry off (the user's own values win), loopback-only gloo if local
    # every worker process runs the hook as it starts; it imports the training stack only in processes started
    # for Ray Train workers (sweep/warm_workers.py)
    runtime_env = {"env_vars": env} | ({"worker_process_setup_hook": SETUP_HOOK} if warm_enabled(cfg) else {})
    if local:
        with loopback_ray():  # every Ray process listens on 127.0.0.1 only (above)
            ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False, runtime_env=runtime_env,
                     log_to_driver=verbose)
    else:
        ray.init(address=cfg.ray.address, runtime_env=runtime_env, log_to_driver=verbose)
