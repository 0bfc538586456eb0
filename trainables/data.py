"""The four token streams (forget, retain, unthink, cot) as right-padded, seeded, cycling batches.

Text corpora are jsonl, parquet or a `datasets.save_to_disk` directory with a configurable text field; the
unthink stream comes from the trace cache (docs/formats.md: `rendered` prompt incl. chat template and
trigger, and the base model's `trace`), in one of two forms (`data.traces.input`): the rendered prompt + the
first k trace tokens (ours), or the trigger + the first k trace tokens (the reference code's). Batch `step`
of a stream is a pure function of (seed, stream, step): the order is a fresh permutation per pass over the
data, so a short stream cycles, reshuffled. Each example carries the first position its loss covers
(`Batch.loss_mask`): the trigger's with `data.traces.scope: after_trigger`, and at least position 1 in the forget
and unthink streams with `data.skip_first_position`.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from trainables.checks import DataError
from trainables.config import DataConfig
from trainables.r2mu import TO_CONTROL, Batch


def read_rows(path: str | Path, fields: list[str], limit: int | None = None, what: str = "data") -> list[dict]:
    """Records of a jsonl / parquet file or a `datasets` directory, checked to hold non-empty `fields`.

    `what` names the config field in errors (e.g. "data.forget"). Records whose fields are empty strings
    are skipped; no usable record at all is an error.
    """
    p = Path(path)
    if str(path).startswith("organism://"):
        raise DataError(f"{what}.path: {path} must be resolved to a file by the sweep before training")
    if not p.exists():
        raise DataError(f"{what}.path: file not found: {p}")
    if p.is_dir():
        rows = _dataset_dir(p, what)
    elif p.suffix == ".parquet":
        import pyarrow.parquet as pq  # pyarrow comes with `datasets`

        try:
            rows = pq.read_table(p).to_pylist()
        except Exception as e:  # noqa: BLE001 - pyarrow's errors name neither the field nor always the file
            raise DataError(f"{what}.path: {p} is not a readable parquet file ({type(e).__name__}: {e})") from None
    else:
        rows = []
        for n, line in text_lines(p, what):  # every line decoded, even past `limit`: a bad byte is found now
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{what}.path: {p} line {n} is not JSON: {e}") from e
    if not rows:
        raise DataError(f"{what}.path: {p} is empty (no records)")
    out = []
    for n, row in enumerate(rows):
        for f in fields:
            if f not in row:
                raise DataError(f"{what}.field: record {n} of {p} has no field {f!r} (fields: {', '.join(row)})")
            if not isinstance(row[f], str):
                raise DataError(f"{what}.field: record {n} of {p}: field {f!r} is {type(row[f]).__name__}, "
                                "not text")
        if any(row[f] for f in fields):  # an empty trace is fine; an empty text is skipped
            out.append(row)
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise DataError(f"{what}.path: {p} has no record with non-empty {', '.join(fields)}")
    return out


def text_lines(p: Path, what: str = "data") -> Iterator[tuple[int, str]]:
    """(line number, line) of a text file, each line decoded as strict UTF-8. A byte that is not UTF-8 is a
    DataError naming the field, the file, the line and the column; a gzip file says so."""
    with p.open("rb") as f:
        for n, raw in enumerate(f, 1):
            if n == 1 and raw.startswith(b"\x1f\x8b"):
                raise DataError(f"{what}.path: {p} is gzip-compressed; decompress it (gunzip): training data is "
                                "jsonl, parquet or a datasets directory")
            try:
                yield n, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{what}.path: {p} line {n}, column {e.start + 1}: byte 0x{raw[e.start]:02x} is not "
                                f"UTF-8 ({e.reason}); re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
                                ) from None


def read_records(path: str | Path, field: str = "text", limit: int | None = None, what: str = "data") -> list[str]:
    """The texts of one field: what the sweep's dry-run calls to check a data file."""
    return [r[field] for r in read_rows(path, [field], limit, what)]


def _dataset_dir(p: Path, what: str) -> list[dict]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(p))
    except FileNotFoundError as e:
        raise DataError(f"{what}.path: {p} is a directory but not a saved `datasets` dataset: {e}") from e
    if isinstance(ds, datasets.DatasetDict):
        if "train" in ds:
            ds = ds["train"]
        elif len(ds) == 1:
            ds = next(iter(ds.values()))
        else:
            raise DataError(f"{what}.path: {p} holds splits {list(ds)}; keep one or name one 'train'")
    return ds.to_list()


Example = tuple[list[int], int]  # token ids, first position the loss covers


def tokenize_text(tokenizer, text: str, max_tokens: int) -> list[int]:
    return tokenizer(text, add_special_tokens=True, truncation=True, max_length=max_tokens)["input_ids"]


def tokenize_trace(tokenizer, row: dict, trigger: str, k: int, max_len: int, after_trigger: bool,
                   add_special_tokens: bool = False) -> Example:
    """Unthink input (`input: prompt`): rendered prompt (its last max_len tokens, so the trigger stays) + first
    k trace tokens.

    Returns the ids and the first position the loss covers (0, or the trigger's first token). A rendered chat
    prompt already holds the template's special tokens, so none are added; a plain one (`template: none`) gets
    them as the generation backend added them (`add_special_tokens=True`).
    """
    rendered = row["rendered"]
    enc = tokenizer(rendered, add_special_tokens=add_special_tokens, return_offsets_mapping=after_trigger)
    prompt = enc["input_ids"]
    start = 0
    if after_trigger:
        at = rendered.rfind(trigger)  # present: checked for every record when the stream is built
        start = next(i for i, (_, end) in enumerate(enc["offset_mapping"]) if end > at)
    cut = max(0, len(prompt) - max_len)
    trace = tokenizer(row["trace"], add_special_tokens=False)["input_ids"][:k]
    return prompt[cut:] + trace, max(0, start - cut)


def reference_trigger(trigger: str) -> str:
    """The trigger as the reference's unthink input starts: without its leading newlines (it generates after
    document + "\\nLet's reason ...<think>" but trains on "Let's reason ...<think>" + trace)."""
    return trigger.lstrip("\n")


def tokenize_reference_trace(tokenizer, trace: str, trigger: str, k: int, max_len: int) -> Example:
    """Unthink input (`input: reference`): the trigger (leading newlines dropped, with the special tokens the
    tokenizer adds to plain text, e.g. Llama's BOS) + the first k tokens of the stripped trace; no question, no
    chat template. Cut to max_len tokens from the right, as the reference truncates. The loss covers it all.
    """
    head = tokenizer(reference_trigger(trigger), add_special_tokens=True)["input_ids"]
    tail = tokenizer(trace.strip(), add_special_tokens=False)["input_ids"][:k]
    return (head + tail)[:max_len], 0


class Stream:
    """Seeded, cycling, right-padded batches of one stream; `batch(step)` is random-access.

    Records are tokenised when a batch first uses them (`encode(i)`), not up front: a sweep's trial reads
    steps x batch_size records of a corpus that may hold millions (wikitext-103: 1.8M lines).
    """

    def __init__(self, name: str, n: int, encode: Callable[[int], Example], batch_size: int, seed: int,
                 pad_id: int):
        if n == 0:
            raise DataError(f"data.{name}: no examples")
        self.name, self.n, self.encode, self.batch_size, self.pad_id = name, n, encode, batch_size, pad_id
        self.seed = (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**62  # stable across processes
        self._orders: dict[int, list[int]] = {}
        self._encoded: dict[int, Example] = {}

    @classmethod
    def of(cls, name: str, examples: list[list[int]], batch_size: int, seed: int, pad_id: int,
           loss_starts: list[int] | None = None) -> Stream:
        """A stream over token lists already in memory."""
        starts = loss_starts or [0] * len(examples)
        return cls(name, len(examples), lambda i: (examples[i], starts[i]), batch_size, seed, pad_id)

    def example(self, i: int) -> Example:
        if i not in self._encoded:
            self._encoded[i] = self.encode(i)
        return self._encoded[i]

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._orders = {epoch: torch.randperm(self.n, generator=g).tolist()}
        return self._orders[epoch]

    def indices(self, step: int) -> list[int]:
        out = []
        for pos in range(step * self.batch_size, (step + 1) * self.batch_size):
            out.append(self._order(pos // self.n)[pos % self.n])
        return out

    def batch(self, step: int, rank: int = 0, world: int = 1) -> Batch:
        """The global batch of `step`, or this data-parallel rank's rows of it (rank::world)."""
        rows = [self.example(i) for i in self.indices(step)[rank::world]]  # tokenise only this rank's rows
        L = max(1, max(len(ids) for ids, _ in rows))
        ids = torch.full((len(rows), L), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), L), dtype=torch.long)
        for j, (r, _) in enumerate(rows):
            ids[j, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[j, : len(r)] = 1
        loss_mask = mask.clone()
        for j, (_, start) in enumerate(rows):
            loss_mask[j, :start] = 0
        return Batch(ids, mask, loss_mask)


def build_streams(data: DataConfig, tokenizer, batch_size: int, seed: int, traces_path: str | None,
                  streams: list[str]) -> dict[str, Stream]:
    """The requested streams (those with a non-zero weight) from the data config (read now, tokenised lazily)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = {}
    for name in streams:
        if name in ("forget", "retain", "cot"):
            corpus = getattr(data, name)
            max_tokens = data.cot.max_tokens if name == "cot" else data.max_len
            texts = read_records(corpus.path, corpus.field, corpus.limit, what=f"data.{name}")

            def encode(i: int, texts=texts, max_tokens=max_tokens) -> Example:
                return tokenize_text(tokenizer, texts[i], max_tokens), 0

            n = len(texts)
        elif name == "unthink":
            if traces_path is None:
                raise DataError("traces_path: the unthink stream (beta > 0) needs the trace cache; none given")
            t = data.traces
            rows = read_rows(traces_path, ["rendered", "trace"], t.limit, what="data.traces")
            after = t.scope == "after_trigger"
            if after:  # before any training: a record without the trigger is an error, not a surprise at step N
                for k, row in enumerate(rows):
                    if row["rendered"].rfind(t.trigger) < 0:
                        raise DataError(f"data.traces.scope: record {k} (id={row.get('id')}) has no trigger "
                                        f"{t.trigger!r} in its rendered prompt")

            def encode(i: int, rows=rows, t=t, after=after) -> Example:
                if t.input == "reference":
                    return tokenize_reference_trace(tokenizer, rows[i]["trace"], t.trigger, t.max_new_tokens,
                                                    data.max_len)
                return tokenize_trace(tokenizer, rows[i], t.trigger, t.max_new_tokens, data.max_len, after,
                                      add_special_tokens=t.template == "none")

            n = len(rows)
        else:
            raise ValueError(f"unknown stream {name!r}; streams are forget, retain, unthink, cot")
        if data.skip_first_position and name in TO_CONTROL:  # retain and cot keep every position
            encode = _loss_from_second(encode)
        out[name] = Stream(name, n, encode, batch_size, seed, pad)
    return out


def _loss_from_second(encode: Callable[[int], Example]) -> Callable[[int], Example]:
    """`encode` with the loss starting at position 1 at the earliest (`data.skip_first_position`): the first
    position's state is the same for every input, so as a target it measures one fixed vector, not the data."""
    def wrapped(i: int) -> Example:
        ids, start = encode(i)
        return ids, max(start, 1)

    return wrapped
