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
and stops at the first complete FINAL ANSWER line.

Thinking models (`--opt thinking=auto|on|off`, passed to the chat template as
enable_thinking; auto keeps the template's default): the model may think for
`thinking_budget` tokens (default 4096), then its answer gets `max_tokens` tokens
of its own (default 1024), counted from `</think>`; when the thinking budget runs
out the block is closed for it and the answer still gets its budget
(harness.runtime.thinking). The defaults suit a thinking model such as
MiniMax-M2 or Qwen3 (omlx uses 8k-32k for thinking; a 512-token cap truncated
MiniMax's thinking into an empty answer); a model that does not think only ever
uses the answer budget. The rubric grades the answer with the thinking removed
(a draft "FINAL ANSWER" inside the thinking never counts). Each record carries
thinking/answer tokens, whether a budget was hit, and generation-health flags
(loop, empty, bad Unicode, language switch: harness.runtime.health), summarized
as health_*_rate with Wilson CIs. The summary stores numbers
only; `render_summary` (the suite's `render`) turns it into the Grader | Score |
Grade table and the failed-criteria table that `harness run` prints.
"""

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from tabulate import tabulate

from harness.errors import HarnessError
from harness.runtime import health
from harness.options import option
from harness.stats import bootstrap_ci, wilson_ci
from harness.suite import MetricSpec, Suite, SuiteContext
from harness.suites.reasoning_answer import short, truncate_after_final
from harness.suites.reasoning_judge import JudgeClient
from harness.suites.reasoning_questionnaire import DATA_FILE, SEVERITIES, Questionnaire, load_questionnaire
from harness.suites.reasoning_rubric import grade_answer

GRADE_BANDS = ((95.0, "S"), (90.0, "A+"), (80.0, "A"), (70.0, "B"), (60.0, "C"))
# the shipped questionnaire's categories (a test keeps this in step with the data file)
CATEGORIES = ("debugging", "algorithms", "security", "concurrency", "system_design", "logic", "control")


@dataclass(frozen=True)
class Options:
    max_tokens: int = option(1024, min=1, help="answer tokens at most (after any thinking)")
    thinking: str = option("auto", choices=("auto", "on", "off"),
                           help="enable_thinking for the chat template (auto: the template's default)")
    thinking_budget: int = option(4096, min=0, help="tokens a thinking model may think before its answer "
                                                    "budget starts (0: no thinking phase)")
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
        MetricSpec("score", True, "points", max_drop=5.0, item_key="score", chance=0.0,
                   description="rubric points per question, averaged, /100"),
        MetricSpec("accuracy", True, "proportion", item_key="correct", description="questions with full points"),
        *(_category_metric(c) for c in CATEGORIES),
        MetricSpec("judge_score", True, "points", item_key="judge_score",
                   description="LLM judge's score /100 (separate from score)"),
        *counts,
        MetricSpec("n", None, "count", description="questions graded"),
        MetricSpec("judge_n", None, "count", description="questions the judge graded"),
        MetricSpec("judge_errors", None, "count", description="unparseable judge replies"),
        *(MetricSpec(**d) for d in health.GENERATION_DECLS),
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
    out.update(health.generation_summary(records))
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
    model, tokenizer, prompts: list, max_tokens: int, batch_size: int = 1, stop_on_repeat: bool = True,
    thinking: str = "auto", thinking_budget: int = 0,
) -> Iterator:
    """Greedy answers: a BudgetedGeneration per prompt (harness.runtime.thinking) as each finishes.

    Prompts go through the tokenizer's chat template when it has one (thinking on/off
    passed as enable_thinking); harness.runtime.generate decodes them (batch_size 1:
    mlx_lm.stream_generate one at a time; more: that many in flight). The answer
    stops after its first complete FINAL ANSWER line ("final_answer"; thinking never
    triggers it), or at "repetition" (see `looping`; thinking included), EOS, or a budget.
    """
    from harness.runtime.prompt import encode_prompt, wants_chat
    from harness.runtime.thinking import BudgetPlan, generate_budgeted_iter

    chat = wants_chat("auto", tokenizer)
    enable = None if thinking == "auto" or not chat else thinking == "on"
    ids = [encode_prompt(tokenizer, p, chat=chat, enable_thinking=enable) for p in prompts]

    def stop(i, answer):
        # a FINAL ANSWER line is complete once a newline follows it
        return "final_answer" if truncate_after_final(answer) != answer else None

    def loop_stop(tokens):
        return stop_on_repeat and len(tokens) % 8 == 0 and looping(tokens)

    plan = BudgetPlan(thinking=thinking_budget, answer=max_tokens)
    return generate_budgeted_iter(model, tokenizer, ids, plan=plan, thinking=thinking != "off", stop=stop,
                             batch_size=batch_size, loop_stop=loop_stop)


STOPS = {"length": "max_tokens", "answer_budget": "max_tokens"}  # record names of earlier versions


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
            opts.stop_on_repeat, opts.thinking, opts.thinking_budget,
        )
        for g in answers:
            q = questions[g.index]
            text = truncate_after_final(g.split.answer)  # graded without the thinking
            grade = grade_answer(q, text)
            flags = health.health_flags(g.split.answer, prompt=q.prompt, tokens=g.tokens,
                                        budget_hit=g.split.budget_hit)
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
                "generated_tokens": len(g.tokens),
                "stop": STOPS.get(g.stop, g.stop),
                **g.split.record(),
                **flags,
            }
            if g.split.has_thinking:
                record["thinking"] = g.split.thinking
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
        # the built-in file by name, not by this checkout's path (results travel between machines)
        source = f"built-in {qn.path.name}" if Path(qn.path).resolve() == DATA_FILE.resolve() else str(qn.path)
        return {"source": source, "sha256": qn.sha256, "version": qn.version, "questions": len(qn.questions)}
