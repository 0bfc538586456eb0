"""Metrics and the transformers backend on a tiny random Llama (cases whose answer is known by construction)."""

import json

import pytest
import torch

from eval.config import TRIGGER, GenerationConfig
from eval.generate import HFBackend, greedy
from eval.metrics import mcq_accuracy, prefill_accuracy, reason_accuracy
from eval.prompts import content_prompt, generation_prompt, letter_prompt
from eval.traces import write_trace_cache
from tests.eval.conftest import MCQ_ITEMS, REASON_ITEMS
from tests.tiny import byte_tokenizer, tiny_model


def manual_loglik(model, tok, prompt: str, cont: str) -> float:
    ids = tok(prompt + cont)["input_ids"]
    n_ctx = len(tok(prompt)["input_ids"])
    with torch.no_grad():
        logp = model(torch.tensor([ids], device=model.device)).logits[0].float().log_softmax(-1)
    return sum(logp[i - 1, ids[i]].item() for i in range(n_ctx, len(ids)))


def test_loglik_matches_a_plain_forward_and_is_batch_invariant(hf):
    pairs = [("Question: a?\nAnswer:", " yes"), ("Question: longer question here?\nAnswer:", " no way"),
             ("x", " y z")]
    batched = hf.loglik(pairs)
    for (p, c), got in zip(pairs, batched, strict=True):
        assert got == pytest.approx(manual_loglik(hf.model, hf.tokenizer, p, c), abs=1e-4)
        assert got == pytest.approx(hf.loglik([(p, c)])[0], abs=1e-4)


def test_batched_left_padded_generation_equals_one_by_one(hf):
    prompts = [hf.render(b, TRIGGER) for b in ["hi", "a much longer question than the first one?", "mid size"]]
    together = hf.generate(prompts, greedy(12))
    alone = [hf.generate([p], greedy(12))[0] for p in prompts]
    assert [g.token_ids for g in together] == [g.token_ids for g in alone]
    assert all(g.n_tokens == len(g.token_ids) <= 12 for g in together)
    assert hf.tokens_per_s > 0


def test_sampling_is_seeded(hf):
    prompts = [hf.render("pick", TRIGGER)] * 2
    gen = GenerationConfig(temperature=0.6, top_p=0.95, max_new_tokens=10)
    a, b = hf.generate(prompts, gen, seed=1), hf.generate(prompts, gen, seed=1)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]


def test_generation_prompt_is_chat_template_plus_trigger(hf):
    assert hf.render("Q?", TRIGGER) == "<|user|>\nQ?\n<|assistant|>" + TRIGGER

    class NoTemplate:
        chat_template = None
    assert generation_prompt(NoTemplate(), "Q?", TRIGGER) == "Q?" + TRIGGER


def test_mcq_content_known_by_construction(hf):
    # Every wrong option extends the correct one, so its summed log-prob is strictly lower, for any model.
    items = [{"id": str(k), "question": f"Pick {k}", "answer": k,
              "choices": [w + " and more" * ((i - k) % 4) for i, w in enumerate(["ox"] * 4)]}
             for k in range(4)]
    for item in items:
        assert item["choices"][item["answer"]] == "ox"
    result = mcq_accuracy(hf, items, "content")
    assert result.value == 1.0
    assert [r["pred"] for r in result.records] == [0, 1, 2, 3]
    flipped = [{**item, "answer": (item["answer"] + 1) % 4} for item in items]
    assert mcq_accuracy(hf, flipped, "content").value == 0.0


def test_mcq_letter_agrees_with_a_plain_forward(hf):
    result = mcq_accuracy(hf, MCQ_ITEMS, "letter")
    for item, record in zip(MCQ_ITEMS, result.records, strict=True):
        prompt, conts = letter_prompt(item)
        manual = [manual_loglik(hf.model, hf.tokenizer, prompt, c) for c in conts]
        assert record["pred"] == max(range(4), key=manual.__getitem__)
        assert record["scores"] == pytest.approx(manual, abs=1e-4)
    assert content_prompt(MCQ_ITEMS[0])[0] == "Question: Which agent produces toxin vorb?\nAnswer:"


def test_prefill_accuracy(hf):
    result = prefill_accuracy(hf, MCQ_ITEMS)
    assert len(result.records) == 2                  # the item without a prefill is skipped
    assert result.records[0]["prompt"].endswith(TRIGGER + " The agent that produces vorb is")
    assert prefill_accuracy(hf, [MCQ_ITEMS[2]]).value is None


def test_reason_accuracy_known_by_construction(taught_dir):
    taught = HFBackend(taught_dir)                   # trained to answer REASON_ITEMS right
    result = reason_accuracy(taught, REASON_ITEMS, greedy(40))
    assert result.value == 1.0
    assert [r["extracted"] for r in result.records] == ["42", "5"]
    assert "</think>" in result.records[0]["trace"]
    wrong = [{**item, "answer": str(int(item["answer"]) + 1)} for item in REASON_ITEMS]
    assert reason_accuracy(taught, wrong, greedy(40)).value == 0.0


def test_swap_and_restore_hf(hf, tiny_dir):
    name = "model.layers.2.mlp.down_proj.weight"
    prompts = [hf.render(b, TRIGGER) for b in ["swap me", "and me"]]
    before = hf.generate(prompts, greedy(16))
    new = torch.randn_like(hf.model.get_parameter(name)) * 0.5
    fresh = tiny_model("llama", seed=0)
    fresh.get_parameter(name).data.copy_(new)
    reference = HFBackend(fresh, byte_tokenizer())
    hf.swap_weights({name: new})
    hf.swap_weights({name: new * 2})               # a second swap still restores the true original
    hf.swap_weights({name: new})
    assert [g.token_ids for g in hf.generate(prompts, greedy(16))] == \
           [g.token_ids for g in reference.generate(prompts, greedy(16))]
    hf.restore()
    assert [g.token_ids for g in hf.generate(prompts, greedy(16))] == [g.token_ids for g in before]
    with pytest.raises(KeyError):
        hf.swap_weights({"model.no_such.weight": new})
    with pytest.raises(ValueError):
        hf.swap_weights({name: new.T})
    hf.restore()


def test_write_trace_cache(hf, tmp_path):
    records = [{"id": "f1", "text": "Agent N produces which toxin?"}, {"id": "f2", "text": "Where is M?"}]
    path = write_trace_cache(hf, records, "text", TRIGGER, 12, tmp_path / "cache" / "traces.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["f1", "f2"]
    assert rows[0]["prompt"] == records[0]["text"]
    assert rows[0]["rendered"] == hf.render(records[0]["text"], TRIGGER)
    assert rows[0]["trace"] == hf.generate([rows[0]["rendered"]], greedy(12))[0].text
    mcq = write_trace_cache(hf, MCQ_ITEMS[:1], "question", TRIGGER, 4, tmp_path / "mcq.jsonl")
    assert json.loads(mcq.read_text())["prompt"].endswith("\nD. tusk")
