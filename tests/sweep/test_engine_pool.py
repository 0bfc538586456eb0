"""The engine pool (sweep/engine_pool.py): how many engines, which one a trial gets, and where Ray puts them.

Placement is checked on a real two-node Ray cluster whose nodes declare two *logical* GPUs each: Ray hands
out GPU ids without CUDA, which is all it takes to see where engines and training workers land. The engines
are the real evaluator actors (the organism model, transformers backend)."""

from __future__ import annotations

import pytest
import yaml

from eval.paths import resolve_uri
from sweep.engine_pool import ENGINE_SHARE, Balancer, EnginePool, engine_count, engine_gpus, train_worker_gpus
from sweep.space.config import ConfigError, parse_space
from tests.sweep.test_cluster import free_port
from tests.sweep.test_sweep_e2e import ROOT, small_space


def config(tmp_path, use_gpu: bool, placement: str = "dedicated", engines="auto", concurrent: int = 1):
    raw = yaml.safe_load(small_space(tmp_path, "pool", num_samples=2, concurrent=concurrent).read_text())
    raw["train"]["use_gpu"] = use_gpu
    raw["eval"] |= {"engines": engines, "placement": placement}
    return parse_space(raw)


def test_engine_count(tmp_path):
    assert engine_count(config(tmp_path, use_gpu=False), 0) == 1  # auto on CPU: one
    assert engine_count(config(tmp_path, use_gpu=False, engines=3), 0) == 3  # CPU engines need no GPU
    # dedicated, auto: the GPUs the trials do not train on (8 - 4 trials x 1 worker)
    assert engine_count(config(tmp_path, use_gpu=True, concurrent=4), 8) == 4
    assert engine_count(config(tmp_path, use_gpu=True, concurrent=8), 8) == 1  # never none
    assert engine_count(config(tmp_path, use_gpu=True, placement="colocated", concurrent=4), 8) == 8  # one per card
    with pytest.raises(ConfigError, match=r"eval\.engines: 8 dedicated engines leave 0 of the cluster's 8 GPUs"):
        engine_count(config(tmp_path, use_gpu=True, engines=8), 8)
    for n in (3, 5):  # colocated is one engine per card: 3 on 4 cards would leave one where two workers fit
        with pytest.raises(ConfigError, match=rf"eval\.engines: colocated .* 4 GPU\(s\), eval.engines is {n}"):
            engine_count(config(tmp_path, use_gpu=True, placement="colocated", engines=n), 4)
    assert engine_count(config(tmp_path, use_gpu=True, placement="colocated", engines=4), 4) == 4
    with pytest.raises(ConfigError, match=r"eval\.placement: colocated .* set train\.use_gpu: true"):
        config(tmp_path, use_gpu=False, placement="colocated")
    with pytest.raises(ConfigError, match=r"eval\.engines"):
        config(tmp_path, use_gpu=False, engines=0)


def test_the_balancer_gives_the_least_loaded_engine_and_lets_idle_ones_take_turns():
    b = Balancer(3)
    assert [b.acquire() for _ in range(4)] == [0, 1, 2, 0]  # 0 now runs two evaluations
    b.release(1)
    assert b.acquire() == 1  # idle again
    b.release(0), b.release(0), b.release(1), b.release(2)
    assert b.load()["running"] == [0, 0, 0]
    assert b.acquire() == 2  # all idle: the one that served the fewest (2 served once, 0 and 1 twice)


@pytest.fixture
def gpu_nodes(monkeypatch):
    """Two nodes of one CPU and two logical GPUs each; this process is the driver."""
    import ray
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    ports = lambda: {"dashboard_agent_listen_port": free_port(), "runtime_env_agent_port": free_port(),  # noqa: E731
                     "metrics_export_port": free_port()}
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={
        "num_cpus": 1, "num_gpus": 2, "include_dashboard": False, "gcs_server_port": free_port(), **ports()})
    try:
        cluster.add_node(num_cpus=1, num_gpus=2, **ports())
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def where(actors) -> list[tuple[str, str]]:
    import ray

    return ray.get([a.where.remote() for a in actors])


class Probe:
    """Stands where a training worker of the same resource shape would."""

    def where(self) -> tuple[str, str]:
        import ray

        return ray.get_runtime_context().get_node_id(), ",".join(str(g) for g in ray.get_gpu_ids())


def test_engines_spread_over_nodes_and_cards_dedicated_and_colocated(tmp_path, gpu_nodes):
    import ray

    probe = ray.remote(Probe)
    # colocated, auto: one engine per card (4), each beside exactly one training worker's share
    cfg = config(tmp_path, use_gpu=True, placement="colocated", concurrent=4)
    n = engine_count(cfg, ray.cluster_resources()["GPU"])
    pool = EnginePool.start("colo", n, resolve_uri(cfg.model.path), cfg)
    infos = pool.infos()
    engines = sorted((i["node"], ",".join(i["gpu_ids"])) for i in infos)
    assert n == 4 and len(set(engines)) == 4 and len({node for node, _ in engines}) == 2, engines
    workers = [probe.options(num_cpus=0, num_gpus=train_worker_gpus(cfg)).remote() for _ in range(4)]
    assert sorted(where(workers)) == engines  # every card: one engine, one training worker
    out, lost, engine = pool.evaluate_delta(None)  # and the engines evaluate (the base model)
    assert lost == 0 and engine in range(4) and 0 <= out["metrics"]["trace_leak"] <= 1
    for a in pool.engines + workers:
        ray.kill(a)

    # dedicated: whole cards; auto leaves the training its max_concurrent x num_workers cards
    cfg = config(tmp_path, use_gpu=True, placement="dedicated", concurrent=2)
    n = engine_count(cfg, 4)
    pool = EnginePool.start("dedicated", n, resolve_uri(cfg.model.path), cfg)
    engines = sorted((i["node"], ",".join(i["gpu_ids"])) for i in pool.infos())
    assert n == 2 and engine_gpus(cfg) == 1.0 and len({node for node, _ in engines}) == 2  # spread
    workers = [probe.options(num_cpus=0, num_gpus=1).remote() for _ in range(2)]
    assert not set(where(workers)) & set(engines)  # the other two cards
    for a in pool.engines + workers:
        ray.kill(a)

    # why ENGINE_SHARE is over one half: Ray puts a fractional request on a card that has room, so two engines
    # asking for 0.3 each would share a card
    assert ENGINE_SHARE > 0.5
    small = [probe.options(num_cpus=0, num_gpus=0.3).remote() for _ in range(2)]
    assert len(set(where(small))) == 1
