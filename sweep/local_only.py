"""Nothing leaves the machine: a local Ray listens on 127.0.0.1 only, and usage statistics stay off.

A plain `ray.init()` (Ray 2.60) listens on every interface: GCS, raylet, object manager and each worker's gRPC
server on `::`, the autoscaler monitor's metrics on 0.0.0.0, the runtime-env agent on the node's IP. Every Ray
component decides with one test, "is the node IP 127.0.0.1?", and binds only loopback when it is. But
`ray.init(_node_ip_address="127.0.0.1")` does not get there: Ray rewrites 127.0.0.1 to the machine's
routable address (`services.resolve_ip_for_localhost`) unless `ray_constants.ENABLE_RAY_CLUSTER` is off,
which is what Ray does on macOS and Windows and what `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` sets on import.
`loopback_ray()` turns it off around the `ray.init()` that starts the local Ray (the variable for the
processes Ray spawns, the constant for this already-imported Ray) and restores both after; Ray's processes
are then given `--node-ip-address=127.0.0.1`. What listens where, measured: docs/security.md.

`python -m sweep.local_only` starts a local Ray exactly as the sweep does, runs an actor and a task, prints
every listening socket of every process it started and exits 1 if one listens beyond loopback.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from eval.telemetry import telemetry_off

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
                           "bound to 127.0.0.1 this way (sweep/local_only.py, docs/security.md)")
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
                           "see sweep/local_only.py")


def listening(pids: list[int]) -> dict[int, tuple[str, list[str]]]:
    """pid -> (process name, or the script a python process runs; its listening TCP sockets as 'ip:port').
    A process gone meanwhile is left out."""
    import psutil

    out = {}
    for pid in pids:
        try:
            p = psutil.Process(pid)
            socks = sorted({f"{c.laddr.ip}:{c.laddr.port}" for c in p.net_connections(kind="inet")
                            if c.status == psutil.CONN_LISTEN})
            scripts = [os.path.basename(a) for a in p.cmdline()[1:] if a.endswith(".py")]
            out[pid] = (scripts[0] if p.name().startswith("python") and scripts else p.name(), socks)
        except psutil.NoSuchProcess:
            continue
    return out


def audit(space: str, num_cpus: int | None = None) -> int:
    """Start the space's local Ray as `sweep.run` does, an actor and a task; print what every process listens on."""
    import psutil
    import ray

    from sweep.config import load_space
    from sweep.run import init_ray

    cfg = load_space(space)
    if cfg.ray.address not in (None, "local"):
        print(f"{space}: ray.address is {cfg.ray.address!r}; this checks a local Ray only", file=sys.stderr)
        return 2
    if num_cpus:
        cfg = cfg.model_copy(update={"ray": cfg.ray.model_copy(update={"num_cpus": num_cpus})})
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    init_ray(cfg)
    try:
        @ray.remote(num_cpus=0)
        class Probe:
            def where(self) -> str:
                return ray.util.get_node_ip_address()

        actor = Probe.remote()
        ray.get([actor.where.remote(), ray.remote(lambda: 0).remote()])
        pids = [me.pid] + [p.pid for p in me.children(recursive=True) if p.pid not in before]
        bad = 0
        for pid, (name, socks) in listening(pids).items():
            wide = [s for s in socks if not is_loopback(s.rsplit(":", 1)[0])]
            bad += len(wide)
            print(f"{pid:>8}  {name:<22} {' '.join(socks) or '-'}{'   <- NOT loopback' if wide else ''}")
    finally:
        ray.shutdown()
    print("every listener is on loopback" if not bad else f"{bad} listener(s) beyond loopback")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m sweep.local_only", description="start the sweep's local Ray, "
                                "list every socket its processes listen on; exit 1 if one is beyond loopback")
    p.add_argument("--space", default="search_spaces/organism.yaml", metavar="FILE", help="the space file "
                   "(its ray: settings; default search_spaces/organism.yaml)")
    p.add_argument("--num-cpus", type=int, metavar="N", help="override ray.num_cpus")
    args = p.parse_args(argv)
    return audit(args.space, args.num_cpus)


if __name__ == "__main__":
    sys.exit(main())
