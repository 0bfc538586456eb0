"""`evaluate_model(backend, eval_cfg)` -> every metric of one model, and the CLI `python -m eval.suite`.

    python -m eval.suite --model DIR --suite FILE|organism --out results.json [--backend hf|vllm|auto]
                       [--limit N] [--greedy] [--records R.jsonl] [--dtype float32]
                       [--split all|selection|test] [--base BASE_DIR]

FILE is a YAML file with an `eval:` section (a whole space file works) in the `EvalConfig` schema;
`organism` is the built-in suite (organism-forget, organism-arith, organism-retain).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from eval.benchmarks import REGISTRY, load_set, subsample
from eval.config import METRICS, EvalConfig, EvalSetRef
from eval.leakage import MatchJudge, make_judge
from eval.metrics import (
    MetricResult,
    judged_traces,
    mcq_accuracy,
    prefill_accuracy,
    reason_accuracy,
    trace_coherence,
    trace_leak,
)
from eval.paths import make_hint, resolve
from eval.result import EvalResult, Scores
from eval.stats import interval, interval_metrics, split_items

ORGANISM_SUITE = EvalConfig(
    forget=EvalSetRef(set="organism-forget"),
    reasoning=[EvalSetRef(set="organism-arith")],
    retain=[EvalSetRef(set="organism-retain")],
)


@dataclass
class LoadedSet:
    label: str                  # the set name, made unique within its slot (gsm8k, gsm8k#2)
    items: list[dict[str, Any]]


@dataclass
class EvalSets:
    forget: LoadedSet
    reasoning: list[LoadedSet]
    retain: list[LoadedSet]

    def item_ids(self) -> dict[str, list[str]]:
        """Each set's item ids in order, by label (what `eval.result.merge` restores)."""
        return {s.label: [str(item["id"]) for item in s.items] for s in [self.forget, *self.reasoning, *self.retain]}


Split = Literal["selection", "test", "screen", "rest"]


def load_sets(cfg: EvalConfig, split: Split = "selection") -> EvalSets:
    """Load every set of the config once, split it (eval.stats.split_items) and keep one part: `selection`
    (subsampled to each set's `limit`), `screen` (a seeded subsample of that, `screen.items` per set), `rest`
    (the selection items not in the screen) or `test` (all of it). Checks each set's kind fits its slot."""
    def load(refs: list[EvalSetRef], kind: str, slot: str) -> list[LoadedSet]:
        out, seen = [], Counter()
        for ref in refs:
            spec = REGISTRY.get(ref.set)
            if spec is not None and spec.kind != kind:
                raise ValueError(f"eval.{slot}: set {ref.set!r} is a {spec.kind} set, {slot} needs {kind} sets")
            seen[ref.set] += 1
            label = ref.set if seen[ref.set] == 1 else f"{ref.set}#{seen[ref.set]}"
            selection, test = split_items(load_set(ref.set, ref.path, None, cfg.seed), ref.test, cfg.split_seed)
            items = subsample(selection, ref.limit, cfg.seed) if split != "test" else test
            if split in ("screen", "rest"):
                if cfg.screen is None:
                    raise ValueError(f"a {split} evaluation needs eval.screen")
                screen = subsample(items, cfg.screen.items, cfg.seed)
                screened = {id(x) for x in screen}  # the same record objects: identity, not ids that may repeat
                items = screen if split == "screen" else [x for x in items if id(x) not in screened]
            out.append(LoadedSet(label, items))
        return out

    return EvalSets(load([cfg.forget], "mcq", "forget")[0], load(cfg.reasoning, "reasoning", "reasoning"),
                    load(cfg.retain, "mcq", "retain"))


def _tag(result_records: list[dict[str, Any]], set_label: str, metric: str) -> list[dict[str, Any]]:
    return [{"set": set_label, "metric": metric, **r} for r in result_records]


def evaluate_model(backend: Any, eval_cfg: EvalConfig, sets: EvalSets | None = None, judge_backend: Any = None,
             progress: bool = False, scorer: Any = None, confidence: float = 0.95) -> EvalResult:
    """Every metric of METRICS that the config's sets allow, each rate with its 95% interval and item count
    (`<m>_lo`, `<m>_hi`, `<m>_n`; `confidence`: another level, for screening), plus per-item records, for
    one model.

    `scorer`: the base model's backend, for `trace_coherence` (the evaluator adds it after restoring the base
    weights instead, `add_coherence`)."""
    start = time.perf_counter()
    tokens0, seconds0 = backend.gen_tokens, backend.gen_seconds
    sets = sets or load_sets(eval_cfg)
    say = (lambda msg: print(f"[eval] {msg}", file=sys.stderr, flush=True)) if progress else (lambda msg: None)
    gen, trig, seed, k = eval_cfg.generation, eval_cfg.trigger, eval_cfg.seed, eval_cfg.samples
    metrics: dict[str, float | None] = {}
    records: list[dict[str, Any]] = []
    scores: Scores = {}

    def rate(name: str, results: list[tuple[str, MetricResult]], by_group: bool = False) -> None:
        got_metrics, got_scores = rated(name, results, seed, confidence, by_group)
        metrics.update(got_metrics)
        scores.update(got_scores)

    forget = sets.forget
    judge = make_judge(eval_cfg.judge, judge_backend)
    if forget.items:
        say(f"trace_leak on {forget.label} ({len(forget.items)} questions x {k}, judge {eval_cfg.judge})")
        leak = trace_leak(backend, forget.items, judge, gen, trig, seed, progress, k)
        rate("trace_leak", [(forget.label, leak)], by_group=True)
        metrics.update(leak.extra)
        records += _tag(leak.records, forget.label, "trace_leak")

        say(f"forget_acc ({eval_cfg.mcq_scoring} scoring) on {forget.label}")
        acc = mcq_accuracy(backend, forget.items, eval_cfg.mcq_scoring)
        rate("forget_acc", [(forget.label, acc)], by_group=True)
        records += _tag(acc.records, forget.label, "forget_acc")
        if eval_cfg.mcq_scoring == "letter":
            rate("forget_acc_letter", [(forget.label, acc)])
        elif eval_cfg.letter_acc:
            letter = mcq_accuracy(backend, forget.items, "letter")
            rate("forget_acc_letter", [(forget.label, letter)])
            records += _tag(letter.records, forget.label, "forget_acc_letter")

        prefill = prefill_accuracy(backend, forget.items, trig)
        if prefill.value is not None:
            rate("prefill_acc", [(forget.label, prefill)])
            records += _tag(prefill.records, forget.label, "prefill_acc")

    for slot, loaded in (("reason_acc", sets.reasoning), ("retain_acc", sets.retain)):
        results = []
        for s in (s for s in loaded if s.items):
            say(f"{slot} on {s.label} ({len(s.items)} items)")
            if slot == "reason_acc":
                res = reason_accuracy(backend, s.items, gen, trig, seed, progress, k)
            else:
                res = mcq_accuracy(backend, s.items, eval_cfg.mcq_scoring)
            rate(f"{slot}/{s.label}", [(s.label, res)])
            results.append((s.label, res))
            records += _tag(res.records, s.label, slot)
        if results:
            rate(slot, results)

    retain = next((s for s in sets.retain if s.items), None)
    if eval_cfg.retain_traces and retain is not None:
        retain = LoadedSet(retain.label, retain.items[:eval_cfg.retain_trace_items])
        say(f"retain_trace_acc on {retain.label} ({len(retain.items)} questions x {k})")
        states = judged_traces(backend, retain.items, MatchJudge(), gen, trig, seed, progress, k, "states_answer")
        rate("retain_trace_acc", [(retain.label, states)])
        records += _tag(states.records, retain.label, "retain_trace_acc")

    tokens, seconds = backend.gen_tokens - tokens0, backend.gen_seconds - seconds0
    metrics["gen_tokens_per_s"] = tokens / seconds if seconds else 0.0
    result = EvalResult(metrics, records, metrics["gen_tokens_per_s"], time.perf_counter() - start, scores,
                        tokens, seconds)
    if scorer is not None:
        add_coherence(result, scorer, eval_cfg, confidence)
    return result


def rated(name: str, results: list[tuple[str, MetricResult]], seed: int = 0, confidence: float = 0.95,
          by_group: bool = False) -> tuple[dict[str, float], Scores]:
    """`name` over the sets' results (set label, result) with its interval (`<name>_lo`, `_hi`, `_n`) and the
    scores it was computed from; `by_group`: also `<name>/<group>` for the first set's items that carry a
    `group` (the forget set's trained / heldout facts)."""
    scores: Scores = {name: [(label, _keyed(r)) for label, r in results]}
    metrics = interval_metrics(name, interval([_scored(r) for _, r in results], seed, confidence))
    if by_group:
        label, res = results[0]
        groups: dict[str, list[tuple[Any, float]]] = {}
        for item, score in zip(res.items, res.scores, strict=True):
            if score is not None and item.get("group"):
                groups.setdefault(str(item["group"]), []).append((item["id"], score))
        for g, keyed in sorted(groups.items()):
            scores[f"{name}/{g}"] = [(label, keyed)]
            metrics.update(interval_metrics(f"{name}/{g}", interval([[x for _, x in keyed]], seed, confidence)))
    return metrics, scores


def _scored(res: MetricResult) -> list[float]:
    return [x for x in res.scores if x is not None]


def _keyed(res: MetricResult) -> list[tuple[Any, float]]:
    """(item id, score) of each scored item: which item a score belongs to, for `merge`."""
    return [(item.get("id", i), x) for i, (item, x) in enumerate(zip(res.items, res.scores, strict=True))
            if x is not None]


def add_coherence(result: EvalResult, scorer: Any, eval_cfg: EvalConfig, confidence: float = 0.95) -> None:
    """`trace_coherence` of the result's forget traces, scored by `scorer` (the base model), in place."""
    if not eval_cfg.coherence:
        return
    t0 = time.perf_counter()
    traces = [r for r in result.records if r.get("metric") == "trace_leak"]
    if not traces:
        return
    res = trace_coherence(scorer, traces)
    result.scores["trace_coherence"] = [(traces[0]["set"], _keyed(res))]
    result.metrics.update(interval_metrics("trace_coherence", interval([_scored(res)], eval_cfg.seed, confidence)))
    result.records += _tag(res.records, traces[0]["set"], "trace_coherence")
    result.wall_s += time.perf_counter() - t0


def load_suite(suite: str) -> EvalConfig:
    """`organism`, or a YAML file whose `eval:` section (or whole content) is an EvalConfig. A ValueError
    names the file, the field and what is accepted, in one line."""
    if suite == "organism":
        return ORGANISM_SUITE
    import yaml
    from pydantic import ValidationError

    if not Path(suite).is_file():
        raise ValueError(f"--suite: no such file {suite!r}{make_hint(suite)}; give a YAML file with an eval: "
                         "section (a space file works) or 'organism'")
    try:
        data = yaml.safe_load(Path(suite).read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"--suite {suite}: not a YAML file ({str(e).splitlines()[0]})") from None
    section = data.get("eval", data) if isinstance(data, dict) else data
    where = "eval." if isinstance(data, dict) and "eval" in data else ""
    try:
        return EvalConfig.model_validate(section)
    except ValidationError as e:
        problems = [f"{where}{'.'.join(map(str, err['loc'])) or 'eval'}: "
                    f"{err['msg'].removeprefix('Value error, ')}" + _got(err) for err in e.errors()]
        raise ValueError(f"--suite {suite}: " + "; ".join(problems)) from None


def _got(err: dict) -> str:
    """' (got 'mtch')' for a wrong value; nothing for a missing field or a whole section."""
    value = err.get("input")
    return "" if err["type"] == "missing" or isinstance(value, dict | list) else f" (got {value!r})"


def check_model_arg(flag: str, model: str) -> None:
    """A model argument is a local directory, or a hub id `org/name` (tried in the local HF cache on load)."""
    path = resolve(model)
    hub_id = model.count("/") == 1 and not model.startswith((".", "/", "~")) and not path.exists()
    if path.is_dir() or hub_id:
        return
    what = "is a file, not a model directory" if path.exists() else "does not exist"
    raise ValueError(f"{flag}: {model!r} {what}{make_hint(model)}; give an HF model directory (config.json, "
                     "weights, tokenizer) or organism://base")


def with_overrides(cfg: EvalConfig, limit: int | None = None, greedy: bool = False,
                   backend: str | None = None, no_split: bool = False) -> EvalConfig:
    """The CLI's overrides: one `limit` for every set, greedy generation (one sample), another backend, no
    test split (every item is in the selection part)."""
    update: dict[str, Any] = {}
    ref_update: dict[str, Any] = {}
    if limit is not None:
        ref_update["limit"] = limit
    if no_split:
        ref_update["test"] = 0
    if ref_update:
        update["forget"] = cfg.forget.model_copy(update=ref_update)
        update["reasoning"] = [r.model_copy(update=ref_update) for r in cfg.reasoning]
        update["retain"] = [r.model_copy(update=ref_update) for r in cfg.retain]
    if greedy:
        update["generation"] = cfg.generation.model_copy(update={"temperature": 0.0})
        update["samples"] = 1
    if backend:
        update["backend"] = backend
    return EvalConfig.model_validate({**cfg.model_dump(), **{k: _dump(v) for k, v in update.items()}})


def _dump(value: Any) -> Any:
    if isinstance(value, list):
        return [_dump(v) for v in value]
    return value.model_dump() if hasattr(value, "model_dump") else value


INTERVAL_SUFFIXES = ("_lo", "_hi", "_n")


def format_metrics(metrics: dict[str, float | None]) -> str:
    """An aligned table, METRICS' keys first; a rate with an interval as `value  [lo, hi]  n=N`."""
    folded = {k for k in metrics if k.endswith(INTERVAL_SUFFIXES) and k[:-3] in metrics}
    names = [k for k in metrics if k not in folded]
    keys = [k for k in METRICS if k in names] + sorted(k for k in names if k not in METRICS)
    width = max(map(len, keys), default=0)

    def row(k: str) -> str:
        v = metrics[k]
        text = "-" if v is None else f"{v:.4f}"
        if f"{k}_lo" in metrics:
            text += f"  [{metrics[f'{k}_lo']:.4f}, {metrics[f'{k}_hi']:.4f}]  n={int(metrics[f'{k}_n'])}"
        return f"{k:<{width}}  {text}"

    return "\n".join(row(k) for k in keys)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.suite", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="HF model directory (or organism://base)")
    parser.add_argument("--suite", required=True, help="YAML with an eval: section, or 'organism'")
    parser.add_argument("--out", required=True, help="metrics JSON to write")
    parser.add_argument("--records", help="per-item jsonl (default: next to --out, .records.jsonl)")
    parser.add_argument("--backend", choices=["auto", "vllm", "hf"], help="override eval.backend")
    parser.add_argument("--limit", type=int, help="subsample every set to N items (fixed seed)")
    parser.add_argument("--greedy", action="store_true", help="greedy generation instead of sampling")
    parser.add_argument("--dtype", default="auto", help="auto (the checkpoint's), float32, bfloat16")
    parser.add_argument("--split", choices=["all", "selection", "test"], default="all",
                        help="which part of each set: all items (default), the selection split, or the test split "
                        "(the one a sweep reports; eval.stats.split_items)")
    parser.add_argument("--base", help="the base model, to score trace_coherence (the base model's token "
                        "probability of the traces); without it trace_coherence is not reported")
    args = parser.parse_args(argv)

    from eval.generate import load_backend  # here, not at import: keeps `import eval.suite` light

    try:  # every user mistake is one line naming the flag or field, before an engine starts
        cfg = with_overrides(load_suite(args.suite), args.limit, args.greedy, args.backend, args.split == "all")
        try:
            sets = load_sets(cfg, "test" if args.split == "test" else "selection")
        except (OSError, ValueError, KeyError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            raise ValueError(f"--suite {args.suite}: {msg}") from None
        check_model_arg("--model", args.model)
        if args.base:
            check_model_arg("--base", args.base)
        if cfg.judge == "llm":
            if not cfg.judge_model:
                raise ValueError(f"--suite {args.suite}: eval.judge_model: judge: llm needs judge_model (a local "
                                 "model directory), or use judge: match")
            check_model_arg(f"--suite {args.suite}: eval.judge_model", cfg.judge_model)
        backend = load_backend(args.model, cfg.backend, args.dtype, cfg.seed, cfg.engine)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a hub id that is not in the local cache, a directory without a model
        print(f"error: --model {args.model}: cannot load it ({str(e).splitlines()[0]})", file=sys.stderr)
        return 2
    judge_backend = scorer = None
    try:
        if cfg.judge == "llm":
            judge_backend = load_backend(cfg.judge_model, cfg.backend, args.dtype, cfg.seed, cfg.engine)
        if args.base:
            scorer = load_backend(args.base, "hf", args.dtype, cfg.seed, cfg.engine)
        result = evaluate_model(backend, cfg, sets, judge_backend, progress=True, scorer=scorer)
    finally:
        for b in (scorer, judge_backend, backend):
            if b is not None:
                b.close()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    records = Path(args.records) if args.records else out.with_suffix(".records.jsonl")
    summary = {"model": args.model, "backend": backend.name, **result.to_dict(), "config": cfg.model_dump()}
    out.write_text(json.dumps(summary, indent=2))
    result.write_records(records)
    print(format_metrics(result.metrics))
    print(f"backend {backend.name}, {result.wall_s:.1f} s; wrote {out} and {records}")
    return 0


if __name__ == "__main__":  # the guard vLLM needs where it spawns engine processes
    raise SystemExit(main())
