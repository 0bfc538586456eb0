"""Files that a later step reads back appear whole or not at all.

A full disk, a file-size limit or a killed process in the middle of a write leaves a truncated file; if it had
its final name, the next reader (the sweep reading a trial's checkpoint, a resumed sweep reading the trace
cache) would take it for a good one. So each is written under a temporary name beside its final one and
renamed when complete (`os.replace`: atomic on one filesystem). A failed write leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write a file or a directory to; it takes `path`'s name when the block
    ends without an error (a directory already at `path` is replaced), and is removed when it raises."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        yield tmp
        if path.is_dir() and tmp.is_dir():
            shutil.rmtree(path)  # os.replace cannot put a directory over a non-empty one
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
