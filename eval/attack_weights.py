"""The weights three attacks make: a trial's model fine-tuned a few steps (relearn), rounded (quantize) or with
one direction projected out of its residual stream (orthogonalize).

Each starts from `trial_model`: the base model in transformers, float32, with the trial's delta loaded. Each
returns the tensors it changed, by HF name, so any backend (`Backend.swap_weights`) evaluates them as it
evaluates a trial's delta.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import torch

from eval.config import OrthogonalizeAttack, QuantizeAttack, RelearnAttack
from eval.paths import make_hint, resolve


def trial_model(model_dir: str | Path, delta: dict[str, torch.Tensor] | None) -> tuple[Any, Any]:
    """(model, tokenizer): the base model in float32 on the CPU (or the GPU where there is one), delta loaded."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve(model_dir)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if delta:
        state = model.state_dict()
        with torch.no_grad():
            for name, value in delta.items():
                state[name].copy_(value.to(torch.float32))
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    return model, AutoTokenizer.from_pretrained(path)


def read_texts(path: str, field: str, n: int, where: str) -> list[str]:
    """The first `n` texts of a .jsonl file (`field` of each object) or a .txt file (one per line). A
    ValueError names `where` (the space file's field) and what is wrong."""
    file = resolve(path)
    if not file.is_file():
        raise ValueError(f"{where}: no such file {path!r}{make_hint(path)}")
    texts: list[str] = []
    with file.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if len(texts) == n:
                break
            if not line.strip():
                continue
            if file.suffix == ".jsonl":
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{where}: {path} line {line_no} is not JSON ({e.msg})") from None
                if not isinstance(row, dict) or not isinstance(row.get(field), str):
                    raise ValueError(f"{where}: {path} line {line_no} has no text field {field!r}")
                texts.append(row[field])
            elif file.suffix == ".txt":
                texts.append(line.rstrip("\n"))
            else:
                raise ValueError(f"{where}: {path}: give a .jsonl or .txt file")
    if not texts:
        raise ValueError(f"{where}: {path} holds no text")
    return texts


def relearned_weights(model_dir: str | Path, delta: dict[str, torch.Tensor] | None, attack: RelearnAttack,
                      texts: list[str], seed: int = 0) -> dict[str, torch.Tensor]:
    """Plain causal-LM fine-tuning of the trial's model on `texts` (cycled, batch_size per step, seeded
    order), AdamW without weight decay; the fine-tuned parameters' final values."""
    torch.manual_seed(seed)
    model, tok = trial_model(model_dir, delta)
    pattern = re.compile(attack.params)
    trained = {n: p for n, p in model.named_parameters() if pattern.search(n)}
    if not trained:
        raise ValueError(f"params {attack.params!r} matches no parameter of the model (names like "
                         f"{next(iter(dict(model.named_parameters())))!r})")
    for name, p in model.named_parameters():
        p.requires_grad_(name in trained)
    model.train()
    opt = torch.optim.AdamW(list(trained.values()), lr=attack.lr, weight_decay=0.0)
    ids = [tok(t, truncation=True, max_length=attack.max_len)["input_ids"] for t in texts]
    order = random.Random(seed).sample(range(len(ids)), len(ids))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    device = next(model.parameters()).device
    for step in range(attack.steps):
        batch = [ids[order[(step * attack.batch_size + j) % len(ids)]] for j in range(attack.batch_size)]
        width = max(map(len, batch))
        input_ids = torch.tensor([s + [pad] * (width - len(s)) for s in batch], device=device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch], device=device)
        labels = input_ids.masked_fill(mask == 0, -100)  # no loss on the padding
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {n: p.detach().to("cpu").clone() for n, p in trained.items()}


def quantized_weights(model_dir: str | Path, delta: dict[str, torch.Tensor] | None,
                      attack: QuantizeAttack) -> dict[str, torch.Tensor]:
    """Every linear layer of the transformer blocks quantised by torchao, weight only, round to nearest: int8
    per output channel, or int4 in groups of `group_size` (symmetric); returned dequantised to float32, which
    is what the quantised layer multiplies by."""
    from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerGroup

    model, _ = trial_model(model_dir, delta)
    linears = {fqn: m for fqn, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in fqn}
    if attack.bits == 4:
        bad = sorted({m.in_features for m in linears.values() if m.in_features % attack.group_size})
        if bad:
            raise ValueError(f"group_size {attack.group_size} does not divide the input width {bad[0]} of some "
                             "linear layers: give a divisor (32 or 64 usually)")
        config: Any = IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(attack.group_size))
    else:
        config = Int8WeightOnlyConfig()
    quantize_(model, config, filter_fn=lambda m, fqn: fqn in linears)
    return {f"{fqn}.weight": m.weight.dequantize().to("cpu", torch.float32) for fqn, m in linears.items()}


@torch.no_grad()
def _mean_states(model: Any, tok: Any, texts: list[str], max_len: int) -> torch.Tensor:
    """Per layer (0 = embeddings), the mean hidden state over the tokens of `texts` after the first (an attention
    sink whose state is the same for every text, and in SmolLM2 far larger than the rest): (layers + 1, hidden)."""
    device = next(model.parameters()).device
    total, count = None, 0
    for text in texts:
        ids = torch.tensor([tok(text, truncation=True, max_length=max_len)["input_ids"]], device=device)
        if ids.shape[1] < 2:
            continue
        hidden = torch.stack(model(input_ids=ids, output_hidden_states=True).hidden_states)[:, 0, 1:]  # (L+1, T-1, H)
        total = hidden.sum(1) if total is None else total + hidden.sum(1)
        count += ids.shape[1] - 1
    if total is None:
        raise ValueError("no text of two tokens or more to find the direction on")
    return total / count


def orthogonalized_weights(model_dir: str | Path, delta: dict[str, torch.Tensor] | None,
                           attack: OrthogonalizeAttack, texts: list[str]) -> tuple[dict[str, torch.Tensor], dict]:
    """The trial's weights with the unlearning direction d projected out of every write to the residual
    stream: each layer's attention and MLP output matrix W -> W - d (d^T W), the embeddings E -> E - (E d) d^T.
    d: the normalised mean difference of the trial's and the base model's hidden states on `texts`, at the layer
    where that difference is largest (the first position left out: its state is the same for every text).
    Returns the tensors and what was found (layer, norm); no tensors where the trial does not differ."""
    base, _ = trial_model(model_dir, None)
    model, tok = trial_model(model_dir, delta)
    texts = [t for t in texts if t.strip()]
    diff = _mean_states(model.eval(), tok, texts, attack.max_len) - \
        _mean_states(base.eval(), tok, texts, attack.max_len)
    del base
    norms = diff.norm(dim=-1)
    layer = int(norms.argmax())
    info = {"layer": layer, "norm": float(norms[layer])}
    if float(norms[layer]) < 1e-6:  # the base model itself, or a delta that changes nothing here
        return {}, info
    d = (diff[layer] / norms[layer]).to(torch.float32)
    out: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        w = p.detach().to(torch.float32)
        if name.endswith(("self_attn.o_proj.weight", "mlp.down_proj.weight")):  # (hidden, in): writes d^T W
            out[name] = (w - torch.outer(d, d @ w)).cpu()
        elif name.endswith("embed_tokens.weight"):  # (vocab, hidden): each row a write
            out[name] = (w - torch.outer(w @ d, d)).cpu()
    return out, info
