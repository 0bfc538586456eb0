"""The naive R²MU objective, written independently of `trainables.r2mu` (the WMDP reference's shape).

Two full models (the frozen one a deepcopy), a full forward of each (every layer and the LM head run),
h_l read by a forward hook on decoder layer l. The only deliberate difference from the reference: the MSE
averages over real tokens (attention mask), not over padding.
"""

from __future__ import annotations

import torch


def forward_with_hook(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, layer: int,
                      grad: bool) -> torch.Tensor:
    cache = []
    hook = model.model.layers[layer].register_forward_hook(
        lambda mod, inp, out: cache.append(out[0] if isinstance(out, tuple) else out))
    try:
        with torch.set_grad_enabled(grad):
            model(input_ids=ids, attention_mask=mask)
    finally:
        hook.remove()
    return cache[0]


def masked_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(torch.float32).unsqueeze(-1)
    return ((a.float() - b.float()) ** 2 * m).sum() / (m.sum() * a.shape[-1])


def naive_loss(updated, frozen, batches: dict, layer: int, control: torch.Tensor,
               alpha: float, beta: float, gamma: float) -> tuple[torch.Tensor, dict[str, float]]:
    """batches: stream -> (input_ids, attention_mask, loss_mask)."""
    terms = {}
    for s in ("forget", "unthink"):
        ids, am, lm = batches[s]
        h = forward_with_hook(updated, ids, am, layer, grad=True)
        terms[s] = masked_mse(h, control.expand_as(h), lm)
    for s in ("retain", "cot"):
        ids, am, lm = batches[s]
        h = forward_with_hook(updated, ids, am, layer, grad=True)
        h0 = forward_with_hook(frozen, ids, am, layer, grad=False)
        terms[s] = masked_mse(h, h0, lm)
    loss = terms["forget"] + alpha * terms["retain"] + beta * terms["unthink"] + gamma * terms["cot"]
    return loss, {k: float(v.detach()) for k, v in terms.items()}
