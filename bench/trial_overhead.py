"""What one Ray Train `TorchTrainer.fit` costs before any training: the per-trial overhead of the sweep.

Three fits of one CPU worker whose loop only reports a checkpoint (the second also imports the trainer, i.e.
DeepSpeed), on a local Ray; prints, per fit, the time to the worker's loop, the import, and the teardown.

    OMP_NUM_THREADS=1 .venv/bin/python bench/trial_overhead.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.2"  # as the sweep sets it (sweep.tuner.WORKER_ENV)


def loop(config: dict) -> None:
    import time

    entered = time.time()
    if config["import_trainer"]:
        import trainables.trainer  # noqa: F401  (DeepSpeed, transformers)
    import tempfile

    import ray.train

    d = tempfile.mkdtemp()
    Path(d, "x").write_text("x")  # under Train V2 only a report with a checkpoint reaches the result
    ray.train.report({"entered": entered, "imported": time.time()}, checkpoint=ray.train.Checkpoint.from_directory(d))


def main() -> None:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for import_trainer in (False, True, False):
            t0 = time.time()
            trainer = TorchTrainer(loop, train_loop_config={"import_trainer": import_trainer},
                                   scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 0.9}),
                                   run_config=RunConfig(name=f"overhead-{t0:.0f}", storage_path=tempfile.mkdtemp()))
            m = trainer.fit().metrics
            t1 = time.time()
            print(f"import trainer={import_trainer!s:5}: fit {t1 - t0:.2f} s = to the worker's loop "
                  f"{m['entered'] - t0:.2f} s + import {m['imported'] - m['entered']:.2f} s + report and teardown "
                  f"{t1 - m['imported']:.2f} s", flush=True)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
