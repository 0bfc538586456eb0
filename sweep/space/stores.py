"""The dry run's checks of every place a sweep writes, writing nothing: the directories of Tune's storage, the
caches and the MLflow artifacts, the prefix cache's planned size against the free space, and the Optuna study's
store (a SQLite file's folder, or a database server that answers). Each problem raises `ConfigError` naming
the field and the fix.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from sweep.space.config import ConfigError, SweepConfig, local_storage
from sweep.space.file_checks import prefix_cache_bytes
from sweep.space.study_store import (
    DRIVER_PACKAGES,
    SQLITE_HEADER,
    _dialect,
    absolute_sqlite,
    public_url,
    sqlite_file,
    study_url,
)


def optuna_storage(cfg: SweepConfig) -> str | None:
    """The study's RDB URL; None when it stays in the driver's memory (`search.storage: memory`)."""
    return study_url(cfg.search.storage, cfg.mlflow.tracking_uri)


def unusable_dir(path: Path) -> str | None:
    """None when `path` is a writable directory or can be created (its nearest existing parent is a writable
    directory); else why not, starting with the path. Creates nothing."""
    p = path
    while not p.exists():
        if p.is_symlink():
            return f"{path} cannot be created: {p} is a broken symbolic link"
        p = p.parent
    why = ("is a file, not a directory" if not p.is_dir() else
           "is not writable" if not os.access(p, os.W_OK | os.X_OK) else None)
    return None if why is None else f"{path} {why}" if p == path else f"{path} cannot be created: {p} {why}"


def existing_parent(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def check_storage(cfg: SweepConfig, hidden_size: int | None) -> str:
    """The directories the run writes (Tune's storage, the trace and activation cache, the Pareto plots, the
    prefix cache) are directories or creatable, and writable; what the prefix cache may still add fits the free
    space of its filesystem. Returns the plan's storage line."""
    from sweep.traces import cache_dir, prefix_cache_dir  # the running side decides where the caches go

    local = local_storage(cfg)
    places: list[tuple[str, str, Path]] = []  # (field, what it is, directory)
    if local is not None:
        places += [("ray.storage_path", "the sweep's storage", local),
                   ("ray.storage_path", "the Pareto plots' folder", local / cfg.name / "pareto"),
                   ("ray.storage_path", "the trace cache", cache_dir(cfg))]
    else:  # remote storage: the driver keeps the trace cache on its own disk
        places.append(("R2MU_CACHE", "the trace cache ($R2MU_CACHE, else ~/.cache/r2mu-sweep)", cache_dir(cfg)))
    pc = cfg.train.prefix_cache
    derived = None if pc.dir else prefix_cache_dir(cfg)  # <storage>/cache/prefix
    prefix = pc.dir or derived or (pc.root() if cfg.ray.address in (None, "local") else None)  # else: per node
    if pc.enabled and prefix:
        places.append(("ray.storage_path" if derived else "train.prefix_cache.dir", "the prefix cache", Path(prefix)))
    if cfg.mlflow.artifact_location and "://" not in cfg.mlflow.artifact_location:
        places.append(("mlflow.artifact_location", "the MLflow artifacts", Path(cfg.mlflow.artifact_location)))
    for field, what, d in places:
        why = unusable_dir(d)
        if why:
            raise ConfigError(field.split(".")[0], [(field, f"{what}: {why}; give a directory that can be written "
                                                            "(or move the file away)")])
    shown = (f"{local} ({'exists' if local.exists() else 'will be created'})" if local is not None
             else cfg.ray.storage_path)
    if not (pc.enabled and prefix and hidden_size):
        return shown
    gib = 2**30
    layers = sorted({int(v) for v in cfg.search.space["layer"].candidates()})
    per_layer = prefix_cache_bytes(cfg, hidden_size)
    root = Path(prefix)
    held = sum(f.stat().st_size for f in root.rglob("*.safetensors")) if root.is_dir() else 0
    # the cache evicts only past max_gb: it may add its per-layer bound for each layer, up to max_gb in all
    need = max(0, min(per_layer * len(layers), int(pc.max_gb * gib) - held))
    free = shutil.disk_usage(existing_parent(root)).free
    if need > free:
        field = "train.prefix_cache.max_gb"
        raise ConfigError("train", [(field, (
            f"the prefix cache in {root} may add {need / gib:.1f} GiB (up to {per_layer / gib:.2f} GiB for each of "
            f"{len(layers)} layer(s), at most max_gb {pc.max_gb:g} GiB in all"
            + (f", of which it holds {held / gib:.2f} GiB now" if held else "") + f"), but that filesystem has "
            f"{free / gib:.1f} GiB free; set {field} <= {math.floor((free + held) / gib * 10) / 10:g}, point "
            "train.prefix_cache.dir at a larger disk, or set train.prefix_cache.enabled: false"))])
    return f"{shown}; the prefix cache may add {need / gib:.2f} GiB, {free / gib:.1f} GiB free there"


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
