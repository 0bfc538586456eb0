"""What one evaluation returns (`EvalResult`), and `merge`: two evaluations of disjoint items rated as one.

A screened trial (sweep/screening.py) is evaluated on a few items first and, if it goes on, on the rest of
the selection split only; `merge` joins the two as if the whole split had been evaluated at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.stats import interval, interval_metrics

# per rated metric, per set: (set label, [(item key, score), ...]): what its interval was computed from
Scores = dict[str, list[tuple[str, list[tuple[Any, float]]]]]


@dataclass
class EvalResult:
    metrics: dict[str, float | None]
    records: list[dict[str, Any]] = field(default_factory=list)
    tokens_per_s: float = 0.0
    wall_s: float = 0.0
    scores: Scores = field(default_factory=dict)  # to rate two evaluations of disjoint items together (`merge`)
    gen_tokens: int = 0
    gen_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "tokens_per_s": self.tokens_per_s, "wall_s": self.wall_s}

    def write_records(self, path: str | Path) -> Path:
        path = Path(path)
        with path.open("w", encoding="utf-8") as f:
            for record in self.records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        return path

    def table(self) -> dict[str, list]:
        """Records as dict-of-lists with one column per key (missing -> None; lists as JSON): `mlflow.log_table`."""
        columns = list(dict.fromkeys(key for record in self.records for key in record))
        def cell(value: Any) -> Any:
            return json.dumps(value) if isinstance(value, (list, dict)) else value
        return {c: [cell(r.get(c)) for r in self.records] for c in columns}

    def to_dataframe(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.table())


def merge(first: EvalResult, second: EvalResult, item_ids: dict[str, list[str]], seed: int = 0) -> EvalResult:
    """One evaluation of some sets from two evaluations of disjoint parts of them (a screen and the rest of the
    selection split): every rate's item scores joined, put in the sets' item order (`item_ids`: set label ->
    its item ids, `EvalSets.item_ids`; so the bootstrap draws what an evaluation of the whole would) and rated
    again at 95%; records joined; counts summed."""
    order = {label: {i: n for n, i in enumerate(ids)} for label, ids in item_ids.items()}
    metrics: dict[str, float | None] = {}
    scores: Scores = {}
    for name in dict.fromkeys([*first.scores, *second.scores]):
        parts: dict[str, list[tuple[Any, float]]] = {}
        for result in (first, second):
            for label, keyed in result.scores.get(name, []):
                parts.setdefault(label, []).extend(keyed)
        place = {label: order.get(label, {}) for label in parts}
        scores[name] = [(label, sorted(keyed, key=lambda kx, p=place[label]: p.get(str(kx[0]), len(p))))
                        for label, keyed in parts.items()]
        per_set = [[x for _, x in keyed] for _, keyed in scores[name]]
        metrics.update(interval_metrics(name, interval(per_set, seed)))
    for count in ("judge_unparsed",):
        if count in first.metrics or count in second.metrics:
            metrics[count] = (first.metrics.get(count) or 0.0) + (second.metrics.get(count) or 0.0)
    tokens, seconds = first.gen_tokens + second.gen_tokens, first.gen_seconds + second.gen_seconds
    metrics["gen_tokens_per_s"] = tokens / seconds if seconds else 0.0
    return EvalResult(metrics, first.records + second.records, metrics["gen_tokens_per_s"],
                      first.wall_s + second.wall_s, scores, tokens, seconds)
