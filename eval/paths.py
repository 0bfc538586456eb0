"""Resolve `organism://...` URIs lazily, so `eval` works (on other models) without the organism package."""

from __future__ import annotations

from pathlib import Path


def resolve(path: str | Path) -> Path:
    """A local path as given, or the organism's asset path for an `organism://` URI."""
    text = str(path)
    if text.startswith("organism://"):
        try:
            from organism.paths import resolve as organism_resolve  # lazy: the organism is optional
        except ImportError as err:
            raise FileNotFoundError(f"{text}: the organism package (organism/paths.py) is not available") from err
        return Path(organism_resolve(text))
    return Path(text).expanduser()
