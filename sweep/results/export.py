"""`python -m sweep.results.export --experiment NAME --pick knee --out DIR`: a chosen trial as a plain HF model.

Merges the trial's delta into the base weights and writes a standard Hugging Face directory (safetensors in
the base dtype, config, tokenizer, generation config) with a README model card (hyperparameters, metrics,
the baseline). `--register NAME` also logs that directory as an MLflow `transformers` model on the trial's
run, registers it and sets the alias `champion` (`mlflow.transformers.load_model("models:/NAME@champion")`).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from sweep import mlflow_store
from sweep.results.pareto import Point, attack_rows, knee, pareto_front, plain_metric, read_sweep


def pick_run(tracking_uri: str, experiment: str, pick: str, parent: str | None = None) -> tuple[Point, Any, dict]:
    """(the chosen trial, the sweep config, baseline metrics); pick = 'knee' or 'run:<id>'."""
    from sweep.tracking import logged_config

    parent_run, points, baseline = read_sweep(tracking_uri, experiment, parent)
    cfg = logged_config(tracking_uri, parent_run.info.run_id)
    if pick == "knee":
        front = pareto_front(points, cfg.search.objectives, cfg.search.constraints, baseline)
        return knee(front, cfg.search.objectives), cfg, baseline or {}
    run_id = pick.removeprefix("run:")
    match = [p for p in points if p.run_id == run_id]
    if not match:
        raise ValueError(f"--pick {pick}: no trial run {run_id!r} in the latest sweep of {experiment!r}")
    return match[0], cfg, baseline or {}


CARD_METRICS = ["trace_leak", "trace_leak/trained", "trace_leak/heldout", "forget_acc", "forget_acc/heldout",
                "prefill_acc", "reason_acc", "retain_acc", "retain_trace_acc", "trace_coherence"]


def _with_interval(metrics: dict, key: str) -> str:
    v = metrics.get(key)
    if v is None:
        return "-"
    lo, hi, n = metrics.get(f"{key}_lo"), metrics.get(f"{key}_hi"), metrics.get(f"{key}_n")
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}], n={int(n)}" if lo is not None and n is not None else f"{v:.4f}"


def model_card(point: Point, cfg: Any, baseline: dict, base_path: str) -> str:
    """The card reports the test split (items no trial was chosen on) when the sweep evaluated it; the
    selection-split numbers, on which the trial was chosen, are labelled as such."""
    tested = any(k.startswith("test/") for k in point.metrics)
    prefix = "test/" if tested else ""
    objs = list(cfg.search.objectives) + [m for m in [*map(plain_metric, cfg.search.objectives),
                                                      *cfg.search.constraints, *CARD_METRICS]
                                          if f"{prefix}{m}" in point.metrics]
    objs = list(dict.fromkeys(objs))
    if tested:  # the attacks (eval.attacks) the sweep ran on this trial: the same test split
        objs = list(dict.fromkeys(objs + attack_rows([k.removeprefix("test/") for k in point.metrics
                                                      if k.startswith("test/")], cfg.search.objectives)))
    rows = "\n".join(f"| {m} | {_with_interval(point.metrics, prefix + m)} | "
                     f"{_with_interval(baseline, prefix + m)} |" for m in objs)
    hps = "\n".join(f"| {k} | {v} |" for k, v in sorted(point.params.items()))
    split = ("the **test split**: eval items that played no part in choosing this trial" if tested else
             "the **selection split** (the items this trial was chosen on: optimistic; no test-split "
             "evaluation was run for it)")
    return f"""# {cfg.name}: R²MU-unlearned {Path(base_path).name}

Made by r2mu-sweep: the base model `{cfg.model.path}` with the `{cfg.model.update.param}` tensors of a few
layers replaced by R²MU training (trial `{point.name}`, MLflow run `{point.run_id}`).

## Metrics on {split}

Each rate with its 95% interval and item count; baseline = the base model with the same eval settings.

| metric | this model | baseline |
| --- | --- | --- |
{rows}

## Hyperparameters

| name | value |
| --- | --- |
{hps}

Load it with `AutoModelForCausalLM.from_pretrained(DIR)` or `vllm.LLM(model=DIR)`.
"""


def export(tracking_uri: str, experiment: str, pick: str, out: str | Path, force: bool = False,
           register: str | None = None, parent: str | None = None) -> Path:
    import mlflow
    import torch
    from transformers import AutoTokenizer

    from eval.paths import resolve_uri
    from trainables.delta import load_merged

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise ValueError(f"--out {out} exists and is not empty; choose another directory or pass --force")
    point, cfg, baseline = pick_run(tracking_uri, experiment, pick, parent)
    base = resolve_uri(cfg.model.path)
    print(f"exporting {point.name} (run {point.run_id}) merged into {base}")
    with tempfile.TemporaryDirectory() as tmp:
        delta_dir = mlflow.artifacts.download_artifacts(run_id=point.run_id, artifact_path="delta", dst_path=tmp)
        model = load_merged(delta_dir, base, dtype=getattr(torch, cfg.model.dtype),
                            trust_remote_code=cfg.model.trust_remote_code)
        staging = Path(tmp) / "model"  # written whole, then moved: a failure leaves `out` as it was
        model.save_pretrained(staging)
        AutoTokenizer.from_pretrained(base).save_pretrained(staging)
        (staging / "README.md").write_text(model_card(point, cfg, baseline, base))
        shutil.copy(Path(delta_dir) / "delta.json", staging / "r2mu_delta.json")
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), str(out))
    if register:
        version = register_model(tracking_uri, point.run_id, out, register, dtype=cfg.model.dtype)
        print(f"registered as models:/{register}@champion (version {version})")
    print(f"wrote {out}")
    return out


MLFLOW_CARD_HEADER = "---\nlibrary_name: transformers\npipeline_tag: text-generation\nlicense: other\n---\n"


def log_mlflow_model(tracking_uri: str, run_id: str, model_dir: Path, dtype: str) -> Any:
    """Log the exported directory to the trial's run as an MLflow `transformers` model (text-generation):
    MLmodel, model/ (the directory's files, copied), components/tokenizer, requirements. Returns its ModelInfo.

    Nothing is fetched from the hub: MLflow looks up a model card only when none is given (we give ours), and
    its licence lookup uses the checkpoint path as a repo id, which an absolute path never is (refused locally
    before any request)."""
    import mlflow
    import torch
    from huggingface_hub import ModelCard
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)  # log_model resolves the store from the fluent URI
    run = MlflowClient(tracking_uri).get_run(run_id)
    # Created here so the model lands in the trial's experiment: log_model alone would put it in the default
    # experiment, unless the (finished) run were resumed, which would rewrite its end time.
    logged = mlflow.initialize_logged_model(name=run.info.run_name, source_run_id=run_id,
                                            experiment_id=run.info.experiment_id, params=run.data.params)
    card = ModelCard(MLFLOW_CARD_HEADER + (model_dir / "README.md").read_text())
    # A local path, not loaded objects: MLflow copies the files (no re-serialisation) and skips its
    # requirements inference, which would load the model in a subprocess.
    return mlflow.transformers.log_model(
        str(model_dir.resolve()), task="text-generation", torch_dtype=getattr(torch, dtype), model_card=card,
        run_id=run_id, model_id=logged.model_id, pip_requirements=serving_requirements())


def serving_requirements() -> list[str]:
    """What loading the model needs, pinned to this environment. Given explicitly because MLflow's default
    list for a local checkpoint pins torchvision, which this project does not install (it would fail)."""
    from importlib.metadata import version

    # a local label (2.13.0+cpu) is not installable from PyPI: pin the release
    return [f"{pkg}=={version(pkg).split('+')[0]}" for pkg in ("transformers", "torch", "safetensors")]


def register_model(tracking_uri: str, run_id: str, model_dir: Path, name: str, alias: str = "champion",
                   dtype: str = "float32") -> str:
    """Log the exported directory as an MLflow model, register that logged model (so the version's source
    has an MLmodel: `mlflow.transformers.load_model`, `mlflow models serve`) and point the alias at it
    (stages are deprecated)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    info = log_mlflow_model(tracking_uri, run_id, model_dir, dtype)
    client = MlflowClient(tracking_uri)
    try:
        client.create_registered_model(name)
    except MlflowException:
        pass  # already registered: add a version
    mv = client.create_model_version(name, f"models:/{info.model_id}", run_id=run_id, model_id=info.model_id)
    client.set_registered_model_alias(name, alias, mv.version)
    return mv.version


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sweep.results.export", description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", required=True, help="the sweep's MLflow experiment (its space file name)")
    ap.add_argument("--pick", default="knee", help="'knee' (the Pareto point closest to the ideal) or run:<id>")
    ap.add_argument("--run", help="a trial's MLflow run id (same as --pick run:<id>)")
    ap.add_argument("--out", required=True, help="output directory (must be empty or new)")
    ap.add_argument("--force", action="store_true", help="replace a non-empty --out")
    ap.add_argument("--register", metavar="NAME", help="also log the directory as an MLflow transformers-flavour "
                    "model on the trial's run and register it as NAME with the alias champion")
    mlflow_store.add_flag(ap)
    ap.add_argument("--parent", help="a sweep's parent run id (default: the latest sweep)")
    args = ap.parse_args(argv)
    try:
        uri = mlflow_store.existing_store(args.tracking_uri)  # reading a sweep never creates a store
        export(uri, args.experiment, f"run:{args.run}" if args.run else args.pick, args.out, args.force,
               args.register, args.parent)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
