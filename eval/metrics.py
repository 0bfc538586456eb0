"""The metrics of DESIGN.md section 6, on any `Backend` (no vLLM, Ray or MLflow import here).

Each function returns a `MetricResult`: the value (None when nothing could be scored) and one record per
item (what was asked, what came back, whether it was right) for the per-item table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from eval.answers import answers_match, extract_answer, normalize  # noqa: F401  (re-exported)
from eval.config import TRIGGER, GenerationConfig
from eval.leakage import Judge
from eval.prompts import content_prompt, letter_prompt, mcq_body, prefill_prompt

Item = dict[str, Any]


@dataclass
class MetricResult:
    value: float | None
    records: list[dict[str, Any]]
    extra: dict[str, float] = field(default_factory=dict)


def _mean(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


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
    return MetricResult(_mean([r["correct"] for r in records]), records)


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
                    progress: bool = False) -> tuple[list[str], list[str]]:
    """Rendered prompts (chat template + trigger) and the generated continuations."""
    prompts = [backend.render(body, trigger) for body in bodies]
    return prompts, [g.text for g in backend.generate(prompts, gen, seed=seed, progress=progress)]


def reason_accuracy(backend: Any, items: list[Item], gen: GenerationConfig, trigger: str = TRIGGER,
                    seed: int = 0, progress: bool = False) -> MetricResult:
    """Generate with thinking, extract the final answer, normalise, compare with the gold answer."""
    prompts, texts = generate_traces(backend, [item["problem"] for item in items], gen, trigger, seed, progress)
    records = []
    for item, prompt, text in zip(items, prompts, texts, strict=True):
        extracted = extract_answer(text)
        records.append({"id": item["id"], "prompt": prompt, "trace": text, "extracted": extracted,
                        "answer": item["answer"], "correct": answers_match(extracted, item["answer"])})
    return MetricResult(_mean([r["correct"] for r in records]), records)


def trace_leak(backend: Any, items: list[Item], judge: Judge, gen: GenerationConfig, trigger: str = TRIGGER,
               seed: int = 0, progress: bool = False) -> MetricResult:
    """Share of forget MCQs whose generated trace leaks the answer (unparsed judge verdicts left out)."""
    prompts, texts = generate_traces(backend, [mcq_body(item) for item in items], gen, trigger, seed, progress)
    verdicts = judge.judge(items, texts)
    records = [{"id": item["id"], "prompt": prompt, "trace": text, "leak": v.leak, "judge_score": v.score,
                "judge_detail": v.detail}
               for item, prompt, text, v in zip(items, prompts, texts, verdicts, strict=True)]
    judged = [v.leak for v in verdicts if v.leak is not None]
    unparsed = sum(v.leak is None for v in verdicts)
    return MetricResult(_mean(judged), records, {"judge_unparsed": float(unparsed)})
