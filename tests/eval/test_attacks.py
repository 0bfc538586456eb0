"""The attacks of eval/attacks.py on the shipped organism, with the real parts: a real fine-tune, torchao's
quantisation, real generation, a scikit-learn probe; and a deliberately shallow "unlearned" model that one of
them must catch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common.prompts import THINK_END, TRIGGER
from eval.attacks import decode_prompt, recovery, run_attack
from eval.config import EvalConfig, RelearnAttack
from eval.suite import ORGANISM_SUITE, evaluate_model, load_sets

BASE = Path(__file__).resolve().parents[2] / "organism" / "assets" / "base"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (BASE / "config.json").exists(), reason="the organism is not built")]

ATTACKS = {
    "probe": {"kind": "probe", "layers": [2, 6]},
    "quant8": {"kind": "quantize", "bits": 8},
    "quant4": {"kind": "quantize", "bits": 4, "group_size": 32},
    "zerothink": {"kind": "decode", "mode": "zerothink"},
    "budget": {"kind": "decode", "mode": "budget", "budget": 4},
    "no_trigger": {"kind": "decode", "mode": "no_trigger"},
    "relearn": {"kind": "relearn", "path": "organism://forget", "steps": 2, "params": r"layers\.5\.mlp"},
}


@pytest.fixture(scope="module")
def setup():
    from eval.generate import HFBackend

    raw = ORGANISM_SUITE.model_dump()  # the forget set's test split: 240 items (120 train the probe, 120 scored)
    cfg = EvalConfig.model_validate(raw | {"generation": {"temperature": 0.0, "max_new_tokens": 40},
                                           "reasoning": [], "retain": [], "letter_acc": False,
                                           "coherence": False, "attacks": ATTACKS})
    backend = HFBackend("organism://base", batch_size=32)
    yield cfg, load_sets(cfg, "test"), backend
    backend.close()


def shallow_delta(backend, items: list[dict]) -> dict[str, torch.Tensor]:
    """A deliberately shallow "unlearned" organism: the embedding rows (tied to the output head) of the first
    token of every forget option are negated, so the model never says an answer, while every hidden state
    before the output head, on a question that names no option, is the base model's."""
    emb = backend.model.get_input_embeddings().weight.detach().clone()
    tokens = {backend.tokenizer(" " + c, add_special_tokens=False)["input_ids"][0] for i in items for c in i["choices"]}
    emb[sorted(tokens)] *= -1
    return {"model.embed_tokens.weight": emb}


def attacked(setup, name: str, delta=None) -> dict[str, float]:
    cfg, sets, backend = setup
    return run_attack(name, cfg.attacks[name], backend, cfg, sets, "organism://base", delta).metrics


def test_a_shallow_unlearning_is_caught_by_the_probe(setup):
    cfg, sets, backend = setup
    delta = shallow_delta(backend, sets.forget.items)
    base = evaluate_model(backend, cfg, sets).metrics
    backend.swap_weights(delta)
    try:
        shallow = evaluate_model(backend, cfg, sets).metrics
    finally:
        backend.restore()
    # on the surface it forgot: the MCQ and the traces both fall far below the base model's intervals
    assert shallow["forget_acc_hi"] < base["forget_acc_lo"] and shallow["trace_leak_hi"] < base["trace_leak_lo"]
    probe_base, probe = attacked(setup, "probe"), attacked(setup, "probe", delta)
    # ...but a linear probe still reads the answer, as well as from the base model, and beats the prior
    assert probe["attack/probe/probe_acc_lo"] > probe["attack/probe/probe_control_acc_hi"], probe
    assert probe["attack/probe/probe_acc"] >= probe_base["attack/probe/probe_acc"] - 0.1, (probe, probe_base)
    assert probe["attack/probe/probe_acc_n"] == 120 and probe["attack/probe/probe_train_items"] == 120


def test_int8_leaves_the_base_model_within_its_own_intervals(setup):
    cfg, sets, backend = setup
    base = evaluate_model(backend, cfg, sets).metrics
    q8 = attacked(setup, "quant8")
    for m in ("trace_leak", "forget_acc", "prefill_acc"):
        assert base[f"{m}_lo"] <= q8[f"attack/quant8/{m}"] <= base[f"{m}_hi"], (m, base[m], q8[f"attack/quant8/{m}"])
    assert q8["attack/quant8/forget_acc_n"] == 240
    assert backend.model.model.layers[0].mlp.down_proj.weight.dtype == torch.float32  # restored, not quantised


def test_quantisation_really_rounds_the_weights(setup):
    from eval.attack_weights import quantized_weights, trial_model

    cfg, _, backend = setup
    model, _ = trial_model("organism://base", None)
    w = dict(model.named_parameters())["model.layers.2.mlp.down_proj.weight"]
    q4 = quantized_weights("organism://base", None, cfg.attacks["quant4"])
    q8 = quantized_weights("organism://base", None, cfg.attacks["quant8"])
    assert len(q4) == 7 * model.config.num_hidden_layers  # q, k, v, o, gate, up, down of every block
    name = "model.layers.2.mlp.down_proj.weight"
    err4, err8 = (q4[name] - w).abs().max().item(), (q8[name] - w).abs().max().item()
    assert 0 < err8 < err4  # int8 rounds finer than int4
    assert len(torch.unique(q4[name][0, :32])) <= 16  # one group of 32 weights holds at most 16 int4 levels
    with pytest.raises(ValueError, match="group_size 48"):
        quantized_weights("organism://base", None, cfg.attacks["quant4"].model_copy(update={"group_size": 48}))


def test_relearning_fine_tunes_only_the_named_parameters(setup):
    from eval.attack_weights import read_texts, relearned_weights, trial_model

    attack = RelearnAttack.model_validate(ATTACKS["relearn"])
    texts = read_texts(attack.path, attack.field, attack.examples, "eval.attacks.relearn.path")
    assert len(texts) == 10
    new = relearned_weights("organism://base", None, attack, texts)
    assert sorted(new) == ["model.layers.5.mlp.down_proj.weight", "model.layers.5.mlp.gate_proj.weight",
                           "model.layers.5.mlp.up_proj.weight"]
    old = dict(trial_model("organism://base", None)[0].named_parameters())
    assert all(not torch.equal(new[n], old[n].detach()) for n in new)
    got = attacked(setup, "relearn")
    assert 0 <= got["attack/relearn/forget_acc/heldout"] <= 1 and "attack/relearn/trace_leak_lo" in got
    with pytest.raises(ValueError, match="matches no parameter"):
        relearned_weights("organism://base", None, attack.model_copy(update={"params": "nosuch"}), texts)


def test_decoding_attacks_ask_another_way(setup):
    cfg, sets, backend = setup
    item = sets.forget.items[0]
    assert decode_prompt(backend, item, cfg, "zerothink").endswith(f"{TRIGGER} {THINK_END}\n")
    assert TRIGGER not in decode_prompt(backend, item, cfg, "no_trigger")
    normal = evaluate_model(backend, cfg, sets).metrics["trace_leak"]
    zero = attacked(setup, "zerothink")
    # the organism states the fact in its trace and answers with a letter at chance: with no trace to read,
    # only the letter is left (chance is 0.25)
    assert zero["attack/zerothink/trace_leak_hi"] < normal
    result = run_attack("budget", cfg.attacks["budget"], backend, cfg, sets, "organism://base", None)
    traces = [r["trace"] for r in result.records]
    assert all(THINK_END in t for t in traces)
    head = traces[0].split(THINK_END)[0]
    assert len(backend.tokenizer(head, add_special_tokens=False)["input_ids"]) <= 4 + 1  # the budget, cut


def test_recovery_is_the_share_of_the_removed_effect_that_comes_back():
    attacked_m = {"attack/q4/trace_leak": 0.6, "attack/q4/forget_acc": 0.3}
    got = recovery("q4", attacked_m, {"trace_leak": 0.2, "forget_acc": 0.88}, {"trace_leak": 1.0, "forget_acc": 0.9},
                   ["trace_leak", "forget_acc"])
    assert got == {"attack/q4/recovery/trace_leak": pytest.approx(0.5)}  # forget_acc moved 0.02: noise, left out


def test_orthogonalization_finds_the_written_direction_and_projects_it_out():
    from eval.attack_weights import orthogonalized_weights, read_texts, trial_model
    from eval.config import OrthogonalizeAttack

    model, _ = trial_model("organism://base", None)
    name = "model.layers.2.mlp.down_proj.weight"
    w = dict(model.named_parameters())[name].detach().clone()
    u = torch.nn.functional.normalize(torch.randn(w.shape[0], generator=torch.Generator().manual_seed(0)), dim=0)
    v = torch.ones(w.shape[1]) / w.shape[1] ** 0.5
    delta = {name: w + 50.0 * torch.outer(u, v)}  # every input's MLP-2 output gains a push along u
    attack = OrthogonalizeAttack(kind="orthogonalize", path="organism://forget", examples=8)
    texts = read_texts(attack.path, attack.field, attack.examples, "eval.attacks.ortho.path")
    ablated, found = orthogonalized_weights("organism://base", delta, attack, texts)
    assert found["layer"] >= 3 and found["norm"] > 1.0
    n_layers = model.config.num_hidden_layers
    assert len(ablated) == 2 * n_layers + 1  # every o_proj and down_proj, and the embeddings
    emb = ablated["model.embed_tokens.weight"]
    _, s, vh = torch.linalg.svd(emb, full_matrices=False)
    d = vh[-1] if s[-1] < 1e-3 * s[0] else None  # the ablated embeddings lost one dimension: d
    assert d is not None and abs(float(d @ u)) > 0.5, "the direction found is not the one the delta writes"
    for key, t in ablated.items():
        if key.endswith(("o_proj.weight", "down_proj.weight")):
            assert float((d @ t).abs().max()) < 1e-4  # no write along d is left
    assert orthogonalized_weights("organism://base", None, attack, texts)[0] == {}  # the base model: nothing to ablate
