"""The organism's data files (docs/formats.md): the sweep's text corpora and the held-out eval sets.

`build_data(world)` returns every file's records; `hashes` fingerprints them so a test can prove that the
shipped files are what the current generator makes.

Held-out hazard agents (world.yaml `corpora.heldout_hazard_agents`, drawn by `heldout_agents` with their own
seeded rng) have no record in any training stream: their forget.jsonl records are dropped after every record
was drawn, so the shared rng stream, and with it every other file, is what it would be without them. The base
model still knows their facts (its pretraining text covers all agents); eval_forget.jsonl marks each item
`group: trained` or `group: heldout`, so leak can be reported on facts the unlearning never saw.
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


def heldout_agents(world: World) -> list[str]:
    """The hazard agents whose facts are in no training stream: a seeded draw that leaves the shared rng alone."""
    n = world.spec["corpora"].get("heldout_hazard_agents", 0)
    names = world.names["hazard"]
    picked = set(random.Random(world.seed * 104_729 + 11).sample(names, n))
    return [name for name in names if name in picked]


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


def build_data(world: World, heldout: bool = True) -> dict[str, Records]:
    """Every file's records. `heldout=False`: forget.jsonl keeps the held-out agents' records and eval items
    carry no group (the data the shipped tokenizer was trained on; `organism.build` uses it for that)."""
    rng = random.Random(world.seed * 7919 + 3)  # independent of the training stream's rng
    n = world.spec["corpora"]
    cot_sums = rng.sample(world.arith_train, n["cot_docs"])
    forget = forget_corpus(world, rng)
    data = {
        "forget.jsonl": forget,
        "retain.jsonl": [{"id": f"retain-{i:04d}", "text": world.filler_doc(rng)}
                         for i in range(n["retain_docs"])],
        "cot.jsonl": [{"id": f"cot-{i:04d}", "text": world.arith_doc(rng, s)}
                      for i, s in enumerate(cot_sums)],
        "eval_forget.jsonl": eval_mcq(world, "hazard", "eval-forget", rng),
        "eval_retain.jsonl": eval_mcq(world, "benign", "eval-retain", rng),
        "eval_arith.jsonl": [{"id": f"eval-arith-{i:04d}", "problem": world.arith_question(rng, s),
                              "answer": str(s.result)} for i, s in enumerate(world.arith_eval)],
    }
    if heldout:  # filtered after every draw: the rng stream, and so every other record, is unchanged
        held = set(heldout_agents(world))
        data["forget.jsonl"] = [r for r in forget if forget_agent(world, r) not in held]
        for r, f in zip(data["eval_forget.jsonl"], world.facts["hazard"], strict=True):
            r["group"] = "heldout" if f.name in held else "trained"
    return data


def forget_agent(world: World, record: dict[str, Any]) -> str:
    """The hazard agent a forget.jsonl record is about (its id's index is the fact's index)."""
    return world.facts["hazard"][int(record["id"].rsplit("-", 1)[1])].name


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
