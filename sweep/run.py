"""`python -m sweep.run --space FILE`: the multi-objective R²MU hyperparameter search.

`--dry-run` validates the space file, opens the model (config, weights headers, tokenizer), every data and
eval file, checks the storage, the MLflow store and the Ray address, prints the plan and exits without
training or writing anything.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sweep.space.config import ConfigError, SweepConfig, absolute_paths
from sweep.space.file_checks import estimate_tokens, prefix_cache_bytes
from sweep.space.overrides import FlagError, load_with_overrides, with_overrides
from sweep.space.stores import describe_study_store
from sweep.traces import prefix_cache_dir

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
    p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE", help="override one field of the "
                   "space file by its dotted path, the value in YAML, validated like the file (repeatable): "
                   "--set train.steps=10 --set search.space.layer=3 --set eval.retain.0.limit=32")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep of the same name: "
                   "finished trials are kept, only the missing ones run")
    p.add_argument("--verbose", action="store_true", help="stream the Ray workers' logs (training steps, "
                   "DeepSpeed) to this terminal")
    p.add_argument("--final-eval", choices=["test", "none"], default="test", help="after the search, evaluate the "
                   "baseline and the Pareto set once on the test split (items no trial was chosen on; logged as "
                   "test/<metric>); default: test")
    return p


def apply_overrides(cfg: SweepConfig, args: argparse.Namespace) -> SweepConfig:
    """The command line's overrides on a loaded config (`sweep.space.overrides.with_overrides`)."""
    return with_overrides(cfg.model_dump(mode="python"), args.space, args.address, args.num_samples,
                          getattr(args, "set", None) or [])


def prefix_cache_size(cfg: SweepConfig, m: Any) -> str:
    """The plan's bound of the prefix cache per layer (`sweep.space.file_checks.prefix_cache_bytes`)."""
    if not m.checked:
        return ""
    return f"; up to {prefix_cache_bytes(cfg, m.hidden_size) / 2**30:.2f} GiB per layer"


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
        "  prefix     " + (f"cached across trials in {prefix_cache_dir(cfg) or t.prefix_cache.root()} on each node "
                           f"(<= {t.prefix_cache.max_gb:g} GiB{prefix_cache_size(cfg, m)})" if t.prefix_cache.enabled
                           else "computed in every trial (train.prefix_cache off)"),
        "  objectives " + ", ".join(f"{k} ({v})" for k, v in s.objectives.items()),
        "  constraints " + (", ".join(f"{k} {c}" for k, c in s.constraints.items()) or "none"),
        f"  eval       backend {cfg.eval.backend}, judge {cfg.eval.judge}, forget {cfg.eval.forget.set}, "
        f"reasoning {[r.set for r in cfg.eval.reasoning]}, retain {[r.set for r in cfg.eval.retain]}; "
        f"{cfg.eval.samples} sample(s) per item at T={cfg.eval.generation.temperature:g}",
        "  splits     " + ", ".join(f"{r.set}: selection {r.limit or 'all'} of the rest, test "
                                  f"{r.test:g}{'' if r.test >= 1 else ' of the set'}"
                                  for r in [cfg.eval.forget, *cfg.eval.reasoning, *cfg.eval.retain]),
        f"  engines    {cfg.eval.engines} ({cfg.eval.placement if t.use_gpu else 'CPU'}); "
        + (f"screening: {cfg.eval.screen.items} items per set first, the full split only for a trial that could "
           f"be on the front ({cfg.eval.screen.confidence:g} confidence)" if cfg.eval.screen else "no screening"),
        f"  attacks    {found['attacks']}",
        f"  overlap    {found['overlap']}",
        f"  mlflow     {found['mlflow']}",
        f"  ray        {found['ray']}",
        f"  storage    {found['storage']}",
        f"  optuna     {found.get('optuna') or describe_study_store(cfg)}",  # where the study is (search.storage)
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
        cfg = absolute_paths(load_with_overrides(args.space, args.address, args.num_samples, args.set))
        from sweep.space.checks import check_all

        found = check_all(cfg, args.space)
    except (ConfigError, FlagError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_plan(cfg, found))
    if args.dry_run:
        print("dry run: everything checks out; nothing was trained or written")
        return 0
    from sweep.driver import run_sweep

    try:
        return run_sweep(cfg, Path(args.space).read_text(), resume=args.resume, final_eval=args.final_eval,
                         verbose=args.verbose)
    except ConfigError as e:  # found only at start-up (e.g. a deleted MLflow experiment): nothing trained
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
