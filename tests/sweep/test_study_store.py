"""`search.storage`: where the Optuna study lives, its refusals, the dry run's check of it, and a real
optuna-dashboard reading back a study that the sweep's own searcher wrote (127.0.0.1, a free port, stopped by
its pid). Real Optuna RDB storage in temp dirs; no Ray sweep."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from sweep.run import main
from sweep.space.config import ConfigError, absolute_paths, parse_space
from sweep.space.stores import check_optuna_storage, describe_study_store, optuna_storage
from sweep.space.study_store import with_logged_storage
from sweep.tuner import fail_orphans, make_searcher, study_summary


def problems(space: dict) -> str:
    with pytest.raises(ConfigError) as e:
        parse_space(space)
    return "\n".join(f"{field}: {msg}" for field, msg in e.value.problems)


def refusal(cfg) -> str:
    with pytest.raises(ConfigError) as e:
        check_optuna_storage(cfg)
    ((field, msg),) = e.value.problems
    assert field == "search.storage"
    return msg


def with_storage(space: dict, storage: str | None) -> dict:
    space["search"]["storage"] = storage
    return space


# ---------------------------------------------------------------- the field


def test_default_is_optuna_db_beside_a_sqlite_mlflow_store(space, tmp_path):
    cfg = parse_space(space)
    assert cfg.search.storage is None
    assert optuna_storage(cfg) == f"sqlite:///{tmp_path}/optuna.db"


def test_memory_keeps_the_study_in_the_driver_even_with_a_server(space):
    space["mlflow"] = {"tracking_uri": "http://mlflow.internal:5000"}
    cfg = parse_space(with_storage(space, "memory"))
    assert optuna_storage(cfg) is None
    assert "driver's memory" in describe_study_store(cfg) and "optuna-dashboard cannot show it" in \
        check_optuna_storage(cfg)


def test_a_relative_sqlite_url_resolves_like_mlflows(space, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space["mlflow"]["tracking_uri"] = "sqlite:///mlflow.db"
    cfg = absolute_paths(parse_space(with_storage(space, "sqlite:///studies/sweep.db?timeout=30")))
    assert cfg.mlflow.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"
    assert cfg.search.storage == f"sqlite:///{tmp_path}/studies/sweep.db?timeout=30"
    assert optuna_storage(cfg) == cfg.search.storage


@pytest.mark.parametrize("url", ["postgresql://optuna@db.internal:5432/optuna", "mysql+pymysql://optuna@db/optuna",
                                 "sqlite:////abs/optuna.db"])
def test_rdb_urls_are_accepted(space, url):
    assert parse_space(with_storage(space, url)).search.storage == url


@pytest.mark.parametrize("url,word", [
    ("optuna.db", "not an RDB URL"),
    ("redis://localhost:6379/0", "not an RDB URL"),
    ("sqlite://optuna.db", "names no file"),
    ("sqlite:///:memory:", "names no file"),
    ("postgresql://optuna@db:port/optuna", "does not parse"),
])
def test_a_bad_url_is_refused_naming_the_field(space, url, word):
    msg = problems(with_storage(space, url))
    assert msg.startswith("search.storage:") and word in msg, msg
    assert "sqlite:///optuna.db" in msg or "memory" in msg, msg  # and what to write instead


def test_an_mlflow_server_without_a_study_store_is_refused_with_the_fix(space, tmp_path):
    space["mlflow"] = {"tracking_uri": "http://mlflow.internal:5000"}
    msg = problems(space)
    assert msg.startswith("search.storage: not given") and "http://mlflow.internal:5000" in msg, msg
    assert "postgresql://" in msg and "sqlite:///" in msg and "`memory`" in msg, msg
    assert "optuna-dashboard cannot show it" in msg, msg
    cfg = parse_space(with_storage(space, f"sqlite:///{tmp_path}/optuna.db"))  # the fix
    assert optuna_storage(cfg) == f"sqlite:///{tmp_path}/optuna.db"


def test_a_config_logged_before_the_field_existed_still_parses(space):
    """Past server-backed sweeps kept the study in memory: sweep.results.pareto/export/final read their config.json."""
    space["mlflow"] = {"tracking_uri": "http://mlflow.internal:5000"}
    assert "storage" not in space["search"]
    assert parse_space(with_logged_storage(space)).search.storage == "memory"
    sqlite = space | {"mlflow": {"tracking_uri": "sqlite:///mlflow.db"}}
    assert with_logged_storage(sqlite) is sqlite  # its study was optuna.db beside: the default already
    logged = parse_space(with_storage(space, "sqlite:////x/optuna.db")).model_dump(mode="json")
    assert with_logged_storage(logged)["search"]["storage"] == "sqlite:////x/optuna.db"


# ---------------------------------------------------------------- the dry run's world check (writes nothing)


def test_check_accepts_a_writable_folder_and_creates_nothing(space, tmp_path):
    before = sorted(tmp_path.iterdir())
    line = check_optuna_storage(parse_space(space))
    assert line == f"SQLite {tmp_path}/optuna.db (will be created); browse: optuna-dashboard " \
                   f"sqlite:///{tmp_path}/optuna.db"
    assert sorted(tmp_path.iterdir()) == before


def test_check_refuses_a_missing_folder_a_file_as_folder_and_a_non_sqlite_file(space, tmp_path):
    msg = refusal(parse_space(with_storage(space, f"sqlite:///{tmp_path}/no/such/optuna.db")))
    assert "does not exist or is not writable" in msg and not (tmp_path / "no").exists()
    (tmp_path / "afile").write_text("x")
    assert "does not exist" in refusal(parse_space(with_storage(space, f"sqlite:///{tmp_path}/afile/optuna.db")))
    (tmp_path / "notes.db").write_text("not a database")
    msg = refusal(parse_space(with_storage(space, f"sqlite:///{tmp_path}/notes.db")))
    assert "not a writable SQLite database" in msg, msg
    (tmp_path / "empty.db").touch()  # an empty file is what sqlite3 makes of a fresh database: accepted
    assert "(exists)" in check_optuna_storage(parse_space(with_storage(space, f"sqlite:///{tmp_path}/empty.db")))


def test_check_refuses_mlflows_own_database(space):
    msg = refusal(parse_space(with_storage(space, space["mlflow"]["tracking_uri"])))
    assert "MLflow's own store" in msg, msg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("scheme,package", [
    ("postgresql", "psycopg[binary]"),  # SQLAlchemy 2.1's default PostgreSQL driver
    ("postgresql+psycopg2", "psycopg2-binary"),
    ("mysql+pymysql", "pymysql"),
])
def test_check_of_a_database_server_names_the_driver_or_the_unreachable_server(space, scheme, package):
    url = f"{scheme}://optuna:secret@127.0.0.1:{free_port()}/optuna"  # nothing listens there
    t0 = time.monotonic()
    msg = refusal(parse_space(with_storage(space, url)))
    assert time.monotonic() - t0 < 10
    assert "secret" not in msg and "***" in msg, msg  # the password is never printed
    assert f"pip install {package}" in msg or "is not reachable" in msg, msg


def test_dry_run_names_the_study_store_and_refuses_a_missing_one(space, write_space, tmp_path, capsys):
    assert main(["--space", str(write_space(space)), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"  optuna     SQLite {tmp_path}/optuna.db (will be created); browse: optuna-dashboard sqlite:///" \
           f"{tmp_path}/optuna.db" in out, out
    assert not (tmp_path / "optuna.db").exists()
    space["mlflow"] = {"tracking_uri": "http://127.0.0.1:9"}  # refused by the config, before any check runs
    assert main(["--space", str(write_space(space)), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "search.storage: not given" in err and "Traceback" not in err, err


# ---------------------------------------------------------------- optuna-dashboard on the sweep's study


@contextlib.contextmanager
def optuna_dashboard(storage_url: str, workdir: Path, started: list[psutil.Process]) -> Iterator[str]:
    """`optuna-dashboard URL --host 127.0.0.1 --port P` (the README's command), yielding its base URL once it
    answers; then stopped by its pid (terminate, wait, kill). `started` gets the server and its gunicorn worker."""
    port = free_port()
    exe = Path(sys.executable).parent / "optuna-dashboard"  # the console script of the `ui` extra
    log = workdir / "dashboard.log"
    # gunicorn's control socket goes under XDG_RUNTIME_DIR (else ~/.gunicorn): keep it in the temp dir
    env = os.environ | {"XDG_RUNTIME_DIR": str(workdir)}
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(exe), storage_url, "--host", "127.0.0.1", "--port", str(port)], stdout=out,
                                stderr=subprocess.STDOUT, env=env, cwd=workdir)
    base = f"http://127.0.0.1:{port}"
    started.append(psutil.Process(proc.pid))
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(base + "/api/meta", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("optuna-dashboard did not come up:\n" + log.read_text()[-2000:]) from None
                time.sleep(0.2)
        started.extend(started[0].children(recursive=True))
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        _, alive = psutil.wait_procs(started[1:], timeout=10)  # gunicorn's master stops its worker on SIGTERM
        for w in alive:  # one that outlived its master
            w.kill()


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def test_optuna_dashboard_reads_back_the_sweeps_study(space, tmp_path):
    cfg = absolute_paths(parse_space(space))
    url, study_name = optuna_storage(cfg), "tiny-0123abcd"  # as run_sweep names it: <name>-<parent run id[:8]>
    searcher = make_searcher(cfg, study_name, url, baseline=None)
    results = [{"trace_leak": 0.3, "reason_acc": 0.9, "retain_acc": 0.9},
               {"trace_leak": 0.1, "reason_acc": 0.7, "retain_acc": 0.8},
               {"trace_leak": 0.0, "reason_acc": 1.0, "retain_acc": 0.2}]  # violates retain_acc >= 0.5
    for i, result in enumerate(results):
        searcher.suggest(f"t{i}")
        searcher.on_trial_complete(f"t{i}", result)
    searcher.suggest("proposed-then-the-driver-died")
    assert fail_orphans(url, study_name) == 1
    summary = study_summary(url, study_name)
    assert summary["trials"] == {"COMPLETE": 3, "FAIL": 1} and summary["storage"] == url

    t0, started = time.monotonic(), []
    with optuna_dashboard(url, tmp_path, started) as base:
        up = time.monotonic() - t0
        (study,) = get_json(base + "/api/studies")["study_summaries"]
        assert study["study_name"] == study_name and study["directions"] == ["minimize", "maximize"]
        detail = get_json(f"{base}/api/studies/{study['study_id']}")
    assert detail["name"] == study_name and detail["directions"] == ["minimize", "maximize"]
    trials = detail["trials"]
    assert [t["state"] for t in trials] == ["Complete", "Complete", "Complete", "Fail"]
    assert [t["values"] for t in trials[:3]] == [[r["trace_leak"], r["reason_acc"]] for r in results]
    assert all({p["name"] for p in t["params"]} == {"layer", "steering_rel", "lr"} for t in trials)
    assert up < 30, f"optuna-dashboard took {up:.1f} s to answer"
    assert len(started) >= 1 and not [p.pid for p in started if alive(p)]  # nothing left running


def alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
