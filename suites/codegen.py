"""Shared machinery of the code suites (humaneval, mbpp): greedy generation,
code extraction, sandboxed and judged scoring, pass@1.

Scoring: the model's program runs in the sandbox as a *candidate*; the
dataset's tests run in a separate *judge* process against proxies of its
functions, and only plain data crosses (harness/runtime/sandbox.py,
`run_judged`). Every record carries the isolation level it ran under
(namespaces / seatbelt / rlimits-only); where the OS gives no isolation the
suites refuse to run unless `--opt allow_unsafe=true`.

Prompt formats. With a chat template (the default when the tokenizer has one)
the task is the user message and the answer is free text expected to hold a
```python block. Without one (raw), the model continues a prompt: HumanEval's
function signature + docstring, or MBPP's task ending in an opened ```python
fence.

Code extraction (`extract_code`), recorded per item as "<mode>:<method>":

strict (default)
  - chat answer: the first fenced block tagged python/py/python3 or untagged,
    up to its closing fence or the end of the text ("fenced"); no block
    -> no code ("none").
  - prompt ending inside an opened fence: the text up to the first line
    starting with ``` ("open-fence").
  - prompt ending in a function body (HumanEval raw): the lines up to the
    first non-blank line at column 0 ("body"), like the Codex stop
    sequences "\\ndef", "\\nclass", "\\nif", "\\nprint", "\\n#".

lenient (opt-in, labelled in every record), in addition
  - chat answer without a python block: the first fenced block of any tag
    ("fenced-any"), else unfenced code starting at the first line that
    begins with def/class/import/from/@ ("unfenced");
  - raw body: top-level def/class/import/from/@ blocks after the body
    (helpers the body calls) are kept ("body+helpers");
  - any method: trailing lines are dropped until the program parses
    (prose after the code, a line cut by the token limit).

Generation stops as soon as more text could not change the extraction (a
closed block, the closing fence, the first top-level line), EOS, or
max_tokens.

Protocols (`--opt protocol=`): `lm-eval` (the default: the prompts and rules
above, pass@1) or `omlx` (omlx's accuracy benchmark, harness.suites.omlx: its
prompts, 2,048 answer tokens, no early stop, its candidates and retries; records
say which pass_mode passed and whether that was a lenient repair; the summary has
omlx_pass@1 and omlx_strict_pass@1, never pass@1, so the report cannot put the
two protocols in one column).

Thinking models (`--opt thinking=auto|on|off`, enable_thinking for the chat
template): generation goes through harness.runtime.thinking.generate_budgeted
(harness.runtime.generate underneath, batched): up to `thinking_budget` tokens of
thinking (4096; omlx 8192), then `max_tokens` answer tokens counted from
`</think>`; the code is extracted from the answer only (a draft inside the
thinking never counts). Every record carries thinking_tokens, answer_tokens,
thinking/answer_budget_hit and generation-health flags (health_loop, _empty,
_bad_unicode, _language_switch, _budget_hit, _any: harness.runtime.health),
summarized as health_*_rate with Wilson CIs and gated by default.
"""

import ast
import hashlib
import os
import re
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

from harness.errors import HarnessError
from harness.options import option
from harness.options import parse_options as parse_plugin_options
from harness.stats import wilson_ci
from harness.suite import MetricSpec, Suite
from harness.suites.codegen_generate import (  # noqa: F401 (re-exported: the code suites' generation)
    encode_prompt,
    generate_checked,
    generate_completions,
    run_omlx_items,
    wants_chat_template,
)

MODES = ("strict", "lenient")
PYTHON_TAGS = {"", "python", "py", "python3"}
FENCE_OPEN = re.compile(r"^[ \t]*```[ \t]*([\w+.-]*)[^`]*$")
FENCE_LINE = re.compile(r"^[ \t]*```")
CODE_START = re.compile(r"^(def |class |import |from |async def |@)")


@dataclass
class Extraction:
    code: str
    method: str  # fenced | fenced-any | open-fence | body | body+helpers | unfenced | none


# ---------------------------------------------------------------- extraction


def strip_thinking(text: str) -> str:
    """Drop a reasoning model's <think>...</think> preamble."""
    return text.split("</think>", 1)[1] if "</think>" in text else text


def prompt_kind(prompt: Optional[str]) -> str:
    """"chat" (free answer), "open-fence" (prompt ends inside ```), or "body"."""
    if prompt is None:
        return "chat"
    fences = [line for line in prompt.split("\n") if FENCE_LINE.match(line)]
    return "open-fence" if len(fences) % 2 == 1 else "body"


def _fenced_blocks(text: str) -> list:
    """[(tag, code, closed)] of the ``` blocks in text, in order."""
    lines = text.split("\n")
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE_OPEN.match(lines[i])
        if not m:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and not FENCE_LINE.match(lines[j]):
            j += 1
        blocks.append((m.group(1).lower(), "\n".join(lines[i + 1 : j]), j < len(lines)))
        i = j + 1
    return blocks


def _body_lines(lines: list, helpers: bool) -> list:
    """Lines of a function body continuation: stop at the first column-0 line
    (with helpers=True, column-0 def/class/import blocks are kept)."""
    out = []
    for line in lines:
        top_level = line.strip() and not line[0].isspace()
        if top_level and not (helpers and CODE_START.match(line)):
            break
        out.append(line)
    return out


def _parses(source: str) -> bool:
    try:
        ast.parse(source)
        return True
    except (SyntaxError, ValueError):
        return False


def _trim_to_parse(code: str, prefix: str = "") -> str:
    """Drop trailing lines until prefix + code parses (lenient only)."""
    lines = code.rstrip().split("\n")
    while lines and not _parses(prefix + "\n".join(lines) + "\n"):
        lines.pop()
    return "\n".join(lines) if lines else code


def extract_code(text: str, prompt: Optional[str] = None, mode: str = "strict") -> Extraction:
    """The code in a completion; see the module docstring for the rules.

    prompt: None for a chat answer, else the raw prompt the text continues.
    """
    if mode not in MODES:
        raise HarnessError(f"unknown extraction mode {mode!r}; use strict or lenient")
    lenient = mode == "lenient"
    kind = prompt_kind(prompt)
    if kind == "chat":
        text = strip_thinking(text)
        blocks = _fenced_blocks(text)
        python = [b for b in blocks if b[0] in PYTHON_TAGS]
        if python:
            code = python[0][1]
            return Extraction(_trim_to_parse(code) if lenient else code, "fenced")
        if not lenient:
            return Extraction("", "none")
        if blocks:
            return Extraction(_trim_to_parse(blocks[0][1]), "fenced-any")
        lines = text.split("\n")
        start = next((i for i, line in enumerate(lines) if CODE_START.match(line)), None)
        if start is None:
            return Extraction("", "none")
        return Extraction(_trim_to_parse("\n".join(lines[start:])), "unfenced")
    lines = text.split("\n")
    if kind == "open-fence":
        end = next((i for i, line in enumerate(lines) if FENCE_LINE.match(line)), len(lines))
        code = "\n".join(lines[:end])
        return Extraction(_trim_to_parse(code) if lenient else code, "open-fence")
    body = "\n".join(_body_lines(lines, helpers=lenient))
    if lenient:
        return Extraction(_trim_to_parse(body, prompt), "body+helpers")
    return Extraction(body, "body")


def extraction_complete(text: str, prompt: Optional[str] = None, mode: str = "strict") -> bool:
    """True once more generated text could not change `extract_code`'s result
    (used to stop generation early)."""
    kind = prompt_kind(prompt)
    if kind == "chat":
        if "<think>" in text and "</think>" not in text:
            return False
        return any(closed and tag in PYTHON_TAGS for tag, _, closed in _fenced_blocks(strip_thinking(text)))
    lines = text.split("\n")
    if kind == "open-fence":
        return any(FENCE_LINE.match(line) for line in lines[:-1])  # a finished fence line
    # A finished line at column 0 ends the body (with helpers: one that starts no helper).
    return len(_body_lines(lines[:-1], helpers=mode == "lenient")) < len(lines) - 1


# ---------------------------------------------------------------- suite plumbing


PROTOCOLS = ("lm-eval", "omlx")
DEFAULT_MAX_TOKENS = {"lm-eval": 512, "omlx": 2048}  # omlx: humaneval/mbpp get_max_tokens


@dataclass(frozen=True)
class CodeOptions:
    """--opt keys of the code suites (humaneval, mbpp)."""

    protocol: str = option("lm-eval", choices=PROTOCOLS,
                           help="lm-eval (prompts, strict extraction, pass@1) or omlx (omlx's accuracy "
                                "benchmark: its prompts, 2,048 answer tokens, lenient repair labelled)")
    chat_template: str = option("auto", choices=("auto", "on", "off"),
                                help="prompts through the tokenizer's chat template")
    extraction: str = option("strict", choices=MODES, help="code extraction rules (lm-eval protocol)")
    max_tokens: Optional[int] = option(None, min=1, help="answer tokens per problem (default 512 lm-eval, "
                                                         "2048 omlx)")
    thinking: str = option("auto", choices=("auto", "on", "off"),
                           help="enable_thinking for the chat template (auto: the template's default)")
    thinking_budget: Optional[int] = option(None, min=0, help="tokens a thinking model may think before its "
                                                             "answer budget starts (default 4096 lm-eval, "
                                                             "8192 omlx); 0 = no thinking phase")
    batch_size: int = option(8, min=1, help="sequences decoded together")
    workers: int = option(0, min=0, help="parallel sandbox processes; 0 = cpu count")
    timeout: float = option(10.0, help="seconds per program (wall clock), > 0")
    memory_mb: int = option(1024, min=1, help="address-space limit per program")
    source: str = option("auto", choices=("auto", "offline", "hub"),
                         help="auto (offline package if installed, else hub)")
    disk_mb: int = option(64, min=1, help="disk quota of a program's work dir (Linux namespaces)")
    allow_unsafe: bool = option(False, help="run model-written code even where the OS gives the "
                                            "sandbox no isolation (rlimits + in-process guard only)")

    def __post_init__(self):
        # resolve the protocol's budgets here, so results record the numbers actually used
        if self.max_tokens is None:
            object.__setattr__(self, "max_tokens", DEFAULT_MAX_TOKENS.get(self.protocol, 512))
        if self.thinking_budget is None:
            from harness.runtime.thinking import DEFAULT_PLAN

            budget = THINKING_BUDGET_OMLX if self.protocol == "omlx" else DEFAULT_PLAN.thinking
            object.__setattr__(self, "thinking_budget", budget)

    def validate(self):
        if not self.timeout > 0:
            raise HarnessError(f"code suite option timeout={self.timeout!r} is out of range; use a positive number")

    @property
    def plan(self):
        from harness.runtime.thinking import BudgetPlan

        return BudgetPlan(thinking=self.thinking_budget, answer=self.max_tokens)


THINKING_BUDGET_OMLX = 8192  # omlx base.resolve_max_tokens(2048, thinking) = clamp(2048, 8192, 32768)


def parse_options(options, suite: str) -> CodeOptions:
    """CodeOptions from --opt key=value pairs (values may be strings), or as given."""
    if isinstance(options, CodeOptions):
        return options
    return parse_plugin_options(CodeOptions, options, suite)


def sandbox_limits(opts: CodeOptions) -> dict:
    return {"timeout": opts.timeout, "memory_mb": opts.memory_mb, "disk_mb": opts.disk_mb}


def subset(items: list, limit: Optional[int], seed: int = 0) -> list:
    """A deterministic subset of `limit` items (a seeded shuffle's prefix, so a
    larger limit keeps every item of a smaller one), in the original order."""
    if limit is None or limit >= len(items):
        return list(items)

    def key(it):
        return hashlib.sha256(f"{seed}|{it['id']}".encode()).hexdigest()

    chosen = {it["id"] for it in sorted(items, key=key)[: max(limit, 0)]}
    return [it for it in items if it["id"] in chosen]


def run_code_items(
    ctx,
    items: list,
    opts: CodeOptions,
    build_prompt: Callable[[dict, bool], str],
    build_program: Callable[[dict, str, bool], str],
    suite_name: str = "code",
    judge_spec: Optional[Callable] = None,
) -> Iterator[dict]:
    """Generate, extract and judge, `batch_size` items at a time; yields a record per item.

    build_prompt(item, chat) -> prompt text; build_program(item, code, chat) -> the
    candidate program; judge_spec(item) -> the trusted tests (JudgeSpec). The code is
    extracted from the answer (thinking removed, `thinking.raw_answer`); every record
    carries thinking/answer tokens, budget flags and generation-health flags."""
    from harness.runtime.sandbox import judge_many, level_of
    from harness.runtime.thinking import raw_answer

    from tqdm import tqdm

    chat = wants_chat_template(opts.chat_template, ctx.tokenizer)
    workers = opts.workers or os.cpu_count() or 1
    bar = tqdm(total=len(items), desc=suite_name, unit="item", disable=not ctx.progress)
    for start in range(0, len(items), opts.batch_size):
        chunk = items[start : start + opts.batch_size]
        prompts = [build_prompt(it, chat) for it in chunk]
        continued = [None if chat else p for p in prompts]  # what extraction sees as the prompt

        def stop(i, answer):
            return extraction_complete(answer, continued[i], opts.extraction)

        generated = generate_checked(ctx, opts, prompts, prompts, chat, stop)
        answers = [raw_answer(g.text, g.split) for g, _ in generated]
        extractions = [extract_code(a, p, opts.extraction) for a, p in zip(answers, continued)]
        programs = [build_program(it, ex.code, chat) for it, ex in zip(chunk, extractions)]
        results = judge_many([(p, judge_spec(it)) for p, it in zip(programs, chunk)], workers=workers,
                             **sandbox_limits(opts))
        for it, (g, fields), ex, program, res in zip(chunk, generated, extractions, programs, results):
            record = {
                "id": it["id"],
                "completion": g.text,
                "code": ex.code,
                "extraction": f"{opts.extraction}:{ex.method}",
                "prompt_format": "chat" if chat else "raw",
                **verdict_fields(program, res, level_of(res.isolation)),
                **fields,
            }
            bar.update(1)
            yield record
    bar.close()


def verdict_fields(program: str, res, level: str) -> dict:
    """The part of a record the sandbox and judge decide."""
    out = {
        "program_hash": hashlib.sha256(program.encode()).hexdigest()[:16],
        "status": res.status,
        "correct": res.passed,
        "seconds": round(res.seconds, 3),
        "isolation": level,
    }
    if not res.passed:
        lines = [line for line in res.stderr_tail.strip().split("\n") if line.strip()]
        out["error"] = (lines[-1] if lines else res.status)[:300]
    return out


def summarize_records(records: list, protocol: str = "lm-eval") -> dict:
    """pass@1 (greedy: one sample per item) with a Wilson 95 % interval, counts, the
    isolation level the programs ran under, generation health and token means.
    protocol omlx: omlx_pass@1 (omlx's count, lenient repairs included) and
    omlx_strict_pass@1 instead of pass@1, so the protocols never share a column."""
    from harness.runtime import health

    n = len(records)
    k = sum(bool(r.get("correct")) for r in records)

    def counts(key):
        out: dict = {}
        for r in records:
            out[r.get(key, "?")] = out.get(r.get(key, "?"), 0) + 1
        return dict(sorted(out.items()))

    levels = sorted({r.get("isolation", "unknown") for r in records})
    if protocol == "omlx":
        strict = sum(bool(r.get("strict_correct")) for r in records)
        out = {"omlx_pass@1": k / n if n else 0.0, "omlx_pass@1_ci95": list(wilson_ci(k, n)),
               "omlx_strict_pass@1": strict / n if n else 0.0,
               "omlx_strict_pass@1_ci95": list(wilson_ci(strict, n)),
               "n": n, "passed": k, "passed_strict": strict, "passed_lenient_only": k - strict,
               "pass_mode_counts": counts("pass_mode"), "failure_counts": counts("failure_type")}
    else:
        out = {"pass@1": k / n if n else 0.0, "pass@1_ci95": list(wilson_ci(k, n)), "n": n, "passed": k,
               "status_counts": counts("status"), "extraction_counts": counts("extraction")}
    out["isolation"] = levels[0] if len(levels) == 1 else "mixed:" + ",".join(levels)
    from harness.runtime.health import generation_summary

    out.update(generation_summary(records))
    return out


def warn_skipped(suite: str, skipped: dict, where: str) -> int:
    """One warning naming how many rows were skipped and why; returns the count."""
    total = sum(skipped.values())
    if total:
        detail = "; ".join(f"{n} {reason}" for reason, n in skipped.items())
        warnings.warn(f"{suite}: skipped {total} malformed row(s) in {where} ({detail})", stacklevel=3)
    return total


def load_hub_rows(dataset: str, *args, split: str = "test") -> list:
    """A code benchmark's rows from the Hugging Face hub through `datasets` (online users)."""
    import datasets

    try:
        return datasets.load_dataset(dataset, *args, split=split).to_list()
    except Exception as e:
        raise HarnessError(
            f"could not load {dataset} from the Hugging Face hub ({type(e).__name__}); "
            "check the network or use --opt source=offline"
        )


def health_specs() -> tuple:
    """The generation-health metrics every generative suite declares (harness.runtime.health)."""
    from harness.runtime import health

    return tuple(MetricSpec(**d) for d in health.GENERATION_DECLS)


METRICS = (
    MetricSpec("pass@1", True, "proportion", max_drop=0.02, item_key="correct", chance=0.0,
               description="share of problems whose greedy completion passes the tests (judged outside "
                           "the program's process)"),
    MetricSpec("n", None, "info", description="problems scored"),
    MetricSpec("passed", None, "info", description="problems passed"),
) + health_specs()
OMLX_METRICS = (
    MetricSpec("omlx_pass@1", True, "proportion", max_drop=0.02, item_key="correct", chance=0.0,
               description="omlx protocol: share of problems passed by any of omlx's candidates (lenient "
                           "indentation / assert repairs included, as omlx counts)"),
    MetricSpec("omlx_strict_pass@1", True, "proportion", max_drop=0.02, item_key="strict_correct", chance=0.0,
               description="omlx protocol: share passed without any of omlx's repairs"),
    MetricSpec("n", None, "info", description="problems scored"),
    MetricSpec("passed", None, "info", description="problems passed (omlx's count)"),
    MetricSpec("passed_strict", None, "info", description="problems passed without repairs"),
    MetricSpec("passed_lenient_only", None, "info", description="problems passed only through a repair"),
) + health_specs()


class CodeSuite(Suite):
    """What HumanEval and MBPP share: options, subset, sandboxed and judged run,
    pass@1 summary, data provenance. A subclass names itself and gives its data
    module's plain functions: load_problems(source) -> (items, skipped, label),
    build_prompt, build_program (the candidate program), judge_spec (the trusted
    tests) and items_sha256."""

    name = ""
    description = ""
    version = "2"  # 2: verdicts from the judge process
    needs_reference = False
    exec_mode = None
    Options = CodeOptions
    metrics = METRICS
    load_problems: Callable
    omlx_messages: Callable  # item -> omlx's chat messages
    omlx_evaluate: Callable  # (answer, item, run) -> omlx's verdict
    omlx_strict_script: Optional[Callable] = None  # (answer, item) -> the strict program, when omlx may pass
    # through a repair before trying it
    build_prompt: Callable
    build_program: Callable
    judge_spec: Callable
    items_sha256: Callable

    def items(self, ctx) -> list:
        from harness.runtime.sandbox import require_isolation

        opts = parse_options(ctx.options, self.name)
        require_isolation(opts.allow_unsafe, f"{self.name}")  # before any work: refuse without OS layers
        items, _, _ = self.load_problems(opts.source)
        return self.choose(items, ctx, opts)

    @staticmethod
    def choose(items: list, ctx, opts: CodeOptions) -> list:
        """--limit: lm-eval a seeded subset; omlx its own seed-42 sample (deterministic_sample)."""
        if opts.protocol == "omlx":
            from harness.suites.omlx import deterministic_sample

            return deterministic_sample(items, ctx.limit or 0) if ctx.limit is not None else list(items)
        return subset(items, ctx.limit, ctx.seed)

    def run(self, ctx, items: list) -> Iterator[dict]:
        opts = parse_options(ctx.options, self.name)
        if opts.protocol == "omlx":
            yield from run_omlx_items(ctx, items, opts, type(self).omlx_messages, type(self).omlx_evaluate,
                                      type(self).omlx_strict_script, self.name)
            return
        yield from run_code_items(ctx, items, opts, self.build_prompt, self.build_program, self.name,
                                  self.judge_spec)

    def summarize(self, ctx, records: list) -> dict:
        return summarize_records(records, parse_options(ctx.options, self.name).protocol)

    def metric_specs(self, ctx) -> tuple:
        return OMLX_METRICS if parse_options(ctx.options, self.name).protocol == "omlx" else METRICS

    def data_info(self, ctx) -> dict:
        from harness.runtime.sandbox import isolation, isolation_level

        opts = parse_options(ctx.options, self.name)
        items, skipped, label = self.load_problems(opts.source)
        chosen = self.choose(items, ctx, opts)
        return {
            "protocol": opts.protocol,
            "source": label,
            "sha256": self.items_sha256(chosen),
            "n_items": len(chosen),
            "skipped_rows": skipped,
            "prompt_format": "chat" if wants_chat_template(opts.chat_template, ctx.tokenizer) else "raw",
            "extraction": "omlx (lenient repairs labelled per item)" if opts.protocol == "omlx" else opts.extraction,
            "sandbox": isolation(),
            "isolation": isolation_level(),
        }
