"""`python -m sweep.run --space FILE`: the multi-objective R²MU hyperparameter search.

`--dry-run` validates the space file, opens the model (config, weights headers, tokenizer), every data and
eval file, checks the storage, the MLflow store and the Ray address, prints the plan and exits without
training or writing anything.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from sweep.checks import resolve_uri
from sweep.config import ConfigError, SweepConfig, absolute_paths, local_storage, storage_uri
from sweep.file_checks import estimate_tokens, prefix_cache_bytes
from sweep.overrides import FlagError, load_with_overrides, with_overrides
from sweep.study_store import describe_study_store
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
    """The command line's overrides on a loaded config (`sweep.overrides.with_overrides`)."""
    return with_overrides(cfg.model_dump(mode="python"), args.space, args.address, args.num_samples,
                          getattr(args, "set", None) or [])


def prefix_cache_size(cfg: SweepConfig, m: Any) -> str:
    """The plan's bound of the prefix cache per layer (`sweep.file_checks.prefix_cache_bytes`)."""
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
        from sweep.checks import check_all

        found = check_all(cfg, args.space)
    except (ConfigError, FlagError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_plan(cfg, found))
    if args.dry_run:
        print("dry run: everything checks out; nothing was trained or written")
        return 0
    try:
        return run_sweep(cfg, Path(args.space).read_text(), resume=args.resume, final_eval=args.final_eval,
                         verbose=args.verbose)
    except ConfigError as e:  # found only at start-up (e.g. a deleted MLflow experiment): nothing trained
        print(f"error: {e}", file=sys.stderr)
        return 2


def init_ray(cfg: SweepConfig, verbose: bool = False) -> None:
    import ray

    from sweep.local_only import loopback_ray, ray_env
    from sweep.tuner import WORKER_ENV
    from sweep.warm_workers import SETUP_HOOK
    from sweep.warm_workers import enabled as warm_enabled

    for k, v in WORKER_ENV.items():
        os.environ.setdefault(k, v)
    local = cfg.ray.address in (None, "local")
    env = ray_env(WORKER_ENV, local)  # + telemetry off (the user's own values win), loopback-only gloo if local
    # every worker process runs the hook as it starts; it imports the training stack only in processes started
    # for Ray Train workers (sweep/warm_workers.py)
    runtime_env = {"env_vars": env} | ({"worker_process_setup_hook": SETUP_HOOK} if warm_enabled(cfg) else {})
    if local:
        with loopback_ray():  # every Ray process listens on 127.0.0.1 only (sweep/local_only.py)
            ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False, runtime_env=runtime_env,
                     log_to_driver=verbose)
    else:
        ray.init(address=cfg.ray.address, runtime_env=runtime_env, log_to_driver=verbose)


def run_sweep(cfg: SweepConfig, space_text: str, resume: bool = False, final_eval: str = "test",
              verbose: bool = False) -> int:
    """Traces, baseline, the Tune run, the Pareto front; every MLflow run ends FINISHED or FAILED."""
    import ray
    from ray import tune

    from sweep import lifecycle, traces, tracking, tuner, warm_workers
    from sweep.engine_pool import EnginePool, engine_count
    from sweep.evaluator import call
    from sweep.pareto import knee_line, test_table, update_front

    uri = cfg.mlflow.tracking_uri
    experiment_id = tracking.ensure_experiment(cfg)
    parent = tracking.start_parent(cfg, experiment_id, space_text, resume)
    storage = storage_uri(cfg, cfg.name)  # Tune's; a local path or a URI
    local = local_storage(cfg)  # the plot is logged to MLflow either way
    plots = local / cfg.name / "pareto" if local else Path(tempfile.mkdtemp(prefix="r2mu-pareto-"))
    tune_name, study_name = f"tune-{parent[:8]}", f"{cfg.name}-{parent[:8]}"
    evaluator_name = f"evaluator-{cfg.name}-{parent[:8]}"
    print(f"mlflow: experiment {cfg.experiment!r}, sweep run {parent} ({uri})")
    ok, watches = False, []
    t0, started_ms = time.monotonic(), int(time.time() * 1000)
    tune_log = tune_log_to_file((plots.parent if local else plots) / f"{tune_name}.log")
    print(f"tune log: {tune_log.baseFilename} (tracebacks of failed and retried trials)")
    try:
        init_ray(cfg, verbose)
        warm = warm_workers.keep_warm(cfg)  # Train processes for the first trials start importing now
        engines = engine_count(cfg, ray.cluster_resources().get("GPU", 0))
        pool = EnginePool.start(evaluator_name, engines, resolve_uri(cfg.model.path), cfg)
        try:
            infos = pool.infos()
        except ray.exceptions.RayActorError as err:  # nothing trained yet: say why, and which fields fix it
            raise engine_start_error(cfg, err) from None
        nodes = len({i["node"] for i in infos})
        print(f"evaluator: {engines} x {infos[0]['backend']} backend up in {max(i['start_s'] for i in infos):.1f} s"
              + (f" on {nodes} node(s)" if engines > 1 else ""))
        restarts = cfg.eval.engine.max_restarts
        evaluator = pool.engines[0]  # the traces and the baseline, before any trial
        watches = pool.watch()  # a line for each restart of an engine, until the sweep ends
        trace_file = traces.ensure_traces(
            cfg, evaluator, call=lambda _method, *a: call(evaluator, "traces", *a, max_restarts=restarts)[0])
        layers = sorted({int(v) for v in cfg.search.space["layer"].candidates()})
        scales = traces.activation_scales(cfg, layers) if "steering_rel" in cfg.search.space else {}
        baseline = ensure_baseline(cfg, experiment_id, parent, evaluator)
        ctx = lifecycle.SweepContext(cfg.model_dump(mode="json"), experiment_id, parent, trace_file.name,
                                 trace_file.read_text(encoding="utf-8"), scales, evaluator_name, baseline,
                                 engines)
        trainable = tune.with_resources(tune.with_parameters(lifecycle.run_trial, ctx=ctx),
                                        lifecycle.trial_resources(cfg))
        path = f"{storage}/{tune_name}"
        if resume and tune.Tuner.can_restore(path):
            print(f"resuming {path}")
            t = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
        else:
            searcher = tuner.make_searcher(cfg, study_name, tuner.optuna_storage(cfg), baseline)
            t = tune.Tuner(
                trainable,
                # reuse_actors: a trial's function runs in the process of a finished one (its imports done)
                tune_config=tune.TuneConfig(search_alg=searcher, num_samples=cfg.search.num_samples,
                                            reuse_actors=True,
                                            max_concurrent_trials=cfg.search.max_concurrent),
                run_config=tune.RunConfig(name=tune_name, storage_path=storage, verbose=0,
                                          callbacks=[tuner.Progress(cfg, baseline, parent),
                                                     *([warm] if warm else [])],
                                          failure_config=tune.FailureConfig(max_failures=cfg.search.max_failures)),
            )
        results = t.fit()
        errors = sum(1 for r in results if r.error is not None)
        finished = sum(1 for r in results if r.error is None and "status" in (r.metrics or {}))
        searched = finished + errors >= cfg.search.num_samples  # False: stopped early (Ctrl-C)
        if searched and (lost := tuner.fail_orphans(tuner.optuna_storage(cfg), study_name)):
            print(f"optuna: {lost} trial(s) proposed before the driver died were never run: marked FAIL")
        if searched and resume and (lost := tracking.drop_lost_trials(uri, experiment_id, parent, started_ms)):
            print(f"mlflow: {lost} trial run(s) the earlier driver left unfinished, missing from the Tune state "
                  "this sweep resumed from, were deleted (MLflow keeps them until `mlflow gc`)")
        summary = tuner.study_summary(tuner.optuna_storage(cfg), study_name)
        if summary:
            from mlflow.tracking import MlflowClient

            MlflowClient(uri).log_dict(parent, summary, "optuna_study.json")
        table, front, best = update_front(uri, cfg.experiment, cfg.search.objectives, cfg.search.constraints,
                                          list(cfg.search.searched()), parent, plots)
        print("\n" + table)
        if not searched:  # stopped early (Ctrl-C): the front is not final yet
            print(f"\nthe search stopped after {finished + errors} of {cfg.search.num_samples} trials: the "
                  "test-split evaluation of the front runs when it finishes (--resume)")
        elif final_eval == "test" and front:
            from sweep.final import test_evaluation

            test_evaluation(cfg, front, parent,
                            lambda delta: pool.evaluate(delta, "test")[0], workers=engines)
            if cfg.eval.attacks:
                from sweep.final import attack_evaluation

                attack_evaluation(cfg, front, parent, lambda delta, names: pool.attack(delta, names)[0],
                                  workers=engines)
            table, front, best = update_front(uri, cfg.experiment, cfg.search.objectives, cfg.search.constraints,
                                              list(cfg.search.searched()), parent, plots)
            print("\n" + test_table(uri, cfg.experiment, parent, cfg.search.objectives, list(cfg.search.constraints)))
        if best is not None:
            print(knee_line(front, best, cfg.search.objectives))
            print(f"export it with\n  python -m sweep.export --experiment {cfg.experiment} --pick knee "
                  f"--out exported/{cfg.name}{uri_flag(uri)}")
        from sweep.mlflow_ui import view_url

        print(f"look at it: python -m sweep.report --experiment {cfg.experiment}{uri_flag(uri)} (one HTML page), "
              f"or `mlflow ui --backend-store-uri {uri} --host 127.0.0.1` at {view_url(experiment_id)}")
        print(f"sweep done in {time.monotonic() - t0:.0f} s: {len(results)} trials, {errors} failed, "
              f"front {len(front)}; pareto plot: {plots / 'pareto.png'}")
        ok = errors < len(results)
        return 0 if ok else 1
    finally:
        for w in watches:
            w.__exit__()
        logging.getLogger("ray.tune").removeHandler(tune_log)
        tune_log.close()
        tracking.end_stale_children(uri, experiment_id, parent)
        tracking.end_run(uri, parent, ok)
        if ray.is_initialized():
            ray.shutdown()


def uri_flag(uri: str) -> str:
    """` --tracking-uri URI` for a printed command, unless the command would find this store on its own."""
    from sweep.mlflow_store import resolve, same_store

    return "" if same_store(uri, resolve()[0]) else f" --tracking-uri {uri}"


def tune_log_to_file(path: Path) -> logging.FileHandler:
    """Tune's own log goes to `path`: a retried trial's ~40-line traceback is there, and the console keeps the
    sweep's one line per failure, which names the trial's error file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log = logging.getLogger("ray.tune")
    log.addHandler(handler)
    log.propagate = False  # not to Ray's console handler on the "ray" logger
    return handler


# Root causes that mean a file the engine read is broken or missing, not that the engine is sized wrong.
FILE_ERRORS = {"SafetensorError", "HeaderTooLarge", "OSError", "FileNotFoundError", "IsADirectoryError",
               "NotADirectoryError", "PermissionError", "UnicodeDecodeError", "JSONDecodeError", "EOFError",
               "UnpicklingError"}
_EXC_LINE = re.compile(r"^\s*((?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception)): (.*)$")


def root_cause(err: BaseException) -> tuple[str, str]:
    """(dotted type name, message) of the root of a Ray error's exception chain.

    Where Ray kept the exception objects (`RayTaskError.cause`, `__cause__`, `__context__`) the chain is walked
    to its first exception. An actor whose constructor failed keeps only the remote traceback's text; Python
    prints a chain root first, so the first `pkg.module.SomeError: message` line is the root."""
    e, seen = err, set()
    while id(e) not in seen:
        seen.add(id(e))
        nxt = getattr(e, "cause", None) if isinstance(getattr(e, "cause", None), BaseException) else None
        nxt = nxt or e.__cause__ or e.__context__
        if nxt is None:
            break
        e = nxt
    text = str(err) if e is err else "".join(traceback.format_exception(e))
    for line in text.splitlines():
        m = _EXC_LINE.match(line)
        if m:
            return m.group(1), m.group(2).strip()
    if e is not err:
        return f"{type(e).__module__}.{type(e).__qualname__}".removeprefix("builtins."), str(e)
    return type(err).__name__, (str(err).splitlines() or [""])[0]


def engine_start_error(cfg: SweepConfig, err: BaseException) -> ConfigError:
    """Why the evaluator could not start, and which fields or files fix it."""
    kind, message = root_cause(err)
    path = resolve_uri(cfg.model.path)
    if kind.rsplit(".", 1)[-1] in FILE_ERRORS:
        files = sorted(p.name for p in Path(path).glob("*") if p.is_file()) if Path(path).is_dir() else []
        weights = [f for f in files if f.endswith((".safetensors", ".bin", ".pt"))]
        files = weights if "Safetensor" in kind or "Unpickl" in kind else files
        return ConfigError(f"{cfg.name} (the evaluation engine)", [("model.path", (
            f"the {cfg.eval.backend} backend could not read the model files in {path} ({', '.join(files[:8])}): "
            f"{kind}: {message}. Fix: restore or re-export the model files (the dry run checks their headers)"))])
    return ConfigError(f"{cfg.name} (the evaluation engine)", [("eval.engine", (
        f"the {cfg.eval.backend} backend could not start on {cfg.model.path}: {kind}: {message}. Fix: "
        "eval.engine.max_model_len (longest prompt + max_new_tokens) or kv_cache_memory_bytes, or eval.backend: hf"))])


def ensure_baseline(cfg: SweepConfig, experiment_id: str, parent: str, evaluator: Any) -> dict:
    """The base model with the sweep's eval settings, as its own child run (role=baseline), once."""
    from sweep import tracking
    from sweep.evaluator import call

    uri = cfg.mlflow.tracking_uri
    run_id = tracking.new_child(uri, experiment_id, parent, "baseline", {"role": "baseline"}, "role")
    if tracking.is_finished(uri, run_id):
        from mlflow.tracking import MlflowClient

        print("baseline: cached run", run_id)
        return dict(MlflowClient(uri).get_run(run_id).data.metrics)
    ok = False
    try:
        out, _ = call(evaluator, "evaluate", None, max_restarts=cfg.eval.engine.max_restarts)
        if names := cfg.searched_attacks():  # an objective or constraint names an attack: the base's reference
            attacked, _ = call(evaluator, "attack", None, names, "selection", max_restarts=cfg.eval.engine.max_restarts)
            out = {"metrics": out["metrics"] | attacked["metrics"], "records": out["records"] + attacked["records"]}
        metrics = {k: v for k, v in out["metrics"].items() if v is not None}
        tracking.log_result(uri, run_id, {"model": cfg.model.path}, metrics, records=out["records"])
        ok = True
    finally:
        tracking.end_run(uri, run_id, ok)
    shown = [k for k in metrics if "/" not in k and not k.endswith(("_lo", "_hi", "_n"))]
    print("baseline (selection split): " + ", ".join(
        f"{k}={metrics[k]:.3f}" + (f" [{metrics[k + '_lo']:.2f}, {metrics[k + '_hi']:.2f}]" if k + "_lo" in metrics
                                   else "") for k in shown))
    return metrics


if __name__ == "__main__":
    sys.exit(main())
