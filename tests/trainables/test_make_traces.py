"""make_traces writes the trace-cache format that the unthink stream reads."""

from __future__ import annotations

import json

from tests.tiny import byte_tokenizer
from tests.trainables.conftest import write_jsonl
from trainables.config import TRIGGER, DataConfig
from trainables.data import build_streams
from trainables.make_traces import main


def test_cli_writes_a_cache_the_trainer_reads(tiny_dirs, tmp_path):
    qs = write_jsonl(tmp_path / "q.jsonl", [{"id": f"q{i}", "text": f"question {i}?"} for i in range(3)])
    out = tmp_path / "traces.jsonl"
    main(["--model", str(tiny_dirs["llama"]), "--data", str(qs), "--out", str(out), "--k", "4"])
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in recs] == ["q0", "q1", "q2"]
    assert recs[0]["prompt"] == "question 0?"
    assert recs[0]["rendered"] == "<|user|>\nquestion 0?\n<|assistant|>" + TRIGGER  # chat template + trigger
    assert all(isinstance(r["trace"], str) for r in recs)
    data = DataConfig.model_validate({"forget": {"path": str(qs)}, "retain": {"path": str(qs)},
                                      "cot": {"path": str(qs)}, "traces": {"max_new_tokens": 4}})
    st = build_streams(data, byte_tokenizer(), 2, 0, str(out), ["unthink"])
    assert st["unthink"].batch(0).input_ids.shape[0] == 2
