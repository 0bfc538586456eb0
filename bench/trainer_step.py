"""Benchmark: one R²MU step, the naive reference vs `trainables.r2mu` on the same batches.

Naive (the WMDP reference's shape): two full models (the frozen one a deepcopy), each stream through the
whole model and its LM head, h_l read by a forward hook. Ours: `R2MU.loss` (shared no-grad prefix, layers
l-2..l by hand, frozen view = the 3 original tensors, stop at l). Both then `backward` + AdamW on the 3
down_proj tensors. The losses of every timed step must agree (the same weights, batches and updates).

    python bench/trainer_step.py                                  # CPU, small Llama (8 layers, hidden 256)
    python bench/trainer_step.py --device cuda --shape llama8b    # random-init Llama-8B shape, bf16, l=7,15

Needs only torch + transformers (the GPU machine has no Ray/DeepSpeed).
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, nothing installed
from tests.trainables.naive import naive_loss  # noqa: E402
from trainables.prefix_cache import PrefixCache  # noqa: E402
from trainables.r2mu import R2MU, Batch, Weights, control_vector, drop_layers_above  # noqa: E402

SHAPES = {
    "small": dict(hidden_size=256, num_hidden_layers=8, intermediate_size=688, num_attention_heads=4,
                  num_key_value_heads=4, vocab_size=32000),
    "llama8b": dict(hidden_size=4096, num_hidden_layers=32, intermediate_size=14336, num_attention_heads=32,
                    num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0),
}
STREAMS = ("forget", "retain", "unthink", "cot")
W = Weights(alpha=1.4, beta=1.0, gamma=1.0)  # the paper's values for R1-Distill-Llama-8B


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def peak_bytes(device: str) -> int:
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # process peak RSS (Linux: KiB)


def current_bytes(device: str) -> int:
    if device == "cuda":
        return torch.cuda.memory_allocated()
    with open("/proc/self/statm") as f:  # resident pages
        return int(f.read().split()[1]) * resource.getpagesize()


def make_batches(lens: list[int], batch: int, vocab: int, steps: int) -> list[dict[str, Batch]]:
    """Random tokens per step and stream, on the CPU; every row full length (the GPU reference measured it so)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(steps):
        step = {}
        for s, L in zip(STREAMS, lens, strict=True):
            ids = torch.randint(3, vocab, (batch, L), generator=g)
            step[s] = Batch(ids, torch.ones_like(ids))
        out.append(step)
    return out


def run(name: str, step_fn, params: list[torch.nn.Parameter], batches, warmup: int, device: str):
    """Time `step_fn(i, batch) -> loss tensor` + backward + AdamW over `batches`; returns (losses, times)."""
    opt = torch.optim.AdamW(params, lr=7.5e-5)
    losses, times = [], []
    for i, b in enumerate(batches):
        sync(device)
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = step_fn(i, b)
        loss.backward()
        opt.step()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
        losses.append(float(loss.detach()))
    print(f"  {name:5s}: {1e3 * statistics.median(times):8.1f} ms/step (median of {len(times)}), "
          f"peak {peak_bytes(device) / 2**30:.2f} GiB, losses {[f'{x:.6g}' for x in losses]}", flush=True)
    return losses, statistics.median(times), min(times)


def fill_cache(obj: R2MU, cpu_batches, batches, root: str, device: str) -> float:
    """What the first trial at a layer does besides training: compute and write every step's no-grad part.
    Returns ms per step (prepare + the write, which a thread overlaps with the next step)."""
    cache = PrefixCache(root, {"bench": obj.layer}, torch.device(device), max_gb=1e3, log=lambda m: None)
    sync(device)
    t = time.perf_counter()
    for i, (cpu, b) in enumerate(zip(cpu_batches, batches, strict=True)):
        cache.put(i, obj.prepare(b), cpu)
    cache.close()
    sync(device)
    return 1e3 * (time.perf_counter() - t) / len(batches)


def child(model, layer: int, variant: str, args, cpu_batches) -> dict:
    """One variant at one layer in this (fresh) process, so its peak memory is its own."""
    device = args.device
    batches = [{s: x.to(device) for s, x in b.items()} for b in cpu_batches]
    weights = sum(p.numel() * p.element_size() for p in model.parameters())  # the whole model's
    names = [f"model.layers.{i}.mlp.down_proj.weight" for i in range(layer - 2, layer + 1)]
    control = control_vector(model.config.hidden_size, 6.5, seed=0)
    obj = R2MU(model, layer, names, control, W, args.pack_ratio)  # freezes all but the 3 tensors (also naive)
    extra = {}
    if variant in ("ours", "cached"):
        if not args.keep_all_layers:  # what the trainer does: layers above l, the norm and the head are freed
            drop_layers_above(model, layer)
            if device == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
        if args.compile:  # per decoder layer: the trained and the frozen view share the compiled code
            for block in model.model.layers[: layer + 1]:
                block.compile(**({"mode": args.compile_mode} if args.compile_mode else {}))
        step = lambda i, b: obj.loss(b).loss  # noqa: E731
    else:
        frozen = copy.deepcopy(model)  # the reference keeps a whole second model

        def step(i, b):
            return naive_loss(model, frozen, {s: (x.input_ids, x.attention_mask, x.loss_mask)
                                              for s, x in b.items()}, layer, obj.control, W.alpha, W.beta, W.gamma)[0]
    if variant == "cached":  # a later trial at this layer: the no-grad part comes from the cache on disk
        root = tempfile.mkdtemp(prefix="r2mu-bench-cache-", dir=args.cache_dir)
        extra["fill_ms"] = fill_cache(obj, cpu_batches, batches, root, device)
        cache = PrefixCache(root, {"bench": layer}, torch.device(device), max_gb=1e3, log=lambda m: None)

        def step(i, b):
            prepared = cache.get(i, cpu_batches[i], b, obj)
            assert prepared is not None, f"step {i} missing from the cache"
            return obj.loss(b, prepared=prepared).loss

    before = current_bytes(device)  # weights (+ the frozen copy), batches, and on CPU the interpreter
    losses, t, t_min = run(variant, step, list(obj.params.values()), batches, args.warmup, device)
    peak = peak_bytes(device)
    if variant == "cached":
        cache.close()
        shutil.rmtree(root)
    return dict(layer=layer, variant=variant, ms=1e3 * t, ms_min=1e3 * t_min, peak=peak, extra=peak - before,
                weights=weights, losses=losses, **extra)


def main() -> None:
    ap = argparse.ArgumentParser(description="R²MU step: naive reference vs trainables.r2mu")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run (default %(default)s)")
    ap.add_argument("--shape", default="small", choices=list(SHAPES), help="model shape (default %(default)s)")
    ap.add_argument("--layers", type=int, nargs="+", default=None, help="default: 3 5 (small), 7 15 (8b)")
    ap.add_argument("--batch", type=int, default=4, help="examples per stream per step (default %(default)s)")
    ap.add_argument("--lens", type=int, nargs=4, default=[512, 512, 110, 150], metavar=("F", "R", "U", "C"),
                    help="tokens per forget, retain, unthink and CoT example (default 512 512 110 150)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default: 3 on CPU, 10 on GPU)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed first steps (default: 1 CPU, 3 GPU)")
    ap.add_argument("--dtype", default=None, help="default: float32 on CPU, bfloat16 on GPU")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads")
    ap.add_argument("--compile", action="store_true", help="torch.compile each decoder layer (ours only)")
    ap.add_argument("--keep-all-layers", action="store_true", help="ours keeps the layers above l resident")
    ap.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune-no-cudagraphs")
    ap.add_argument("--pack-ratio", type=float, default=0.75, help="streams within this length ratio share a batch")
    ap.add_argument("--prefix-cache", action="store_true",
                    help="also time 'cached': a later trial at the layer, the no-grad part read from a disk cache")
    ap.add_argument("--cache-dir", default=None, help="where --prefix-cache writes (default: the temp dir)")
    ap.add_argument("--only", choices=["ours", "naive", "cached"], default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    gpu = args.device == "cuda"
    args.layers = args.layers or ([7, 15] if args.shape == "llama8b" else [3, 5])
    args.steps = args.steps or (10 if gpu else 3)
    args.warmup = args.warmup if args.warmup is not None else (3 if gpu else 1)
    dtype = getattr(torch, args.dtype or ("bfloat16" if gpu else "float32"))
    torch.set_num_threads(args.threads)

    if args.only is None:  # parent: one fresh process per (layer, variant), then compare
        variants = ["naive", "ours"] + (["cached"] if args.prefix_cache else [])
        rows, gib = [], 2**30
        for layer in args.layers:
            res = {}
            for variant in variants:
                cmd = [sys.executable, __file__, *sys.argv[1:], "--only", variant, "--layers", str(layer)]
                out = subprocess.run(cmd, capture_output=True, text=True)
                print(out.stdout, end="", flush=True)
                if out.returncode:
                    sys.exit(out.stderr)
                res[variant] = json.loads(out.stdout.split("RESULT ")[-1])
            n = res["naive"]
            diff = max(abs(a - b) / abs(b) for v in variants[1:]
                       for a, b in zip(res[v]["losses"], n["losses"], strict=True))
            if args.prefix_cache:  # the cache hands back the very tensors `ours` computes: expect 0 or bf16 noise
                same = max(abs(a - b) / abs(b) for a, b in zip(res["cached"]["losses"], res["ours"]["losses"],
                                                               strict=True))
                print(f"layer {layer}: cached vs ours, max loss rel diff {same:.1e}")
            cells = [str(layer), f"{n['ms']:.1f} ({n['ms_min']:.1f})"]
            for v in variants[1:]:
                r = res[v]
                cells += [f"{r['ms']:.1f} ({r['ms_min']:.1f})",
                          f"{n['ms'] / r['ms']:.2f}x ({n['ms_min'] / r['ms_min']:.2f}x)"]
            if args.prefix_cache:
                cells.append(f"{res['cached']['fill_ms']:.1f}")
            cells += [f"{n['peak'] / gib:.2f}"] + [f"{res[v]['peak'] / gib:.2f} ({res[v]['peak'] / n['weights']:.2f}x)"
                                                   for v in variants[1:]]
            cells += [f"{res[v]['extra'] / gib:.2f}" for v in variants] + [f"{diff:.1e}"]
            rows.append("| " + " | ".join(cells) + " |")
            tol = 1e-4 if (args.dtype or ("bfloat16" if gpu else "float32")) == "float32" else 3e-2
            if diff > tol:
                sys.exit(f"layer {layer}: losses differ, max rel diff {diff:.2e} > {tol}")
        mem = "GPU max allocated" if gpu else "process peak RSS"
        print(f"\nweights {n['weights'] / gib:.2f} GiB; peak = {mem}; step = peak minus memory just before the "
              "first step (activations, grads, optimizer state; the naive frozen copy is counted before)")
        head = ["layer", "naive ms median (min)"]
        for v in variants[1:]:
            head += [f"{v} ms median (min)", f"{v} speed-up"]
        if args.prefix_cache:
            head.append("cache fill ms/step")
        head += ["naive peak GiB"] + [f"{v} peak GiB (/ weights)" for v in variants[1:]]
        head += [f"{v} step GiB" for v in variants] + ["loss rel diff"]
        print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
        print("\n".join(rows))
        return

    cfg = LlamaConfig(**SHAPES[args.shape], max_position_embeddings=4096, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(args.device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()
    layer = args.layers[0]
    print(f"{args.shape} Llama ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, {dtype}) on "
          f"{torch.cuda.get_device_name() if gpu else 'cpu'}; layer {layer}, batch {args.batch}, streams "
          f"{args.lens} tokens, {args.steps} timed + {args.warmup} warm-up steps", flush=True)
    batches = make_batches(args.lens, args.batch, cfg.vocab_size, args.steps + args.warmup)
    print("RESULT " + json.dumps(child(model, layer, args.only, args, batches)), flush=True)


if __name__ == "__main__":
    main()
