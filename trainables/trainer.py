"""One trial's training: DeepSpeed over the few updated tensors, the R²MU step, a delta checkpoint.

Two entries run the same loop (`_train`; one step with its bookkeeping is `trainables.step.R2MUStep`):
  - `train_loop_per_worker(config)` inside a Ray Train `TorchTrainer` (config = {"spec": the TrialSpec object}); it
    reports ONCE, at the end, with every metric and the checkpoint (under Train V2 only the report carrying
    a checkpoint reaches Tune); in Ray Train's local mode (config["in_trial"]) it returns them instead;
  - `train(spec)` in a plain process (tests, `sweep.single_trial`), with a one-process gloo group.

Data parallel: every worker builds the same global batch and takes its rows (rank::world); each term is
normalised by the GLOBAL token count, so the workers' losses sum to the one-process loss and DeepSpeed's
gradient averaging (times world) gives the one-process gradient: 1 and N workers train identically.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from trainables import checkpoint
from trainables.checks import TrainerConfigError, check_model_against_config
from trainables.config import TrialSpec
from trainables.curves import CurveSink
from trainables.data import build_streams
from trainables.delta import base_identity, save_delta
from trainables.faults import first_to_claim
from trainables.prefix_cache import PrefixCache, key_parts
from trainables.r2mu import R2MU, Weights, activation_scale, control_vector, decoder, drop_layers_above
from trainables.step import R2MUStep, StepSetup
from trainables.step import gathered as _gathered
from trainables.warm import WARM_SINCE_VAR

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class TrainResult:
    status: str  # "ok" | "diverged"
    metrics: dict
    delta_dir: str | None  # the checkpoint directory (trainables/checkpoint.py); None on other ranks / diverged
    history: list[dict] = field(default_factory=list)
    checkpoint_dir: str | None = None  # rank 0: also when diverged (the curves and status.json)


class Updated(torch.nn.Module):
    """What DeepSpeed manages: the updated tensors only (the same Parameter objects the model uses)."""

    def __init__(self, params: list[torch.nn.Parameter]):
        super().__init__()
        self.params = torch.nn.ParameterList(params)


def _init_distributed(use_gpu: bool) -> None:
    import deepspeed
    from deepspeed.utils import groups

    backend = "nccl" if use_gpu else "gloo"
    if not dist.is_initialized() and os.environ.get("WORLD_SIZE") == "1" and "MASTER_ADDR" not in os.environ:
        # a group of this one process (`one_process_env`): its store is a file, so no TCPStore server listens
        # (torch's binds every interface, with no setting to change that; docs/security.md)
        store_file = Path(tempfile.gettempdir()) / f"r2mu-group-{os.getpid()}-{time.time_ns()}"
        dist.init_process_group(backend, store=dist.FileStore(str(store_file), 1), rank=0, world_size=1)
    if not dist.is_initialized():  # Ray Train's workers have their group already; other processes: env://
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    # DeepSpeed keeps a clone of the world group from its first engine on; in a process that trains again in a
    # new group (a reused Tune trial under `ray.train_in_trial`: Ray's local controller ends each fit's group)
    # that clone is dead. Dropped, the next engine clones the live group.
    groups._WORLD_GROUP = None


def _deepspeed_config(spec: TrialSpec, world: int) -> dict:
    dtype = spec.model.dtype
    return {
        "train_micro_batch_size_per_gpu": max(1, spec.train.batch_size // world),
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": spec.train.deepspeed.zero_stage},
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": dtype == "bfloat16"},
        "fp16": {"enabled": dtype == "float16"},
        "steps_per_print": 10**9,
    }


def _load(spec: TrialSpec, device: torch.device, rank: int):
    """Tokenizer, the model cut above the steering layer (on `device`), and the base model's identity."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = dict(trust_remote_code=spec.model.trust_remote_code)
    tok = AutoTokenizer.from_pretrained(spec.model.path, **kw)
    model = AutoModelForCausalLM.from_pretrained(spec.model.path, dtype=DTYPES[spec.model.dtype], **kw)
    layer = spec.hparams.layer
    check_model_against_config(model, spec.model, [layer])
    names = spec.model.param_names(layer)
    base = base_identity(model, spec.model.path, names) if rank == 0 else {}  # of the whole model
    drop_layers_above(model, layer)  # only layers 0..l reach the device
    return model.to(device).eval(), tok, base  # eval: no dropout; the step is deterministic


def _progress(row: dict, steps: int, active: list[str], t0: float) -> None:
    rate = (row["step"] + 1) / (time.perf_counter() - t0)
    parts = " ".join(f"{s}={row[s]:.4g}" for s in active)
    print(f"[r2mu] step {row['step'] + 1}/{steps} loss={row['loss']:.4g} {parts} {rate:.2f} step/s", flush=True)


def _train(spec: TrialSpec, device: torch.device) -> tuple[TrainResult, int]:
    import deepspeed

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    rank, world = dist.get_rank(), dist.get_world_size()
    hp, tr = spec.hparams, spec.train
    if tr.batch_size < world:
        raise TrainerConfigError(f"train.batch_size: {tr.batch_size} is smaller than the {world} workers")
    torch.manual_seed(tr.seed)

    t_setup = time.perf_counter()
    model, tok, base = _load(spec, device, rank)
    load_s = time.perf_counter() - t_setup
    names = spec.model.param_names(hp.layer)
    weights = Weights(hp.alpha, hp.beta, hp.gamma)
    active = [s for s in ("forget", "retain", "unthink", "cot") if weights.of(s) != 0]
    streams = build_streams(spec.data, tok, tr.batch_size, tr.seed, spec.traces_path, active)

    # steering coefficient: absolute, or relative to the base model's median ||h_l|| on forget data
    scale = spec.activation_scale
    if scale is None:
        probe = [streams["forget"].batch(i).to(device) for i in range(4)]  # global batches: same on all ranks
        scale = activation_scale(model, probe, hp.layer)
    coeff = hp.steering_coeff if hp.steering_coeff is not None else hp.steering_rel * scale
    rel = coeff / scale

    obj = R2MU(model, hp.layer, names, control_vector(model.config.hidden_size, coeff, tr.seed), weights)
    if tr.compile:  # per decoder layer: the trained and the frozen view run the same compiled code
        for block in decoder(model).layers:
            block.compile()
    params = list(obj.params.values())
    engine, *_ = deepspeed.initialize(model=Updated(params), optimizer=torch.optim.AdamW(params, lr=hp.lr),
                                      config=_deepspeed_config(spec, world))
    stage = tr.deepspeed.zero_stage

    pc, cache = spec.train.prefix_cache, None
    if pc.enabled:
        try:
            cache = PrefixCache(pc.root(), key_parts(spec, rank, world, active, device, obj.pack_ratio), device,
                                pc.max_gb)
        except OSError as e:  # the cache only saves work: train without it
            print(f"[prefix-cache] train.prefix_cache.dir {pc.root()!r} is not usable ({e}); training uncached",
                  flush=True)
    setup_s = time.perf_counter() - t_setup
    if rank == 0:
        print(f"[r2mu] set up in {setup_s:.1f} s (model load {load_s:.1f} s), layer {hp.layer}, "
              f"c={coeff:.4g} ({rel:.3g} x {scale:.4g}), {hp.steps} steps", flush=True)
    train_step = R2MUStep(StepSetup(obj, engine, streams, cache, active, weights, stage, device, hp.steps, rank, world))
    t = spec.tracking
    curves = CurveSink(t.uri, t.run_id, t.every) if t and rank == 0 else None  # loss curves to MLflow, live

    history: list[dict] = []
    status, t0 = "ok", time.perf_counter()
    for step in range(hp.steps):
        row = train_step(step)  # a non-finite step is not applied
        history.append(row)
        if curves:
            curves.add(row)
        if not math.isfinite(row["loss"]):  # all-reduced: every rank takes the same branch
            status = "diverged"
            break
        if rank == 0 and (step % 10 == 0 or step == hp.steps - 1):
            _progress(row, hp.steps, active, t0)
    seconds = time.perf_counter() - t0
    cache_stats = cache.close() if cache else {}

    last = history[-1]
    metrics = {"status": status, "steps_done": len(history) - (status == "diverged"),
               "loss": last["loss"], **{f"loss_{s}": last[s] for s in active},
               "steering_coeff": coeff, "steering_rel": rel, "activation_scale": scale,
               "train_seconds": seconds, "setup_seconds": setup_s, "layer": hp.layer,
               **{f"prefix_cache_{k}": v for k, v in cache_stats.items()}}
    if curves:  # 0: the run holds every step's terms (the end-of-trial log need not send them again)
        metrics["curve_points_unsent"] = curves.close()
    ckpt = None
    with _gathered(stage if status == "ok" else 0, params):  # (ZeRO-3) every rank takes part in the gather
        if rank == 0:
            save = (lambda d: save_delta(model, names, d, base, hp.model_dump(), metrics)) if status == "ok" else None
            ckpt = checkpoint.write(spec.out_dir, history, metrics, save)
    delta_dir = str(ckpt) if ckpt is not None and status == "ok" else None
    return TrainResult(status, metrics, delta_dir, history, str(ckpt) if ckpt else None), rank


def _threads(spec: TrialSpec) -> None:
    if not spec.train.use_gpu:  # oversubscribed CPU threads slow every trial down
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", max(1, int(spec.train.cpus_per_worker)))))


def one_process_env() -> dict[str, str]:
    """torch.distributed's rank variables for a group of this one process. No MASTER_ADDR/PORT: the group is made
    on a file store (`_init_distributed`), which opens no socket; and Ray Train's local mode, which makes a group
    itself only when those are set too, leaves it to the loop (and ends it after the fit)."""
    return dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")


def train(spec: TrialSpec) -> TrainResult:
    """The training loop in this process (one worker), without Ray."""
    for k, v in one_process_env().items():
        os.environ.setdefault(k, v)
    _threads(spec)
    _init_distributed(spec.train.use_gpu)
    device = torch.device(f"cuda:{os.environ['LOCAL_RANK']}" if spec.train.use_gpu else "cpu")
    return _train(spec, device)[0]


def _crash_once_for_tests() -> None:
    """Fault injection for the retry path (tests/sweep): with R2MU_FAULT_CRASH_ONCE=FILE, the first worker to
    create FILE dies at once, as an out-of-memory kill would; every later worker trains normally."""
    if first_to_claim("R2MU_FAULT_CRASH_ONCE"):
        os._exit(1)


def train_loop_per_worker(config: dict) -> dict | None:
    """Ray Train worker entry: train, then report all metrics once, with the checkpoint directory.

    config["in_trial"] (`ray.train_in_trial`): Ray Train's local mode, this loop running in the Tune trial's own
    process, in a one-process group on a file store (`one_process_env`, `_init_distributed`). There
    `ray.train.report` belongs to Tune, so the metrics and the checkpoint directory are returned instead."""
    import ray

    spec: TrialSpec = config["spec"]  # the object the sweep validated, pickled by Ray: no second parse
    in_trial = bool(config.get("in_trial"))
    _crash_once_for_tests()
    _threads(spec)
    _init_distributed(spec.train.use_gpu)  # Ray Train's group (its workers', or local mode's)
    if in_trial:
        device = torch.device("cuda:0" if spec.train.use_gpu else "cpu")
    else:
        import ray.train.torch

        device = ray.train.torch.get_device() if spec.train.use_gpu else torch.device("cpu")
    result, rank = _train(spec, device)
    where = {"node_id": ray.get_runtime_context().get_node_id(), "in_trial": float(in_trial)}  # which machine, how
    if in_trial:
        gc.collect()  # this process trains the next trial too: the model and DeepSpeed's engine go now
        return {"metrics": result.metrics | where, "checkpoint_dir": result.checkpoint_dir}
    import psutil
    import ray.train
    from ray.train import Checkpoint

    where |= {"process_started_at": psutil.Process().create_time(),  # before the fit: prestarted (warm_workers)
              "preloaded": float(WARM_SINCE_VAR in os.environ)}  # the training stack was imported as it started
    ckpt = Checkpoint.from_directory(result.checkpoint_dir) if rank == 0 else None  # a diverged one too
    ray.train.report(result.metrics | where, checkpoint=ckpt)
    if rank == 0:  # report has copied the checkpoint into the run's storage: the local copy is garbage
        shutil.rmtree(spec.out_dir, ignore_errors=True)
    return None
