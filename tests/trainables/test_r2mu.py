"""The objective: the fast step equals an independent naive implementation (two full models, a hook)."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.tiny import byte_tokenizer, tiny_model
from tests.trainables.naive import naive_loss
from trainables.config import DataConfig
from trainables.data import build_streams
from trainables.r2mu import R2MU, STREAMS, Batch, Weights, activation_scale, control_vector, hidden_at

LAYER, NAMES = 4, [f"model.layers.{i}.mlp.down_proj.weight" for i in (2, 3, 4)]


def padded(B: int, L: int, seed: int, loss_from: int = 0) -> Batch:
    """Random tokens, right-padded to different lengths (row 0 full length); loss from `loss_from` on."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 259, (B, L), generator=g)
    lens = torch.randint(loss_from + 1, L + 1, (B,), generator=g)
    lens[0] = L
    am = (torch.arange(L)[None] < lens[:, None]).long()
    lm = am.clone()
    lm[:, :loss_from] = 0
    return Batch(ids, am, lm)


def streams(loss_from: int = 0) -> dict[str, Batch]:
    # lengths 20/17/9/12: with pack_ratio 0.75 forget+retain share a batch, and cot+unthink another
    return {"forget": padded(3, 20, 1), "retain": padded(3, 17, 2), "unthink": padded(3, 9, 3, loss_from),
            "cot": padded(3, 12, 4)}


def setup(arch: str, w: Weights, pack_ratio: float = 0.75):
    model = tiny_model(arch, layers=6)
    frozen = copy.deepcopy(model)
    control = control_vector(model.config.hidden_size, 3.0, seed=0)
    obj = R2MU(model, LAYER, NAMES, control, w, pack_ratio)
    with torch.no_grad():  # move away from the base so the frozen and trained views differ
        g = torch.Generator().manual_seed(5)
        for p in obj.params.values():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model, frozen, obj, control


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("loss_from", [0, 4])
def test_loss_and_grads_equal_naive(arch, loss_from):
    w = Weights(alpha=1.4, beta=0.7, gamma=0.3)
    model, frozen, obj, control = setup(arch, w)
    bs = streams(loss_from)
    terms = obj.loss(bs)
    terms.loss.backward()
    fast_grads = {n: p.grad.clone() for n, p in obj.params.items()}
    model.zero_grad(set_to_none=True)

    ref, ref_terms = naive_loss(model, frozen, {k: (b.input_ids, b.attention_mask, b.loss_mask)
                                                for k, b in bs.items()}, LAYER, control, w.alpha, w.beta, w.gamma)
    ref.backward()
    assert float(terms.loss) == pytest.approx(float(ref), rel=1e-5)
    for s in ref_terms:
        assert terms.values[s] == pytest.approx(ref_terms[s], rel=1e-5, abs=1e-9)
    for n, p in obj.params.items():
        torch.testing.assert_close(fast_grads[n], p.grad, rtol=1e-4, atol=1e-4 * float(p.grad.abs().max()))
    assert all(p.grad is None for n, p in model.named_parameters() if n not in NAMES)


def test_packing_does_not_change_the_loss():
    w = Weights(1.4, 0.7, 0.3)
    losses = [float(setup("llama", w, ratio)[2].loss(streams()).loss) for ratio in (0.0, 0.75, 1.01)]
    assert losses == pytest.approx([losses[0]] * 3, rel=1e-6)


def test_padding_is_excluded_from_the_mean():
    w = Weights(1.4, 0.7, 0.3)
    obj = setup("qwen2", w)[2]
    bs = streams()
    before = obj.loss(bs)
    for b in bs.values():  # other tokens in the padded positions
        b.input_ids[b.attention_mask == 0] = 7
    after = obj.loss(bs)
    assert float(after.loss) == pytest.approx(float(before.loss), rel=1e-6)
    # extra padding columns change nothing either (the reference's mean over padding would shrink)
    wide = {k: Batch(*(torch.nn.functional.pad(t, (0, 5)) for t in (b.input_ids, b.attention_mask, b.loss_mask)))
            for k, b in bs.items()}
    assert float(obj.loss(wide).loss) == pytest.approx(float(before.loss), rel=1e-6)


def test_plain_rmu_skips_zero_weight_streams():
    obj = setup("llama", Weights(alpha=2.0, beta=0.0, gamma=0.0))[2]
    bs = streams()
    terms = obj.loss({k: bs[k] for k in ("forget", "retain")})
    assert terms.values["unthink"] is None and terms.values["cot"] is None
    assert float(terms.loss) == pytest.approx(terms.values["forget"] + 2.0 * terms.values["retain"], rel=1e-6)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_hidden_at_is_hf_hidden_states(arch):
    model, b = tiny_model(arch, layers=6), padded(2, 11, 9)
    with torch.no_grad():
        hs = model(input_ids=b.input_ids, attention_mask=b.attention_mask, output_hidden_states=True).hidden_states
    m = b.attention_mask.bool()
    for layer in (0, 3, 4):
        torch.testing.assert_close(hidden_at(model, b, layer)[m], hs[layer + 1][m], rtol=1e-5, atol=1e-5)
    # the last layer: HF's hidden_states[-1] has the final norm applied; h_l is the layer's raw output
    seen = []
    hook = model.model.layers[5].register_forward_hook(lambda mod, i, out: seen.append(out))
    with torch.no_grad():
        model(input_ids=b.input_ids, attention_mask=b.attention_mask)
    hook.remove()
    torch.testing.assert_close(hidden_at(model, b, 5)[m], seen[0][m], rtol=1e-5, atol=1e-5)


def test_activation_scale_is_median_token_norm():
    model, b = tiny_model("llama", layers=6), padded(3, 10, 2)
    with torch.no_grad():
        h = model(input_ids=b.input_ids, attention_mask=b.attention_mask, output_hidden_states=True).hidden_states[3]
    want = float(h.norm(dim=-1)[b.attention_mask.bool()].median())
    assert activation_scale(model, [b], 2) == pytest.approx(want, rel=1e-5)


def test_control_vector_is_seeded_normalised_and_local():
    state = torch.random.get_rng_state()
    a, b, c = control_vector(64, 6.5, 1), control_vector(64, 6.5, 1), control_vector(64, 6.5, 2)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.norm()) == pytest.approx(6.5) and bool((a >= 0).all())


def test_only_named_tensors_train():
    model, _, obj, _ = setup("qwen2", Weights())
    assert sorted(n for n, p in model.named_parameters() if p.requires_grad) == sorted(NAMES)
    with pytest.raises(ValueError, match="above layer"):
        R2MU(model, 2, NAMES, torch.zeros(64), Weights())


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_skip_first_position_equals_naive_without_position_0(tiny_dirs, arch):
    """data.skip_first_position: batches built by the data code, terms and grads equal the naive objective with
    position 0 left out of the forget and unthink masks only (the masks written here from the attention masks)."""
    data = DataConfig.model_validate({
        "forget": {"path": str(tiny_dirs["forget"])}, "retain": {"path": str(tiny_dirs["retain"])},
        "cot": {"path": str(tiny_dirs["cot"]), "max_tokens": 24}, "traces": {"max_new_tokens": 8},
        "max_len": 48, "skip_first_position": True})
    st = build_streams(data, byte_tokenizer(), 3, 0, str(tiny_dirs["traces"]), list(STREAMS))
    bs = {s: st[s].batch(0) for s in STREAMS}
    w = Weights(alpha=1.4, beta=0.7, gamma=0.3)
    model, frozen, obj, control = setup(arch, w)
    terms = obj.loss(bs)
    terms.loss.backward()
    fast_grads = {n: p.grad.clone() for n, p in obj.params.items()}
    model.zero_grad(set_to_none=True)

    def naive(skip: bool) -> tuple[torch.Tensor, dict[str, float]]:
        masks = {}
        for s, b in bs.items():
            lm = b.attention_mask.clone()
            if skip and s in ("forget", "unthink"):
                lm[:, 0] = 0
            masks[s] = (b.input_ids, b.attention_mask, lm)
        return naive_loss(model, frozen, masks, LAYER, control, w.alpha, w.beta, w.gamma)

    ref, ref_terms = naive(skip=True)
    ref.backward()
    assert float(terms.loss) == pytest.approx(float(ref), rel=1e-5)
    for s in STREAMS:
        assert terms.values[s] == pytest.approx(ref_terms[s], rel=1e-5, abs=1e-9)
    for n, p in obj.params.items():
        torch.testing.assert_close(fast_grads[n], p.grad, rtol=1e-4, atol=1e-4 * float(p.grad.abs().max()))
    with torch.no_grad():  # leaving position 0 out changes the two terms by more than the tolerance above
        full = naive(skip=False)[1]
    for s in ("forget", "unthink"):
        assert terms.values[s] != pytest.approx(full[s], rel=1e-5, abs=1e-9)
