"""The R²MU objective and its fast step (pure torch + transformers; no Ray, DeepSpeed or MLflow).

    forget  = MSE(h_l(x_f), c*u)           retain = MSE(h_l(x_r), h0_l(x_r))
    unthink = MSE(h_l(r_f), c*u)           cot    = MSE(h_l(r_c), h0_l(r_c))
    loss    = forget + alpha*retain + beta*unthink + gamma*cot      (beta = gamma = 0: plain RMU)

h_l is the residual stream after decoder layer l (0-indexed; HF's `hidden_states[l+1]`), h0 the same for the
frozen base weights, u ~ U[0,1)^d normalised, c the steering coefficient. MSE averages over REAL tokens
(`Batch.loss_mask`) and hidden dims. The WMDP reference code (`F.mse_loss` on padded batches) averages over
padding too; we do not, so a term does not depend on how much padding its batch happens to carry.

How a step is computed, fast (bench/RESULTS.md measures it against the two-model reference): nothing above
layer l matters and nothing below the first updated layer changes, so
  1. prefix: embeddings + layers 0..first-1 run once per batch under no_grad, shared by both views;
  2. frozen view (retain, cot): layers first..l with the ORIGINAL values of the updated tensors passed in
     by `functional_call` (no second model copy), no_grad;
  3. trained view (all streams): layers first..l with the live tensors, with grad; stop at l;
streams of similar length are concatenated into one batch so each layer runs as few, large matmuls.
Steps 1 and 2 depend only on the base weights and the batch (`R2MU.prepare` -> `Prepared`): every trial of a
sweep at the same layer repeats them exactly, so `trainables.prefix_cache` can keep them across trials.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.func import functional_call
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

STREAMS = ("forget", "retain", "unthink", "cot")
TO_CONTROL = ("forget", "unthink")  # pushed towards c*u
TO_FROZEN = ("retain", "cot")  # held at the frozen model's activations


@dataclass
class Batch:
    """Right-padded token ids; `loss_mask` (default: attention_mask) marks the tokens a term averages over."""

    input_ids: torch.Tensor  # [B, L] long
    attention_mask: torch.Tensor  # [B, L] 1 = real token
    loss_mask: torch.Tensor | None = None  # [B, L]; e.g. unthink "after_trigger" masks out the prompt

    def __post_init__(self) -> None:
        if self.loss_mask is None:
            self.loss_mask = self.attention_mask

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.loss_mask.to(device))

    def n_loss_tokens(self) -> int:
        return int(self.loss_mask.sum())


@dataclass
class Weights:
    alpha: float = 1.4
    beta: float = 1.0
    gamma: float = 1.0

    def of(self, stream: str) -> float:
        return {"forget": 1.0, "retain": self.alpha, "unthink": self.beta, "cot": self.gamma}[stream]


@dataclass
class Terms:
    """One step's result: the differentiable total and the four terms (detached; None: weight 0, skipped).

    The terms stay on the device so that computing them costs no host sync before backward; `values` reads
    them all with one.
    """

    loss: torch.Tensor
    terms: dict[str, torch.Tensor | None] = field(default_factory=dict)

    @property
    def values(self) -> dict[str, float | None]:
        done = [s for s in STREAMS if self.terms.get(s) is not None]
        floats = torch.stack([self.terms[s] for s in done]).tolist() if done else []
        return {s: None for s in STREAMS} | dict(zip(done, floats, strict=True))


@dataclass
class Prepared:
    """One group of streams in one batch after the step's no-grad work, which depends only on the base
    weights and the batch: what `trainables.prefix_cache` keeps across the trials of a sweep."""

    streams: list[str]
    batch: Batch  # the group's rows, concatenated and right-padded
    prefix: torch.Tensor  # h after layer first-1 (the embeddings when first = 0), every row
    targets: dict[str, torch.Tensor]  # h0_l of each frozen-view stream's rows


def control_vector(hidden_size: int, coeff: float, seed: int) -> torch.Tensor:
    """c * u with u ~ U[0,1)^d normalised, drawn from a local generator (the global RNG is untouched)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(hidden_size, generator=g)
    return coeff * u / u.norm()


def masked_sse(h: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of squared differences over the masked tokens and all hidden dims (in float32)."""
    diff = h.float() - target.float()
    return (diff.pow(2).sum(-1) * mask.to(diff.dtype)).sum()


def decoder(model: torch.nn.Module) -> torch.nn.Module:
    """The decoder stack (`model.model` of a *ForCausalLM): embed_tokens, layers, rotary_emb."""
    return model.model if hasattr(model, "model") else model


def updated_layers(names: list[str]) -> list[int]:
    """Decoder layer indices of `model.layers.{i}.<...>` parameter names."""
    out = []
    for name in names:
        parts = name.split(".")
        if parts[:2] != ["model", "layers"]:
            raise ValueError(f"updated parameter {name!r} is not inside a decoder layer (model.layers.N....)")
        out.append(int(parts[2]))
    return out


def drop_layers_above(model: torch.nn.Module, layer: int) -> None:
    """Free what an R²MU step never runs: the decoder layers above `layer`, the final norm and the LM head.

    Call it after `delta.base_identity` (which fingerprints the whole model). Parameter names of the kept
    layers do not change, so the delta still merges into the full base model. The model can no longer
    produce logits: only `HandRun` / `hidden_at` use it afterwards.
    """
    m = decoder(model)
    m.layers = m.layers[: layer + 1]
    m.norm = torch.nn.Identity()
    if hasattr(model, "lm_head") and model.lm_head.weight is not m.embed_tokens.weight:
        model.lm_head = torch.nn.Identity()  # untied: a vocab x hidden matrix (1 GiB for Llama-8B in bf16)


class HandRun:
    """Runs the decoder layers of a Llama/Qwen2-style model by hand, the way the HF forward does."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.m = decoder(model)
        n = model.config.num_hidden_layers
        self.layer_types = getattr(model.config, "layer_types", None) or ["full_attention"] * n

    def start(self, batch: Batch) -> tuple[torch.Tensor, dict]:
        """Embeddings plus what every layer needs (`context`)."""
        h = self.m.embed_tokens(batch.input_ids)
        return h, self.context(batch, h)

    def context(self, batch: Batch, h: torch.Tensor) -> dict:
        """Per-type causal+padding masks and rotary embeddings; `h` only lends its shape, dtype and device."""
        pos = torch.arange(h.shape[1], device=h.device).unsqueeze(0)
        kw = dict(config=self.model.config, inputs_embeds=h, attention_mask=batch.attention_mask,
                  past_key_values=None, position_ids=pos)
        masks = {"full_attention": create_causal_mask(**kw)}
        if "sliding_attention" in self.layer_types:
            masks["sliding_attention"] = create_sliding_window_causal_mask(**kw)
        return dict(masks=masks, position_embeddings=self.m.rotary_emb(h, pos), position_ids=pos)

    def layer(self, i: int, h: torch.Tensor, ctx: dict, tensors: dict | None = None) -> torch.Tensor:
        """Decoder layer i; `tensors` (name inside the layer -> tensor) replaces parameters for this call."""
        args = (h,)
        kwargs = dict(attention_mask=ctx["masks"][self.layer_types[i]],
                      position_embeddings=ctx["position_embeddings"], position_ids=ctx["position_ids"],
                      past_key_values=None, use_cache=False)
        block = self.m.layers[i]
        if tensors:
            return functional_call(block, tensors, args, kwargs, strict=False)
        return block(*args, **kwargs)

    def rows(self, ctx: dict, idx: torch.Tensor) -> dict:
        """The context for a subset of the batch rows (masks are per row; rotary embeddings broadcast)."""
        masks = {k: (m[idx] if isinstance(m, torch.Tensor) and m.shape[0] > 1 else m)
                 for k, m in ctx["masks"].items()}
        return dict(ctx, masks=masks)


@torch.no_grad()
def hidden_at(model: torch.nn.Module, batch: Batch, layer: int) -> torch.Tensor:
    """h_layer(batch) of the model as it is (no grad), running only layers 0..layer."""
    run = HandRun(model)
    h, ctx = run.start(batch)
    for i in range(layer + 1):
        h = run.layer(i, h, ctx)
    return h


@torch.no_grad()
def activation_scale(model: torch.nn.Module, batches: list[Batch], layer: int) -> float:
    """Median over real tokens of ||h_layer|| (the base model on forget data): c = steering_rel x this."""
    norms = []
    for b in batches:
        h = hidden_at(model, b, layer).float()
        norms.append(h.norm(dim=-1)[b.attention_mask.bool()])
    return float(torch.cat(norms).median())


def pad_cat(batches: list[Batch]) -> Batch:
    """Concatenate batches along rows, right-padding to the longest (pads are masked out)."""
    L = max(b.input_ids.shape[1] for b in batches)

    def pad(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, L - t.shape[1]))

    return Batch(*(torch.cat([pad(getattr(b, k)) for b in batches])
                   for k in ("input_ids", "attention_mask", "loss_mask")))


def group_by_length(batches: dict[str, Batch], min_ratio: float) -> list[list[str]]:
    """Streams whose lengths are within `min_ratio` of the group's longest share one batch."""
    order = sorted(batches, key=lambda s: -batches[s].input_ids.shape[1])
    groups: list[list[str]] = []
    for s in order:
        if groups and batches[s].input_ids.shape[1] >= min_ratio * batches[groups[-1][0]].input_ids.shape[1]:
            groups[-1].append(s)
        else:
            groups.append([s])
    return groups


class R2MU:
    """The objective bound to a model, a steering layer, the updated tensors and a control vector.

    Freezes everything but `param_names` (requires_grad) and keeps a copy of those few tensors' original
    values: the frozen model is the live model with these originals passed in.
    """

    def __init__(self, model: torch.nn.Module, layer: int, param_names: list[str], control: torch.Tensor,
                 weights: Weights, pack_ratio: float = 0.75):
        self.model, self.layer, self.weights, self.pack_ratio = model, layer, weights, pack_ratio
        self.run = HandRun(model)
        params = dict(model.named_parameters())
        missing = [n for n in param_names if n not in params]
        if missing:
            raise ValueError(f"not parameters of the model: {missing}")
        idx = updated_layers(param_names)
        if max(idx) > layer:
            raise ValueError(f"updated parameters above layer {layer} cannot change h_{layer}: {param_names}")
        self.first = min(idx)  # layers below it are the shared no-grad prefix
        for p in model.parameters():
            p.requires_grad_(False)
        self.params = {n: params[n] for n in param_names}
        for p in self.params.values():
            p.requires_grad_(True)
        # originals, keyed by layer then by name inside the layer (what functional_call takes)
        self.originals: dict[int, dict[str, torch.Tensor]] = {}
        for n, p in self.params.items():
            i = int(n.split(".")[2])
            self.originals.setdefault(i, {})[n.split(".", 3)[3]] = p.detach().clone()
        self.control = control.to(device=next(model.parameters()).device)

    def active(self) -> list[str]:
        """Streams whose weight is non-zero (a zero-weight term is not computed: RMU skips two streams)."""
        return [s for s in STREAMS if self.weights.of(s) != 0]

    def top(self, h: torch.Tensor, ctx: dict, frozen: bool) -> torch.Tensor:
        """Layers first..l: the trained view, or the frozen one (original tensors)."""
        for i in range(self.first, self.layer + 1):
            h = self.run.layer(i, h, ctx, self.originals.get(i) if frozen else None)
        return h

    def prepare(self, batches: dict[str, Batch]) -> list[Prepared]:
        """The no-grad part of a step: per group of streams, the shared prefix and the frozen targets."""
        out = []
        for group in group_by_length({s: batches[s] for s in self.active()}, self.pack_ratio):
            b = pad_cat([batches[s] for s in group])
            rows = self.rows_of(group, batches)
            with torch.no_grad():
                # 1. shared prefix: embeddings and layers below the first updated one, once
                h, ctx = self.run.start(b)
                for i in range(self.first):
                    h = self.run.layer(i, h, ctx)
                # 2. frozen view of the retain-type rows (the original tensors): the targets
                targets = {}
                frozen_rows = [s for s in group if s in TO_FROZEN]
                if frozen_rows:
                    idx = torch.cat([rows[s] for s in frozen_rows])
                    h0 = self.top(h[idx], self.run.rows(ctx, idx), frozen=True)
                    targets = dict(zip(frozen_rows, h0.split([len(rows[s]) for s in frozen_rows]), strict=True))
            out.append(Prepared(group, b, h, targets))
        return out

    @staticmethod
    def rows_of(group: list[str], batches: dict[str, Batch]) -> dict[str, torch.Tensor]:
        """Each stream's row indices in the group's concatenated batch."""
        sizes = [batches[s].input_ids.shape[0] for s in group]
        return dict(zip(group, torch.arange(sum(sizes), device=batches[group[0]].input_ids.device).split(sizes),
                        strict=True))

    def sse(self, batches: dict[str, Batch], prepared: list[Prepared] | None = None) -> dict[str, torch.Tensor]:
        """Per stream, the sum of squared differences over its loss tokens and hidden dims (trained view).

        `prepared` (from `prepare`, or read back from the prefix cache) skips the no-grad part.
        """
        out = {}
        for p in prepared if prepared is not None else self.prepare(batches):
            rows = self.rows_of(p.streams, batches)
            # 3. trained view of every row, with grad, stopping at layer l
            hl = self.top(p.prefix, self.run.context(p.batch, p.prefix), frozen=False)
            for s in p.streams:
                target = self.control if s in TO_CONTROL else p.targets[s]
                out[s] = masked_sse(hl[rows[s]], target, p.batch.loss_mask[rows[s]])
        return out

    def loss(self, batches: dict[str, Batch], denominators: dict[str, float] | None = None,
             prepared: list[Prepared] | None = None) -> Terms:
        """loss = forget + alpha*retain + beta*unthink + gamma*cot.

        `denominators` (per stream: loss tokens x hidden size) default to this batch's own; data-parallel
        workers pass the global counts so the sum of their losses is the loss of the whole batch.
        """
        d = self.model.config.hidden_size
        sse = self.sse(batches, prepared)
        total = torch.zeros((), device=self.control.device)
        terms: dict[str, torch.Tensor | None] = {s: None for s in STREAMS}
        for s, v in sse.items():
            # a device tensor by default: no host sync before backward
            denom = denominators[s] if denominators else batches[s].loss_mask.sum().clamp(min=1) * d
            term = v / denom
            total = total + self.weights.of(s) * term
            terms[s] = term.detach()
        return Terms(total, terms)
