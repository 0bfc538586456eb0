"""The knee of each sweep on the test split, per method as mean ± sample std over its seeds (docs/study_organism.md).

    python study/knees.py r2mu=study-r2mu-s42,study-r2mu-s43,study-r2mu-s44 rmu=study-rmu-s42,...

The knee is the one each sweep picked (the `knee_run_id` tag of its latest sweep run), its numbers are the
final evaluation's `test/<metric>`; a seed whose knee has no test numbers is named, not skipped silently.
"""

from __future__ import annotations

import statistics
import sys

from mlflow.tracking import MlflowClient

from sweep.results.compare import parse_methods

METRICS = ["trace_leak/trained", "trace_leak/heldout", "forget_acc", "prefill_acc", "reason_acc", "retain_acc",
           "retain_trace_acc", "trace_coherence"]


def knee_metrics(client: MlflowClient, experiment: str) -> dict[str, float]:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"error: no MLflow experiment {experiment!r}")
    sweep = client.search_runs([exp.experiment_id], "tags.role = 'sweep'", order_by=["start_time DESC"],
                               max_results=1)[0]
    knee = sweep.data.tags.get("knee_run_id")
    if knee is None:
        raise SystemExit(f"error: {experiment}: the sweep has no knee (no feasible front)")
    m = client.get_run(knee).data.metrics
    if "test/trace_leak" not in m:
        raise SystemExit(f"error: {experiment}: knee {knee} has no test numbers (python -m sweep.results.final "
                         f"--experiment {experiment} --runs {knee})")
    return {k: m[f"test/{k}"] for k in METRICS if f"test/{k}" in m}


def main(argv: list[str]) -> int:
    client = MlflowClient("sqlite:///mlflow.db")
    try:
        methods = parse_methods(argv)
    except ValueError as e:  # the same forms as sweep.results.compare --experiments
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("| method | seeds | " + " | ".join(METRICS) + " |")
    print("| --- | --- |" + " --- |" * len(METRICS))
    for method, exps in methods.items():
        per_seed = [knee_metrics(client, e) for e in exps]
        cells = []
        for k in METRICS:
            vals = [s[k] for s in per_seed if k in s]
            if not vals:
                cells.append("-")
                continue
            std = f" ± {statistics.stdev(vals):.3f}" if len(vals) > 1 else ""
            cells.append(f"{statistics.fmean(vals):.3f}{std}")
        print(f"| {method} | {len(exps)} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
