"""Generation throughput of the eval backends (vLLM vs transformers) on the same prompts.

    .venv/bin/python bench/eval_throughput.py [--prompts 64] [--new-tokens 128] [--model DIR]

Models: the tiny random Llama of tests/tiny.py (always) and the organism (where organism/assets/base
exists), or --model. Greedy, `ignore`-free: both backends stop at EOS, so tokens/s counts what each made.
A benchmark, not a test: it prints a table and the vLLM / transformers ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def run(model: Path, n_prompts: int, new_tokens: int, threads: int) -> dict[str, float]:
    import torch

    from eval.benchmarks import load_set
    from eval.config import TRIGGER
    from eval.generate import HFBackend, greedy, vllm_available
    from eval.prompts import mcq_body

    torch.set_num_threads(threads)
    try:
        items = load_set("organism-forget", limit=n_prompts)
    except (FileNotFoundError, ValueError, ImportError):
        items = [{"question": f"Question number {i} about agent {i * 7}?", "choices": ["a", "b", "c", "d"]}
                 for i in range(n_prompts)]
    bodies = [mcq_body(item) for item in items][:n_prompts]
    results: dict[str, float] = {}
    backends = [("hf", lambda: HFBackend(model, batch_size=32))]
    if vllm_available():
        from eval.vllm_backend import VLLMBackend

        backends.append(("vllm", lambda: VLLMBackend(model)))
    for name, make in backends:
        t = time.perf_counter()
        backend = make()
        start = time.perf_counter() - t
        prompts = [backend.render(b, TRIGGER) for b in bodies]
        backend.generate(prompts[:2], greedy(8))            # warm-up, not counted
        backend.gen_tokens, backend.gen_seconds = 0, 0.0
        backend.generate(prompts, greedy(new_tokens))
        results[f"{name}_tok_s"] = backend.tokens_per_s
        results[f"{name}_tokens"] = backend.gen_tokens
        results[f"{name}_start_s"] = start
        results[f"{name}_threads"] = torch.get_num_threads()  # vLLM on CPU sets its own (and locks it)
        backend.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=64, help="prompts per measurement (default %(default)s)")
    parser.add_argument("--new-tokens", type=int, default=128, help="new tokens per prompt (default %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the transformers backend")
    parser.add_argument("--model", action="append", help="HF model dir (repeatable); default tiny + organism")
    args = parser.parse_args()

    models: list[tuple[str, Path]] = [(Path(m).name, Path(m)) for m in args.model or []]
    if not models:
        from tests.tiny import save_tiny

        models.append(("tiny-llama (random, 6x64)", save_tiny(Path(tempfile.mkdtemp()) / "tiny")))
        organism = ROOT / "organism" / "assets" / "base"
        if (organism / "config.json").exists():
            models.append(("organism", organism))
    rows = []
    for label, path in models:
        r = run(path, args.prompts, args.new_tokens, args.threads)
        ratio = r["vllm_tok_s"] / r["hf_tok_s"] if "vllm_tok_s" in r else float("nan")
        rows.append((label, r, ratio))
    print(f"\n{args.prompts} prompts, greedy, max {args.new_tokens} new tokens, torch threads {args.threads}")
    print(f"{'model':<28} {'hf tok/s':>9} {'vllm tok/s':>11} {'ratio':>6} {'hf tokens':>10} {'vllm tokens':>12}"
          f" {'vllm start s':>13} {'threads hf/vllm':>16}")
    for label, r, ratio in rows:
        threads = f"{r['hf_threads']}/{r.get('vllm_threads', '-')}"
        print(f"{label:<28} {r['hf_tok_s']:>9.0f} {r.get('vllm_tok_s', float('nan')):>11.0f} {ratio:>6.2f} "
              f"{r['hf_tokens']:>10} {r.get('vllm_tokens', 0):>12} {r.get('vllm_start_s', float('nan')):>13.1f}"
              f" {threads:>16}")


if __name__ == "__main__":  # vLLM's spawn guard
    main()
