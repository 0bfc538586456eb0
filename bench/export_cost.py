"""What `sweep.results.export --register` costs on top of the plain HF export: time and artifact bytes.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python bench/export_cost.py organism/assets/base [assets/smollm2/model]

For each model directory: copy it as an export would write it (plus a README card), then in a fresh SQLite
MLflow store (a) log it as the MLflow `transformers` model, register it and set the alias (what the export
does now: `sweep.results.export.register_model`), and (b) the former registration, the directory copied to the run as
plain artifacts; time each and count the bytes each stored. What one CLI export with --register pays on top
of the plain export: the import line + the first repeat (later repeats: the same without one-time set-up).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path


def tree_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def measure(model_dir: Path, tmp: Path) -> dict:
    from mlflow.tracking import MlflowClient

    from sweep.results.export import register_model
    from sweep.tracking import default_artifact_location

    out = tmp / "exported"
    shutil.copytree(model_dir, out)
    (out / "README.md").write_text("# an exported model\n\nA card as `sweep.results.export` writes it.\n")
    uri = f"sqlite:///{tmp}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("cost", artifact_location=default_artifact_location(uri))
    row: dict = {"model": str(model_dir), "hf_dir_bytes": tree_bytes(out)}
    run = client.create_run(exp, run_name="trial").info.run_id
    t = time.perf_counter()
    register_model(uri, run, out, "cost-model")
    row["mlflow_model_s"] = round(time.perf_counter() - t, 2)
    row["mlflow_model_bytes"] = tree_bytes(tmp / "mlartifacts" / "models")  # <location>/models/<model id>
    old = client.create_run(exp, run_name="old").info.run_id
    t = time.perf_counter()
    client.log_artifacts(old, str(out), "hf_model")
    row["plain_artifacts_s"] = round(time.perf_counter() - t, 2)
    row["plain_artifacts_bytes"] = tree_bytes(tmp / "mlartifacts" / old)
    return row


def main(dirs: list[str], repeats: int = 2) -> None:
    """Each directory `repeats` times in this process: the first pays MLflow's lazy imports (what one CLI
    export pays), the later ones do not. Run the script once per model for first-in-process numbers."""
    import mlflow  # noqa: F401  (what the plain export has imported before it registers)
    import transformers  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    t = time.perf_counter()
    import mlflow.transformers  # noqa: F401  (only --register imports it)
    print(json.dumps({"import_mlflow_transformers_s": round(time.perf_counter() - t, 2)}))
    for d in dirs:
        for i in range(repeats):
            with tempfile.TemporaryDirectory() as tmp:
                print(json.dumps({"repeat": i} | measure(Path(d).resolve(), Path(tmp))))


if __name__ == "__main__":
    main(sys.argv[1:])
