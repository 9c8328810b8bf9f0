"""reasoning: the questionnaire — loading and validating the data file.

The questions live in a versioned data file (suites/data/reasoning_v2.yaml).
Every prompt asks the model to end with a line `FINAL ANSWER: ...`; each
question carries a rubric of automatically checkable criteria, each worth some
points and tagged with a severity (critical | major | minor):

  final_exact   the final answer states one of `answers` (normalised text),
                `numbers` (the numbers in it, in order) or a `patterns` regex, and
                nothing else: a final line that also asserts one of the `wrong`
                answers, or offers an alternative ("X or Y", "X? no wait, Y")
                that is not a correct form, earns nothing (a hedge)
  final_order   the final answer lists the `order` labels in exactly that order
  requires      the answer mentions the `concepts` (each a list of synonym
                regexes; all of them, or `min` of them), not negated
  forbids       the final answer (or `where`) does not assert any `patterns`
  consistent    the working does not conclude something different from the
                final answer: the last ordering it states (order questions),
                or the last of the named `options` it asserts

Loading checks every field (a typo such as `pattern:` is an error naming the
question, not ignored) and compiles each regex once; grading is in
reasoning_rubric.py.
"""

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from harness.cache import sha256_file
from harness.errors import HarnessError
from harness.suites.reasoning_answer import normalise_final

DATA_FILE = Path(__file__).parent / "data" / "reasoning_v2.yaml"
EXAMPLES_FILE = Path(__file__).parent / "data" / "reasoning_v2_examples.yaml"
# adversarial example kinds (see the examples file)
EXAMPLE_KINDS = ("hedged", "stuffed", "rephrased_right", "rephrased_wrong")
SEVERITIES = ("critical", "major", "minor")
# criterion type -> the fields it may have (a typo such as `pattern:` is an error, not ignored)
CRITERION_FIELDS = {
    "final_exact": {"answers", "numbers", "patterns", "wrong"},
    "final_order": {"order", "synonyms", "case_sensitive"},
    "requires": {"concepts", "min", "where"},
    "forbids": {"patterns", "where"},
    "consistent": {"options", "prefix", "order", "synonyms", "case_sensitive"},
}
CRITERION_TYPES = tuple(CRITERION_FIELDS)
# what a `consistent` option mention must follow to count as a conclusion ("so it prints X")
DEFAULT_CLAIM_PREFIX = (
    r"\b(?:is|are|was|equals?|prints?|printed|outputs?|returns?|gives?|answer|result|so|"
    r"therefore|thus|hence|get|gets|got)\b|[:=]|->|=>"
)


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
        # an answer also counts inside a longer final line ("It prints [1, 2] [1, 2]"),
        # but not inside a longer word or path ("/srv/app/uploads/etc/passwd")
        comp["answer_res"] = [re.compile(rf"(?<![\w/.-]){re.escape(a)}(?![\w/-])") for a in comp["answers"] if a]
        numbers = s.get("numbers", [])
        if not isinstance(numbers, list) or not all(
            isinstance(n, (int, float)) and not isinstance(n, bool) for n in numbers
        ):
            raise _bad(path, qid, f"{c.name}: numbers must be a list of numbers")
        comp["numbers"] = [float(n) for n in numbers]
        comp["patterns"] = _regex_list(path, qid, s["patterns"], "patterns") if "patterns" in s else []
        wrong = s.get("wrong", {})
        if isinstance(wrong, list):  # a bare list: one wrong answer per regex
            wrong = {str(w): w for w in wrong}
        if not isinstance(wrong, dict):
            raise _bad(path, qid, f"{c.name}: wrong must map wrong-answer names to regex lists")
        comp["wrong"] = [(str(k), _regex_list(path, qid, v, f"wrong answer {k!r}")) for k, v in wrong.items()]
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


@dataclass
class Example:
    """A graded example: an answer written to game (or trip) the rubric, and the points it must get."""

    question: str  # question id
    kind: str  # one of EXAMPLE_KINDS
    answer: str
    points: float


def load_examples(path: Optional[Path] = None, questionnaire: Optional[Questionnaire] = None) -> list:
    """Read and validate a file of graded examples for `questionnaire` (default: the shipped pair)."""
    path = Path(path or EXAMPLES_FILE)
    qn = questionnaire or load_questionnaire()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise HarnessError(f"examples file {path} is unreadable ({str(e).splitlines()[0]}); fix the file") from None
    if not isinstance(data, dict) or not isinstance(data.get("examples"), list):
        raise HarnessError(f"{path}: expected a mapping with an 'examples' list; fix the examples file")
    if data.get("questionnaire") not in (None, qn.path.name):
        raise HarnessError(f"{path}: examples are for {data['questionnaire']}, not {qn.path.name}; "
                           "pass the matching questionnaire")
    ids, out = qn.by_id(), []
    for i, ex in enumerate(data["examples"]):
        where = f"{path}: example #{i + 1}"
        if not isinstance(ex, dict) or set(ex) != {"question", "kind", "answer", "points"}:
            raise HarnessError(f"{where}: needs exactly question, kind, answer and points; fix the examples file")
        if ex["question"] not in ids:
            raise HarnessError(f"{where}: question {ex['question']!r} is not in {qn.path.name}")
        if ex["kind"] not in EXAMPLE_KINDS:
            raise HarnessError(f"{where}: kind {ex['kind']!r} is not one of {', '.join(EXAMPLE_KINDS)}")
        points = ex["points"]
        if isinstance(points, bool) or not isinstance(points, (int, float)) or not 0 <= points <= ids[ex["question"]].max_points:
            raise HarnessError(f"{where}: points must be a number in 0..{ids[ex['question']].max_points:g}")
        if not isinstance(ex["answer"], str) or not ex["answer"].strip():
            raise HarnessError(f"{where}: answer must be non-empty text")
        out.append(Example(ex["question"], ex["kind"], ex["answer"], float(points)))
    return out
