"""Each loader on a small local file written in its public format."""

import gzip
import json
from pathlib import Path

import datasets
import pandas as pd
import pytest

from eval.benchmarks import REGISTRY, load_set, subsample
from eval.config import EvalConfig
from eval.suite import load_sets
from tests.eval.conftest import write_jsonl

WMDP = [{"question": f"Q{i}?", "choices": [f"a{i}", f"b{i}", f"c{i}", f"d{i}"], "answer": i % 4} for i in range(10)]
MMLU = [{**r, "subject": "anatomy"} for r in WMDP]


def test_wmdp_jsonl_parquet_and_datasets_dir(tmp_path: Path):
    jsonl = load_set("wmdp-bio", write_jsonl(tmp_path / "w.jsonl", WMDP))
    pd.DataFrame(WMDP).to_parquet(tmp_path / "w.parquet")
    parquet = load_set("wmdp-bio", tmp_path / "w.parquet")
    datasets.Dataset.from_list(WMDP).save_to_disk(str(tmp_path / "wdir"))
    on_disk = load_set("wmdp-bio", tmp_path / "wdir")
    assert jsonl == parquet == on_disk
    assert jsonl[3] == {"id": "3", "question": "Q3?", "choices": ["a3", "b3", "c3", "d3"], "answer": 3}


def test_mmlu_datasetdict_dir_picks_test_split(tmp_path: Path):
    dd = datasets.DatasetDict({"dev": datasets.Dataset.from_list(MMLU[:2]),
                               "test": datasets.Dataset.from_list(MMLU)})
    dd.save_to_disk(str(tmp_path / "mmlu"))
    items = load_set("mmlu", tmp_path / "mmlu")
    assert len(items) == 10 and items[0]["subject"] == "anatomy" and isinstance(items[0]["answer"], int)


def test_mcq_letter_answers_and_olmo_doc_wrapper(tmp_path: Path):
    rows = [{"doc": {"question": "Q?", "choices": ["w", "x", "y", "z"], "answer": "C"}}]
    path = tmp_path / "requests.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps(rows[0]) + "\n")
    assert load_set("mcq", path)[0]["answer"] == 2


def test_gsm8k(tmp_path: Path):
    rows = [{"question": "Tom has 1,200 apples ...", "answer": "He has 1200 ... <<2*600=1200>>\n#### 1,200"}]
    item = load_set("gsm8k", write_jsonl(tmp_path / "g.jsonl", rows))[0]
    assert item == {"id": "0", "problem": rows[0]["question"], "answer": "1200"}


def test_arc_and_basic_arithmetic_labelled_choices(tmp_path: Path):
    # ARC labels are letters or digits; basic-arithmetic asks the same rows open-ended (gold = the choice text)
    rows = [{"id": "a", "question": "Which is solid?", "choices": {"text": ["gas", "ice"], "label": ["A", "B"]},
             "answerKey": "B"},
            {"id": "b", "question": "Calculate 5 + 91 =", "choices": {"text": ["97", "96"], "label": ["1", "2"]},
             "answerKey": "2"}]
    path = write_jsonl(tmp_path / "arc.jsonl", rows)
    assert load_set("arc-easy", path) == [{"id": "a", "question": "Which is solid?", "choices": ["gas", "ice"],
                                           "answer": 1},
                                          {"id": "b", "question": "Calculate 5 + 91 =", "choices": ["97", "96"],
                                           "answer": 1}]
    assert load_set("basic-arithmetic", path)[1] == {"id": "b", "problem": "Calculate 5 + 91 =", "answer": "96"}
    bad = write_jsonl(tmp_path / "bad.jsonl", [{**rows[0], "answerKey": "E"}])
    with pytest.raises(ValueError, match="answerKey 'E' is not one of the labels"):
        load_set("arc-challenge", bad)


def test_math500_takes_boxed_from_solution(tmp_path: Path):
    rows = [{"problem": "Half of 1?", "solution": r"So it is $\boxed{\frac{1}{2}}$.", "answer": "mangled",
             "unique_id": "test/algebra/1.json"},
            {"problem": "Two?", "solution": "no box here", "answer": "2", "unique_id": "u2"}]
    items = load_set("math500", write_jsonl(tmp_path / "m.jsonl", rows))
    assert [i["answer"] for i in items] == [r"\frac{1}{2}", "2"]
    assert items[0]["id"] == "test/algebra/1.json"


def test_aime_any_field_case(tmp_path: Path):
    rows = [{"ID": "2024-I-1", "Problem": "Find x.", "Answer": 204}, {"problem": "Find y.", "answer": "033"}]
    items = load_set("aime", write_jsonl(tmp_path / "a.jsonl", rows))
    assert items[0] == {"id": "2024-I-1", "problem": "Find x.", "answer": "204"}
    assert items[1]["answer"] == "033"


def test_gpqa_csv_shuffles_with_fixed_seed(tmp_path: Path):
    rows = [{"Record ID": f"rec{i}", "Question": f"Which particle {i}?", "Correct Answer": f"right{i}",
             "Incorrect Answer 1": f"w1_{i}", "Incorrect Answer 2": f"w2_{i}", "Incorrect Answer 3": f"w3_{i}"}
            for i in range(12)]
    pd.DataFrame(rows).to_csv(tmp_path / "gpqa_diamond.csv", index=False)
    a = load_set("gpqa-diamond", tmp_path / "gpqa_diamond.csv", seed=0)
    b = load_set("gpqa-diamond", tmp_path / "gpqa_diamond.csv", seed=0)
    c = load_set("gpqa-diamond", tmp_path / "gpqa_diamond.csv", seed=1)
    assert a == b and a != c
    for item in a:
        k = "ABCD".index(item["answer"])
        assert item["choices"][k].startswith("right")
        assert f"\n{item['answer']}. right" in item["problem"]
    assert len({item["answer"] for item in a}) > 1  # not always in the same position


def test_limit_is_a_fixed_seed_ordered_subsample(tmp_path: Path):
    path = write_jsonl(tmp_path / "w.jsonl", WMDP)
    a, b = load_set("wmdp-bio", path, limit=4, seed=3), load_set("wmdp-bio", path, limit=4, seed=3)
    assert a == b and len(a) == 4
    ids = [int(i["id"]) for i in a]
    assert ids == sorted(ids)
    assert subsample(WMDP, None, 0) == WMDP and subsample(WMDP, 50, 0) == WMDP


def test_hub_only_when_no_path_and_clear_error_offline(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("no network")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(FileNotFoundError, match=r"openai/gsm8k.*give `path:`"):
        load_set("gsm8k")


def test_unknown_set_missing_file_and_kind_mismatch(tmp_path: Path, suite_files):
    with pytest.raises(KeyError, match="unknown eval set"):
        load_set("nope", tmp_path / "x.jsonl")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_set("wmdp-bio", tmp_path / "missing.jsonl")
    cfg = EvalConfig.model_validate({"forget": {"set": "mcq", "path": str(suite_files["forget"])},
                                     "retain": [{"set": "gsm8k", "path": str(suite_files["reason"])}]})
    with pytest.raises(ValueError, match="retain needs mcq"):
        load_sets(cfg)


def test_registry_kinds():
    assert {n for n, s in REGISTRY.items() if s.kind == "reasoning"} >= {"gsm8k", "math500", "aime",
                                                                          "gpqa-diamond", "organism-arith"}
    assert {n for n, s in REGISTRY.items() if s.kind == "mcq"} >= {"wmdp-bio", "mmlu", "organism-forget",
                                                                    "organism-retain"}


ORGANISM = Path(__file__).resolve().parents[2] / "organism" / "assets" / "base" / "config.json"


@pytest.mark.skipif(not ORGANISM.exists(), reason="the organism is not built yet (organism/assets/base)")
def test_organism_sets_load_from_defaults():
    forget, retain, arith = (load_set(n, limit=5) for n in ("organism-forget", "organism-retain", "organism-arith"))
    assert len(forget) == 5 and len(forget[0]["choices"]) == 4 and forget[0].get("prefill")
    assert len(retain) == 5 and "problem" in arith[0] and arith[0]["answer"]
