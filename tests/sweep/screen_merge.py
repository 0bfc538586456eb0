"""The organism's base model evaluated by the sweep's `Evaluator` three ways: the whole selection split, its
screen, and the rest of it rated with the screen's result (sweep/screening.py).

`python -m tests.sweep.screen_merge OUT.json` writes {"whole", "screened", "rest"} (each {"metrics", "records"}).
Run as a child process: vLLM's CPU platform rebinds kernels over the modules already imported, and a flask
proxy that other tests import (mlflow's server) raises when touched outside an app context.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def main(out_path: str) -> None:
    from eval.config import EvalConfig
    from sweep.evaluator import Evaluator

    raw = yaml.safe_load((ROOT / "search_spaces/organism.yaml").read_text())["eval"]
    for ref in (raw["forget"], *raw["reasoning"], *raw["retain"]):
        ref["limit"] = 16
    cfg = EvalConfig.model_validate(raw | {"backend": "vllm", "screen": {"items": 5, "confidence": 0.8}})
    evaluator = Evaluator("organism://base", cfg)
    try:
        whole = evaluator.evaluate(None)
        screened = evaluator.evaluate(None, "screen")
        rest = evaluator.evaluate(None, "rest", screened["screen"])
    finally:
        evaluator.close()
    out = {k: {"metrics": v["metrics"], "records": v["records"]}
           for k, v in (("whole", whole), ("screened", screened), ("rest", rest))}
    Path(out_path).write_text(json.dumps(out), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1])
