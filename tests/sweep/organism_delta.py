"""A trained delta of the model organism, logged as a one-trial sweep in a fresh MLflow store: what
`sweep.results.export` reads, without Ray or Tune.

`python -m tests.sweep.organism_delta DIR` prints {"tracking_uri", "experiment", "run_id"} as JSON. Run as a
child process: the trainer opens a one-process gloo group and sets torch's threads, which must not leak into
the test process (it later starts a vLLM engine). The trial trains for real (the organism's base traces on 8
forget questions, 4 R²MU steps at layer 3); it is not evaluated, so its run holds the training metrics only.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = "organism-export"


def build(root: Path) -> dict[str, str]:
    import yaml
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eval.paths import resolve_uri
    from sweep import tracking
    from sweep.lifecycle import summarize_train, trial_spec
    from sweep.space.config import parse_space
    from trainables import checkpoint
    from trainables.config import Hyperparams
    from trainables.data import read_rows
    from trainables.make_traces import make_traces
    from trainables.trainer import train

    space_text = (ROOT / "search_spaces" / "organism.yaml").read_text()
    raw = yaml.safe_load(space_text)
    raw["name"] = EXPERIMENT
    raw["mlflow"] = {"tracking_uri": f"sqlite:///{root}/mlflow.db"}
    raw["ray"]["storage_path"] = str(root / "ray_results")
    raw["train"] |= {"steps": 4, "batch_size": 4, "prefix_cache": {"enabled": False}}
    for stream in ("forget", "retain", "cot"):
        raw["data"][stream]["limit"] = 16
    cfg = parse_space(raw, "organism.yaml (export test)")

    base = resolve_uri(cfg.model.path)
    model, tok = AutoModelForCausalLM.from_pretrained(base).eval(), AutoTokenizer.from_pretrained(base)
    rows = read_rows(resolve_uri(cfg.data.forget.path), ["id", "text"], limit=8)
    traces = root / "traces.jsonl"
    traces.write_text("".join(json.dumps(r) + "\n" for r in make_traces(model, tok, rows, "text", k=24)))

    hp = Hyperparams(layer=3, steering_coeff=8.0, alpha=1.0, beta=1.0, gamma=1.0, lr=3e-3, steps=4)
    result = train(trial_spec(cfg, hp, str(traces), tempfile.mkdtemp(dir=root), None))
    assert result.status == "ok", result.metrics
    history = checkpoint.read(result.delta_dir).history

    uri = cfg.mlflow.tracking_uri
    exp = tracking.ensure_experiment(cfg)
    parent = tracking.start_parent(cfg, exp, space_text, resume=False)
    run_id = tracking.new_child(uri, exp, parent, "trial-export", {"role": "trial", "tune_trial_id": "export",
                                                                  "status": "ok"}, "tune_trial_id")
    metrics = summarize_train({k: v for k, v in result.metrics.items() if k != "status"})
    tracking.log_result(uri, run_id, hp.model_dump(), metrics, history, delta_dir=result.delta_dir,
                        tags={"status": "ok", "layer": hp.layer})
    for rid in (run_id, parent):
        tracking.end_run(uri, rid, ok=True)
    return {"tracking_uri": uri, "experiment": EXPERIMENT, "run_id": run_id}


if __name__ == "__main__":
    print(json.dumps(build(Path(sys.argv[1]).resolve())))
