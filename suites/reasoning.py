"""reasoning: a hand-written questionnaire graded by deterministic rubrics.

Debugging, algorithms, security, concurrency, system design, logic puzzles and
easy control questions (reasoning_questionnaire.py loads them), each answer
graded by its question's rubric (reasoning_rubric.py). Every question weighs
the same: its points / max_points, averaged over the questions and scaled to
100, is the score (also per category), banded into grades S >= 95, A+ >= 90,
A >= 80, B >= 70, C >= 60, D below.

An optional LLM judge (`--judge URL`, any OpenAI-compatible server such as
mlx_lm.server or omlx; reasoning_judge.py) grades each question's free-form
`judge` criteria; its score (`judge_score`) is reported separately and never
mixes into `score`.

Generation is greedy, through the tokenizer's chat template when it has one,
and stops at the first complete FINAL ANSWER line. The summary stores numbers
only; `render_summary` (the suite's `render`) turns it into the Grader | Score |
Grade table and the failed-criteria table that `harness run` prints.
"""

import sys
from dataclasses import dataclass
from typing import Iterator, Optional

from tabulate import tabulate

from harness.errors import HarnessError
from harness.options import option
from harness.stats import bootstrap_ci, wilson_ci
from harness.suite import MetricSpec, Suite, SuiteContext
from harness.suites.reasoning_answer import short, truncate_after_final
from harness.suites.reasoning_judge import JudgeClient
from harness.suites.reasoning_questionnaire import SEVERITIES, Questionnaire, load_questionnaire
from harness.suites.reasoning_rubric import grade_answer

GRADE_BANDS = ((95.0, "S"), (90.0, "A+"), (80.0, "A"), (70.0, "B"), (60.0, "C"))
# the shipped questionnaire's categories (a test keeps this in step with the data file)
CATEGORIES = ("debugging", "algorithms", "security", "concurrency", "system_design", "logic", "control")


@dataclass(frozen=True)
class Options:
    max_tokens: int = option(512, min=1, help="tokens generated per answer at most")
    batch_size: int = option(8, min=1, help="sequences decoded together (~3.5x the tokens/s of one on CPU); "
                                            "1 = mlx_lm.stream_generate one prompt at a time")
    stop_on_repeat: bool = option(True, help="stop a generation stuck in a token loop")
    questions: Optional[str] = option(None, help="path to another questionnaire file (YAML or JSON)")
    judge: Optional[str] = option(None, help="OpenAI-compatible endpoint of an LLM judge (what --judge sets)")
    judge_model: str = option("default_model", help="model name sent to the judge endpoint")
    judge_timeout: int = option(120, min=1, help="seconds to wait for one judge reply")

    def validate(self):
        if self.judge is not None and not self.judge.startswith(("http://", "https://")):
            raise HarnessError(f"reasoning judge {self.judge!r} is not an http(s) URL; "
                               "pass e.g. --judge http://127.0.0.1:8080")
        if self.questions is not None:
            load_questionnaire(self.questions)  # a missing or malformed file fails before any build


def _category_metric(category: str) -> MetricSpec:
    return MetricSpec(f"score_{category}", True, "points", description=f"score of the {category} questions")


def _metrics() -> tuple:
    counts = [MetricSpec(f"failed_{s}", False, "count", description=f"failed {s} criteria, all questions")
              for s in SEVERITIES]
    return (
        MetricSpec("score", True, "points", max_drop=5.0, item_key="score",
                   description="rubric points per question, averaged, /100"),
        MetricSpec("accuracy", True, "proportion", item_key="correct", description="questions with full points"),
        *(_category_metric(c) for c in CATEGORIES),
        MetricSpec("judge_score", True, "points", item_key="judge_score",
                   description="LLM judge's score /100 (separate from score)"),
        *counts,
        MetricSpec("n", None, "count", description="questions graded"),
        MetricSpec("judge_n", None, "count", description="questions the judge graded"),
        MetricSpec("judge_errors", None, "count", description="unparseable judge replies"),
    )


# ----------------------------------------------------------------------------
# Scores and tables


def grade_band(score: float) -> str:
    """S >= 95, A+ >= 90, A >= 80, B >= 70, C >= 60, else D (score out of 100)."""
    for threshold, band in GRADE_BANDS:
        if score >= threshold:
            return band
    return "D"


def summarize_records(records: list, categories: Optional[list] = None) -> dict:
    """Score /100 (equal weight per question), grade, accuracy (fully correct
    questions), per-category scores, failures by severity, the judge's score
    (separate) and `issues` (the failed criteria of every question that lost points)."""
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
    out["issues"] = [
        {"id": r["id"], "category": r["category"], "points": r["points"], "max_points": r["max_points"],
         "failed": [{k: f[k] for k in ("criterion", "severity", "detail")} for f in r["failed"]]}
        for r in records if r.get("failed")
    ]
    return out


def render_summary(summary: dict) -> str:
    """What `harness run` prints for a reasoning result: Grader | Score | Grade
    (the rubric, and the LLM judge on its own row when there is one), then the
    failed criteria per question."""
    if not summary.get("n"):
        return "No questions graded."
    rows = [["rubric", f"{summary['score']:.1f}/100", summary.get("grade") or grade_band(summary["score"])]]
    if summary.get("judge_score") is not None:
        judge = summary["judge_score"]
        rows.append(["LLM judge (separate)", f"{judge:.1f}/100", summary.get("judge_grade") or grade_band(judge)])
    table = tabulate(rows, headers=["Grader", "Score", "Grade"], tablefmt="github", disable_numparse=True)
    return table + "\n\n" + issues_table(summary.get("issues", []))


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


def issues_table(rows: list) -> str:
    """Markdown table of the failed criteria, one row per question that lost
    points (records, or a summary's "issues"): Question | Category | Points |
    Critical | Major | Minor, each severity cell listing "criterion (why)"."""
    body = []
    for r in rows:
        if not r.get("failed"):
            continue
        cells = {s: [] for s in SEVERITIES}
        for f in r["failed"]:
            cells.setdefault(f["severity"], []).append(f"{f['criterion']} ({short(f['detail'], 48)})")
        body.append([
            r["id"], r["category"], f"{r['points']:g}/{r['max_points']:g}",
            *("; ".join(cells[s]).replace("|", "\\|") or "-" for s in SEVERITIES),
        ])
    if not body:
        return "No failed criteria."
    headers = ["Question", "Category", "Points", *(s.capitalize() for s in SEVERITIES)]
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)


# ----------------------------------------------------------------------------
# Generation (the shared greedy helper, with this suite's stop rules)


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


def generate_answers(
    model, tokenizer, prompts: list, max_tokens: int, batch_size: int = 1, stop_on_repeat: bool = True
) -> Iterator[tuple]:
    """Greedy answers, (index, text, n_tokens, stop) per prompt as each finishes.

    Prompts go through the tokenizer's chat template when it has one
    (harness.runtime.prompt); harness.runtime.generate decodes them (batch_size 1:
    mlx_lm.stream_generate one at a time; more: that many in flight). stop is
    "eos", "max_tokens", "final_answer" (the text is cut after the first complete
    FINAL ANSWER line, as the prompt asks the model to stop there) or
    "repetition" (see `looping`).
    """
    from harness.runtime.generate import generate_iter
    from harness.runtime.prompt import encode_prompt, wants_chat

    chat = wants_chat("auto", tokenizer)
    ids = [encode_prompt(tokenizer, p, chat=chat) for p in prompts]

    def stop(i, tokens, text):
        # a FINAL ANSWER line is complete once a newline follows it
        if "\n" in tokenizer.decode(tokens[-1:]) and truncate_after_final(text) != text:
            return "final_answer"
        if stop_on_repeat and len(tokens) % 8 == 0 and looping(tokens):
            return "repetition"
        return None

    for g in generate_iter(model, tokenizer, ids, max_tokens=max_tokens, batch_size=batch_size, stop=stop):
        yield g.index, truncate_after_final(g.text), len(g.tokens), "max_tokens" if g.stop == "length" else g.stop


# ----------------------------------------------------------------------------
# The suite


class ReasoningSuite(Suite):
    name = "reasoning"
    description = "hand-written reasoning questionnaire (debugging, algorithms, security, ...), rubric-graded /100"
    version = "2"  # 2: hedged final answers earn nothing, rephrased correct ones full credit (issue 12)
    Options = Options
    metrics = _metrics()

    def _questionnaire(self, ctx) -> Questionnaire:
        return load_questionnaire(self.opts(ctx).questions)

    def items(self, ctx: SuiteContext) -> list:
        questions = self._questionnaire(ctx).interleaved()
        if ctx.limit is not None:
            questions = questions[: ctx.limit]
        return [{"id": q.id, "category": q.category, "prompt": q.prompt} for q in questions]

    def run(self, ctx: SuiteContext, items: list) -> Iterator[dict]:
        opts = self.opts(ctx)
        judge = None
        if opts.judge:
            judge = JudgeClient(opts.judge, model=opts.judge_model, timeout=opts.judge_timeout)
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
            ctx.model, ctx.tokenizer, [q.prompt for q in questions], opts.max_tokens, opts.batch_size,
            opts.stop_on_repeat,
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
                if record.get("judge_points") is not None and record["judge_max_points"]:
                    record["judge_score"] = round(100 * record["judge_points"] / record["judge_max_points"], 2)
            bar.update(1)
            yield record
        bar.close()

    def summarize(self, ctx: SuiteContext, records: list) -> dict:
        return summarize_records(records, self._questionnaire(ctx).categories)

    def metric_specs(self, ctx: SuiteContext) -> tuple:
        """`metrics`, with one score_<category> per category of the questionnaire in use."""
        categories = self._questionnaire(ctx).categories
        specs = [m for m in self.metrics if not (m.name.startswith("score_") and m.name[6:] in CATEGORIES)]
        return (*specs, *(_category_metric(c) for c in categories))

    def render(self, summary: dict) -> str:
        return render_summary(summary)

    def data_info(self, ctx: SuiteContext) -> dict:
        qn = self._questionnaire(ctx)
        return {"source": str(qn.path), "sha256": qn.sha256, "version": qn.version, "questions": len(qn.questions)}
