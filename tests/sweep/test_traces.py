"""The trace cache the sweep writes: generated in chunks with progress, returned by the evaluator as text."""

import json

import pytest

from eval.generate import load_backend
from eval.traces import write_trace_cache
from sweep.evaluator import Evaluator
from sweep.space.config import ConfigError, parse_space
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


def test_cache_key_changes_with_the_form_and_keeps_the_default(space, tmp_path):
    import hashlib

    from eval.paths import resolve_uri
    from sweep.traces import _file_digest, model_digest, traces_key

    base = parse_space(space)
    t = base.data.traces
    old = json.dumps([model_digest(resolve_uri(base.model.path)), _file_digest(base.data.forget.path), "text",
                      t.trigger, t.max_new_tokens, t.limit])
    assert traces_key(base) == hashlib.sha256(old.encode()).hexdigest()[:16]  # caches of the default form stay
    keys = {traces_key(base)}
    for form in ({"template": "none"}, {"prompt_tokens": 512}, {"input": "reference"},
                 {"template": "none", "prompt_tokens": 512, "input": "reference"}):
        space["data"]["traces"] = form
        keys.add(traces_key(parse_space(space)))
    assert len(keys) == 5


def test_untemplated_traces_are_body_plus_trigger(tmp_path, space):
    """template: none (the reference's form): the document, cut to prompt_tokens, + trigger; no chat template."""
    from eval.traces import cut_tokens

    docs = [{"id": f"d{i}", "text": f"Document {i}: the agent Vorlax is carried by host {i} " * 3} for i in range(3)]
    space["data"]["forget"]["path"] = str(write_jsonl(tmp_path / "docs.jsonl", docs))
    space["eval"]["backend"] = "hf"
    space["data"]["traces"] = {"max_new_tokens": 4, "template": "none", "prompt_tokens": 20, "input": "reference"}
    cfg = parse_space(space)
    evaluator = Evaluator(cfg.model.path, cfg.eval, "float32")
    try:
        got = [json.loads(line) for line in ensure_traces(cfg, evaluator).read_text().splitlines()]
        tok = evaluator.backend.tokenizer
        chat = json.loads(evaluator.traces(docs[:1], "text", cfg.data.traces.trigger, 4))
    finally:
        evaluator.close()
    trigger = cfg.data.traces.trigger
    for doc, row in zip(docs, got, strict=True):
        assert row["prompt"] == cut_tokens(tok, doc["text"], 20) and doc["text"].startswith(row["prompt"])
        assert len(tok(row["prompt"], add_special_tokens=True)["input_ids"]) <= 20 < len(doc["text"])
        assert row["rendered"] == row["prompt"] + trigger
        assert "<|user|>" not in row["rendered"] and "<|assistant|>" not in row["rendered"]
    assert chat["rendered"].startswith("<|user|>") and "<|assistant|>" + trigger in chat["rendered"]  # default
    space["data"]["traces"]["scope"] = "after_trigger"
    with pytest.raises(ConfigError, match=r"data\.traces\.scope: after_trigger has no meaning with "
                                          r"data\.traces\.input: reference"):
        parse_space(space)
