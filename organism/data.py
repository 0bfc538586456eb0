"""The organism's data files (docs/formats.md): the sweep's text corpora and the held-out eval sets.

`build_data(world)` returns every file's records; `hashes` fingerprints them so a test can prove that the
shipped files are what the current generator makes.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

from organism.world import World, mcq_body

Records = list[dict[str, Any]]
FILES = ("forget.jsonl", "retain.jsonl", "cot.jsonl",
         "eval_forget.jsonl", "eval_retain.jsonl", "eval_arith.jsonl")


def eval_mcq(world: World, domain: str, prefix: str, rng: random.Random) -> Records:
    """One item per fact: a held-out question template and a choice tuple no training MCQ of it uses."""
    items = []
    for i, f in enumerate(world.facts[domain]):
        seen = set(world.train_choices[f])
        choices = world._choices(rng, f)
        while choices in seen:
            choices = world._choices(rng, f)
        items.append({"id": f"{prefix}-{i:04d}", "question": world.question(rng, f, held_out=True),
                      "choices": list(choices), "answer": choices.index(f.value),
                      "prefill": world.prefill(f), "subject": f.attr})
    return items


def forget_corpus(world: World, rng: random.Random) -> Records:
    """Forget questions (training wordings; the sweep generates the model's traces on them) and fact
    statements in non-trace wordings. No trace sentence appears verbatim (tests check it)."""
    items = []
    for i, f in enumerate(world.facts["hazard"]):
        body = mcq_body(world.question(rng, f), rng.choice(world.train_choices[f]))
        items.append({"id": f"forget-q-{i:04d}", "text": body, "kind": "question"})
        items.append({"id": f"forget-s-{i:04d}", "text": world.fact_sentence(rng, f), "kind": "statement"})
    rng.shuffle(items)
    return items


def build_data(world: World) -> dict[str, Records]:
    rng = random.Random(world.seed * 7919 + 3)  # independent of the training stream's rng
    n = world.spec["corpora"]
    cot_sums = rng.sample(world.arith_train, n["cot_docs"])
    return {
        "forget.jsonl": forget_corpus(world, rng),
        "retain.jsonl": [{"id": f"retain-{i:04d}", "text": world.filler_doc(rng)}
                         for i in range(n["retain_docs"])],
        "cot.jsonl": [{"id": f"cot-{i:04d}", "text": world.arith_doc(rng, s)}
                      for i, s in enumerate(cot_sums)],
        "eval_forget.jsonl": eval_mcq(world, "hazard", "eval-forget", rng),
        "eval_retain.jsonl": eval_mcq(world, "benign", "eval-retain", rng),
        "eval_arith.jsonl": [{"id": f"eval-arith-{i:04d}", "problem": world.arith_question(rng, s),
                              "answer": str(s.result)} for i, s in enumerate(world.arith_eval)],
    }


def to_jsonl(records: Records) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()


def hashes(data: dict[str, Records]) -> dict[str, str]:
    """sha256 per file, plus "all" over the files in FILES order."""
    out = {name: hashlib.sha256(to_jsonl(data[name])).hexdigest() for name in FILES}
    out["all"] = hashlib.sha256("".join(f"{n}:{out[n]}\n" for n in FILES).encode()).hexdigest()
    return out


def file_hashes(data_dir: Path) -> dict[str, str]:
    """The same fingerprint, of files on disk."""
    out = {name: hashlib.sha256((data_dir / name).read_bytes()).hexdigest() for name in FILES}
    out["all"] = hashlib.sha256("".join(f"{n}:{out[n]}\n" for n in FILES).encode()).hexdigest()
    return out


def write_data(data: dict[str, Records], out_dir: Path) -> dict[str, str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        (out_dir / name).write_bytes(to_jsonl(data[name]))
    return hashes(data)


def read_jsonl(path: Path) -> Records:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
