"""Bad input is refused with one clear message naming the field, before anything is written."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweep.run import main
from sweep.space.config import ConfigError, Constraint, load_space, parse_space

ROOT = Path(__file__).resolve().parents[2]


def dry_run(path: Path, capsys) -> tuple[int, str]:
    rc = main(["--space", str(path), "--dry-run"])
    out = capsys.readouterr()
    return rc, out.out + out.err


def test_valid_space_prints_plan_and_writes_nothing(space, write_space, tmp_path, capsys):
    path = write_space(space)
    before = sorted(p.name for p in tmp_path.iterdir())
    rc, out = dry_run(path, capsys)
    assert rc == 0, out
    assert "2 trials, 1 at a time" in out
    assert "LlamaForCausalLM, 6 layers" in out
    assert "steering_rel" in out and "loguniform" in out
    assert "forget 8 records" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no mlflow.db, no ray_results


def set_in(d: dict, dotted: str, value) -> dict:
    *parents, last = dotted.split(".")
    for k in parents:
        d = d[k]
    if value is DELETE:
        del d[last]
    else:
        d[last] = value
    return d


DELETE = object()

# (what to change, new value, the field the message must name, a word the message must contain)
BAD = [
    ("search.spaec", {}, "search.spaec", "accepted: algorithm"),
    ("train.steps", "many", "train.steps", "integer"),
    ("search.space", {}, "search.space", "empty"),
    ("search.space.layer", {"int": [5, 2]}, "search.space.layer.int", "low 5"),
    ("search.space.lr", {"loguniform": [0, 1e-3]}, "search.space.lr.loguniform", "> 0"),
    ("search.space.alpha", {"loguniform": [-1, 3]}, "search.space.alpha.loguniform", ">= 0"),
    ("search.objectives.trace_leak", "minimize", "search.objectives.trace_leak", "'min' or 'max'"),
    ("search.constraints.retain_acc", "at least 0.8", "search.constraints.retain_acc", "cannot parse"),
    ("search.num_samples", 0, "search.num_samples", "greater than or equal to 1"),
    ("search.max_concurrent", 0, "search.max_concurrent", "greater than or equal to 1"),
    ("search.space.layer", {"int": [2, 9]}, "search.space.layer", "has 6 layers"),
    ("search.space.layer", {"int": [1, 3]}, "search.space.layer", "layers_below=2"),
    ("model.update.param", "mlp.down.weight", "model.update.param", "down_proj"),
    ("model.path", "/nonexistent/model", "model.path", "not a directory"),
    ("search.space.gamma", {"normal": [0, 1]}, "search.space.gamma", "loguniform"),
    ("search.objectives.leak", "min", "search.objectives.leak", "accepted: trace_leak"),
    ("search.space.steering_coeff", 6.5, "search.space", "exactly one of steering_coeff"),
    ("model.update.parm", "x", "model.update.parm", "accepted: layers_below, param"),
    ("ray.address", "auto", "ray.storage_path", "shared storage"),
    ("mlflow.tracking_uri", "sqlite:////nonexistent/dir/mlflow.db", "mlflow.tracking_uri", "does not exist"),
    ("eval.forget.set", "wmdp-biology", "eval.forget.set", "accepted: organism-forget"),
    ("eval.forget.set", "gsm8k", "eval.forget.set", "reasoning set"),
    ("eval.forget.path", "/nonexistent/wmdp.jsonl", "eval.forget.path", "no such file"),
    ("data.skip_first_position", "maybe", "data.skip_first_position", "boolean"),
    ("eval.attacks", {"q4": {"kind": "quantize", "bits": 5}}, "eval.attacks.q4.bits", "4 or 8"),
    ("eval.attacks", {"q4": {"kind": "quantize", "bits": 4, "grp": 2}}, "eval.attacks.q4.grp",
     "accepted: kind, bits, group_size"),
    ("eval.attacks", {"q4": {"kind": "quantise", "bits": 4}}, "eval.attacks.q4", "'relearn', 'quantize'"),
    ("eval.attacks", {"Q4": {"kind": "quantize", "bits": 4}}, "eval.attacks", "lower-case"),
    ("eval.attacks", {"r": {"kind": "relearn", "path": "/nonexistent/r.jsonl"}}, "eval.attacks.r.path",
     "no such file"),
    ("eval.attacks", {"p": {"kind": "probe", "layers": [2, 9]}}, "eval.attacks.p.layers", "hidden states 0..6"),
    ("eval.attacks", {"q4": {"kind": "quantize", "bits": 4, "group_size": 48}}, "eval.attacks.q4.group_size",
     "does not divide the input width"),
    ("eval.attacks", {"r": {"kind": "relearn", "path": "organism://forget", "params": "mlp("}},
     "eval.attacks.r.params", "not a regular expression"),
    ("search.constraints.attack/q4/trace_leak", "<= 0.3", "search.constraints.attack/q4/trace_leak",
     "names no attack of eval.attacks"),
]


@pytest.mark.parametrize("dotted,value,field,word", BAD, ids=[b[0] + "=" + repr(b[1])[:20] for b in BAD])
def test_bad_field_is_named(space, write_space, tmp_path, capsys, dotted, value, field, word):
    set_in(space, dotted, value)
    before = sorted(p.name for p in tmp_path.iterdir())
    rc, out = dry_run(write_space(space), capsys)
    assert rc == 2
    assert f"{field}:" in out, out
    assert word in out, out
    assert "Traceback" not in out
    after = sorted(p.name for p in tmp_path.iterdir())
    assert after == sorted(before + ["space.yaml"]) or after == before


@pytest.mark.parametrize("stream,content,field,word", [
    ("forget", None, "path", "not found"),
    ("forget", "", "path", "empty"),
    ("retain", '{"id": "1", "body": "x"}\n', "field", "no field 'text'"),
])
def test_bad_data_file_is_named(space, write_space, capsys, stream, content, field, word):
    path = Path(space["data"][stream]["path"])
    if content is None:
        path.unlink()
    else:
        path.write_text(content)
    rc, out = dry_run(write_space(space), capsys)
    assert rc == 2
    assert f"data.{stream}.{field}:" in out, out
    assert word in out.lower(), out


def test_constraint_forms():
    assert Constraint.parse(">= 0.8").satisfied(0.8)
    assert not Constraint.parse("> 0.8").satisfied(0.8)
    off = Constraint.parse(">= baseline - 0.05")
    assert off.satisfied(0.86, baseline=0.9) and not off.satisfied(0.84, baseline=0.9)
    ratio = Constraint.parse(">= 0.95 * baseline")
    assert ratio.threshold(0.8) == pytest.approx(0.76)
    with pytest.raises(ValueError):
        off.threshold(None)


def test_hyperparams_resolve_fixed_and_searched(space):
    space["search"]["space"]["alpha"] = 3.0
    cfg = parse_space(space)
    hp = cfg.hyperparams({"layer": 4, "steering_rel": 1.5, "lr": 2e-4})
    assert (hp.layer, hp.alpha, hp.steering_rel, hp.steps) == (4, 3.0, 1.5, 4)
    with pytest.raises(ValueError, match="steering_rel"):
        cfg.hyperparams({"layer": 4, "lr": 2e-4})


def test_skip_first_position_flows_from_the_space_file_to_the_trainer(space, write_space, tmp_path):
    """Off by default; on from the file or from --set, it reaches the TrialSpec that Ray Train receives."""
    from sweep.lifecycle import trial_spec
    from sweep.space.overrides import load_with_overrides
    from trainables.config import TrialSpec

    assert parse_space(space).data.skip_first_position is False
    path = write_space(space)
    cfg = load_with_overrides(str(path), sets=["data.skip_first_position=true"])
    space["data"]["skip_first_position"] = True
    assert load_space(write_space(space, "on.yaml")) == cfg
    hp = cfg.hyperparams({"layer": 3, "steering_rel": 1.0, "lr": 1e-4})
    spec = trial_spec(cfg, hp, None, str(tmp_path / "out"), 2.0)
    assert TrialSpec.model_validate(spec.model_dump()).data.skip_first_position is True
    with pytest.raises(ConfigError, match=r"data\.skip_first_position: .*boolean"):
        load_with_overrides(str(path), sets=["data.skip_first_position=maybe"])


def test_train_in_trial_is_on_for_one_cpu_worker_unless_said_otherwise(space):
    """auto: Ray Train's local mode for one CPU worker, unless warm workers were asked for; true where it cannot
    hold (several workers, or warm workers it would not use) is refused naming the field and the fix."""
    from sweep.lifecycle import trial_resources

    cfg = parse_space(space)
    assert cfg.train_in_trial and trial_resources(cfg) == {"CPU": cfg.train.cpus_per_worker}
    space["ray"]["warm_workers"] = True
    assert not parse_space(space).train_in_trial and trial_resources(parse_space(space)) == {"CPU": 0.01}
    space["ray"]["train_in_trial"] = True
    with pytest.raises(ConfigError, match=r"ray\.train_in_trial: .*ray\.warm_workers: true.*set ray\.train_in_trial"):
        parse_space(space)
    space["ray"]["warm_workers"] = "auto"
    space["train"]["num_workers"] = 2
    with pytest.raises(ConfigError, match=r"ray\.train_in_trial: .*train\.num_workers is 2"):
        parse_space(space)
    space["ray"]["train_in_trial"] = "auto"
    assert not parse_space(space).train_in_trial  # two workers: Ray Train's own processes


def test_shipped_space_files_parse():
    for f in sorted((ROOT / "search_spaces").glob("*.yaml")):
        load_space(f)


def run_cli(*args: str, cwd: Path) -> tuple[int, str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "sweep.run", *args], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=60)
    return p.returncode, p.stdout + p.stderr, time.monotonic() - t0


@pytest.mark.parametrize("content,words", [
    (None, ["--space", "no such file"]),
    ("name: x\nmodel: [unclosed\n", ["invalid YAML", "line 3"]),
    ("- just\n- a list\n", ["YAML mapping"]),
])
def test_cli_refuses_without_traceback(tmp_path, content, words):
    path = tmp_path / "s.yaml"
    if content is not None:
        path.write_text(content)
    rc, out, secs = run_cli("--space", str(path), "--dry-run", cwd=tmp_path)
    assert rc == 2 and "Traceback" not in out, out
    assert all(w in out for w in words), out
    assert secs < 10
    assert sorted(p.name for p in tmp_path.iterdir()) == (["s.yaml"] if content is not None else [])


def test_cli_without_arguments_prints_usage(tmp_path):
    rc, out, _ = run_cli(cwd=tmp_path)
    assert rc == 2 and "usage:" in out and "Traceback" not in out


def test_config_error_lists_every_problem():
    with pytest.raises(ConfigError) as e:
        parse_space({"name": "x"})
    fields = [f for f, _ in e.value.problems]
    assert {"model", "data", "search", "eval"} <= set(fields)


def test_r2mu_space_dry_runs_on_a_local_model_of_the_same_architecture(tmp_path, capsys):
    """search_spaces/r2mu.yaml is for a GPU cluster; with its paths pointed at local stand-ins it checks out."""
    import json

    import yaml

    from tests.tiny import save_tiny

    raw = yaml.safe_load((ROOT / "search_spaces/r2mu.yaml").read_text())
    raw["model"]["path"] = str(save_tiny(tmp_path / "llama16", "llama", layers=16))
    for stream, field in (("forget", "text"), ("retain", "text"), ("cot", "solution")):
        f = tmp_path / f"{stream}.jsonl"
        f.write_text(json.dumps({"id": "0", field: "some text"}) + "\n")
        raw["data"][stream]["path"] = str(f)
    raw["mlflow"]["tracking_uri"] = f"sqlite:///{tmp_path}/mlflow.db"
    raw["search"]["storage"] = None  # the study beside it, not on the cluster's Postgres
    raw["ray"] = {"address": None, "storage_path": str(tmp_path / "ray_results")}
    path = tmp_path / "r2mu.yaml"
    path.write_text(yaml.safe_dump(raw))
    rc, out = dry_run(path, capsys)
    assert rc == 0, out
    assert "LlamaForCausalLM, 16 layers" in out and "bfloat16" in out and "ZeRO-0" in out
    # the prefix cache's disk need, bounded: 500 steps x batch 4 x (prefix of 512+512+612+150 tokens + frozen
    # targets of 512+150) x hidden x 2 bytes
    hidden = json.loads((Path(raw["model"]["path"]) / "config.json").read_text())["hidden_size"]
    gib = 500 * 4 * (512 + 512 + 612 + 150 + 512 + 150) * hidden * 2 / 2**30
    assert f"(<= 200 GiB; up to {gib:.2f} GiB per layer)" in out, out


def test_remote_storage_stays_a_uri_and_caches_stay_on_the_node(space, write_space, tmp_path, monkeypatch):
    from sweep.space.config import storage_uri
    from sweep.traces import cache_dir, prefix_cache_dir

    local = load_space(write_space(space))
    assert storage_uri(local, "x", "train") == str(Path(local.ray.storage_path).resolve() / "x" / "train")
    assert cache_dir(local) == Path(local.ray.storage_path).resolve() / "cache"
    assert prefix_cache_dir(local) == str(cache_dir(local) / "prefix")
    space["ray"] = {"address": "ray://head:10001", "storage_path": "s3://bucket/sweeps/"}
    space["mlflow"] = {"tracking_uri": "http://mlflow:5000"}
    space["search"]["storage"] = "postgresql://optuna@db:5432/optuna"  # a server MLflow needs a study store
    monkeypatch.setenv("R2MU_CACHE", str(tmp_path / "node"))
    remote = load_space(write_space(space))
    assert storage_uri(remote, "x", "train") == "s3://bucket/sweeps/x/train"  # not a local "s3:/..." directory
    assert cache_dir(remote) == tmp_path / "node" / remote.name
    assert prefix_cache_dir(remote) is None  # the trainer's node resolves its own default
    # an NFS path mounted on every node, as the error for a plain path suggests: accepted, used as a path
    space["ray"]["storage_path"] = f"file://{tmp_path}/nfs"
    nfs = load_space(write_space(space))
    assert storage_uri(nfs, "x") == str(tmp_path / "nfs" / "x") and cache_dir(nfs) == tmp_path / "nfs" / "cache"
    assert prefix_cache_dir(nfs) is None  # not on NFS: each node's own disk


def test_dry_run_reports_every_failed_check_at_once(space, write_space, capsys):
    """A bad model path and a missing data file: both named in one report (the overlap check, which needs the
    data, is skipped rather than reported twice)."""
    space["model"]["path"] = "/nonexistent/model"
    Path(space["data"]["retain"]["path"]).unlink()
    space["eval"]["forget"]["path"] = "/nonexistent/forget.jsonl"
    rc, out = dry_run(write_space(space), capsys)
    assert rc == 2 and "Traceback" not in out, out
    assert "model.path: '/nonexistent/model' is not a directory" in out, out
    assert "data.retain.path: file not found" in out and "eval.forget.path: no such file" in out, out
    assert out.count("\n  ") == 3, out  # one line per problem under the header


@pytest.mark.parametrize("space_file, command", [("smollm2", "make smollm2"), ("testbed", "make testbed")])
def test_missing_generated_assets_name_their_make_target(space_file, command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no assets/ here
    rc, out = dry_run(ROOT / f"search_spaces/{space_file}.yaml", capsys)
    assert rc == 2 and "Traceback" not in out, out
    for field in ("model.path", "data.forget.path", "eval.forget.path"):
        line = next(x for x in out.splitlines() if x.strip().startswith(f"{field}:"))
        assert f"run `{command}` first" in line, out
    assert list(tmp_path.iterdir()) == []


def test_set_overrides_a_dotted_path_validated_like_the_file(space, write_space, tmp_path, capsys):
    path = write_space(space)
    rc = main(["--space", str(path), "--dry-run", "--set", "train.steps=10", "--set", "search.space.layer=3",
               "--set", "search.space.lr={loguniform: [1e-5, 1e-3]}"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "steps           fixed       10 (train.steps)" in out
    assert "layer           fixed       3" in out and "lr              loguniform  [1e-05, 0.001]" in out
    for flag, words in (("train.nope=1", ["--set train.nope: unknown key 'nope' at train; accepted: steps, "
                                          "batch_size"]),
                        ("train.steps=many", ["train.steps:", "integer", "(got 'many')"]),
                        ("eval.retain.2.limit=5", ["--set eval.retain.2.limit: eval.retain is an empty list"]),
                        ("train.steps.x=1", ["train.steps is a value, not a section"]),
                        ("steps", ["write PATH=VALUE"])):
        assert main(["--space", str(path), "--dry-run", "--set", flag]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and all(w in err for w in words), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "space.yaml"]


def test_run_takes_mlflow_tracking_uri_where_the_space_leaves_the_default(space, write_space, tmp_path,
                                                                          monkeypatch, capsys):
    (tmp_path / "env").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/env/mlflow.db")
    explicit = write_space(space)  # the fixture names its own store: the file wins
    assert main(["--space", str(explicit), "--dry-run"]) == 0
    assert f"SQLite {tmp_path}/mlflow.db (will be created)" in capsys.readouterr().out
    space["mlflow"]["tracking_uri"] = "sqlite:///mlflow.db"  # the default: the environment names the store
    default = write_space(space, "default.yaml")
    assert main(["--space", str(default), "--dry-run"]) == 0
    assert f"SQLite {tmp_path}/env/mlflow.db (will be created)" in capsys.readouterr().out
    assert main(["--space", str(default), "--dry-run", "--set", f"mlflow.tracking_uri=sqlite:///{tmp_path}/s.db"]) == 0
    assert f"SQLite {tmp_path}/s.db (will be created)" in capsys.readouterr().out  # --set wins over both


def test_set_reaches_into_an_attack_by_its_kind():
    """`--set eval.attacks.NAME.FIELD=V`: the attack's own fields (its kind picks which), validated as the file."""
    from sweep.space.overrides import FlagError, load_with_overrides

    space = str(ROOT / "search_spaces" / "organism.yaml")
    cfg = load_with_overrides(space, sets=["eval.attacks.int4.group_size=32", "eval.attacks.relearn_forget.steps=5"])
    assert cfg.eval.attacks["int4"].group_size == 32 and cfg.eval.attacks["relearn_forget"].steps == 5
    with pytest.raises(FlagError, match="accepted: kind, bits, group_size"):
        load_with_overrides(space, sets=["eval.attacks.int4.steps=5"])  # a relearn field on a quantize attack


def test_scaled_layers_decide_where_the_activation_scale_is_measured(space):
    """Relative steering: every layer the space can pick, or one trial's layer; absolute: none."""
    cfg = parse_space(space)
    assert cfg.scaled_layers() == [2, 3, 4, 5]  # organism.yaml: layer {int: [2, 5]}, steering_rel searched
    assert cfg.scaled_layers(cfg.hyperparams({"layer": 4, "steering_rel": 1.0, "lr": 1e-3})) == [4]
    assert cfg.scaled_layers(cfg.hyperparams({"layer": 4, "steering_coeff": 6.5, "lr": 1e-3})) == []
    space["search"]["space"].pop("steering_rel")
    space["search"]["space"]["steering_coeff"] = {"loguniform": [1, 10]}
    assert parse_space(space).scaled_layers() == []
