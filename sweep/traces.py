"""Once per sweep, before the trials: the base model's reasoning traces and its activation scale.

Both are cached under `<storage>/cache/` keyed by what they depend on, so a rerun or a resumed sweep reuses
them: traces by (model, data file, trigger, length, prompt form), the median ||h_l|| by (model, forget data, layer).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from eval.paths import resolve_uri
from sweep.space.config import SweepConfig, local_storage


def _file_digest(path: str) -> str:
    p = Path(path)
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(p.rglob("*")):
            if f.is_file():
                h.update(f.name.encode() + f.read_bytes())
        return h.hexdigest()
    return hashlib.sha256(p.read_bytes()).hexdigest()


def model_digest(model_path: str) -> str:
    """The model's identity for cache keys: its config and weight files' sizes and names (cheap)."""
    p = Path(model_path)
    if not p.is_dir():
        return model_path  # a hub id on a cluster
    h = hashlib.sha256((p / "config.json").read_bytes())
    for f in sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin")):
        h.update(f"{f.name}:{f.stat().st_size}:{int(f.stat().st_mtime)}".encode())
    return h.hexdigest()


def cache_dir(cfg: SweepConfig) -> Path:
    """`<storage>/cache` for local storage; with remote storage a directory on the driver's node (the trace
    file travels to the trials through Ray's object store, `lifecycle.SweepContext`)."""
    local = local_storage(cfg)
    if local is not None:
        return local / "cache"
    return Path(os.environ.get("R2MU_CACHE") or Path.home() / ".cache" / "r2mu-sweep") / cfg.name


def prefix_cache_dir(cfg: SweepConfig) -> str | None:
    """Where trials keep the prefix cache: train.prefix_cache.dir; else beside the other caches when the
    storage is this machine's (a plain path); else None: the node-local default, which the trainer resolves
    on its own node (shared or remote storage is too slow for 61 MiB per step)."""
    pc = cfg.train.prefix_cache
    if pc.dir is None and "://" not in cfg.ray.storage_path:
        return str(cache_dir(cfg) / "prefix")
    return pc.dir


def trace_source(cfg: SweepConfig) -> tuple[str, str]:
    """(file, field) of the questions the traces are generated on: data.traces.source, else data.forget."""
    t = cfg.data.traces
    if t.source:
        return resolve_uri(t.source), t.field
    return resolve_uri(cfg.data.forget.path), cfg.data.forget.field


def traces_key(cfg: SweepConfig) -> str:
    """The trace cache's key: model, data file and field, trigger, length, limit, and the form (data.traces
    template, prompt_tokens, input) where it is not the default, so a cache written before those fields existed
    keeps its key and a changed form never reuses old traces."""
    src, field = trace_source(cfg)
    t = cfg.data.traces
    parts: list = [model_digest(resolve_uri(cfg.model.path)), _file_digest(src), field, t.trigger,
                   t.max_new_tokens, t.limit]
    form = {"template": t.template, "prompt_tokens": t.prompt_tokens, "input": t.input}
    form = {k: v for k, v in form.items() if v != type(t).model_fields[k].default}
    if form:
        parts.append(form)
    key = json.dumps(parts)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def traces_path(cfg: SweepConfig) -> Path:
    return cache_dir(cfg) / f"traces-{traces_key(cfg)}.jsonl"


def ensure_traces(cfg: SweepConfig, evaluator: Any, call=lambda f, *a: f(*a)) -> Path:
    """The cached trace file, generated through the evaluator's backend if missing.

    `call` runs a method of the evaluator: directly (`sweep.single_trial`) or as `ray.get(actor.m.remote(...))`.
    """
    from trainables.data import read_rows

    out = traces_path(cfg)
    if out.exists():
        print(f"traces: cached {out}")
        return out
    src, field = trace_source(cfg)
    t = cfg.data.traces
    rows = read_rows(src, [field], t.limit, what="data.traces")
    for i, r in enumerate(rows):
        r.setdefault("id", str(i))
    print(f"traces: generating {len(rows)} base-model traces ({t.max_new_tokens} tokens, template {t.template}) "
          f"-> {out}")
    # in about ten chunks, so a long generation (minutes on a CPU) shows progress; then one atomic write
    chunk, t0, parts = max(64, -(-len(rows) // 10)), time.monotonic(), []
    for start in range(0, len(rows), chunk):
        parts.append(call(evaluator.traces, rows[start:start + chunk], field, t.trigger, t.max_new_tokens,
                          t.template, t.prompt_tokens))
        print(f"traces: {min(start + chunk, len(rows))}/{len(rows)} ({time.monotonic() - t0:.0f} s)", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp_out.write_text("".join(parts), encoding="utf-8")
    tmp_out.replace(out)
    return out


def activation_scales(cfg: SweepConfig, layers: list[int], n_batches: int = 4) -> dict[int, float]:
    """Median ||h_l|| of the base model on forget data for each layer (cached; for steering_rel)."""
    key = hashlib.sha256(json.dumps([model_digest(resolve_uri(cfg.model.path)),
                                     _file_digest(resolve_uri(cfg.data.forget.path)), cfg.data.forget.field,
                                     cfg.data.max_len, cfg.model.dtype, n_batches]).encode()).hexdigest()[:16]
    path = cache_dir(cfg) / f"activation-{key}.json"
    cached = {int(k): v for k, v in json.loads(path.read_text()).items()} if path.exists() else {}
    missing = [layer for layer in layers if layer not in cached]
    if missing:
        cached.update(_measure_scales(cfg, missing, n_batches))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({str(k): v for k, v in sorted(cached.items())}))
        tmp.replace(path)
    return {layer: cached[layer] for layer in layers}


def _measure_scales(cfg: SweepConfig, layers: list[int], n_batches: int) -> dict[int, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainables.data import read_records
    from trainables.r2mu import Batch, activation_scale

    path = resolve_uri(cfg.model.path)
    dtype = getattr(torch, cfg.model.dtype)
    device = "cuda" if cfg.train.use_gpu and torch.cuda.is_available() else "cpu"
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype,
                                                 trust_remote_code=cfg.model.trust_remote_code).to(device).eval()
    texts = read_records(resolve_uri(cfg.data.forget.path), cfg.data.forget.field,
                         n_batches * cfg.train.batch_size, what="data.forget")
    batches = []
    for i in range(0, len(texts), cfg.train.batch_size):
        enc = tok(texts[i:i + cfg.train.batch_size], return_tensors="pt", padding=True, truncation=True,
                  max_length=cfg.data.max_len, padding_side="right")
        mask = enc["attention_mask"]
        batches.append(Batch(enc["input_ids"].to(device), mask.to(device), mask.to(device)))
    with torch.no_grad():
        scales = {layer: activation_scale(model, batches, layer) for layer in layers}
    print("activation scale (median ||h_l|| on forget data): "
          + ", ".join(f"l{k}={v:.3g}" for k, v in scales.items()))
    return scales
