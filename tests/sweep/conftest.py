"""A valid space file over a tiny random Llama and tiny data files, for the sweep's tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from tests.tiny import save_tiny

# The sweep's commands honour $MLFLOW_TRACKING_URI (sweep/mlflow_store.py); a shell that exported one (infra's
# env.sh) must not send the tests' runs there. Popped at import: session fixtures and subprocesses see it gone.
os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(autouse=True)
def _tracking_uri_stays_unset():
    """mlflow.set_tracking_uri, which the CLIs under test call in-process, also exports MLFLOW_TRACKING_URI:
    a later test's sweep subprocess would then log to the earlier test's store. Unset again after each test."""
    yield
    os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny") / "llama", "llama", layers=6)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def space(tmp_path, tiny_model_dir) -> dict:
    """A valid space dict; tests break one field and write it with `write_space`."""
    return space_dict(tmp_path, tiny_model_dir)


def space_dict(tmp_path: Path, tiny_model_dir: Path) -> dict:
    """The `space` fixture's dict, its data files written under `tmp_path` (for fixtures of a wider scope)."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("forget", "retain", "cot"):
        write_jsonl(data / f"{name}.jsonl", [{"id": str(i), "text": f"{name} text {i}"} for i in range(8)])
    return {
        "name": "tiny",
        "model": {"path": str(tiny_model_dir), "dtype": "float32",
                  "update": {"layers_below": 2, "param": "mlp.down_proj.weight"}},
        "data": {"forget": {"path": str(data / "forget.jsonl")}, "retain": {"path": str(data / "retain.jsonl")},
                 "cot": {"path": str(data / "cot.jsonl"), "max_tokens": 32}, "max_len": 64},
        "train": {"steps": 4, "batch_size": 2},
        "search": {"num_samples": 2, "max_concurrent": 1,
                   "objectives": {"trace_leak": "min", "reason_acc": "max"},
                   "constraints": {"retain_acc": ">= 0.5"},
                   "space": {"layer": {"int": [2, 5]}, "steering_rel": {"loguniform": [0.5, 2]},
                             "lr": {"loguniform": [1e-4, 1e-3]}}},
        "eval": {"forget": {"set": "organism-forget", "limit": 8}},
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"},
        "ray": {"address": None, "storage_path": str(tmp_path / "ray_results")},
    }


@pytest.fixture
def write_space(tmp_path):
    def write(raw: dict | str, name: str = "space.yaml") -> Path:
        p = tmp_path / name
        p.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
        return p

    return write
