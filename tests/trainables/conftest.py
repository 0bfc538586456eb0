"""Shared fixtures: a tiny model directory and tiny jsonl data sets, written into tmp paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.tiny import save_tiny
from trainables.config import TRIGGER, TrialSpec

torch.set_num_threads(1)

WORDS = "alpha beta gamma delta agent toxin vector host region sum carry the of and".split()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def texts(n: int, seed: int, lo: int = 5, hi: int = 30) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        k = int(torch.randint(lo, hi, (1,), generator=g))
        out.append(" ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (k,), generator=g)))
    return out


def write_data(d: Path, n: int = 12) -> dict[str, Path]:
    d.mkdir(parents=True, exist_ok=True)
    files = {}
    for i, s in enumerate(("forget", "retain", "cot")):
        files[s] = write_jsonl(d / f"{s}.jsonl", [{"id": f"{s}{j}", "text": t} for j, t in enumerate(texts(n, i))])
    traces = []
    for j, (q, t) in enumerate(zip(texts(n, 10, 3, 10), texts(n, 11), strict=True)):
        rendered = f"<|user|>\n{q}\n<|assistant|>{TRIGGER}"
        traces.append({"id": f"q{j}", "prompt": q, "rendered": rendered, "trace": t})
    files["traces"] = write_jsonl(d / "traces.jsonl", traces)
    return files


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    out = {arch: save_tiny(root / arch, arch, layers=6) for arch in ("llama", "qwen2")}
    out["data"] = root / "data"
    out.update(write_data(out["data"]))
    return out


def make_spec(dirs: dict, out_dir: Path, arch: str = "llama", **over) -> TrialSpec:
    """A small trial: layer 3 of a 6-layer tiny model, batch 4, a few steps."""
    hp = dict(layer=3, steering_coeff=4.0, alpha=2.0, beta=1.0, gamma=1.0, lr=1e-3, steps=5)
    hp.update(over.pop("hparams", {}))
    spec = {
        "model": {"path": str(dirs[arch])},
        "data": {"forget": {"path": str(dirs["forget"])}, "retain": {"path": str(dirs["retain"])},
                 "cot": {"path": str(dirs["cot"]), "max_tokens": 24}, "traces": {"max_new_tokens": 16},
                 "max_len": 48},
        "train": {"batch_size": 4, "seed": 7},
        "hparams": hp,
        "traces_path": str(dirs["traces"]),
        "out_dir": str(out_dir),
    }
    for k, v in over.items():
        if isinstance(v, dict) and k in spec:
            spec[k] = {**spec[k], **v}
        else:
            spec[k] = v
    return TrialSpec.model_validate(spec)
