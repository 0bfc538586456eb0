"""The dry run opens every file of the model a sweep will read, cheaply.

Called from `sweep.space.checks` (so `--dry-run`, the real run and `sweep.single_trial` refuse alike, before any MLflow
run or Ray): the model directory (the trainer's architecture check on the meta model, the evaluation backend's
architectures, each weights file's header against the meta model, the tokenizer). Only headers are read: no
weights are loaded. Each problem raises `ConfigError` naming the field and the fix. The places a sweep writes
are checked in `sweep.space.stores`.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import math
from pathlib import Path
from typing import Any

from sweep.space.config import ConfigError, SweepConfig

# safetensors dtypes -> bytes per element; the trainer loads float weights and casts them to model.dtype
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8,
               "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1}
FLOAT_DTYPES = ("F32", "BF16", "F16", "F64")
MAX_HEADER = 100 * 2**20  # the safetensors library's own limit
TOKENIZER_JSON = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                  "vocab.json")


def _refuse(field: str, msg: str) -> ConfigError:
    return ConfigError(field.split(".")[0], [(field, msg)])


# ---------------------------------------------------------------- the model

def check_model_files(cfg: SweepConfig, path: str, model: Any, local: bool) -> None:
    """Architecture (trainer, eval backend), then, for a local directory, weights and tokenizer."""
    check_architecture(cfg, path, model)
    if local:
        check_weights(Path(path), model)
        check_tokenizer(cfg, Path(path))


def check_architecture(cfg: SweepConfig, path: str, model: Any) -> None:
    """The trainer's own check (`trainables.checks`) on the meta model for every layer the space can pick,
    and, where the evaluation runs on vLLM, that vLLM knows the architecture."""
    from trainables.checks import TrainerConfigError, check_model_against_config

    layers = sorted({int(v) for v in cfg.search.space["layer"].candidates()})
    try:
        check_model_against_config(model, cfg.model, layers)
    except TrainerConfigError as e:
        field, _, msg = str(e).partition(": ")
        field = {"hparams.layer": "search.space.layer"}.get(field, field)
        raise _refuse(field, f"{path}: {msg}") from None
    backend = cfg.eval.backend
    if backend == "hf":
        return
    installed = importlib.util.find_spec("vllm") is not None  # finds the package without importing it (~5 s)
    if not installed:
        if backend == "vllm" and cfg.ray.address in (None, "local"):
            raise _refuse("eval.backend", "vllm, but vLLM is not installed here; use eval.backend: hf (or auto: "
                          "vLLM where it imports, else transformers)")
        return  # auto: transformers here; a cluster's nodes may have vLLM (checked there)
    archs = list(getattr(model.config, "architectures", None) or [type(model).__name__])
    known = vllm_architectures(slow_ok=backend == "vllm")
    if known is None or getattr(model.config, "auto_map", None):  # custom code: vLLM resolves it on its own
        return
    if not any(a in known or _transformers_backend_ok(a) for a in archs):
        why = "vllm" if backend == "vllm" else "auto (vLLM where it imports, as it does here)"
        raise _refuse("eval.backend", f"{why}, but vLLM does not support the architecture {', '.join(archs)} of "
                      f"{path} (config.json `architectures`); use eval.backend: hf")


def vllm_architectures(slow_ok: bool = False) -> set[str] | None:
    """The architectures vLLM's registry serves, as `vllm.ModelRegistry.get_supported_archs()` lists them, read
    from its registry module's source (importing vLLM costs 5-15 s). None when that file has another layout
    and `slow_ok` is false (then the import is the fallback)."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        return None
    registry = Path(next(iter(spec.submodule_search_locations))) / "model_executor" / "models" / "registry.py"
    try:
        tree = ast.parse(registry.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        tree = None
    dicts: dict[str, ast.Dict] = {}  # module-level `NAME = {...}` literals
    for node in tree.body if tree else []:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Dict)):
            dicts[node.targets[0].id] = node.value
    archs: set[str] = set()
    union = dicts.get("_VLLM_MODELS")  # {**_TEXT_GENERATION_MODELS, **_EMBEDDING_MODELS, ...}
    for key, value in zip(union.keys, union.values, strict=True) if union else ():
        if key is None and isinstance(value, ast.Name) and value.id in dicts:  # a **spread of another dict
            archs |= {k.value for k in dicts[value.id].keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
        elif isinstance(key, ast.Constant) and isinstance(key.value, str):
            archs.add(key.value)
    if archs:
        return archs
    if not slow_ok:
        return None
    try:
        from vllm import ModelRegistry

        return set(ModelRegistry.get_supported_archs())
    except Exception:  # noqa: BLE001 - a vLLM that does not import: the evaluator reports it at start
        return None


def _transformers_backend_ok(arch: str) -> bool:
    """vLLM serves an architecture outside its registry through its Transformers backend when transformers
    has the class and the class can switch its attention implementation (vLLM's `_try_resolve_transformers`)."""
    import transformers

    cls = getattr(transformers, arch, None)
    try:
        return cls is not None and bool(cls.is_backend_compatible() or cls._can_set_attn_implementation())
    except Exception:  # noqa: BLE001 - not a model class, or another transformers version
        return False


def weight_files(d: Path) -> tuple[str, list[Path]]:
    """("safetensors" | "bin", the files transformers would load) of a model directory, in its order."""
    for kind, single, index in (("safetensors", "model.safetensors", "model.safetensors.index.json"),
                                ("bin", "pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (d / single).is_file():
            return kind, [d / single]
        if (d / index).exists():
            try:
                shards = sorted(set(json.loads((d / index).read_text(encoding="utf-8"))["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise _refuse("model.path", f"{d / index} is not a weights index (JSON with a weight_map): "
                              f"{type(e).__name__}: {e}; copy the model again") from None
            missing = [s for s in shards if not (d / s).is_file()]
            if missing:
                raise _refuse("model.path", f"{d / index} names {len(missing)} shard(s) that are not in {d}: "
                              f"{', '.join(missing[:3])}; copy the model again")
            return kind, [d / s for s in shards]
    others = sorted(f.name for f in d.glob("*") if f.suffix in (".safetensors", ".bin", ".pt", ".gguf"))
    raise _refuse("model.path", f"{d} has no weights file (model.safetensors, model.safetensors.index.json or "
                  f"pytorch_model.bin){'; found ' + ', '.join(others) if others else ''}: give the directory "
                  "save_pretrained wrote")


def safetensors_tensors(f: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{name: (dtype, shape)} from a safetensors file's header; ConfigError if the header is unreadable, a
    tensor's byte range does not match its shape, or the file is not exactly as long as the header says."""
    size = f.stat().st_size
    with f.open("rb") as fh:
        head = fh.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 0 or n > min(size - 8, MAX_HEADER):
            raise _refuse("model.path", f"{f} is truncated or not a safetensors file ({size} bytes; its first 8 "
                          f"bytes give a header of {n} bytes); copy the model again")
        try:
            header = json.loads(fh.read(n))
        except ValueError as e:
            raise _refuse("model.path", f"{f}: its header is not JSON ({e}): a corrupt or truncated file; copy "
                          "the model again") from None
    if not isinstance(header, dict):
        raise _refuse("model.path", f"{f}: its header is not a JSON object: not a safetensors file")
    out, end = {}, 0
    for name, t in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape = t["dtype"], tuple(int(x) for x in t["shape"])
            begin, stop = (int(x) for x in t["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise _refuse("model.path", f"{f}: the header's entry for {name!r} is not dtype/shape/data_offsets; "
                          "a corrupt file: copy the model again") from None
        if dtype in DTYPE_BYTES and stop - begin != math.prod(shape) * DTYPE_BYTES[dtype]:
            raise _refuse("model.path", f"{f}: tensor {name!r} ({dtype} {list(shape)}) spans {stop - begin} bytes "
                          f"in the header, not {math.prod(shape) * DTYPE_BYTES[dtype]}: a corrupt file")
        out[name], end = (dtype, shape), max(end, stop)
    if size != 8 + n + end:
        raise _refuse("model.path", f"{f} is {size} bytes, but its header describes 8 + {n} + {end} = "
                      f"{8 + n + end} bytes: the file is {'truncated' if size < 8 + n + end else 'longer'} "
                      "(an interrupted copy or download?); copy the model again")
    return out


def bin_tensors(f: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{name: (dtype, shape)} of a torch.save'd state dict, memory-mapped onto the meta device (no weights)."""
    import torch

    names = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
    try:
        sd = torch.load(f, mmap=True, weights_only=True, map_location="meta")
    except Exception as e:  # noqa: BLE001 - truncated zip, not a state dict, a legacy (non-zip) file
        raise _refuse("model.path", f"{f} does not open as a state dict ({str(e).splitlines()[0]}): a corrupt or "
                      "truncated file; copy the model again (or save it as safetensors)") from None
    return {k: (names.get(v.dtype, str(v.dtype).removeprefix("torch.")), tuple(v.shape))
            for k, v in sd.items() if isinstance(v, torch.Tensor)}


def check_weights(d: Path, model: Any) -> int:
    """Every parameter of the meta model is in the weights files with its shape and a float dtype (a tied one
    may be absent); names may differ by the base model prefix (`model.`). Returns the tensor count."""
    kind, files = weight_files(d)
    table: dict[str, tuple[str, tuple[int, ...], Path]] = {}
    for f in files:
        for name, (dtype, shape) in (safetensors_tensors(f) if kind == "safetensors" else bin_tensors(f)).items():
            table[name] = (dtype, shape, f)
    prefix = getattr(model, "base_model_prefix", "") or ""

    def find(name: str) -> str | None:
        for cand in (name, name.removeprefix(prefix + "."), f"{prefix}.{name}"):
            if cand in table:
                return cand
        return None

    groups: dict[int, list[str]] = {}  # one parameter object -> every name it has (tied weights share one)
    params = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
        params[name] = p
    tied = getattr(model, "all_tied_weights_keys", None)  # {"lm_head.weight": "model.embed_tokens.weight"}
    tied = tied if isinstance(tied, dict) else {}
    for names in groups.values():
        found = [(n, find(n)) for n in names if find(n)]
        partners = {tied[n] for n in names if n in tied} | {k for k, v in tied.items() if v in names}
        if not found and not any(find(n) for n in partners):
            raise _refuse("model.path", f"parameter {names[0]!r} of {type(model).__name__} (from {d}/config.json) "
                          f"is in none of the weights files ({', '.join(f.name for f in files)}): the weights are "
                          "not this config's model; give the matching config.json and weights")
        for name, key in found:
            dtype, shape, f = table[key]
            want = tuple(params[name].shape)
            if shape != want:
                raise _refuse("model.path", f"{f}: tensor {key!r} has shape {list(shape)}, but config.json's "
                              f"{type(model).__name__} has {list(want)}"
                              + ("" if key == name else f" for {name!r}") + ": config.json and the weights do not "
                              "match; give the config.json the weights were saved with")
            if dtype not in FLOAT_DTYPES:
                raise _refuse("model.path", f"{f}: tensor {key!r} is {dtype}; the trainer loads float weights "
                              f"({', '.join(FLOAT_DTYPES)}) and casts them to model.dtype: give an unquantised "
                              "checkpoint")
    return len(table)


def check_tokenizer(cfg: SweepConfig, d: Path) -> None:
    """The tokenizer's JSON files parse and `AutoTokenizer.from_pretrained` loads the directory, as the trainer
    and the evaluation do."""
    for name in TOKENIZER_JSON:
        f = d / name
        if f.is_file():
            try:
                json.loads(f.read_bytes().decode("utf-8"))
            except ValueError as e:  # JSONDecodeError and UnicodeDecodeError both
                raise _refuse("model.path", f"{f} is not valid JSON ({e}): the tokenizer cannot load; copy the "
                              "model's tokenizer files again") from None
    from transformers import AutoTokenizer

    try:
        AutoTokenizer.from_pretrained(str(d), trust_remote_code=cfg.model.trust_remote_code)
    except Exception as e:  # noqa: BLE001 - any failure to load is the refusal
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise _refuse("model.path", f"the tokenizer in {d} does not load ({type(e).__name__}: {first}); give a "
                      "directory with the model's tokenizer files (tokenizer.json, tokenizer_config.json)") from None


# ---------------------------------------------------------------- storage

def max_steps(cfg: SweepConfig) -> int:
    if "steps" in cfg.search.space:
        return max(int(v) for v in cfg.search.space["steps"].candidates())
    return cfg.train.steps


def estimate_tokens(cfg: SweepConfig) -> int:
    """Upper bound of tokens one trial's training reads (padding included), for the plan."""
    d = cfg.data
    unthink = d.max_len + d.traces.max_new_tokens
    return max_steps(cfg) * cfg.train.batch_size * (2 * d.max_len + unthink + d.cot.max_tokens)


def prefix_cache_bytes(cfg: SweepConfig, hidden_size: int) -> int:
    """Upper bound of the prefix cache per layer (padding included): the prefix of every row plus the frozen
    targets of the retain and CoT rows, in the model's dtype."""
    d = cfg.data
    frozen_tokens = max_steps(cfg) * cfg.train.batch_size * (d.max_len + d.cot.max_tokens)
    return (estimate_tokens(cfg) + frozen_tokens) * hidden_size * (4 if cfg.model.dtype == "float32" else 2)
