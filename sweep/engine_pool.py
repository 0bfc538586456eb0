"""The sweep's evaluation engines: `eval.engines` evaluator actors spread over the nodes, and a balancer that
gives each trial the least loaded one.

Each engine is a `sweep.evaluator.Evaluator` actor (the base model loaded once, a trial's delta swapped in and
out), named `<pool>-<i>` so that every trial finds it, started on the nodes in turn; the balancer is a small
actor, `<pool>-balancer`, that counts the evaluations running on each engine. An engine that dies is restarted
by Ray (up to `eval.engine.max_restarts` times, on any node with room) and the evaluation it was running runs
again (`sweep.evaluator.call_with_retry`); the driver prints a line for each restart (`RestartWatch`).

Placement on GPUs (`eval.placement`, docs/cluster.md):
- dedicated: an engine asks Ray for a whole GPU, and so does each training worker.
- colocated: one engine on every GPU, asking for ENGINE_SHARE = 0.51 of it, and a training worker asks for the
  other 0.49. Ray puts a fractional request on a card that has room, so no two engines fit one card (1.02)
  and, with an engine on every card, each card has room for exactly one worker. An engine asking for 0.3
  would share its card with a second engine (tests/sweep/test_engine_pool.py shows both). The memory split is
  vLLM's, not Ray's: `eval.engine.gpu_memory_utilization`.
"""

from __future__ import annotations

import re
import traceback
from pathlib import Path
from typing import Any

from eval.paths import resolve_uri
from sweep.evaluator import RestartWatch, call_with_retry, evaluator_actor
from sweep.space.config import ConfigError, SweepConfig

ENGINE_SHARE = 0.51  # of a GPU, colocated: more than half, so one engine per card


def engine_gpus(cfg: SweepConfig) -> float:
    """What one engine asks Ray for: no GPU on CPU, a whole one when dedicated, ENGINE_SHARE when colocated."""
    if not cfg.train.use_gpu:
        return 0.0
    return 1.0 if cfg.eval.placement == "dedicated" else ENGINE_SHARE


def train_worker_gpus(cfg: SweepConfig) -> float | None:
    """What one training worker asks Ray for: None (Ray Train's default, a whole GPU with use_gpu) unless the
    engines are colocated, then the rest of the card."""
    if cfg.train.use_gpu and cfg.eval.placement == "colocated":
        return round(1.0 - ENGINE_SHARE, 2)
    return None


def engine_count(cfg: SweepConfig, cluster_gpus: float) -> int:
    """`eval.engines` resolved against the cluster's GPUs; a ConfigError naming the field when the engines would
    leave no GPU to train on or ask for more cards than there are."""
    n, gpus, t = cfg.eval.engines, int(cluster_gpus), cfg.train
    if not t.use_gpu:
        return 1 if n == "auto" else int(n)
    training = cfg.search.max_concurrent * t.num_workers  # GPUs the trials train on at once
    if cfg.eval.placement == "colocated":
        if gpus < 1 or n not in ("auto", gpus):  # fewer engines would leave cards where two workers fit
            raise ConfigError(cfg.name, [("eval.engines", (
                f"colocated puts one engine on every GPU; the cluster has {gpus} GPU(s), eval.engines is {n}: "
                f"set it to auto (or {gpus}), or eval.placement: dedicated"))])
        return gpus
    n = max(1, gpus - training) if n == "auto" else int(n)
    if n > gpus - t.num_workers:
        raise ConfigError(cfg.name, [("eval.engines", (
            f"{n} dedicated engines leave {gpus - n} of the cluster's {gpus} GPUs for training, and one trial "
            f"needs train.num_workers={t.num_workers}: lower eval.engines, or eval.placement: colocated"))])
    return n


def spread_over(n: int, gpus: float) -> list[str | None]:
    """The node each of n engines should start on: the alive nodes (with GPUs, when engines need them) in turn.
    Soft: an engine whose node has no room (or is gone, after a restart) starts wherever Ray finds room. Ray's
    own SPREAD strategy put both engines on one node here (it is best-effort)."""
    import ray

    nodes = sorted(nd["NodeID"] for nd in ray.nodes()
                   if nd["Alive"] and (gpus == 0 or nd["Resources"].get("GPU", 0) > 0))
    return [nodes[i % len(nodes)] if n > 1 and nodes else None for i in range(n)]


class Balancer:
    """Which engine evaluates next: the one with the fewest evaluations running, then the one that has served
    the fewest (so idle engines take turns)."""

    def __init__(self, n: int):
        self.running, self.served = [0] * n, [0] * n

    def acquire(self) -> int:
        i = min(range(len(self.running)), key=lambda j: (self.running[j], self.served[j], j))
        self.running[i] += 1
        self.served[i] += 1
        return i

    def release(self, i: int) -> None:
        self.running[i] = max(0, self.running[i] - 1)

    def load(self) -> dict[str, list[int]]:
        return {"running": list(self.running), "served": list(self.served)}


class EnginePool:
    """The engines as the driver and every trial see them: `start` (driver) or `attach` (a trial), then
    `evaluate_delta` and `attack_delta`, each on the least loaded engine."""

    def __init__(self, name: str, engines: list[Any], balancer: Any, max_restarts: int):
        self.name, self.engines, self.balancer, self.max_restarts = name, engines, balancer, max_restarts

    @classmethod
    def start(cls, name: str, n: int, model_path: str, cfg: SweepConfig) -> EnginePool:
        """Create (or find, after a restart of the driver) `n` engines spread over the nodes, and the balancer."""
        import ray

        gpus = engine_gpus(cfg)
        nodes = spread_over(n, gpus)
        engines = [evaluator_actor(f"{name}-{i}", model_path, cfg.eval, cfg.model.dtype, gpus, nodes[i])
                   for i in range(n)]
        balancer = ray.remote(Balancer).options(name=f"{name}-balancer", get_if_exists=True, num_cpus=0,
                                                max_restarts=-1).remote(n)
        return cls(name, engines, balancer, cfg.eval.engine.max_restarts)

    @classmethod
    def attach(cls, name: str, n: int, max_restarts: int) -> EnginePool:
        """The pool a driver started, found by name (inside a trial)."""
        import ray

        return cls(name, [ray.get_actor(f"{name}-{i}") for i in range(n)], ray.get_actor(f"{name}-balancer"),
                   max_restarts)

    def infos(self) -> list[dict[str, Any]]:
        """Each engine's backend and start-up time; waits until all have started (raises if one cannot)."""
        import ray

        return ray.get([e.info.remote() for e in self.engines])

    def on_least_loaded(self, method: str, *args: Any) -> tuple[Any, int, int]:
        """`method(*args)` on the least loaded engine: (result, evaluations lost to engine restarts, engine)."""
        import ray

        i = ray.get(self.balancer.acquire.remote())
        try:
            out, lost = call_with_retry(self.engines[i], method, *args, max_restarts=self.max_restarts)
        finally:
            self.balancer.release.remote(i)
        return out, lost, i

    def evaluate_delta(self, delta: Any, split: str = "selection",
                       screened: Any = None) -> tuple[dict[str, Any], int, int]:
        """The base model with `delta` swapped in, on `split`: (the evaluator's result, lost, engine)."""
        return self.on_least_loaded("evaluate", delta, split, *([screened] if screened is not None else []))

    def attack_delta(self, delta: Any, names: list[str] | None = None,
                     split: str = "test") -> tuple[dict[str, Any], int, int]:
        """The space's attacks (or `names`) on the base model with `delta` swapped in: (result, lost, engine)."""
        return self.on_least_loaded("attack", delta, names, split)

    def watch(self) -> list[RestartWatch]:
        """Driver threads that print a line each time Ray restarts an engine (stop them with __exit__)."""
        n = len(self.engines)
        return [RestartWatch(e, self.max_restarts, label="evaluator" if n == 1 else f"evaluator {i + 1}/{n}")
                .__enter__() for i, e in enumerate(self.engines)]


# Root causes that mean a file the engine read is broken or missing, not that the engine is sized wrong.
FILE_ERRORS = {"SafetensorError", "HeaderTooLarge", "OSError", "FileNotFoundError", "IsADirectoryError",
               "NotADirectoryError", "PermissionError", "UnicodeDecodeError", "JSONDecodeError", "EOFError",
               "UnpicklingError"}
_EXC_LINE = re.compile(r"^\s*((?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception)): (.*)$")


def root_cause(err: BaseException) -> tuple[str, str]:
    """(dotted type name, message) of the root of a Ray error's exception chain.

    Where Ray kept the exception objects (`RayTaskError.cause`, `__cause__`, `__context__`) the chain is walked
    to its first exception. An actor whose constructor failed keeps only the remote traceback's text; Python
    prints a chain root first, so the first `pkg.module.SomeError: message` line is the root."""
    e, seen = err, set()
    while id(e) not in seen:
        seen.add(id(e))
        nxt = getattr(e, "cause", None) if isinstance(getattr(e, "cause", None), BaseException) else None
        nxt = nxt or e.__cause__ or e.__context__
        if nxt is None:
            break
        e = nxt
    text = str(err) if e is err else "".join(traceback.format_exception(e))
    for line in text.splitlines():
        m = _EXC_LINE.match(line)
        if m:
            return m.group(1), m.group(2).strip()
    if e is not err:
        return f"{type(e).__module__}.{type(e).__qualname__}".removeprefix("builtins."), str(e)
    return type(err).__name__, (str(err).splitlines() or [""])[0]


def engine_start_error(cfg: SweepConfig, err: BaseException) -> ConfigError:
    """Why the evaluator could not start, and which fields or files fix it."""
    kind, message = root_cause(err)
    path = resolve_uri(cfg.model.path)
    if kind.rsplit(".", 1)[-1] in FILE_ERRORS:
        files = sorted(p.name for p in Path(path).glob("*") if p.is_file()) if Path(path).is_dir() else []
        weights = [f for f in files if f.endswith((".safetensors", ".bin", ".pt"))]
        files = weights if "Safetensor" in kind or "Unpickl" in kind else files
        return ConfigError(f"{cfg.name} (the evaluation engine)", [("model.path", (
            f"the {cfg.eval.backend} backend could not read the model files in {path} ({', '.join(files[:8])}): "
            f"{kind}: {message}. Fix: restore or re-export the model files (the dry run checks their headers)"))])
    return ConfigError(f"{cfg.name} (the evaluation engine)", [("eval.engine", (
        f"the {cfg.eval.backend} backend could not start on {cfg.model.path}: {kind}: {message}. Fix: "
        "eval.engine.max_model_len (longest prompt + max_new_tokens) or kv_cache_memory_bytes, or eval.backend: hf"))])
