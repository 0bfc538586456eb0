"""Where the sweep's Optuna study lives: `search.storage` (an RDB URL or `memory`).

Only the driver writes the study (Tune's searcher runs in the driver process); optuna-dashboard reads it from
the same URL. The default is `optuna.db` beside a SQLite MLflow store; with an MLflow server there is no file
to put it beside, so the space file must say where the study goes (`storage_problem`). `check_optuna_storage`
is the dry run's world check: it writes nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sweep.config import SweepConfig

MEMORY = "memory"
SCHEMES = ("sqlite", "postgresql", "mysql")  # SQLAlchemy dialects Optuna's RDBStorage is tested on
FORMS = "sqlite:///optuna.db, postgresql://USER@HOST:5432/DB, mysql+pymysql://USER@HOST/DB, or memory"
NO_STORE_FIX = (
    "give search.storage: an RDB URL the driver can write and optuna-dashboard can read (postgresql://USER@HOST/DB "
    "on a database server, or sqlite:///PATH.db on the driver's disk), or `memory` to keep the study in the "
    "driver's memory (optuna-dashboard cannot show it)")
# the pip package of each DBAPI module SQLAlchemy imports for a dialect (the name a user installs)
DRIVER_PACKAGES = {"psycopg2": "psycopg2-binary", "psycopg": "psycopg[binary]", "MySQLdb": "mysqlclient",
                   "pymysql": "pymysql", "mysql": "mysql-connector-python"}
SQLITE_HEADER = b"SQLite format 3\x00"


def _dialect(url: str) -> str:
    """'postgresql+psycopg2://...' -> 'postgresql'."""
    return url.partition("://")[0].split("+")[0]


def storage_problem(storage: str | None, tracking_uri: str) -> str | None:
    """Why `search.storage` cannot hold the study, or None. Pure: the config validates with it."""
    if storage is None:
        if tracking_uri.startswith("sqlite:///"):
            return None  # optuna.db beside mlflow.db
        return f"not given, and mlflow.tracking_uri {tracking_uri!r} is no SQLite file to keep optuna.db beside: " \
               + NO_STORE_FIX
    if storage == MEMORY:
        return None
    if "://" not in storage or _dialect(storage) not in SCHEMES:
        return f"{storage!r} is not an RDB URL Optuna can store a study in; give {FORMS}"
    if _dialect(storage) == "sqlite":
        path = storage.partition(":///")[2].partition("?")[0]
        if not storage.partition("://")[2].startswith("/") or path in ("", ":memory:"):
            return f"{storage!r} names no file; give sqlite:///optuna.db (relative to the current folder) or " \
                   f"sqlite:////abs/path/optuna.db, or {MEMORY!r}"
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(storage)
    except (ArgumentError, ValueError) as e:
        return f"{storage!r} does not parse as a database URL ({e}); give {FORMS}"
    return None


def absolute_sqlite(url: str | None) -> str | None:
    """'sqlite:///rel/x.db' -> 'sqlite:////abs/rel/x.db' against the current folder (Tune runs trials in their own
    folders); absolute SQLite URLs and every other URL unchanged. Used for MLflow's store too."""
    if url is None or not url.startswith("sqlite:///") or url.startswith("sqlite:////"):
        return url
    path, query = (url.removeprefix("sqlite:///").split("?", 1) + [""])[:2]
    return "sqlite:///" + str(Path(path).resolve()) + (f"?{query}" if query else "")


def optuna_storage(cfg: SweepConfig) -> str | None:
    """The study's RDB URL; None when it stays in the driver's memory (`search.storage: memory`)."""
    storage, uri = cfg.search.storage, cfg.mlflow.tracking_uri
    if storage == MEMORY:
        return None
    if storage is None:
        if not uri.startswith("sqlite:///"):  # the config refuses this; never fall back to memory silently
            raise ValueError(f"search.storage: {storage_problem(storage, uri)}")
        return f"sqlite:///{sqlite_file(absolute_sqlite(uri)).parent / 'optuna.db'}"
    return absolute_sqlite(storage)


def with_logged_storage(raw: dict) -> dict:
    """A config.json a sweep logged before `search.storage` existed, given the store its study had then (optuna.db
    beside a SQLite MLflow store, else the driver's memory): commands that read past sweeps parse it this way."""
    search, mlflow = raw.get("search"), raw.get("mlflow") or {}
    if not isinstance(search, dict) or "storage" in search:
        return raw
    if str(mlflow.get("tracking_uri", "sqlite:///")).startswith("sqlite:///"):
        return raw
    return raw | {"search": search | {"storage": MEMORY}}


def sqlite_file(url: str) -> Path:
    """The file of an absolute sqlite:/// URL (its query string dropped)."""
    return Path(url.removeprefix("sqlite:///").split("?", 1)[0])


def public_url(url: str) -> str:
    """The URL with any password masked: what the plan prints and the parent run records."""
    if _dialect(url) == "sqlite":
        return url
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def describe_study_store(cfg: SweepConfig) -> str:
    """The plan's line: where the study goes and how to browse it."""
    url = optuna_storage(cfg)
    if url is None:
        return "in the driver's memory (search.storage: memory): optuna-dashboard cannot show it"
    if _dialect(url) == "sqlite":
        db = sqlite_file(url)
        return f"SQLite {db} ({'exists' if db.exists() else 'will be created'}); browse: optuna-dashboard {url}"
    return f"{public_url(url)}; browse: optuna-dashboard {public_url(url)}"


def check_optuna_storage(cfg: SweepConfig) -> str:
    """The dry run's check of the study store; creates nothing. Returns the plan's line, or raises ConfigError
    naming search.storage: a SQLite file's folder must exist and be writable, and the file (if there) be a SQLite
    database that is not MLflow's; a server URL's driver must import and the server answer within 3 s."""
    from sweep.config import ConfigError

    def refuse(msg: str) -> ConfigError:
        return ConfigError("search", [("search.storage", msg)])

    url = optuna_storage(cfg)
    if url is None:
        return describe_study_store(cfg)
    shown = public_url(url)
    if _dialect(url) != "sqlite":
        return check_server(url, shown, refuse)
    db = sqlite_file(url)
    if not db.parent.is_dir() or not os.access(db.parent, os.W_OK | os.X_OK):
        raise refuse(f"{shown!r}: folder {str(db.parent)!r} does not exist or is not writable; create it or point "
                     "at another path")
    mlflow_uri = cfg.mlflow.tracking_uri
    if mlflow_uri.startswith("sqlite:///") and sqlite_file(absolute_sqlite(mlflow_uri)) == db:
        raise refuse(f"{shown!r} is MLflow's own store (mlflow.tracking_uri): both keep an alembic_version table; "
                     "give the study its own file, e.g. optuna.db beside it (leave search.storage out)")
    if db.exists():
        head = b"?"  # a folder in the file's place
        if db.is_file():
            with open(db, "rb") as f:
                head = f.read(len(SQLITE_HEADER))
        if (head and head != SQLITE_HEADER) or not os.access(db, os.W_OK):  # an empty file is a fresh database
            raise refuse(f"{shown!r}: {str(db)!r} is not a writable SQLite database; remove it or point at "
                         "another file")
    return describe_study_store(cfg)


def check_server(url: str, shown: str, refuse: Callable[[str], Exception]) -> str:
    """A PostgreSQL/MySQL study store: its driver imports and the server accepts a connection (nothing written)."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 3})  # imports the DBAPI driver
    except ModuleNotFoundError as e:
        package = DRIVER_PACKAGES.get((e.name or "").split(".")[0], e.name)
        raise refuse(f"{shown!r}: its database driver {e.name!r} is not installed here (the sweep's driver "
                     f"opens the study); pip install {package}") from None
    try:
        with engine.connect():
            pass
    except Exception as e:  # noqa: BLE001 - any failure to connect is the refusal
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        hint = " (a password goes in PGPASSWORD or ~/.pgpass, not the space file)" \
            if _dialect(url) == "postgresql" else ""
        raise refuse(f"{shown!r} is not reachable ({reason}); start the database server, create the database, "
                     f"or fix the URL{hint}") from None
    finally:
        engine.dispose()
    return f"{shown} (reachable); browse: optuna-dashboard {shown}"
