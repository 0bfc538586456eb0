"""Where a trial's Ray Train fit spends its time, with cold processes (the reference: what every trial did
before sweep/warm_workers.py) and with prestarted warm ones, in one run.

    python bench/fit_overhead.py [--fits 3]

Each mode starts its own local Ray the way the sweep does (`sweep.ray_start.init_ray`, with or without the
`worker_process_setup_hook`) and fits the demo's trial (organism, layer 3, 60 steps, prefix cache on) `--fits`
times in a row, one at a time; in warm mode one set of processes is prestarted before each fit, as the sweep's
`KeepWarm` callback does, and given 15 s to import (the sweep gives them a whole trial). The phases of a
fit, from its start, by the medians over the fits:

  start-up   until the train function runs: the controller, its placement-group cleaner, the worker
             process, the process group (and, cold, importing torch and Ray Train in each new process)
  imports    the train function's own imports: the trainer, DeepSpeed, transformers (0 when preloaded)
  set-up     model load, the R²MU objective, DeepSpeed's engine, the prefix cache (`train/setup_seconds`)
  training   the 60 steps (`train/train_seconds`)
  teardown   checkpoint, report, shutting the worker group down, until `fit()` returns
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PHASES = ("start-up", "imports", "set-up", "training", "teardown", "fit", "overhead")


def loop(config: dict) -> None:
    """The trial's train function, with the time its imports take measured first."""
    import time

    t = time.time()
    import deepspeed  # noqa: F401
    from transformers import AutoModelForCausalLM  # noqa: F401

    from trainables import trainer

    marks = {"bench_entry": t, "bench_imported": time.time()}
    train = trainer._train

    def timed(spec, device):
        result = train(spec, device)
        result[0].metrics.update(marks)
        return result

    trainer._train = timed
    trainer.train_loop_per_worker(config)


def fits(mode: str, n: int, traces: str) -> list[dict[str, float]]:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from sweep import warm_workers
    from sweep.lifecycle import trial_spec
    from sweep.ray_start import init_ray
    from sweep.space.config import load_space
    from sweep.space.overrides import with_overrides

    cfg = load_space(ROOT / "search_spaces/organism.yaml")
    cfg = with_overrides(cfg.model_dump(mode="python"), "bench", None, None,
                         [f"ray.warm_workers={'true' if mode == 'warm' else 'false'}"])
    init_ray(cfg)
    hp = cfg.hyperparams({"layer": 3, "steering_rel": 1.0, "alpha": 1.0, "beta": 1.0, "gamma": 1.0, "lr": 1e-3})
    rows = []
    try:
        for i in range(n):
            if mode == "warm":
                warm_workers.prestart(1, parent_env=ray.get_runtime_context().runtime_env)  # fit() runs here
                time.sleep(15)
            spec = trial_spec(cfg, hp, traces, tempfile.mkdtemp(prefix="bench-fit-"), None)
            trainer = TorchTrainer(
                loop, train_loop_config={"spec": spec},
                scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": cfg.train.cpus_per_worker}),
                run_config=RunConfig(name=f"bench-{mode}-{i}", storage_path=tempfile.mkdtemp(prefix="bench-fit-"),
                                     worker_runtime_env=warm_workers.TRAIN_WORKER_ENV))
            t0 = time.time()
            m = trainer.fit().metrics
            fit = time.time() - t0
            startup = m["bench_entry"] - t0
            imports = m["bench_imported"] - m["bench_entry"]
            rest = fit - startup - imports - m["setup_seconds"] - m["train_seconds"]
            rows.append({"start-up": startup, "imports": imports, "set-up": m["setup_seconds"],
                         "training": m["train_seconds"], "teardown": rest, "fit": fit,
                         "overhead": fit - m["train_seconds"], "prestarted": float(m["process_started_at"] < t0)})
            print(f"{mode} fit {i + 1}/{n}: " + "  ".join(f"{k} {v:.2f}" for k, v in rows[-1].items()), flush=True)
    finally:
        ray.shutdown()
    return rows


def traces_file() -> str:
    """The demo's base-model traces (the unthink stream needs them): the sweep's cache, made once if absent."""
    cached = sorted((ROOT / "ray_results" / "cache").glob("traces-*.jsonl"))
    if not cached:
        sys.exit("no trace cache in ray_results/cache: run the demo once (make demo), or a sweep of organism.yaml")
    return str(cached[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fits", type=int, default=3)
    args = p.parse_args()
    traces = traces_file()
    result = {mode: fits(mode, args.fits, traces) for mode in ("cold", "warm")}
    med = {mode: {k: statistics.median(r[k] for r in rows) for k in PHASES} for mode, rows in result.items()}
    print(f"\nmedians over {args.fits} fits, seconds (organism demo trial, 1 worker, one fit at a time)")
    print(f"{'phase':10s} {'cold':>8s} {'warm':>8s}")
    for k in PHASES:
        print(f"{k:10s} {med['cold'][k]:8.2f} {med['warm'][k]:8.2f}")
    print(f"overhead cold / warm: {med['cold']['overhead'] / med['warm']['overhead']:.2f}x; prestarted fits: "
          f"cold {sum(r['prestarted'] for r in result['cold']):.0f}/{args.fits}, "
          f"warm {sum(r['prestarted'] for r in result['warm']):.0f}/{args.fits}")


if __name__ == "__main__":
    main()
