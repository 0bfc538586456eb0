"""Final-answer extraction from a generated solution, and normalisation before comparing with the gold.

`extract_answer` looks, in order, for the last `\\boxed{...}` (nested braces), an `Answer: X` line,
`**Final Answer**`, the short text after `</think>`, and finally the last number. `normalize` makes
`1,000` == `1000`, `1/2` == `\\frac{1}{2}` == `0.5`, `5.0` == `5`, and drops `$`, LaTeX spacing,
`\\left`/`\\right`, degrees and trailing text units, so `answers_match` compares meaning, not spelling.
"""

from __future__ import annotations

import re
from fractions import Fraction

NUMBER = r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+"


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}`, braces matched (so `\\boxed{\\frac{1}{2}}` works)."""
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    for start in reversed(starts):
        depth = 1
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[start:i].strip()
    return None


def _line_after(text: str, pattern: str) -> str | None:
    """The rest of the line after the last match of `pattern` (or the next non-empty line if it is empty)."""
    matches = list(re.finditer(pattern, text, flags=re.IGNORECASE))
    if not matches:
        return None
    rest = text[matches[-1].end():]
    for line in rest.splitlines() or [rest]:
        line = line.strip(" *:\t")
        if line:
            return line
    return None


def extract_answer(text: str) -> str | None:
    """The model's final answer in a generation, or None when it gave none."""
    tail = text.rsplit("</think>", 1)[1] if "</think>" in text else text
    for candidate in (
        last_boxed(tail),
        _line_after(tail, r"\*\*\s*final answer\s*:?\s*\*\*\s*:?"),
        _line_after(tail, r"(?<![a-z])answer\s*(?:is|:)"),
    ):
        if candidate:
            return candidate.strip().rstrip(".").strip()
    if "</think>" in text and tail.strip() and len(tail.strip()) <= 40 and "\n" not in tail.strip():
        return tail.strip().rstrip(".")
    numbers = re.findall(NUMBER, tail) or re.findall(NUMBER, text)
    return numbers[-1].rstrip(".") if numbers else None


_UNWRAP = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_DROP = [r"\\left", r"\\right", r"\\!", r"\\,", r"\\;", r"\\:", r"\\ ", r"\^\s*\{?\\circ\}?", r"°",
         r"\\%", r"%", r"\\\$", r"\$", r"\\displaystyle"]
_UNITS = (r"(?:units?|dollars?|cents?|degrees?|cm|mm|km|m|meters?|inches|inch|feet|ft|hours?|minutes?|"
          r"seconds?|days?|years?|kg|g|grams?|pounds?|lbs?|miles?|mph|sq|square|cubic|points?|people|students?)")


def _as_number(s: str) -> Fraction | None:
    s = s.replace(" ", "")
    try:
        if re.fullmatch(r"-?\d+/\d+", s):
            return Fraction(s)
        if re.fullmatch(r"-?(?:\d+\.?\d*|\.\d+)(?:e-?\d+)?", s):
            return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None
    return None


def normalize(answer: str | None) -> str:
    """A canonical string for comparison; numbers become their exact value (`0.5`, `12`, `-1/3` -> `-1/3`)."""
    if answer is None:
        return ""
    s = answer.strip()
    for _ in range(3):  # nested \text{\textbf{...}}
        s = _UNWRAP.sub(r"\1", s)
    for pattern in _DROP:
        s = re.sub(pattern, "", s)
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\\frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}", r"(\1)/(\2)", s)
    s = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\1/\2", s)                  # \frac12
    s = re.sub(r"\((-?[\d.]+)\)/\((-?[\d.]+)\)", r"\1/\2", s)          # (1)/(2) -> 1/2
    s = re.sub(r"(\d),(?=\d{3}\b)", r"\1", s)                          # 1,000 -> 1000
    s = s.strip().rstrip(".").strip().lower()
    s = re.sub(r"^[a-z]\s*=\s*", "", s)                                # x = 5 -> 5
    s = re.sub(rf"^({NUMBER}(?:/\d+)?)\s*(?:{_UNITS}\b\s*)+(?:\^?\d)?$", r"\1", s)  # 5 cm -> 5
    s = re.sub(r"^\(?([a-j])\)?[.:)]?$", r"\1", s)                     # (B) / B. -> b
    number = _as_number(s)
    if number is not None:
        if number.denominator == 1:
            return str(number.numerator)
        if (10**12 % number.denominator) == 0:                          # a finite decimal: 1/2 -> 0.5
            return format(float(number), ".12g")
        return f"{number.numerator}/{number.denominator}"
    return re.sub(r"\s+", "", s)


def answers_match(predicted: str | None, gold: str) -> bool:
    """True when the normalised answers are equal (None never matches)."""
    return predicted is not None and normalize(predicted) != "" and normalize(predicted) == normalize(gold)
