"""The main job end to end: real Ray, Ray Train + DeepSpeed, Optuna, MLflow (SQLite), a real model.

One small sweep (3 trials, 2 at a time) over the organism's data and eval sets; then the Pareto tags, the
plot, the export of the knee, `sweep.single_trial` at the knee's values, and `--resume` after an interruption.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from eval.generate import vllm_available
from sweep.results.pareto import Point, dominates, feasible
from sweep.space.config import load_space

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def organism_or_tiny(tmp: Path) -> str:
    """The bundled organism when it is built, else a tiny random Llama."""
    if (ROOT / "organism/assets/base/config.json").exists():
        return "organism://base"
    from tests.tiny import save_tiny

    return str(save_tiny(tmp / "tiny", "llama", layers=4))


def small_space(tmp: Path, name: str, num_samples: int, concurrent: int) -> Path:
    space = {
        "name": name,
        "model": {"path": organism_or_tiny(tmp)},
        "data": {"forget": {"path": "organism://forget", "limit": 32},
                 "retain": {"path": "organism://retain", "limit": 32},
                 "cot": {"path": "organism://cot", "max_tokens": 48, "limit": 32},
                 "traces": {"max_new_tokens": 24, "limit": 16}, "max_len": 64},
        "train": {"steps": 6, "batch_size": 4, "cpus_per_worker": 0.9, "prefix_cache": {"enabled": True}},
        "search": {"num_samples": num_samples, "max_concurrent": concurrent, "algorithm": "random",
                   "objectives": {"trace_leak": "min", "forget_acc": "min", "reason_acc": "max"},
                   "constraints": {"retain_acc": ">= 0.0"},
                   "space": {"layer": {"int": [2, 3]}, "steering_rel": {"loguniform": [0.5, 4]},
                             "lr": {"loguniform": [1e-3, 1e-2]}}},
        "eval": {"backend": "hf", "forget": {"set": "organism-forget", "limit": 8, "test": 16},
                 "reasoning": [{"set": "organism-arith", "limit": 8, "test": 16}],
                 "retain": [{"set": "organism-retain", "limit": 8, "test": 16}],
                 "generation": {"temperature": 0.0, "max_new_tokens": 40}},
        # relative, as a user writes them: the sweep runs in `tmp`, Tune's trials in their own directories
        "mlflow": {"tracking_uri": "sqlite:///mlflow.db"},
        # warm workers on, as on a GPU cluster (auto leaves them off on CPU): the e2e test checks they are used
        "ray": {"storage_path": "ray_results", "num_cpus": 2, "warm_workers": True},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def clean_env() -> dict[str, str]:
    """This process's environment minus the torch.distributed rendezvous that earlier in-process trainer
    tests set (an inherited MASTER_PORT is still bound here: the child's process group could not listen)."""
    dist = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
    return {k: v for k, v in os.environ.items() if k not in dist} | {"PYTHONPATH": str(ROOT)}


def run(module: str, *args: str, cwd: Path, timeout: int = 420) -> subprocess.CompletedProcess:
    env = clean_env()
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def client_history(tmp: Path, run_id: str, metric: str) -> list:
    return MlflowClient(f"sqlite:///{tmp}/mlflow.db").get_metric_history(run_id, metric)


def runs_of(tmp: Path, experiment: str):
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id], max_results=1000)


# the attacks of eval/attacks.py, small: after the search on the test split, and one (zerothink) on every
# trial and the baseline as well, since a constraint names it
ATTACKS = {"quant8": {"kind": "quantize", "bits": 8}, "zerothink": {"kind": "decode", "mode": "zerothink"},
           "probe": {"kind": "probe", "layers": [1, 2]},
           "relearn": {"kind": "relearn", "path": "organism://retain", "steps": 2, "params": "mlp"}}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    space = small_space(tmp, "e2e", num_samples=2, concurrent=2)
    raw = yaml.safe_load(space.read_text())
    raw["eval"]["attacks"] = ATTACKS
    raw["search"]["constraints"]["attack/zerothink/trace_leak"] = "<= 1.0"
    space.write_text(yaml.safe_dump(raw))
    p = run("sweep.run", "--space", str(space), cwd=tmp, timeout=900)  # the attacks add a minute or two
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return tmp, space, p.stdout


def test_every_trial_is_logged_with_metrics_and_delta(sweep):
    tmp, space, out = sweep
    client, runs = runs_of(tmp, "e2e")
    roles = [r.data.tags.get("role") for r in runs]
    assert roles.count("sweep") == 1 and roles.count("baseline") == 1 and roles.count("trial") == 2
    assert all(r.info.status == "FINISHED" for r in runs)
    for r in runs:
        if r.data.tags["role"] != "trial":
            continue
        assert {"trace_leak", "forget_acc", "reason_acc", "retain_acc", "train/loss_forget", "trace_coherence",
                "retain_trace_acc", "train/rel/forget", "trace_leak_lo", "trace_leak_hi"} <= set(r.data.metrics)
        assert r.data.metrics["trace_leak_n"] == 8  # the selection split's items
        assert {"layer", "steering_rel", "lr", "alpha"} <= set(r.data.params)
        arts = {a.path for a in client.list_artifacts(r.info.run_id, "delta")}
        assert "delta/delta.safetensors" in arts or any(a.endswith(".safetensors") for a in arts), arts
        curve = client.get_metric_history(r.info.run_id, "loss/forget")
        assert sorted(m.step for m in curve) == list(range(6))  # one point per training step, sent once
        assert len({m.timestamp for m in curve}) > 1  # streamed by the trainer as each step ended
        m = r.data.metrics  # every step either read from the prefix cache or written to it
        assert m["train/prefix_cache_hits"] + m["train/prefix_cache_written"] == 6
        assert m["train/curve_points_unsent"] == 0
        assert m["train/preloaded"] == 1  # the job's setup hook imported the training stack as the worker started
        assert "system/cpu_utilization_percentage" in m  # MLflow sampled the node while it ran
    # Ray Train workers prestarted before the sweep began (warm_workers.py) trained a trial. Best effort: Ray
    # may hand a prestarted process to another actor of the same runtime env, and then a trial starts its
    # worker cold (seen here once in a full-suite run: prestarted 0 and 1), so one of the two is asked for
    trials = [r for r in runs if r.data.tags["role"] == "trial"]
    assert sum(r.data.metrics["train/prestarted"] for r in trials) >= 1, [r.data.metrics["train/prestarted"]
                                                                           for r in trials]
    assert "trial 2/2" in out and "Pareto front" in out
    assert out.count(" started (") == 2 and "ETA" in out  # a line as each trial starts; the sweep's ETA
    assert len(re.findall(r"\| cached [0-6]/6(  \| ETA \w+)?\n", out)) == 2  # what the cache gave, per trial
    # the deltas live in MLflow only: Ray Train's copies were removed once logged
    assert not list((tmp / "ray_results" / "e2e" / "train").rglob("*.safetensors"))
    parent = next(r for r in runs if r.data.tags["role"] == "sweep")
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"space.yaml", "config.json", "optuna_study.json", "pareto.png", "pareto.txt"} <= arts, arts


def test_baseline_and_front_are_evaluated_once_on_the_test_split(sweep):
    tmp, space, out = sweep
    _, runs = runs_of(tmp, "e2e")
    tested = [r for r in runs if "test/trace_leak" in r.data.metrics]
    front = [r for r in runs if r.data.tags.get("pareto") == "true"]
    baseline = next(r for r in runs if r.data.tags["role"] == "baseline")
    assert {r.info.run_id for r in tested} == {r.info.run_id for r in front} | {baseline.info.run_id}
    for r in tested:  # 16 test items per set, disjoint from the 8 selection items
        assert r.data.metrics["test/trace_leak_n"] == 16 and r.data.metrics["test/reason_acc_n"] == 16
        assert r.data.metrics["test/trace_leak_lo"] <= r.data.metrics["test/trace_leak"]
    assert "test split" in out and "indistinguishable from it" in out
    # the attacks ran once on the baseline and each front trial, on the same test items
    for r in tested:
        m = r.data.metrics
        assert m["test/attack/quant8/trace_leak_n"] == 16 and m["test/attack/zerothink/trace_leak_n"] == 16
        assert m["test/attack/probe/probe_acc_n"] == 8 and "test/attack/relearn/forget_acc/heldout" in m
        assert len(client_history(tmp, r.info.run_id, "test/attack/quant8/forget_acc")) == 1
    assert out.count("attacks ") >= len(tested) and "attack/quant8/trace_leak" in out  # in the test table
    # zerothink is constrained: every trial and the baseline were attacked on the selection split (8 items)
    for r in runs:
        if r.data.tags.get("role") in ("trial", "baseline"):
            assert r.data.metrics["attack/zerothink/trace_leak_n"] == 8, r.data.tags
    # any trial a user names: `sweep.results.final` evaluates it on the test split too (here one off the front, if any)
    others = [r for r in runs if r.data.tags.get("role") == "trial" and r.info.run_id not in
              {t.info.run_id for t in tested}]
    pick = (others or front)[0].info.run_id
    p = run("sweep.results.final", "--experiment", "e2e", "--runs", pick, "--force", "--no-baseline",
            "--tracking-uri", f"sqlite:///{tmp}/mlflow.db", cwd=tmp)
    assert p.returncode == 0, p.stderr[-2000:]
    client, runs = runs_of(tmp, "e2e")
    picked = next(r for r in runs if r.info.run_id == pick).data.metrics
    assert picked["test/trace_leak_n"] == 16 and "test/trace_coherence" in picked
    assert len(client.get_metric_history(baseline.info.run_id, "test/trace_leak")) == 1  # --no-baseline
    p = run("sweep.results.final", "--experiment", "e2e", "--runs", "nosuchrun",
            "--tracking-uri", f"sqlite:///{tmp}/mlflow.db", cwd=tmp)
    assert p.returncode == 2 and "nosuchrun" in p.stderr


def test_samples_prints_the_lowest_test_ids_before_and_after(sweep):
    """`sweep.results.samples`: the knee's traces and the base model's on the test split's lowest forget ids."""
    tmp, _, _ = sweep
    p = run("sweep.results.samples", "--experiment", "e2e", "--n", "2", "--tracking-uri", f"sqlite:///{tmp}/mlflow.db",
            cwd=tmp)
    assert p.returncode == 0, p.stderr[-2000:]
    client, runs = runs_of(tmp, "e2e")
    parent = next(r for r in runs if r.data.tags["role"] == "sweep")
    knee = next(r for r in runs if r.info.run_id == parent.data.tags["knee_run_id"])
    from sweep.results.samples import by_item, load_records
    ids = sorted(by_item(load_records(f"sqlite:///{tmp}/mlflow.db", knee.info.run_id)))
    assert len(ids) == 16  # the test split's forget items, one record each
    shown = re.findall(r"^\*\*(\S+)\*\*:", p.stdout, re.M)
    assert shown == ids[:2], (shown, ids[:2])
    assert p.stdout.count("| base |") == 2 and p.stdout.count(f"| {knee.info.run_name} |") == 2
    p = run("sweep.results.samples", "--experiment", "e2e", "--runs", "nosuchrun", "--tracking-uri",
            f"sqlite:///{tmp}/mlflow.db", cwd=tmp)
    assert p.returncode == 2 and "nosuchrun" in p.stderr


def test_pareto_tags_agree_with_dominance(sweep):
    tmp, space, _ = sweep
    cfg = load_space(space)
    _, runs = runs_of(tmp, "e2e")
    trials = [r for r in runs if r.data.tags["role"] == "trial"]
    baseline = next(r for r in runs if r.data.tags["role"] == "baseline").data.metrics
    pts = {r.info.run_id: Point(r.info.run_id, r.data.metrics, status=r.data.tags["status"]) for r in trials}
    tagged = {r.info.run_id for r in trials if r.data.tags.get("pareto") == "true"}
    assert tagged, "no trial tagged pareto=true"
    for rid, p in pts.items():
        ok = feasible(p, cfg.search.objectives, cfg.search.constraints, baseline)
        beaten = any(dominates(q, p, cfg.search.objectives) for q in pts.values()
                     if q is not p and feasible(q, cfg.search.objectives, cfg.search.constraints, baseline))
        assert (rid in tagged) == (ok and not beaten)
    png = tmp / "ray_results" / "e2e" / "pareto" / "pareto.png"
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_export_knee_and_trial_reproduce_the_metrics(sweep):
    tmp, space, _ = sweep
    client, runs = runs_of(tmp, "e2e")
    parent = next(r for r in runs if r.data.tags["role"] == "sweep")
    knee_id = client.get_run(parent.info.run_id).data.tags["knee_run_id"]
    knee = client.get_run(knee_id)
    p = run("sweep.results.export", "--experiment", "e2e", "--pick", "knee", "--out", str(tmp / "exported"),
            "--tracking-uri", f"sqlite:///{tmp}/mlflow.db", cwd=tmp)
    assert p.returncode == 0, p.stderr[-2000:]
    card = (tmp / "exported" / "README.md").read_text()  # the card reports the knee's test-split numbers
    assert "**test split**" in card and f"{knee.data.metrics['test/trace_leak']:.3f} [" in card
    # the exported directory is a plain HF model; evaluated alone it scores what the trial scored
    p = run("eval.suite", "--model", str(tmp / "exported"), "--suite", str(space), "--backend", "hf",
            "--split", "selection", "--out", str(tmp / "exported.json"), cwd=tmp)
    assert p.returncode == 0, p.stderr[-2000:]
    exported = json.loads((tmp / "exported.json").read_text())["metrics"]
    for m in ("trace_leak", "forget_acc", "reason_acc", "retain_acc"):
        assert exported[m] == pytest.approx(knee.data.metrics[m], abs=1e-9), m
    # refusing to overwrite
    p = run("sweep.results.export", "--experiment", "e2e", "--out", str(tmp / "exported"),
            "--tracking-uri", f"sqlite:///{tmp}/mlflow.db", cwd=tmp)
    assert p.returncode == 2 and "--force" in p.stderr
    # one trial by hand at the knee's values gives the same metrics
    sets = [f"--set={k}={knee.data.params[k]}" for k in ("layer", "steering_rel", "lr")]
    p = run("sweep.single_trial", "--space", str(space), *sets, cwd=tmp)
    assert p.returncode == 0, p.stderr[-2000:]
    alone = json.loads(p.stdout[p.stdout.index("{"):])
    for m in ("trace_leak", "forget_acc", "reason_acc", "retain_acc", "train/loss"):
        assert alone[m] == pytest.approx(knee.data.metrics[m], rel=1e-4, abs=1e-6), m
    # ... reading every step's prefix from the sweep's cache (ray_results/cache/prefix)
    assert alone["train/prefix_cache_hits"] == 6 and (tmp / "ray_results/cache/prefix").is_dir()


def test_resume_adds_only_missing_trials(tmp_path):
    """Ctrl-C (SIGINT) once a trial of three has finished, then `--resume` (the SIGKILLed driver's resume is
    in test_faults.py)."""
    space = small_space(tmp_path, "resume", num_samples=3, concurrent=1)
    raw = yaml.safe_load(space.read_text())
    raw["ray"]["warm_workers"] = "auto"  # the CPU default (train in the trial): 25-35 s a trial less than workers
    space.write_text(yaml.safe_dump(raw))
    env = clean_env() | {"PYTHONUNBUFFERED": "1"}
    log = (tmp_path / "sweep.log").open("w")  # a file, not a pipe nobody reads (a full pipe blocks the sweep)
    proc = subprocess.Popen([sys.executable, "-m", "sweep.run", "--space", str(space)], cwd=tmp_path, env=env,
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        first = None
        while time.monotonic() < deadline and first is None:  # wait for the first finished trial run
            time.sleep(2)
            # only once the sweep has created its store: two processes creating MLflow's tables at once collide
            if "mlflow: experiment" in (tmp_path / "sweep.log").read_text():
                try:
                    _, runs = runs_of(tmp_path, "resume")
                except Exception:  # the store is being created
                    continue
                done = [r for r in runs if r.data.tags.get("role") == "trial" and r.info.status == "FINISHED"]
                first = done[0].info.run_id if done else None
        assert first, "no trial finished in time:\n" + (tmp_path / "sweep.log").read_text()[-3000:]
        proc.send_signal(signal.SIGINT)  # Tune stops gracefully and saves its state
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    _, runs = runs_of(tmp_path, "resume")
    before = {r.info.run_id for r in runs if r.data.tags.get("role") == "trial" and r.info.status == "FINISHED"}
    assert 1 <= len(before) < 3
    # an interrupted search has no final front yet: no test-split evaluation before it finishes
    assert not any("test/trace_leak" in r.data.metrics for r in runs)
    p = run("sweep.run", "--space", str(space), "--resume", cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "trial 3/3" in p.stdout  # the counter includes the trials the first driver finished
    _, runs = runs_of(tmp_path, "resume")
    trials = [r for r in runs if r.data.tags.get("role") == "trial"]
    assert len([r for r in trials if r.info.status == "FINISHED"]) == 3
    assert any("test/trace_leak" in r.data.metrics for r in trials)  # the finished search's front, once
    assert before <= {r.info.run_id for r in trials}  # finished trials kept, not re-run
    assert len({r.data.tags["tune_trial_id"] for r in trials}) == len(trials)  # no duplicates
    assert sum(r.data.tags.get("role") == "sweep" for r in runs) == 1
    assert all(r.info.status != "RUNNING" for r in runs)


def test_a_crashed_worker_is_retried_and_a_diverged_trial_is_reported(tmp_path):
    """Two trials at once, a fault each. A training worker dies (as an OOM kill would): Tune retries the trial,
    MLflow keeps one run per trial. The worker here is the Tune trial's own process (`ray.train_in_trial`, the
    CPU default): its death is the trial's. The trial at lr 1e30 diverges: it is logged as diverged with the
    worst value of every objective and no delta, and the sweep goes on."""
    space = small_space(tmp_path, "faults", num_samples=2, concurrent=2)
    raw = yaml.safe_load(space.read_text())
    raw["ray"]["warm_workers"] = "auto"  # on CPU: off, so the trials train in their own processes
    raw["search"]["space"]["lr"] = {"choice": [1e-3, 1e30, 2e-3]}  # seed 42 draws 1e-3, then 1e30
    space.write_text(yaml.safe_dump(raw))
    marker = tmp_path / "crashed-once"
    env = clean_env() | {"R2MU_FAULT_CRASH_ONCE": str(marker)}
    p = subprocess.run([sys.executable, "-m", "sweep.run", "--space", str(space)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=420)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert marker.exists() and "crashed; Tune runs it again (search.max_failures=1)" in p.stderr
    # Tune's traceback of the crashed attempt is in the tune log, not on the console
    assert "Traceback" not in p.stdout + p.stderr
    (tune_log,) = (tmp_path / "ray_results" / "faults").glob("tune-*.log")
    assert "Trial task failed" in tune_log.read_text()
    client, runs = runs_of(tmp_path, "faults")
    trials = [r for r in runs if r.data.tags.get("role") == "trial"]
    assert len(trials) == 2 and all(r.info.status == "FINISHED" for r in trials)  # the crashed attempt's is gone
    assert len({r.data.tags["tune_trial_id"] for r in trials}) == 2
    assert all(r.data.metrics["train/in_trial"] == 1 for r in trials)
    assert "trial 2/2" in p.stdout and "diverged" in p.stdout
    by_lr = {float(r.data.params["lr"]): r for r in trials}
    assert sorted(by_lr) == [1e-3, 1e30], sorted(by_lr)
    bad, good = by_lr[1e30], by_lr[1e-3]
    assert bad.data.tags["status"] == "diverged" and bad.data.tags.get("pareto") != "true"
    assert bad.data.metrics["trace_leak"] == 1.0 and bad.data.metrics["reason_acc"] == 0.0  # worst values
    assert not client.list_artifacts(bad.info.run_id, "delta")  # no broken checkpoint
    assert good.data.tags["status"] == "ok" and client.list_artifacts(good.info.run_id, "delta")


@pytest.mark.skipif(not vllm_available(), reason="vllm does not import here")
def test_an_engine_that_cannot_start_is_a_clear_error(tmp_path):
    """vLLM refuses a KV cache too small for one sequence: the sweep names the field and the fix, trains
    nothing, and its MLflow run ends FAILED (not RUNNING forever)."""
    space = small_space(tmp_path, "engine", num_samples=1, concurrent=1)
    raw = yaml.safe_load(space.read_text())
    raw["eval"] |= {"backend": "vllm", "engine": {"kv_cache_memory_bytes": 4096}}
    space.write_text(yaml.safe_dump(raw))
    p = run("sweep.run", "--space", str(space), cwd=tmp_path)
    assert p.returncode == 2, p.stdout[-3000:] + p.stderr[-3000:]
    assert "eval.engine: the vllm backend could not start" in p.stderr
    assert "Fix: eval.engine.max_model_len" in p.stderr and "Traceback" not in p.stderr
    _, runs = runs_of(tmp_path, "engine")
    assert [(r.data.tags.get("role"), r.info.status) for r in runs] == [("sweep", "FAILED")]


def test_a_gp_sweep_proposes_from_its_fitted_processes(tmp_path):
    """search.algorithm: gp end to end: 5 trials one at a time, so the fifth is proposed by the Gaussian
    processes fitted to the first four (objectives and constraint) after its 4-trial random warm-up. Replaying
    that fit on the Optuna study the sweep stored (a fresh GPSampler, same seed, the four trials as they were
    told) proposes exactly the fifth trial's hyperparameters: the sweep's GP saw every objective and constraint."""
    import optuna

    space = small_space(tmp_path, "gp", num_samples=5, concurrent=1)
    raw = yaml.safe_load(space.read_text())
    raw["search"] |= {"algorithm": "gp", "constraints": {"retain_acc": ">= 0.25"}}
    raw["ray"]["warm_workers"] = False
    space.write_text(yaml.safe_dump(raw))
    p = run("sweep.run", "--space", str(space), "--final-eval", "none", cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    storage = f"sqlite:///{tmp_path}/optuna.db"
    (name,) = optuna.get_all_study_names(storage)
    trials = optuna.load_study(study_name=name, storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 5
    assert all(len(t.values) == 3 and "constraints:retain_acc" in t.system_attrs for t in trials)
    assert [k for k in trials[4].system_attrs if k.startswith("gp:")]  # Optuna marks a GP-proposed point
    cfg = load_space(space)
    directions = ["maximize" if mode == "max" else "minimize" for mode in cfg.search.objectives.values()]
    replay = optuna.create_study(directions=directions,
                                 sampler=optuna.samplers.GPSampler(seed=cfg.train.seed, n_startup_trials=4))
    replay.add_trials(trials[:4])
    proposed = replay.ask(fixed_distributions=trials[4].distributions).params
    assert proposed == pytest.approx(trials[4].params, rel=1e-9)
