"""Which MLflow store a command talks to, decided as MLflow's own tools decide it; reading never creates one.

Every command with `--tracking-uri` (the readers of a finished sweep in sweep/results/) takes the flag, then
`$MLFLOW_TRACKING_URI`, then `sqlite:///mlflow.db` (in the current directory). `sweep.run` takes the space file's
`mlflow.tracking_uri`; where that is the default (written or left out), `$MLFLOW_TRACKING_URI` replaces it
(`space_uri`), and `--set mlflow.tracking_uri=...` replaces both.

Commands that read a sweep check the store exists first (`existing_store`): MLflow opening a missing SQLite
file creates an empty ~1 MB database (and its folder) before it can say that the experiment is not there.
"""

from __future__ import annotations

import argparse
import fcntl
import os
from pathlib import Path
from urllib.parse import urlparse

DEFAULT_URI = "sqlite:///mlflow.db"
ENV = "MLFLOW_TRACKING_URI"
FLAG_HELP = (f"MLflow tracking URI, e.g. sqlite:///path/mlflow.db or http://host:5000 (default: ${ENV}, else "
             f"{DEFAULT_URI} in this directory)")


class StoreError(ValueError):
    """No MLflow store where the URI points; the message is the one line a CLI prints."""


def add_flag(parser: argparse.ArgumentParser) -> None:
    """`--tracking-uri URI` with the resolution order in its help; resolve it with `existing_store`."""
    parser.add_argument("--tracking-uri", metavar="URI", help=FLAG_HELP)


def resolve(flag: str | None = None) -> tuple[str, str]:
    """(the URI, where it came from): the flag, then $MLFLOW_TRACKING_URI, then the default."""
    if flag:
        return flag, "--tracking-uri"
    env = os.environ.get(ENV)
    if env:
        return env, f"${ENV}"
    return DEFAULT_URI, "the default"


def space_uri(uri: str) -> str:
    """sweep.run: the space file's URI, unless it is the default and $MLFLOW_TRACKING_URI names a store."""
    if uri == DEFAULT_URI and os.environ.get(ENV):
        return os.environ[ENV]
    return uri


def local_path(uri: str) -> Path | None:
    """The file (SQLite) or folder (file store) a local store lives in; None for a server or a database URL."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///"))  # sqlite:////abs/x.db -> /abs/x.db
    if uri.startswith("file:"):
        return Path(urlparse(uri).path)
    if "://" not in uri:
        return Path(uri)  # a plain path: MLflow's file store
    return None


_READY: set[str] = set()  # SQLite stores this process has opened through `ready`


def ready(uri: str) -> str:
    """`uri`, its SQLite store made safe for several processes that open it at once while it is new.

    MLflow creates a new SQLite store's tables by running its migrations on first open; two processes doing it
    at once (two sweeps, or a sweep and a `sweep.single_trial`, started together) fail with `table ... already
    exists` or an alembic error. Here the first open happens under an exclusive lock on the store's folder
    (flock on the directory: no lock file is left behind), so one process migrates and the others wait and find
    the tables. A server or a database URL is returned unchanged."""
    if not uri.startswith("sqlite:///") or uri in _READY:
        return uri
    from mlflow.tracking import MlflowClient

    folder = (local_path(uri) or Path(".")).resolve().parent
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        MlflowClient(uri).search_experiments(max_results=1)  # creates and migrates a new store, once
    finally:
        os.close(fd)  # releases the lock
    _READY.add(uri)
    return uri


def existing_store(flag: str | None = None) -> str:
    """The resolved URI (a relative SQLite path made absolute), or StoreError when it names a local file or
    folder that does not exist."""
    uri, source = resolve(flag)
    path = local_path(uri)
    if path is not None and not path.exists():
        raise StoreError(f"no MLflow store at {uri} ({source}; {path.absolute()} does not exist): give "
                         f"--tracking-uri URI or set {ENV} to the sweep's store (its space file's mlflow.tracking_uri)")
    if uri.startswith("sqlite:///") and path is not None and not path.is_absolute():
        return f"sqlite:///{path.resolve()}"  # MLflow keeps one store per URI string: never a cwd-relative one
    return uri


def same_store(a: str, b: str) -> bool:
    """Whether two URIs name one store (relative SQLite paths against the current directory)."""
    pa, pb = local_path(a), local_path(b)
    if pa is not None and pb is not None:
        return pa.resolve() == pb.resolve()
    return a.rstrip("/") == b.rstrip("/")


def known_experiments(client) -> str:
    """What an unknown experiment's error lists: the experiments the store holds (MLflow's Default left out)."""
    names = sorted(e.name for e in client.search_experiments() if e.name != "Default")
    if not names:
        return "the store holds no sweep yet"
    shown = ", ".join(names[:30]) + (f" (and {len(names) - 30} more)" if len(names) > 30 else "")
    return f"experiments there: {shown}"
