"""What the attacks of `eval.attacks` cost per trial, against the trial's test-split evaluation, in one run.

    .venv/bin/python bench/attack_cost.py [--space search_spaces/organism.yaml] [--backend auto] [--threads 1]

One evaluator (sweep/evaluator.py, the engine a sweep uses, vLLM where it imports) on the space's base model
evaluates the test split twice (the first warms the engine; the second, timed, is the reference), then runs
each attack of the space's eval.attacks (or, where it has none, `DEFAULT_ATTACKS` and two relearn attacks on
its forget and retain streams) on the same split. Printed: seconds per attack, its ratio to the test-split
evaluation, and the total. The base model stands in for a trial: an attack's work (fine-tune, rounding,
generation, probe) does not depend on the weights (orthogonalize finds no direction on it and skips the swap).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The default attacks; relearn's texts are the space's forget stream (forget-domain) and retain stream.
DEFAULT_ATTACKS = {
    "int8": {"kind": "quantize", "bits": 8},
    "int4": {"kind": "quantize", "bits": 4},
    "zerothink": {"kind": "decode", "mode": "zerothink"},
    "lessthink": {"kind": "decode", "mode": "lessthink"},
    "think16": {"kind": "decode", "mode": "budget", "budget": 16},
    "no_trigger": {"kind": "decode", "mode": "no_trigger"},
    "probe": {"kind": "probe"},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="search_spaces/organism.yaml")
    ap.add_argument("--backend", default=None, help="override eval.backend (auto, vllm, hf)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the evaluator (a sweep's engine: 1)")
    ap.add_argument("--weights-only", action="store_true", help="time only the weight computation of each attack "
                    "that changes the weights (eval/attack_weights.py; no engine, no generation)")
    args = ap.parse_args()

    import os

    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    from eval.paths import resolve_uri
    from sweep.evaluator import Evaluator
    from sweep.space.config import load_space

    cfg = load_space(args.space)
    attacks = dict(cfg.eval.attacks) or {
        **{"relearn_forget": {"kind": "relearn", "path": cfg.data.forget.path, "field": cfg.data.forget.field},
           "relearn_benign": {"kind": "relearn", "path": cfg.data.retain.path, "field": cfg.data.retain.field}},
        **DEFAULT_ATTACKS}
    raw = cfg.eval.model_dump() | {"attacks": attacks}
    if args.weights_only:
        return weights_only(cfg.model.path, raw)
    if args.backend:
        raw["backend"] = args.backend
    evaluator = Evaluator(resolve_uri(cfg.model.path), raw, cfg.model.dtype)
    try:
        evaluator.evaluate(None, "test")  # warms the engine (a sweep's engine is warm by its final evaluation)
        t0 = time.perf_counter()
        ref = evaluator.evaluate(None, "test")
        ref_s = time.perf_counter() - t0
        print(f"{cfg.name}: {cfg.model.path}, backend {evaluator.backend.name}, {args.threads} thread(s); forget "
              f"test split {int(ref['metrics']['trace_leak_n'])} items")
        print(f"{'test-split evaluation (reference)':<36}{ref_s:8.1f} s   1.00x")
        total = 0.0
        for name in evaluator.cfg.attacks:
            t1 = time.perf_counter()
            evaluator.attack(None, [name], "test")
            s = time.perf_counter() - t1
            total += s
            label = f"{name} ({evaluator.cfg.attacks[name].kind})"
            print(f"{label:<36}{s:8.1f} s  {s / ref_s:5.2f}x", flush=True)
        print(f"{'all attacks':<36}{total:8.1f} s  {total / ref_s:5.2f}x")
    finally:
        evaluator.close()
    return 0


def weights_only(model_path: str, raw: dict) -> int:
    """Seconds of each weight attack's own work on the base model (model load included), no engine."""
    from eval.attack_weights import orthogonalized_weights, quantized_weights, read_texts, relearned_weights
    from eval.config import EvalConfig

    attacks = EvalConfig.model_validate(raw).attacks
    for name, attack in attacks.items():
        t0 = time.perf_counter()
        if attack.kind == "quantize":
            quantized_weights(model_path, None, attack)
        elif attack.kind == "relearn":
            relearned_weights(model_path, None, attack, read_texts(attack.path, attack.field, attack.examples, name), 0)
        elif attack.kind == "orthogonalize":
            orthogonalized_weights(model_path, None, attack, read_texts(attack.path, attack.field, attack.examples,
                                                                        name))
        else:
            continue
        print(f"{name} ({attack.kind}): {time.perf_counter() - t0:.2f} s for the weights", flush=True)
    return 0


if __name__ == "__main__":  # vLLM spawns engine processes: the guard keeps them from re-running this
    raise SystemExit(main())
