"""Evaluation throughput of the engine pool: the same deltas through 1 engine and through 2, on a local
two-node Ray cluster (one CPU per node, as tests/sweep/test_cluster.py builds it).

    .venv/bin/python bench/eval_pool.py [--deltas 8] [--steps 20] [--backend auto]

The deltas are real organism trials: R²MU trained for `--steps` steps at different layers and learning rates
(in a child process, before Ray starts). Each pool evaluates all of them with as many evaluations in flight as
there are deltas (the trials of a sweep would submit them as they finish training), on the organism demo's
selection split (search_spaces/organism.yaml). Printed: the seconds and deltas per minute of each pool, the
ratio, and whether every metric of every delta is the same from both pools (the engines are seeded: they must
be). Engine start-up is not counted (a sweep starts its engines once).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def space(backend: str) -> dict:
    import yaml

    raw = yaml.safe_load((ROOT / "search_spaces" / "organism.yaml").read_text())
    raw["eval"]["backend"] = backend
    return raw


def make_deltas(out: Path, n: int, steps: int) -> None:
    """In this (child) process: n trained deltas under out/<i>/checkpoint."""
    from eval.paths import resolve_uri
    from sweep.lifecycle import trial_spec
    from sweep.space.config import parse_space
    from trainables.config import Hyperparams
    from trainables.make_traces import make_traces
    from trainables.trainer import train

    raw = space("hf")
    raw["train"] |= {"steps": steps, "prefix_cache": {"enabled": False}}
    cfg = parse_space(raw, "organism.yaml (bench)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainables.data import read_rows

    base = resolve_uri(cfg.model.path)
    model, tok = AutoModelForCausalLM.from_pretrained(base).eval(), AutoTokenizer.from_pretrained(base)
    rows = read_rows(resolve_uri(cfg.data.forget.path), ["id", "text"], limit=16)
    traces = out / "traces.jsonl"
    traces.write_text("".join(json.dumps(r) + "\n" for r in make_traces(model, tok, rows, "text", k=48)))
    for i in range(n):
        hp = Hyperparams(layer=2 + i % 4, steering_coeff=8.0 + 4 * (i % 3), alpha=1.0, beta=1.0, gamma=1.0,
                         lr=[3e-4, 1e-3, 3e-3][i % 3], steps=steps)
        result = train(trial_spec(cfg, hp, str(traces), str(out / str(i)), None))
        assert result.status == "ok", result.metrics
        print(f"delta {i + 1}/{n}: layer {hp.layer}, lr {hp.lr:g}", file=sys.stderr, flush=True)


def evaluate_all(n_engines: int, deltas: list, raw: dict) -> tuple[float, list[dict]]:
    """Seconds to evaluate every delta through a pool of n engines, and each delta's metrics."""
    import ray

    from eval.paths import resolve_uri
    from sweep.engine_pool import EnginePool
    from sweep.space.config import parse_space

    raw = dict(raw, eval=dict(raw["eval"], engines=n_engines))
    cfg = parse_space(raw, "organism.yaml (bench)")
    pool = EnginePool.start(f"bench-{n_engines}", n_engines, resolve_uri(cfg.model.path), cfg)
    infos = pool.infos()
    print(f"{n_engines} engine(s): {infos[0]['backend']}, on {len({i['node'] for i in infos})} node(s), "
          f"started in {max(i['start_s'] for i in infos):.1f} s", flush=True)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(deltas)) as ex:
        outs = list(ex.map(lambda d: pool.evaluate(d)[0], deltas))
    seconds = time.perf_counter() - t0
    for e in pool.engines:
        ray.kill(e)
    # everything but the backend's throughput, which is a timing
    return seconds, [{k: v for k, v in o["metrics"].items() if k != "gen_tokens_per_s"} for o in outs]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--deltas", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--backend", default="auto", choices=["auto", "vllm", "hf"])
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with tempfile.TemporaryDirectory(prefix="r2mu-bench-pool-") as tmp:
        out = Path(tmp)
        env = os.environ | {"PYTHONPATH": str(ROOT)}
        subprocess.run([sys.executable, __file__, "--make-deltas", str(out), str(args.deltas), str(args.steps)],
                       check=True, env=env)
        from trainables import checkpoint

        deltas = [checkpoint.read(out / str(i) / checkpoint.DIRNAME).delta for i in range(args.deltas)]

        import ray
        from ray.cluster_utils import Cluster

        from tests.sweep.test_cluster import free_port

        os.environ["PYTHONPATH"] = str(ROOT)
        ports = lambda: {"dashboard_agent_listen_port": free_port(), "runtime_env_agent_port": free_port(),  # noqa: E731
                         "metrics_export_port": free_port()}
        cluster = Cluster(initialize_head=True, connect=False, head_node_args={
            "num_cpus": 1, "include_dashboard": False, "gcs_server_port": free_port(), **ports()})
        try:
            cluster.add_node(num_cpus=1, **ports())
            cluster.wait_for_nodes()
            ray.init(address=cluster.address)
            raw = space(args.backend)
            one_s, one = evaluate_all(1, deltas, raw)
            two_s, two = evaluate_all(2, deltas, raw)
        finally:
            ray.shutdown()
            cluster.shutdown()
    same = one == two
    print(f"\n{'engines':>8} {'seconds':>9} {'deltas/min':>11}")
    for n, s in ((1, one_s), (2, two_s)):
        print(f"{n:>8} {s:>9.1f} {60 * args.deltas / s:>11.2f}")
    print(f"throughput ratio (2 engines / 1): {one_s / two_s:.2f}x; metrics identical for every delta: {same}")
    if not same:
        for i, (a, b) in enumerate(zip(one, two, strict=True)):
            diff = {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)}
            if diff:
                print(f"  delta {i}: {diff}")
    return 0 if same else 1


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--make-deltas":
        make_deltas(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
        sys.exit(0)
    sys.exit(main())
