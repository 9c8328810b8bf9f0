"""Grades that cannot be gamed (issue 12): the rubric on adversarial answers.

suites/data/reasoning_v2_examples.yaml holds, for every question, answers that
hedge between the right and a wrong answer, stuff every keyword, or say the
right (or a wrong) answer in unexpected words, each with the points it must
get. A hedge earns nothing for the criterion it hedges on, so no gamed answer
reaches a passing grade, and a right answer in other words keeps full marks."""

from collections import Counter

import pytest
import yaml

from harness.errors import HarnessError
from harness.suites.reasoning import grade_band
from harness.suites.reasoning_questionnaire import (
    EXAMPLE_KINDS,
    EXAMPLES_FILE,
    load_examples,
    load_questionnaire,
)
from harness.suites.reasoning_rubric import grade_answer

QN = load_questionnaire()
Q = QN.by_id()
EXAMPLES = load_examples()
FINAL_TYPES = ("final_exact", "final_order")


def _final_results(grade):
    return [r for r in grade.results if r.type in FINAL_TYPES]


def test_every_question_has_every_kind():
    have = Counter((ex.question, ex.kind) for ex in EXAMPLES)
    missing = [(q.id, kind) for q in QN.questions for kind in EXAMPLE_KINDS if not have[(q.id, kind)]]
    assert not missing, missing


@pytest.mark.parametrize("ex", EXAMPLES, ids=[f"{ex.question}-{ex.kind}-{i}" for i, ex in enumerate(EXAMPLES)])
def test_example_gets_its_points(ex):
    grade = grade_answer(Q[ex.question], ex.answer)
    assert grade.points == ex.points, grade.failed
    score = 100 * grade.points / grade.max_points
    finals = _final_results(grade)
    assert finals
    if ex.kind == "rephrased_right":
        assert grade.correct, grade.failed
    else:  # hedged, stuffed, rephrased_wrong: the checkable answer earns nothing, the grade is D
        assert all(r.points == 0 for r in finals), finals
        assert grade_band(score) == "D", score


# The answers issue 12 reported (v1 rubric: 83-91/100 for hedges, 2/10 and 1/10 for
# the rephrasings), each after the same full working as a good answer.
WORKING = {
    "sec-ssti": "Jinja2 evaluates the input on the server: remote code execution. Fix: pass name=name.",
    "algo-heapify": "Sift-down at height h costs O(h); summing n*h/2^(h+1) over the heights converges.",
    "sec-timing": "== short-circuits at the first mismatch, so time leaks the prefix; use hmac.compare_digest.",
    "debug-mutable-default": "The default list is created once and shared; fix with items=None.",
}


@pytest.mark.parametrize("qid, final, points, v1_points", [
    ("sec-ssti", "SSTI or XSS", 5, 10),
    ("algo-heapify", "O(n) or O(n log n)", 4, 9),
    ("sec-timing", "timing attack? no wait, length-extension", 5, 10),
    ("algo-heapify", "Linear time, i.e. big-O of n", 10, 5),
    ("debug-mutable-default", "It prints [1, 2] [1, 2]", 10, 5),
])
def test_issue_answers(qid, final, points, v1_points):
    grade = grade_answer(Q[qid], f"{WORKING[qid]}\n\nFINAL ANSWER: {final}")
    assert grade.points == points != v1_points, grade.failed
    hedged = points < grade.max_points
    assert all(r.passed != hedged for r in _final_results(grade))


@pytest.mark.parametrize("qid, final", [
    ("sec-ssti", "SSTI (not XSS or SQL injection)"),  # alternatives under a negation are negated too
    ("sec-ssti", "SSTI? Probably."),  # a question mark with nothing offered after it
    ("design-consistent-hashing", "80% or so, 20%"),  # "or so" approximates
    ("debug-binary-search", "3 (should be 4)"),  # a remark, not an alternative
    ("algo-heapify", "O(n), or Θ(n) to be precise"),  # both alternatives are right
    ("sec-path-traversal", "/etc/passwd"),  # a slash inside a path separates nothing
    ("algo-heapify", "O(n) - the naive O(n log n) bound is not tight"),  # a wrong answer dismissed
    ("algo-heapify", "O(n); O(n log n) is only an upper bound"),
    ("conc-event-loop", "A, F, C, E, D, B (A and F are synchronous)"),
    ("debug-int-overflow", "-147483648 (int overflow; use long or a + (b - a) / 2)"),  # a remark explains
    ("sec-timing", "timing attack (hmac.compare_digest or any constant-time compare fixes it)"),
])
def test_not_hedges(qid, final):
    assert all(r.passed for r in _final_results(grade_answer(Q[qid], f"FINAL ANSWER: {final}")))


@pytest.mark.parametrize("qid, final", [
    ("debug-binary-search", "3 (or 4)"),
    ("debug-binary-search", "3 (or 4) or 5"),
    ("sec-ssti", "SSTI or clickjacking"),  # an alternative the rubric does not list is still an alternative
    ("sec-ssti", "either SSTI or something else"),
    ("control-reverse", "desserts / dessert"),
    ("algo-shortest-path", "A, C, B, D, E or A, C, E"),
    ("logic-bat-ball", "$0.05, hmm, maybe $0.10"),
    ("conc-deadlock", "deadlock. Actually, livelock"),
    ("sec-ssti", "SSTI, could also be XSS"),  # "could" asserts a second answer
    ("debug-binary-search", "it returns index four (three would be wrong)"),  # a remark does not state it
    ("algo-heapify", "the naive answer O(n) is wrong"),
    ("sec-ssti", "XSS\nFINAL ANSWER: SSTI"),  # two final lines that differ
    ("algo-heapify", "O(n) or O(n log n)\nFINAL ANSWER: O(n)"),
])
def test_hedges(qid, final):
    grade = grade_answer(Q[qid], f"FINAL ANSWER: {final}")
    assert [r.points for r in _final_results(grade)] == [0], grade.failed


@pytest.mark.parametrize("mutate, message", [
    (lambda ex: ex.update(kind="sneaky"), "kind 'sneaky' is not one of"),
    (lambda ex: ex.update(question="nope"), "question 'nope' is not in reasoning_v2.yaml"),
    (lambda ex: ex.update(points=99), "points must be a number in 0..10"),
    (lambda ex: ex.pop("answer"), "needs exactly question, kind, answer and points"),
])
def test_bad_examples_file(tmp_path, mutate, message):
    data = yaml.safe_load(EXAMPLES_FILE.read_text(encoding="utf-8"))
    mutate(data["examples"][0])
    path = tmp_path / "examples.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(HarnessError) as e:
        load_examples(path)
    assert "example #1" in str(e.value) and message in str(e.value)
