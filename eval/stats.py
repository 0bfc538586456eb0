"""95% intervals for the rate metrics, and the deterministic selection/test split of an eval set.

A rate over n items scored once each (0/1) gets a Wilson score interval; a rate whose items carry a
fractional score (k samples per item, or a mean over several sets, or a continuous score such as
`trace_coherence`) gets a percentile bootstrap over items (seeded, so a number never changes between
runs). Pure Python + numpy: no model, Ray or MLflow here.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

Z95 = 1.959963984540054
BOOTSTRAP_RESAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    value: float
    lo: float
    hi: float
    n: int          # items (questions), not samples
    method: str     # "wilson" or "bootstrap"

    def overlaps(self, other: Interval) -> bool:
        return self.lo <= other.hi and other.lo <= self.hi

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.lo:.3f}, {self.hi:.3f}] (n={self.n})"


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (well-behaved at 0 and 1, unlike the normal one)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # the bounds are exactly 0 at p = 0 and 1 at p = 1; rounding would put them a hair inside (5.6e-17 for 0 of 3)
    return min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half))


def interval(per_set_scores: Sequence[Sequence[float]], seed: int = 0, confidence: float = 0.95) -> Interval | None:
    """The `confidence` interval (95% unless screening asks otherwise) of the mean over sets of each set's mean
    item score.

    One set of 0/1 scores: Wilson. Otherwise: percentile bootstrap, resampling items within each set
    (sets are independent samples of their own items). None when no set has an item.
    """
    import numpy as np

    sets = [np.asarray(s, dtype=float) for s in per_set_scores if len(s)]
    if not sets:
        return None
    value = float(np.mean([s.mean() for s in sets]))
    n = int(sum(len(s) for s in sets))
    if len(sets) == 1 and np.all((sets[0] == 0) | (sets[0] == 1)):
        z = Z95 if confidence == 0.95 else NormalDist().inv_cdf(0.5 + confidence / 2)
        lo, hi = wilson(float(sets[0].sum()), len(sets[0]), z)
        return Interval(value, lo, hi, n, "wilson")
    rng = np.random.default_rng(seed)
    means = np.zeros(BOOTSTRAP_RESAMPLES)
    for s in sets:
        idx = rng.integers(0, len(s), size=(BOOTSTRAP_RESAMPLES, len(s)))
        means += s[idx].mean(axis=1)
    means /= len(sets)
    lo, hi = np.quantile(means, [0.5 - confidence / 2, 0.5 + confidence / 2])
    return Interval(value, float(min(lo, value)), float(max(hi, value)), n, "bootstrap")


def interval_metrics(name: str, iv: Interval | None) -> dict[str, float]:
    """The logged form: `name`, `name_lo`, `name_hi`, `name_n`."""
    if iv is None:
        return {}
    return {name: iv.value, f"{name}_lo": iv.lo, f"{name}_hi": iv.hi, f"{name}_n": float(iv.n)}


# ------------------------------------------------------------------ splits


def _rank(item_id: str, seed: int) -> str:
    return hashlib.sha256(f"r2mu-split:{seed}:{item_id}".encode()).hexdigest()


def split_items(items: list[dict[str, Any]], test: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(selection, test): disjoint, deterministic, independent of file order.

    Items are ranked by a hash of (seed, id); within each `group` (held-out vs trained facts; one group if
    items have none) the first share goes to test, so both parts keep the groups' proportions. `test` is a
    fraction (< 1) or an item count (>= 1); 0 puts everything in selection. Both parts keep file order.
    """
    if test < 0:
        raise ValueError(f"test split size {test} must be >= 0")
    n = len(items)
    ids = [str(item["id"]) for item in items]
    if len(set(ids)) != n:
        raise ValueError("eval items need unique ids for a stable split")
    frac = test if test < 1 else min(1.0, test / n) if n else 0.0
    groups: dict[Any, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(item.get("group"), []).append(i)
    test_idx: set[int] = set()
    for members in groups.values():
        ranked = sorted(members, key=lambda i: _rank(ids[i], seed))
        test_idx.update(ranked[: round(frac * len(members))])
    selection = [item for i, item in enumerate(items) if i not in test_idx]
    test_part = [item for i, item in enumerate(items) if i in test_idx]
    return selection, test_part
