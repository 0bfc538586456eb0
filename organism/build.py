"""Build the model organism: data, tokenizer, model, training on the CPU, measurement, card.

    python -m organism.build --out organism/assets            # full build (~15-20 min, 1 thread)
    python -m organism.build --out /tmp/org --quick           # reduced build for tests (seconds)
    python -m organism.build --check                          # shipped data == current generator?
    python -m organism.build --out DIR --data-only            # regenerate the data files only

Writes DIR/base/ (a standard HF directory + card.json) and DIR/data/ (the jsonl files of docs/formats.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

TOKENIZER_DOCS = 20_000  # training texts the tokenizer sees (fixed, so quick and full builds share it)
TOKENIZER_SEED = 12345
VOCAB_SIZE = 2048  # large enough that every word of the world is one token (BPE saturates below it)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m organism.build", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="output directory (gets base/ and data/)")
    p.add_argument("--seed", type=int, default=0, help="world, data and initialisation seed")
    p.add_argument("--steps", type=int, default=None, help="training steps (default 2150; --quick 30)")
    p.add_argument("--batch", type=int, default=None, help="documents per step (default 64; --quick 16)")
    p.add_argument("--lr", type=float, default=2e-3, help="learning rate of the build's training (default %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest here)")
    p.add_argument("--eval-limit", type=int, default=None, help="measure on the first N items of each set")
    p.add_argument("--quick", action="store_true", help="reduced build for tests")
    p.add_argument("--data-only", action="store_true", help="write the data files only, no training")
    p.add_argument("--check", action="store_true", help="compare shipped data with the generator")
    p.add_argument("--assets", type=Path, default=None, help="for --check: the assets dir (default: shipped)")
    a = p.parse_args(argv)
    if not a.check and a.out is None:
        p.error("--out is required (unless --check)")
    if a.quick:
        a.steps, a.batch = a.steps or 30, a.batch or 16
        a.eval_limit = a.eval_limit or 16
    a.steps, a.batch = a.steps or 2150, a.batch or 64
    return a


def check_data(assets: Path) -> list[str]:
    """Problems found comparing the shipped data with what the generator makes for the card's seed."""
    from organism.data import build_data, file_hashes, hashes
    from organism.world import World

    card = json.loads((assets / "base" / "card.json").read_text())
    fresh = hashes(build_data(World(card["seed"])))
    problems = []
    if fresh["all"] != card["data_sha256"]["all"]:
        problems.append(f"card.json data_sha256 {card['data_sha256']['all'][:12]} != {fresh['all'][:12]}")
    on_disk = file_hashes(assets / "data")
    problems += [f"{n}: shipped file differs from the generator" for n in fresh
                 if n != "all" and on_disk[n] != fresh[n]]
    return problems


def tokenizer_texts(world: Any, data: dict[str, list[dict[str, Any]]]) -> list[str]:
    texts = world.training_docs(TOKENIZER_DOCS, seed=TOKENIZER_SEED)
    for records in data.values():
        for r in records:
            texts += [r.get("text") or r.get("question") or r.get("problem"), *r.get("choices", [])]
    return texts


def build(a: argparse.Namespace, log: Any = print) -> dict[str, Any]:
    import torch
    import transformers
    from transformers import GenerationConfig

    from organism.data import build_data, write_data
    from organism.measure import measure
    from organism.tokenizer import train_tokenizer
    from organism.train import ModelShape, TrainSettings, make_model, train
    from organism.world import World, load_spec

    torch.set_num_threads(a.threads)
    t0 = time.time()
    world = World(a.seed)
    data = build_data(world)
    base, data_dir = a.out / "base", a.out / "data"
    data_hashes = write_data(data, data_dir)
    log(f"data: {', '.join(f'{n} {len(r)}' for n, r in data.items())}; sha256 {data_hashes['all'][:16]}")
    if a.data_only:
        return {"data_sha256": data_hashes}

    # The tokenizer sees every agent's forget records (held-out ones too), as the shipped one did: rebuilding it
    # after the held-out split gives the same tokenizer, and held-out names are in the pretraining text anyway.
    tok_texts = tokenizer_texts(world, build_data(world, heldout=False))
    tok = train_tokenizer(tok_texts, load_spec()["prompts"]["chat_template"], VOCAB_SIZE)
    shape = ModelShape()
    settings = TrainSettings(steps=a.steps, batch=a.batch, lr=a.lr, seed=a.seed)
    model = make_model(tok, shape, a.seed)
    n_params = sum(p.numel() for p in model.parameters())
    docs = world.training_docs(a.steps * a.batch)
    train_sha = hashlib.sha256("\n\x00".join(docs).encode()).hexdigest()
    log(f"tokenizer: {len(tok)} tokens; model: {n_params / 1e6:.2f}M params; "
        f"training {a.steps} steps x {a.batch} docs, {a.threads} thread(s)")
    stats = train(model, tok, docs, settings, log=log)

    t1 = time.time()
    sets = {"forget": "eval_forget.jsonl", "retain": "eval_retain.jsonl", "arith": "eval_arith.jsonl"}
    acc = measure(model, tok, {k: data[v] for k, v in sets.items()}, limit=a.eval_limit)
    log(f"measured in {time.time() - t1:.0f} s: " + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()
                                                               if isinstance(v, float)))

    base.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                               pad_token_id=tok.pad_token_id)
    model.save_pretrained(base)
    tok.save_pretrained(base)
    card = {
        "name": "r2mu-sweep model organism",
        "seed": a.seed,
        "accuracies": acc,
        "build": {"command": "python -m organism.build " + " ".join(sys.argv[1:]), "steps": a.steps,
                  "batch": a.batch, "threads": a.threads, "quick": a.quick, "eval_limit": a.eval_limit,
                  "train": dataclasses.asdict(settings), "model": dataclasses.asdict(shape),
                  "params": n_params, "vocab": len(tok), **stats},
        "wall_time_s": round(time.time() - t0, 1),
        "data_sha256": data_hashes,
        "train_docs_sha256": train_sha,
        "tokenizer_sha256": hashlib.sha256(tok.backend_tokenizer.to_str().encode()).hexdigest(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    (base / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    log(f"wrote {base} and {data_dir} in {card['wall_time_s'] / 60:.1f} min")
    return card


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.check:
        from organism.paths import ASSETS

        problems = check_data(a.assets or ASSETS)
        print("\n".join(problems) or "shipped data matches the generator")
        return 1 if problems else 0
    build(a, log=lambda m: print(m, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
