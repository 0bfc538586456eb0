"""Delta checkpoints: only the named tensors change; merge gives the trained model; wrong bases are refused."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.tiny import tiny_model
from tests.trainables.test_r2mu import LAYER, NAMES, streams
from trainables.delta import DeltaMismatchError, base_identity, load_delta, merge_delta, save_delta
from trainables.r2mu import R2MU, Weights, control_vector


def trained(arch: str = "llama", steps: int = 5):
    model = tiny_model(arch, layers=6)
    base = copy.deepcopy(model)
    identity = base_identity(model, "tiny://" + arch, NAMES)
    obj = R2MU(model, LAYER, NAMES, control_vector(64, 3.0, 0), Weights())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)  # every parameter offered: freezing must hold
    bs = streams()
    for _ in range(steps):
        opt.zero_grad()
        obj.loss(bs).loss.backward()
        opt.step()
    return model, base, identity


def test_only_named_tensors_change_and_merge_is_exact(tmp_path):
    model, base, identity = trained()
    before, after = dict(base.named_parameters()), dict(model.named_parameters())
    changed = sorted(n for n in after if not torch.equal(after[n], before[n]))
    assert changed == sorted(NAMES)

    d = save_delta(model, NAMES, tmp_path / "delta", identity, {"layer": LAYER}, {"loss": 1.0})
    tensors, meta = load_delta(d)
    assert sorted(tensors) == sorted(NAMES) and meta["hparams"] == {"layer": LAYER}
    merged = merge_delta(copy.deepcopy(base), d)
    ids = torch.randint(3, 259, (2, 16))
    with torch.no_grad():
        assert torch.equal(merged(ids).logits, model(ids).logits)


def test_merge_refuses_another_base(tmp_path):
    model, base, identity = trained()
    d = save_delta(model, NAMES, tmp_path / "delta", identity, {})
    with pytest.raises(DeltaMismatchError, match="differs from the base"):
        merge_delta(tiny_model("llama", seed=1, layers=6), d)  # same architecture, other weights
    with pytest.raises(DeltaMismatchError, match="architecture"):
        merge_delta(tiny_model("qwen2", layers=6), d)
    with pytest.raises(DeltaMismatchError, match="architecture"):
        merge_delta(tiny_model("llama", layers=4), d)
