"""A fixed-seed sample of trial traces to hand-label, to measure how well the `match` judge agrees with a reader.

    python study/judge_sample.py --tracking-uri sqlite:////work/study-wt/mlflow.db \\
        --experiment testbed-rmu-s42 --experiment testbed-r2mu-s42 \\
        --items assets/testbed/data/eval_forget.jsonl --n 110 --seed 0 \\
        --blind /tmp/judge/testbed_blind.jsonl --key /tmp/judge/testbed_key.jsonl

Reads the `trace_leak` rows of `eval_records.json` from every finished trial run (tag `role` = `trial`; the
baseline is not a trial) of the given experiments, joins each with its item (question, choices, answer index)
by `id`, drops empty traces (nothing before `</think>`) and repeated (item, trace) pairs, and samples `n` rows
with `--seed`, stratified by the judge's logged verdict: half `leak` = True, half False (the other stratum
fills in where one runs short). Writes two JSON-lines files in the same order:

- the blind file, to label: id, source (`<experiment>/<run name>`), question, options lettered, the correct
  answer, choices, answer index and the trace; no verdict;
- the key file: id, source, the logged `leak` and `judge_detail`.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

from common.prompts import LETTERS
from eval.leakage import reasoning_part
from sweep.results.report import eval_records


def read_items(path: str) -> dict[str, dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return {d["id"]: d for d in map(json.loads, filter(str.strip, f))}


def trace_rows(tracking_uri: str, experiments: list[str]) -> list[dict[str, Any]]:
    """Every trace_leak row of every finished trial run, with `source` = `<experiment>/<run name>`."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    rows = []
    for name in experiments:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            sys.exit(f"no experiment {name!r} in {tracking_uri}")
        runs = client.search_runs([exp.experiment_id], "tags.role = 'trial' and attributes.status = 'FINISHED'",
                                  max_results=5000, order_by=["attributes.start_time ASC"])
        for run in runs:
            for r in eval_records(client, run.info.run_id):
                if r.get("metric") == "trace_leak":
                    rows.append({**r, "source": f"{name}/{run.info.run_name}"})
    return rows


def is_leak(value: Any) -> bool:
    return str(value).strip().lower() in ("true", "1", "1.0")


def sample(rows: list[dict[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    """n rows, half with a logged leak and half without where available, in a seeded random order."""
    rng = random.Random(seed)
    leak = [r for r in rows if is_leak(r["leak"])]
    clean = [r for r in rows if not is_leak(r["leak"])]
    rng.shuffle(leak)
    rng.shuffle(clean)
    k = min(len(leak), max(n // 2, n - len(clean)))
    picked = leak[:k] + clean[:n - k]
    rng.shuffle(picked)
    return picked


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tracking-uri", required=True)
    ap.add_argument("--experiment", action="append", required=True, help="repeat for several experiments")
    ap.add_argument("--items", required=True, help="the eval set's jsonl (id, question, choices, answer)")
    ap.add_argument("--n", type=int, default=110)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--blind", required=True, help="output: the traces to label, without verdicts")
    ap.add_argument("--key", required=True, help="output: the logged verdicts, same order")
    args = ap.parse_args(argv)

    items = read_items(args.items)
    seen, rows = set(), []
    for r in trace_rows(args.tracking_uri, args.experiment):
        trace = r.get("trace") or ""
        if r["id"] not in items or not reasoning_part(trace).strip() or (r["id"], trace) in seen:
            continue
        options = [f"{LETTERS[i]}. {c}" for i, c in enumerate(items[r["id"]]["choices"])]
        if "\n".join(options) not in r.get("prompt", "\n".join(options)):
            sys.exit(f"{r['source']} {r['id']}: the prompt's options are not the items file's")
        seen.add((r["id"], trace))
        rows.append(r)
    picked = sample(rows, args.n, args.seed)
    n_leak = sum(is_leak(r["leak"]) for r in rows)
    print(f"{len(rows)} non-empty traces ({n_leak} judged leak); sampled {len(picked)} "
          f"({sum(is_leak(r['leak']) for r in picked)} judged leak)", file=sys.stderr)

    for path in (args.blind, args.key):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(args.blind, "w", encoding="utf-8") as blind, open(args.key, "w", encoding="utf-8") as key:
        for r in picked:
            item = items[r["id"]]
            options = [f"{LETTERS[i]}. {c}" for i, c in enumerate(item["choices"])]
            blind.write(json.dumps({
                "id": r["id"], "source": r["source"], "question": item["question"], "options": options,
                "correct": options[item["answer"]], "choices": item["choices"], "answer": item["answer"],
                "trace": r["trace"]}, ensure_ascii=False) + "\n")
            key.write(json.dumps({"id": r["id"], "source": r["source"], "leak": is_leak(r["leak"]),
                                  "judge_detail": r.get("judge_detail", "")}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
