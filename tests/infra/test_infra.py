"""The files under infra/, checked against the real validators that exist offline.

- infra/cluster.yaml: Ray's own cluster-config preparation and schema check (what `ray up` runs before it talks
  to AWS), bash syntax of its commands, its fit with search_spaces/r2mu.yaml, and (where botocore is installed)
  each node_config against EC2's RunInstances request model.
- infra/kuberay/*.yaml: the KubeRay v1.7.0 CRD schemas (tests/infra/schemas/), with the unknown-field check the
  API server's strict field validation does; the RayJob entrypoint against this project's CLI.
- infra/mlflow/docker-compose.yml: the Compose spec schema; the mlflow command through `mlflow server`'s parser.
- infra/local_cluster.sh: started for real (two raylets + an mlflow server), used, stopped, nothing left behind.

Nothing here launches cloud machines, Kubernetes objects or containers: none of those exists on this machine.
"""

from __future__ import annotations

import copy
import gzip
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
SCHEMAS = Path(__file__).parent / "schemas"


def load_yaml(rel: str) -> Any:
    return yaml.safe_load((INFRA / rel).read_text())


def r2mu_space():
    from sweep.space.config import load_space

    return load_space(ROOT / "search_spaces/r2mu.yaml")


def ray_version() -> str:
    import ray

    return ray.__version__


def help_flags(*cmd: str) -> set[str]:
    """The long options a command's --help lists (run for real, as a user would)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | {"PYTHONPATH": str(ROOT)}
    p = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", p.stdout))


# ---------------------------------------------------------------- infra/cluster.yaml (Ray cluster launcher)


@pytest.fixture(scope="module")
def cluster() -> dict:
    return load_yaml("cluster.yaml")


def ray_up_checks(cfg: dict) -> dict:
    """What `ray up` does to the file before any cloud call: fill Ray's AWS defaults, merge the setup commands,
    validate against ray/autoscaler/ray-schema.json and the cross-field rules."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    return prepared


def test_cluster_yaml_passes_rays_own_validation(cluster):
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cluster, schema)  # the file as written, before Ray fills in its defaults
    prepared = ray_up_checks(cluster)
    assert prepared["provider"]["type"] == "aws"
    assert prepared["available_node_types"][prepared["head_node_type"]]["max_workers"] == 0


def _typo_key(c):
    c["setup_command"] = c.pop("setup_commands")


def _typo_node_field(c):
    c["available_node_types"]["gpu.1x"]["resource"] = c["available_node_types"]["gpu.1x"].pop("resources")


def _string_gpu(c):
    c["available_node_types"]["gpu.1x"]["resources"]["GPU"] = "1"


def _unknown_head(c):
    c["head_node_type"] = "head.gpu"


def _too_few_workers(c):
    c["available_node_types"]["gpu.1x"]["min_workers"] = c["max_workers"] + 1


@pytest.mark.parametrize("break_it", [_typo_key, _typo_node_field, _string_gpu, _unknown_head, _too_few_workers])
def test_ray_validation_refuses_a_broken_cluster_yaml(cluster, break_it):
    """The check above is real: each of these mistakes in the same file is refused."""
    bad = copy.deepcopy(cluster)
    break_it(bad)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        ray_up_checks(bad)


def test_cluster_yaml_commands_are_valid_bash(cluster):
    keys = ["initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands"]
    commands = [c for k in keys for c in cluster.get(k, [])]
    assert len(commands) >= 6
    for c in commands:
        p = subprocess.run(["bash", "-n", "-c", c], capture_output=True, text=True)
        assert p.returncode == 0, f"{c!r}: {p.stderr}"


def test_cluster_yaml_installs_this_project_and_fits_the_r2mu_space(cluster):
    cfg = r2mu_space()
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    setup = " ".join(cluster["setup_commands"])
    m = re.search(r'pip install [^"]*-e "\$HOME/r2mu-sweep\[([\w,]+)\]"', setup)
    assert m, "setup_commands must pip install -e the checkout with an extra"
    assert set(m.group(1).split(",")) <= set(extras), f"unknown extra {m.group(1)}; pyproject has {set(extras)}"
    assert "gpu" in m.group(1).split(",")
    assert cluster["file_mounts"]["~/r2mu-sweep"] == "."  # the checkout the install above reads
    # the nodes' Ray must be the Ray that runs `ray up` and these tests
    pins = set(re.findall(r"ray\[[\w,]+\]==([\w.]+)", setup))
    assert pins == {ray_version()}
    # every node and client uses token auth (Ray 2.60 turns it on for a new head; joiners must say so)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert "RAY_AUTH_MODE=token" in cluster[key][-1]
    assert "--dashboard-host=127.0.0.1" in cluster["head_start_ray_commands"][-1]

    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0  # the driver only
    gpus = {n: t for n, t in types.items() if t["resources"].get("GPU", 0) > 0}
    assert gpus, "no GPU worker type"
    t = cfg.train
    for name, nt in gpus.items():  # one Ray Train worker of a trial fits on each node type
        assert nt["resources"]["GPU"] >= 1 and nt["resources"]["CPU"] >= t.cpus_per_worker, name
    # enough GPUs for max_concurrent trials at once plus the evaluator actor (one GPU for the whole sweep)
    need = cfg.search.max_concurrent * t.num_workers + 1
    most = max(min(nt.get("max_workers", cluster["max_workers"]), cluster["max_workers"]) * nt["resources"]["GPU"]
               for nt in gpus.values())
    assert most >= need, f"at most {most} GPUs, the sweep wants {need}"


def test_cluster_yaml_node_configs_are_valid_ec2_run_instances_requests(cluster):
    """Ray passes node_config to boto3's create_instances unchecked: check it against EC2's request model."""
    botocore_session = pytest.importorskip(
        "botocore.session", reason="botocore is not a dependency of this project (pip install boto3 to run this)")
    from botocore.validate import ParamValidator

    op = botocore_session.get_session().get_service_model("ec2").operation_model("RunInstances")
    instance_types = set(op.input_shape.members["InstanceType"].enum)
    for name, nt in cluster["available_node_types"].items():
        # Ray adds the counts and turns its own SubnetIds into SubnetId at launch
        params = {k: v for k, v in nt["node_config"].items() if k != "SubnetIds"} | {"MinCount": 1, "MaxCount": 1}
        report = ParamValidator().validate(params, op.input_shape)
        assert not report.has_errors(), f"{name}: {report.generate_report()}"
        assert nt["node_config"]["InstanceType"] in instance_types, name
    bad = {"InstanceTyp": "p5.4xlarge", "MinCount": 1, "MaxCount": 1}  # and the check is real
    assert ParamValidator().validate(bad, op.input_shape).has_errors()


# ---------------------------------------------------------------- infra/kuberay (RayCluster, RayJob)

OBJECT_META = {"name", "namespace", "labels", "annotations", "generateName"}


def crd(kind: str) -> dict:
    return json.loads(gzip.decompress((SCHEMAS / f"kuberay-v1.7.0-{kind}.json.gz").read_bytes()))


def unknown_fields(obj: Any, schema: dict, path: str = "") -> list[str]:
    """Fields the API server would reject under strict field validation (or silently prune without it): a key
    that is neither in `properties` nor allowed by `additionalProperties` / x-kubernetes-preserve-unknown-fields.
    Schema nodes with CEL rules are reported: they are not evaluated here."""
    out = []
    if "x-kubernetes-validations" in schema:
        out.append(f"{path}: carries CEL rules this offline check cannot evaluate")
    if isinstance(obj, dict):
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return out
        props, extra = schema.get("properties", {}), schema.get("additionalProperties")
        for k, v in obj.items():
            p = f"{path}/{k}"
            if path == "" and k == "metadata":  # ObjectMeta: the API server checks it, not the CRD
                out += [f"{p}/{m}: unknown field" for m in v if m not in OBJECT_META]
            elif k in props:
                out += unknown_fields(v, props[k], p)
            elif isinstance(extra, dict):
                out += unknown_fields(v, extra, p)
            elif extra is not True:
                out.append(f"{p}: unknown field")
    elif isinstance(obj, list) and "items" in schema:
        for i, v in enumerate(obj):
            out += unknown_fields(v, schema["items"], f"{path}/{i}")
    return out


def k8s_problems(manifest: dict, kind: str) -> list[str]:
    c = crd(kind)
    schema = c["openAPIV3Schema"]
    problems = []
    if manifest.get("apiVersion") != f"{c['group']}/{c['version']}" or manifest.get("kind") != c["kind"]:
        problems.append(f"apiVersion/kind {manifest.get('apiVersion')}/{manifest.get('kind')} is not "
                        f"{c['group']}/{c['version']}/{c['kind']}")
    # types, required fields, enums, quantity patterns (OpenAPI v3 ~ JSON Schema draft 4; x-* keywords ignored)
    problems += [f"/{'/'.join(map(str, e.absolute_path))}: {e.message}"
                 for e in jsonschema.Draft4Validator(schema).iter_errors(manifest)]
    problems += unknown_fields(manifest, schema)
    name = manifest.get("metadata", {}).get("name", "")
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", name):
        problems.append(f"metadata.name {name!r} is not a DNS-1123 label")
    return problems


@pytest.fixture(scope="module")
def raycluster() -> dict:
    return load_yaml("kuberay/raycluster.yaml")


@pytest.fixture(scope="module")
def rayjob() -> dict:
    return load_yaml("kuberay/rayjob.yaml")


def test_kuberay_manifests_match_the_crds(raycluster, rayjob):
    assert k8s_problems(raycluster, "rayclusters") == []
    assert k8s_problems(rayjob, "rayjobs") == []


def _head_typo(m):
    m["spec"]["headGroupSpec"]["rayStartParam"] = m["spec"]["headGroupSpec"].pop("rayStartParams")


def _replicas_string(m):
    m["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "5"


def _bad_quantity(m):
    m["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = "four"


def _container_typo(m):
    c = m["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    c["volumeMount"] = c.pop("volumeMounts")


def _auth_mode(m):
    m["spec"]["authOptions"]["mode"] = "tokens"


def _no_group_name(m):
    del m["spec"]["workerGroupSpecs"][0]["groupName"]


def _old_api(m):
    m["apiVersion"] = "ray.io/v1alpha1"


@pytest.mark.parametrize("break_it", [_head_typo, _replicas_string, _bad_quantity, _container_typo, _auth_mode,
                                      _no_group_name, _old_api])
def test_kuberay_check_refuses_a_broken_raycluster(raycluster, break_it):
    bad = copy.deepcopy(raycluster)
    break_it(bad)
    assert k8s_problems(bad, "rayclusters")


def test_kuberay_check_refuses_a_broken_rayjob(rayjob):
    bad = copy.deepcopy(rayjob)
    bad["spec"]["entryPoint"] = bad["spec"].pop("entrypoint")
    assert any("entryPoint: unknown field" in p for p in k8s_problems(bad, "rayjobs"))


def quantity(q: str | int) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|Ti)?", str(q))
    assert m, q
    scale = {None: 1, "m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}[m.group(2)]
    return float(m.group(1)) * scale


def test_kuberay_gpu_workers_fit_the_r2mu_space(raycluster, rayjob):
    cfg = r2mu_space()
    spec = raycluster["spec"]
    assert spec["rayVersion"] == ray_version()
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"].get("limits", {})
    gpu_groups = [g for g in spec["workerGroupSpecs"]
                  if quantity(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0))]
    assert gpu_groups, "no worker group requests nvidia.com/gpu"
    most = 0.0
    for g in gpu_groups:
        res = g["template"]["spec"]["containers"][0]["resources"]
        gpus = quantity(res["limits"]["nvidia.com/gpu"])
        assert quantity(res["requests"]["nvidia.com/gpu"]) == gpus  # extended resources: requests == limits
        assert gpus >= 1 and quantity(res["limits"]["cpu"]) >= cfg.train.cpus_per_worker
        most = max(most, g["maxReplicas"] * gpus)
        assert g["template"]["spec"]["containers"][0]["image"] == head["image"]  # one image, one Ray version
    assert most >= cfg.search.max_concurrent * cfg.train.num_workers + 1  # trials plus the evaluator
    assert rayjob["spec"]["clusterSelector"]["ray.io/cluster"] == raycluster["metadata"]["name"]


def test_rayjob_entrypoint_is_a_command_our_cli_accepts(rayjob):
    from sweep.run import apply_overrides, build_parser

    argv = shlex.split(rayjob["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "sweep.run"], argv
    flags = {a.split("=")[0] for a in argv[3:] if a.startswith("--")}
    listed = help_flags(sys.executable, "-m", "sweep.run")
    assert flags and flags <= listed, f"{flags - listed} not in `python -m sweep.run --help`"
    args = build_parser().parse_args(argv[3:])
    # the image has the checkout at the Dockerfile's WORKDIR; the same file is here at the repo root
    dockerfile = (INFRA / "kuberay/Dockerfile").read_text()
    workdir = re.search(r"^WORKDIR (\S+)", dockerfile, re.M).group(1)
    assert args.space.startswith(workdir + "/")
    local = ROOT / args.space.removeprefix(workdir + "/")
    from sweep.space.config import load_space

    cfg = apply_overrides(load_space(local), args)  # the space file and the overrides validate as on the head
    assert cfg.ray.address == "auto" and cfg.ray.storage_path.startswith("s3://")
    base = re.search(r"^FROM rayproject/ray:([\w.]+)-", dockerfile, re.M).group(1)
    assert base == ray_version() and f'"ray[default,tune,train]=={base}"' in dockerfile


# ---------------------------------------------------------------- infra/mlflow (docker compose)

VAR = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable interpolation: ${V}, ${V:-default}, ${V-default}, ${V:?error}, ${V?error}, $$."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.groups()
        v = env.get(name)
        if op in (":-", ":?") and not v or op in ("-", "?") and v is None:
            if op.endswith("?"):
                raise KeyError(f"{name}: {arg}")
            return arg
        return v or ""

    return VAR.sub(sub, value)


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml("mlflow/docker-compose.yml")


def env_example() -> dict[str, str]:
    lines = (INFRA / "mlflow/.env.example").read_text().splitlines()
    return dict(ln.split("=", 1) for ln in lines if ln and not ln.startswith("#"))


def test_compose_file_matches_the_compose_spec(compose):
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    validator = jsonschema.Draft7Validator(schema)  # the schema says draft-07 (its $schema URL lacks the "#")
    assert [e.message for e in validator.iter_errors(compose)] == []
    bad = copy.deepcopy(compose)
    bad["services"]["mlflow"]["port"] = bad["services"]["mlflow"].pop("ports")  # and the check is real
    assert list(validator.iter_errors(bad))
    # every variable the file requires (${V:?...}) is in .env.example
    interpolate(compose, env_example())


def test_compose_mlflow_command_is_one_mlflow_server_accepts(compose):
    from mlflow.cli import cli

    svc = interpolate(compose, env_example())["services"]
    cmd = svc["mlflow"]["command"]
    assert cmd[:2] == ["mlflow", "server"]
    args = cmd[2:]
    flags = {a for a in args if a.startswith("--")}
    listed = help_flags(sys.executable, "-m", "mlflow", "server")
    assert flags <= listed, f"{flags - listed} not in `mlflow server --help`"
    # the server's own option parser: unknown options, missing values and bad types raise here
    params = cli.commands["server"].make_context("server", list(args)).params
    assert params["serve_artifacts"] is True
    assert params["backend_store_uri"].startswith("postgresql://mlflow:")
    assert params["backend_store_uri"].endswith("@postgres:5432/mlflow")
    bucket = re.fullmatch(r"s3://([^/]+)/.*", params["artifacts_destination"]).group(1)
    assert f"mc mb --ignore-existing local/{bucket}" in svc["minio-init"]["command"][0]  # the bucket is made
    # design section 9: published on 127.0.0.1 unless MLFLOW_BIND says otherwise
    assert svc["mlflow"]["ports"] == [f"127.0.0.1:5000:{params['port']}"]
    assert all(p.startswith("127.0.0.1:") for s in svc.values() for p in s.get("ports", []))
    opened = interpolate(compose, env_example() | {"MLFLOW_BIND": "10.0.0.5"})["services"]["mlflow"]["ports"]
    assert opened == ["10.0.0.5:5000:5000"]
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        interpolate(compose, {})


# ---------------------------------------------------------------- infra/local_cluster.sh (run for real)


def alive(pid: int) -> bool:
    """Running, not a zombie: this machine's init reaps orphans late, and a zombie is dead already."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def sessions_members(sids: set[int]) -> set[int]:
    """Every live process in the given sessions (what the script's leaders and their children run in)."""
    out = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) in sids and fields[0] != "Z":
                out.add(int(d.name))
    return out


def naming(text: str) -> set[int]:
    """Live processes whose command line contains `text`."""
    out = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if text in (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    out.add(int(d.name))
            except OSError:
                continue
    return out


def marked(d: Path) -> set[int]:
    """Live processes carrying the script's mark R2MU_LOCAL_CLUSTER=DIR (inherited; Ray's agents may lose it)."""
    mark = f"R2MU_LOCAL_CLUSTER={d}".encode()
    out = set()
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if mark in (p / "environ").read_bytes().split(b"\0"):
                    out.add(int(p.name))
            except OSError:
                continue
    return out


def recorded_leaders(d: Path) -> set[int]:
    pids: set[int] = set()
    for f in d.glob("state.env*"):
        for line in f.read_text().splitlines():
            k, _, v = line.partition("=")
            if k.endswith("_PID") or k == "WORKER_PIDS":
                pids |= {int(p) for p in v.split()}
    return pids


def leftovers(d: Path) -> set[int]:
    return sessions_members(recorded_leaders(d)) | naming(f"{d}/node") | marked(d)


PROBE = r"""
import json, os, sys, urllib.request
import ray
ray.init(address=sys.argv[1], log_to_driver=False)
nodes = [n for n in ray.nodes() if n["Alive"]]

@ray.remote(num_cpus=0, resources={"node1": 0.01})
def where():
    return ray.get_runtime_context().get_node_id()

on = ray.get(where.remote(), timeout=150)  # a worker process starts on node1 first: slow on a busy host
health = urllib.request.urlopen(os.environ["MLFLOW_TRACKING_URI"] + "/health", timeout=10).read().decode()
print(json.dumps({"nodes": [{"id": n["NodeID"], "resources": n["Resources"]} for n in nodes], "task_on": on,
                  "total": ray.cluster_resources(), "health": health}))
"""


@pytest.mark.slow
def test_local_cluster_script_starts_two_real_nodes_and_stops_all_it_started():
    script = INFRA / "local_cluster.sh"
    # short: Ray's AF_UNIX socket paths under it must stay within 107 bytes (the script refuses long ones)
    d = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    env |= {"PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}", "PYTHON": sys.executable,
            "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    try:
        p = subprocess.run([str(script), "start", str(d), "--nodes", "2", "--cpus", "2,1", "--mlflow",
                            "--object-store-mb", "100", "--timeout", "150"], capture_output=True, text=True, env=env,
                           timeout=400)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        out = dict(ln.split("=", 1) for ln in p.stdout.splitlines() if re.fullmatch(r"[A-Z_]+=\S+", ln))
        address = out["RAY_ADDRESS"]
        assert re.fullmatch(r"[\d.]+:\d+", address) and out["MLFLOW_URI"].startswith("http://127.0.0.1:")
        started = sessions_members(recorded_leaders(d)) | marked(d)
        assert len(recorded_leaders(d)) == 3 and len(started) > 3  # head, worker, mlflow and their children
        # every node is on this machine, so every process of the cluster listens on loopback only (docs/security.md)
        from sweep.local_only import listening
        from sweep.ray_start import is_loopback

        socks = listening(sorted(started))
        assert sum(len(s) for _, s in socks.values()) >= 6, socks  # GCS, 2 raylets x 2, agents, client, mlflow
        assert not {pid: s for pid, (_, s) in socks.items() if any(not is_loopback(a.rsplit(":", 1)[0]) for a in s)}

        # a driver in another process, with only what env.sh exports (address, token auth, MLflow URI)
        exported = dict(re.findall(r"^export (\w+)=(.*)$", (d / "env.sh").read_text(), re.M))
        assert exported["RAY_ADDRESS"] == address and exported["RAY_AUTH_MODE"] == "token"
        probe = subprocess.run([sys.executable, "-c", PROBE, address], capture_output=True, text=True,
                               env=env | exported, timeout=240)
        assert probe.returncode == 0, probe.stderr[-3000:]
        seen = json.loads(probe.stdout.strip().splitlines()[-1])
        assert len(seen["nodes"]) == 2
        by_res = {("node0" in n["resources"], "node1" in n["resources"]): n for n in seen["nodes"]}
        assert by_res[(True, False)]["resources"]["CPU"] == 2 and by_res[(False, True)]["resources"]["CPU"] == 1
        assert seen["total"]["CPU"] == 3 and seen["total"]["node0"] == 1 and seen["total"]["node1"] == 1
        assert seen["task_on"] == by_res[(False, True)]["id"]  # the second raylet runs work
        assert seen["health"].strip() == "OK"

        st = subprocess.run([str(script), "status", str(d)], capture_output=True, text=True, env=env, timeout=120)
        assert st.returncode == 0, st.stdout + st.stderr
        assert "node0: pid" in st.stdout and "node1: pid" in st.stdout and "mlflow: pid" in st.stdout

        stop = subprocess.run([str(script), "stop", str(d)], capture_output=True, text=True, env=env, timeout=120)
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert not ({pid for pid in started if alive(pid)} | leftovers(d))
    finally:
        for log in sorted(d.glob("logs/*.log")):  # shown by pytest only when the test failed
            print(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:]))
        # whatever went wrong above, nothing this test started outlives it
        left = leftovers(d)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(d, ignore_errors=True)
    assert not left
