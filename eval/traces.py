"""The base model's reasoning traces on forget data, written as the trace cache of docs/formats.md.

The sweep calls this once per sweep (the driver's `start` phase); the trainer's unthink stream reads the
file. Greedy, so the cache is a deterministic function of model, data, trigger, length and the prompt's form
(the sweep keys its cache on those). Two forms of the generation prompt (`template`):
- `chat` (default): the chat template around the body (where the tokenizer has one), then the trigger;
- `none`: body + trigger as plain text, no template. With `prompt_tokens=512` this is what the R2MU reference
  code generates from (OPTML-Group/Unlearn-R2MU, parallel_generate.py): each forget-corpus document cut to
  512 tokens (`tokenizer(text, truncation=True, max_length=512)`, decoded without special tokens), then
  "\\nLet's reason this step by step.\\n<think>", tokenised with the tokenizer's special tokens (BOS), greedy.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from eval.backend import Backend, greedy
from eval.prompts import mcq_body


def trace_prompt(record: dict[str, Any], field: str) -> str:
    """The question text as given to the model: the MCQ body for an MCQ record's `question`, else the field."""
    if field == "question" and "choices" in record:
        return mcq_body(record)
    return str(record[field])


def cut_tokens(tokenizer: Any, text: str, n: int) -> str:
    """The text's first n tokens as the tokenizer counts them with its special tokens (a BOS counts), decoded
    without them: the reference's cut of a document before it appends the trigger."""
    ids = tokenizer(text, add_special_tokens=True, truncation=True, max_length=n)["input_ids"]
    return tokenizer.decode(ids, skip_special_tokens=True)


def render_trace_prompt(backend: Backend, body: str, trigger: str, template: str = "chat") -> str:
    """The generation prompt of a trace: `chat` = the backend's chat rendering + trigger; `none` = body + trigger."""
    if template == "chat":
        return backend.render(body, trigger)
    if template == "none":
        return body + trigger
    raise ValueError(f"data.traces.template: {template!r} is not one of chat, none")


def write_trace_cache(backend: Backend, records: list[dict[str, Any]], field: str, trigger: str,
                      max_new_tokens: int, out_path: str | Path, progress: bool = True, template: str = "chat",
                      prompt_tokens: int | None = None) -> Path:
    """Generate one greedy trace per record and write `{id, prompt, rendered, trace}` lines to out_path.

    `template` is the prompt's form (module docstring); `prompt_tokens` cuts each body to its first N tokens
    first (None: no cut). `prompt` is the body as given to the model (after the cut), `rendered` the full prompt.
    """
    out_path = Path(out_path)
    prompts = [trace_prompt(r, field) for r in records]
    if prompt_tokens is not None:
        prompts = [cut_tokens(backend.tokenizer, p, prompt_tokens) for p in prompts]
    rendered = [render_trace_prompt(backend, p, trigger, template) for p in prompts]
    gens = backend.generate(rendered, greedy(max_new_tokens), progress=progress)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + f".tmp{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        for i, (record, prompt, full, gen) in enumerate(zip(records, prompts, rendered, gens, strict=True)):
            row = {"id": str(record.get("id", i)), "prompt": prompt, "rendered": full, "trace": gen.text}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(out_path)  # atomic: a reader never sees half a cache
    return out_path
