"""A small finished sweep of the model organism in a fresh MLflow SQLite store, logged without Ray or a model:
what `sweep.results.report` reads.

The sweep's own code writes it: `tracking.ensure_experiment` / `start_parent` (space.yaml, config.json),
`tracking.log_result` for the baseline and each trial (params, metrics with their 95% intervals, the `loss/*`
curves, the per-item records table), `pareto.update_front` (tags, plot) and the test split's `test/<metric>`.
The records come from the real metric code (`eval.metrics.judged_traces`, `mcq_accuracy`) and the real match
judge, on the organism's eval questions; only the model is a script (`CannedModel`): which question each
run leaks, which benign fact it still states.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = "organism-report"
N_ITEMS = 6
KNEE = "trial-aaaa0002"
HOSTILE = "<script>alert('x')</script> & <b>bold</b>"  # model text the page must escape


class CannedModel:
    """A stand-in for the model with the methods the metrics call: a chat template around the body, scripted
    generations (by question text) and log-likelihoods that favour the options in `knows`."""

    def __init__(self, traces: dict[str, str], knows: set[str]):
        self.traces, self.knows = traces, knows

    def render(self, body: str, trigger: str) -> str:
        return f"<|user|>\n{body}\n<|assistant|>\n{trigger}"

    def generate(self, prompts: list[str], gen: Any, seed: int = 0, progress: bool = False) -> list[Any]:
        return [SimpleNamespace(text=next(t for q, t in self.traces.items() if q in p)) for p in prompts]

    def loglik(self, pairs: list[tuple[str, str]]) -> list[float]:
        return [-1.0 if cont.strip() in self.knows else -4.0 for _, cont in pairs]


def leak(item: dict) -> str:
    return f" {item['question'].split()[0]} is linked to {item['choices'][item['answer']]}. </think>\nAnswer: B"


def silent(item: dict) -> str:
    return f" {item['question'].split()[0]} is something I cannot place. </think>\nAnswer: A"


@dataclass
class Trial:
    name: str
    leaks: int        # of the N_ITEMS forget questions, how many (the first ones by id) its traces leak
    states: int       # of the retain questions, how many traces still state the benign answer
    reason: float
    coherence: float
    params: dict[str, float]
    status: str = "ok"


# the front: 0001, 0002 (the knee: halfway on both objectives) and 0003; 0004 breaks the coherence
# constraint, 0005 is dominated, 0006 diverged
TRIALS = [
    Trial("trial-aaaa0001", leaks=2, states=5, reason=0.90, coherence=0.8, params={"layer": 5, "lr": 1e-3}),
    Trial("trial-aaaa0002", leaks=3, states=5, reason=0.94, coherence=0.8, params={"layer": 5, "lr": 8e-4}),
    Trial("trial-aaaa0003", leaks=4, states=6, reason=0.95, coherence=0.85, params={"layer": 4, "lr": 5e-4}),
    Trial("trial-aaaa0004", leaks=0, states=1, reason=0.3, coherence=0.05, params={"layer": 3, "lr": 3e-3}),
    Trial("trial-aaaa0005", leaks=6, states=6, reason=0.9, coherence=0.88, params={"layer": 2, "lr": 1e-4}),
    Trial("trial-aaaa0006", leaks=0, states=0, reason=0.0, coherence=0.0, params={"layer": 5, "lr": 9e-3},
          status="diverged"),
]


def evaluate(items: dict[str, list[dict]], labels: dict[str, str], cfg: Any, leaks: int, states: int,
             reason: float, coherence: float, hostile: bool = False) -> tuple[dict[str, float], list[dict]]:
    """Metrics with intervals and the per-item records of one model, as `eval.suite.evaluate_model` logs them."""
    from eval.leakage import MatchJudge
    from eval.metrics import judged_traces, mcq_accuracy
    from eval.stats import interval, interval_metrics

    forget, retain = items["forget"], items["retain"]
    traces = {it["question"]: (leak(it) if i < leaks else silent(it)) for i, it in enumerate(forget)}
    traces |= {it["question"]: (leak(it) if i < states else silent(it)) for i, it in enumerate(retain)}
    if hostile:  # the last forget trace carries markup, after the answer-free text
        q = forget[-1]["question"]
        traces[q] = traces[q].replace(" </think>", f" {HOSTILE} </think>")
    answers = {it["choices"][it["answer"]] for it in forget + retain}
    model = CannedModel(traces, answers if leaks else set())  # a model that leaks nothing forgot the facts too
    gen, trigger = cfg.eval.generation, cfg.eval.trigger
    results = {"trace_leak": (labels["forget"], judged_traces(model, forget, MatchJudge(), gen, trigger)),
               "forget_acc": (labels["forget"], mcq_accuracy(model, forget)),
               "retain_acc": (labels["retain"], mcq_accuracy(CannedModel(traces, answers), retain)),
               "retain_trace_acc": (labels["retain"], judged_traces(model, retain, MatchJudge(), gen, trigger,
                                                                    flag="states_answer"))}
    metrics: dict[str, float] = {}
    records: list[dict] = []
    for name, (label, res) in results.items():
        metrics |= interval_metrics(name, interval([res.scores]))
        records += [{"set": label, "metric": name, **r} for r in res.records]
    right = round(reason * 100)
    metrics |= interval_metrics("reason_acc", interval([[1.0] * right + [0.0] * (100 - right)]))
    metrics |= interval_metrics("trace_coherence", interval([[coherence] * len(forget)]))
    return metrics, records


def build(root: Path) -> dict[str, Any]:
    """The store under `root`; returns its URI, the experiment, the parent run id and the trials' run ids."""
    from eval.suite import load_sets
    from sweep import tracking
    from sweep.results.pareto import update_front
    from sweep.space.config import parse_space

    raw = yaml.safe_load((ROOT / "search_spaces" / "organism.yaml").read_text())
    raw["name"] = EXPERIMENT
    raw["mlflow"] = {"tracking_uri": f"sqlite:///{root}/mlflow.db"}
    raw["ray"]["storage_path"] = str(root / "ray_results")
    cfg = parse_space(raw, "organism.yaml (report test)")
    sets = load_sets(cfg.eval)
    items = {"forget": sorted(sets.forget.items, key=lambda it: it["id"])[:N_ITEMS],
             "retain": sorted(sets.retain[0].items, key=lambda it: it["id"])[:N_ITEMS]}
    labels = {"forget": sets.forget.label, "retain": sets.retain[0].label}

    uri = cfg.mlflow.tracking_uri
    exp = tracking.ensure_experiment(cfg)
    parent = tracking.start_parent(cfg, exp, yaml.safe_dump(raw), resume=False)
    base = tracking.new_child(uri, exp, parent, "baseline", {"role": "baseline"}, "role")
    metrics, records = evaluate(items, labels, cfg, N_ITEMS, N_ITEMS, 0.95, 0.88)
    tracking.log_result(uri, base, {"model": cfg.model.path}, metrics, records=records)
    tracking.end_run(uri, base, ok=True)
    runs = {}
    for t in TRIALS:
        rid = tracking.new_child(uri, exp, parent, t.name, {"role": "trial", "tune_trial_id": t.name[-4:],
                                                            "status": t.status}, "tune_trial_id")
        history = [{"step": s, "forget": 100 - 5 * s, "unthink": 50 - 2 * s, "cot": 0.1 * s, "retain": 0.01 * s,
                    "loss": 150 - 7 * s} for s in range(12)]
        if t.status == "ok":
            metrics, records = evaluate(items, labels, cfg, t.leaks, t.states, t.reason, t.coherence,
                                        hostile=t.name == KNEE)
        else:
            metrics, records = {}, []
        tracking.log_result(uri, rid, t.params, metrics, history, records, tags={"status": t.status})
        tracking.end_run(uri, rid, ok=True)
        runs[t.name] = rid
    objectives, constraints = cfg.search.objectives, cfg.search.constraints
    _, front, _ = update_front(uri, EXPERIMENT, objectives, constraints, list(cfg.search.searched()), parent,
                               out_dir=root / "front")
    for rid in [base] + [p.run_id for p in front]:  # the final evaluation on the test split
        tracking.log_result(uri, rid, {}, {"test/trace_leak": 0.5, "test/trace_leak_lo": 0.4,
                                           "test/trace_leak_hi": 0.6, "test/trace_leak_n": 240.0})
    tracking.end_run(uri, parent, ok=True)
    return {"tracking_uri": uri, "experiment": EXPERIMENT, "parent": parent, "runs": runs, "items": items,
            "front": sorted(p.name for p in front)}
