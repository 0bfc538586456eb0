"""Fault injection for the fault tests (tests/sweep/test_faults.py, test_sweep_e2e.py): one process dies."""

from __future__ import annotations

import os


def first_to_claim(env_var: str) -> bool:
    """True for the one process that creates the marker file named by `env_var` (atomically: O_EXCL);
    False for every later one, and when the variable is unset (never in a normal run)."""
    marker = os.environ.get(env_var)
    if not marker:
        return False
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return False
    return True
