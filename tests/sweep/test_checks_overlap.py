"""The dry run refuses a space whose eval questions occur in one of its training streams (sweep/space/checks.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from organism.data import read_jsonl
from organism.paths import resolve
from sweep.run import main
from sweep.space.checks import QuestionIndex, _Question, check_overlap, normalise
from sweep.space.config import ConfigError, absolute_paths, load_space, parse_space
from tests.sweep.conftest import write_jsonl

ROOT = Path(__file__).resolve().parents[2]


def organism_space() -> dict:
    return yaml.safe_load((ROOT / "search_spaces/organism.yaml").read_text())


def overlap(raw: dict) -> str:
    return check_overlap(absolute_paths(parse_space(raw, "space.yaml")))


def test_index_finds_normalised_contained_questions() -> None:
    questions = ["Which vector carries Zorbex?", "What is 12 + 34?", "Short one?"]
    index = QuestionIndex([_Question("eval.forget", "s", "p", q, normalise(q)) for q in questions])
    assert [q.text for q in index.find("Intro.  WHICH vector\n carries   zorbex?\nA. x")] == [questions[0]]
    assert [q.text for q in index.find("so: what is 12 + 34? then short one?")] == questions[1:]
    assert index.find("Which vector carries Zorbexa") == []  # the whole question must occur
    assert index.find("noshort one?") == []  # matches start at a word
    assert index.find("") == []


def test_forget_stream_with_an_eval_question_is_refused(tmp_path, write_space, capsys) -> None:
    item = read_jsonl(resolve("organism://eval/forget"))[17]
    forget = write_jsonl(tmp_path / "forget_with_eval.jsonl", [
        {"id": "a", "text": "A harmless sentence about nothing."},
        {"id": "b", "text": f"Some context.  {item['question'].upper()}\nA. x\nB. y"},
    ])
    raw = organism_space()
    raw["data"]["forget"] = {"path": str(forget), "field": "text"}
    raw["mlflow"] = {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}
    space = write_space(raw)
    assert main(["--space", str(space), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert str(space) in err and str(forget) in err and "organism://eval/forget" in err
    assert "data.forget.path" in err and "eval.forget" in err and item["question"] in err
    assert "Remove these items from the stream, or give the eval set a disjoint file" in err


def test_trace_source_and_cot_are_checked(tmp_path) -> None:
    arith = read_jsonl(resolve("organism://eval/arith"))[3]["problem"]
    retain_q = read_jsonl(resolve("organism://eval/retain"))[5]["question"]
    raw = organism_space()
    raw["data"]["cot"] = {"path": str(write_jsonl(tmp_path / "cot.jsonl", [{"text": f"Q: {arith} A: 1"}]))}
    with pytest.raises(ConfigError, match=r"data\.cot\.path.*eval\.reasoning\.0 \(organism-arith"):
        overlap(raw)
    raw = organism_space()
    traces = write_jsonl(tmp_path / "traces.jsonl", [{"question": "fine?"}, {"question": retain_q}])
    raw["data"]["traces"] = {"source": str(traces), "field": "question"}
    with pytest.raises(ConfigError, match=r"data\.traces\.source.*eval\.retain\.0.*record 2"):
        overlap(raw)


def test_hub_only_eval_sets_are_skipped(tmp_path) -> None:
    raw = organism_space()
    raw["eval"]["forget"] = {"set": "wmdp-bio"}  # no local path: loads from the hub on a cluster only
    raw["eval"]["retain"] = [{"set": "mmlu"}]
    assert overlap(raw).startswith("no overlap: 300 eval questions")  # organism-arith only


# organism.yaml's attacks add the 10 filler texts of relearn_benign (their forget-stream texts are scanned already)
@pytest.mark.parametrize("name,records", [("organism.yaml", 1650), ("rmu.yaml", 1640)])
def test_shipped_spaces_pass(name: str, records: int) -> None:
    found = check_overlap(absolute_paths(load_space(ROOT / "search_spaces" / name)))
    assert found.startswith(f"no overlap: 1260 eval questions against {records} training records"), found


def test_organism_forget_stream_is_checked_against_all_eval_items(tmp_path) -> None:
    """No limit and no split: an item outside the eval's `limit` subsample is still found."""
    last = json.loads(resolve("organism://eval/forget").read_text().splitlines()[-1])["question"]
    raw = organism_space()
    raw["data"]["forget"] = {"path": str(write_jsonl(tmp_path / "f.jsonl", [{"text": last}]))}
    raw["eval"]["forget"]["limit"] = 1
    with pytest.raises(ConfigError, match="1 question"):
        overlap(raw)


@pytest.mark.parametrize("test, fix", [(480, "selection split"), (0.0001, "test split")])
def test_a_split_that_leaves_a_part_empty_is_refused(test, fix) -> None:
    raw = organism_space()
    raw["eval"]["forget"]["test"] = test     # organism-forget holds 480 items
    with pytest.raises(ConfigError, match=rf"eval\.forget\.test: .*{fix}"):
        overlap(raw)


def test_a_fractional_count_is_refused() -> None:
    raw = organism_space()
    raw["eval"]["forget"]["test"] = 2.5
    with pytest.raises(ConfigError, match=r"eval\.forget\.test.*whole number"):
        parse_space(raw)


def test_relearning_texts_with_an_eval_question_are_refused(tmp_path, write_space, capsys) -> None:
    item = read_jsonl(resolve("organism://eval/forget"))[5]
    texts = write_jsonl(tmp_path / "relearn.jsonl", [{"text": "Unrelated."}, {"text": item["question"]}])
    raw = organism_space()
    raw["eval"]["attacks"] = {"relearn_forget": {"kind": "relearn", "path": str(texts)}}
    raw["mlflow"] = {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}
    assert main(["--space", str(write_space(raw)), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "eval.attacks.relearn_forget.path" in err and "attack's texts" in err and item["question"] in err
    raw["eval"]["attacks"]["relearn_forget"]["examples"] = 1  # only the first text is fine-tuned on: no overlap
    assert "no overlap" in overlap(raw)
