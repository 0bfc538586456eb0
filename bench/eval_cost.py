"""What one trial's evaluation costs now against an earlier revision of the evaluation, on the same machine.

    python bench/eval_cost.py [--reference-rev 3a64551] [--space search_spaces/organism.yaml] [--repeats 5]

Checks the reference revision out into a temporary git worktree, then runs, one after the other in fresh
processes, the sweep's `Evaluator` (the same vLLM engine a sweep uses, or transformers where vLLM is not
installed) of each tree on the base organism with that tree's own space file: one warm-up evaluation, then
`--repeats` timed ones. Prints the median seconds of each and their ratio (the issue's bar: <= 1.5x the
evaluation before the selection/test split, intervals, coherence and retain traces were added, 3a64551).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SNIPPET = """
import json, os, sys, time
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
if __name__ == "__main__":
    from eval.paths import resolve_uri
    from sweep.space.config import load_space
    from sweep.evaluator import Evaluator
    cfg = load_space(sys.argv[1])
    ev = Evaluator(resolve_uri(cfg.model.path), cfg.eval, cfg.model.dtype)
    ev.evaluate(None)  # warm-up
    times = []
    for _ in range(int(sys.argv[2])):
        t = time.perf_counter()
        out = ev.evaluate(None)
        times.append(time.perf_counter() - t)
    ev.close()
    print("RESULT " + json.dumps({"times": times, "backend": ev.backend.name, "metrics": sorted(out["metrics"])}))
"""


def run_tree(tree: Path, space: str, repeats: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", SNIPPET, space, str(repeats)], cwd=tree, env=env,
                       capture_output=True, text=True, timeout=900)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if p.returncode != 0 or line is None:
        raise SystemExit(f"{tree}: evaluation failed:\n{p.stderr[-3000:]}")
    return json.loads(line.removeprefix("RESULT "))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference-rev", default="3a64551", help="git revision of the reference evaluation")
    ap.add_argument("--space", default="search_spaces/organism.yaml", help="space file (relative to each tree)")
    ap.add_argument("--repeats", type=int, default=5, help="timed evaluations per tree (default %(default)s)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="r2mu-ref-") as tmp:
        ref_tree = Path(tmp) / "ref"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(ref_tree), args.reference_rev],
                       check=True, capture_output=True)
        try:
            ref = run_tree(ref_tree, args.space, args.repeats)
            new = run_tree(ROOT, args.space, args.repeats)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(ref_tree)],
                           capture_output=True)
    r, n = statistics.median(ref["times"]), statistics.median(new["times"])
    print(f"{'':28}{'median s':>10}{'min':>8}{'max':>8}  metrics")
    print(f"{'reference ' + args.reference_rev:<28}{r:>10.2f}{min(ref['times']):>8.2f}{max(ref['times']):>8.2f}"
          f"  {len(ref['metrics'])}")
    print(f"{'this tree':<28}{n:>10.2f}{min(new['times']):>8.2f}{max(new['times']):>8.2f}  {len(new['metrics'])}")
    print(f"ratio this/reference: {n / r:.2f}x  (backend {new['backend']}, {args.repeats} timed evaluations each, "
          f"{args.space})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
