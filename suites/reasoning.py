"""reasoning: a hand-written questionnaire graded by deterministic rubrics.

The questions live in a versioned data file (suites/data/reasoning_v1.yaml):
debugging, algorithms, security, concurrency, system design, logic puzzles
and easy control questions. Every prompt asks the model to end with a line
`FINAL ANSWER: ...`; each question carries a rubric of automatically checkable
criteria, each worth some points and tagged with a severity:

  final_exact   the final answer equals one of `answers` (normalised text),
                `numbers` (the numbers in it, in order) or matches a `patterns` regex
  final_order   the final answer lists the `order` labels in exactly that order
  requires      the answer mentions the `concepts` (each a list of synonym
                regexes; all of them, or `min` of them), not negated
  forbids       the final answer (or `where`) does not assert any `patterns`
  consistent    the working does not conclude something different from the
                final answer: the last ordering it states (order questions),
                or the last of the named `options` it asserts

Every question weighs the same: its points / max_points, averaged over the
questions and scaled to 100, is the score (also per category), banded into
grades S >= 95, A+ >= 90, A >= 80, B >= 70, C >= 60, D below.

An optional LLM judge (`--judge URL`, any OpenAI-compatible server such as
mlx_lm.server or omlx) grades each question's free-form `judge` criteria; its
score (`judge_score`) is reported separately and never mixes into `score`.

Options (--opt key=value): max_tokens (512), batch_size (8 sequences decoded
together; 1 = mlx_lm.stream_generate one prompt at a time), stop_on_repeat
(true: stop a generation stuck in a token loop), questions (path to another
questionnaire file), judge / judge_model (default_model) / judge_timeout (120 s).
Generation is greedy, through the tokenizer's chat template when it has one,
and stops at the first complete FINAL ANSWER line.
"""

import json
import math
import re
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import yaml
from tabulate import tabulate

from harness.build import read_provenance
from harness.cache import sha256_file
from harness.errors import HarnessError
from harness.stats import bootstrap_ci, wilson_ci

DATA_FILE = Path(__file__).parent / "data" / "reasoning_v1.yaml"
SEVERITIES = ("critical", "major", "minor")
# criterion type -> the fields it may have (a typo such as `pattern:` is an error, not ignored)
CRITERION_FIELDS = {
    "final_exact": {"answers", "numbers", "patterns"},
    "final_order": {"order", "synonyms", "case_sensitive"},
    "requires": {"concepts", "min", "where"},
    "forbids": {"patterns", "where"},
    "consistent": {"options", "prefix", "order", "synonyms", "case_sensitive"},
}
CRITERION_TYPES = tuple(CRITERION_FIELDS)
GRADE_BANDS = ((95.0, "S"), (90.0, "A+"), (80.0, "A"), (70.0, "B"), (60.0, "C"))
DEFAULT_MAX_TOKENS = 512
DEFAULT_BATCH_SIZE = 8  # sequences decoded together: ~3.5x the tokens/s of one on CPU, same text

# ----------------------------------------------------------------------------
# Questionnaire: loading and validation


@dataclass
class Criterion:
    name: str
    type: str
    points: float
    severity: str
    spec: dict  # the raw fields from the data file
    compiled: dict = field(default_factory=dict, repr=False)  # regexes, built once


@dataclass
class Question:
    id: str
    category: str
    prompt: str  # the full prompt sent to the model
    criteria: list
    reference: str = ""  # the correct answer with a short why (for the judge, and humans)
    judge: list = field(default_factory=list)  # free-form criteria for the LLM judge

    @property
    def max_points(self) -> float:
        return sum(c.points for c in self.criteria)


@dataclass
class Questionnaire:
    version: str
    categories: list
    questions: list
    path: Path
    sha256: str

    def by_id(self) -> dict:
        return {q.id: q for q in self.questions}

    def interleaved(self) -> list:
        """Questions round-robin over categories (in file order), so any prefix
        (--limit N) covers as many categories as possible."""
        queues = [[q for q in self.questions if q.category == c] for c in self.categories]
        out = []
        while any(queues):
            for queue in queues:
                if queue:
                    out.append(queue.pop(0))
        return out


def _bad(path, qid, problem) -> HarnessError:
    where = f"question {qid!r}" if qid is not None else "top level"
    return HarnessError(f"{path}: {where}: {problem}; fix the questionnaire file")


def _regex(path, qid, text, flags=re.IGNORECASE) -> re.Pattern:
    """Compile one synonym/pattern, bounded so 'xss' does not match inside a word
    and '42' not inside '1420' or '4.2' (a pattern may bring its own lookarounds)."""
    if not isinstance(text, str) or not text:
        raise _bad(path, qid, f"pattern {text!r} must be a non-empty string")
    head = r"(?<!\w)(?<!\d\.)" if re.match(r"[\w\\(\[]", text) else ""
    tail = r"(?!\w)(?!\.\d)" if re.search(r"[\w)\]?*+]$", text) else ""
    try:
        return re.compile(f"{head}(?:{text}){tail}", flags)
    except re.error as e:
        raise _bad(path, qid, f"invalid regex {text!r} ({e})") from None


def _regex_list(path, qid, values, what) -> list:
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, list) or not values:
        raise _bad(path, qid, f"{what} must be a non-empty list of regexes")
    return [_regex(path, qid, v) for v in values]


def _compile_criterion(path, qid, c: Criterion, question_spec: dict) -> None:
    s, comp = c.spec, c.compiled
    if c.type == "final_exact":
        if not any(k in s for k in ("answers", "numbers", "patterns")):
            raise _bad(path, qid, f"{c.name}: final_exact needs answers, numbers or patterns")
        answers = s.get("answers", [])
        if not isinstance(answers, list) or not all(isinstance(a, (str, int, float)) for a in answers):
            raise _bad(path, qid, f"{c.name}: answers must be a list of strings")
        comp["answers"] = [normalise_final(str(a)) for a in answers]
        numbers = s.get("numbers", [])
        if not isinstance(numbers, list) or not all(
            isinstance(n, (int, float)) and not isinstance(n, bool) for n in numbers
        ):
            raise _bad(path, qid, f"{c.name}: numbers must be a list of numbers")
        comp["numbers"] = [float(n) for n in numbers]
        comp["patterns"] = _regex_list(path, qid, s["patterns"], "patterns") if "patterns" in s else []
    elif c.type == "final_order":
        comp["order"], comp["items"] = _order_items(path, qid, s)
    elif c.type == "requires":
        concepts = s.get("concepts")
        if not isinstance(concepts, list) or not concepts:
            raise _bad(path, qid, f"{c.name}: requires needs a non-empty concepts list")
        parsed = []
        for concept in concepts:
            if isinstance(concept, dict):
                name, synonyms = concept.get("name"), concept.get("any")
            else:  # a bare list of synonyms, named by its first one
                name, synonyms = (concept[0] if isinstance(concept, list) and concept else None), concept
            if not isinstance(name, str):
                raise _bad(path, qid, f"{c.name}: each concept needs a name and an 'any' list")
            parsed.append((name, _regex_list(path, qid, synonyms, f"concept {name!r}")))
        need = s.get("min", len(parsed))
        if not isinstance(need, int) or not 1 <= need <= len(parsed):
            raise _bad(path, qid, f"{c.name}: min must be an integer in 1..{len(parsed)}")
        comp["concepts"], comp["min"] = parsed, need
        comp["where"] = _where(path, qid, c, s.get("where", "answer"))
    elif c.type == "forbids":
        comp["patterns"] = _regex_list(path, qid, s.get("patterns"), "forbids patterns")
        comp["where"] = _where(path, qid, c, s.get("where", "final"))
    elif c.type == "consistent":
        if "options" in s:
            options = s["options"]
            if not isinstance(options, dict) or len(options) < 2:
                raise _bad(path, qid, f"{c.name}: options must map at least 2 answer names to regex lists")
            comp["options"] = [
                (str(k), _regex_list(path, qid, v, f"option {k!r}")) for k, v in options.items()
            ]
            try:
                comp["prefix"] = re.compile(
                    rf"(?:{s.get('prefix', DEFAULT_CLAIM_PREFIX)})\W*(?:\w+\W+){{0,3}}$",
                    re.IGNORECASE,
                )
            except re.error as e:
                raise _bad(path, qid, f"{c.name}: invalid prefix regex ({e})") from None
        else:  # an ordering question: check the working's orderings against the final one
            source = s if "order" in s else next(
                (x for x in question_spec.get("criteria", [])
                 if isinstance(x, dict) and x.get("type") == "final_order"),
                None,
            )
            if source is None:
                raise _bad(path, qid, f"{c.name}: consistent needs options, or a final_order criterion to follow")
            comp["order"], comp["items"] = _order_items(path, qid, source)
    else:
        raise _bad(path, qid, f"unknown criterion type {c.type!r}; use one of {', '.join(CRITERION_TYPES)}")


def _where(path, qid, c, where):
    if where not in ("answer", "final", "working"):
        raise _bad(path, qid, f"{c.name}: where must be answer, final or working, not {where!r}")
    return where


def _order_items(path, qid, spec):
    order = spec.get("order")
    if not isinstance(order, list) or len(order) < 2 or not all(isinstance(x, str) and x for x in order):
        raise _bad(path, qid, "final_order needs an order list of at least 2 labels")
    flags = 0 if spec.get("case_sensitive") else re.IGNORECASE
    synonyms = spec.get("synonyms", {})
    if not isinstance(synonyms, dict):
        raise _bad(path, qid, "synonyms must map labels to regex lists")
    items = {}
    for label in dict.fromkeys(order):
        patterns = synonyms.get(label, [re.escape(label)])
        patterns = [patterns] if isinstance(patterns, str) else patterns
        items[label] = [_regex(path, qid, p, flags) for p in patterns]
    return list(order), items


def load_questionnaire(path: Optional[Path] = None) -> Questionnaire:
    """Read and validate a questionnaire (YAML or JSON); regexes compiled once."""
    path = Path(path or DATA_FILE)
    if not path.is_file():
        raise HarnessError(f"questionnaire {path} not found; pass an existing file with --opt questions=PATH")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is YAML too
    except yaml.YAMLError as e:
        raise HarnessError(f"{path}: not valid YAML/JSON ({str(e).splitlines()[0]}); fix the file") from None
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list) or not data["questions"]:
        raise _bad(path, None, "expected a mapping with a non-empty 'questions' list")
    categories = data.get("categories")
    if not isinstance(categories, list) or not categories or not all(isinstance(c, str) for c in categories):
        raise _bad(path, None, "expected a 'categories' list of names")
    template = data.get("prompt_template", "{question}\n\nEnd your response with a line: FINAL ANSWER: {answer_format}")
    questions, seen = [], set()
    for i, q in enumerate(data["questions"]):
        qid = q.get("id") if isinstance(q, dict) else None
        if not isinstance(qid, str) or not qid:
            raise _bad(path, f"#{i + 1}", "every question needs a string 'id'")
        if qid in seen:
            raise _bad(path, qid, "duplicate id")
        seen.add(qid)
        for key in ("category", "question", "answer_format"):
            if not isinstance(q.get(key), str) or not q[key].strip():
                raise _bad(path, qid, f"missing or empty {key!r}")
        if q["category"] not in categories:
            raise _bad(path, qid, f"category {q['category']!r} is not in the categories list {categories}")
        raw = q.get("criteria")
        if not isinstance(raw, list) or not raw:
            raise _bad(path, qid, "needs a non-empty 'criteria' list")
        criteria, names = [], set()
        for j, spec in enumerate(raw):
            if not isinstance(spec, dict):
                raise _bad(path, qid, f"criterion #{j + 1} must be a mapping")
            ctype = spec.get("type")
            if ctype not in CRITERION_TYPES:
                raise _bad(path, qid, f"criterion #{j + 1}: unknown type {ctype!r}; "
                           f"use one of {', '.join(CRITERION_TYPES)}")
            points = spec.get("points")
            if isinstance(points, bool) or not isinstance(points, (int, float)) or not points > 0:
                raise _bad(path, qid, f"criterion #{j + 1} ({ctype}): points must be a positive number")
            unknown = set(spec) - CRITERION_FIELDS[ctype] - {"type", "name", "points", "severity"}
            if unknown:
                raise _bad(path, qid, f"criterion #{j + 1} ({ctype}): unknown field(s) {', '.join(sorted(unknown))}; "
                           f"{ctype} takes {', '.join(sorted(CRITERION_FIELDS[ctype]))}")
            severity = spec.get("severity")
            if severity not in SEVERITIES:
                raise _bad(path, qid, f"criterion #{j + 1} ({ctype}): severity must be one of {', '.join(SEVERITIES)}")
            name = spec.get("name") or ctype
            if name in names:
                name = f"{name}#{j + 1}"
            names.add(name)
            c = Criterion(name, ctype, float(points), severity, spec)
            _compile_criterion(path, qid, c, q)
            criteria.append(c)
        if not any(c.type in ("final_exact", "final_order") for c in criteria):
            raise _bad(path, qid, "needs a final_exact or final_order criterion (the checkable answer)")
        judge = q.get("judge", [])
        if not isinstance(judge, list) or not all(isinstance(j, str) for j in judge):
            raise _bad(path, qid, "judge must be a list of criterion sentences")
        try:
            prompt = template.format(question=q["question"].strip(), answer_format=q["answer_format"].strip())
        except (KeyError, IndexError, ValueError) as e:
            raise _bad(path, None, f"prompt_template may only use {{question}} and {{answer_format}} ({e!r})") from None
        questions.append(Question(qid, q["category"], prompt, criteria, str(q.get("reference", "")).strip(), judge))
    used = {q.category for q in questions}
    return Questionnaire(
        version=str(data.get("version", "1")),
        categories=[c for c in categories if c in used],
        questions=questions,
        path=path,
        sha256=sha256_file(path),
    )


# ----------------------------------------------------------------------------
# Reading an answer: final line, working, normalisation

# "FINAL ANSWER: x" (any markdown around the label), or a "### Final answer" line
# with the answer on the lines below it
_LABEL = re.compile(
    r"^[^\w\n]*_*final[ \t]*answer[ \t*_]*(?:[:：=\-–—]+[ \t]*(.*)|[ \t*_#:]*)$", re.IGNORECASE | re.MULTILINE
)
_FENCE = re.compile(r"^\s*(```|~~~)")
_CODE_BLOCK = re.compile(r"(```|~~~).*?(?:\1|\Z)", re.DOTALL)
_THINK = re.compile(r"<think>.*?(?:</think>|\Z)", re.DOTALL | re.IGNORECASE)


def clean_text(text: str) -> str:
    """Unicode look-alikes to ASCII so regexes see one spelling."""
    table = {
        "\u2212": "-", "\u2010": "-", "\u2011": "-", "\u00a0": " ", "\u202f": " ", "\u2009": " ",
        "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u200b": "", "\ufeff": "",
    }
    return (text or "").translate(str.maketrans(table))


def split_final(answer: str) -> tuple:
    """(final answer or None, working): the last `FINAL ANSWER:` line wins; if its
    text is empty the answer is the following lines up to a blank line."""
    text = clean_text(answer)
    matches = list(_LABEL.finditer(text))
    if not matches:
        return None, text
    m = matches[-1]
    final, end = _strip_markdown(m.group(1) or ""), m.end()
    if not final:  # "FINAL ANSWER:" then the answer on the next lines
        lines, pos = [], m.end()
        while pos < len(text):
            nl = text.find("\n", pos + 1)
            nl = len(text) if nl < 0 else nl
            line = text[pos:nl].strip("\n")
            if not line.strip() and lines:
                break
            if line.strip() and not _FENCE.match(line):
                lines.append(line.strip())
            end = pos = nl
        final = _strip_markdown(" ".join(lines))
    working = text[: m.start()] + text[end:]
    return (final or None), working


def _strip_markdown(s: str) -> str:
    s = re.sub(r"\\boxed\{(.*)\}", r"\1", s)
    s = re.sub(r"\\(?:text|mathrm|mathcal|operatorname)\{([^}]*)\}", r"\1", s)
    s = re.sub(r"\\(?:Theta|theta)\b", "θ", s)
    s = re.sub(r"\\(?:left|right|,|;|!)", "", s)
    s = re.sub(r"\\(log|cdot|times|mathcal)\b", lambda m: {"cdot": "*", "times": "×"}.get(m.group(1), m.group(1)), s)
    s = s.replace("**", "").replace("__", "").replace("`", "").replace("$", "")
    return s.strip().strip("*_ \t")


def normalise_final(s: str) -> str:
    """Lower-case, markdown-free, single-spaced, no trailing period or quotes."""
    s = _strip_markdown(clean_text(s)).lower()
    s = re.sub(r"\s+", " ", s)
    s = re.sub(r"\s*,\s*", ", ", s)
    s = re.sub(r"([\[(])\s+", r"\1", s)
    s = re.sub(r"\s+([\])])", r"\1", s)
    return s.strip().rstrip(".").strip().strip("'\"").strip()


def truncate_after_final(text: str) -> str:
    """Cut a generation after its first complete, non-empty FINAL ANSWER line:
    the prompt asks the model to stop there (and batched and streamed
    generation then keep the same text)."""
    for m in _LABEL.finditer(text):
        if _strip_markdown(m.group(1) or "") and m.end() < len(text):
            return text[: m.end()]
    return text


_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?!\w)|(?<![\w.])-?\.\d+(?!\w)")
_NUMBER_LIST = re.compile(r"(?<![\w.])-?(?:\d+)(?:\.\d+)?(?!\w)|(?<![\w.])-?\.\d+(?!\w)")


def numbers_in(s: str, single: bool = True) -> list:
    """Numbers in order, ignoring parenthesised remarks ("3 (should be 4)").
    For a single expected number, 1,234 reads as one number and "17 x 24 = 408"
    as its value after the last '='; for lists of numbers commas separate
    ("fixed=200, sliding=100" -> [200, 100])."""
    s = re.sub(r"\([^()]*\)", " ", clean_text(s).replace("_", ""))
    if single and "=" in s:
        s = s.rsplit("=", 1)[1]
    pattern = _NUMBER if single else _NUMBER_LIST
    return [float(m.group(0).replace(",", "")) for m in pattern.finditer(s)]


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
DEFAULT_CLAIM_PREFIX = (
    r"\b(?:is|are|was|equals?|prints?|printed|outputs?|returns?|gives?|answer|result|so|"
    r"therefore|thus|hence|get|gets|got)\b|[:=]|->|=>"
)


def _clause_before(text: str, pos: int, words: int = 4) -> str:
    """The last few words before `pos` in the same clause."""
    window = text[max(0, pos - 100) : pos]
    breaks = list(_CLAUSE_BREAK.finditer(window))
    if breaks:
        window = window[breaks[-1].end() :]
    return " ".join(window.split()[-words:])


def _negated(text: str, pos: int) -> bool:
    return bool(_NEGATION.search(_clause_before(text, pos)))


def _hedged(text: str, pos: int) -> bool:
    clause = _clause_before(text, pos, words=8)
    return bool(_NEGATION.search(clause) or _HEDGE.search(clause))


_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")


def _in_question(text: str, pos: int) -> bool:
    """Whether pos is in a sentence ending in '?' ("Is it XSS?" claims nothing)."""
    end = _SENTENCE_END.search(text, pos)
    return bool(end) and end.group(0) == "?"


def _mentions(patterns, text, guard=None) -> list:
    """[(start, end)] of pattern matches that survive `guard` (a function of text, pos)."""
    out = []
    for pattern in patterns:
        for m in pattern.finditer(text):
            if guard is None or not guard(text, m.start()):
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


def _short(s: str, n: int = 60) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 1] + "…"


def _check(c: Criterion, final: Optional[str], working: str, answer: str) -> str:
    """'' when the criterion holds, else why not."""
    comp = c.compiled
    if c.type == "final_exact":
        if final is None:
            return "no FINAL ANSWER line"
        norm = normalise_final(final)
        if norm in comp["answers"]:
            return ""
        if comp["numbers"]:
            got = numbers_in(final, single=len(comp["numbers"]) == 1)
            if len(got) == len(comp["numbers"]) and all(
                math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9) for a, b in zip(got, comp["numbers"])
            ):
                return ""
        if _mentions(comp["patterns"], norm, _negated):
            return ""
        if comp["answers"]:
            expected = comp["answers"][0]
        elif comp["numbers"]:
            expected = ", ".join(f"{n:g}" for n in comp["numbers"])
        else:
            patterns = c.spec["patterns"]
            expected = "/".join(map(str, patterns)) if isinstance(patterns, list) else patterns
        return f"final answer {_short(final)!r} is not {expected!r}"
    if c.type == "final_order":
        if final is None:
            return "no FINAL ANSWER line"
        labels, runs = _final_order(final, comp["items"])
        n = len(comp["order"])
        full = [run for run in runs if len(run) >= n]
        # the labels in order, or every complete run it states ("A, F, ... (A is sync)")
        if labels == comp["order"] or (full and all(run == comp["order"] for run in full)):
            return ""
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
        hits = _mentions(comp["patterns"], text, _negated)
        if not hits:
            return ""
        start, end = min(hits)
        return f"{comp['where']} asserts forbidden {text[start:end]!r}"
    if c.type == "consistent":
        body = _CODE_BLOCK.sub(" ", working)  # quoted code is not a claim
        if "options" in comp:
            return _check_options(comp, final, body)
        return _check_order(comp, final, body)
    raise AssertionError(c.type)


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
    said = _short(body[pos:], 40)
    return f"working concludes {option!r} ({said!r}) but the final answer is {final_option or _short(final)!r}"


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
    answer = _THINK.sub(" ", clean_text(answer or "")) if "</think>" in (answer or "") else clean_text(answer or "")
    final, working = split_final(answer)
    results = []
    for c in question.criteria:
        detail = _check(c, final, working, answer)
        results.append(CriterionResult(c.name, c.type, c.severity, 0.0 if detail else c.points, c.points, detail))
    return Grade(question.id, question.category, final, results)


def grade_band(score: float) -> str:
    """S >= 95, A+ >= 90, A >= 80, B >= 70, C >= 60, else D (score out of 100)."""
    for threshold, band in GRADE_BANDS:
        if score >= threshold:
            return band
    return "D"


# ----------------------------------------------------------------------------
# Scores and tables


def summarize_records(records: list, categories: Optional[list] = None, model: str = "model") -> dict:
    """Score /100 (equal weight per question), grade, accuracy (fully correct
    questions), per-category scores, failures by severity, the judge's score
    (separate), and the `table` / `issues_table` the CLI prints."""
    if not records:
        return {"score": 0.0, "grade": grade_band(0.0), "n": 0}
    fractions = [r["points"] / r["max_points"] if r["max_points"] else 0.0 for r in records]
    score = round(100 * sum(fractions) / len(fractions), 2)
    k = sum(bool(r.get("correct")) for r in records)
    out = {
        "score": score,
        "score_ci95": [round(100 * x, 2) for x in bootstrap_ci(fractions)],
        "grade": grade_band(score),
        "accuracy": k / len(records),
        "accuracy_ci95": list(wilson_ci(k, len(records))),
        "n": len(records),
    }
    cats = categories or list(dict.fromkeys(r["category"] for r in records))
    for cat in cats:
        fr = [f for f, r in zip(fractions, records) if r["category"] == cat]
        if fr:
            out[f"score_{cat}"] = round(100 * sum(fr) / len(fr), 2)
    for severity in SEVERITIES:
        out[f"failed_{severity}"] = sum(f["severity"] == severity for r in records for f in r.get("failed", []))
    judged = [r for r in records if r.get("judge_points") is not None and r.get("judge_max_points")]
    if any("judge_max_points" in r for r in records):
        out["judge_errors"] = sum("judge_error" in r for r in records)
    if judged:
        jf = [r["judge_points"] / r["judge_max_points"] for r in judged]
        out["judge_score"] = round(100 * sum(jf) / len(jf), 2)
        out["judge_score_ci95"] = [round(100 * x, 2) for x in bootstrap_ci(jf)]
        out["judge_grade"] = grade_band(out["judge_score"])
        out["judge_n"] = len(judged)
    out["table"] = score_table([{"model": model, "score": score}])
    if judged:
        judge_table = score_table([{"model": model, "score": out["judge_score"]}])
        out["table"] += "\n\nLLM judge (reported separately):\n" + judge_table
    out["issues_table"] = issues_table(records)
    return out


def score_table(rows) -> str:
    """Markdown table `Model | Score | Grade` from (model, score) pairs or dicts
    with "model", "score" (and optionally "grade")."""
    body = []
    for row in rows:
        if isinstance(row, dict):
            model, score, grade = row["model"], row["score"], row.get("grade")
        else:
            model, score, grade = row[0], row[1], (row[2] if len(row) > 2 else None)
        body.append([model, f"{score:.1f}/100", grade or grade_band(score)])
    return tabulate(body, headers=["Model", "Score", "Grade"], tablefmt="github", disable_numparse=True)


def category_table(rows, categories: list) -> str:
    """Markdown table `Model | <category>... | Score` from dicts with "model" and
    a summary's "score_<category>" keys."""
    body = []
    for row in rows:
        cells = [row.get(f"score_{c}") for c in categories]
        body.append([row["model"], *("-" if v is None else f"{v:.0f}" for v in cells), f"{row['score']:.1f}"])
    headers = ["Model", *(c.replace("_", " ") for c in categories), "Score"]
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)


def issues_table(records: list) -> str:
    """Markdown table of the failed criteria, one row per question that lost
    points: Question | Category | Points | Critical | Major | Minor, each
    severity cell listing "criterion (why)"."""
    rows = []
    for r in records:
        if not r.get("failed"):
            continue
        cells = {s: [] for s in SEVERITIES}
        for f in r["failed"]:
            cells.setdefault(f["severity"], []).append(f"{f['criterion']} ({_short(f['detail'], 48)})")
        rows.append([
            r["id"], r["category"], f"{r['points']:g}/{r['max_points']:g}",
            *("; ".join(cells[s]).replace("|", "\\|") or "-" for s in SEVERITIES),
        ])
    if not rows:
        return "No failed criteria."
    headers = ["Question", "Category", "Points", *(s.capitalize() for s in SEVERITIES)]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


# ----------------------------------------------------------------------------
# LLM judge (optional, reported separately)

JUDGE_SYSTEM = (
    "You grade answers to reasoning questions. For each numbered criterion decide "
    "strictly whether the answer meets it. Reply with JSON only, of the form "
    '{"met": [true, false, ...]} with exactly one boolean per criterion, in order.'
)


@dataclass
class JudgeClient:
    """Any OpenAI-compatible chat endpoint (mlx_lm.server, omlx, vLLM, ...)."""

    url: str
    model: str = "default_model"  # mlx_lm.server's name for the model it was started with
    timeout: float = 120.0

    def _base(self) -> str:
        base = self.url.rstrip("/")
        for suffix in ("/chat/completions", "/v1"):
            if base.endswith(suffix):
                base = base[: -len(suffix)]
        return base

    def _fail(self, err) -> HarnessError:
        return HarnessError(
            f"judge endpoint {self.url} is unreachable ({err}); start an OpenAI-compatible "
            "server (e.g. `mlx_lm.server --model MODEL --port 8080`, then --judge "
            "http://127.0.0.1:8080) or drop --judge"
        )

    def check(self) -> None:
        """Fail early, before any generation, if nothing listens at the URL."""
        try:
            with urllib.request.urlopen(self._base() + "/v1/models", timeout=min(self.timeout, 10)):
                pass
        except urllib.error.HTTPError:
            pass  # something answered: the chat endpoint may still work
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise self._fail(getattr(e, "reason", e)) from None

    def complete(self, messages: list, max_tokens: int = 256) -> str:
        body = json.dumps(
            {"model": self.model, "messages": messages, "temperature": 0.0, "max_tokens": max_tokens}
        ).encode()
        request = urllib.request.Request(
            self._base() + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                reply = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            raise HarnessError(
                f"judge endpoint {self.url} returned HTTP {e.code}; check the URL and "
                "--opt judge_model=NAME (the model the server serves)"
            ) from None
        except (urllib.error.URLError, OSError) as e:
            raise self._fail(getattr(e, "reason", e)) from None
        except ValueError:
            raise HarnessError(f"judge endpoint {self.url} did not return JSON; is it OpenAI-compatible?") from None
        try:
            return reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise HarnessError(
                f"judge endpoint {self.url} returned no choices[0].message; is it OpenAI-compatible?"
            ) from None

    def grade(self, question: Question, answer: str) -> dict:
        """{"judge_points", "judge_max_points", "judge_failed"} (+ "judge_error")."""
        rubric = question.judge or ["The reasoning is correct and supports the final answer."]
        out = {"judge_points": 0.0, "judge_max_points": float(len(rubric)), "judge_failed": list(rubric)}
        if not (answer or "").strip():
            return out
        criteria = "\n".join(f"{i + 1}. {text}" for i, text in enumerate(rubric))
        user = (
            f"Question:\n{question.prompt}\n\nReference answer:\n{question.reference or '(none)'}\n\n"
            f"Answer to grade:\n{answer}\n\nCriteria:\n{criteria}"
        )
        reply = self.complete([{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}])
        met = parse_judge_reply(reply, len(rubric))
        if met is None:
            return {**out, "judge_points": None, "judge_error": f"unparseable judge reply: {_short(reply, 120)!r}"}
        return {
            "judge_points": float(sum(met)),
            "judge_max_points": float(len(rubric)),
            "judge_failed": [text for text, ok in zip(rubric, met) if not ok],
        }


def parse_judge_reply(reply: str, n: int) -> Optional[list]:
    """The judge's list of n booleans, or None if the reply does not hold one."""
    reply = _THINK.sub(" ", reply or "")
    for candidate in reversed(re.findall(r"\{.*?\}", reply, re.DOTALL)):
        try:
            met = json.loads(candidate).get("met")
        except (ValueError, AttributeError):
            continue
        if isinstance(met, list) and len(met) == n:
            values = [str(v).strip().lower() for v in met]
            if all(v in ("true", "false", "1", "0", "yes", "no", "1.0", "0.0") for v in values):
                return [v in ("true", "1", "yes", "1.0") for v in values]
    return None


# ----------------------------------------------------------------------------
# Generation


def prompt_tokens(tokenizer, prompt: str) -> list:
    """Token ids for one user turn: the chat template when there is one."""
    if getattr(tokenizer, "has_chat_template", False):
        return list(tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True))
    return list(tokenizer.encode(prompt))


def looping(tokens: list, min_copies: int = 4, min_span: int = 64, max_period: int = 32) -> bool:
    """True when the tail is one chunk of <= max_period tokens repeated at least
    min_copies times over >= min_span tokens: a greedy decoder stuck in a loop
    (it will not reach a final answer, so stop paying for tokens)."""
    n = len(tokens)
    for period in range(1, max_period + 1):
        copies = 1
        tail = tokens[n - period :]
        while n >= (copies + 1) * period and tokens[n - (copies + 1) * period : n - copies * period] == tail:
            copies += 1
        if copies >= min_copies and copies * period >= min_span:
            return True
    return False


def _stop_reason(tokenizer, tokens: list, stop_on_repeat: bool) -> Optional[str]:
    """Why to stop after the latest token: a complete FINAL ANSWER line or a loop."""
    if tokenizer.decode(tokens[-1:]).count("\n"):
        text = tokenizer.decode(tokens)
        if truncate_after_final(text) != text:
            return "final_answer"
    if stop_on_repeat and len(tokens) % 8 == 0 and looping(tokens):
        return "repetition"
    return None


def generate_answers(
    model, tokenizer, prompts: list, max_tokens: int, batch_size: int = 1, stop_on_repeat: bool = True
) -> Iterator[tuple]:
    """Greedy answers, (index, text, n_tokens, stop) per prompt as each finishes.

    stop is "eos", "max_tokens", "final_answer" (the text is cut after the first
    complete FINAL ANSWER line, as the prompt asks the model to stop there) or
    "repetition" (see `looping`). batch_size 1 streams each prompt with
    mlx_lm.stream_generate (what mlx_lm.generate runs); larger sizes keep that
    many sequences in flight with mlx-lm's continuous BatchGenerator. Both
    apply the same stop rules to the token ids and decode them the same way.
    """
    from mlx_lm import stream_generate
    from mlx_lm.generate import BatchGenerator

    ids = [prompt_tokens(tokenizer, p) for p in prompts]

    def finish(i, tokens, stop):
        return i, truncate_after_final(tokenizer.decode(tokens)), len(tokens), stop

    if batch_size <= 1:
        for i, prompt in enumerate(ids):
            tokens, stop = [], "max_tokens"
            for response in stream_generate(model, tokenizer, prompt, max_tokens=max_tokens):
                if response.finish_reason == "stop":  # eos: not part of the answer
                    stop = "eos"
                    break
                tokens.append(response.token)
                reason = _stop_reason(tokenizer, tokens, stop_on_repeat)
                if reason:
                    stop = reason
                    break
            yield finish(i, tokens, stop)
        return

    gen = BatchGenerator(
        model,
        stop_tokens=[[t] for t in tokenizer.eos_token_ids],
        completion_batch_size=batch_size,
        prefill_batch_size=batch_size,
    )
    try:
        uids = gen.insert(ids, [max_tokens] * len(ids))
        index = {uid: i for i, uid in enumerate(uids)}
        tokens = {uid: [] for uid in uids}
        while responses := gen.next_generated():
            for r in responses:
                if r.uid not in tokens:
                    continue  # already stopped by us
                if r.finish_reason == "stop":
                    yield finish(index[r.uid], tokens.pop(r.uid), "eos")
                    continue
                tokens[r.uid].append(r.token)
                reason = _stop_reason(tokenizer, tokens[r.uid], stop_on_repeat)
                if reason is None and r.finish_reason is not None:
                    reason = "max_tokens"
                if reason:
                    if r.finish_reason is None:
                        gen.remove([r.uid])
                    yield finish(index[r.uid], tokens.pop(r.uid), reason)
            if not tokens:
                break
    finally:
        gen.close()


# ----------------------------------------------------------------------------
# The suite


def _int_option(options: dict, key: str, default: int, minimum: int = 1) -> int:
    value = options.get(key, default)
    try:
        value = int(value)
    except (TypeError, ValueError):
        value = None
    if value is None or value < minimum:
        raise HarnessError(f"--opt {key}={options.get(key)!r} must be an integer >= {minimum}")
    return value


class ReasoningSuite:
    name = "reasoning"
    description = "hand-written reasoning questionnaire (debugging, algorithms, security, ...), rubric-graded /100"
    version = "1"
    needs_reference = False
    exec_mode = None

    def _questionnaire(self, ctx) -> Questionnaire:
        return load_questionnaire(ctx.options.get("questions"))

    def items(self, ctx) -> list:
        questions = self._questionnaire(ctx).interleaved()
        if ctx.limit is not None:
            questions = questions[: ctx.limit]
        return [{"id": q.id, "category": q.category, "prompt": q.prompt} for q in questions]

    def run(self, ctx, items: list) -> Iterator[dict]:
        options = ctx.options or {}
        max_tokens = _int_option(options, "max_tokens", DEFAULT_MAX_TOKENS)
        batch_size = _int_option(options, "batch_size", DEFAULT_BATCH_SIZE)
        stop_on_repeat = str(options.get("stop_on_repeat", True)).lower() not in ("false", "0", "no", "off")
        judge = None
        if options.get("judge"):
            judge = JudgeClient(
                str(options["judge"]),
                model=str(options.get("judge_model", "default_model")),
                timeout=_int_option(options, "judge_timeout", 120),
            )
            judge.check()
        by_id = self._questionnaire(ctx).by_id()
        unknown = [item["id"] for item in items if item["id"] not in by_id]
        if unknown:
            raise HarnessError(
                f"reasoning: question ids {unknown} are not in the questionnaire (it changed since "
                "this run started); start a fresh results file"
            )
        questions = [by_id[item["id"]] for item in items]
        from tqdm import tqdm

        bar = tqdm(total=len(questions), desc="reasoning", file=sys.stderr, disable=not ctx.progress)
        answers = generate_answers(
            ctx.model, ctx.tokenizer, [q.prompt for q in questions], max_tokens, batch_size, stop_on_repeat
        )
        for i, text, n_tokens, stop in answers:
            q = questions[i]
            grade = grade_answer(q, text)
            record = {
                "id": q.id,
                "category": q.category,
                "prompt": q.prompt,
                "answer": text,
                "final": grade.final,
                "points": grade.points,
                "max_points": grade.max_points,
                "score": round(100 * grade.points / grade.max_points, 2),
                "correct": grade.correct,
                "failed": grade.failed,
                "criteria": [
                    {"criterion": r.criterion, "type": r.type, "severity": r.severity,
                     "points": r.points, "max_points": r.max_points}
                    for r in grade.results
                ],
                "generated_tokens": n_tokens,
                "stop": stop,
            }
            if judge is not None:
                record.update(judge.grade(q, text))
            bar.update(1)
            yield record
        bar.close()

    def summarize(self, ctx, records: list) -> dict:
        prov = read_provenance(ctx.artifact) if ctx.artifact else {}
        model = " ".join(str(prov[k]) for k in ("model", "recipe") if prov.get(k)) or Path(ctx.artifact).name
        return summarize_records(records, self._questionnaire(ctx).categories, model=model)

    def data_info(self, ctx) -> dict:
        qn = self._questionnaire(ctx)
        return {"source": str(qn.path), "sha256": qn.sha256, "version": qn.version, "questions": len(qn.questions)}
