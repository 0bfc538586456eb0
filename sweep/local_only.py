"""`python -m sweep.local_only` starts a local Ray exactly as the sweep does (sweep/ray_start.py), runs an actor and
a task, prints every listening socket of every process it started and exits 1 if one listens beyond loopback.
What listens where, measured: docs/security.md.
"""

from __future__ import annotations

import os
import sys

from sweep.ray_start import init_ray, is_loopback


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

    from sweep.space.config import load_space

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
