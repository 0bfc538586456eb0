"""Where the sweep's Optuna study lives: `search.storage` (an RDB URL or `memory`).

Only the driver writes the study (Tune's searcher runs in the driver process); optuna-dashboard reads it from
the same URL. The default is `optuna.db` beside a SQLite MLflow store; with an MLflow server there is no file
to put it beside, so the space file must say where the study goes (`storage_problem`). The dry run's check of
the store is `sweep.space.stores.check_optuna_storage`.
"""

from __future__ import annotations

from pathlib import Path

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


def study_url(storage: str | None, tracking_uri: str) -> str | None:
    """`search.storage` resolved: the study's RDB URL, or None when it stays in the driver's memory (`memory`).
    Left out, it is optuna.db beside a SQLite MLflow store."""
    if storage == MEMORY:
        return None
    if storage is None:
        if not tracking_uri.startswith("sqlite:///"):  # the config refuses this; never fall back to memory silently
            raise ValueError(f"search.storage: {storage_problem(storage, tracking_uri)}")
        return f"sqlite:///{sqlite_file(absolute_sqlite(tracking_uri)).parent / 'optuna.db'}"
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
