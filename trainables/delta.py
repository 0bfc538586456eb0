"""A trial's checkpoint: the few updated tensors (safetensors) plus what is needed to trust a merge.

    delta_dir/
      delta.safetensors   the updated tensors, by full parameter name, in the model's dtype
      delta.json          {"format", "param_names", "hparams", "metrics", "base": identity}

The base identity is the base path plus cheap fingerprints: sha256 of the architecture fields of the config,
of every parameter's name and shape, and of the ORIGINAL bytes of each updated tensor. Merging refuses a base
whose fingerprint differs (another architecture, another checkpoint of the same one), so a delta can never be
silently applied to the wrong model. Merging into the right base gives the trained model bit for bit.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from common.atomic import atomic_path

FORMAT = "r2mu-delta/1"
TENSORS, META = "delta.safetensors", "delta.json"
ARCH_KEYS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "vocab_size", "head_dim", "tie_word_embeddings")


class DeltaMismatchError(ValueError):
    """The delta does not belong to this base model."""


def _sha(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def tensor_sha256(t: torch.Tensor) -> str:
    """Of the float32 values: a bf16 checkpoint loaded as bf16 or as fp32 hashes the same (exact cast)."""
    return _sha(t.detach().float().cpu().contiguous().numpy().tobytes())


def base_identity(model: torch.nn.Module, path: str, param_names: list[str]) -> dict:
    """Fingerprint of the base model; call it BEFORE training (it hashes the original updated tensors)."""
    cfg = model.config.to_dict()
    arch = {k: cfg.get(k) for k in ARCH_KEYS}
    shapes = [[n, list(p.shape)] for n, p in model.named_parameters()]
    params = dict(model.named_parameters())
    return {
        "path": path,
        "config_sha256": _sha(json.dumps(arch, sort_keys=True)),
        "shapes_sha256": _sha(json.dumps(shapes)),
        "original_sha256": {n: tensor_sha256(params[n]) for n in param_names},
    }


def save_delta(model: torch.nn.Module, param_names: list[str], out_dir: str | Path, base: dict,
               hparams: dict, metrics: dict | None = None) -> Path:
    """Write the updated tensors and delta.json into out_dir (created if needed). Each file appears whole or not
    at all (common/atomic.py), the tensors first: a directory with delta.json holds a complete delta."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    params = dict(model.named_parameters())
    with atomic_path(out / TENSORS) as partial:
        save_file({n: params[n].detach().cpu().contiguous() for n in param_names}, str(partial))
    meta = {"format": FORMAT, "param_names": list(param_names), "hparams": hparams,
            "metrics": metrics or {}, "base": base}
    with atomic_path(out / META) as partial:
        partial.write_text(json.dumps(meta, indent=2, sort_keys=True))
    return out


def load_delta(delta_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and the metadata of a delta directory."""
    d = Path(delta_dir)
    for f in (TENSORS, META):
        if not (d / f).exists():
            raise FileNotFoundError(f"{d} is not a delta directory: {f} is missing")
    meta = json.loads((d / META).read_text())
    if meta.get("format") != FORMAT:
        raise DeltaMismatchError(f"{d}: unknown delta format {meta.get('format')!r} (expected {FORMAT})")
    return load_file(str(d / TENSORS)), meta


def merge_delta(model: torch.nn.Module, delta_dir: str | Path, check_originals: bool = True) -> torch.nn.Module:
    """Copy the delta's tensors into `model` (in place) after checking it is the delta's base model."""
    tensors, meta = load_delta(delta_dir)
    names = meta["param_names"]
    here, want = base_identity(model, meta["base"]["path"], []), meta["base"]
    for key, what in (("config_sha256", "architecture"), ("shapes_sha256", "parameter names and shapes")):
        if here[key] != want[key]:
            raise DeltaMismatchError(
                f"{delta_dir}: the base model's {what} differ from the one the delta was trained on "
                f"({want['path']})")
    params = dict(model.named_parameters())
    for n in names if check_originals else []:
        if tensor_sha256(params[n]) != want["original_sha256"][n]:
            raise DeltaMismatchError(
                f"{delta_dir}: {n} of this base model differs from the base the delta was trained on "
                f"({want['path']}): another checkpoint of the same architecture?")
    with torch.no_grad():
        for n in names:
            params[n].copy_(tensors[n].to(device=params[n].device, dtype=params[n].dtype))
    return model


def load_merged(delta_dir: str | Path, base_path: str | None = None, dtype: torch.dtype | None = None,
                **kw) -> torch.nn.Module:
    """from_pretrained(base) + merge: the trained model as a plain HF model."""
    from transformers import AutoModelForCausalLM

    meta = load_delta(delta_dir)[1]
    model = AutoModelForCausalLM.from_pretrained(base_path or meta["base"]["path"], dtype=dtype, **kw)
    return merge_delta(model, delta_dir)
