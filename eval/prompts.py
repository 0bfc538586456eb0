"""The exact prompt strings of docs/formats.md, in one place.

Every metric and the trace cache build their prompts here, so the organism (trained on these forms) and a
real model are asked the same way. Pure string functions: no model, no tokenizer state beyond the template.
"""

from __future__ import annotations

from typing import Any

from common.prompts import LETTERS


def mcq_body(item: dict[str, Any]) -> str:
    """`"{question}\\nA. {c0}\\nB. {c1}..."` (the MCQ body)."""
    lines = [item["question"]] + [f"{LETTERS[i]}. {c}" for i, c in enumerate(item["choices"])]
    return "\n".join(lines)


def letter_prompt(item: dict[str, Any]) -> tuple[str, list[str]]:
    """Letter scoring (lm-eval WMDP/MMLU style, no chat): prompt and the continuations `" A"`, `" B"`..."""
    return mcq_body(item) + "\nAnswer:", [f" {LETTERS[i]}" for i in range(len(item["choices"]))]


def content_prompt(item: dict[str, Any]) -> tuple[str, list[str]]:
    """Content scoring (lm-eval continuation style, no chat): prompt and `" {choice}"` continuations."""
    return f"Question: {item['question']}\nAnswer:", [f" {c}" for c in item["choices"]]


def generation_prompt(tokenizer: Any, body: str, trigger: str) -> str:
    """Chat template (where the tokenizer has one) around the body, then the forced-thinking trigger."""
    if getattr(tokenizer, "chat_template", None):
        chat = [{"role": "user", "content": body}]
        rendered = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        return rendered + trigger
    return body + trigger


def prefill_prompt(tokenizer: Any, item: dict[str, Any], trigger: str) -> tuple[str, list[str]]:
    """Prefill probe: generation prompt + `" " + prefill`, continuations `" {choice}"` (scored by content)."""
    prompt = generation_prompt(tokenizer, mcq_body(item), trigger) + " " + item["prefill"]
    return prompt, [f" {c}" for c in item["choices"]]
