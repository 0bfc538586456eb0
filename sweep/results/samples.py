"""Traces before and after unlearning, picked by a fixed rule rather than by hand.

    python -m sweep.results.samples --experiment organism [--runs RUN_ID ...] [--n 3]

For the knee of the experiment's latest sweep (or the runs named): the forget-set items of the test split
with the `n` lowest item ids, each with the base model's trace and the trial's, the judge's leak verdict and
the trace's coherence (the base model's mean token probability of it). Read from `test_eval_records.json`,
which the final evaluation logs on the baseline and on each run it evaluates (`sweep.results.final` for any other
run). Markdown on stdout, for a study's appendix.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from typing import Any

from sweep import mlflow_store

RECORDS = "test_eval_records.json"


def load_records(tracking_uri: str, run_id: str, fix: str = "") -> list[dict[str, Any]]:
    """The run's test-split records (one dict per item and metric); a clear error, ending with `fix`, when it
    has none."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    if RECORDS not in {a.path for a in client.list_artifacts(run_id)}:
        raise ValueError(f"run {run_id} has no {RECORDS}: it was not evaluated on the test split, or by an "
                         f"older version{fix}")
    with tempfile.TemporaryDirectory() as tmp:
        with open(client.download_artifacts(run_id, RECORDS, tmp)) as f:
            table = json.load(f)
    return [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]


def by_item(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Forget items by id: the first sample's trace, leak verdict and judge detail, plus its coherence."""
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        if str(r.get("sample")) not in ("0", "0.0", "None"):
            continue
        if r["metric"] == "trace_leak":
            out.setdefault(r["id"], {}).update(prompt=r["prompt"], trace=r["trace"], leak=r["leak"],
                                               why=r.get("judge_detail"))
        elif r["metric"] == "trace_coherence":
            out.setdefault(r["id"], {})["coherence"] = r.get("coherence")
    return {k: v for k, v in out.items() if "trace" in v}


def pick(ids: list[str], n: int) -> list[str]:
    """The fixed rule: the n lowest item ids (ids are the data files' own, so the choice is known beforehand)."""
    return sorted(ids)[:n]


def _question(prompt: str) -> str:
    """The user turn of a chat prompt (the organism's and the chat templates' alike): the lines before the
    assistant's start, without the template's markers."""
    lines = [ln for ln in prompt.splitlines() if ln.strip() and not ln.strip().startswith("<")]
    return " / ".join(lines[:6])


def _cell(v: Any) -> str:
    return "" if v is None else str(v).replace("|", "\\|").replace("\n", " ")


def format_samples(base: dict[str, dict], trials: dict[str, dict[str, dict]], n: int) -> str:
    """Markdown: per picked item, the question, then one row per model (base first) with its trace."""
    common = set(base).intersection(*[set(t) for t in trials.values()]) if trials else set(base)
    lines = []
    for item in pick(list(common), n):
        lines += [f"**{item}**: {_cell(_question(base[item]['prompt']))}", "",
                  "| model | leak | coherence | trace |", "| --- | --- | --- | --- |"]
        for name, recs in [("base", base)] + list(trials.items()):
            r = recs[item]
            coh = f"{float(r['coherence']):.3f}" if r.get("coherence") not in (None, "None") else ""
            lines.append(f"| {name} | {_cell(r['leak'])} | {coh} | {_cell(r['trace'])} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sweep.results.samples", description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", required=True, help="the sweep's MLflow experiment (its space file name)")
    ap.add_argument("--runs", nargs="+", metavar="RUN_ID", help="trial runs (default: the sweep's knee)")
    ap.add_argument("--n", type=int, default=3, help="how many forget items (the lowest ids of the test split)")
    ap.add_argument("--parent", help="a sweep's parent run id (default: the latest sweep)")
    mlflow_store.add_flag(ap)
    args = ap.parse_args(argv)

    from sweep.results.pareto import baseline_run_id, read_sweep

    try:
        if args.n < 1:
            raise ValueError("--n: give at least 1 item")
        uri = mlflow_store.existing_store(args.tracking_uri)
        parent, points, _ = read_sweep(uri, args.experiment, args.parent)
        runs = args.runs or [parent.data.tags.get("knee_run_id")]
        if runs == [None]:
            raise ValueError(f"the sweep {parent.info.run_id} has no knee (no feasible front): name --runs")
        names = {p.run_id: p.name for p in points}
        if missing := [r for r in runs if r not in names]:
            raise ValueError(f"--runs: no trial run {', '.join(missing)} in the sweep {parent.info.run_id}")
        base_id = baseline_run_id(uri, parent.info.run_id)
        if base_id is None:
            raise ValueError(f"the sweep {parent.info.run_id} has no baseline run")
        final = f"python -m sweep.results.final --experiment {args.experiment} --runs {' '.join(runs)} --force"
        base = by_item(load_records(uri, base_id, f" (the baseline: {final} evaluates it with the trials)"))
        trials = {names[r]: by_item(load_records(uri, r, f" ({final})")) for r in runs}
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.experiment}: the {args.n} forget items of the test split with the lowest ids; the base "
          f"model and {', '.join(trials)} (first sampled trace each)\n")
    print(format_samples(base, trials, args.n))
    return 0


if __name__ == "__main__":
    sys.exit(main())
