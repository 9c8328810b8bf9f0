"""omlx accuracy-benchmark protocol (suites/omlx.py): prompts character for character from
omlx's source (omlx/eval/mmlu.py format_prompt, truthfulqa.py, humaneval.py, mbpp.py at the
commits cited in the module docstring), extraction, sampling and lenient code repair."""

import random
import subprocess
import sys

from harness.suites import omlx

DEV = [
    {"subject": "high_school_us_history", "question": "Who wrote the Declaration?",
     "choices": ["Jefferson", "Lincoln", "Grant", "Adams"], "answer": 0},
    {"subject": "anatomy", "question": "How many bones?", "choices": ["206", "12", "3", "1000"], "answer": 0},
    {"subject": "high_school_us_history", "question": "First president?",
     "choices": ["Adams", "Washington", "Lincoln", "Polk"], "answer": 1},
]
ROW = {"subject": "high_school_us_history", "question": "When was the Civil War?",
       "choices": ["1812", "1861-1865", "1917", "1776"], "answer": 1}


def test_mmlu_prompt_character_for_character():
    shots = omlx.mmlu_fewshot(DEV)
    assert [r["question"] for r in shots["high_school_us_history"]] == ["Who wrote the Declaration?", "First president?"]
    text = omlx.mmlu_user_text(ROW, ROW["subject"], shots[ROW["subject"]])
    # omlx: parts joined by "\n"; header and every "Answer: X\n" end in "\n" -> blank lines;
    # subject slug .title()d ("Us", not "US").
    expected = (
        "The following are multiple choice questions about High School Us History. "
        "Answer with just the letter (A, B, C, or D).\n"
        "\n"
        "Who wrote the Declaration?\nA. Jefferson\nB. Lincoln\nC. Grant\nD. Adams\n"
        "Answer: A\n"
        "\n"
        "First president?\nA. Adams\nB. Washington\nC. Lincoln\nD. Polk\n"
        "Answer: B\n"
        "\n"
        "When was the Civil War?\nA. 1812\nB. 1861-1865\nC. 1917\nD. 1776\n"
        "Answer:"
    )
    assert text == expected
    assert omlx.mmlu_messages(ROW, ROW["subject"], shots[ROW["subject"]]) == [{"role": "user", "content": expected}]
    # 0-shot: header then the question directly
    assert omlx.mmlu_user_text(ROW, "anatomy", []).startswith(
        "The following are multiple choice questions about Anatomy. Answer with just the letter (A, B, C, or D).\n\n"
        "When was the Civil War?\nA. 1812")


def test_mmlu_answer_extraction():
    ex = omlx.extract_mmlu_answer
    assert ex("B") == "B"
    assert ex("  C. 1917") == "C"
    assert ex("Answer: D") == "D"  # "Answer" has no standalone A
    assert ex("The answer is (B), not A") == "B"  # the FIRST standalone letter
    assert ex("A and then B") == "A"
    assert ex("Both answers are wrong") == "B"  # no standalone A-D: omlx falls back to the first char
    assert ex("none of them") == ""
    assert ex("b") == ""  # case-sensitive
    assert ex("Bx") == "B"  # leading-letter fallback
    assert ex("") == ""


def test_stratified_sample_is_omlx_proportional_with_seed_42():
    items = ([{"subject": "c", "i": i} for i in range(30)] + [{"subject": "a", "i": i} for i in range(10)]
             + [{"subject": "b", "i": i} for i in range(20)])
    got = omlx.stratified_sample(items, 12)
    # sorted subjects a, b, c: round(10/60*12)=2, round(20/60*12)=4, last takes the remainder 6
    assert [it["subject"] for it in got] == ["a"] * 2 + ["b"] * 4 + ["c"] * 6
    rng = random.Random(42)  # one generator shared across subjects, in sorted order
    expect = rng.sample(items[30:40], 2) + rng.sample(items[40:60], 4) + rng.sample(items[0:30], 6)
    assert got == expect
    assert omlx.stratified_sample(items, 0) == items and omlx.stratified_sample(items, 100) == items
    uni = omlx.uniform_stratified_sample(items, 10)
    assert [it["subject"] for it in uni] == ["a"] * 4 + ["b"] * 3 + ["c"] * 3
    assert omlx.deterministic_sample(items, 5) == random.Random(42).sample(items, 5)


def test_truthfulqa_shuffle_prompt_and_extraction():
    rows = [
        {"question": "Q0?", "mc1_targets": {"choices": ["right", "w1", "w2", "w3"], "labels": [1, 0, 0, 0]}},
        {"question": "bad", "mc1_targets": {"choices": ["x"], "labels": [0]}},
        {"question": "Q2?", "mc1_targets": {"choices": ["r", "w"], "labels": [1, 0]}},
    ]
    items = omlx.truthfulqa_items(rows)
    assert [it["id"] for it in items] == ["0", "2"]
    for it, i in zip(items, (0, 2)):
        order = list(range(len(rows[i]["mc1_targets"]["choices"])))
        random.Random(42 + i).shuffle(order)
        assert it["choices"] == [rows[i]["mc1_targets"]["choices"][j] for j in order]
        assert it["choices"][it["answer"]] == rows[i]["mc1_targets"]["choices"][0]
    item = {"question": "Q?", "choices": ["x", "y", "z"], "answer": 2}
    assert omlx.truthfulqa_user_text(item) == (
        "Answer the following question truthfully. Choose the most accurate answer. Answer with just the letter.\n"
        "\nQuestion: Q?\n\nA. x\nB. y\nC. z\n\nAnswer:")
    assert omlx.extract_truthfulqa_answer("D. or C", 3) == "C"  # D is not a valid letter for 3 choices
    assert omlx.extract_truthfulqa_answer("E", 7) == "E"


def _runner(script: str) -> tuple:
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=20)
    return r.returncode == 0, r.stderr[-500:]


HE = {"prompt": "import math\n\ndef add(a, b):\n    \"\"\"Add.\"\"\"\n",
      "test": "def check(f):\n    assert f(2, 3) == 5\n", "entry_point": "add"}


def test_humaneval_prompt_and_lenient_repair():
    assert omlx.humaneval_user_text("def f():\n") == (
        "Complete the following Python function. Return only the missing indented function body, "
        "no explanations.\n\ndef f():\n")
    strict = omlx.humaneval_evaluate("    return a + b\n", HE, _runner)
    assert strict["passed"] and strict["pass_mode"] == "canonical_raw" and not strict["lenient"]
    # body at column 0: the plain completion is an IndentationError, the repair passes (labelled lenient)
    repaired = omlx.humaneval_evaluate("```python\nreturn a + b\n```", HE, _runner)
    assert repaired["passed"] and repaired["lenient"] and repaired["pass_mode"] == "canonical_indented"
    modes = [m for m, _ in omlx.humaneval_candidates("```python\nreturn a + b\n```", HE["prompt"])]
    assert modes == ["canonical_raw", "canonical_extracted", "canonical_indented",
                     "canonical_top_level_indent", "canonical_normalize_indent"][:len(modes)]
    full = omlx.humaneval_evaluate("```python\ndef add(a, b):\n    return math.fsum([a, b])\n```", HE, _runner)
    assert full["passed"] and full["pass_mode"] == "standalone_function"
    assert full["code"].startswith("import math\n\ndef add")  # prompt imports prepended
    wrong = omlx.humaneval_evaluate("    return a - b\n", HE, _runner)
    assert not wrong["passed"] and wrong["failure_type"] == "wrong_answer"
    assert omlx.normalize_body_indentation("x = 1\n        if x:\n            y = 2\n        return x") == (
        "    x = 1\n    if x:\n        y = 2\n    return x")


def test_mbpp_prompt_last_block_and_tolerant_asserts():
    tests = ["assert f(1) == 0.3", "assert f(2) == 2", "assert f(3) == 3", "assert f(4) == 4"]
    assert omlx.mbpp_user_text("Do it.", tests) == (
        "Write a Python function to solve the following problem. Provide only the complete function "
        "implementation, no explanations.\n\nProblem: Do it.\n\nTest cases:\nassert f(1) == 0.3\n"
        "assert f(2) == 2\nassert f(3) == 3\n\nSolution:")
    resp = "Draft:\n```python\ndef f(x):\n    return 0\n```\nFinal:\n```python\ndef f(x):\n    return 0.1 + 0.2 if x == 1 else x\n```"
    assert omlx.extract_last_code_block(resp).endswith("else x")
    got = omlx.mbpp_evaluate(resp, {"test_list": tests}, _runner)
    assert got["passed"] and got["pass_mode"] == "tolerant_numeric_asserts" and got["lenient"]
    exact = omlx.mbpp_evaluate("def f(x):\n    return 0.3 if x == 1 else x", {"test_list": tests}, _runner)
    assert exact["passed"] and exact["pass_mode"] == "standalone_code" and not exact["lenient"]
    assert omlx.tolerant_assert_tests(["assert a(1) == [1.0, 2]", "assert x"]) == [
        "assert _omlx_close_equal(a(1), [1.0, 2])", "assert x"]


def test_budgets():
    assert omlx.resolve_max_tokens(omlx.MAX_TOKENS, False) == 128
    assert omlx.resolve_max_tokens(omlx.MAX_TOKENS, True) == 8192
    assert omlx.resolve_max_tokens(100_000, True) == 32768
