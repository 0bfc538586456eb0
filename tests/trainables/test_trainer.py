"""The trainer end to end in this process: exact step-0 loss, learning, ZeRO stages agree, divergence."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.trainables.conftest import make_spec
from tests.trainables.naive import naive_loss
from trainables.data import build_streams
from trainables.delta import load_delta, merge_delta
from trainables.r2mu import control_vector
from trainables.trainer import train


@pytest.fixture(scope="module")
def zero0(tiny_dirs, tmp_path_factory):
    """20 steps, ZeRO 0: the reference run the other tests compare with."""
    spec = make_spec(tiny_dirs, tmp_path_factory.mktemp("zero0"), hparams={"steps": 20})
    return spec, train(spec)


def test_end_to_end(tiny_dirs, zero0):
    from transformers import AutoTokenizer

    spec, res = zero0
    assert res.status == "ok" and res.metrics["steps_done"] == 20 and len(res.history) == 20
    # step 0 (before any update) equals the naive objective on the same batches, to float tolerance
    hp = spec.hparams
    base = AutoModelForCausalLM.from_pretrained(spec.model.path).eval()
    tok = AutoTokenizer.from_pretrained(spec.model.path)
    streams = build_streams(spec.data, tok, 4, spec.train.seed, spec.traces_path,
                            ["forget", "retain", "unthink", "cot"])
    b = {s: st.batch(0) for s, st in streams.items()}
    control = control_vector(base.config.hidden_size, hp.steering_coeff, spec.train.seed)
    loss, terms = naive_loss(base, copy.deepcopy(base), {s: (x.input_ids, x.attention_mask, x.loss_mask)
                                                        for s, x in b.items()}, hp.layer, control,
                             hp.alpha, hp.beta, hp.gamma)
    first = res.history[0]
    assert first["loss"] == pytest.approx(float(loss), rel=1e-5)
    for s in terms:
        assert first[s] == pytest.approx(terms[s], rel=1e-5, abs=1e-9)
    assert res.history[-1]["forget"] < first["forget"]  # it learns
    # metrics, history beside the delta, and the delta merges into the base
    m = res.metrics
    assert m["steering_coeff"] == pytest.approx(4.0) and m["steering_rel"] == pytest.approx(4.0 / m["activation_scale"])
    lines = (spec.out_dir + "/checkpoint/history.jsonl")
    assert [json.loads(x) for x in open(lines)] == res.history
    tensors, meta = load_delta(res.delta_dir)
    assert sorted(tensors) == sorted(spec.model.param_names(hp.layer))
    merged = merge_delta(copy.deepcopy(base), res.delta_dir)
    diff = [n for n, p in merged.named_parameters() if not torch.equal(p, dict(base.named_parameters())[n])]
    assert sorted(diff) == sorted(tensors)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stages_give_the_same_losses(tiny_dirs, tmp_path, zero0, stage):
    spec = make_spec(tiny_dirs, tmp_path, hparams={"steps": 6}, train={"deepspeed": {"zero_stage": stage}})
    res = train(spec)
    for a, b in zip(res.history, zero0[1].history[:6], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    t0, t = load_delta(zero0[1].delta_dir)[0], load_delta(res.delta_dir)[0]
    assert t0.keys() == t.keys()


def test_compiled_layers_give_the_same_losses(tiny_dirs, tmp_path, zero0):
    spec = make_spec(tiny_dirs, tmp_path, hparams={"steps": 3}, train={"compile": True})
    res = train(spec)
    for a, b in zip(res.history, zero0[1].history[:3], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_relative_steering_and_given_scale(tiny_dirs, tmp_path, zero0):
    scale = zero0[1].metrics["activation_scale"]
    hp = {"steering_coeff": None, "steering_rel": 2.0, "steps": 1}
    res = train(make_spec(tiny_dirs, tmp_path / "a", hparams=hp))
    assert res.metrics["activation_scale"] == pytest.approx(scale)
    assert res.metrics["steering_coeff"] == pytest.approx(2.0 * scale)
    res = train(make_spec(tiny_dirs, tmp_path / "b", hparams=hp, activation_scale=10.0))
    assert res.metrics["steering_coeff"] == pytest.approx(20.0)


def test_divergence_stops_cleanly_without_a_delta(tiny_dirs, tmp_path):
    res = train(make_spec(tiny_dirs, tmp_path, hparams={"steering_coeff": 1e30, "steps": 5}))
    assert res.status == "diverged" and res.delta_dir is None and res.metrics["steps_done"] == 0
    ckpt = tmp_path / "checkpoint"  # the curves and the metrics, no delta (trainables/checkpoint.py)
    assert not (ckpt / "delta.safetensors").exists() and (ckpt / "history.jsonl").exists()
    assert json.loads((ckpt / "status.json").read_text())["status"] == "diverged"


def test_plain_rmu_needs_no_traces(tiny_dirs, tmp_path):
    res = train(make_spec(tiny_dirs, tmp_path, hparams={"beta": 0.0, "gamma": 0.0, "steps": 2},
                          traces_path=None))
    assert res.status == "ok" and "loss_unthink" not in res.metrics and res.history[0]["forget"] > 0


def test_a_process_trains_again_in_a_new_group(tiny_dirs, tmp_path, zero0):
    """Under `ray.train_in_trial` a reused Tune trial process trains each trial in a new one-process group (Ray's
    local controller makes one per fit and destroys it after): DeepSpeed must not reuse its clone of the old
    group's world (it raised "Group ... is not registered"). The second run's losses are the reference's."""
    import os

    import torch.distributed as dist

    from trainables.trainer import one_process_env

    spec, ref = zero0
    dist.destroy_process_group()
    os.environ.update(one_process_env())  # a new port: the group train() makes is a new one
    res = train(make_spec(tiny_dirs, tmp_path, hparams={"steps": 20}))
    assert res.status == "ok" and [h["loss"] for h in res.history] == [h["loss"] for h in ref.history]
