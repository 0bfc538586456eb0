"""How well the leak judges agree with a reader: precision and recall of `leak`, with 95% Wilson intervals,
against the hand labels of tests/eval/data/judge_labels.jsonl (220 traces, read and labelled one by one;
study/judge_sample.py drew them from a testbed sweep and the organism demo, stratified by the match judge).

    .venv/bin/python study/judge_agreement.py [--labels FILE] [--llm MODEL_DIR] [--backend hf]

`--llm`: also the `llm` judge (eval/leakage.py, the R²MU paper's 1-4 rubric) with that local model. Each
judge sees what it sees in a sweep: the trace before `</think>`. docs/eval.md records the numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
LABELS = ROOT / "tests" / "eval" / "data" / "judge_labels.jsonl"


def load_labels(path: Path = LABELS) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def verdicts(judge, rows: list[dict]) -> list[bool | None]:
    items = [{"id": r["id"], "question": r["question"], "choices": r["choices"], "answer": r["answer"]} for r in rows]
    return [v.leak for v in judge.judge(items, [r["trace"] for r in rows])]


def agreement(rows: list[dict], judged: list[bool | None]) -> dict:
    """Confusion counts (an unparsed verdict counts as no leak, and is counted), precision, recall, agreement."""
    from eval.stats import wilson

    c = Counter()
    for r, v in zip(rows, judged, strict=True):
        c["unparsed"] += v is None
        c[("tp" if v else "fn") if r["label"] else ("fp" if v else "tn")] += 1
    out: dict = dict(c)
    for name, hit, n in (("precision", c["tp"], c["tp"] + c["fp"]), ("recall", c["tp"], c["tp"] + c["fn"]),
                         ("agreement", c["tp"] + c["tn"], len(rows))):
        out[name] = (hit / n, *wilson(hit, n), n) if n else None
    return out


def table(name: str, rows: list[dict], judged: list[bool | None]) -> str:
    lines = []
    for part in sorted({r["source"].split("/")[0].split("-")[0] for r in rows}) + ["all"]:
        idx = [i for i, r in enumerate(rows) if part == "all" or r["source"].startswith(part)]
        a = agreement([rows[i] for i in idx], [judged[i] for i in idx])

        def cell(key: str, a: dict = a) -> str:
            v = a.get(key)
            return "-" if v is None else f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}] (n={v[3]})"

        lines.append(f"| {name} | {part} | {len(idx)} | {a.get('tp', 0)} | {a.get('fp', 0)} | {a.get('fn', 0)} | "
                     f"{a.get('tn', 0)} | {cell('precision')} | {cell('recall')} | {cell('agreement')} |"
                     + (f" {a['unparsed']} unparsed |" if a.get("unparsed") else ""))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labels", type=Path, default=LABELS)
    ap.add_argument("--llm", help="a local model directory for the llm judge")
    ap.add_argument("--backend", default="hf", help="the llm judge's backend (hf, vllm, auto)")
    args = ap.parse_args()
    from eval.leakage import MatchJudge, make_judge

    rows = load_labels(args.labels)
    print(f"{len(rows)} labelled traces ({sum(r['label'] for r in rows)} leak)")
    print("| judge | set | n | TP | FP | FN | TN | precision | recall | agreement |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(table("match", rows, verdicts(MatchJudge(), rows)))
    if args.llm:
        from eval.generate import load_backend

        with load_backend(args.llm, args.backend) as backend:
            print(table(f"llm ({Path(args.llm).name})", rows, verdicts(make_judge("llm", backend), rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
