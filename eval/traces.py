"""The base model's reasoning traces on forget data, written as the trace cache of docs/formats.md.

The sweep calls this once per sweep (DESIGN.md section 3, step 2); the trainer's unthink stream reads the
file. Greedy, chat template + trigger, so the cache is a deterministic function of model, data, trigger and
length (the sweep keys its cache on those).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from eval.generate import Backend, greedy
from eval.prompts import mcq_body


def trace_prompt(record: dict[str, Any], field: str) -> str:
    """The question text as given to the model: the MCQ body for an MCQ record's `question`, else the field."""
    if field == "question" and "choices" in record:
        return mcq_body(record)
    return str(record[field])


def write_trace_cache(backend: Backend, records: list[dict[str, Any]], field: str, trigger: str,
                      max_new_tokens: int, out_path: str | Path, progress: bool = True) -> Path:
    """Generate one greedy trace per record and write `{id, prompt, rendered, trace}` lines to out_path."""
    out_path = Path(out_path)
    prompts = [trace_prompt(r, field) for r in records]
    rendered = [backend.render(p, trigger) for p in prompts]
    gens = backend.generate(rendered, greedy(max_new_tokens), progress=progress)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + f".tmp{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        for i, (record, prompt, full, gen) in enumerate(zip(records, prompts, rendered, gens, strict=True)):
            row = {"id": str(record.get("id", i)), "prompt": prompt, "rendered": full, "trace": gen.text}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(out_path)  # atomic: a reader never sees half a cache
    return out_path
