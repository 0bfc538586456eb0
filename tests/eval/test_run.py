"""`evaluate` and the CLI end to end with the transformers backend, on a model whose metrics are known."""

import json

import pytest
import yaml

from eval.config import METRICS, EvalConfig
from eval.generate import HFBackend
from eval.leakage import MatchJudge
from eval.metrics import trace_leak
from eval.suite import EvalResult, evaluate_model, format_metrics, load_suite, main, with_overrides
from tests.eval.conftest import MCQ_ITEMS


def suite(files, **extra) -> EvalConfig:
    return EvalConfig.model_validate({
        "forget": {"set": "mcq", "path": str(files["forget"]), "test": 0},
        "reasoning": [{"set": "reasoning", "path": str(files["reason"]), "test": 0}],
        "retain": [{"set": "mcq", "path": str(files["retain"]), "test": 0}],
        "generation": {"temperature": 0.0, "max_new_tokens": 40},
        **extra,
    })


@pytest.fixture(scope="module")
def taught(taught_dir):
    return HFBackend(taught_dir)


def test_evaluate_known_metrics(taught, suite_files, tmp_path):
    result = evaluate_model(taught, suite(suite_files), scorer=taught)
    m = result.metrics
    grouped = {k for k in METRICS if k.endswith(("/trained", "/heldout"))}  # only for items with a `group`
    assert set(METRICS) - grouped <= set(m) and not grouped & set(m)
    assert m["trace_leak"] == 1.0 and m["judge_unparsed"] == 0     # every trace states the answer
    # every rate has its item count and a 95% interval around it (Wilson: 3 of 3 -> [0.44, 1])
    assert m["trace_leak_n"] == 3 and m["trace_leak_hi"] == 1.0 and 0.4 < m["trace_leak_lo"] < 0.5
    assert all(m[f"{k}_lo"] <= m[k] <= m[f"{k}_hi"] for k in METRICS if k in m and k != "gen_tokens_per_s")
    # the taught model's traces are what it was taught: the scorer (itself here) finds them likely
    assert 0.5 < m["trace_coherence"] <= 1.0
    assert m["retain_trace_acc"] == 1.0 and m["retain_trace_acc_n"] == 2
    assert m["forget_acc"] == 1.0 and m["retain_acc"] == 1.0        # taught "Question: ..\nAnswer: <option>"
    assert m["reason_acc"] == 1.0 and m["reason_acc/reasoning"] == 1.0 and m["retain_acc/mcq"] == 1.0
    assert 0.0 <= m["forget_acc_letter"] <= 1.0 and 0.0 <= m["prefill_acc"] <= 1.0
    assert m["gen_tokens_per_s"] > 0 and result.wall_s > 0

    leak_rows = [r for r in result.records if r["metric"] == "trace_leak"]
    assert len(leak_rows) == len(MCQ_ITEMS) and all(r["leak"] for r in leak_rows)
    assert {r["metric"] for r in result.records} == {"trace_leak", "forget_acc", "forget_acc_letter",
                                                     "prefill_acc", "reason_acc", "retain_acc",
                                                     "retain_trace_acc", "trace_coherence"}
    path = result.write_records(tmp_path / "r.jsonl")
    assert len(path.read_text().splitlines()) == len(result.records)
    table = result.table()
    assert len({len(col) for col in table.values()}) == 1 and {"set", "id", "prompt", "trace"} <= set(table)
    assert result.to_dataframe().shape[0] == len(result.records)
    assert "trace_leak" in format_metrics(m).splitlines()[0]


def test_retain_traces_can_take_fewer_items_than_retain_acc(taught, suite_files):
    m = evaluate_model(taught, suite(suite_files, retain_trace_items=1, coherence=False)).metrics
    assert m["retain_trace_acc_n"] == 1 and m["retain_acc_n"] == 2


def test_letter_scoring_config_and_judge_on_untaught_model(hf, suite_files):
    result = evaluate_model(hf, suite(suite_files, mcq_scoring="letter"))
    assert result.metrics["forget_acc"] == result.metrics["forget_acc_letter"]
    assert result.metrics["trace_leak"] == 0.0   # a random model's byte soup names no option
    assert isinstance(result, EvalResult)


def test_match_leak_zero_when_traces_name_a_wrong_option(taught):
    # Same questions, but the gold is another option: the traces name the (now) wrong one.
    moved = [{**item, "answer": (item["answer"] + 1) % 4} for item in MCQ_ITEMS]
    from eval.config import GenerationConfig
    result = trace_leak(taught, moved, MatchJudge(), GenerationConfig(temperature=0.0, max_new_tokens=40))
    assert result.value == 0.0


def test_suite_loading_and_overrides(tmp_path, suite_files):
    space = {"name": "x", "model": {"path": "m"}, "eval": suite(suite_files).model_dump()}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    cfg = load_suite(str(path))
    assert cfg.forget.path == str(suite_files["forget"])
    over = with_overrides(cfg, limit=2, greedy=True, backend="hf")
    assert over.forget.limit == 2 and all(r.limit == 2 for r in over.reasoning + over.retain)
    assert over.generation.temperature == 0.0 and over.backend == "hf"
    organism = load_suite("organism")
    assert organism.forget.set == "organism-forget" and organism.reasoning[0].set == "organism-arith"


def test_cli(taught_dir, suite_files, tmp_path, capsys):
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({"eval": suite(suite_files).model_dump()}))
    out = tmp_path / "out" / "results.json"
    assert main(["--model", str(taught_dir), "--suite", str(path), "--out", str(out), "--backend", "hf",
                 "--limit", "2", "--greedy"]) == 0
    summary = json.loads(out.read_text())
    assert summary["backend"] == "hf" and summary["metrics"]["reason_acc"] == 1.0
    assert summary["config"]["forget"]["limit"] == 2
    records = out.with_suffix(".records.jsonl").read_text().splitlines()
    assert json.loads(records[0])["set"] == "mcq"
    assert "reason_acc" in capsys.readouterr().out


def test_load_backend_choices(tiny_dir):
    from eval.generate import load_backend

    with load_backend(tiny_dir, "hf", engine=EvalConfig.model_validate({"forget": {"set": "mcq"}}).engine) as b:
        assert isinstance(b, HFBackend) and b.batch_size == 16
    with pytest.raises(ValueError, match="use auto, vllm or hf"):
        load_backend(tiny_dir, "tgi")


def test_cli_test_split_and_coherence(taught_dir, tmp_path, capsys):
    """`--split test` evaluates only the test part of each set; `--base` adds trace_coherence."""
    rows = [{**MCQ_ITEMS[i % 3], "id": f"q{i}"} for i in range(12)]
    forget = tmp_path / "forget.jsonl"
    forget.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({"eval": {"forget": {"set": "mcq", "path": str(forget), "test": 4},
                                             "generation": {"temperature": 0.0, "max_new_tokens": 20}}}))
    out = tmp_path / "r.json"
    assert main(["--model", str(taught_dir), "--suite", str(path), "--out", str(out), "--backend", "hf",
                 "--split", "test", "--base", str(taught_dir)]) == 0
    m = json.loads(out.read_text())["metrics"]
    assert m["trace_leak_n"] == 4 and m["forget_acc_n"] == 4 and 0 < m["trace_coherence"] <= 1
    printed = capsys.readouterr().out
    assert "trace_leak" in printed and "n=4" in printed      # the table folds the interval into the row
    assert main(["--model", str(taught_dir), "--suite", str(path), "--out", str(out), "--backend", "hf"]) == 0
    m = json.loads(out.read_text())["metrics"]
    assert m["trace_leak_n"] == 12 and "trace_coherence" not in m   # --split all (default), no --base


def run_cli(*args: str, cwd) -> tuple[int, str, str]:
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    p = subprocess.run([sys.executable, "-m", "eval.suite", *args], cwd=cwd, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}, timeout=120)
    return p.returncode, p.stdout, p.stderr


def test_cli_mistakes_are_one_line(tiny_dir, suite_files, tmp_path):
    """A missing suite file, a missing model, a misspelt judge: one line naming the flag or field, exit 2."""
    good = tmp_path / "suite.yaml"
    good.write_text(yaml.safe_dump({"eval": suite(suite_files).model_dump()}))
    bad_judge = tmp_path / "judge.yaml"
    bad_judge.write_text(yaml.safe_dump({"eval": suite(suite_files).model_dump() | {"judge": "mtch"}}))
    out = str(tmp_path / "out.json")
    cases = [
        (["--model", str(tiny_dir), "--suite", "nope.yaml"], ["--suite: no such file 'nope.yaml'", "'organism'"]),
        (["--model", str(tmp_path / "no-model"), "--suite", str(good)],
         ["--model:", "no-model' does not exist", "give an HF model directory"]),
        (["--model", "assets/smollm2/model", "--suite", str(good)], ["run `make smollm2` first"]),
        (["--model", str(tiny_dir), "--suite", str(bad_judge)],
         [f"--suite {bad_judge}: eval.judge: Input should be 'match' or 'llm' (got 'mtch')"]),
    ]
    for args, words in cases:
        rc, stdout, err = run_cli(*args, "--out", out, "--backend", "hf", cwd=tmp_path)
        assert rc == 2 and "Traceback" not in err and err.count("\n") == 1, err
        assert err.startswith("error: ") and all(w in err for w in words), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["judge.yaml", "suite.yaml"]
