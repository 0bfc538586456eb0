"""The `Backend` interface and its `Generation` result, apart from the backends so that each imports only this."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from eval.config import GenerationConfig
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
