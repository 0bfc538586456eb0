"""`python -m sweep.single_trial --space FILE --set layer=7 --set steering_coeff=6.5`: one trial, no Tune.

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

from sweep.space.config import ConfigError, absolute_paths, load_space
from sweep.space.overrides import FlagError


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    """`NAME=VALUE` -> {name: number}, each checked against the hyperparameter's type and bound."""
    from sweep.space.config import SpaceError, parse_param

    out: dict[str, Any] = {}
    for pair in pairs:
        name, eq, text = pair.partition("=")
        name = name.strip()
        if not eq or not name:
            raise FlagError("--set", f"{pair!r}: write NAME=VALUE, e.g. --set layer=7")
        try:
            value: Any = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise FlagError(f"--set {name}", f"{text!r} is not a number; e.g. --set lr=1e-3") from None
        try:
            parse_param(name, value)  # the space file's own check: type and bound (lr > 0, layer >= 0, ...)
        except SpaceError as e:
            example = f"; give e.g. --set {name}={EXAMPLES[name]}" if name in EXAMPLES else ""
            raise FlagError(f"--set {name}", f"{e}{example}") from None
        out[name] = value
    return out


EXAMPLES = {"layer": 7, "steering_coeff": 6.5, "steering_rel": 1.0, "alpha": 10, "beta": 1, "gamma": 1,
            "lr": "1e-3", "steps": 60}


def resolve_hyperparams(cfg: Any, values: dict[str, Any]) -> Any:
    """The trial's Hyperparams from the space's fixed values and `values`; FlagError naming what is missing."""
    from pydantic import ValidationError

    try:
        return cfg.hyperparams(values)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the values"
        raise FlagError(f"--set {where}", first["msg"].removeprefix("Value error, ")) from None
    except ValueError as e:  # no value for a searched hyperparameter
        raise FlagError("--set", str(e)) from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sweep.single_trial", description=__doc__.splitlines()[0])
    ap.add_argument("--space", required=True, metavar="FILE", help="the space file")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="fix a hyperparameter (layer, steering_coeff | steering_rel, alpha, beta, gamma, lr, steps); "
                         "every searched one needs a value")
    ap.add_argument("--out", metavar="DIR", help="keep the delta checkpoint here (default: a temp dir)")
    ap.add_argument("--records", metavar="FILE", help="write the per-item eval records (jsonl)")
    args = ap.parse_args(argv)
    try:
        from sweep.space.checks import check_model, with_make_hints
        from sweep.space.config import parse_space

        values = parse_sets(args.set)  # the flags first: a typo is reported before the model is opened
        cfg = absolute_paths(load_space(args.space))
        hp = resolve_hyperparams(cfg, values)
        # the --set layer must fit the model too: check it as a fixed space
        raw = cfg.model_dump(mode="python")
        raw["search"]["space"]["layer"] = hp.layer
        try:
            check_model(parse_space(raw, args.space))
        except ConfigError as e:
            raise ConfigError(args.space, with_make_hints(cfg, e.problems)) from None
    except (ConfigError, FlagError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    metrics = run_one(cfg, hp, args.out, args.records)
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0 if metrics.get("status") == "ok" else 1


def run_one(cfg, hp, out: str | None = None, records_path: str | None = None) -> dict[str, Any]:
    """Traces (cached), activation scale, train, evaluate; the metrics dict (objectives + train/...)."""
    from sweep import traces
    from sweep.evaluator import Evaluator
    from sweep.lifecycle import loss_changes, rising_terms, summarize_train, trial_spec
    from trainables import checkpoint
    from trainables.trainer import train

    t0 = time.monotonic()
    evaluator = Evaluator(traces.resolve_uri(cfg.model.path), cfg.eval, cfg.model.dtype)
    try:
        trace_file = traces.ensure_traces(cfg, evaluator)
        scale = traces.activation_scales(cfg, layers)[hp.layer] if (layers := cfg.scaled_layers(hp)) else None
        out_dir = out or tempfile.mkdtemp(prefix="r2mu-trial-")
        result = train(trial_spec(cfg, hp, str(trace_file), out_dir, scale))
        metrics: dict[str, Any] = {"status": result.status} | summarize_train(
            {k: v for k, v in result.metrics.items() if k != "status"}) | loss_changes(result.history)
        if rising_terms(metrics):
            metrics["objective_check"] = f"did not fall: {rising_terms(metrics)}"
        if result.status == "ok":
            delta = checkpoint.read(result.delta_dir).delta
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
