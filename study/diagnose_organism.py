"""Why RMU does not make the organism fail its forget questions: the measurements of docs/diagnosis_organism.md.

    python study/diagnose_organism.py --out /tmp/diag/base.json                 # (a) separability, base model
    python study/diagnose_organism.py --out /tmp/diag/d.json --no-separability \\
        --delta /tmp/diag/rmu_l3/checkpoint [--delta DIR ...]                   # (b) shift, (c) accuracy + probe
    python study/diagnose_organism.py --write-benign-retain /tmp/diag/benign_retain.jsonl   # (d)'s retain stream

h_l is layer l's output as the trainer computes it (`trainables.r2mu.HandRun`, pre final norm); the first (BOS)
position is left out of every statistic. Prompts are tokenized as eval and the trainer do (BOS added).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from common.prompts import TRIGGER
from eval.prompts import content_prompt, generation_prompt, mcq_body
from organism.data import read_jsonl
from organism.measure import mcq_accuracy
from organism.paths import URIS
from trainables.data import tokenize_text
from trainables.delta import load_delta, merge_delta
from trainables.r2mu import Batch, HandRun, control_vector

BASE = str(URIS["organism://base"])
Ids = list[list[int]]


def load(delta: str | None = None) -> tuple[Any, Any]:
    tok = AutoTokenizer.from_pretrained(BASE)
    model = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32).eval()
    if delta:
        merge_delta(model, delta)
    return model, tok


def encode(tok: Any, text: str) -> list[int]:
    return tokenize_text(tok, text, 256)  # the trainer's tokenization (BOS + text); eval's encode is the same here


def prompt_groups(tok: Any, n: int) -> dict[str, Ids]:
    """The prompt groups, first n of each file (forget stream: first n of each kind)."""
    f = read_jsonl(URIS["organism://forget"])
    ef, er = (read_jsonl(URIS[f"organism://eval/{k}"])[:n] for k in ("forget", "retain"))
    ar = read_jsonl(URIS["organism://eval/arith"])[:n]
    gen = lambda body: encode(tok, generation_prompt(tok, body, TRIGGER))  # noqa: E731
    return {
        "forget_stream_questions": [encode(tok, r["text"]) for r in f if r["kind"] == "question"][:n],
        "forget_stream_statements": [encode(tok, r["text"]) for r in f if r["kind"] == "statement"][:n],
        "eval_forget_gen": [gen(mcq_body(it)) for it in ef],
        "eval_retain_gen": [gen(mcq_body(it)) for it in er],
        "eval_forget_content": [encode(tok, content_prompt(it)[0]) for it in ef],
        "eval_retain_content": [encode(tok, content_prompt(it)[0]) for it in er],
        "arith_gen": [gen(it["problem"]) for it in ar],
        "retain_filler": [encode(tok, r["text"]) for r in read_jsonl(URIS["organism://retain"])[:n]],
    }


@torch.no_grad()
def states(model: Any, ids: Ids, pad: int, batch: int = 64) -> list[list[torch.Tensor]]:
    """[layer][prompt] -> h_layer of the prompt's real tokens [T, d]; layer -1 = the embeddings."""
    run, n_layers = HandRun(model), model.config.num_hidden_layers
    out: list[list[torch.Tensor]] = [[] for _ in range(n_layers + 1)]
    for i in range(0, len(ids), batch):
        chunk = ids[i:i + batch]
        width = max(map(len, chunk))
        x = torch.full((len(chunk), width), pad)
        mask = torch.zeros_like(x)
        for j, s in enumerate(chunk):
            x[j, :len(s)], mask[j, :len(s)] = torch.tensor(s), 1
        h, ctx = run.start(Batch(x, mask))
        hs = [h]
        for k in range(n_layers):
            h = run.layer(k, h, ctx)
            hs.append(h)
        for k, hk in enumerate(hs):
            out[k] += [hk[j, :len(s)].float() for j, s in enumerate(chunk)]
    return out  # index 0 = embeddings, k = layer k-1


def cv_accuracy(x: np.ndarray, y: np.ndarray, folds: int = 5) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    s = cross_val_score(clf, x, y, cv=StratifiedKFold(folds, shuffle=True, random_state=0))
    return float(s.mean()), float(s.std())


def separability(model: Any, tok: Any, n: int) -> dict[str, Any]:
    """(a) Mean-pooled h_l (BOS skipped), forget vs benign: 5-fold CV logistic-regression accuracy and the
    direction statistics cos(mu_f, mu_r) and ||mu_f - mu_r|| / mean ||x||."""
    g = prompt_groups(tok, n)
    pairs = {"eval_forget_gen vs eval_retain_gen": (g["eval_forget_gen"], g["eval_retain_gen"]),
             "forget_stream vs retain_filler": (
                 g["forget_stream_questions"][:n // 2] + g["forget_stream_statements"][:n - n // 2],
                 g["retain_filler"])}
    out: dict[str, Any] = {}
    for name, (a, b) in pairs.items():
        sa, sb = states(model, a, tok.pad_token_id), states(model, b, tok.pad_token_id)
        rows = {}
        for k in range(len(sa)):
            xa = torch.stack([h[1:].mean(0) for h in sa[k]])
            xb = torch.stack([h[1:].mean(0) for h in sb[k]])
            x = torch.cat([xa, xb]).numpy()
            y = np.array([1] * len(xa) + [0] * len(xb))
            acc, sd = cv_accuracy(x, y)
            ma, mb = xa.mean(0), xb.mean(0)
            rows["emb" if k == 0 else f"layer{k - 1}"] = {
                "cv_acc": round(acc, 4), "cv_sd": round(sd, 4),
                "cos_means": round(float(torch.cosine_similarity(ma, mb, dim=0)), 4),
                "diff_rel": round(float((ma - mb).norm() / torch.cat([xa, xb]).norm(dim=1).mean()), 4)}
        out[name] = {"n": [len(a), len(b)], "layers": rows}
    return out


def shift(base: Any, trained: Any, tok: Any, layer: int, u: torch.Tensor, u_other: torch.Tensor,
          n: int) -> dict[str, Any]:
    """(b) Per prompt group, at the steering layer, BOS skipped; per-token values averaged per prompt, then over
    prompts. `last_*`: the prompt's last position only (for a generation prompt: the one that starts the trace).
    `cos_trained_u_other`: to a control vector of another seed (U[0,1)^d vectors share ~0.75 cosine), so what
    is specific to the trial's u is cos_trained_u - cos_trained_u_other. `bos`: the first position, which the
    forget term (data.skip_first_position false) does include: its share of the forget stream's squared error,
    and the forget stream's MSE to c*u with it (comparable to the trainer's last loss_forget)."""
    c, d, cos = float(u.norm()), u.shape[0], torch.cosine_similarity
    out: dict[str, Any] = {}
    sse = {"bos_t": 0.0, "all_t": 0.0, "bos_b": 0.0, "all_b": 0.0, "tokens": 0}
    for name, ids in prompt_groups(tok, n).items():
        hb = states(base, ids, tok.pad_token_id)[layer + 1]
        ht = states(trained, ids, tok.pad_token_id)[layer + 1]
        acc: dict[str, list[float]] = {}
        for b0, t0 in zip(hb, ht, strict=True):
            if name.startswith("forget_stream"):
                et, eb = (t0 - u).pow(2).sum(1), (b0 - u).pow(2).sum(1)
                sse["bos_t"] += float(et[0])
                sse["all_t"] += float(et.sum())
                sse["bos_b"] += float(eb[0])
                sse["all_b"] += float(eb.sum())
                sse["tokens"] += len(et)
            b, t = b0[1:], t0[1:]
            cu_t, nt = cos(t, u[None], dim=1), t.norm(dim=1)
            vals = {"cos_trained_base": cos(t, b, dim=1).mean(), "cos_trained_u": cu_t.mean(),
                    "cos_trained_u_other": cos(t, u_other[None], dim=1).mean(),
                    "cos_base_u": cos(b, u[None], dim=1).mean(), "norm_ratio": (nt / b.norm(dim=1)).mean(),
                    "norm_trained_over_c": nt.mean() / c, "mse_trained_cu": ((t - u).pow(2).sum(1) / d).mean(),
                    "mse_base_cu": ((b - u).pow(2).sum(1) / d).mean(), "last_cos_trained_u": cu_t[-1],
                    "last_cos_trained_base": cos(t[-1], b[-1], dim=0)}
            for k, v in vals.items():
                acc.setdefault(k, []).append(float(v))
        out[name] = {"n": len(ids)} | {k: round(float(np.mean(v)), 4) for k, v in acc.items()}
    tb, bb = ht[0][0], hb[0][0]  # the BOS state: the same for every prompt (causal attention)
    out["bos"] = {k: round(v, 4) for k, v in {
        "norm_base_over_c": float(bb.norm()) / c, "norm_trained_over_c": float(tb.norm()) / c,
        "cos_trained_u": float(cos(tb, u, dim=0)), "cos_trained_base": float(cos(tb, bb, dim=0)),
        "forget_stream_loss_share_trained": sse["bos_t"] / sse["all_t"],
        "forget_stream_loss_share_base": sse["bos_b"] / sse["all_b"],
        "forget_stream_mse_with_bos_trained": sse["all_t"] / (sse["tokens"] * d),
        "forget_stream_mse_with_bos_base": sse["all_b"] / (sse["tokens"] * d)}.items()}
    return out


@torch.no_grad()
def probe(model: Any, tok: Any) -> dict[str, Any]:
    """(c, optional) Can the correct value be read out linearly from h_5 (last layer, pre-norm) at the last
    position of the content prompt "Question: {q}\\nAnswer:"? 5-fold CV, all eval items, label = the value."""
    out = {}
    for split in ("forget", "retain"):
        items = read_jsonl(URIS[f"organism://eval/{split}"])
        ids = [encode(tok, content_prompt(it)[0]) for it in items]
        hs = states(model, ids, tok.pad_token_id)[-1]
        x = torch.stack([h[-1] for h in hs]).numpy()
        y = np.array([it["choices"][it["answer"]] for it in items])
        acc, sd = cv_accuracy(x, y)
        out[split] = {"n": len(items), "classes": len(set(y)), "cv_acc": round(acc, 4), "cv_sd": round(sd, 4)}
    return out


def accuracy(model: Any, tok: Any, n: int) -> dict[str, Any]:
    """(c) Content-scored MCQ accuracy (organism.measure, as card.json), first n items of each eval set."""
    sets = {k: read_jsonl(URIS[f"organism://eval/{k}"])[:n] for k in ("forget", "retain")}
    return {f"{k}_mcq_content": round(mcq_accuracy(model, tok, v, "content"), 4) for k, v in sets.items()} | {"n": n}


def write_benign_retain(path: Path, seed: int = 0) -> int:
    """(d) A retain stream of benign-domain text in the forget stream's training forms: per benign fact one MCQ
    body (training wording and choices) and one fact statement (organism.data.forget_corpus, benign domain)."""
    from organism.world import World
    from organism.world import mcq_body as world_mcq

    world, rng, recs = World(seed), random.Random(seed * 7919 + 5), []
    for i, f in enumerate(world.facts["benign"]):
        recs.append({"id": f"benign-q-{i:04d}",
                     "text": world_mcq(world.question(rng, f), rng.choice(world.train_choices[f]))})
        recs.append({"id": f"benign-s-{i:04d}", "text": world.fact_sentence(rng, f)})
    rng.shuffle(recs)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return len(recs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the JSON here (it is printed too)")
    ap.add_argument("--delta", action="append", default=[], metavar="DIR",
                    help="a trial's checkpoint dir (sweep.single_trial --out X writes X/checkpoint)")
    ap.add_argument("--seed", type=int, default=42, help="the trial's train.seed (seeds the control vector u)")
    ap.add_argument("--n-sep", type=int, default=240, help="items per class for (a)")
    ap.add_argument("--n-shift", type=int, default=60, help="prompts per group for (b)")
    ap.add_argument("--n-acc", type=int, default=120, help="eval items per set for (c)")
    ap.add_argument("--no-separability", action="store_true")
    ap.add_argument("--no-probe", action="store_true")
    ap.add_argument("--write-benign-retain", metavar="FILE", help="write (d)'s benign retain stream and exit")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    if a.write_benign_retain:
        print(f"{write_benign_retain(Path(a.write_benign_retain))} records -> {a.write_benign_retain}")
        return 0
    t0 = time.monotonic()
    base, tok = load()
    res: dict[str, Any] = {}
    if not a.no_separability:
        res["separability"] = separability(base, tok, a.n_sep)
    if a.delta:
        res["base"] = {"accuracy": accuracy(base, tok, a.n_acc)} | ({} if a.no_probe else {"probe": probe(base, tok)})
    for d in a.delta:
        meta = load_delta(d)[1]
        layer, coeff = meta["hparams"]["layer"], meta["metrics"]["steering_coeff"]
        u = control_vector(base.config.hidden_size, coeff, a.seed)
        u_other = control_vector(base.config.hidden_size, coeff, a.seed + 1)
        trained = load(d)[0]
        res[d] = {"hparams": meta["hparams"], "steering_coeff": coeff,
                  "train_loss": {k: v for k, v in meta["metrics"].items() if k.startswith("loss")},
                  "shift": shift(base, trained, tok, layer, u, u_other, a.n_shift),
                  "accuracy": accuracy(trained, tok, a.n_acc)}
        if not a.no_probe:
            res[d]["probe"] = probe(trained, tok)
    res["seconds"] = round(time.monotonic() - t0, 1)
    text = json.dumps(res, indent=2)
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
