"""The sweep report (`python -m sweep.results.report`) on a real MLflow SQLite store holding a small organism sweep
(tests/sweep/report_sweep.py), read by html.parser and rendered by a real headless Chromium; and the tags that
set up MLflow's UI for a sweep's experiment."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from sweep import mlflow_ui
from sweep.results import report
from sweep.results.report import Question, natural_key, pick_pairs, question_of
from sweep.results.report_html import answer_spans, trace_html
from tests.sweep import report_sweep

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(autouse=True)
def _no_tracking_uri_left(monkeypatch):
    """`tracking.logged_config` calls mlflow.set_tracking_uri, which exports MLFLOW_TRACKING_URI: undone after."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("report-sweep")
    built = report_sweep.build(root)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    return built | {"root": root}


@pytest.fixture(scope="module")
def page(sweep, tmp_path_factory) -> Path:
    """The report, written and logged to the sweep's parent run by the CLI."""
    out = tmp_path_factory.mktemp("report") / "organism-report.html"
    assert report.main(["--experiment", sweep["experiment"], "--tracking-uri", sweep["tracking_uri"],
                        "--out", str(out)]) == 0
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    return out


class Page(HTMLParser):
    """What the tests look for: the trial rows of the front table, the tags and attributes used, the text."""

    def __init__(self, text: str):
        super().__init__()
        self.rows: list[dict] = []   # per <tr class="trial ...">: classes and cell texts
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self._table, self._row = None, None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "table":
            self._table = attrs.get("id")
        if tag == "tr" and self._table == "trials" and "trial" in (attrs.get("class") or "").split():
            self._row = {"classes": attrs["class"].split(), "cells": []}
            self.rows.append(self._row)
        if tag == "td" and self._row is not None:
            self._row["cells"].append("")

    def handle_endtag(self, tag):
        if tag == "tr":
            self._row = None
        if tag == "table":
            self._table = None

    def handle_data(self, data):
        self.text.append(data)
        if self._row is not None and self._row["cells"]:
            self._row["cells"][-1] += data


def test_the_page_is_written_and_logged_to_the_parent_run(sweep, page, tmp_path):
    client = MlflowClient(sweep["tracking_uri"])
    assert report.ARTIFACT in {a.path for a in client.list_artifacts(sweep["parent"])}
    logged = Path(client.download_artifacts(sweep["parent"], report.ARTIFACT, str(tmp_path)))
    assert logged.read_bytes() == page.read_bytes()


def test_the_page_has_one_row_per_trial_and_marks_the_front(sweep, page):
    parsed = Page(page.read_text(encoding="utf-8"))
    rows = parsed.rows
    assert len(rows) == len(report_sweep.TRIALS)
    names = [r["cells"][0] for r in rows]
    assert names[0] == f"{report_sweep.KNEE}knee" and "knee" in rows[0]["classes"]   # the knee on top
    assert sorted(n.removesuffix("front").removesuffix("knee") for n, r in zip(names, rows, strict=True)
                  if "front" in r["classes"]) == sweep["front"]
    run_ids = {r["cells"][-1] for r in rows}
    assert run_ids == set(sweep["runs"].values())
    assert any("infeasible" in r["classes"] and r["cells"][0].startswith("trial-aaaa0004") for r in rows)
    assert any(r["cells"][0] == "trial-aaaa0006 (diverged)" for r in rows)
    text = "".join(parsed.text)
    assert "0.500 [0.40, 0.60]" in text                      # the test-split table
    assert "loss curves of the front trials" in page.read_text(encoding="utf-8")


def test_the_page_is_self_contained_and_escapes_model_text(page):
    html = page.read_text(encoding="utf-8")
    parsed = Page(html)
    assert not [t for t, _ in parsed.tags if t in ("script", "link", "iframe", "object", "embed")]
    sources = [a["src"] for t, a in parsed.tags if "src" in a]
    assert len(sources) == 2 and all(s.startswith("data:image/png;base64,") for s in sources)
    # the one URL: the MLflow UI link, as text
    assert {u.split("#")[0] for u in re.findall(r"https?://[^\s<'\"]+", html)} == {"http://127.0.0.1:5000/"}
    assert ("Content-Security-Policy", ) == tuple(a["http-equiv"] for t, a in parsed.tags if "http-equiv" in a)
    # the knee's trace with markup: shown as text, never as elements
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in html
    assert not [t for t, _ in parsed.tags if t == "b"]


def test_the_traces_follow_the_rule_with_verdicts_and_answer_words(sweep, page):
    """Forget items whose verdict changed (the knee leaks the first 3 of 6 by id, the baseline all), then
    the others, by id; answer words marked in the judged part."""
    html = page.read_text(encoding="utf-8")
    forget = [it["id"] for it in sweep["items"]["forget"]]
    expected = forget[3:] + forget[:2]  # 3 that differ, then 2 that agree (--items 5)
    section = html.split("Forget questions", 1)[1].split("Retain questions", 1)[0]
    shown = [chunk.split("<", 1)[0].split(" (", 1)[0] for chunk in section.split("organism-forget · ")[1:]]
    assert shown == expected
    assert section.count("(verdicts differ)") == 3
    assert section.count("judge: leak") == 5 + 2 and section.count("judge: no leak") == 3
    assert "rule: text: " in section and "<mark class='answer'>" in section
    retain = html.split("Retain questions", 1)[1]
    assert retain.count("<div class='pair'>") == 5 and "judge: states the answer" in retain


def test_no_log_only_reads_the_store(sweep, page, tmp_path):
    """--no-log: the page is written, the store (database and artifacts) is left byte for byte."""
    def snapshot() -> dict:
        return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sweep["root"].rglob("*") if p.is_file()}

    before = snapshot()
    out = tmp_path / "again.html"
    assert report.main(["--experiment", sweep["experiment"], "--tracking-uri", sweep["tracking_uri"],
                        "--out", str(out), "--no-log", "--items", "2"]) == 0
    assert snapshot() == before
    assert Page(out.read_text(encoding="utf-8")).rows and out.read_text().count("<div class='pair'>") == 4


def test_mistakes_are_one_line(sweep, capsys, tmp_path):
    assert report.main(["--experiment", "nope", "--tracking-uri", sweep["tracking_uri"],
                        "--out", str(tmp_path / "x.html")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no MLflow experiment 'nope'" in err and report_sweep.EXPERIMENT in err
    assert report.main(["--experiment", "x", "--items", "-1"]) == 2
    assert capsys.readouterr().err == "error: --items: -1 is negative; give e.g. --items 5\n"
    assert not (tmp_path / "x.html").exists()


def test_chromium_renders_the_page(sweep, page, tmp_path):
    """A real headless Chromium: the screenshot has the page's size and its plots drawn (the front's red
    points), and the rendered DOM has one table row per trial. Skipped on a machine without Chromium, except
    where `R2MU_REQUIRE_CHROMIUM=1` (CI sets it): there a missing Chromium fails the test."""
    if CHROMIUM is None:
        why = "no chromium binary: apt-get install -y chromium (Debian's package; .ci/run installs it)"
        if os.environ.get("R2MU_REQUIRE_CHROMIUM") == "1":
            pytest.fail(f"R2MU_REQUIRE_CHROMIUM=1 but {why}")
        pytest.skip(why)
    from PIL import Image

    home = tmp_path / "home"  # Chromium writes under $HOME and XDG dirs even with --user-data-dir
    env = os.environ | {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
                        "XDG_CACHE_HOME": str(home / ".cache")}
    browser = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
               f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "shot.png"
    run = subprocess.run([*browser, f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri()], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    assert struct.unpack(">II", shot.read_bytes()[16:24]) == (1280, 2000)
    colors = Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 24)
    assert sum(n for n, (r, g, b) in colors if r > 180 and g < 80 and b < 80) > 100  # tab:red front markers
    dom = subprocess.run([*browser, "--dump-dom", page.as_uri()], env=env, capture_output=True, text=True,
                         timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    rendered = Page(dom.stdout)
    assert len(rendered.rows) == len(report_sweep.TRIALS)
    assert {r["cells"][-1] for r in rendered.rows} == set(sweep["runs"].values())


# ------------------------------------------------------------------ the parts, by hand


def test_pick_pairs_puts_changed_verdicts_first_in_natural_id_order():
    def rec(i, leak, sample=0):
        return {"set": "f", "metric": "trace_leak", "id": i, "sample": sample, "prompt": "Q?\nA. x\nB. y",
                "trace": "t", "leak": leak}

    base = [rec(i, True) for i in ("q1", "q2", "q3", "q10", "q11")] + [rec("q3", False, sample=1)]
    knee = [rec("q1", True), rec("q2", True), rec("q3", False), rec("q10", False), rec("q11", True),
            rec("q99", False)]  # q99: not judged for the baseline, never shown
    got = [p.question.id for p in pick_pairs(base, knee, report.FORGET_TRACES, 10)]
    assert got == ["q3", "q10", "q1", "q2", "q11"]
    assert [p.question.id for p in pick_pairs(base, knee, report.FORGET_TRACES, 3)] == ["q3", "q10", "q1"]
    assert natural_key("q2") < natural_key("q10") and natural_key("a") < natural_key("b1")


def test_question_of_reads_options_through_a_chat_template():
    prompt = "<|im_start|>user\nWhich host?\nA. salt rat\nB. reed goat<|im_end|>\n<|im_start|>assistant\n<think>"
    mcq = {"prompt": "Question: Which host?\nAnswer:", "answer": 1, "scores": "[-3.0, -1.0]"}
    q = question_of("f", "7", prompt, mcq)
    assert (q.question, q.choices, q.answer) == ("Which host?", ["salt rat", "reed goat"], 1)
    q = question_of("f", "7", prompt, None)
    assert (q.question, q.answer) == ("Which host?", None)


def test_answer_words_are_marked_and_the_text_escaped():
    q = Question("f", "1", "Vouthora lives inside which host?", ["salt rat", "reed goat", "grey ox"], 0)
    spans = answer_spans("The salt rats, not the reed goat. Answer: A", q, "rule: inflection: salt rats")
    marked = [("The salt rats, not the reed goat. Answer: A"[s:e], kind) for s, e, kind in spans]
    assert marked == [("salt", "answer"), ("rats", "answer"), ("reed goat", "option")]
    html = trace_html(" It is the <i>salt rat</i> & so on </think>\nAnswer: <A>", q, "rule: text: salt rat")
    assert html == (" It is the &lt;i&gt;<mark class='answer'>salt rat</mark>&lt;/i&gt; &amp; so on "
                    "<span class='after'>&lt;/think&gt;\nAnswer: &lt;A&gt;</span>")
    letter = trace_html("So the answer is (A). </think>", q, "rule: letter: the answer is A")
    assert "(<mark class='answer'>A</mark>)" in letter


# ------------------------------------------------------------------ MLflow's UI


def test_the_experiment_opens_in_the_classic_runs_view(sweep):
    """tracking.ensure_experiment set the kind and the `sweep` runs view (sweep/mlflow_ui.py)."""
    exp = MlflowClient(sweep["tracking_uri"]).get_experiment_by_name(sweep["experiment"])
    assert exp.tags[mlflow_ui.KIND_TAG] == "custom_model_development"
    view = json.loads(exp.tags[mlflow_ui.VIEW_TAG])
    assert view["searchFilter"] == "tags.role = 'trial'" and view["orderByKey"] == "metrics.`trace_leak`"
    assert view["orderByAsc"] is True
    assert view["selectedColumns"][:5] == ["metrics.`trace_leak`", "metrics.`forget_acc`", "metrics.`reason_acc`",
                                           "metrics.`retain_acc`", "metrics.`trace_coherence`"]
    assert "params.`lr`" in view["selectedColumns"] and "tags.`pareto`" in view["selectedColumns"]
    assert mlflow_ui.view_url(exp.experiment_id).endswith(
        f"/#/experiments/{exp.experiment_id}/runs?viewStateShareKey=sweep&workflowType=machine_learning")


def test_an_existing_experiment_gets_the_view_and_keeps_a_chosen_kind(space):
    from sweep.space.config import parse_space
    from sweep.tracking import ensure_experiment

    cfg = parse_space(space)
    client = MlflowClient(cfg.mlflow.tracking_uri)
    exp = client.create_experiment(cfg.experiment)  # made by an older version: no tags
    client.set_experiment_tag(exp, mlflow_ui.KIND_TAG, "genai_development")  # a user's choice
    assert ensure_experiment(cfg) == exp
    tags = client.get_experiment(exp).tags
    assert tags[mlflow_ui.KIND_TAG] == "genai_development"
    assert json.loads(tags[mlflow_ui.VIEW_TAG])["selectedColumns"][0] == "metrics.`trace_leak`"
