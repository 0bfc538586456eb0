"""A sweep report: one self-contained HTML page showing what a sweep did, also logged to its parent run.

    python -m sweep.results.report --experiment NAME [--out report.html] [--tracking-uri URI] [--parent RUN_ID]
        [--items K] [--no-log]

The page (sweep/results/report_html.py draws it: inline CSS, plots as base64 PNG, no script, nothing fetched) holds
- the Pareto plot, and the table of every trial: objectives with their 95% interval on the selection split,
  constraints, hyperparameters, run id; the front and the knee marked; the test-split table where the final
  evaluation ran;
- each front trial's loss curves (the `loss/*` metric histories);
- the knee's and the baseline's traces on the same questions side by side, with the judge's verdict and the
  answer words highlighted.

Which questions, by a fixed rule (two reports of one sweep show the same items): for the forget set
(`trace_leak` records) and the first retain set (`retain_trace_acc`), the items that both runs were judged on
(their first sample), first those where the knee's verdict differs from the baseline's, then the others, each
group in id order (natural order: `q2` before `q10`); the first K of each set (`--items`, default 5).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from sweep import mlflow_store
from sweep.results.pareto import feasible, knee, pareto_front, read_sweep
from sweep.results.report_html import Pair, Question, SweepData, render
from sweep.space.config import ConfigError

RECORDS = "eval_records.json"  # the per-item table tracking.log_result logs to each evaluated run
ARTIFACT = "report.html"       # the name the report has on the parent run
# (trace metric, its verdict field, the MCQ metrics whose records carry the item's answer and question)
FORGET_TRACES = ("trace_leak", "leak", ("forget_acc", "forget_acc_letter", "prefill_acc"))
RETAIN_TRACES = ("retain_trace_acc", "states_answer", ("retain_acc",))


def natural_key(text: str) -> tuple:
    """`q2` before `q10`: digit runs compare as numbers (re.split alternates text and digits, so types align)."""
    return tuple(int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", text)))


# ------------------------------------------------------------------ records and questions


def eval_records(client: Any, run_id: str) -> list[dict[str, Any]]:
    """The run's per-item records (the MLflow table `eval_records.json`) as dicts without empty cells; [] when
    the run logged none."""
    if RECORDS not in {a.path for a in client.list_artifacts(run_id)}:
        return []
    with tempfile.TemporaryDirectory() as tmp:
        table = json.loads(Path(client.download_artifacts(run_id, RECORDS, tmp)).read_text(encoding="utf-8"))
    columns = table["columns"]
    return [{c: v for c, v in zip(columns, row, strict=True)
             if v is not None and not (isinstance(v, float) and math.isnan(v))} for row in table["data"]]


_OPTION = re.compile(r"^([A-J])\. (.*)$", re.M)  # eval.prompts.mcq_body's option lines
_TEMPLATE_MARK = re.compile(r"<\|[^|<>]*\|>|</?s>|<(?:end_of_turn|eos|/?think)>")  # chat-template tokens


def question_of(set_label: str, item_id: str, prompt: str, mcq: dict[str, Any] | None) -> Question:
    """The question and options from a trace record's prompt (it embeds the MCQ body); the answer, and the
    question's exact text, from the item's MCQ accuracy record (`Question: ...\\nAnswer:` when content-scored,
    the MCQ body when letter-scored)."""
    choices: list[str] = []
    first = None
    for m in _OPTION.finditer(prompt):
        if m[1] == "ABCDEFGHIJ"[len(choices)]:
            first = m.start() if first is None else first
            choices.append(_TEMPLATE_MARK.split(m[2])[0].strip())  # a template's end token may share the line
        elif choices:
            break
    scores = (mcq or {}).get("scores")
    if isinstance(scores, str):
        scores = json.loads(scores)
    if isinstance(scores, list) and 0 < len(scores) < len(choices):
        choices = choices[:len(scores)]
    text = (mcq or {}).get("prompt", "")
    if text.startswith("Question: ") and text.endswith("\nAnswer:"):
        question = text.removeprefix("Question: ").removesuffix("\nAnswer:")
    elif "\nA. " in text:
        question = text.split("\nA. ", 1)[0]
    else:  # no MCQ record: the line before the options, template tokens removed
        before = prompt[:first] if first is not None else prompt
        question = _TEMPLATE_MARK.sub("", before.rstrip("\n").rsplit("\n", 1)[-1]).strip()
    answer = (mcq or {}).get("answer")
    return Question(set_label, item_id, question, choices, None if answer is None else int(answer))


def pick_pairs(base_records: list[dict[str, Any]], knee_records: list[dict[str, Any]],
               kind: tuple[str, str, tuple[str, ...]], k: int) -> list[Pair]:
    """The module docstring's rule: items both runs were judged on (first sample), verdicts that differ first,
    then the rest, each by natural id order; the first k."""
    metric, flag, mcq_metrics = kind

    def traces(records: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for r in records:
            if r.get("metric") == metric:
                key = (r["set"], str(r["id"]))
                if key not in out or int(r.get("sample", 0)) < int(out[key].get("sample", 0)):
                    out[key] = r
        return out

    base, trial = traces(base_records), traces(knee_records)
    mcq: dict[tuple[str, str], dict[str, Any]] = {}
    for r in base_records:  # the baseline's MCQ records: the answer does not depend on the model
        if r.get("metric") in mcq_metrics and "answer" in r:
            key = (r["set"], str(r["id"]))
            if key not in mcq or (mcq_metrics.index(r["metric"]) < mcq_metrics.index(mcq[key]["metric"])):
                mcq[key] = r
    pairs = [Pair(question_of(s, i, trial[(s, i)].get("prompt", ""), mcq.get((s, i))), base[(s, i)], trial[(s, i)])
             for s, i in base.keys() & trial.keys()]
    pairs.sort(key=lambda p: (not p.differs(flag), natural_key(p.question.id), p.question.set))
    return pairs[:k]


# ------------------------------------------------------------------ the sweep


def loss_curves(client: Any, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """The run's per-step loss terms (`loss/forget`, ..., `loss/total`), by term."""
    keys = sorted(k for k in client.get_run(run_id).data.metrics if k.startswith("loss/"))
    return {k.removeprefix("loss/"): sorted((m.step, m.value) for m in client.get_metric_history(run_id, k))
            for k in keys}


def read_data(tracking_uri: str, experiment: str, parent_run_id: str | None = None, items: int = 5) -> SweepData:
    """The sweep (the latest, or the given parent run) with the objectives and constraints it ran with (its
    logged config.json), the front, the knee, the front's loss curves and the traces to compare."""
    from mlflow.tracking import MlflowClient

    from sweep.results.pareto import baseline_run_id
    from sweep.tracking import logged_config

    client = MlflowClient(tracking_uri)
    parent, points, baseline = read_sweep(tracking_uri, experiment, parent_run_id)
    pid = parent.info.run_id
    if "config.json" not in {a.path for a in client.list_artifacts(pid)}:
        raise ValueError(f"the sweep run {pid} has no config.json (the objectives and constraints it ran with)")
    cfg = logged_config(tracking_uri, pid)
    objectives, constraints = dict(cfg.search.objectives), dict(cfg.search.constraints)
    front = pareto_front(points, objectives, constraints, baseline)
    best = knee(front, objectives) if front else None
    data = SweepData(experiment, parent.info.experiment_id, pid, parent.info.run_name or pid,
                     parent.info.start_time or 0, objectives, constraints, list(cfg.search.searched()), points,
                     front, best, baseline,
                     {p.run_id for p in points if not feasible(p, objectives, constraints, baseline)})
    data.curves = {p.run_id: loss_curves(client, p.run_id) for p in front}
    base_run = baseline_run_id(tracking_uri, pid)
    if best is not None and base_run is not None:
        base_records, knee_records = eval_records(client, base_run), eval_records(client, best.run_id)
        data.forget_pairs = pick_pairs(base_records, knee_records, FORGET_TRACES, items)
        data.retain_pairs = pick_pairs(base_records, knee_records, RETAIN_TRACES, items)
    return data


def log_report(tracking_uri: str, parent_run_id: str, page: Path) -> None:
    """The page on the sweep's parent run as `report.html` (MLflow's artifact view shows HTML)."""
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        named = Path(tmp) / ARTIFACT
        shutil.copyfile(page, named)
        MlflowClient(tracking_uri).log_artifact(parent_run_id, str(named))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sweep.results.report", description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", required=True, help="the sweep's MLflow experiment (its space file's name)")
    mlflow_store.add_flag(ap)
    ap.add_argument("--parent", metavar="RUN_ID", help="a sweep's parent run id (default: the latest sweep)")
    ap.add_argument("--out", default=ARTIFACT, help="where to write the page (default: report.html here)")
    ap.add_argument("--items", type=int, default=5, metavar="K",
                    help="forget and retain questions whose traces are compared (default 5 of each)")
    ap.add_argument("--no-log", action="store_true",
                    help="only write the file: do not log it to the sweep's parent run (the store is only read)")
    args = ap.parse_args(argv)
    if args.items < 0:
        print(f"error: --items: {args.items} is negative; give e.g. --items 5", file=sys.stderr)
        return 2
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one line of output, not bars

    try:
        uri = mlflow_store.existing_store(args.tracking_uri)
        data = read_data(uri, args.experiment, args.parent, args.items)
        page = render(data)
    except (ValueError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    where = "not logged (--no-log)"
    if not args.no_log:
        log_report(uri, data.parent_id, out)
        where = f"logged to the sweep's run {data.parent_id} as {ARTIFACT}"
    print(f"wrote {out} ({out.stat().st_size // 1024} KB; {len(data.points)} trials, {len(data.front)} on the "
          f"front); {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
