"""The four token streams (forget, retain, unthink, cot) as right-padded, seeded, cycling batches.

Text corpora are jsonl, parquet or a `datasets.save_to_disk` directory with a configurable text field; the
unthink stream comes from the trace cache (docs/formats.md: `rendered` prompt incl. chat template and
trigger, and the base model's `trace`). Batch `step` of a stream is a pure function of (seed, stream, step):
the order is a fresh permutation per pass over the data, so a short stream cycles, reshuffled.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import torch

from trainables.checks import DataError
from trainables.config import DataConfig
from trainables.r2mu import Batch


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

        rows = pq.read_table(p).to_pylist()
    else:
        rows = []
        with p.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
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


def tokenize_texts(tokenizer, texts: list[str], max_tokens: int) -> list[list[int]]:
    ids = tokenizer(texts, add_special_tokens=True, truncation=True, max_length=max_tokens)["input_ids"]
    return [x for x in ids if x]


def tokenize_traces(tokenizer, rows: list[dict], trigger: str, k: int, max_len: int,
                    after_trigger: bool) -> tuple[list[list[int]], list[int]]:
    """Unthink inputs: rendered prompt (its last max_len tokens, so the trigger stays) + first k trace tokens.

    Returns the ids and, per example, the first position the loss covers (0, or the trigger's first token).
    The rendered prompt already holds the chat template's special tokens, so none are added.
    """
    ids, starts = [], []
    for n, row in enumerate(rows):
        rendered = row["rendered"]
        enc = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=after_trigger)
        prompt = enc["input_ids"]
        start = 0
        if after_trigger:
            at = rendered.rfind(trigger)
            if at < 0:
                raise DataError(f"data.traces.scope: record {n} (id={row.get('id')}) has no trigger "
                                f"{trigger!r} in its rendered prompt")
            start = next(i for i, (_, end) in enumerate(enc["offset_mapping"]) if end > at)
        cut = max(0, len(prompt) - max_len)
        trace = tokenizer(row["trace"], add_special_tokens=False)["input_ids"][:k]
        ids.append(prompt[cut:] + trace)
        starts.append(max(0, start - cut))
    return ids, starts


class Stream:
    """Seeded, cycling, right-padded batches of one stream; `batch(step)` is random-access."""

    def __init__(self, name: str, examples: list[list[int]], batch_size: int, seed: int, pad_id: int,
                 loss_starts: list[int] | None = None):
        if not examples:
            raise DataError(f"data.{name}: no examples after tokenisation")
        self.name, self.examples, self.batch_size, self.pad_id = name, examples, batch_size, pad_id
        self.loss_starts = loss_starts or [0] * len(examples)
        self.seed = (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**62  # stable across processes
        self._orders: dict[int, list[int]] = {}

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._orders = {epoch: torch.randperm(len(self.examples), generator=g).tolist()}
        return self._orders[epoch]

    def indices(self, step: int) -> list[int]:
        n, out = len(self.examples), []
        for pos in range(step * self.batch_size, (step + 1) * self.batch_size):
            out.append(self._order(pos // n)[pos % n])
        return out

    def batch(self, step: int, rank: int = 0, world: int = 1) -> Batch:
        """The global batch of `step`, or this data-parallel rank's rows of it (rank::world)."""
        rows = [self.examples[i] for i in self.indices(step)][rank::world]
        starts = [self.loss_starts[i] for i in self.indices(step)][rank::world]
        L = max(len(r) for r in rows)
        ids = torch.full((len(rows), L), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), L), dtype=torch.long)
        for j, r in enumerate(rows):
            ids[j, : len(r)] = torch.tensor(r)
            mask[j, : len(r)] = 1
        loss_mask = mask.clone()
        for j, s in enumerate(starts):
            loss_mask[j, :s] = 0
        return Batch(ids, mask, loss_mask)


def build_streams(data: DataConfig, tokenizer, batch_size: int, seed: int, traces_path: str | None,
                  streams: list[str]) -> dict[str, Stream]:
    """The requested streams (those with a non-zero weight) from the data config."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = {}
    for name in streams:
        if name in ("forget", "retain", "cot"):
            corpus = getattr(data, name)
            max_tokens = data.cot.max_tokens if name == "cot" else data.max_len
            texts = read_records(corpus.path, corpus.field, corpus.limit, what=f"data.{name}")
            out[name] = Stream(name, tokenize_texts(tokenizer, texts, max_tokens), batch_size, seed, pad)
        elif name == "unthink":
            if traces_path is None:
                raise DataError("traces_path: the unthink stream (beta > 0) needs the trace cache; none given")
            t = data.traces
            rows = read_rows(traces_path, ["rendered", "trace"], t.limit, what="data.traces")
            ids, starts = tokenize_traces(tokenizer, rows, t.trigger, t.max_new_tokens, data.max_len,
                                          after_trigger=t.scope == "after_trigger")
            out[name] = Stream(name, ids, batch_size, seed, pad, starts)
    return out
