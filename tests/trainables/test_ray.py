"""Ray Train (Train V2): 2 DeepSpeed workers on 2 CPUs give the one-process losses, report once, don't hang."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.trainables.conftest import make_spec
from trainables.trainer import train

ROOT = str(Path(__file__).resolve().parents[2])
ENV = {"OMP_NUM_THREADS": "1", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2", "PYTHONPATH": ROOT}
TIMEOUT_S = 150


@pytest.fixture(scope="module")
def ray_local():
    import ray

    saved = {k: os.environ.get(k) for k in ENV}
    os.environ.update(ENV)  # the Train V2 controller reads the health-check interval from its env
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": ENV}, log_to_driver=False)
    yield ray
    ray.shutdown()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _alarm(signum, frame):
    raise TimeoutError(f"TorchTrainer.fit did not finish within {TIMEOUT_S} s (hang?)")


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 1, 2])
def test_two_workers_match_one_process(ray_local, tiny_dirs, tmp_path, stage):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from trainables.trainer import train_loop_per_worker

    over = dict(hparams={"steps": 6}, train={"deepspeed": {"zero_stage": stage}})
    one = train(make_spec(tiny_dirs, tmp_path / "one", **over))
    spec = make_spec(tiny_dirs, tmp_path / "two", **over)
    trainer = TorchTrainer(
        train_loop_per_worker, train_loop_config={"spec": spec},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.9}),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(name=f"zero{stage}", storage_path=str(tmp_path / "ray")),
    )
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(TIMEOUT_S)
    try:
        result = trainer.fit()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert result.error is None
    m = result.metrics
    assert m["status"] == "ok" and m["steps_done"] == 6
    assert m["loss"] == pytest.approx(one.metrics["loss"], rel=1e-5)
    with result.checkpoint.as_directory() as d:
        assert sorted(os.listdir(d)) == ["delta.json", "delta.safetensors", "history.jsonl"]
        two = [json.loads(x) for x in (Path(d) / "history.jsonl").read_text().splitlines()]
    for a, b in zip(two, one.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["forget"] == pytest.approx(b["forget"], rel=1e-5)
    assert not (tmp_path / "two").exists()  # the worker's local copy is gone once the checkpoint is stored
