"""reasoning: the rubric grader — one answer against its question's criteria,
deterministically (no model calls).

Every criterion either holds (full points) or not (zero), with a one-line
reason. Mentions count only when they are asserted: "not XSS" or "rather than a
race" do not count; in the working, hedged or questioning sentences ("one might
think 10 cents", "Is it XSS?") do not count as conclusions either.

A final answer must assert one answer. The final criterion (final_exact /
final_order) earns nothing when the final line hedges: it also asserts one of
the question's `wrong` answers ("SSTI or XSS"), it offers an alternative that is
no form of the right answer ("3 (or 4)", "timing attack? no wait, length
extension"), or an earlier FINAL ANSWER line said something else. Right answers
count inside a longer line ("It prints [1, 2] [1, 2]") and in any of the
synonyms the data file lists ("Linear time, i.e. big-O of n").
"""

import math
import re
from dataclasses import dataclass
from typing import Optional

from harness.suites.reasoning_answer import (
    CODE_BLOCK,
    THINK_BLOCK,
    clean_text,
    earlier_finals,
    normalise_final,
    numbers_in,
    short,
    split_final,
)
from harness.suites.reasoning_questionnaire import Criterion, Question

# Negations make a mention not count ("not XSS", "rather than a race");
# hedges additionally stop it counting as a conclusion ("one might think 10 cents").
_NEGATION = re.compile(
    r"\b(?:not|no|never|nor|neither|without|unlike|versus|vs|instead of|rather than|other than|except)\b|n't\b",
    re.IGNORECASE,
)
_HEDGE = re.compile(
    r"\b(?:might|may|could|would|should|if|whether|seems?|appears?|looks? like|at first|naive\w*|"
    r"mistak\w*|confus\w*|wrong\w*|incorrect\w*|fix\w*|tempting|expect\w*|intend\w*|assum\w*|"
    r"suppos\w*|mathematically|many|some)\b",
    re.IGNORECASE,
)
_CLAUSE_BREAK = re.compile(
    r"[.;:!?\n,]|\b(?:but|however|whereas|so|because|since|therefore|thus|hence|and|which|while|then)\b",
    re.IGNORECASE,
)


def _clause_before(text: str, pos: int, words: int = 4) -> str:
    """The last few words before `pos` in the same clause."""
    window = text[max(0, pos - 100) : pos]
    breaks = list(_CLAUSE_BREAK.finditer(window))
    if breaks:
        window = window[breaks[-1].end() :]
    return " ".join(window.split()[-words:])


def _negated(text: str, pos: int, end: Optional[int] = None) -> bool:
    return bool(_NEGATION.search(_clause_before(text, pos)))


# A final line may mention a wrong answer to dismiss it: "the naive O(n log n)",
# "O(n log n) is only an upper bound" (but "could also be XSS" asserts it).
_DISMISSIVE = re.compile(
    r"\b(?:naive\w*|mistaken\w*|wrong\w*|incorrect\w*|tempting|intuitive|loose|common\s+(?:mistake|misconception))\b",
    re.IGNORECASE,
)
_DISMISSED_AFTER = re.compile(
    r"\W*(?:\w+\W+){0,2}?(?:is|are|was|would\s+be)\s+(?:not\b|wrong|incorrect|only\s+an?\b|an?\s+(?:loose|naive|"
    r"common|wrong|upper)\b|too\s+loose)",
    re.IGNORECASE,
)


def _dismissed(text: str, pos: int, end: int) -> bool:
    """Negated, or called naive/wrong/only an upper bound in the same clause."""
    return (_negated(text, pos) or bool(_DISMISSIVE.search(_clause_before(text, pos)))
            or bool(_DISMISSED_AFTER.match(text, end, end + 60)))


def _hedged(text: str, pos: int) -> bool:
    clause = _clause_before(text, pos, words=8)
    return bool(_NEGATION.search(clause) or _HEDGE.search(clause))


_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")


def _in_question(text: str, pos: int) -> bool:
    """Whether pos is in a sentence ending in '?' ("Is it XSS?" claims nothing)."""
    end = _SENTENCE_END.search(text, pos)
    return bool(end) and end.group(0) == "?"


def _mentions(patterns, text, guard=None) -> list:
    """[(start, end)] of pattern matches that survive `guard` (a function of text, start, end)."""
    out = []
    for pattern in patterns:
        for m in pattern.finditer(text):
            if guard is None or not guard(text, m.start(), m.end()):
                out.append((m.start(), m.end()))
    return out


# Separators allowed between the labels of one stated ordering.
_ORDER_SEP = re.compile(
    r"^(?:[\s,;>|*•·`'\"\-–—→⇒=/]|\d+[.)]|\b(?:and|then|finally|next|after that)\b)*$",
    re.IGNORECASE,
)


def _order_runs(text: str, items: dict) -> tuple:
    """(label mentions [(start, end, label)], maximal runs of labels separated only
    by separators [(start, [labels])])."""
    found = []
    for label, patterns in items.items():
        for start, end in _mentions(patterns, text):
            found.append((start, end, label))
    found.sort(key=lambda x: (x[0], -x[1]))
    mentions, last_end = [], -1
    for start, end, label in found:  # drop overlaps, keep the earlier/longer
        if start >= last_end:
            mentions.append((start, end, label))
            last_end = end
    runs = []
    for i, (start, end, label) in enumerate(mentions):
        if runs and _ORDER_SEP.match(text[mentions[i - 1][1] : start]):
            runs[-1][1].append(label)
        else:
            runs.append((start, [label]))
    return mentions, runs


def _final_order(final: str, items: dict) -> tuple:
    """(all labels of the final answer in order, its runs of labels)."""
    mentions, runs = _order_runs(final, items)
    return [m[2] for m in mentions], [r[1] for r in runs]


# ----------------------------------------------------------------------------
# Grading


@dataclass
class CriterionResult:
    criterion: str
    type: str
    severity: str
    points: float  # earned
    max_points: float
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.points >= self.max_points


@dataclass
class Grade:
    question_id: str
    category: str
    final: Optional[str]
    results: list

    @property
    def points(self) -> float:
        return sum(r.points for r in self.results)

    @property
    def max_points(self) -> float:
        return sum(r.max_points for r in self.results)

    @property
    def correct(self) -> bool:
        return self.points >= self.max_points

    @property
    def failed(self) -> list:
        return [
            {"criterion": r.criterion, "severity": r.severity, "detail": r.detail, "points": r.max_points - r.points}
            for r in self.results
            if not r.passed
        ]


def _check(c: Criterion, final: Optional[str], working: str, answer: str, earlier: list = ()) -> str:
    """'' when the criterion holds, else why not (`earlier`: FINAL ANSWER lines before the last)."""
    comp = c.compiled
    if c.type == "final_exact":
        if final is None:
            return "no FINAL ANSWER line"
        if not _states_answer(comp, final):
            return f"final answer {short(final)!r} is not {_expected(c)!r}"
        return _hedge(comp, final, lambda part: _states_answer(comp, part), earlier)
    if c.type == "final_order":
        if final is None:
            return "no FINAL ANSWER line"
        if _states_order(comp, final):
            return _hedge(comp, final, lambda part: not _final_order(part, comp["items"])[0]
                          or _states_order(comp, part), earlier, _ALTERNATIVE_ORDER)
        labels, _ = _final_order(final, comp["items"])
        return f"final order {', '.join(labels) or '(none)'} is not {', '.join(comp['order'])}"
    if c.type == "requires":
        text = {"answer": answer, "final": final or "", "working": working}[comp["where"]]
        missing = [name for name, pats in comp["concepts"] if not _mentions(pats, text, _negated)]
        found = len(comp["concepts"]) - len(missing)
        if found >= comp["min"]:
            return ""
        if comp["min"] < len(comp["concepts"]):
            return f"mentions {found} of {comp['min']} needed concepts (missing: {', '.join(missing)})"
        return f"missing concept: {', '.join(missing)}"
    # forbids / consistent only mean something once there is an answer to judge
    if final is None:
        return "no FINAL ANSWER line"
    if c.type == "forbids":
        text = {"answer": answer, "final": final, "working": working}[comp["where"]]
        hits = _mentions(comp["patterns"], text, _dismissed)
        if not hits:
            return ""
        start, end = min(hits)
        return f"{comp['where']} asserts forbidden {text[start:end]!r}"
    if c.type == "consistent":
        body = CODE_BLOCK.sub(" ", working)  # quoted code is not a claim
        if "options" in comp:
            return _check_options(comp, final, body)
        return _check_order(comp, final, body)
    raise AssertionError(c.type)


# What separates alternatives inside one final answer line: "X or Y", "X / Y",
# "X? no wait, Y", "either X or Y" ("or so" is an approximation, not an alternative).
_ALTERNATIVE = re.compile(
    r"\?|\band/or\b|\bor\b(?!\s+so\b)|\beither\b|\balternatively\b|\bactually\b|\bno,?\s+wait\b|\bwait\b|"
    r"\bhmm+\b|\s/\s",
    re.IGNORECASE,
)
# in an ordering "A / F / C" lists, it does not offer alternatives
_ALTERNATIVE_ORDER = re.compile(_ALTERNATIVE.pattern.replace(r"|\s/\s", ""), re.IGNORECASE)
# words that say nothing by themselves ("SSTI? Probably.")
_FILLER = re.compile(
    r"\b(?:maybe|perhaps|possibly|probably|likely|i\s+think|i\s+guess|i'm\s+not\s+sure|not\s+sure|well|so|"
    r"it\s+is|it's|the\s+answer\s+is|answer|final)\b|[^\w]",
    re.IGNORECASE,
)


def _states_answer(comp, text: str) -> bool:
    """Whether `text` states the criterion's answer: a normalised `answers` entry
    (alone or inside the line), the expected `numbers`, or a `patterns` regex."""
    norm = normalise_final(text)
    if norm in comp["answers"]:
        return True
    # the answer is what the line says outside its remarks: "four (three would be
    # wrong)" does not state three (a remark is a parenthesis after a space, so
    # O(n) stays whole)
    said = norm
    while (unremarked := re.sub(r"(^|\s)\([^()]*\)", r"\1", said)) != said:
        said = unremarked
    if not re.search(r"\w", said):
        said = norm
    if _mentions(comp["answer_res"], said, _dismissed):
        return True
    expected = comp["numbers"]
    if expected:
        got = numbers_in(text, single=len(expected) == 1)
        if len(got) == len(expected) and all(
            math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9) for a, b in zip(got, expected)
        ):
            return True
    return bool(_mentions(comp["patterns"], said, _dismissed))


def _states_order(comp, text: str) -> bool:
    """The labels in `text` are the order, or every complete run it states is
    ("A, F, C, E, D, B (A and F are synchronous)")."""
    labels, runs = _final_order(text, comp["items"])
    full = [run for run in runs if len(run) >= len(comp["order"])]
    return labels == comp["order"] or bool(full and all(run == comp["order"] for run in full))


def _hedge(comp, final: str, right, earlier=(), separators=None) -> str:
    """'' when the final answer asserts only the right answer, else why it hedges:
    it also asserts a `wrong` answer ("SSTI or XSS"), it offers an alternative
    that `right(part)` does not accept ("3 (or 4)", "timing attack? no wait, ..."),
    or an earlier FINAL ANSWER line says something else."""
    separators = separators or _ALTERNATIVE
    for text in earlier:
        if (_FILLER.sub("", text) and not right(text)) or _hedge(comp, text, right, (), separators):
            return f"final answer hedges: an earlier FINAL ANSWER line says {short(text, 40)!r}"
    for name, patterns in comp.get("wrong", ()):
        hits = _mentions(patterns, final, _dismissed)
        if hits:
            start, end = min(hits)
            return f"final answer hedges: it also asserts {name!r} ({final[start:end]!r})"
    pos, before = 0, None
    for sep in [*separators.finditer(final), None]:
        part = final[pos : sep.start() if sep else len(final)]
        if before is not None and final.count("(", 0, before.start()) > final.count(")", 0, before.start()):
            # inside a remark in parentheses: "(or 4)" offers an alternative, while
            # "(use long or a + (b - a) / 2)" explains; only a bare value counts there
            part = part.split(")")[0]
            if before.group(0).strip() == "/" or len(part.split()) > 3:
                part = ""
        said = _FILLER.sub("", part)
        # "not XSS or SQLi": an alternative listed right after a negation is negated too
        negated_list = (before is not None and before.group(0).strip().lower() in ("or", "/", "and/or")
                        and _NEGATION.search(_clause_before(final, before.start(), words=6)))
        if said and not negated_list and not right(part):
            return f"final answer hedges: {short(part.strip(), 40)!r} is offered as well"
        if sep is None:
            break
        pos, before = sep.end(), sep
    return ""


def _expected(c: Criterion) -> str:
    comp = c.compiled
    if comp["answers"]:
        return comp["answers"][0]
    if comp["numbers"]:
        return ", ".join(str(int(n)) if n.is_integer() else f"{n:g}" for n in comp["numbers"])
    patterns = c.spec["patterns"]
    return "/".join(map(str, patterns)) if isinstance(patterns, list) else patterns


def _option_of(comp, text, pos_filter) -> list:
    """[(pos, option)] for option mentions passing pos_filter(text, start)."""
    out = []
    for name, patterns in comp["options"]:
        for start, end in _mentions(patterns, text):
            if pos_filter(text, start):
                out.append((start, name))
    return sorted(out)


def _check_options(comp, final, body) -> str:
    in_final = _option_of(comp, final, lambda t, p: not _negated(t, p))
    final_option = in_final[0][1] if in_final else None

    def is_claim(text, pos):
        before = text[max(0, pos - 60) : pos]
        return (
            not _hedged(text, pos)
            and not _in_question(text, pos)
            and comp["prefix"].search(before) is not None
        )

    claims = _option_of(comp, body, is_claim)
    if not claims or claims[-1][1] == final_option:
        return ""
    pos, option = claims[-1]
    said = short(body[pos:], 40)
    return f"working concludes {option!r} ({said!r}) but the final answer is {final_option or short(final)!r}"


def _check_order(comp, final, body) -> str:
    labels, runs = _final_order(final, comp["items"])
    longest = max(runs, key=len, default=[])
    final_seq = comp["order"] if comp["order"] in (labels, longest) else (longest or labels)
    n = len(comp["order"])
    _, runs = _order_runs(body, comp["items"])
    claims = [
        (start, run)
        for start, run in runs
        if len(run) == n and len(set(run)) == len(set(comp["order"]))
        and not _hedged(body, start) and not _in_question(body, start)
    ]
    if not claims or claims[-1][1] == final_seq:
        return ""
    return f"working states order {', '.join(claims[-1][1])} but the final answer is {', '.join(final_seq) or '(none)'}"


def grade_answer(question: Question, answer: str) -> Grade:
    """Grade one answer against its question's rubric (deterministic)."""
    answer = THINK_BLOCK.sub(" ", clean_text(answer or "")) if "</think>" in (answer or "") else clean_text(answer or "")
    final, working = split_final(answer)
    earlier = earlier_finals(answer)
    results = []
    for c in question.criteria:
        detail = _check(c, final, working, answer, earlier)
        results.append(CriterionResult(c.name, c.type, c.severity, 0.0 if detail else c.points, c.points, detail))
    return Grade(question.id, question.category, final, results)

