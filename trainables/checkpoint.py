"""A trial's checkpoint: the one thing the trainer hands the sweep (through Ray Train's report).

    <out_dir>/checkpoint/
      history.jsonl                    one row per step: {"step", each loss term, "loss"} (the loss curves)
      delta.safetensors, delta.json    the updated tensors (trainables/delta.py), when the trial trained to the end
      status.json                      when a step was not finite instead: the trainer's metrics ("diverged")

Rank 0 writes it, under a temporary name renamed when complete (common/atomic.py): a checkpoint directory
that exists is whole. The sweep reads it with `read` (sweep/lifecycle.py), logs it to MLflow as the run's `delta`
artifact and deletes Ray Train's copy.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError

from common.atomic import atomic_path

HISTORY, STATUS, DIRNAME = "history.jsonl", "status.json", "checkpoint"


@dataclass
class Trained:
    """What a checkpoint holds, read back: the delta's tensors (None: diverged) and the curves."""

    delta: dict | None
    history: list[dict]


def write(out_dir: str | Path, history: list[dict], metrics: dict,
          save_delta: Callable[[Path], object] | None) -> Path:
    """The checkpoint directory under `out_dir`: the curves, then the delta (`save_delta(dir)`), or, with no
    delta to save (a diverged trial), the metrics as status.json."""
    ckpt = Path(out_dir) / DIRNAME
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(ckpt) as partial:  # a full disk or a kill mid-write leaves no `checkpoint` directory
            partial.mkdir()
            with (partial / HISTORY).open("w") as f:
                f.writelines(json.dumps(r) + "\n" for r in history)
            if save_delta is None:
                (partial / STATUS).write_text(json.dumps(metrics))
            else:
                save_delta(partial)
    except (OSError, SafetensorError) as e:  # safetensors reports a failed write as its own error type
        raise OSError(f"could not write the trial's checkpoint to {ckpt} ({e}); nothing was kept: free space "
                      "on that disk (Ray Train's storage, or the trial's temporary directory)") from e
    return ckpt


def read(ckpt_dir: str | Path) -> Trained:
    from trainables.delta import load_delta

    p = Path(ckpt_dir)
    history = [json.loads(line) for line in (p / HISTORY).read_text().splitlines()] if (p / HISTORY).exists() \
        else []
    if (p / STATUS).exists():
        return Trained(None, history)
    return Trained(load_delta(p)[0], history)
