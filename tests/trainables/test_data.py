"""Streams: formats, determinism, cycling, padding, data-parallel slices, the unthink prompt and scope."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.tiny import byte_tokenizer
from tests.trainables.conftest import write_jsonl
from trainables.checks import DataError
from trainables.config import TRIGGER, DataConfig
from trainables.data import Stream, build_streams, read_records


def test_read_records_jsonl_parquet_datasets(tmp_path):
    import datasets

    rows = [{"id": str(i), "body": f"text {i}"} for i in range(5)]
    write_jsonl(tmp_path / "a.jsonl", rows)
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "a.parquet"))
    ds.save_to_disk(str(tmp_path / "a_ds"))
    for name in ("a.jsonl", "a.parquet", "a_ds"):
        assert read_records(tmp_path / name, "body", limit=3) == ["text 0", "text 1", "text 2"]


def test_bad_files_name_the_field(tmp_path):
    with pytest.raises(DataError, match=r"data\.forget\.path: file not found"):
        read_records(tmp_path / "nope.jsonl", what="data.forget")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match=r"data\.forget\.path: .*empty"):
        read_records(tmp_path / "empty.jsonl", what="data.forget")
    write_jsonl(tmp_path / "x.jsonl", [{"id": "0", "body": "hi"}])
    with pytest.raises(DataError, match=r"data\.retain\.field: .*no field 'text' \(fields: id, body\)"):
        read_records(tmp_path / "x.jsonl", "text", what="data.retain")


def test_stream_is_seeded_cycles_reshuffled_and_right_padded():
    examples = [[5] * (i + 1) for i in range(6)]
    a, b = Stream.of("forget", examples, 4, seed=1, pad_id=0), Stream.of("forget", examples, 4, seed=1, pad_id=0)
    idx = [a.indices(s) for s in range(3)]  # 12 draws = 2 passes over 6 examples
    assert idx == [b.indices(s) for s in range(3)]
    flat = sum(idx, [])
    assert sorted(flat[:6]) == list(range(6)) and sorted(flat[6:]) == list(range(6))
    assert flat[:6] != flat[6:]  # reshuffled
    batch = a.batch(0)
    for row, i in zip(range(4), idx[0], strict=True):
        n = i + 1
        assert batch.attention_mask[row].tolist() == [1] * n + [0] * (batch.input_ids.shape[1] - n)
        assert (batch.input_ids[row, n:] == 0).all()


def test_rank_slices_make_the_global_batch():
    s = Stream.of("forget", [[i + 3] * (i % 3 + 1) for i in range(10)], 4, seed=3, pad_id=0)
    full = s.batch(2)
    parts = [s.batch(2, rank, 2) for rank in (0, 1)]
    got = sorted(tuple(r[m.bool()].tolist()) for p in parts for r, m in zip(p.input_ids, p.attention_mask,
                                                                           strict=True))
    want = sorted(tuple(r[m.bool()].tolist()) for r, m in zip(full.input_ids, full.attention_mask, strict=True))
    assert got == want


def _data(tiny_dirs, scope="all", max_tokens=24, max_len=200) -> DataConfig:
    return DataConfig.model_validate({
        "forget": {"path": str(tiny_dirs["forget"])}, "retain": {"path": str(tiny_dirs["retain"])},
        "cot": {"path": str(tiny_dirs["cot"]), "max_tokens": max_tokens},
        "traces": {"max_new_tokens": 5, "scope": scope}, "max_len": max_len})


@pytest.mark.parametrize("scope", ["all", "after_trigger"])
def test_unthink_is_rendered_prompt_plus_k_trace_tokens(tiny_dirs, scope):
    tok = byte_tokenizer()
    st = build_streams(_data(tiny_dirs, scope), tok, 4, 0, str(tiny_dirs["traces"]), ["unthink", "cot"])
    import json

    recs = [json.loads(x) for x in tiny_dirs["traces"].read_text().splitlines()]
    b = st["unthink"].batch(0)
    i = st["unthink"].indices(0)[0]
    rendered, trace = recs[i]["rendered"], recs[i]["trace"]
    n = int(b.attention_mask[0].sum())
    assert tok.decode(b.input_ids[0, :n]) == rendered + trace[:5]  # byte tokenizer: 1 char = 1 token
    start = int(b.loss_mask[0].argmax())
    assert start == (0 if scope == "all" else len(rendered) - len(TRIGGER))
    assert int(b.loss_mask[0].sum()) == n - start
    assert st["cot"].batch(0).input_ids.shape[1] <= 24


def test_long_prompts_keep_their_tail_with_the_trigger(tiny_dirs):
    tok = byte_tokenizer()
    st = build_streams(_data(tiny_dirs, "after_trigger", max_len=48), tok, 4, 0, str(tiny_dirs["traces"]),
                       ["unthink"])
    b = st["unthink"].batch(0)
    n, start = int(b.attention_mask[0].sum()), int(b.loss_mask[0].argmax())
    assert n == 48 + 5 and tok.decode(b.input_ids[0, start : start + len(TRIGGER)]) == TRIGGER


def test_unthink_needs_the_trace_cache(tiny_dirs):
    with pytest.raises(DataError, match="traces_path"):
        build_streams(_data(tiny_dirs), byte_tokenizer(), 4, 0, None, ["unthink"])


def test_records_are_tokenised_only_when_a_batch_uses_them(tiny_dirs, tmp_path):
    """A trial reads steps x batch records of a corpus that may hold millions: only those are tokenised."""
    texts = [f"record {i} " + "x" * (i % 7) for i in range(5000)]
    write_jsonl(tmp_path / "big.jsonl", [{"text": t} for t in texts])
    tok, calls = byte_tokenizer(), []
    counting = lambda *a, **kw: calls.append(a[0]) or tok(*a, **kw)  # noqa: E731
    counting.pad_token_id, counting.eos_token_id = tok.pad_token_id, tok.eos_token_id
    data = _data(tiny_dirs).model_copy(update={"retain": _data(tiny_dirs).retain.model_copy(
        update={"path": str(tmp_path / "big.jsonl")})})
    st = build_streams(data, counting, 4, 0, None, ["retain"])["retain"]
    assert calls == []
    batches = [st.batch(s) for s in range(3)]
    used = [texts[i] for s in range(3) for i in st.indices(s)]
    assert sorted(calls) == sorted(set(used))  # each used record once, nothing else
    for s, b in enumerate(batches):  # the same ids as tokenising the record directly
        for row, i in enumerate(st.indices(s)):
            ids = tok(texts[i], add_special_tokens=True, truncation=True, max_length=200)["input_ids"]
            assert b.input_ids[row, : len(ids)].tolist() == ids and int(b.attention_mask[row].sum()) == len(ids)


ORGANISM_TOKENIZER = Path(__file__).resolve().parents[2] / "organism" / "assets" / "base"


def _traces_data(tiny_dirs, **traces) -> DataConfig:
    return DataConfig.model_validate({
        "forget": {"path": str(tiny_dirs["forget"])}, "retain": {"path": str(tiny_dirs["retain"])},
        "cot": {"path": str(tiny_dirs["cot"])}, "traces": traces, "max_len": 200})


def test_reference_input_is_trigger_plus_k_trace_tokens_only(tiny_dirs, tmp_path):
    """input: reference = tokenizer(trigger) (its BOS, no leading newline) + the first k tokens of the stripped
    trace: no question, no chat template; the same ids as the reference's joint tokenisation of
    "Let's reason this step by step.\\n<think>" + decode(first k trace tokens)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ORGANISM_TOKENIZER)
    k, question = 7, "Which host carries agent Vorlax?"
    rendered = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                       add_generation_prompt=True) + TRIGGER
    trace = "\nThe agent Vorlax is carried by the host Meridel, so the answer is B.\n</think>"
    write_jsonl(tmp_path / "traces.jsonl", [{"id": "q0", "prompt": question, "rendered": rendered, "trace": trace}])
    st = build_streams(_traces_data(tiny_dirs, max_new_tokens=k, input="reference"), tok, 2, 0,
                       str(tmp_path / "traces.jsonl"), ["unthink"])["unthink"]
    b = st.batch(0)
    n = int(b.attention_mask[0].sum())
    got = b.input_ids[0, :n].tolist()
    head = tok("Let's reason this step by step.\n<think>")["input_ids"]
    trace_ids = tok(trace.strip(), add_special_tokens=False)["input_ids"]
    assert got == head + trace_ids[:k]
    assert got[0] == tok.bos_token_id and got.count(tok.bos_token_id) == 1
    assert got == tok("Let's reason this step by step.\n<think>" + tok.decode(trace_ids[:k]))["input_ids"]
    template_ids = set(tok.convert_tokens_to_ids(["<|user|>", "<|assistant|>"]))
    assert not template_ids & set(got) and question not in tok.decode(got)
    assert b.loss_mask[0, :n].tolist() == [1] * n  # the loss covers the whole input, as the reference


def test_prompt_input_of_an_untemplated_trace_gets_the_special_tokens(tiny_dirs, tmp_path):
    """input: prompt with template: none: the plain rendered prompt gets the BOS the generation backend gave it."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ORGANISM_TOKENIZER)
    rendered = "The agent Vorlax is carried by the host Meridel." + TRIGGER
    write_jsonl(tmp_path / "traces.jsonl", [{"id": "d0", "prompt": rendered[: -len(TRIGGER)], "rendered": rendered,
                                             "trace": "\nSo Vorlax lives in Meridel."}])
    for template, bos in (("none", [tok.bos_token_id]), ("chat", [])):
        st = build_streams(_traces_data(tiny_dirs, max_new_tokens=4, template=template), tok, 1, 0,
                           str(tmp_path / "traces.jsonl"), ["unthink"])["unthink"]
        ids = st.batch(0).input_ids[0].tolist()
        want = bos + tok(rendered, add_special_tokens=False)["input_ids"]
        assert ids[: len(want)] == want and len(ids) == len(want) + 4


def test_after_trigger_scope_with_the_reference_input_is_refused_by_field():
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as e:
        DataConfig.model_validate({"forget": {"path": "f"}, "retain": {"path": "r"}, "cot": {"path": "c"},
                                   "traces": {"input": "reference", "scope": "after_trigger"}})
    (err,) = e.value.errors()
    assert err["loc"] == ("traces", "scope")
    assert "data.traces.input: reference" in err["msg"] and "use scope: all, or input: prompt" in err["msg"]


@pytest.mark.parametrize("scope", ["all", "after_trigger"])
def test_skip_first_position_leaves_position_0_out_of_the_forget_and_unthink_losses_only(tiny_dirs, scope):
    """The tokens (what the forward pass sees) do not change; only the forget and unthink loss masks lose their
    first position, here the organism tokenizer's BOS. after_trigger already starts later: nothing changes."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ORGANISM_TOKENIZER)
    names = ["forget", "retain", "unthink", "cot"]
    cfg = _data(tiny_dirs, scope)
    built = {skip: build_streams(cfg.model_copy(update={"skip_first_position": skip}), tok, 4, 0,
                                 str(tiny_dirs["traces"]), names) for skip in (False, True)}
    for s in names:
        a, b = built[True][s].batch(0), built[False][s].batch(0)
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.attention_mask, b.attention_mask)
        want = b.loss_mask.clone()
        if s in ("forget", "unthink"):
            want[:, 0] = 0
        assert torch.equal(a.loss_mask, want), s
    forget = built[True]["forget"].batch(0)
    assert (forget.input_ids[:, 0] == tok.bos_token_id).all()
    assert int(forget.n_loss_tokens()) == int(forget.attention_mask.sum()) - forget.input_ids.shape[0]
    unthink_off = built[False]["unthink"].batch(0)
    assert bool((unthink_off.loss_mask[:, 0] == 0).all()) == (scope == "after_trigger")
