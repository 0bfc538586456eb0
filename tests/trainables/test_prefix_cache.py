"""The cross-trial prefix cache: a cached trial trains exactly as an uncached one, and the cache is safe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.trainables.conftest import make_spec
from trainables.delta import load_delta
from trainables.prefix_cache import key_parts
from trainables.trainer import train

OTHER = {"steering_coeff": 6.0, "alpha": 0.5, "lr": 3e-3, "steps": 8}  # same layer, other values


def cached(dirs, out: Path, cache: Path, max_gb: float = 1.0, train: dict | None = None, **over):
    pc = {"enabled": True, "dir": str(cache), "max_gb": max_gb}
    return make_spec(dirs, out, train={"prefix_cache": pc, **(train or {})}, **over)


def steps_in(cache: Path) -> list[Path]:
    return sorted(cache.rglob("step-*.safetensors"))


def assert_same_training(a, b) -> None:
    assert [r["loss"] for r in a.history] == [r["loss"] for r in b.history]  # bit for bit
    ta, tb = load_delta(a.delta_dir)[0], load_delta(b.delta_dir)[0]
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


@pytest.fixture(scope="module")
def runs(tiny_dirs, tmp_path_factory):
    """Trial A (6 steps) fills an empty cache; trial B (other values, 8 steps) reads 6 steps and adds 2."""
    root = tmp_path_factory.mktemp("pc")
    cache = root / "cache"
    a = train(cached(tiny_dirs, root / "a", cache, hparams={"steps": 6}))
    after_a = [p.name for p in steps_in(cache)]
    b = train(cached(tiny_dirs, root / "b", cache, hparams=OTHER))
    return dict(root=root, cache=cache, a=a, b=b, after_a=after_a)


def test_first_trial_writes_every_step_and_trains_as_uncached(tiny_dirs, runs):
    a = runs["a"]
    assert runs["after_a"] == [f"step-{i:06d}.safetensors" for i in range(6)]
    assert (a.metrics["prefix_cache_hits"], a.metrics["prefix_cache_written"]) == (0, 6)
    assert_same_training(a, train(make_spec(tiny_dirs, runs["root"] / "a0", hparams={"steps": 6})))


def test_next_trial_at_the_layer_reads_the_cache_and_trains_as_uncached(tiny_dirs, runs):
    b = runs["b"]
    assert (b.metrics["prefix_cache_hits"], b.metrics["prefix_cache_written"]) == (6, 2)
    assert len(steps_in(runs["cache"])) == 8 and len(list(runs["cache"].iterdir())) == 1  # one key
    assert_same_training(b, train(make_spec(tiny_dirs, runs["root"] / "b0", hparams=OTHER)))


def test_key_ignores_the_searched_values_but_not_what_the_tensors_depend_on(tiny_dirs, tmp_path):
    def key(**over) -> dict:
        return key_parts(make_spec(tiny_dirs, tmp_path, **over), 0, 1, ["forget", "retain"], torch.device("cpu"), 0.75)

    assert key() == key(hparams=OTHER)
    assert key() != key(hparams={"layer": 4})
    assert key() != key(train={"seed": 8})
    assert key() != key(data={"max_len": 40})
    assert key() == key(data={"skip_first_position": True})  # a loss mask: not in the cached tensors
    assert key_parts(make_spec(tiny_dirs, tmp_path), 1, 2, ["forget"], torch.device("cpu"), 0.75) != \
        key_parts(make_spec(tiny_dirs, tmp_path), 0, 2, ["forget"], torch.device("cpu"), 0.75)


def test_a_trial_that_skips_the_first_position_reads_a_cache_written_without(tiny_dirs, runs, tmp_path):
    """data.skip_first_position shares the key (test above); the cached steps still train it exactly."""
    skip = {"data": {"skip_first_position": True}}
    c = train(cached(tiny_dirs, tmp_path / "c", runs["cache"], hparams={"steps": 6}, **skip))
    assert (c.metrics["prefix_cache_hits"], c.metrics["prefix_cache_written"]) == (6, 0)
    plain = train(make_spec(tiny_dirs, tmp_path / "c0", hparams={"steps": 6}, **skip))
    assert_same_training(c, plain)
    assert [r["forget"] for r in plain.history] != [r["forget"] for r in runs["a"].history]


def test_a_damaged_step_is_recomputed_and_rewritten(tiny_dirs, tmp_path):
    cache = tmp_path / "cache"
    first = train(cached(tiny_dirs, tmp_path / "a", cache, hparams={"steps": 3}))
    bad = steps_in(cache)[1]
    bad.write_bytes(bad.read_bytes()[:100])  # a crash mid-write cannot do this (rename), a bad disk can
    again = train(cached(tiny_dirs, tmp_path / "b", cache, hparams={"steps": 3}))
    assert (again.metrics["prefix_cache_hits"], again.metrics["prefix_cache_written"]) == (2, 1)
    assert_same_training(first, again)
    assert train(cached(tiny_dirs, tmp_path / "c", cache, hparams={"steps": 3})).metrics["prefix_cache_hits"] == 3


def test_budget_evicts_the_least_recently_used_layer_then_stops_writing(tiny_dirs, tmp_path, capsys):
    cache = tmp_path / "cache"
    train(cached(tiny_dirs, tmp_path / "l3", cache, hparams={"steps": 4}))
    per_step = steps_in(cache)[0].stat().st_size
    budget = 6.5 * per_step / 2**30  # room for 6 steps: layer 4's 4 steps evict layer 3's
    res = train(cached(tiny_dirs, tmp_path / "l4", cache, budget, hparams={"layer": 4, "steps": 4}))
    assert res.metrics["prefix_cache_written"] == 4 and len(list(cache.iterdir())) == 1
    assert "evicted" in capsys.readouterr().out
    # 8 steps do not fit: the trial writes what fits (its own key is never evicted) and trains anyway
    res = train(cached(tiny_dirs, tmp_path / "l4b", cache, budget, hparams={"layer": 4, "steps": 8}))
    assert res.status == "ok" and res.metrics["prefix_cache_hits"] == 4
    assert res.metrics["prefix_cache_written"] == 2 and len(steps_in(cache)) == 6
    assert "is full" in capsys.readouterr().out


def test_zero3_reads_the_cache_and_trains_the_same(tiny_dirs, runs):
    """Under ZeRO-3 the updated tensors are partitioned outside the gather; the cached part never needs them."""
    res = train(cached(tiny_dirs, runs["root"] / "z3", runs["cache"], hparams={"steps": 3},
                       train={"deepspeed": {"zero_stage": 3}}))
    assert res.metrics["prefix_cache_hits"] == 3
    for a, b in zip(res.history, runs["a"].history[:3], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)


def test_listing_names_each_layer_and_its_size(runs, capsys):
    from trainables.prefix_cache import main

    assert main([str(runs["cache"])]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith(next(runs["cache"].iterdir()).name))
    assert row.split()[1:3] == ["3", "8"]  # layer 3, 8 steps cached (trials a and b)
    assert "total" in out


def test_temp_files_of_a_killed_trial_are_cleaned_up(runs):
    import os
    import time

    from trainables.prefix_cache import STALE_TMP_S, PrefixCache

    key_dir = next(d for d in runs["cache"].iterdir() if d.is_dir())
    stale, fresh = key_dir / "step-000099.tmp123", key_dir / "step-000098.tmp456"
    for f in (stale, fresh):
        f.write_bytes(b"half a step")
    old = time.time() - STALE_TMP_S - 60
    os.utime(stale, (old, old))
    parts = json.loads((key_dir / "key.json").read_text())
    PrefixCache(runs["cache"], parts, torch.device("cpu"), 1.0).close()
    assert not stale.exists() and fresh.exists()  # a live writer's temp file is left alone
    fresh.unlink()


def test_a_hub_id_is_keyed_by_the_snapshot_it_loads(tmp_path, monkeypatch):
    """On a cluster the model is a hub id: a new revision in the HF cache must not reuse the old prefixes."""
    from trainables.prefix_cache import stamp

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--org--reasoner"
    for rev in ("a" * 40, "b" * 40):
        (repo / "snapshots" / rev).mkdir(parents=True)
        (repo / "snapshots" / rev / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    first = stamp("org/reasoner")
    assert first[0] == "a" * 40 and stamp("org/reasoner") == first
    (repo / "refs" / "main").write_text("b" * 40)
    assert stamp("org/reasoner")[0] == "b" * 40
    assert stamp("org/not-downloaded") == "org/not-downloaded"


def test_an_unusable_cache_directory_only_costs_the_cache(tiny_dirs, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    res = train(cached(tiny_dirs, tmp_path / "out", blocker / "cache", hparams={"steps": 2}))
    assert res.status == "ok" and "prefix_cache_hits" not in res.metrics
    assert "is not usable" in capsys.readouterr().out
