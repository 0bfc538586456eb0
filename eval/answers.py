"""Final-answer extraction from a generated solution, and normalisation before comparing with the gold.

`extract_answer` looks, in order, for the last `\\boxed{...}` (nested braces), `**Final Answer**`, an
`Answer: X` / `the answer is X` / `the correct option is X` line, the short text after `</think>`, a letter
stated as the choice (`(A) is correct`, `I choose B`) or a last line `B) glucagon`, and finally the last
number. `normalize` makes
`1,000` == `1000`, `1/2` == `\\frac{1}{2}` == `0.5`, `5.0` == `5`, and drops `$`, LaTeX spacing,
`\\left`/`\\right`, degrees and trailing text units.

`answers_match(pred, gold)` is true when, in order:
1. gold is a single letter (GPQA, `(C)`): the letter `extract_letter` finds in pred is gold's (with the
   item's `choices`, pred may also be the correct option's text);
2. the normalised strings are equal (the cheap path: GSM8K integers end here);
3. both normalise to plain numbers (GSM8K): they differ, so no;
4. `math_verify` (imported on first use) finds them equivalent: `\\frac{\\sqrt{2}}{2}` == `\\sqrt{2}/2`,
   `2\\sqrt{3}` == `\\sqrt{12}`, `3^{2}` == `9`, `3, 2, 1` == `1,2,3` (an unordered answer list). Off the main
   thread its signal-based timeouts are switched off (signal.alarm only works on the main thread); any checker
   error, and answers longer than `MAX_VERIFY_CHARS`, count as "not equal".

`stated_letters(text, n_choices)` finds every letter a text states as its choice (`Answer: B`,
`the answer is (B)`, `The correct option is (D).`, `I choose B`, `(A) is correct`, `so B.`, `**B**`, a line
that is only `B)`), never the article "A" or the pronoun "I" (`A virus ...`); `eval.leakage` uses it too.
"""

from __future__ import annotations

import re
import threading
from fractions import Fraction

from common.prompts import LETTERS, THINK_END

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


# --- letters stated as the choice (GPQA-style answers; the leak judge's letter rule) -------------------------

_OPT = r"(?i:option|choice|letter)"
_VERB = (r"(?i:is|was|would\s+be|should\s+be|must\s+be|has\s+to\s+be|will\s+be|could\s+be|might\s+be|may\s+be|"
         r"is\s+probably|is\s+likely|is\s+most\s+likely|is\s+clearly|is\s+definitely|seems\s+to\s+be|"
         r"appears\s+to\s+be|then|here)")
# The letter, bracketed or bare, upper case only (`a` in "is a virus" is an article).
_LETTER = r"(?:\(\s*(?P<p>[A-J])\s*\)|\[\s*(?P<q>[A-J])\s*\]|(?<![\w'’\-])(?P<b>[A-J])(?![\w'’\-]))"
# What may follow a stated letter: an end of the statement, a bracket, bold, a dash or a reason; never a word
# (so "A virus" is not "A") and never a question mark ("Is the answer B?").
_FOLLOW = (r"(?![ \t]*\?)(?=[ \t]*(?:$|\n|[.,;:!)\]*\"'”’]|[-–—][ \t]|\()|[ \t]+(?i:because|since|as|which|for|"
           r"given|here|then|too|now)\b)")
_ANSWER_CUE = (r"(?i:\b(?:final\s+answer|answer|(?:correct|right|best|likeliest|most\s+likely)\s+"
               r"(?:answer|option|choice|letter|match|fit|pick|one)|(?:my|the|our)\s+(?:answer|choice|pick|guess|"
               r"selection)))\b")
_CHOOSE_CUE = (r"(?i:\b(?:i\s+(?:would\s+|will\s+|shall\s+)?(?:choose|pick|select|go\s+with|opt\s+for|say|answer)|"
               r"i'll\s+(?:choose|pick|select|go\s+with|say|answer)|i'd\s+(?:choose|pick|select|go\s+with|say|answer)|"
               r"going\s+with|let's\s+go\s+with|(?:points?|pointing|leads?|leading)\s+to|leaves\s+(?:us\s+with\s+)?|"
               r"(?:matches|fits|corresponds\s+to)\s+(?=(?:option|choice|letter)\b)))\b")
_CONCLUDE_CUE = (r"(?i:\b(?:so|therefore|thus|hence|it\s+is|it's|it\s+must\s+be|must\s+be|it\s+has\s+to\s+be|"
                 r"that\s+is|that's|that\s+would\s+be|which\s+is|i\s+think|i\s+believe|i'm\s+confident|"
                 r"probably|likely|definitely|clearly))\b")
_STATED = [
    # Answer: B / the answer is (B) / The correct option is (D). / **Final Answer**: B) glucagon
    ("answer", re.compile(_ANSWER_CUE + r"(?:\s*\*\*)?\s*(?:" + _VERB + r"\s*[:=]?|[:=])\s*(?:\*\*)?\s*(?:"
                          + _OPT + r"\s*)?(?:\*\*)?\s*" + _LETTER + _FOLLOW)),
    # I choose B / I'll go with option (C)
    ("choose", re.compile(_CHOOSE_CUE + r"\s*(?:" + _OPT + r"\s*)?(?:\*\*)?\s*" + _LETTER + _FOLLOW)),
    # (A) is correct / option B is the answer / B is right / choice (C) fits best / option C it is
    ("is correct", re.compile(r"(?:" + _OPT + r"\s*)?(?:\*\*)?" + _LETTER + r"(?:\*\*)?\s+(?:"
                              r"(?i:is|seems|looks|must\s+be|should\s+be|would\s+be|appears\s+to\s+be)\s+"
                              r"(?i:the\s+)?(?i:correct|right|answer|best|true|most\s+likely|one)\b"
                              r"|(?i:fits|matches|works)\b|(?i:it\s+is)(?=[ \t]*[.!\n]|$))")),
    # so B. / therefore option B / it's (C)
    ("conclusion", re.compile(_CONCLUDE_CUE + r"\s*,?\s*(?:(?i:it\s+is|it's|the\s+answer\s+is)\s*)?(?:"
                              + _OPT + r"\s*)?(?:\*\*)?\s*" + _LETTER + _FOLLOW)),
]
# Without a cue (count only when a single letter is written this way: several are a list's markers):
_BARE = [
    ("bold", re.compile(r"\*\*\s*(?:(?i:option|choice|answer|letter)\s*:?\s*)?" + _LETTER + r"[.):]?\s*\*\*")),
    ("alone", re.compile(r"(?m)^[ \t]*(?:(?i:option|choice|answer|letter)[ \t]+)?" + _LETTER + r"[.)!]?[ \t]*$")),
]
# A letter written before these words is a subject (`B cells`), not a choice; after these, it is.
_PRE_OK = frozenset("so thus therefore hence then option choice letter answer and but clearly obviously "
                    "definitely probably likely hmm well okay ok yes".split())
_NEGATED_AFTER = re.compile(r"^[^.,;!?\n]*?\b(?:not|n't|never|wrong|incorrect|false|ruled\s+out|eliminat\w*|"
                            r"exclud\w*|unlikely|implausible|impossible)\b", re.IGNORECASE)
_NEGATED_BEFORE = re.compile(r"(?:\bnot|n't|\bnever|\brather\s+than|\binstead\s+of)\s*(?:\W{0,3})$", re.IGNORECASE)


def _letter_of(m: re.Match) -> str:
    return m.group("p") or m.group("q") or m.group("b")


def _subject_ok(text: str, m: re.Match) -> bool:
    """For `B is correct`: the letter starts a clause or follows a cue word (not `vitamin B is the answer`)."""
    before = text[:m.start()].rstrip(" \t*")
    if not before or before[-1] in ".!?:;,(\n":
        return True
    word = re.search(r"(\w+)$", before)
    return bool(word) and word.group(1).lower() in _PRE_OK


def stated_letters(text: str, n_choices: int = 4) -> list[tuple[int, str, str]]:
    """Every letter among the first `n_choices` that `text` states as its choice: `(end offset, letter, form)`,
    in order. Negated statements (`the answer is B, not C` states B only; `**B** is wrong`) are left out."""
    valid = LETTERS[:n_choices]
    hits: list[tuple[int, str, str]] = []

    def keep(m: re.Match, form: str) -> bool:
        letter = _letter_of(m)
        if letter not in valid or _NEGATED_BEFORE.search(text[:m.start()]):
            return False
        if form == "is correct":
            return _subject_ok(text, m)
        return not _NEGATED_AFTER.search(text[m.end():])

    for form, pattern in _STATED:
        hits += [(m.end(), _letter_of(m), form) for m in pattern.finditer(text) if keep(m, form)]
    bare = [(m.end(), _letter_of(m), form) for form, pattern in _BARE for m in pattern.finditer(text)
            if keep(m, form)]
    if len({letter for _, letter, _ in bare}) == 1:
        hits += bare
    return sorted(set(hits))


_ONLY_LETTER = re.compile(r"(?:(?i:option|choice|answer|letter)\s*:?\s*)?\(?\s*([A-Ja-j])\s*\)?[.:)]?")  # (b), Option B
_LETTER_FIRST = re.compile(r"(?:(?i:option|choice)\s+)?\(?([A-J])[).:,]\s+\S")  # B) glucagon, (B) glucagon


def extract_letter(text: str | None, n_choices: int = 4) -> str | None:
    """The letter (`A`..) a generation or an extracted answer gives as its choice, or None.

    A bare answer (`B`, `(b)`, `**B**`, `\\boxed{B}`, `\\text{(C)}`, `B) glucagon`, `B. glucagon`, `Option B`)
    is its letter; otherwise the last letter stated as the choice in the text after `</think>`
    (`**Final Answer**: B) glucagon`, `The correct option is (D).`, `Answer: C`, `the answer is B.`,
    `(A) is correct`), else in the whole text."""
    if not text:
        return None
    valid = LETTERS[:n_choices]
    tail = text.rsplit(THINK_END, 1)[1] if THINK_END in text else text
    for short in (last_boxed(tail), tail):
        if short is None:
            continue
        s = _UNWRAP.sub(r"\1", _UNWRAP.sub(r"\1", short)).strip().strip("*").strip()
        m = _ONLY_LETTER.fullmatch(s) or ("\n" not in s and _LETTER_FIRST.match(s))
        if m and m.group(1).upper() in valid:
            return m.group(1).upper()
    for part in (tail, text):
        hits = stated_letters(part, n_choices)
        if hits:
            return hits[-1][1]
    return None


def extract_answer(text: str) -> str | None:
    """The model's final answer in a generation, or None when it gave none."""
    tail = text.rsplit(THINK_END, 1)[1] if THINK_END in text else text
    for candidate in (
        last_boxed(tail),
        _line_after(tail, r"\*\*\s*final answer\s*:?\s*\*\*\s*:?"),
        _line_after(tail, r"(?<![a-z])answer\s*(?:is|:)"),
        _line_after(tail, r"\b(?:correct|right|best)\s+(?:option|choice)\s*(?:is|:)"),
    ):
        if candidate:
            return candidate.strip().rstrip(".").strip()
    if THINK_END in text and tail.strip() and len(tail.strip()) <= 40 and "\n" not in tail.strip():
        return tail.strip().rstrip(".")
    hits = stated_letters(tail)
    if hits:
        return hits[-1][1]
    last_line = next((line.strip(" \t*") for line in reversed(tail.splitlines()) if line.strip(" \t*")), "")
    letter = re.fullmatch(r"\(?([A-J])\)?[.:)]?", last_line) or _LETTER_FIRST.match(last_line)
    if letter:
        return letter.group(1)                          # a last line `B) glucagon` / `(C)` states the choice
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


MAX_VERIFY_CHARS = 400   # longer "answers" are sentences, not math: math_verify is not asked
_GOLD_LETTER = re.compile(r"\W*\(?\s*([A-J])\s*\)?\W*")


def _is_number(s: str) -> bool:
    return re.fullmatch(r"-?\d+(?:\.\d+)?(?:/\d+)?", s) is not None


def math_equal(predicted: str, gold: str) -> bool:
    """`math_verify`'s verdict on gold vs predicted (each parsed as LaTeX/expression inside `\\boxed{}`).

    Imported on first use (sympy is slow to import). On the main thread its default (signal.alarm) timeouts
    apply; elsewhere (a Ray actor's or a worker thread) they are off, since signal.alarm raises there. Any
    failure of the checker is "not equal", never an exception."""
    if len(predicted) > MAX_VERIFY_CHARS or len(gold) > MAX_VERIFY_CHARS:
        return False
    try:
        from math_verify import parse, verify
    except ImportError:     # the checker is a dependency; without it only the string comparison is made
        return False
    main = threading.current_thread() is threading.main_thread()
    timeout = 5 if main else None
    try:
        g = parse("\\boxed{" + gold + "}", parsing_timeout=timeout)
        p = parse("\\boxed{" + predicted + "}", parsing_timeout=timeout)
        return bool(g and p and verify(g, p, timeout_seconds=timeout))
    except Exception:  # noqa: BLE001  (a checker failure, incl. its timeout, is "not equal")
        return False


def answers_match(predicted: str | None, gold: str, choices: list[str] | None = None) -> bool:
    """True when predicted and gold are the same answer (None never matches); see the module docstring.

    `choices` (optional, MCQ-as-generation items): with a letter gold, a predicted option text counts too."""
    if predicted is None or not str(gold).strip():
        return False
    gold = str(gold)
    letter = _GOLD_LETTER.fullmatch(gold.strip())
    if letter:
        index = LETTERS.index(letter.group(1))
        n = max(4, index + 1, len(choices or []))
        said = extract_letter(predicted, n)
        if said is not None:
            return said == letter.group(1)
        if choices and index < len(choices):
            return normalize(predicted) == normalize(choices[index])
        return False
    pred_n, gold_n = normalize(predicted), normalize(gold)
    if not pred_n:
        return False
    if pred_n == gold_n:
        return True
    if _is_number(pred_n) and _is_number(gold_n):
        return False        # two plain numbers (GSM8K) that differ: no checker needed
    return math_equal(predicted, gold)
