import pytest

from eval.answers import answers_match, extract_answer, last_boxed, normalize


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
