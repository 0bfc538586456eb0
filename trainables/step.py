"""One R²MU optimisation step under DeepSpeed, with all its bookkeeping, so the trainer's loop is a few lines.

    train_step = R2MUStep(StepSetup(obj, engine, streams, cache, active, weights, zero_stage, device, steps))
    row = train_step(step)   # {"step": i, "forget": ..., ..., "loss": ...}; a non-finite loss was not applied

What a call does, in this order (the order is part of the numerics and of the overlap):
  1. the step's CPU batches (built during the previous step's backward) go to the device;
  2. each stream's loss-token count is all-reduced: every worker normalises by the GLOBAL count, so the
     workers' losses add up to the one-process loss of the whole batch;
  3. the no-grad part of the step (`R2MU.prepare`) is read from the prefix cache, or computed and written to it;
  4. forward and backward of `loss x world` (DeepSpeed averages gradients over the workers), under ZeRO-3
     with the updated tensors gathered whole;
  5. the NEXT step's CPU batches are built (tokenising records met for the first time) while the device runs;
  6. one host sync reads the terms; they are all-reduced, so every rank sees the same row;
  7. a finite step is applied (`engine.step`); a non-finite one is not, and the caller stops ("diverged").
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from trainables.prefix_cache import PrefixCache
from trainables.r2mu import R2MU, Batch, Weights


def gathered(stage: int, params: list[torch.nn.Parameter]):
    """ZeRO-3 partitions the updated tensors; the hand-run layers need them whole during forward+backward."""
    import deepspeed

    return deepspeed.zero.GatheredParameters(params) if stage == 3 else contextlib.nullcontext()


@dataclass
class StepSetup:
    """What every step of a trial uses, built once by the trainer (trainables/trainer.py)."""

    obj: R2MU  # the objective: the model cut above layer l and the updated tensors
    engine: Any  # the DeepSpeed engine around `obj`
    streams: dict  # stream name -> its batcher (trainables/data.py)
    cache: PrefixCache | None  # the steps' no-grad parts shared across trials, or None
    active: list[str]  # the streams whose loss weight is not 0
    weights: Weights
    zero_stage: int
    device: torch.device
    steps: int
    rank: int = 0
    world: int = 1


class R2MUStep:
    """`__call__(step) -> row`: one optimisation step of `setup.obj` through its DeepSpeed engine (module doc)."""

    def __init__(self, setup: StepSetup):
        obj = setup.obj
        self.obj, self.engine, self.streams, self.cache = obj, setup.engine, setup.streams, setup.cache
        self.rank, self.world, self.active, self.weights = setup.rank, setup.world, setup.active, setup.weights
        self.stage, self.device, self.steps = setup.zero_stage, setup.device, setup.steps
        self.params = list(obj.params.values())
        self.d = obj.model.config.hidden_size
        self._next: tuple[int, dict[str, Batch]] | None = None  # (step, its CPU batches), built ahead

    def batches_at(self, step: int) -> dict[str, Batch]:
        """This worker's rows of the global batch at `step`, on the CPU."""
        return {s: self.streams[s].batch(step, self.rank, self.world) for s in self.active}

    def denominators(self, cpu: dict[str, Batch]) -> dict[str, float]:
        """Global denominators (loss tokens x hidden dims), so per-worker losses add up to the whole batch's."""
        counts = torch.tensor([float(cpu[s].n_loss_tokens() * self.d) for s in self.active], dtype=torch.float64)
        if self.world > 1:
            dist.all_reduce(counts)
        return {s: max(float(n), 1.0) for s, n in zip(self.active, counts, strict=True)}

    def prepared(self, step: int, cpu: dict[str, Batch], batches: dict[str, Batch]):
        """The step's no-grad part from the prefix cache (computed and stored on a miss); None: no cache."""
        if not self.cache:
            return None
        prepared = self.cache.get(step, cpu, batches, self.obj)
        if prepared is None:
            prepared = self.obj.prepare(batches)
            self.cache.put(step, prepared, cpu)
        return prepared

    def __call__(self, step: int) -> dict:
        cpu = self._next[1] if self._next and self._next[0] == step else self.batches_at(step)
        batches = {s: b.to(self.device) for s, b in cpu.items()}
        denoms = self.denominators(cpu)
        prepared = self.prepared(step, cpu, batches)
        with gathered(self.stage, self.params):  # (ZeRO-3 only) the whole tensors, for forward and backward
            terms = self.obj.loss(batches, denoms, prepared)
            # backward first, then one host sync for the values
            self.engine.backward(terms.loss * self.world)  # DeepSpeed averages gradients over workers
        # while the device runs the backward
        self._next = (step + 1, self.batches_at(step + 1)) if step + 1 < self.steps else None
        values = torch.stack([terms.terms[s] for s in self.active]).double().cpu()
        if self.world > 1:
            dist.all_reduce(values)
        row = {"step": step, **dict(zip(self.active, values.tolist(), strict=True))}
        row["loss"] = sum(self.weights.of(s) * row[s] for s in self.active)
        if math.isfinite(row["loss"]):  # all-reduced: every rank takes the same branch
            self.engine.step()
        return row
