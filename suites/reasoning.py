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
only; `render_summary` turns it into the Score | Grade table `harness run` prints.
"""

import sys
from dataclasses import dataclass
from typing import Iterator, Optional

from tabulate import tabulate

from harness.errors import HarnessError
from harness.options import option, parse_options
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
    batch_size: int = option(8, min=1, help="sequences decoded together (~3.5x the tokens/s of one on CPU, "
                                            "same text); 1 = mlx_lm.stream_generate one prompt at a time")
    stop_on_repeat: bool = option(True, help="stop a generation stuck in a token loop")
    questions: Optional[str] = option(None, help="path to another questionnaire file (YAML or JSON)")
    judge: Optional[str] = option(None, help="OpenAI-compatible endpoint of an LLM judge (what --judge sets)")
    judge_model: str = option("default_model", help="model name sent to the judge endpoint")
    judge_timeout: int = option(120, min=1, help="seconds to wait for one judge reply")

    def validate(self):
        if self.judge is not None and not self.judge.startswith(("http://", "https://")):
            raise HarnessError(f"reasoning judge {self.judge!r} is not an http(s) URL; "
                               "pass e.g. --judge http://127.0.0.1:8080")


def _metrics() -> tuple:
    counts = [MetricSpec(f"failed_{s}", False, "count", description=f"failed {s} criteria, all questions")
              for s in SEVERITIES]
    return (
        MetricSpec("score", True, "points", max_drop=5.0, item_key="score",
                   description="rubric points per question, averaged, /100"),
        MetricSpec("accuracy", True, "proportion", item_key="correct", description="questions with full points"),
        *(MetricSpec(f"score_{c}", True, "points", description=f"score of the {c} questions")
          for c in CATEGORIES),
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


def render_summary(summary: dict, model: str = "model") -> str:
    """What `harness run` prints for a reasoning result: the Score | Grade table
    (and the judge's, separately), then the failed criteria per question."""
    if not summary.get("n"):
        return "No questions graded."
    text = score_table([{"model": model, "score": summary["score"], "grade": summary.get("grade")}])
    if summary.get("judge_score") is not None:
        text += "\n\nLLM judge (reported separately):\n" + score_table(
            [{"model": model, "score": summary["judge_score"], "grade": summary.get("judge_grade")}])
    return text + "\n\n" + issues_table(summary.get("issues", []))


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
# Generation (h1's harness.runtime.generate is to replace this; same stop rules)

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


class ReasoningSuite(Suite):
    name = "reasoning"
    description = "hand-written reasoning questionnaire (debugging, algorithms, security, ...), rubric-graded /100"
    version = "2"  # 2: hedged final answers earn nothing, rephrased correct ones full credit (issue 12)
    Options = Options
    metrics = _metrics()

    def options(self, ctx: SuiteContext) -> Options:
        """The run's options: already parsed by the runner, or {key: value} to parse here.
        A dict may carry other suites' keys (runners that do not route options), so
        only this suite's keys are read; the runner's routing rejects unknown ones."""
        if isinstance(ctx.options, Options):
            return ctx.options
        raw = {k: v for k, v in (ctx.options or {}).items() if k in Options.__dataclass_fields__}
        return parse_options(Options, raw, self.name)

    def _questionnaire(self, ctx) -> Questionnaire:
        return load_questionnaire(self.options(ctx).questions)

    def items(self, ctx: SuiteContext) -> list:
        questions = self._questionnaire(ctx).interleaved()
        if ctx.limit is not None:
            questions = questions[: ctx.limit]
        return [{"id": q.id, "category": q.category, "prompt": q.prompt} for q in questions]

    def run(self, ctx: SuiteContext, items: list) -> Iterator[dict]:
        opts = self.options(ctx)
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

    def render_summary(self, summary: dict, model: str = "model") -> str:
        return render_summary(summary, model)

    def data_info(self, ctx: SuiteContext) -> dict:
        qn = self._questionnaire(ctx)
        return {"source": str(qn.path), "sha256": qn.sha256, "version": qn.version, "questions": len(qn.questions)}
