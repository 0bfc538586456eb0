"""One hyperparameter of a space file: its YAML forms (a value, `{int: [lo, hi]}`, `{uniform: ...}`,
`{loguniform: ...}`, `{choice: [...]}`) -> a validated `Param`, with the bounds each hyperparameter allows."""

from __future__ import annotations

import math
from typing import Any, Literal

from common.config import Strict


class SpaceError(ValueError):
    """Raised inside validators for a sub-path below the field being validated."""

    def __init__(self, subpath: str, msg: str):
        self.subpath = subpath
        super().__init__(msg)


# ---------------------------------------------------------------- the search space

# name -> (type, lower bound, bound inclusive?) for every hyperparameter a space may search or fix.
HYPERPARAMS: dict[str, tuple[type, float, bool]] = {
    "layer": (int, 0, True),
    "steering_coeff": (float, 0, False),
    "steering_rel": (float, 0, False),
    "alpha": (float, 0, True),
    "beta": (float, 0, True),
    "gamma": (float, 0, True),
    "lr": (float, 0, False),
    "steps": (int, 1, True),
}
DISTRIBUTIONS = ("int", "uniform", "loguniform", "choice")
FORMS = "a plain value, or one of {int: [lo, hi]}, {uniform: [lo, hi]}, {loguniform: [lo, hi]}, {choice: [...]}"


class Param(Strict):
    """One hyperparameter: fixed (`value`) or a distribution over [low, high] / `values`."""

    kind: Literal["fixed", "int", "uniform", "loguniform", "choice"]
    value: float | int | None = None
    low: float | int | None = None
    high: float | int | None = None
    values: tuple[float | int, ...] = ()

    def candidates(self) -> list[float | int]:
        """Every value an int/choice/fixed parameter can take (for range checks against the model)."""
        if self.kind == "fixed":
            return [self.value]
        if self.kind == "choice":
            return list(self.values)
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1))
        return [self.low, self.high]

    def describe(self) -> str:
        if self.kind == "fixed":
            return f"fixed {self.value}"
        if self.kind == "choice":
            return f"choice {list(self.values)}"
        return f"{self.kind} [{self.low}, {self.high}]"


def _check_bound(name: str, where: str, v: Any) -> float | int:
    typ, lo, inclusive = HYPERPARAMS[name]
    if isinstance(v, bool) or not isinstance(v, int | float) or (typ is int and not isinstance(v, int)):
        raise SpaceError(where, f"{v!r} is not {'an integer' if typ is int else 'a number'}")
    if not math.isfinite(v) or v < lo or (v == lo and not inclusive):
        raise SpaceError(where, f"{v!r} must be {'>=' if inclusive else '>'} {lo}")
    return v


def parse_param(name: str, raw: Any) -> Param:
    """YAML form -> Param. Raises SpaceError with the sub-path (`layer.int`) on anything wrong."""
    if name not in HYPERPARAMS:
        raise SpaceError(name, f"unknown hyperparameter; accepted: {', '.join(HYPERPARAMS)}")
    if isinstance(raw, Param):
        return raw
    if not isinstance(raw, dict):
        return Param(kind="fixed", value=_check_bound(name, name, raw))
    if "kind" in raw:  # already a Param dump (model_dump round trip)
        return Param(**raw)
    if len(raw) != 1 or next(iter(raw)) not in DISTRIBUTIONS:
        raise SpaceError(name, f"got {raw!r}; give {FORMS}")
    kind, arg = next(iter(raw.items()))
    where = f"{name}.{kind}"
    if kind == "choice":
        if not isinstance(arg, list) or not arg:
            raise SpaceError(where, "give a non-empty list of values")
        return Param(kind="choice", values=tuple(_check_bound(name, where, v) for v in arg))
    if not isinstance(arg, list) or len(arg) != 2:
        raise SpaceError(where, f"got {arg!r}; give [low, high]")
    if kind == "int" and HYPERPARAMS[name][0] is not int:
        raise SpaceError(where, f"{name} is a real number: use uniform or loguniform")
    if kind != "int" and HYPERPARAMS[name][0] is int:
        raise SpaceError(where, f"{name} is an integer: use int or choice")
    low, high = (_check_bound(name, where, v) for v in arg)
    if kind == "loguniform" and low <= 0:
        raise SpaceError(where, f"loguniform bounds must be > 0 (got low={low})")
    if low > high or (kind != "int" and low == high):
        raise SpaceError(where, f"low {low} must be {'<=' if kind == 'int' else '<'} high {high}")
    return Param(kind=kind, low=low, high=high)
