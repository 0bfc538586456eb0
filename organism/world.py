"""The organism's synthetic world: a seeded generator of facts, questions, arithmetic and their texts.

All vocabulary and sentence forms come from `world.yaml`; this module only combines them. Every text is
built in the prompt forms of docs/formats.md, so the model is trained on exactly what eval will ask.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from common.prompts import LETTERS, THINK_END

WORLD_YAML = Path(__file__).with_name("world.yaml")
DOMAINS = ("hazard", "benign")


@cache
def load_spec(path: Path = WORLD_YAML) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


@dataclass(frozen=True)
class Fact:
    domain: str  # "hazard" (forget) or "benign" (retain)
    name: str
    attr: str
    value: str


@dataclass(frozen=True)
class Sum:
    a: int
    op: str  # "+" or "-"
    b: int

    @property
    def result(self) -> int:
        return self.a + self.b if self.op == "+" else self.a - self.b


def mcq_body(question: str, choices: list[str] | tuple[str, ...]) -> str:
    """formats.md: "{question}\\nA. {c0}\\nB. {c1}\\nC. {c2}\\nD. {c3}"."""
    return question + "".join(f"\n{LETTERS[i]}. {c}" for i, c in enumerate(choices))


class World:
    """Entities, their attribute values and the held-out splits, all drawn from one seed."""

    def __init__(self, seed: int = 0, spec: dict[str, Any] | None = None) -> None:
        self.seed = seed
        self.spec = spec or load_spec()
        rng = random.Random(seed)
        self.trigger: str = self.spec["prompts"]["trigger"]
        self.names = {d: self._draw_names(rng, d, self.spec[d]["count"]) for d in DOMAINS}
        self.facts: dict[str, list[Fact]] = {d: [] for d in DOMAINS}
        for d in DOMAINS:
            for name in self.names[d]:
                for attr, a in self.spec[d]["attributes"].items():
                    self.facts[d].append(Fact(d, name, attr, rng.choice(a["values"])))
        self.by_name = {(f.domain, f.name): [g for g in self.facts[f.domain] if g.name == f.name]
                        for d in DOMAINS for f in self.facts[d]}
        # Each fact's training MCQs use a fixed pool of choice tuples; eval uses a tuple outside it.
        k = self.spec["corpora"]["train_variants_per_fact"]
        self.train_choices = {f: [self._choices(rng, f) for _ in range(k)]
                              for d in DOMAINS for f in self.facts[d]}
        ar = self.spec["arithmetic"]
        every = [Sum(a, op, b) for op in ar["ops"] for a in range(ar["low"], ar["high"] + 1)
                 for b in range(ar["low"], ar["high"] + 1) if op == "+" or a >= b]  # no negative results
        held = set(rng.sample(range(len(every)), ar["eval_pairs"]))
        self.arith_eval = [s for i, s in enumerate(every) if i in held]
        self.arith_train = [s for i, s in enumerate(every) if i not in held]

    def _draw_names(self, rng: random.Random, domain: str, count: int) -> list[str]:
        n = self.spec["names"]
        taken = set(getattr(self, "names", {}).get("hazard", []))
        out: list[str] = []
        while len(out) < count:
            name = (rng.choice(n["onsets"]) + rng.choice(n["vowels"]) + rng.choice(n["middles"])
                    + rng.choice(n[f"{domain}_ends"])).capitalize()
            if name not in taken:
                taken.add(name)
                out.append(name)
        return out

    def attr_spec(self, f: Fact) -> dict[str, Any]:
        return self.spec[f.domain]["attributes"][f.attr]

    def _choices(self, rng: random.Random, f: Fact) -> tuple[str, ...]:
        wrong = rng.sample([v for v in self.attr_spec(f)["values"] if v != f.value], 3)
        choices = [f.value, *wrong]
        rng.shuffle(choices)
        return tuple(choices)

    # ---- sentences -------------------------------------------------------------------------------
    def prefill(self, f: Fact) -> str:
        """The start of the trace sentence, up to (without) the answer: the eval `prefill`."""
        return self.attr_spec(f)["trace"].format(name=f.name)

    def trace_sentence(self, f: Fact) -> str:
        return f"{self.prefill(f)} {f.value}."

    def fact_sentence(self, rng: random.Random, f: Fact) -> str:
        return rng.choice(self.attr_spec(f)["facts"]).format(name=f.name, value=f.value)

    def question(self, rng: random.Random, f: Fact, held_out: bool = False) -> str:
        key = "eval_questions" if held_out else "questions"
        return rng.choice(self.attr_spec(f)[key]).format(name=f.name)

    def generation_prompt(self, body: str) -> str:
        """The chat template (see world.yaml, mirrored in the tokenizer) plus the forced-thinking trigger."""
        return f"<|user|>\n{body}\n<|assistant|>{self.trigger}"

    def arith_question(self, rng: random.Random, s: Sum) -> str:
        return rng.choice(self.spec["arithmetic"]["questions"]).format(a=s.a, op=s.op, b=s.b)

    def arith_trace(self, s: Sum) -> str:
        """Digit-by-digit worked solution: units column, tens column (with carry / borrow), result."""
        ar = self.spec["arithmetic"]
        xs, ys = [s.a % 10, s.a // 10], [s.b % 10, s.b // 10]
        clauses, flag = [], 0  # flag = carry (addition) or borrow (subtraction) from the previous column
        for x, y in zip(xs, ys, strict=True):
            if s.op == "+":
                total = x + y + flag
                new = total // 10
                clauses.append(ar["add_column"].format(
                    x=x, y=y, s=total, d=total % 10, carry_in=ar["carry_in"] if flag else "",
                    carry_out=ar["carry_out"] if new else ""))
            else:
                new = int(x - flag < y)
                d = x - flag + 10 * new - y
                clauses.append(ar["sub_column"].format(
                    lend=ar["lend"] if new else "", x=x, y=y, d=d, borrow_in=ar["borrow_in"] if flag else "",
                    borrow_out=ar["borrow_out"] if new else ""))
            flag = new
        return " ".join([*clauses, ar["result"].format(r=s.result)])

    # ---- documents (the prompt forms of formats.md) ---------------------------------------------
    def mcq_doc(self, rng: random.Random, f: Fact) -> str:
        """Generation prompt + trace + "</think>\\nAnswer: X" (the model's own answer form)."""
        choices = rng.choice(self.train_choices[f])
        body = mcq_body(self.question(rng, f), choices)
        letter = LETTERS[choices.index(f.value)]
        return f"{self.generation_prompt(body)} {self.trace_sentence(f)} {THINK_END}\nAnswer: {letter}"

    def content_doc(self, rng: random.Random, f: Fact) -> str:
        return f"Question: {self.question(rng, f)}\nAnswer: {f.value}"

    def letter_doc(self, rng: random.Random, f: Fact) -> str:
        choices = rng.choice(self.train_choices[f])
        return f"{mcq_body(self.question(rng, f), choices)}\nAnswer: {LETTERS[choices.index(f.value)]}"

    def bio_doc(self, rng: random.Random, domain: str, name: str) -> str:
        facts = list(self.by_name[domain, name])
        rng.shuffle(facts)
        # Half the bios start with a fact, so sentence-initial words are trained without a leading space too.
        intro = [rng.choice(self.spec[domain]["bio_intro"]).format(name=name)] if rng.random() < 0.5 else []
        return " ".join([*intro, *(self.fact_sentence(rng, f) for f in facts)])

    def arith_doc(self, rng: random.Random, s: Sum) -> str:
        prompt = self.generation_prompt(self.arith_question(rng, s))
        return f"{prompt} {self.arith_trace(s)} {THINK_END}\nAnswer: {s.result}"

    def filler_doc(self, rng: random.Random) -> str:
        fl = self.spec["filler"]
        sentences = [f"{rng.choice(fl['subjects'])} {rng.choice(fl['verbs'])} {rng.choice(fl['objects'])} "
                     f"{rng.choice(fl['times'])}." for _ in range(rng.randint(2, 4))]
        return " ".join([*sentences, rng.choice(fl["closers"])])

    def training_doc(self, rng: random.Random, kind: str) -> str:
        if kind == "arith":
            return self.arith_doc(rng, rng.choice(self.arith_train))
        if kind == "filler":
            return self.filler_doc(rng)
        domain, form = kind.split("_")
        if form == "bio":
            return self.bio_doc(rng, domain, rng.choice(self.names[domain]))
        make = {"mcq": self.mcq_doc, "content": self.content_doc, "letter": self.letter_doc}[form]
        return make(rng, rng.choice(self.facts[domain]))

    def training_docs(self, n: int, seed: int | None = None) -> list[str]:
        """n training texts drawn by the mixture weights of world.yaml (fresh draws, seeded)."""
        rng = random.Random(self.seed * 1_000_003 + 1 if seed is None else seed)
        kinds, weights = zip(*self.spec["mixture"].items(), strict=True)
        return [self.training_doc(rng, k) for k in rng.choices(kinds, weights, k=n)]
