"""Ray Tune + Optuna wiring of the sweep (the sweep issue). Until it lands, only --dry-run works."""

from __future__ import annotations

import sys

from sweep.config import SweepConfig


def run_sweep(cfg: SweepConfig, resume: bool = False, final_eval: str = "none") -> int:
    print("error: the sweep itself is not implemented yet; use --dry-run to check a space file",
          file=sys.stderr)
    return 3
