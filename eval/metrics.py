"""The metrics of docs/eval.md, on any `Backend` (no vLLM, Ray or MLflow import here).

Each function returns a `MetricResult`: the value (None when nothing could be scored) and one record per
item (what was asked, what came back, whether it was right) for the per-item table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from common.prompts import TRIGGER
from eval.answers import answers_match, extract_answer, normalize  # noqa: F401  (re-exported)
from eval.config import GenerationConfig
from eval.leakage import Judge
from eval.prompts import content_prompt, letter_prompt, mcq_body, prefill_prompt

Item = dict[str, Any]


@dataclass
class MetricResult:
    value: float | None
    records: list[dict[str, Any]]
    extra: dict[str, float] = field(default_factory=dict)
    # one score in [0, 1] per item (the mean over its samples), aligned with `items`; None: not scored
    scores: list[float | None] = field(default_factory=list)
    items: list[Item] = field(default_factory=list)


def _mean(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def _per_item(n_items: int, samples: list[list[bool | None]]) -> list[float | None]:
    """Mean over the samples of each item (unparsed verdicts left out; None if none was scored)."""
    out: list[float | None] = []
    for i in range(n_items):
        got = [s[i] for s in samples if s[i] is not None]
        out.append(sum(got) / len(got) if got else None)
    return out


def _item_mean(scores: list[float | None]) -> float | None:
    got = [s for s in scores if s is not None]
    return sum(got) / len(got) if got else None


def option_scores(backend: Any, prompts: list[tuple[str, list[str]]]) -> list[list[float]]:
    """Log-likelihood of every option continuation of every (prompt, options) pair, in one backend call."""
    pairs = [(prompt, cont) for prompt, conts in prompts for cont in conts]
    flat = iter(backend.loglik(pairs))
    return [[next(flat) for _ in conts] for _, conts in prompts]


def _score_mcq(items: list[Item], prompts: list[tuple[str, list[str]]], scores: list[list[float]],
               how: str) -> MetricResult:
    records = []
    for item, (prompt, _), row in zip(items, prompts, scores, strict=True):
        pred = max(range(len(row)), key=row.__getitem__)
        records.append({"id": item["id"], "prompt": prompt, "scoring": how, "pred": pred,
                        "answer": item["answer"], "correct": pred == item["answer"], "scores": row})
    flags = [float(r["correct"]) for r in records]
    return MetricResult(_mean([r["correct"] for r in records]), records, scores=flags, items=list(items))


def mcq_accuracy(backend: Any, items: list[Item], scoring: Literal["content", "letter"] = "content") -> MetricResult:
    """MCQ accuracy by log-likelihood, no generation.

    `letter`: which of " A".." D" is likeliest after the body + "\\nAnswer:" (lm-eval WMDP/MMLU style).
    `content`: which option text is likeliest after "Question: ...\\nAnswer:" (sum of its tokens' log-probs).
    """
    if scoring not in ("content", "letter"):
        raise ValueError(f"scoring {scoring!r}: use content or letter")
    build = content_prompt if scoring == "content" else letter_prompt
    prompts = [build(item) for item in items]
    return _score_mcq(items, prompts, option_scores(backend, prompts), scoring)


def prefill_accuracy(backend: Any, items: list[Item], trigger: str = TRIGGER) -> MetricResult:
    """Content-scored MCQ after the generation prompt plus a prefilled trace start; None if no item has one."""
    items = [item for item in items if item.get("prefill")]
    prompts = [prefill_prompt(backend.tokenizer, item, trigger) for item in items]
    return _score_mcq(items, prompts, option_scores(backend, prompts), "prefill")


def generate_traces(backend: Any, bodies: list[str], gen: GenerationConfig, trigger: str, seed: int,
                    progress: bool = False, samples: int = 1) -> tuple[list[str], list[list[str]]]:
    """Rendered prompts (chat template + trigger) and, per sample j (seed + j), the generated continuations."""
    prompts = [backend.render(body, trigger) for body in bodies]
    return prompts, [[g.text for g in backend.generate(prompts, gen, seed=seed + j, progress=progress)]
                     for j in range(samples)]


def reason_accuracy(backend: Any, items: list[Item], gen: GenerationConfig, trigger: str = TRIGGER,
                    seed: int = 0, progress: bool = False, samples: int = 1) -> MetricResult:
    """Generate with thinking, extract the final answer, normalise, compare with the gold answer; with several
    samples an item scores the share of its samples that are right."""
    prompts, runs = generate_traces(backend, [item["problem"] for item in items], gen, trigger, seed, progress,
                                    samples)
    records, flags = [], []
    for j, texts in enumerate(runs):
        run_flags = []
        for item, prompt, text in zip(items, prompts, texts, strict=True):
            extracted = extract_answer(text)
            ok = answers_match(extracted, item["answer"])
            run_flags.append(ok)
            records.append({"id": item["id"], "sample": j, "prompt": prompt, "trace": text, "extracted": extracted,
                            "answer": item["answer"], "correct": ok})
        flags.append(run_flags)
    scores = _per_item(len(items), flags)
    return MetricResult(_item_mean(scores), records, scores=scores, items=list(items))


def judged_traces(backend: Any, items: list[Item], judge: Judge, gen: GenerationConfig, trigger: str = TRIGGER,
                  seed: int = 0, progress: bool = False, samples: int = 1, flag: str = "leak") -> MetricResult:
    """Share of MCQs whose generated trace states the answer (per the judge), averaged per item over samples;
    unparsed judge verdicts are left out. `flag` names the verdict in the records (leak, or states_answer)."""
    prompts, runs = generate_traces(backend, [mcq_body(item) for item in items], gen, trigger, seed, progress,
                                    samples)
    records, flags, unparsed = [], [], 0
    for j, texts in enumerate(runs):
        verdicts = judge.judge(items, texts)
        for item, prompt, text, v in zip(items, prompts, texts, verdicts, strict=True):
            records.append({"id": item["id"], "sample": j, "prompt": prompt, "trace": text, flag: v.leak,
                            "judge_score": v.score, "judge_detail": v.detail})
        flags.append([v.leak for v in verdicts])
        unparsed += sum(v.leak is None for v in verdicts)
    scores = _per_item(len(items), flags)
    return MetricResult(_item_mean(scores), records, {"judge_unparsed": float(unparsed)}, scores, list(items))


def trace_leak(backend: Any, items: list[Item], judge: Judge, gen: GenerationConfig, trigger: str = TRIGGER,
               seed: int = 0, progress: bool = False, samples: int = 1) -> MetricResult:
    """Share of forget MCQs whose generated trace leaks the answer (unparsed judge verdicts left out)."""
    return judged_traces(backend, items, judge, gen, trigger, seed, progress, samples, "leak")


def trace_coherence(scorer: Any, records: list[dict[str, Any]]) -> MetricResult:
    """Per generated trace, the scorer's (the base model's) geometric-mean token probability of the trace
    given its prompt, exp(mean log p), in (0, 1]; averaged per item over its samples.

    Why this and not a repetition score: the base model assigns fluent reasoning a high per-token probability
    whatever it concludes, and word salad ("grows the crop visitors. . . .") a low one, with no list of
    degenerate patterns to maintain (docs/eval.md has the examples). Empty generations are left out."""
    scored = [r for r in records if r.get("trace")]
    values = scorer.token_logprob_mean([(r["prompt"], r["trace"]) for r in scored]) if scored else []
    per_id: dict[str, list[float]] = {}
    out = []
    for r, lp in zip(scored, values, strict=True):
        c = math.exp(lp)
        per_id.setdefault(r["id"], []).append(c)
        out.append({"id": r["id"], "sample": r.get("sample", 0), "coherence": c})
    scores = [sum(v) / len(v) for v in per_id.values()]
    return MetricResult(_item_mean(scores), out, scores=scores, items=[{"id": i} for i in per_id])
