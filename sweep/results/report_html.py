"""The sweep report's page (sweep/results/report.py gathers what it shows): one self-contained HTML file.

Inline CSS, plots as base64 PNG, no script; a Content-Security-Policy lets the page load nothing but its own
inline images and style, so it looks the same from a file, from MLflow's artifact view or attached to a mail.
Every piece of model or user text goes through `html.escape`.
"""

from __future__ import annotations

import base64
import math
import re
import tempfile
import time
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from eval.answers import stated_letters
from eval.leakage import reasoning_part
from eval.match_rules import STOPWORDS, inflections, key_terms, words_of
from sweep.mlflow_ui import view_url
from sweep.results.pareto import (
    FLAG_TAG,
    REPORTED,
    TEST_COLUMNS,
    Point,
    attack_rows,
    knee_line,
    plain_metric,
    plot_front,
)
from sweep.space.config import Constraint


@dataclass
class Question:
    """One MCQ as the report shows it, rebuilt from the records (the eval files may not be on this machine)."""

    set: str
    id: str
    question: str
    choices: list[str]
    answer: int | None  # the correct option's index; None when no MCQ record of the item was logged


@dataclass
class Pair:
    """The baseline's and the knee's trace record on one question."""

    question: Question
    base: dict[str, Any]
    knee: dict[str, Any]

    def differs(self, flag: str) -> bool:
        return self.base.get(flag) != self.knee.get(flag)


@dataclass
class SweepData:
    """Everything the page shows, read from MLflow."""

    experiment: str
    experiment_id: str
    parent_id: str
    parent_name: str
    started_ms: int
    objectives: dict[str, str]
    constraints: dict[str, Constraint]
    params: list[str]
    points: list[Point]
    front: list[Point]
    knee: Point | None
    baseline: dict[str, float] | None
    infeasible: set[str]
    curves: dict[str, dict[str, list[tuple[int, float]]]] = field(default_factory=dict)  # run -> term -> points
    forget_pairs: list[Pair] = field(default_factory=list)
    retain_pairs: list[Pair] = field(default_factory=list)


CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #1d1d1f; max-width: 1500px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { margin-top: 32px; border-bottom: 1px solid #ddd; }
.meta, .note { color: #555; } .note { font-size: 13px; }
table { border-collapse: collapse; font-size: 12px; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 2px 5px; text-align: right; white-space: nowrap; }
th { background: #f4f4f6; white-space: normal; } td.name, th.name { text-align: left; }
td.id code { font-size: 10px; } .iv { font-size: 10.5px; color: #666; }
.badge { font-size: 10.5px; font-weight: 600; color: #b3261e; margin-left: 4px; }
tr.front td { background: #fff4f2; } tr.knee td { background: #ffe3dc; font-weight: 600; }
tr.baseline td { background: #eef4ff; } tr.infeasible td { color: #999; }
.wide { overflow-x: auto; } code { font-size: 11.5px; } img { max-width: 100%; border: 1px solid #eee; }
img.plot { max-width: min(100%, 1150px); }
.pair { border: 1px solid #ddd; border-radius: 6px; padding: 10px 14px; margin: 14px 0; }
.pair h3 { margin: 0 0 4px; font-size: 15px; } .options { margin: 2px 0 8px; padding-left: 4px; list-style: none; }
.options li.correct { font-weight: 600; color: #0a6b2b; }
.sides { display: grid; grid-template-columns: 1fr 1fr; gap: 12px; }
.side h4 { margin: 4px 0; font-size: 13px; }
pre.trace { white-space: pre-wrap; word-break: break-word; background: #fafafa; border: 1px solid #eee;
  padding: 8px; margin: 4px 0; font-size: 12.5px; }
.after { color: #999; }
mark.answer { background: #ffe066; } mark.option { background: #e3e8ef; }
.verdict { display: inline-block; border-radius: 4px; padding: 1px 7px; font-size: 12px; font-weight: 600; }
.bad { background: #ffd6d1; color: #8a1c0f; } .good { background: #d3f5dc; color: #0a6b2b; }
.unknown { background: #eee; color: #555; } .detail { color: #555; font-size: 12px; }
"""
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def render(data: SweepData) -> str:
    """The whole page."""
    started = time.strftime("%Y-%m-%d %H:%M", time.localtime(data.started_ms / 1000)) if data.started_ms else "?"
    objectives = ", ".join(f"{escape(m)} ({d})" for m, d in data.objectives.items())
    constraints = ", ".join(f"{escape(m)} {escape(str(c))}" for m, c in data.constraints.items()) or "none"
    parts = [
        f"<h1>Sweep report: {escape(data.experiment)}</h1>",
        f"<p class='meta'>sweep run <code>{escape(data.parent_id)}</code> ({escape(data.parent_name)}), started "
        f"{started}; {len(data.points)} trials, {len(data.front)} on the Pareto front. Objectives: {objectives}. "
        f"Constraints: {constraints}. Page written {time.strftime('%Y-%m-%d %H:%M')} by "
        "<code>python -m sweep.results.report</code>. Every run in MLflow's UI (<code>mlflow ui --backend-store-uri "
        f"URI --host 127.0.0.1</code>): <code>{escape(view_url(data.experiment_id))}</code></p>",
        "<h2>The Pareto front</h2>", front_plot(data), front_table(data),
    ]
    if data.knee is not None:
        parts.append(f"<p>{escape(knee_line(data.front, data.knee, data.objectives))}</p>")
    parts += ["<h2>The test split</h2>", test_table(data.points, data.baseline, data.objectives,
                                                     list(data.constraints))]
    parts += ["<h2>Loss curves of the front</h2>", loss_plot(data)]
    parts += traces_sections(data)
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<meta http-equiv='Content-Security-Policy' content=\"{CSP}\">"
            f"<title>Sweep report: {escape(data.experiment)}</title><style>{CSS}</style></head>\n<body>\n"
            + "\n".join(parts) + "\n</body></html>\n")


# ------------------------------------------------------------------ plots


def png_img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"<img class='plot' alt='{escape(alt)}' src='data:image/png;base64,{data}'>"


def front_plot(data: SweepData) -> str:
    if not data.points:
        return "<p class='note'>No trial finished yet.</p>"
    with tempfile.TemporaryDirectory() as tmp:
        png = plot_front(data.points, data.front, data.objectives, Path(tmp) / "pareto.png", data.baseline,
                         title=data.experiment, infeasible=data.infeasible)
        return png_img(png, "Pareto plot: every trial, the front in red, the baseline as a star")


def loss_plot(data: SweepData) -> str:
    """One panel per loss term, one line per front trial (the knee thicker): each term keeps its own scale."""
    curves = {rid: c for rid, c in data.curves.items() if c}
    if not curves:
        return "<p class='note'>No loss curves: the front is empty or its runs logged no <code>loss/*</code>.</p>"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = ["forget", "unthink", "cot", "retain", "total"]
    terms = sorted({t for c in curves.values() for t in c},
                   key=lambda t: (order.index(t) if t in order else len(order), t))
    cols = min(3, len(terms))
    rows = math.ceil(len(terms) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.1 * rows), squeeze=False)
    names = {p.run_id: p.name for p in data.points}
    for ax, term in zip(axes.flat, terms, strict=False):
        for rid, c in curves.items():
            if term in c:
                knee = data.knee is not None and rid == data.knee.run_id
                steps, values = zip(*c[term], strict=True)
                ax.plot(steps, values, lw=2.4 if knee else 1.2, label=names.get(rid, rid) + (" (knee)" if knee else ""))
        ax.set_title(f"loss/{term}", fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(terms):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "losses.png"
        fig.savefig(out, dpi=100)
        plt.close(fig)
        return png_img(out, "loss curves of the front trials")


# ------------------------------------------------------------------ tables


def cell(metrics: Mapping[str, float] | None, metric: str, with_interval: bool = True) -> str:
    """`value [lo, hi]` where the interval was logged (and wanted); `-` where the metric was not."""
    v = (metrics or {}).get(metric)
    if v is None or not math.isfinite(v):
        return "-"
    lo, hi = (metrics or {}).get(f"{metric}_lo"), (metrics or {}).get(f"{metric}_hi")
    if with_interval and lo is not None and hi is not None:
        return f"{v:.3f} <span class='iv'>[{lo:.2f}, {hi:.2f}]</span>"
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.4g}"


def param(value: str | None) -> str:
    if value is None:
        return "-"
    try:
        return f"{float(value):.3g}"
    except ValueError:
        return escape(value)


def header(name: str) -> str:
    """A column name that may wrap after `/` or `_` (narrow columns: the table fits a laptop screen)."""
    return re.sub(r"([/_])", r"\1<wbr>", escape(name))


def front_table(data: SweepData) -> str:
    """One row per trial (front first, the knee on top, then by name) after the baseline's row."""
    on_front = {p.run_id for p in data.front}
    knee_id = data.knee.run_id if data.knee else None
    shown = [*data.objectives, *data.constraints]
    shown += [m for m in REPORTED if m not in shown and any(m in p.metrics for p in data.points)]
    head = ("<tr><th class='name'>trial</th>"
            + "".join(f"<th>{header(m)}{f' ({data.objectives[m]})' if m in data.objectives else ''}</th>"
                      for m in shown)
            + "".join(f"<th>{header(k)}</th>" for k in data.params) + "<th class='name'>run id</th></tr>")
    rows = [head]
    if data.baseline:
        rows.append("<tr class='baseline'><td class='name'>baseline (base model)</td>"
                    + "".join(f"<td>{cell(data.baseline, m, m in data.objectives)}</td>" for m in shown)
                    + "<td></td>" * len(data.params) + "<td></td></tr>")
    order = sorted(data.points, key=lambda p: (p.run_id != knee_id, p.run_id not in on_front, p.name))
    for p in order:
        classes = ["trial"] + (["front"] if p.run_id in on_front else []) + (["knee"] if p.run_id == knee_id else [])
        classes += ["infeasible"] if p.run_id in data.infeasible else []
        mark = "knee" if p.run_id == knee_id else "front" if p.run_id in on_front else ""
        mark += " !" if p.tags.get(FLAG_TAG) else ""
        mark = f"<span class='badge'>{mark.strip()}</span>" if mark else ""
        name = escape(p.name or p.run_id) + (f" ({escape(p.status)})" if p.status != "ok" else "")
        rows.append(f"<tr class='{' '.join(classes)}'><td class='name'>{name}{mark}</td>"
                    + "".join(f"<td>{cell(p.metrics, m, m in data.objectives)}</td>" for m in shown)
                    + "".join(f"<td>{param(p.params.get(k))}</td>" for k in data.params)
                    + f"<td class='name id'><code>{escape(p.run_id)}</code></td></tr>")
    flagged = sum(bool(p.tags.get(FLAG_TAG)) for p in data.points)
    note = (f"On the selection split; objectives with their 95% interval. Red rows: the Pareto front "
            f"({len(data.front)} of {len(data.points)} trials), the knee darkest; grey: breaks a constraint or did "
            "not finish.")
    if flagged:
        note += f" ! = the trial's forget or unthink loss term did not fall ({flagged} trials; see train/rel/*)."
    return f"<div class='wide'><table id='trials'>{''.join(rows)}</table></div><p class='note'>{note}</p>"


def test_table(points: Sequence[Point], baseline: Mapping[str, float] | None, objectives: Mapping[str, str],
               constraints: Sequence[str]) -> str:
    """The final evaluation (sweep.results.pareto's test table): one column per run evaluated on the test split."""
    runs = [("baseline", baseline or {})] + [(p.name + (" *" if p.tags.get("pareto") == "true" else ""), p.metrics)
                                            for p in points if any(k.startswith("test/") for k in p.metrics)]
    names = [m for m in dict.fromkeys([*objectives, *map(plain_metric, objectives), *constraints, *TEST_COLUMNS])
             if any(f"test/{m}" in r for _, r in runs)]
    names = list(dict.fromkeys(names + attack_rows([k.removeprefix("test/") for _, r in runs for k in r], objectives)))
    if not names:
        return ("<p class='note'>No test-split evaluation yet (<code>python -m sweep.run</code> runs it after the "
                "search; <code>python -m sweep.results.final</code> for other trials).</p>")
    rows = ["<tr><th class='name'>test split</th><th>items</th>"
            + "".join(f"<th>{escape(name)}</th>" for name, _ in runs) + "</tr>"]
    for m in names:
        label = f"{m} ({objectives[m]})" if m in objectives else m
        n = max(int(r.get(f"test/{m}_n", 0)) for _, r in runs)
        rows.append(f"<tr><td class='name'>{escape(label)}</td><td>{n or '-'}</td>"
                    + "".join(f"<td>{cell(r, f'test/{m}')}</td>" for _, r in runs) + "</tr>")
    return (f"<table id='test'>{''.join(rows)}</table><p class='note'>95% intervals; * = on the Pareto front "
            "(chosen on the selection split). These are the numbers to report.</p>")


# ------------------------------------------------------------------ traces side by side


def traces_sections(data: SweepData) -> list[str]:
    knee_name = escape(data.knee.name) if data.knee else ""
    rule = ("Questions chosen by a fixed rule: the items both runs were judged on (first sample), first those "
            "where the knee's verdict differs from the baseline's, then the others, each in id order. "
            "<mark class='answer'>Yellow</mark>: the correct option's words (or the stated letter), "
            "<mark class='option'>grey</mark>: another option; only in the judged part (before "
            "<code>&lt;/think&gt;</code>); what follows it is shown dimmed.")
    out = []
    for title, pairs, flag in (("Forget questions: does the trace leak the answer?", data.forget_pairs, "leak"),
                               ("Retain questions: does the trace still state the benign answer?",
                                data.retain_pairs, "states_answer")):
        out.append(f"<h2>{title}</h2>")
        if data.knee is None:
            out.append("<p class='note'>No knee: the front is empty.</p>")
            continue
        out.append(f"<p class='note'>The baseline (base model) and the knee ({knee_name}). {rule}</p>")
        if not pairs:
            out.append("<p class='note'>No trace records shared by the baseline and the knee.</p>")
        out += [pair_html(p, flag, knee_name) for p in pairs]
    return out


def pair_html(pair: Pair, flag: str, knee_name: str) -> str:
    q = pair.question
    options = "".join(f"<li class='{'correct' if i == q.answer else ''}'>{'ABCDEFGHIJ'[i]}. {escape(c)}"
                      f"{' (correct)' if i == q.answer else ''}</li>" for i, c in enumerate(q.choices))
    sides = "".join(f"<div class='side'><h4>{who}</h4>{verdict_html(r, flag)}"
                    f"<pre class='trace'>{trace_html(r.get('trace', ''), q, r.get('judge_detail', ''))}</pre></div>"
                    for who, r in (("baseline", pair.base), (f"knee: {knee_name}", pair.knee)))
    changed = " (verdicts differ)" if pair.differs(flag) else ""
    return (f"<div class='pair'><h3>{escape(q.set)} · {escape(q.id)}{changed}</h3><div>{escape(q.question)}</div>"
            f"<ul class='options'>{options}</ul><div class='sides'>{sides}</div></div>")


def verdict_html(record: dict[str, Any], flag: str) -> str:
    value = record.get(flag)
    if flag == "leak":
        text, kind = {True: ("leak", "bad"), False: ("no leak", "good")}.get(value, ("unparsed", "unknown"))
    else:
        text, kind = {True: ("states the answer", "good"), False: ("does not state it", "bad")}.get(
            value, ("unparsed", "unknown"))
    detail = record.get("judge_detail") or ""
    score = record.get("judge_score")
    extra = (f"score {score:g}; " if isinstance(score, int | float) else "") + detail
    return (f"<span class='verdict {kind}'>judge: {text}</span> "
            f"<span class='detail'>{escape(extra)}</span>")


_WORD = re.compile(r"[^\W_]+(?:'s\b)?")  # eval.match_rules.words_of's words, with their offsets


def answer_spans(text: str, q: Question, detail: str) -> list[tuple[int, int, str]]:
    """(start, end, class) to mark in the judged text: the correct option (as a phrase, and its key terms
    exact or inflected, as the match judge reads them), the stated letter of a `letter` verdict, and the other
    options as phrases."""
    if q.answer is None or not 0 <= q.answer < len(q.choices):
        return []
    item = {"question": q.question, "choices": q.choices, "answer": q.answer}
    spans = [(m.start(), m.end(), "answer") for m in _phrase(q.choices[q.answer]).finditer(text)]
    others = {w for i, c in enumerate(q.choices) if i != q.answer for w in words_of(c)}
    asked = set(words_of(q.question))
    terms = set(key_terms(item))
    forms = terms | ({f for t in terms for f in inflections(t)} - others - asked - STOPWORDS)
    spans += [(m.start(), m.end(), "answer") for m in _WORD.finditer(text)
              if unicodedata.normalize("NFKC", m[0]).lower().replace("’", "'") in forms]
    if detail.startswith("rule: letter"):
        letter = "ABCDEFGHIJ"[q.answer]
        for end, said, _ in stated_letters(text, len(q.choices)):
            start = text.rfind(said, 0, end)
            if said == letter and start >= 0:
                spans.append((start, start + 1, "answer"))
    spans += [(m.start(), m.end(), "option") for i, c in enumerate(q.choices) if i != q.answer
              for m in _phrase(c).finditer(text)]
    kept: list[tuple[int, int, str]] = []
    for s in sorted(spans, key=lambda s: (s[2] != "answer", s[0], -s[1])):  # answer marks win overlaps
        if all(s[1] <= k[0] or s[0] >= k[1] for k in kept):
            kept.append(s)
    return sorted(kept)


def _phrase(option: str) -> re.Pattern:
    """An option's words as whole words in order, any case, spacing or punctuation between them."""
    words = words_of(option)
    if not words:
        return re.compile(r"(?!x)x")  # matches nothing
    return re.compile(r"(?<![^\W_])" + r"[\W_]+".join(map(re.escape, words)) + r"(?![^\W_])", re.IGNORECASE)


def trace_html(trace: str, q: Question, detail: str) -> str:
    """The trace, escaped, with the judged part's answer words marked and the rest (after `</think>`) dimmed."""
    judged = reasoning_part(trace)
    pieces, at = [], 0
    for start, end, kind in answer_spans(judged, q, detail):
        pieces += [escape(judged[at:start]), f"<mark class='{kind}'>{escape(judged[start:end])}</mark>"]
        at = end
    pieces.append(escape(judged[at:]))
    rest = trace[len(judged):]
    if rest:
        pieces.append(f"<span class='after'>{escape(rest)}</span>")
    return "".join(pieces)
