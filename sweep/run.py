"""`python -m sweep.run --space FILE`: the multi-objective R²MU hyperparameter search.

`--dry-run` validates the space file, the model, the data, the MLflow store and the Ray address, prints
the plan and exits without training.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sweep.config import ConfigError, SweepConfig, load_space

EPILOG = """examples:
  python -m sweep.run --space search_spaces/organism.yaml            # the demo: local Ray, SQLite MLflow
  python -m sweep.run --space search_spaces/organism.yaml --dry-run  # check everything, print the plan
  python -m sweep.run --space search_spaces/r2mu.yaml --address auto # on a GPU Ray cluster
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sweep.run", description=__doc__.splitlines()[0], epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--space", required=True, metavar="FILE", help="the space file (YAML), e.g. "
                   "search_spaces/organism.yaml")
    p.add_argument("--dry-run", action="store_true", help="validate space, model, data, MLflow and Ray; print "
                   "the plan (trials, resources, estimated tokens); train nothing")
    p.add_argument("--address", metavar="ADDR", help="Ray address, overrides ray.address: auto, or "
                   "ray://HOST:10001 (default: a local Ray)")
    p.add_argument("--num-samples", type=int, metavar="N", help="number of trials, overrides "
                   "search.num_samples")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep of the same name: "
                   "finished trials are kept, only the missing ones run")
    p.add_argument("--final-eval", choices=["none", "full"], default="none", help="re-evaluate the Pareto "
                   "set on the full eval sets (no eval.limit) after the search (default: none)")
    return p


def apply_overrides(cfg: SweepConfig, args: argparse.Namespace) -> SweepConfig:
    """Command-line overrides go through the same validation as the file."""
    from sweep.config import parse_space

    raw = cfg.model_dump(mode="python")
    if args.address:
        raw["ray"]["address"] = args.address
    if args.num_samples is not None:
        raw["search"]["num_samples"] = args.num_samples
    return parse_space(raw, f"{args.space} (with command-line overrides)")


def estimate_tokens(cfg: SweepConfig) -> int:
    """Upper bound of tokens one trial's training reads (padding included), for the plan."""
    d, t = cfg.data, cfg.train
    steps = max(int(v) for v in cfg.search.space["steps"].candidates()) if "steps" in cfg.search.space \
        else t.steps
    unthink = d.max_len + d.traces.max_new_tokens
    return steps * t.batch_size * (2 * d.max_len + unthink + d.cot.max_tokens)


def format_plan(cfg: SweepConfig, found: dict[str, Any]) -> str:
    m = found["model"]
    s, t = cfg.search, cfg.train
    gpus = f", {t.num_workers} GPU(s)" if t.use_gpu else ""
    lines = [
        f"sweep {cfg.name!r}: {s.num_samples} trials, {s.max_concurrent} at a time, {s.algorithm} sampler",
        f"  model      {cfg.model.path} -> {m.path}" + (
            f" ({m.arch}, {m.num_layers} layers, hidden {m.hidden_size}, {m.n_params / 1e6:.2f}M params, "
            f"{cfg.model.dtype})" if m.checked else " (not checked here: resolved on the cluster)"),
        f"  updates    {cfg.model.update.param} of layers l-{cfg.model.update.layers_below}..l",
        "  data       " + ", ".join(f"{k.split('.')[1]} {n} records" for k, n in found["data"].items()),
        f"  per trial  {t.num_workers} worker(s) x {t.cpus_per_worker} CPU{gpus}, DeepSpeed ZeRO-"
        f"{t.deepspeed.zero_stage}, batch {t.batch_size}, ~{estimate_tokens(cfg) / 1e6:.2f}M training tokens",
        "  objectives " + ", ".join(f"{k} ({v})" for k, v in s.objectives.items()),
        "  constraints " + (", ".join(f"{k} {c}" for k, c in s.constraints.items()) or "none"),
        f"  eval       backend {cfg.eval.backend}, judge {cfg.eval.judge}, forget {cfg.eval.forget.set}, "
        f"reasoning {[r.set for r in cfg.eval.reasoning]}, retain {[r.set for r in cfg.eval.retain]}",
        f"  mlflow     {found['mlflow']}",
        f"  ray        {found['ray']}, storage {cfg.ray.storage_path}",
        "  search space:",
        f"    {'name':<16}{'kind':<12}range / value",
    ]
    for name, p in s.space.items():
        rng = p.describe().split(" ", 1)[1] if p.kind != "fixed" else str(p.value)
        lines.append(f"    {name:<16}{p.kind:<12}{rng}")
    if "steps" not in s.space:
        lines.append(f"    {'steps':<16}{'fixed':<12}{t.steps} (train.steps)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    if argv is None and len(sys.argv) == 1:
        parser.print_usage(sys.stderr)
        print("error: give --space FILE (see --help)", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        cfg = apply_overrides(load_space(args.space), args)
        from sweep.checks import check_all

        found = check_all(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_plan(cfg, found))
    if args.dry_run:
        print("dry run: everything checks out; nothing was trained or written")
        return 0
    from sweep.tuner import run_sweep

    return run_sweep(cfg, resume=args.resume, final_eval=args.final_eval)


if __name__ == "__main__":
    sys.exit(main())
