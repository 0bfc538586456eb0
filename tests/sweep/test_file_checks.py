"""The dry run opens every file a sweep reads and every place it writes, and refuses a bad one in seconds.

Each case is a real bad copy (the organism's model, data and eval files, copied to a temp dir and broken) run
through `python -m sweep.run --space X --dry-run` as a subprocess: return code 2, the config field and the
file named, no traceback, and nothing written. A dry run is mostly the ~5 s torch/transformers import, so
every case runs through `sweep.run.main` in one batch process (each in its own directory), and the good case
and one bad case also as the command itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml

from organism.paths import URIS
from sweep.space.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]
BASE = URIS["organism://base"]


def organism_space(case: Path) -> dict:
    """search_spaces/organism.yaml with its model copied into `case` and everything written under `case`."""
    raw = yaml.safe_load((ROOT / "search_spaces/organism.yaml").read_text())
    shutil.copytree(BASE, case / "model")
    raw["model"]["path"] = str(case / "model")
    raw["mlflow"]["tracking_uri"] = f"sqlite:///{case}/mlflow.db"
    raw["ray"]["storage_path"] = str(case / "ray_results")
    return raw


def set_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def copy_with_bad_byte(src: Path, dst: Path, line: int) -> Path:
    """`src`'s lines with a Latin-1 é (0xe9, not UTF-8) in the text of line `line` (1-based)."""
    lines = src.read_bytes().splitlines(keepends=True)
    lines[line - 1] = lines[line - 1].replace(b'": "', b'": "caf\xe9 ', 1)  # {"id": "caf\xe9 ...: column 12
    dst.write_bytes(b"".join(lines))
    return dst


def _truncated_weights(case: Path, raw: dict) -> None:
    f = case / "model" / "model.safetensors"
    with f.open("r+b") as fh:
        fh.truncate(f.stat().st_size - 1000)


def _shape_mismatch(case: Path, raw: dict) -> None:
    set_json(case / "model" / "config.json", intermediate_size=256)  # the weights have 512


def _no_weights(case: Path, raw: dict) -> None:
    (case / "model" / "model.safetensors").unlink()


def _gemma(case: Path, raw: dict) -> None:
    set_json(case / "model" / "config.json", model_type="gemma", architectures=["GemmaForCausalLM"])


def _not_vllm(case: Path, raw: dict) -> None:
    set_json(case / "model" / "config.json", architectures=["FooForCausalLM"])  # transformers builds it by model_type
    raw["eval"]["backend"] = "vllm"


def _tokenizer_cut(case: Path, raw: dict) -> None:
    f = case / "model" / "tokenizer.json"
    f.write_text(f.read_text()[:5000])


def _tokenizer_wrong(case: Path, raw: dict) -> None:
    (case / "model" / "tokenizer.json").write_text("{}")  # JSON, but not a tokenizer


def _forget_not_utf8(case: Path, raw: dict) -> None:
    raw["data"]["forget"]["path"] = str(copy_with_bad_byte(URIS["organism://forget"], case / "forget.jsonl", 7))


def _eval_not_utf8(case: Path, raw: dict) -> None:
    raw["eval"]["retain"][0]["path"] = str(copy_with_bad_byte(URIS["organism://eval/retain"],
                                                              case / "eval_retain.jsonl", 12))


def _storage_is_file(case: Path, raw: dict) -> None:
    (case / "ray_results").write_text("not a directory\n")


def _prefix_dir_is_file(case: Path, raw: dict) -> None:
    (case / "cache").write_text("not a directory\n")
    raw["train"]["prefix_cache"]["dir"] = str(case / "cache" / "prefix")


def _prefix_cache_too_big(case: Path, raw: dict) -> None:
    # ~5.4 PB per layer of this model at 10^9 steps; a max_gb that does not cap it: more than any disk holds
    raw["train"]["steps"] = 10**9
    raw["train"]["prefix_cache"]["max_gb"] = 1e9


# name -> (break the copy, the field named, words the message must hold)
CASES: dict[str, tuple[Callable[[Path, dict], None] | None, str, list[str]]] = {
    "good": (None, "", []),
    "truncated_safetensors": (_truncated_weights, "model.path", ["model.safetensors", "truncated", "7291248 bytes"]),
    "shape_mismatch": (_shape_mismatch, "model.path", ["model.safetensors", "'model.layers.0.mlp.gate_proj.weight'",
                                                       "[512, 128]", "[256, 128]"]),
    "no_weights": (_no_weights, "model.path", ["has no weights file", "model.safetensors"]),
    "gemma": (_gemma, "model.path", ["'gemma' is not supported", "llama, qwen2"]),
    "not_vllm": (_not_vllm, "eval.backend", ["FooForCausalLM", "eval.backend: hf"]),
    "tokenizer_cut": (_tokenizer_cut, "model.path", ["tokenizer.json is not valid JSON", "line "]),
    "tokenizer_wrong": (_tokenizer_wrong, "model.path", ["tokenizer", "does not load"]),
    "forget_not_utf8": (_forget_not_utf8, "data.forget.path", ["forget.jsonl line 7, column 12", "0xe9",
                                                               "re-encode the file as UTF-8"]),
    "eval_not_utf8": (_eval_not_utf8, "eval.retain.0.path", ["eval_retain.jsonl line 12, column 12",
                                                             "0xe9",
                                                             "re-encode the file as UTF-8"]),
    "storage_is_file": (_storage_is_file, "ray.storage_path", ["ray_results is a file, not a directory"]),
    "prefix_dir_is_file": (_prefix_dir_is_file, "train.prefix_cache.dir", ["prefix cannot be created",
                                                                           "cache is a file"]),
    "prefix_cache_too_big": (_prefix_cache_too_big, "train.prefix_cache.max_gb", ["GiB free", "max_gb <="]),
}


def snapshot(d: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(d)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(d.rglob("*"))}


ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

# `sweep.run.main` on each case in turn, each in its own directory, in one process: one torch import for all
BATCH = """
import contextlib, io, json, os, sys, traceback
from sweep.run import main
out = {}
for case in sys.argv[1:]:
    os.chdir(case)
    text = io.StringIO()
    with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
        try:
            rc = main(["--space", "space.yaml", "--dry-run"])
        except BaseException:
            traceback.print_exc()
            rc = -1
    out[case] = [rc, text.getvalue()]
print(json.dumps(out))
"""


def cli(case: Path) -> tuple[int, str, float]:
    """`python -m sweep.run --space space.yaml --dry-run` in `case`: (return code, output, seconds)."""
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "sweep.run", "--space", "space.yaml", "--dry-run"], cwd=case, env=ENV,
                       capture_output=True, text=True, timeout=180)
    return p.returncode, p.stdout + p.stderr, time.monotonic() - t0


def batch(cases: list[Path]) -> dict[str, tuple[int, str]]:
    p = subprocess.run([sys.executable, "-c", BATCH, *map(str, cases)], cwd=cases[0], env=ENV, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    return {Path(k).name: tuple(v) for k, v in json.loads(p.stdout.strip().splitlines()[-1]).items()}


CLI = ("good", "truncated_safetensors")  # also run exactly as a user runs it, one process each


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    """Each case built in its own directory, then dry-run: every case in one batch process, and the CLI cases
    also as `python -m sweep.run` (the three processes at once)."""
    root = tmp_path_factory.mktemp("cases")
    cases = {}
    for name, (breaks, _, _) in CASES.items():
        case = root / name
        case.mkdir()
        raw = organism_space(case)
        if breaks:
            breaks(case, raw)
        (case / "space.yaml").write_text(yaml.safe_dump(raw))
        cases[name] = case
    before = {name: snapshot(case) for name, case in cases.items()}
    with ThreadPoolExecutor(3) as pool:
        in_batch = pool.submit(batch, list(cases.values()))
        by_cli = {name: pool.submit(cli, cases[name]) for name in CLI}
        results = {name: {"batch": rc_out} for name, rc_out in in_batch.result().items()}
        for name, f in by_cli.items():
            results[name]["cli"] = f.result()
    for name, case in cases.items():
        results[name]["unchanged"] = snapshot(case) == before[name]
    return results


def test_the_organism_space_passes_and_writes_nothing(runs):
    rc, out, _secs = runs["good"]["cli"]  # its speed is not asserted here (83 s on a loaded 2-core machine)
    assert rc == 0, out
    assert "everything checks out" in out and "  storage    " in out and "GiB free there" in out, out
    assert runs["good"]["batch"][0] == 0, runs["good"]["batch"][1]
    assert runs["good"]["unchanged"]  # no mlflow.db, no ray_results, no cache


@pytest.mark.parametrize("name", [n for n in CASES if n != "good"])
def test_a_bad_file_is_refused_by_the_dry_run(runs, name):
    _, field, words = CASES[name]
    for how in ("batch", "cli") if name in CLI else ("batch",):
        rc, out = runs[name][how][:2]
        assert rc == 2, out
        assert "Traceback" not in out, out
        assert f"{field}: " in out, out
        assert all(w in out for w in words), out
        assert out.count("\n  ") == 0 and out.count("error: ") == 1, out  # one problem: one line
    assert runs[name]["unchanged"], "the dry run wrote into the case directory"


# ---------------------------------------------------------------- in-process: the other weights layouts

def meta_model(d: Path) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(d))


def test_sharded_and_bin_checkpoints(tmp_path):
    from sweep.space.file_checks import check_weights
    from tests.tiny import tiny_model

    model = tiny_model("llama")
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="100KB")
    meta = meta_model(sharded)
    assert check_weights(sharded, meta) == len(model.state_dict())
    shard = sorted(sharded.glob("model-*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(ConfigError, match=rf"{shard.name} is \d+ bytes, but its header describes .* truncated"):
        check_weights(sharded, meta)

    pt = tmp_path / "bin"
    pt.mkdir()
    shutil.copy(sharded / "config.json", pt)
    state = model.state_dict()
    torch.save(state, pt / "pytorch_model.bin")
    assert check_weights(pt, meta) == len(state)
    del state["lm_head.weight"]  # not tied in this model: a missing lm_head is refused
    torch.save(state, pt / "pytorch_model.bin")
    with pytest.raises(ConfigError, match="parameter 'lm_head.weight' of LlamaForCausalLM .* in none of the weights"):
        check_weights(pt, meta)


def test_storage_check_creates_nothing(tmp_path):
    from sweep.space.stores import unusable_dir

    assert unusable_dir(tmp_path / "a" / "b") is None and not (tmp_path / "a").exists()
    (tmp_path / "f").write_text("x")
    assert unusable_dir(tmp_path / "f" / "b") == f"{tmp_path}/f/b cannot be created: {tmp_path}/f is a file, not a " \
                                                "directory"


def test_readers_name_the_file_and_line(tmp_path):
    """Both readers decode every line and name the bad one: the trainer's streams and the eval sets."""
    import gzip

    from eval.benchmarks import read_rows as eval_rows
    from trainables.checks import DataError
    from trainables.data import read_records

    rows = b'{"text": "one"}\n{"text": "two"}\n{"text": "caf\xe9"}\n'
    (tmp_path / "a.jsonl").write_bytes(rows)
    with pytest.raises(DataError, match=r"data\.cot\.path: .*a\.jsonl line 3, column 14: byte 0xe9 is not UTF-8"):
        read_records(tmp_path / "a.jsonl", limit=1, what="data.cot")  # past the limit too
    (tmp_path / "b.jsonl").write_bytes(gzip.compress(b'{"text": "x"}\n'))
    with pytest.raises(DataError, match=r"data\.forget\.path: .*b\.jsonl is gzip-compressed"):
        read_records(tmp_path / "b.jsonl", what="data.forget")
    for name, data in (("c.jsonl.gz", gzip.compress(rows)), ("d.csv", b"question,answer\nq,1\nq\xe9,2\n"),
                       ("e.json", b'[{"problem": "1+1",\n  "answer": "2\xe9"}]')):
        (tmp_path / name).write_bytes(data)
        line = 2 if name == "e.json" else 3
        with pytest.raises(ValueError, match=rf"{name} line {line}, column \d+: byte 0xe9 is not UTF-8.*re-encode"):
            eval_rows(tmp_path / name)
