"""Resolve `organism://...` URIs lazily, so `eval` works (on other models) without the organism package."""

from __future__ import annotations

from pathlib import Path


def resolve_uri(uri: str) -> str:
    """The organism's asset path for an `organism://` URI; any other string (a local path, a hub id, an s3:// URI)
    unchanged. The project's one `organism://` resolver."""
    if not uri.startswith("organism://"):
        return uri
    try:
        from organism.paths import resolve as organism_resolve  # lazy: the organism is optional
    except ImportError as err:
        raise FileNotFoundError(f"{uri}: the organism package (organism/paths.py) is not available") from err
    return str(organism_resolve(uri))


def resolve(path: str | Path) -> Path:
    """A local path as given (`~` expanded), or the organism's asset path for an `organism://` URI."""
    return Path(resolve_uri(str(path))).expanduser()


# Folders a make target writes (not in the repository): a missing path under one names the command.
GENERATED = {"assets/smollm2": "make smollm2", "assets/testbed": "make testbed"}


def make_hint(path: str | Path) -> str:
    """'; run `make smollm2` first (it writes assets/smollm2/)' for a missing path under a generated folder,
    else ''."""
    p = Path(path).expanduser()
    text = "/" + p.as_posix() + "/"
    for folder, command in GENERATED.items():
        if f"/{folder}/" in text and not p.exists():
            return f"; run `{command}` first (it writes {folder}/)"
    return ""
