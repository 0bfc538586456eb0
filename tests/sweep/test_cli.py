"""The command-line tools as a user meets them: which MLflow store they read (flag, then $MLFLOW_TRACKING_URI,
then sqlite:///mlflow.db), that reading never creates one, one-line errors, help on every flag, and the
`r2mu-sweep` console command. Real MLflow SQLite stores; subprocesses where the process boundary matters."""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from sweep.results import compare, export, pareto
from tests.sweep.conftest import space_dict
from tests.sweep.test_compare import log_sweep

ROOT = Path(__file__).resolve().parents[2]
ENV = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"PYTHONPATH": str(ROOT),
                                                                           "OMP_NUM_THREADS": "1"}


def cli(module: str, *args: str, cwd: Path, env: dict | None = None) -> tuple[int, str, str]:
    p = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=ENV | (env or {}), capture_output=True,
                       text=True, timeout=120)
    return p.returncode, p.stdout, p.stderr


def files_in(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


@pytest.fixture(scope="module")
def _stores(tmp_path_factory, tiny_model_dir) -> tuple[Path, dict[str, str]]:
    """Three stores, each with two sweeps named after it: the default one in `root/work` (`default-a`,
    `default-b`), one for $MLFLOW_TRACKING_URI and one for --tracking-uri. Built once for the module (creating
    an MLflow store takes seconds); the tests only read them."""
    root = tmp_path_factory.mktemp("stores")
    space = space_dict(root, tiny_model_dir)
    (root / "work").mkdir()
    (root / "env").mkdir()
    uris = {"default": "sqlite:///mlflow.db", "env": f"sqlite:///{root}/env/env.db", "flag": f"sqlite:///{root}/flag.db"}
    for name, uri in uris.items():
        client = MlflowClient(uri.replace("sqlite:///mlflow.db", f"sqlite:///{root}/work/mlflow.db"))
        for suffix, trials in (("a", [(0.1, 0.8), (0.5, 0.9)]), ("b", [(0.3, 0.7)])):
            log_sweep(client, f"{name}-{suffix}", trials, space | {"mlflow": {"tracking_uri": uri}})
    return root, uris


@pytest.fixture
def stores(_stores, monkeypatch) -> dict[str, str]:
    """`_stores`' URIs, run from its `work` folder (the default store's; MLflow's default artifact root,
    ./mlruns, lands there, not in the checkout); "work": that folder."""
    root, uris = _stores
    monkeypatch.chdir(root / "work")
    return uris | {"work": str(root / "work")}


def run_main(command: str, experiment: str, flag: str | None, tmp_path: Path) -> int:
    argv = ["--tracking-uri", flag] if flag else []
    if command == "pareto":
        return pareto.main(["--experiment", experiment, *argv])
    if command == "compare":
        return compare.main(["--experiments", experiment, "default-b", *argv])
    return export.main(["--experiment", experiment, "--out", str(tmp_path / "exported"), *argv])


@pytest.mark.parametrize("command", ["pareto", "compare", "export"])
def test_tracking_uri_is_the_flag_then_the_environment_then_the_default(command, stores, tmp_path, monkeypatch,
                                                                        capsys):
    """An unknown experiment names the store each setting resolved to and lists the sweeps in it."""
    cases = [(None, None, "default"), (None, stores["env"], "env"), (stores["flag"], stores["env"], "flag")]
    # mlflow.set_tracking_uri (called by earlier tests in this process) exports MLFLOW_TRACKING_URI
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for flag, env, used in cases:
        if env:
            monkeypatch.setenv("MLFLOW_TRACKING_URI", env)
        assert run_main(command, "nope", flag, tmp_path) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        uri = stores[used].replace("sqlite:///mlflow.db", f"sqlite:///{stores['work']}/mlflow.db")  # made absolute
        assert f"no MLflow experiment 'nope' at {uri}; experiments there: {used}-a, {used}-b" in err, err
    assert not (tmp_path / "exported").exists()


def test_pareto_and_compare_read_the_store_of_the_environment(stores, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", stores["env"])
    assert pareto.main(["--experiment", "env-a"]) == 0
    out = capsys.readouterr().out
    assert "* env-a-0" in out and "run" in out.splitlines()[0]
    assert compare.main(["--experiments", "env-a", "env-b"]) == 0
    assert "C(env-a, env-b)" in capsys.readouterr().out


def test_reading_commands_create_no_store(tmp_path, monkeypatch, capsys):
    """Run from the wrong folder, they say where they looked, in one line, and leave the folder as it was."""
    rc, out, err = cli("sweep.results.pareto", "--experiment", "organism", cwd=tmp_path)
    assert rc == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("error: no MLflow store at sqlite:///mlflow.db (the default; ") and "--tracking-uri" in err
    assert "MLFLOW_TRACKING_URI" in err
    assert files_in(tmp_path) == []  # no mlflow.db, no mlruns
    monkeypatch.chdir(tmp_path)
    missing = f"sqlite:///{tmp_path}/sub/mlflow.db"
    for main, argv in ((pareto.main, ["--experiment", "x"]), (compare.main, ["--experiments", "x", "y"]),
                       (export.main, ["--experiment", "x", "--out", "exported"])):
        assert main(argv + ["--tracking-uri", missing]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: no MLflow store at {missing} (--tracking-uri; "), err
        monkeypatch.setenv("MLFLOW_TRACKING_URI", missing)
        assert main(argv) == 2
        assert "($MLFLOW_TRACKING_URI; " in capsys.readouterr().err
        monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert files_in(tmp_path) == []  # no sub/ folder either


def test_trial_set_error_is_one_line(tmp_path):
    space = str(ROOT / "search_spaces/organism.yaml")
    for value, words in (("lr=-1", ["--set lr: -1 must be > 0", "--set lr=1e-3"]),
                         ("lr=fast", ["--set lr: 'fast' is not a number"]),
                         ("lrate=1", ["--set lrate: unknown hyperparameter; accepted: layer"])):
        rc, out, err = cli("sweep.single_trial", "--space", space, "--set", value, cwd=tmp_path)
        assert rc == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err, err
        assert err.startswith("error: ") and all(w in err for w in words), err
    assert files_in(tmp_path) == []


# every CLI of the project: each flag has help text
CLI_MODULES = ["sweep.run", "sweep.single_trial", "sweep.results.pareto", "sweep.results.export",
               "sweep.results.compare", "sweep.results.final", "sweep.results.samples", "sweep.results.report",
               "eval.suite",
               "smollm2.prepare", "smollm2.testbed", "sweep.local_only", "organism.build", "organism.check_vllm",
               "trainables.prefix_cache", "trainables.make_traces"]


@pytest.mark.parametrize("module", CLI_MODULES)
def test_every_flag_has_help(module, monkeypatch):
    """The parser each main() builds, caught at parse_args."""
    class Parsed(Exception):
        pass

    parsers = []

    def catch(self, *args, **kwargs):
        parsers.append(self)
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", catch)
    mod = importlib.import_module(module)
    with pytest.raises(Parsed):
        (getattr(mod, "main", None) or mod.parse_args)([])
    bare = [a.option_strings or [a.dest] for a in parsers[0]._actions if not a.help]
    assert bare == [], f"{module}: flags without help text: {bare}"
    if any("--tracking-uri" in a.option_strings for a in parsers[0]._actions):
        text = parsers[0].format_help()
        assert "MLFLOW_TRACKING_URI" in text and "sqlite:///mlflow.db" in text


def test_console_command_lists_and_runs_the_subcommands(tmp_path):
    exe = Path(sys.executable).parent / "r2mu-sweep"
    assert exe.exists(), "the console script is missing: pip install -e . (make install) writes it"
    p = subprocess.run([str(exe), "--help"], env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    for name in ("run", "trial", "pareto", "export", "compare", "final", "samples", "report", "eval"):
        assert f"\n  {name} " in p.stdout, p.stdout
    p = subprocess.run([str(exe), "pareto", "--experiment", "x"], env=ENV, cwd=tmp_path, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.startswith("error: no MLflow store at sqlite:///mlflow.db"), p.stderr
    p = subprocess.run([str(exe), "nope"], env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "unknown command 'nope'; commands: run, trial" in p.stderr
    assert files_in(tmp_path) == []
