import pytest

from eval.answers import answers_match, extract_answer, extract_letter, last_boxed, normalize


@pytest.mark.parametrize("text, expected", [
    (r"so the result is \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
    (r"\boxed{1} then \boxed{\left(3, \sqrt{4}\right)}", r"\left(3, \sqrt{4}\right)"),
    ("steps ... </think>\nAnswer: C", "C"),
    ("<think> 3 + 4 = 7 </think>\nAnswer: 7", "7"),
    ("Answer: 12\nmore text\nAnswer: 15.", "15"),
    ("**Final Answer**\n\n42", "42"),
    ("**Final Answer:** 1,000", "1,000"),
    ("The answer is 9.", "9"),
    ("reasoning here </think> 12", "12"),
    ("first 3, then 8, so 11.", "11"),
    ("no answer at all", None),
    ("", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_boxed_takes_last_and_survives_unbalanced():
    assert last_boxed(r"\boxed{a} and \boxed{b{c}}") == "b{c}"
    assert last_boxed(r"\boxed{unclosed") is None
    assert last_boxed(r"\fbox{7}") == "7"


@pytest.mark.parametrize("a, b", [
    ("1,000", "1000"),
    ("1/2", r"\frac{1}{2}"),
    (r"\dfrac{1}{2}", "0.5"),
    (r"\frac12", ".5"),
    ("5.0", "5"),
    ("$5", "5"),
    (r"\$1,234.50", "1234.5"),
    (r"90^\circ", "90"),
    (r"90^{\circ}", "90°"),
    (r"\left( 3,4 \right)", "(3, 4)"),
    (r"3\!\,000", "3000"),
    ("12 cm", "12"),
    (r"12\text{ cm}", "12"),
    ("7 dollars", "7"),
    ("x = 7", "7"),
    ("(B)", "B"),
    (r"\text{(C)}", "c"),
    ("10%", "10"),
    ("-1/3", r"-\frac{1}{3}"),
    (r"\sqrt{2}", r"\sqrt {2}"),
])
def test_normalize_equal(a, b):
    assert normalize(a) == normalize(b), (normalize(a), normalize(b))
    assert answers_match(a, b)


@pytest.mark.parametrize("a, b", [("12", "13"), ("1/3", "0.33"), ("A", "B"), ("15", "1,5"), ("", ""), (None, "5")])
def test_normalize_different(a, b):
    assert not answers_match(a, b)


# --- MATH-style equivalence through math_verify, GSM8K fast path, GPQA letters ----------------------------------

@pytest.mark.parametrize("pred, gold", [
    (r"\sqrt{2}/2", r"\frac{\sqrt{2}}{2}"),          # MATH-500 golds are LaTeX from \boxed{}
    (r"2\sqrt{3}", r"\sqrt{12}"),
    ("3, 2, 1", "1,2,3"),                             # an unordered answer list
    ("3^{2}", "9"),
    (r"\frac{\pi}{2}", r"\pi/2"),
    (r"\left( 3, \frac{\pi}{2} \right)", r"\left( 3, \frac{\pi}{2} \right)"),
    ("1+3x", "3x+1"),
    (r"\dfrac{14}{3}", r"\frac{14}{3}"),
])
def test_math_equivalent(pred, gold):
    assert answers_match(pred, gold)


@pytest.mark.parametrize("pred, gold", [
    (r"\sqrt{2}", "2"),
    ("1,2", "1,2,3"),
    ("(3,4)", "(4,3)"),
    ("[0,1)", "[0,1]"),
    (r"\frac{\sqrt{3}}{2}", r"\frac{\sqrt{2}}{2}"),
    ("18", "72"),                                     # GSM8K integers
    ("1/3", "0.33"),
])
def test_math_different(pred, gold):
    assert not answers_match(pred, gold)


def test_gsm8k_integers_skip_the_checker(monkeypatch):
    import eval.answers as answers

    def boom(*a, **k):
        raise AssertionError("math_verify asked about two integers")

    monkeypatch.setattr(answers, "math_equal", boom)
    assert answers.answers_match(extract_answer("<think>16 - 3 - 4 = 9, 9 * 2 = 18</think>\nAnswer: 18"), "18")
    assert answers.answers_match("$1,080", "1080")
    assert not answers.answers_match("17", "18")


def test_math_verify_off_the_main_thread():
    import threading

    results = {}

    def worker():
        try:
            results["eq"] = answers_match(r"\frac{\sqrt{2}}{2}", r"\sqrt{2}/2")
            results["ne"] = answers_match(r"\sqrt{2}", "2")
        except Exception as e:  # noqa: BLE001
            results["error"] = repr(e)

    t = threading.Thread(target=worker)
    t.start()
    t.join(60)
    assert results == {"eq": True, "ne": False}


def test_checker_failure_is_not_equal(monkeypatch):
    import math_verify

    def broken(*a, **k):
        raise RuntimeError("sympy exploded")

    monkeypatch.setattr(math_verify, "verify", broken)
    assert not answers_match(r"2\sqrt{3}", r"\sqrt{12}")
    assert answers_match("12", "12")                  # the string path needs no checker


def test_import_is_light():
    import subprocess
    import sys

    code = "import sys, eval.answers; print('math_verify' in sys.modules or 'sympy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("text, letter", [
    ("<think>glucagon raises glucose</think>\n**Final Answer**: B) glucagon", "B"),
    ("The correct option is (D).", "D"),
    ("Answer: C", "C"),
    (r"so \boxed{B}", "B"),
    ("Weighing both, the answer is B.", "B"),
    ("(A) is correct, since the others violate parity.", "A"),
    ("I considered A, but I choose C.", "C"),
    ("The answer is A, not B.", "A"),
    (r"\boxed{\text{(C)}}", "C"),
    ("B) glucagon", "B"),
])
def test_extract_letter(text, letter):
    assert extract_letter(text) == letter
    assert answers_match(extract_answer(text), letter)     # how reason_accuracy calls it
    assert answers_match(text, letter)


@pytest.mark.parametrize("text", [
    "A virus is the most likely cause.",               # the article, not option A
    "Is the answer B? Let me check again.",             # a question
    "the answer is E",                                  # not one of 4 choices
    "I am not sure.",
])
def test_extract_letter_none(text):
    assert extract_letter(text) is None


@pytest.mark.parametrize("pred, gold, ok", [
    ("B) glucagon", "B", True),
    ("(b)", "B", True),
    ("C", "B", False),
    ("The correct option is (D).", "A", False),
    ("glucagon", "B", False),                           # no letter and no choices
])
def test_letter_gold(pred, gold, ok):
    assert answers_match(pred, gold) is ok


def test_letter_gold_with_choices():
    choices = ["insulin", "glucagon", "leptin", "ghrelin"]
    assert answers_match("Glucagon", "B", choices)
    assert not answers_match("insulin", "B", choices)
