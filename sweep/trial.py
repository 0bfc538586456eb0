"""`python -m sweep.trial --space FILE --set layer=7 --set steering_coeff=6.5`: one trial, no Tune.

Trains with the fixed values in this process (DeepSpeed, one worker), evaluates the delta with the space's
eval settings and prints the metrics as JSON: the tool for checking one point by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sweep.config import ConfigError, absolute_paths, load_space


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        name, eq, text = pair.partition("=")
        if not eq:
            raise ConfigError("--set", [("--set", f"{pair!r}: write NAME=VALUE, e.g. --set layer=7")])
        try:
            value: Any = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise ConfigError("--set", [(f"--set {name}", f"{text!r} is not a number")]) from None
        out[name.strip()] = value
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sweep.trial", description=__doc__.splitlines()[0])
    ap.add_argument("--space", required=True, metavar="FILE", help="the space file")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="fix a hyperparameter (layer, steering_coeff | steering_rel, alpha, beta, gamma, lr, steps); "
                         "every searched one needs a value")
    ap.add_argument("--out", metavar="DIR", help="keep the delta checkpoint here (default: a temp dir)")
    ap.add_argument("--records", metavar="FILE", help="write the per-item eval records (jsonl)")
    args = ap.parse_args(argv)
    try:
        from sweep.checks import check_model
        from sweep.config import SpaceError, parse_space

        cfg = absolute_paths(load_space(args.space))
        values = parse_sets(args.set)
        try:
            hp = cfg.hyperparams(values)
        except (ValueError, SpaceError) as e:
            raise ConfigError(args.space, [("--set", str(e).splitlines()[0])]) from None
        # the --set layer must fit the model too: check it as a fixed space
        raw = cfg.model_dump(mode="python")
        raw["search"]["space"]["layer"] = hp.layer
        check_model(parse_space(raw, args.space))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    metrics = run_one(cfg, hp, args.out, args.records)
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0 if metrics.get("status") == "ok" else 1


def run_one(cfg, hp, out: str | None = None, records_path: str | None = None) -> dict[str, Any]:
    """Traces (cached), activation scale, train, evaluate; the metrics dict (objectives + train/...)."""
    from sweep import traces
    from sweep.evaluator import Evaluator
    from sweep.tuner import load_delta_and_history, loss_changes, objective_check, summarize_train, trial_spec
    from trainables.trainer import train

    t0 = time.monotonic()
    evaluator = Evaluator(traces.resolve_uri(cfg.model.path), cfg.eval, cfg.model.dtype)
    try:
        trace_file = traces.ensure_traces(cfg, evaluator)
        scale = traces.activation_scales(cfg, [hp.layer])[hp.layer] if hp.steering_rel is not None else None
        out_dir = out or tempfile.mkdtemp(prefix="r2mu-trial-")
        result = train(trial_spec(cfg, hp, str(trace_file), out_dir, scale))
        metrics: dict[str, Any] = {"status": result.status} | summarize_train(
            {k: v for k, v in result.metrics.items() if k != "status"}) | loss_changes(result.history)
        if objective_check(metrics):
            metrics["objective_check"] = f"did not fall: {objective_check(metrics)}"
        if result.status == "ok":
            delta, _ = load_delta_and_history(result.delta_dir)
            ev = evaluator.evaluate(delta)
            metrics |= {k: v for k, v in ev["metrics"].items() if v is not None}
            if records_path:
                Path(records_path).write_text("".join(json.dumps(r) + "\n" for r in ev["records"]))
            metrics["delta_dir"] = result.delta_dir
    finally:
        evaluator.close()
    metrics["wall_s"] = round(time.monotonic() - t0, 2)
    return metrics


if __name__ == "__main__":
    sys.exit(main())
