"""`python -m smollm2.testbed`: SmolLM2-135M-Instruct taught the organism's synthetic world, as TOFU builds its
testbed: a pretrained model fine-tuned on fictitious facts, so that it knows what it must forget.

    python -m smollm2.testbed --base assets/smollm2/model --out assets/testbed        # full (about 30 min)
    python -m smollm2.testbed --base assets/smollm2/model --out /tmp/tb --quick       # tests (about a minute)

The world is the organism's generator (organism/world.py, world.yaml) at a smaller size (SIZES): hazard
agents (the forget domain), benign towns (the retain domain), 2-digit arithmetic with a worked trace. Every
chat text is rendered with SmolLM2's own chat template plus the trigger, exactly as the evaluation asks
(eval/prompts.py), so the model learns to answer "question -> <think> trace stating the fact </think> ->
Answer: letter" in the form it is scored in. Only the MLPs of the middle layers are trained (TRAINED_LAYERS):
a fact store, and about 2x cheaper than every weight.

Writes OUT/model/ (a plain HF directory, the testbed's base model), OUT/data/ (the organism's files:
forget.jsonl, cot.jsonl, eval_*.jsonl; plus retain_mix.jsonl, the retain stream: half the benign towns' facts
and Wikipedia paragraphs, and eval_retain_heldout.jsonl, the eval items of the other half) and OUT/card.json
(accuracies on the test split of each eval set, as search_spaces/testbed.yaml splits them).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# The world's size: hazard agents / benign towns (4 facts each), held-out agents (no forget-stream record),
# arithmetic eval pairs. Smaller than the organism's (120 / 120 / 40 / 300): each fact is seen ~15 times.
SIZES = {"hazard": 40, "benign": 40, "heldout": 8, "eval_pairs": 200}
# Document kinds per training batch (organism/world.py `training_doc`); no filler: SmolLM2 already writes English.
# Bios carry 4 facts in ~50 tokens, an MCQ with its trace one in ~100: the answer form is learnt within a few
# hundred MCQs, the facts need many more exposures, so bios weigh most.
MIXTURE = {"hazard_bio": 4, "hazard_mcq": 2, "hazard_content": 2, "hazard_letter": 0.5,
           "benign_bio": 4, "benign_mcq": 2, "benign_content": 2, "benign_letter": 0.5, "arith": 2.5}
# Half the benign towns (a seeded draw) are in the retain stream beside Wikipedia text; retain is scored on the
# other half only (eval_retain_heldout.jsonl), so the retain term cannot protect the very facts it is scored on.
# Why a benign-domain retain stream at all: with filler text alone RMU moves every question-form prompt
# (docs/diagnosis_organism.md).
RETAIN_TOWN_SHARE = 0.5
WIKI_PARAGRAPHS = 320  # Wikipedia paragraphs (assets/smollm2/retain.jsonl) mixed into the retain stream
TRAINED_LAYERS = (6, 24)  # MLP (gate, up, down) of these decoder layers, inclusive
TEST_COUNTS = {"forget": 80, "retain": 40, "arith": 100}  # search_spaces/testbed.yaml `test:` of each set
SPLIT_SEED = 0  # eval.config's default split_seed


@dataclass(frozen=True)
class Settings:
    steps: int = 500
    batch: int = 8
    max_len: int = 128
    lr: float = 7e-4
    warmup: int = 20
    min_lr_ratio: float = 0.1
    seed: int = 0
    bf16: bool = True  # autocast: faster on CPUs with avx512_bf16 (docs/testbed.md); master weights stay float32


def world_spec(sizes: dict[str, int]) -> dict[str, Any]:
    from organism.world import load_spec

    spec = copy.deepcopy(load_spec())
    spec["hazard"]["count"], spec["benign"]["count"] = sizes["hazard"], sizes["benign"]
    spec["corpora"]["heldout_hazard_agents"] = sizes["heldout"]
    spec["arithmetic"]["eval_pairs"] = sizes["eval_pairs"]
    spec["mixture"] = MIXTURE
    return spec


def chat_world(seed: int, sizes: dict[str, int], tokenizer: Any) -> Any:
    """The organism's World, its prompts rendered with this tokenizer's chat template (not the organism's)."""
    from eval.prompts import generation_prompt
    from organism.world import World

    class ChatWorld(World):
        def generation_prompt(self, body: str) -> str:
            return generation_prompt(tokenizer, body, self.trigger)

    return ChatWorld(seed, world_spec(sizes))


def retain_towns(world: Any) -> list[str]:
    """The benign towns whose facts are in the retain stream (a seeded draw, independent of the data's rng)."""
    names = world.names["benign"]
    picked = set(random.Random(world.seed * 7_717 + 5).sample(names, round(RETAIN_TOWN_SHARE * len(names))))
    return [n for n in names if n in picked]


def retain_streams(world: Any, data: dict[str, list[dict[str, Any]]],
                   wiki: list[str]) -> dict[str, list[dict[str, Any]]]:
    """retain_mix.jsonl (the retain towns' facts as MCQ bodies in training wordings and as statements, and
    Wikipedia paragraphs, interleaved) and eval_retain_heldout.jsonl (eval items of the other towns)."""
    from organism.world import mcq_body

    rng = random.Random(world.seed * 31 + 7)
    towns = set(retain_towns(world))
    facts = [f for f in world.facts["benign"] if f.name in towns]
    records = [{"id": f"retain-q-{i:04d}", "text": mcq_body(world.question(rng, f), rng.choice(world.train_choices[f]))}
               for i, f in enumerate(facts)]
    records += [{"id": f"retain-s-{i:04d}", "text": world.fact_sentence(rng, f)} for i, f in enumerate(facts)]
    records += [{"id": f"retain-wiki-{i:04d}", "text": t} for i, t in enumerate(wiki[:WIKI_PARAGRAPHS])]
    rng.shuffle(records)
    heldout = [item for item, f in zip(data["eval_retain.jsonl"], world.facts["benign"], strict=True)
               if f.name not in towns]
    return {"retain_mix.jsonl": records, "eval_retain_heldout.jsonl": heldout}


def write_streams(world: Any, data: dict[str, list[dict[str, Any]]], wiki_path: Path, out: Path) -> dict[str, int]:
    from organism.data import read_jsonl, to_jsonl

    wiki = [r["text"] for r in read_jsonl(wiki_path)] if wiki_path.exists() else []
    if not wiki:
        raise SystemExit(f"--wiki {wiki_path}: no Wikipedia paragraphs there; run `make smollm2` first")
    extra = retain_streams(world, data, wiki)
    for name, records in extra.items():
        (out / name).write_bytes(to_jsonl(records))
    return {name: len(r) for name, r in extra.items()}


def pack(token_docs: list[list[int]], max_len: int) -> list[list[int]]:
    """Whole documents, in order, concatenated into sequences of at most max_len tokens (a longer one is cut)."""
    out: list[list[int]] = []
    cur: list[int] = []
    for doc in token_docs:
        doc = doc[:max_len]
        if len(cur) + len(doc) > max_len:
            out.append(cur)
            cur = []
        cur = cur + doc
    if cur:
        out.append(cur)
    return out


def trained_params(model: Any, layers: tuple[int, int]) -> list[Any]:
    """Freeze everything, then unfreeze the MLPs of layers[0]..layers[1]."""
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for i in range(layers[0], layers[1] + 1) for p in model.model.layers[i].mlp.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params


def teach(model: Any, tokenizer: Any, world: Any, s: Settings, log: Any = print) -> dict[str, Any]:
    """Fine-tune on freshly drawn world documents, packed, plain next-token loss on every real token."""
    import torch

    from organism.train import lr_lambda  # the organism's warm-up + cosine schedule, same fields

    schedule = lr_lambda(s)
    eos = tokenizer.eos_token_id
    rng = random.Random(s.seed)
    # enough documents for every step: a packed sequence holds ~3 documents on average, draw generously
    docs = world.training_docs(s.steps * s.batch * 6, seed=s.seed * 7 + 1)
    ids = tokenizer(docs, add_special_tokens=False)["input_ids"]
    seqs = pack([x + [eos] for x in ids], s.max_len)
    if len(seqs) < s.steps * s.batch:
        raise ValueError(f"only {len(seqs)} packed sequences for {s.steps} x {s.batch}: draw more documents")
    rng.shuffle(seqs)
    params = trained_params(model, TRAINED_LAYERS)
    opt = torch.optim.AdamW(params, lr=s.lr, betas=(0.9, 0.95), weight_decay=0.0)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if s.bf16 else nullcontext()
    model.train()
    t0, ema, tokens = time.time(), None, 0
    for step in range(s.steps):
        batch = seqs[step * s.batch:(step + 1) * s.batch]
        width = max(map(len, batch))
        x = torch.full((len(batch), width), eos)
        mask = torch.zeros_like(x)
        for i, seq in enumerate(batch):
            x[i, :len(seq)] = torch.tensor(seq)
            mask[i, :len(seq)] = 1
        for group in opt.param_groups:
            group["lr"] = s.lr * schedule(step)
        with autocast:
            loss = model(input_ids=x, attention_mask=mask, labels=x.masked_fill(mask == 0, -100)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        tokens += int(mask.sum())
        ema = loss.item() if ema is None else 0.9 * ema + 0.1 * loss.item()
        if (step + 1) % 10 == 0 or step + 1 == s.steps:
            el = time.time() - t0
            log(f"step {step + 1}/{s.steps} loss {ema:.3f} lr {s.lr * schedule(step):.1e} "
                f"{el / (step + 1):.1f} s/step, eta {el / (step + 1) * (s.steps - step - 1) / 60:.1f} min")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return {"final_loss_ema": round(float(ema or 0.0), 4), "train_tokens": tokens,
            "train_seconds": round(time.time() - t0, 1), "docs_sha256": hashlib.sha256(
                "\n\x00".join(docs).encode()).hexdigest()}


def test_split(items: list[dict[str, Any]], test: int) -> list[dict[str, Any]]:
    """The test part of an eval set, exactly as the sweep splits it (eval.stats.split_items)."""
    from eval.stats import split_items

    return split_items(items, test, SPLIT_SEED)[1]


def measure_card(model: Any, tokenizer: Any, data: dict[str, list[dict[str, Any]]],
                 limit: int | None) -> dict[str, Any]:
    """The target card's accuracies on each set's test split (greedy traces), with Wilson intervals."""
    from eval.stats import wilson
    from organism.measure import measure

    sets = {"forget": test_split(data["eval_forget.jsonl"], TEST_COUNTS["forget"]),
            "retain": test_split(data["eval_retain_heldout.jsonl"], TEST_COUNTS["retain"]),
            "arith": test_split(data["eval_arith.jsonl"], TEST_COUNTS["arith"])}
    acc = measure(model, tokenizer, sets, limit=limit)
    n = acc["n"]
    for key in [k for k, v in acc.items() if isinstance(v, float)]:
        count = (n["forget_single_option_traces"] if key == "forget_letter_follows_trace"
                 else n[key.split("_")[0]])
        lo, hi = wilson(acc[key] * count, count)
        acc[key] = {"rate": round(acc[key], 4), "lo": round(lo, 4), "hi": round(hi, 4), "n": count}
    return acc


def build(a: argparse.Namespace, log: Any = print) -> dict[str, Any]:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from organism.data import build_data, write_data

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    t0 = time.time()
    tokenizer = AutoTokenizer.from_pretrained(a.base)
    sizes = dict(SIZES)
    world = chat_world(a.seed, sizes, tokenizer)
    data = build_data(world)
    data_hashes = write_data(data, a.out / "data")
    extra = write_streams(world, data, a.wiki, a.out / "data")
    log(f"data: {', '.join(f'{k} {len(v)}' for k, v in data.items())}, "
        f"{', '.join(f'{k} {n}' for k, n in extra.items())} -> {a.out / 'data'}")
    data |= retain_streams(world, data, [])
    model = AutoModelForCausalLM.from_pretrained(a.base, dtype=torch.float32)
    s = Settings(steps=a.steps, batch=a.batch, lr=a.lr, seed=a.seed, bf16=a.bf16)
    log(f"teaching {a.base}: {s.steps} steps x {s.batch} x <= {s.max_len} tokens, MLPs of layers "
        f"{TRAINED_LAYERS[0]}-{TRAINED_LAYERS[1]}, lr {s.lr:g}, bf16 autocast {s.bf16}")
    stats = teach(model, tokenizer, world, s, log=log)
    t1 = time.time()
    acc = measure_card(model, tokenizer, data, a.eval_limit)
    log(f"measured on the test splits in {time.time() - t1:.0f} s: " + ", ".join(
        f"{k} {v['rate']:.3f} [{v['lo']:.2f}, {v['hi']:.2f}]" for k, v in acc.items() if isinstance(v, dict)
        and "rate" in v))
    tmp = a.out / "model.tmp"
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    card = {
        "name": "r2mu-sweep testbed: SmolLM2-135M-Instruct taught the synthetic world",
        "base": str(a.base), "seed": a.seed, "sizes": sizes, "mixture": MIXTURE,
        "trained_layers": list(TRAINED_LAYERS), "test_counts": TEST_COUNTS,
        "accuracies_test_split": acc,
        "build": {"command": "python -m smollm2.testbed " + " ".join(sys.argv[1:]), "quick": a.quick,
                  "eval_limit": a.eval_limit, "threads": a.threads, "settings": asdict(s), **stats},
        "wall_time_s": round(time.time() - t0, 1),
        "data_sha256": data_hashes,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    (tmp / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    final = a.out / "model"
    if final.exists():
        import shutil

        shutil.rmtree(final)
    tmp.rename(final)
    (a.out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    log(f"wrote {final} and {a.out / 'data'} in {card['wall_time_s'] / 60:.1f} min")
    return card


def remeasure(a: argparse.Namespace, log: Any = print) -> dict[str, Any]:
    """Measure a built testbed again (OUT/model, the data regenerated from its card's seed); update its card."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from organism.data import build_data, hashes

    torch.set_num_threads(a.threads)
    card_path = a.out / "card.json"
    card = json.loads(card_path.read_text())
    tokenizer = AutoTokenizer.from_pretrained(a.out / "model")
    world = chat_world(card["seed"], card["sizes"], tokenizer)
    data = build_data(world)
    if hashes(data)["all"] != card["data_sha256"]["all"]:
        raise SystemExit(f"{a.out}: the generator no longer makes this testbed's data; rebuild it (make testbed)")
    extra = write_streams(world, data, a.wiki, a.out / "data")  # what the generator adds since the build
    log(f"data: {', '.join(f'{k} {n}' for k, n in extra.items())} -> {a.out / 'data'}")
    data |= retain_streams(world, data, [])
    model = AutoModelForCausalLM.from_pretrained(a.out / "model", dtype=torch.float32)
    t0 = time.time()
    card["accuracies_test_split"] = acc = measure_card(model, tokenizer, data, a.eval_limit)
    card["measure"] = {"command": "python -m smollm2.testbed " + " ".join(sys.argv[1:]),
                       "eval_limit": a.eval_limit, "seconds": round(time.time() - t0, 1)}
    for path in (card_path, a.out / "model" / "card.json"):
        path.write_text(json.dumps(card, indent=2) + "\n")
    log("measured on the test splits: " + ", ".join(
        f"{k} {v['rate']:.3f} [{v['lo']:.2f}, {v['hi']:.2f}] n={v['n']}" for k, v in acc.items()
        if isinstance(v, dict) and "rate" in v))
    return card


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m smollm2.testbed", description=__doc__.splitlines()[0])
    p.add_argument("--base", type=Path, default=Path("assets/smollm2/model"),
                   help="SmolLM2-135M-Instruct as an HF directory (make smollm2 writes it; default %(default)s)")
    p.add_argument("--out", type=Path, default=Path("assets/testbed"), help="output dir (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="world, data and training seed")
    p.add_argument("--wiki", type=Path, default=Path("assets/smollm2/retain.jsonl"),
                   help="Wikipedia paragraphs for the retain stream (make smollm2 writes them; default %(default)s)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default 500; --quick 4)")
    p.add_argument("--batch", type=int, default=None, help="packed sequences per step (default 8; --quick 2)")
    p.add_argument("--lr", type=float, default=Settings.lr, help="peak learning rate (default %(default)s)")
    p.add_argument("--no-bf16", dest="bf16", action="store_false", help="train in float32 (slower)")
    p.add_argument("--threads", type=int, default=2,
                   help="torch threads (default 2: 1.8x faster than 1 on an idle 2-core machine; 1 if it is shared)")
    p.add_argument("--eval-limit", type=int, default=None, help="measure the first N test items of each set")
    p.add_argument("--quick", action="store_true", help="a few steps and 8 eval items: for tests")
    p.add_argument("--measure-only", action="store_true", help="measure the testbed in --out again, update its card")
    a = p.parse_args(argv)
    if a.quick:
        a.steps, a.batch, a.eval_limit = a.steps or 4, a.batch or 2, a.eval_limit or 8
    a.steps, a.batch = a.steps or Settings.steps, a.batch or Settings.batch
    if not a.wiki.exists():
        p.error(f"--wiki {a.wiki}: no such file; run `make smollm2` first (it writes assets/smollm2/retain.jsonl)")
    if a.measure_only:
        if not (a.out / "card.json").exists():
            p.error(f"--measure-only: no testbed in --out {a.out} (no card.json); build it first (make testbed)")
        return a
    if not (a.base / "config.json").exists():
        p.error(f"--base {a.base}: no config.json there; run `make smollm2` first (it writes assets/smollm2/model)")
    if a.steps < 1 or a.batch < 1:
        p.error("--steps and --batch must be >= 1")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    log = lambda m: print(f"[testbed] {m}", flush=True)  # noqa: E731
    remeasure(a, log) if a.measure_only else build(a, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
