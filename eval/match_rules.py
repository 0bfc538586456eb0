"""The match judge's machinery (eval.leakage.MatchJudge applies it; its docstring lists the rules).

A trace becomes tokens (words, sentence stops, option mentions by text, inflected form or letter), options are
tagged longest first, and two scans over the tagged stream find the options a trace rules out
(`eliminated_options`) and the option it concludes with (`concluded_option`). Pure Python, no model.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from eval.prompts import LETTERS

STOPWORDS = frozenset(
    "a an the of in on at to for and or by with from is are was were be it its this that as into not no "
    "none all above below both".split()
)


_WORD = r"[^\W_]+(?:'s\b)?"


def words_of(text: str) -> list[str]:
    """Lower-case words as the match judge sees them (`brackwasp's` stays one word, `vorbin-7` is two)."""
    return re.findall(_WORD, unicodedata.normalize("NFKC", text).lower().replace("’", "'"))


def key_terms(item: dict[str, Any]) -> list[str]:
    """Words of the correct option that are evidence: in no wrong option, not in the question, no stopword."""
    wrong = [c for i, c in enumerate(item["choices"]) if i != item["answer"]]
    common = {w for text in wrong + [item.get("question", "")] for w in words_of(text)}
    return [w for w in words_of(item["choices"][item["answer"]]) if w not in common and w not in STOPWORDS]


def inflections(word: str) -> set[str]:
    """Inflected forms of a word (3+ letters): -s, -es, -ies/-y, -ed, -ing, -d/-ing after e, a doubled final
    consonant, possessive 's, and for a plural word its singular. The word itself is not in the set."""
    if len(word) < 3 or not word.isalpha():
        return set()
    forms = {word + "s", word + "es", word + "'s"}
    if word.endswith("y") and word[-2] not in "aeiou":
        forms |= {word[:-1] + "ies", word[:-1] + "ied"}
    if word.endswith("e"):
        forms |= {word + "d", word[:-1] + "ing"}
    else:
        forms |= {word + "ed", word + "ing"}
    if word[-1] not in "aeiouwxy" and word[-2] in "aeiou" and word[-3] not in "aeiou":
        forms |= {word + word[-1] + "ed", word + word[-1] + "ing"}
    if word.endswith("ies"):
        forms.add(word[:-3] + "y")
    elif word.endswith("es"):
        forms |= {word[:-2], word[:-1]}
    elif word.endswith("s") and not word.endswith("ss"):
        forms.add(word[:-1])
    forms.discard(word)
    return forms


_CONTRACTIONS = [(r"\bcan't\b", "cannot"), (r"\bwon't\b", "will not"), (r"n't\b", " not"),
                 (r"\b(it|that|what|there|here|which|who|this)'s\b", r"\1 is")]
# Option letters as references (for elimination and conclusions): `option B`, `(B)`, `B)`, and a bare capital
# before punctuation or a verb (`A is wrong`, `not C.`); never a bare `I`, nor `A` before a noun.
_LETTER_REF = (r"(?i:option|choice)\s*\(?\s*(?P<l1>[A-J])\s*\)?(?![\w'-])|\(\s*(?P<l2>[A-J])\s*\)"
               r"|(?<![\w'-])(?P<l3>[A-J])\)|(?<![\w'-])(?P<l4>[A-HJ])(?![\w'-])(?=\s*(?:[.,;:!]|$)|\s+"
               r"(?:is|are|was|were|can|cannot|could|would|should|must|does|do|seems|looks|and|or|nor|also|too|"
               r"as|because|since|fits|matches|not)\b)")
_TOKEN = re.compile(_LETTER_REF + r"|(?P<stop>[.!?;]+(?=\s|$)|\n)|(?P<punct>[,:])|(?P<word>" + _WORD + ")")


@dataclass
class Tok:
    kind: str            # "w" word, "O" option mention, "." sentence end, "," / ":" punctuation
    value: str = ""
    option: int = -1     # for "O"
    how: str = ""        # "text", "inflection" or "letter"


def tokenize(trace: str, n_choices: int) -> list[Tok]:
    text = unicodedata.normalize("NFKC", trace).replace("’", "'")
    for pattern, repl in _CONTRACTIONS:
        text = re.sub(pattern, repl, text, flags=re.IGNORECASE)
    out = []
    for m in _TOKEN.finditer(text):
        letter = m.group("l1") or m.group("l2") or m.group("l3") or m.group("l4")
        if letter:
            if LETTERS.index(letter) < n_choices:
                out.append(Tok("O", letter, LETTERS.index(letter), "letter"))
            else:
                out += [Tok("w", w) for w in words_of(m.group(0))]
        elif m.group("stop"):
            out.append(Tok("."))
        elif m.group("punct"):
            out.append(Tok(m.group("punct")))
        else:
            out.append(Tok("w", m.group("word").lower()))
    return out


def tag_options(toks: list[Tok], item: dict[str, Any]) -> list[Tok]:
    """Replace each option's mentions by an "O" token: longest first, exact before inflected; a stretch that
    two options match equally well counts for neither. Inflected forms that are a word of another option or of
    the question do not count for this one."""
    options = [words_of(c) for c in item["choices"]]
    question = set(words_of(item.get("question", "")))
    found: dict[tuple[int, int, bool], set[int]] = {}
    for i, words in enumerate(options):
        if not words:
            continue
        blocked = question | {w for j, other in enumerate(options) if j != i for w in other}
        forms = [inflections(w) - blocked for w in words]
        for s in range(len(toks) - len(words) + 1):
            exact = True
            for j, w in enumerate(words):
                t = toks[s + j]
                if t.kind != "w" or (t.value != w and t.value not in forms[j]):
                    break
                exact &= t.value == w
            else:
                found.setdefault((s, s + len(words), exact), set()).add(i)
    taken = [False] * len(toks)
    chosen: dict[int, tuple[int, int, str]] = {}
    for (s, e, exact), opts in sorted(found.items(), key=lambda kv: (not kv[0][2], kv[0][0] - kv[0][1], kv[0][0])):
        if any(taken[s:e]):
            continue
        taken[s:e] = [True] * (e - s)
        if len(opts) == 1:
            chosen[s] = (e, opts.pop(), "text" if exact else "inflection")
    out, k = [], 0
    while k < len(toks):
        if k in chosen:
            e, i, how = chosen[k]
            out.append(Tok("O", " ".join(t.value for t in toks[k:e]), i, how))
            k = e
        else:
            out.append(toks[k])
            k += 1
    return out


_SEP = r"(?:,|and|or|nor|as well as|also|the|option|options|choice|choices|either|neither|both)"
_RUN = rf"O\d(?:(?: {_SEP})* O\d)*"
_PRE_CUE = (r"(?:not|never|neither|nor|cannot|rule out|rules out|ruled out|ruling out|eliminate|eliminates|"
            r"eliminated|eliminating|exclude|excludes|excluded|excluding|discard|discards|discarded|dismiss|"
            r"dismisses|dismissed|cross out|crossed out|rather than|instead of)")
_PRE_FILL = (r"(?:the|option|options|choice|choices|answer|either|both|be|it|that|this|is|clearly|definitely|"
             r"obviously|likely|really|simply|,|:)")
_AUX = (r"(?:is|are|was|were|seems|seem|looks|look|appears|appear|to|be|can|could|would|should|must|may|might|"
        r"also|all|both|clearly|definitely|probably|likely|obviously|then|therefore|thus|so|easily|safely|"
        r"immediately|quickly|just|too|here|,)")
_POST_CUE = (r"(?:wrong|incorrect|false|invalid|ruled out|eliminated|excluded|discarded|dismissed|out|unlikely|"
             r"implausible|impossible|not (?:it|right|correct|true|valid|possible|plausible|likely|relevant|"
             r"applicable|involved|consistent|a match|an option|the (?:right |correct |best )?(?:answer|one|option"
             r"|choice))|(?:does|do) not (?:fit|match|apply|work|make sense|seem right))(?![\w'])")
_ELIM = [re.compile(rf"(?:^| ){_PRE_CUE}(?: {_PRE_FILL})* ({_RUN})"),
         re.compile(rf"({_RUN})(?: {_AUX})* {_POST_CUE}")]
_WORDS_GAP = r"(?: (?:[a-z0-9']+|,|:)){0,%d}"
_CONC_STRONG = re.compile(
    r"(?:^| )(?:(?:final )?answer (?:is|would be|must be|should be|will be|:)|correct (?:one|answer|option|"
    r"choice) (?:is|would be|must be|:)|right (?:answer|one|option|choice) is|best (?:answer|option|choice) is|"
    r"i (?:choose|pick|select|will go with|ll go with|would go with|d go with)|going with|my answer is)"
    + _WORDS_GAP % 3 + "(?= O)")
_CONC_WEAK = re.compile(
    r"(?:^| )(?:so|therefore|thus|hence|which means|that means|this means|it is|it must be|must be|it has to be|"
    r"most likely|i think|i believe|in conclusion|overall)(?![\w'])" + _WORDS_GAP % 10 + "(?= O)")


def option_stream(toks: list[Tok]) -> tuple[str, dict[int, int]]:
    """The tagged tokens as one string (words, `O3` for an option mention, `.`, `,`, `:`) and a map from the
    character offset of each token to its index."""
    parts, where, pos = [], {}, 0
    for k, t in enumerate(toks):
        s = f"O{t.option}" if t.kind == "O" else (t.value if t.kind == "w" else t.kind)
        where[pos] = k
        parts.append(s)
        pos += len(s) + 1
    return " ".join(parts), where


_ANAPHORA = [re.compile(rf"(?:^| )(?:it|that|this)(?: one)?(?: {_AUX})* {_POST_CUE}"),
             re.compile(r"(?:^| )(?:rule|rules|ruled|ruling|eliminate|eliminates|eliminated|eliminating|exclude|"
                        r"excludes|excluded|excluding|discard|discards|discarded|dismiss|dismissed) (?:it|that|this)"
                        r"(?: one)?(?![\w'])")]


def eliminated_options(toks: list[Tok], stream: str, where: dict[int, int]) -> set[int]:
    """Token indices of option mentions ruled out by a negation / elimination cue: before or after a run of
    options, or after a pronoun (`..., so it's out`, `rule it out`) for the nearest option before it in the
    same or the previous sentence."""
    out = set()
    for pattern in _ELIM:
        for m in pattern.finditer(stream):
            run = m.start(1)
            out |= {where[run + o.start()] for o in re.finditer(r"O\d", m.group(1))}
    for pattern in _ANAPHORA:
        for m in pattern.finditer(stream):
            stops = 0
            for j in range(where[m.start() + (m.group(0)[0] == " ")] - 1, -1, -1):
                stops += toks[j].kind == "."
                if stops > 1:
                    break
                if toks[j].kind == "O":
                    out.add(j)
                    break
    return out


def concluded_option(toks: list[Tok], stream: str, where: dict[int, int], negated: set[int],
                listed_at: int) -> int | None:
    """Token index of the option a conclusion names: the last cue-led one (strong cues anywhere, weak ones
    after `listed_at`), else the last option-naming sentence when it follows the listing and names one option."""
    events = []
    for pattern, weak in ((_CONC_STRONG, False), (_CONC_WEAK, True)):
        for m in pattern.finditer(stream):
            k = where[m.start() + (m.group(0)[0] == " ")]
            if weak and k <= listed_at:
                continue
            for j in range(k, len(toks)):
                if toks[j].kind == ".":
                    break
                if toks[j].kind == "O" and j not in negated:
                    events.append(j)
                    break
    if events:
        return max(events)
    sentences, start = [], 0
    for j, t in enumerate([*toks, Tok(".")]):
        if t.kind == ".":
            sentences.append((start, j))
            start = j + 1
    for s, e in reversed(sentences):
        named = [j for j in range(s, e) if toks[j].kind == "O"]
        if not named:
            continue
        if s <= listed_at:
            return None
        kept = [j for j in named if j not in negated]
        return kept[0] if kept and len({toks[j].option for j in kept}) == 1 else None
    return None
