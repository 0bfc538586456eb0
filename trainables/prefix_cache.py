"""The sweep-wide cache of a step's no-grad work (`R2MU.prepare`): the shared prefix and the frozen targets.

Every trial of a sweep at layer l sees the same batch at step i (same data, seed, batch size and workers), and
the part of its step that depends only on the base weights is the same in all of them: h after layer l-3 on
every row, and the frozen model's h_l on the retain and CoT rows. At Llama-8B's layer 7 that is about half
of a step's work, at layer 15 two thirds. The first trial at a layer writes it, one file per step; the next
ones read it (a thread reads the next step ahead and, on a GPU, copies it there on a side stream, overlapping
the current step) and run only the trained view. Writing, too, copies off the GPU on a side stream.

    <dir>/<key>/key.json                   what the key is made of, readable
    <dir>/<key>/step-000012.safetensors    per group g of streams: "g.prefix", "g.target.<stream>";
                                           metadata: the groups and a CRC of their token ids and masks

The key hashes everything those tensors depend on (`key_parts`): the model (path, its files' sizes and
mtimes, dtype, updated tensors), layer, device type, compile, the data config and its files' sizes and
mtimes, the trace file's content, seed, batch size, rank and world size, the active streams, the library
versions. A step file whose CRC does not match the batch is ignored. Files are written under a temp name
and renamed, so a crash or a concurrent trial never leaves half a step; past `max_gb` the least recently
used other keys are evicted, then writing stops. The cache only saves work: any failure in it is a warning
and the step is computed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
import time
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from trainables.r2mu import R2MU, Batch, Prepared, group_by_length, pad_cat

if TYPE_CHECKING:  # the benchmark runs where pydantic may be missing
    from trainables.config import TrialSpec

FORMAT = "r2mu-prefix/1"
STALE_TMP_S = 3600


def stamp(path: str | None) -> list | str | None:
    """Cheap identity of a file or directory: (name, size, mtime) of each file. A hub id stands for the
    snapshot the local HF cache resolves it to (a new revision is a new key); anything else as it is."""
    if path is None:
        return None
    if not Path(path).exists():
        return _hub_snapshot(path) or path
    p = Path(path)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    return [[str(f.relative_to(p)) if p.is_dir() else str(p.resolve()), f.stat().st_size, f.stat().st_mtime_ns]
            for f in files]


def _hub_snapshot(repo_id: str) -> list | None:
    """The stamp of the snapshot directory that `repo_id` loads from in the local HF cache, if any."""
    from huggingface_hub import try_to_load_from_cache

    try:
        config = try_to_load_from_cache(repo_id, "config.json", cache_dir=os.environ.get("HF_HUB_CACHE"))
    except Exception:  # not a valid repo id
        return None
    if not isinstance(config, str):
        return None
    snapshot = Path(config).parent  # .../models--org--name/snapshots/<commit>/
    return [snapshot.name, stamp(str(snapshot))]


def key_parts(spec: TrialSpec, rank: int, world: int, active: list[str], device: torch.device,
              pack_ratio: float) -> dict:
    """What the cached tensors of one trial's steps depend on (not lr, steps, c or the loss weights)."""
    import transformers

    d = spec.data
    return {
        "format": FORMAT,
        "model": {"path": spec.model.path, "files": stamp(spec.model.path), "dtype": spec.model.dtype,
                  "updated": spec.model.param_names(spec.hparams.layer)},
        "layer": spec.hparams.layer, "device": device.type, "compile": spec.train.compile,
        # the loss masks are not in the cached tensors (a step rebuilds its batch's masks): trials with and
        # without data.skip_first_position share the cache, and older keys stay valid
        "data": d.model_dump(exclude={"skip_first_position"}),
        "data_files": {s: stamp(p) for s, p in [("forget", d.forget.path), ("retain", d.retain.path),
                                                  ("cot", d.cot.path)]},
        # by content: each node holds its own copy of the trace file (sweep.lifecycle.node_traces)
        "traces": hashlib.sha256(Path(spec.traces_path).read_bytes()).hexdigest() if spec.traces_path else None,
        "seed": spec.train.seed, "batch_size": spec.train.batch_size, "rank": rank, "world": world,
        "active": active, "pack_ratio": pack_ratio,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }


def _crc(group: list[str], batches: dict[str, Batch]) -> str:
    c = 0
    for s in group:
        for t in (batches[s].input_ids, batches[s].attention_mask):
            c = zlib.crc32(t.to("cpu", torch.int64).contiguous().numpy().tobytes(), c)
    return str(c)


def _host(t: torch.Tensor) -> torch.Tensor:
    """A CPU copy with its own storage (safetensors refuses views that share one)."""
    return t.detach().clone()


class PrefixCache:
    """`get(step)` -> the step's `Prepared` list or None; `put` after computing it; `close` at the end."""

    def __init__(self, root: str | Path, parts: dict, device: torch.device, max_gb: float, log=print):
        self.root, self.device, self.max_bytes, self.log = Path(root), device, int(max_gb * 2**30), log
        key = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]
        self.dir = self.root / key
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f"key.json.tmp{os.getpid()}"
        tmp.write_text(json.dumps(parts, indent=1, default=str))
        tmp.replace(self.dir / "key.json")  # also marks the key as the most recently used
        for f in self.dir.glob("*.tmp*"):  # left by a killed trial (a live writer renames within seconds)
            with contextlib.suppress(OSError):
                if time.time() - f.stat().st_mtime > STALE_TMP_S:
                    f.unlink()
        self.used = sum(f.stat().st_size for f in self.root.rglob("*.safetensors"))
        self.hits = self.misses = self.written = 0
        self.full = False
        self._lock = threading.Lock()
        self._reader, self._writer = ThreadPoolExecutor(1), ThreadPoolExecutor(1)
        self._ahead: dict[int, Future] = {}
        self._writes: deque[Future] = deque()
        cuda = device.type == "cuda"
        self._h2d_stream = torch.cuda.Stream(device) if cuda else None  # reads: to the GPU
        self._d2h_stream = torch.cuda.Stream(device) if cuda else None  # writes: off it

    def path(self, step: int) -> Path:
        return self.dir / f"step-{step:06d}.safetensors"

    # --- reading -----------------------------------------------------------------------------------------
    def _read(self, step: int) -> tuple[dict, dict, torch.cuda.Event | None] | None:
        try:
            with safe_open(str(self.path(step)), framework="pt") as f:
                meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
        except FileNotFoundError:
            return None
        except Exception as e:  # a damaged file: recompute (and overwrite it)
            self.log(f"[prefix-cache] step {step}: unreadable ({e}); computing it")
            return None
        event = None
        if self.device.type == "cuda":  # copy to the GPU here, on a side stream: it overlaps the step before
            with torch.cuda.stream(self._h2d_stream):
                tensors = {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in tensors.items()}
                event = torch.cuda.Event()
                event.record()
        return meta, tensors, event

    def _prefetch(self, step: int) -> None:
        if step not in self._ahead:
            self._ahead[step] = self._reader.submit(self._read, step)

    def get(self, step: int, cpu: dict[str, Batch], batches: dict[str, Batch], obj: R2MU) -> list[Prepared] | None:
        """The cached no-grad part of `step` (`cpu`: the batches before they moved to the device, for the CRC)."""
        self._prefetch(step)
        got = self._ahead.pop(step).result()
        self._prefetch(step + 1)
        groups = group_by_length({s: batches[s] for s in obj.active()}, obj.pack_ratio)
        if got is None or json.loads(got[0].get("groups", "null")) != groups \
                or json.loads(got[0].get("crc", "null")) != [_crc(g, cpu) for g in groups]:
            self.misses += 1
            return None
        meta, tensors, event = got
        if event is not None:  # the step waits for the side-stream copy; the allocator learns who uses them
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(event)
            for t in tensors.values():
                t.record_stream(stream)
        self.hits += 1
        return [Prepared(g, pad_cat([batches[s] for s in g]), tensors[f"{i}.prefix"],
                         {s: tensors[f"{i}.target.{s}"] for s in g if f"{i}.target.{s}" in tensors})
                for i, g in enumerate(groups)]

    # --- writing -----------------------------------------------------------------------------------------
    def put(self, step: int, prepared: list[Prepared], cpu: dict[str, Batch]) -> None:
        """Write the step in the background (at most two steps queued, so host memory stays bounded)."""
        if self.full:
            return
        while len(self._writes) >= 2:
            self._writes.popleft().result()
        tensors = {f"{i}.prefix": p.prefix for i, p in enumerate(prepared)}
        tensors |= {f"{i}.target.{s}": t for i, p in enumerate(prepared) for s, t in p.targets.items()}
        meta = {"groups": json.dumps([p.streams for p in prepared]),
                "crc": json.dumps([_crc(p.streams, cpu) for p in prepared])}
        copied = None
        if self.device.type == "cuda":  # into pinned memory on a side stream: the step goes on meanwhile
            self._d2h_stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self._d2h_stream):
                host = {k: torch.empty(v.shape, dtype=v.dtype, pin_memory=True).copy_(v, non_blocking=True)
                        for k, v in tensors.items()}
                copied = torch.cuda.Event()
                copied.record()
            for v in tensors.values():  # not reused by the allocator before the copy has read them
                v.record_stream(self._d2h_stream)
            tensors = host
        self._writes.append(self._writer.submit(self._write, step, tensors, meta, copied))

    def _write(self, step: int, tensors: dict[str, torch.Tensor], meta: dict,
               copied: torch.cuda.Event | None) -> None:
        try:
            if copied is not None:
                copied.synchronize()
                host = tensors  # fresh pinned tensors, each its own storage
            else:
                host = {k: _host(v) for k, v in tensors.items()}
            size = sum(v.numel() * v.element_size() for v in host.values())
            with self._lock:
                if self.used + size > self.max_bytes:
                    self._evict(size)
                if self.used + size > self.max_bytes:
                    self.full = True
                    self.log(f"[prefix-cache] {self.root} is full ({self.max_bytes / 2**30:.1f} GiB, "
                             "train.prefix_cache.max_gb): later steps are not cached")
                    return
            self.dir.mkdir(parents=True, exist_ok=True)  # another trial may have evicted this key
            tmp = self.path(step).with_suffix(f".tmp{os.getpid()}")
            save_file(host, str(tmp), metadata=meta)
            tmp.replace(self.path(step))
            with self._lock:
                self.used += size
                self.written += 1
        except OSError as e:  # disk full, permissions, an evicted directory: the trial goes on uncached
            self.full = True
            self.log(f"[prefix-cache] cannot write {self.path(step)} ({e}); later steps are not cached")

    def _evict(self, need: int) -> None:
        """Remove the least recently used other keys until `need` more bytes fit."""
        others = sorted((d for d in self.root.iterdir() if d.is_dir() and d != self.dir),
                        key=lambda d: (d / "key.json").stat().st_mtime if (d / "key.json").exists() else 0)
        for d in others:
            if self.used + need <= self.max_bytes:
                break
            freed = sum(f.stat().st_size for f in d.glob("*.safetensors"))
            shutil.rmtree(d, ignore_errors=True)
            self.used -= freed
            self.log(f"[prefix-cache] evicted {d.name} ({freed / 2**30:.2f} GiB)")

    def close(self) -> dict:
        """Finish the writes, drop the read-ahead; the counts (also logged)."""
        while self._writes:
            self._writes.popleft().result()
        for f in self._ahead.values():
            f.cancel()
        self._reader.shutdown(wait=True)
        self._writer.shutdown(wait=True)
        stats = {"hits": self.hits, "misses": self.misses, "written": self.written}
        self.log(f"[prefix-cache] {self.dir}: {self.hits} steps read, {self.written} written, "
                 f"{self.used / 2**30:.2f} GiB in {self.root}")
        return stats


def describe(root: str | Path) -> list[dict]:
    """One row per key under `root`: layer, model, steps cached, size, last used (for `python -m ...`)."""
    rows = []
    for d in sorted(p for p in Path(root).iterdir() if p.is_dir()) if Path(root).is_dir() else []:
        key = d / "key.json"
        parts = json.loads(key.read_text()) if key.exists() else {}
        steps = list(d.glob("step-*.safetensors"))
        rows.append({"key": d.name, "layer": parts.get("layer"), "model": parts.get("model", {}).get("path"),
                     "steps": len(steps), "gib": sum(f.stat().st_size for f in steps) / 2**30,
                     "last_used": key.stat().st_mtime if key.exists() else None})
    return rows


def main(argv: list[str] | None = None) -> int:
    import argparse

    from trainables.config import PrefixCacheConfig

    ap = argparse.ArgumentParser(prog="python -m trainables.prefix_cache",
                                 description="List what a prefix cache holds (remove a key's directory to drop it).")
    ap.add_argument("dir", nargs="?", default=PrefixCacheConfig().root(),
                    help="the cache directory (default: the node-local default)")
    args = ap.parse_args(argv)
    rows = describe(args.dir)
    if not rows:
        print(f"{args.dir}: empty")
        return 0
    print(f"{'key':<22}{'layer':>6}{'steps':>7}{'GiB':>8}  {'last used':<17}model")
    for r in sorted(rows, key=lambda r: -(r["last_used"] or 0)):
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["last_used"])) if r["last_used"] else "?"
        print(f"{r['key']:<22}{r['layer']!s:>6}{r['steps']:>7}{r['gib']:>8.2f}  {used:<17}{r['model']}")
    print(f"total {sum(r['gib'] for r in rows):.2f} GiB in {args.dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
