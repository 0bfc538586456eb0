"""The trace cache the sweep writes: generated in chunks with progress, returned by the evaluator as text."""

import json

from eval.generate import load_backend
from eval.traces import write_trace_cache
from sweep.config import parse_space
from sweep.evaluator import Evaluator
from sweep.traces import ensure_traces
from tests.sweep.conftest import write_jsonl


def test_chunked_traces_equal_one_batch(tmp_path, space, capsys):
    rows = [{"id": f"q{i}", "text": f"Question {i}: what is {i} plus {i % 7}?"} for i in range(130)]
    space["data"]["forget"]["path"] = str(write_jsonl(tmp_path / "questions.jsonl", rows))
    space["data"]["traces"] = {"max_new_tokens": 6}
    space["eval"]["backend"] = "hf"
    cfg = parse_space(space)
    evaluator = Evaluator(cfg.model.path, cfg.eval, "float32")
    try:
        out = ensure_traces(cfg, evaluator)
    finally:
        evaluator.close()
    printed = capsys.readouterr().out
    assert "traces: 64/130" in printed and "traces: 128/130" in printed and "traces: 130/130" in printed
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in got] == [r["id"] for r in rows]
    # the same traces as one call over all questions (greedy; the HF backend batches 16 at a time either way)
    whole = write_trace_cache(load_backend(cfg.model.path, "hf", "float32"), rows, "text", cfg.data.traces.trigger,
                              6, tmp_path / "whole.jsonl", progress=False)
    assert got == [json.loads(line) for line in whole.read_text().splitlines()]
    assert not list(out.parent.glob("*.tmp*"))
    ensure_traces(cfg, evaluator=None)  # cached now: the evaluator is not called
    assert "traces: cached" in capsys.readouterr().out
