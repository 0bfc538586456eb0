"""Write the trace cache (docs/formats.md) with transformers `generate`, until the eval package provides it.

    python -m trainables.make_traces --model DIR --data FILE --field text --out FILE [--k 100]

Per record: body = the field's text (or, with --mcq, the MCQ body built from `question` and `choices`);
rendered = chat template of the body (when the tokenizer has one) + trigger; trace = the greedy continuation
of `k` new tokens. The rendered string is tokenised without added special tokens (the template holds them),
exactly as `trainables.data` tokenises it for the unthink stream.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from common.prompts import TRIGGER
from trainables.data import read_rows


def mcq_body(row: dict) -> str:
    letters = "ABCD"
    return row["question"] + "".join(f"\n{letters[i]}. {c}" for i, c in enumerate(row["choices"]))


def render(tokenizer, body: str, trigger: str) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": body}], tokenize=False,
                                             add_generation_prompt=True) + trigger
    return body + trigger


@torch.no_grad()
def make_traces(model, tokenizer, rows: list[dict], field: str, k: int, trigger: str = TRIGGER,
                mcq: bool = False, batch_size: int = 8) -> list[dict]:
    """One trace-cache record per row (greedy, batched with left padding)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        bodies = [mcq_body(r) if mcq else r[field] for r in chunk]
        rendered = [render(tokenizer, b, trigger) for b in bodies]
        enc = tokenizer(rendered, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        gen = model.generate(**enc, max_new_tokens=k, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        new = gen[:, enc["input_ids"].shape[1]:]
        for j, (row, body, r) in enumerate(zip(chunk, bodies, rendered, strict=True)):
            trace = tokenizer.decode(new[j], skip_special_tokens=True)
            out.append({"id": str(row.get("id", start + j)), "prompt": body, "rendered": r, "trace": trace})
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="HF model directory")
    ap.add_argument("--data", required=True, help="jsonl / parquet / datasets dir of questions or documents")
    ap.add_argument("--field", default="text", help="the text field (ignored with --mcq)")
    ap.add_argument("--mcq", action="store_true", help="records are MCQs (question, choices): use the MCQ body")
    ap.add_argument("--out", required=True, help="trace cache jsonl to write")
    ap.add_argument("--k", type=int, default=100, help="new tokens per trace")
    ap.add_argument("--limit", type=int, default=None, help="use the first N records (default: all)")
    ap.add_argument("--trigger", default=TRIGGER, help="text appended to each prompt to start the trace "
                    "(default: the space file's data.traces.trigger default)")
    ap.add_argument("--batch-size", type=int, default=8, help="prompts per generate call (default %(default)s)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                    help="model dtype (default %(default)s)")
    args = ap.parse_args(argv)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    fields = ["question"] if args.mcq else [args.field]
    rows = read_rows(args.data, fields, args.limit, what="data.traces.source")
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype)).eval()
    if torch.cuda.is_available():
        model = model.cuda()
    recs = make_traces(model, tok, rows, args.field, args.k, args.trigger, args.mcq, args.batch_size)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in recs))
    print(f"wrote {len(recs)} traces to {args.out}")


if __name__ == "__main__":
    main()
