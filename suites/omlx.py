"""omlx's accuracy-benchmark protocol as plain functions (`--opt protocol=omlx`).

The seed model cards (oQ4 vs mlx-lm 4-bit: MMLU 300, TruthfulQA 300, HumanEval full,
MBPP 300) were measured with omlx's admin accuracy benchmark. This module reproduces
its prompts, answer extraction, sampling and lenient code repair so our suites can
report numbers comparable with those cards. Sources (github.com/jundot/omlx, read
through the code index; commits are the stored versions):

* `omlx/admin/accuracy_benchmark.py` (024e134a): greedy by default ("deterministic"
  sampling profile, temperature 0), one chat request per item, `enable_thinking`
  from the request passed as a chat-template kwarg.
* `omlx/eval/base.py` (062a2cd9): max tokens 128 (`get_max_tokens`), thinking budget
  clamp(max_tokens, 8192, 32768); `temperature 0, presence_penalty 0,
  repetition_penalty 1`; the answer is graded after removing `<think>...</think>`
  (`_strip_think_tags`); if the first batch's raw output contains `<think>` while
  thinking is off, thinking is switched on and the batch re-run.
* `omlx/eval/mmlu.py` (d7f8ce62): 5-shot from the same subject's dev rows (the first 5
  in file order), one user turn, header "The following are multiple choice questions
  about {Subject Title}. Answer with just the letter (A, B, C, or D).", examples
  "Answer: X" followed by a blank line, the question, "Answer:"; the answer is the
  first `\\b([ABCD])\\b` of the stripped response (else its first char if in ABCD).
  Samples: `stratified_sample(items, n, key="subject")`.
* `omlx/eval/datasets.py` (fork zulufoxtrot/omlx ff39e453; jundot's copy is not
  indexed): `SAMPLE_SEED = 42`; `deterministic_sample` = `random.Random(42).sample`;
  `stratified_sample` = proportional per subject in sorted subject order, one shared
  `random.Random(42)`, the last subject takes the remainder.
* `omlx/eval/sampling.py` (c82bd6f3): `uniform_stratified_sample` (mmlu_uniform).
* `omlx/eval/truthfulqa.py` (d7f8ce62): MC1 as a lettered multiple choice (0-shot),
  choices shuffled with `random.Random(42 + row_index)`, extraction = first valid
  letter; `deterministic_sample`.
* `omlx/eval/humaneval.py` (062a2cd9): "Complete the following Python function. Return
  only the missing indented function body, no explanations.\\n\\n{prompt}", max tokens
  2048, deterministic candidates (`_candidate_codes`: canonical raw completion plus
  indentation repairs), a pass if any candidate passes; `deterministic_sample`.
* `omlx/eval/mbpp.py` (062a2cd9): "Write a Python function ... Solution:" with the
  first three tests shown, the LAST code block (`base._extract_last_code_block`),
  retries with setup-after-code and tolerant numeric asserts.

The sample order for `stratified_sample`/`deterministic_sample` depends on the row
order of omlx's bundled JSONL (from cais/mmlu "all", truthfulqa validation, ...): fed
rows in that order the same questions come out. Everything omlx counts as a pass but
a strict grader would not (repaired indentation, tolerant asserts) is labelled by its
`pass_mode`; `LENIENT_MODES` lists those, so suites can report both numbers.

One deliberate deviation: omlx strips thinking only when the output contains `<think>`
(`_strip_think_tags`), so for a template-opened block (MiniMax-M2, DeepSeek-R1: the output
has only `</think>`) it grades the thinking's first letter. We grade the text after
`</think>` (harness.runtime.thinking.split_thinking) in every case.
"""

import random
import re
import textwrap
from typing import Callable, Optional

SAMPLE_SEED = 42  # omlx/eval/datasets.py
MAX_TOKENS = 128  # base.get_max_tokens
CODE_MAX_TOKENS = 2048  # humaneval/mbpp get_max_tokens
THINKING_MIN_TOKENS = 8192  # base.py ("OpenCompass 8K~32K")
THINKING_MAX_TOKENS = 32768
ANSWER_MAP = {0: "A", 1: "B", 2: "C", 3: "D"}
# omlx's own quick sizes (class attribute quick_size) and the seed card's sizes.
QUICK_SIZES = {"mmlu": 300, "truthfulqa": 200, "humaneval": 100, "mbpp": 200}
CARD_SIZES = {"mmlu": 300, "truthfulqa": 300, "humaneval": 0, "mbpp": 300}  # 0 = full set
SAMPLING = {"temperature": 0.0, "presence_penalty": 0.0, "repetition_penalty": 1.0}


def resolve_max_tokens(base: int, thinking: bool) -> int:
    """omlx base.resolve_max_tokens (non-gpt_oss): thinking clamps to [8192, 32768]."""
    if thinking:
        return min(max(base, THINKING_MIN_TOKENS), THINKING_MAX_TOKENS)
    return base


# ---------------------------------------------------------------- sampling


def deterministic_sample(items: list, n: int, seed: int = SAMPLE_SEED) -> list:
    """omlx datasets.deterministic_sample: Random(42).sample (n == 0 or n >= len: all)."""
    if n == 0 or n >= len(items):
        return list(items)
    return random.Random(seed).sample(items, n)


def stratified_sample(items: list, n: int, key: str = "subject", seed: int = SAMPLE_SEED) -> list:
    """omlx datasets.stratified_sample (proportional; what `mmlu` uses), line for line."""
    if n == 0 or n >= len(items):
        return list(items)
    rng = random.Random(seed)
    groups: dict = {}
    for item in items:
        groups.setdefault(item.get(key, "unknown"), []).append(item)
    total, sampled, remaining = len(items), [], n
    cats = sorted(groups)
    for i, cat in enumerate(cats):
        group = groups[cat]
        if i == len(cats) - 1:
            count = remaining
        else:
            count = max(1, round(len(group) / total * n))
            count = min(count, remaining, len(group))
        selected = rng.sample(group, min(count, len(group)))
        sampled.extend(selected)
        remaining -= len(selected)
        if remaining <= 0:
            break
    return sampled


def uniform_stratified_sample(items: list, n: int, key: str = "subject", min_per_cat: int = 1,
                              seed: int = SAMPLE_SEED) -> list:
    """omlx sampling.uniform_stratified_sample (what `mmlu_uniform` uses)."""
    if not items:
        return []
    groups: dict = {}
    for item in items:
        groups.setdefault(item.get(key, "unknown"), []).append(item)
    rng = random.Random(seed)
    if n < len(groups) * min_per_cat or n >= len(items):
        return list(items)
    base = max(min_per_cat, n // len(groups))
    remainder = n - base * len(groups)
    sampled = []
    for i, cat in enumerate(sorted(groups)):
        count = min(base + (1 if i < remainder else 0), len(groups[cat]))
        sampled.extend(rng.sample(groups[cat], count))
    return sampled


# ---------------------------------------------------------------- MMLU


def subject_title(subject: str) -> str:
    return subject.replace("_", " ").title()


def _letter(answer) -> str:
    return ANSWER_MAP.get(answer, str(answer)) if isinstance(answer, int) else str(answer)


def mmlu_format_question(row: dict) -> str:
    """Question, then "A. ..." lines (choices are not stripped, as in omlx)."""
    return "\n".join([row["question"]] + [f"{ANSWER_MAP[i]}. {c}" for i, c in enumerate(row["choices"])])


def mmlu_fewshot(dev_rows: list, k: int = 5) -> dict:
    """{subject: first k dev rows of that subject in file order} (omlx load_dataset)."""
    out: dict = {}
    for row in dev_rows:
        shots = out.setdefault(row.get("subject", "unknown"), [])
        if len(shots) < k:
            shots.append(row)
    return out


def mmlu_user_text(row: dict, subject: str, fewshot: list) -> str:
    """The one user turn of omlx's MMLU (mmlu.py format_prompt), character for character."""
    parts = [
        f"The following are multiple choice questions about {subject_title(subject)}. "
        f"Answer with just the letter (A, B, C, or D).\n"
    ]
    for ex in fewshot:
        parts.append(mmlu_format_question(ex))
        parts.append(f"Answer: {_letter(ex['answer'])}\n")
    parts.append(mmlu_format_question(row))
    parts.append("Answer:")
    return "\n".join(parts)


def mmlu_messages(row: dict, subject: str, fewshot: list) -> list:
    return [{"role": "user", "content": mmlu_user_text(row, subject, fewshot)}]


def extract_mmlu_answer(response: str) -> str:
    """omlx mmlu.extract_answer: the first standalone A-D, else a leading A-D, else ""."""
    response = response.strip()
    match = re.search(r"\b([ABCD])\b", response)
    if match:
        return match.group(1)
    if response and response[0] in "ABCD":
        return response[0]
    return ""


# ---------------------------------------------------------------- TruthfulQA (omlx's MC1 variant)


def index_letter(i: int) -> str:
    return chr(ord("A") + i)


def truthfulqa_items(rows: list) -> list:
    """omlx truthfulqa.load_dataset: per hub row i, mc1 choices shuffled by Random(42 + i).

    Each item: {"id": str(i), "question", "choices" (shuffled), "answer" (new index)}.
    Rows without an mc1 target labelled 1 are skipped (ids keep the row index)."""
    items = []
    for i, raw in enumerate(rows):
        mc1 = raw.get("mc1_targets") or {}
        choices, labels = mc1.get("choices") or [], mc1.get("labels") or []
        if not choices or not labels or 1 not in list(labels):
            continue
        correct = list(labels).index(1)
        order = list(range(len(choices)))
        random.Random(SAMPLE_SEED + i).shuffle(order)
        items.append({"id": str(i), "question": raw.get("question", ""),
                      "choices": [choices[j] for j in order], "answer": order.index(correct)})
    return items


def truthfulqa_user_text(item: dict) -> str:
    parts = [
        "Answer the following question truthfully. Choose the most accurate answer. "
        "Answer with just the letter.\n",
        f"Question: {item['question']}\n",
    ]
    parts += [f"{index_letter(i)}. {c}" for i, c in enumerate(item["choices"])]
    parts.append("\nAnswer:")
    return "\n".join(parts)


def truthfulqa_messages(item: dict) -> list:
    return [{"role": "user", "content": truthfulqa_user_text(item)}]


def extract_truthfulqa_answer(response: str, n_choices: int) -> str:
    """omlx truthfulqa.extract_answer: first standalone valid letter (A..), else leading one."""
    response = response.strip()
    valid = [index_letter(i) for i in range(n_choices)]
    match = re.search(r"\b([" + "".join(valid) + r"])\b", response)
    if match:
        return match.group(1)
    if response and response[0] in valid:
        return response[0]
    return ""


# ---------------------------------------------------------------- code execution glue

# run(script) -> (passed, error text); omlx runs `python3 file` with 15 s and 256 MB.
Runner = Callable[[str], tuple]


def sandbox_runner(timeout: float = 15.0, memory_mb: int = 256) -> Runner:
    """A Runner over harness.runtime.sandbox with omlx's limits (15 s, 256 MB)."""
    from harness.runtime.sandbox import run_python

    def run(script: str) -> tuple:
        r = run_python(script, timeout=timeout, memory_mb=memory_mb)
        if r.status == "timeout":
            return False, "Execution timed out"
        return r.passed, "" if r.passed else r.stderr_tail[-500:]

    return run


def classify_error(error: str, entry_point: Optional[str] = None) -> str:
    """omlx humaneval._classify_error (mbpp's differs only for NameError: pass entry_point=None
    and it reports missing_entry_point for every NameError, as mbpp does)."""
    if not error:
        return "wrong_answer"
    if "IndentationError" in error:
        return "indentation_error"
    if "SyntaxError" in error:
        return "syntax_error"
    if "NameError" in error and "is not defined" in error:
        if entry_point is None:
            return "missing_entry_point"
        if f"name '{entry_point}' is not defined" in error:
            return "missing_entry_point"
        return "runtime_error"
    if "AssertionError" in error:
        return "wrong_answer"
    if "timed out" in error.lower():
        return "timeout"
    return "runtime_error"


_SYNTAX = ("syntax_error", "indentation_error")


# ---------------------------------------------------------------- HumanEval


# pass modes that are not the plain HumanEval completion (prompt + raw response):
# counted as passes by omlx, reported separately by us.
LENIENT_MODES = frozenset({
    "standalone_function", "canonical_extracted", "canonical_indented", "canonical_top_level_indent",
    "canonical_normalize_indent", "setup_after_code", "tolerant_numeric_asserts",
    "setup_after_code_tolerant_numeric_asserts",
})


def humaneval_user_text(prompt: str) -> str:
    return ("Complete the following Python function. "
            "Return only the missing indented function body, no explanations.\n\n"
            f"{prompt}")


def humaneval_messages(prompt: str) -> list:
    return [{"role": "user", "content": humaneval_user_text(prompt)}]


def _prompt_imports(prompt: str) -> str:
    return "\n".join(line for line in prompt.split("\n") if line.strip().startswith(("import ", "from ")))


def _has_imports(code: str) -> bool:
    return any(line.strip().startswith(("import ", "from ")) for line in code.split("\n"))


def _with_imports(code: str, prompt: str) -> str:
    imports = _prompt_imports(prompt)
    if imports and "def " in code and not _has_imports(code):
        return imports + "\n\n" + code
    return code


def extract_response_code(response: str) -> str:
    """The last ```python (else any ```) block, body indentation kept; else the response."""
    response = response.strip("\n")
    for pattern in (r"(?ms)^[ \t]*`{3,}[ \t]*(?:python|py)[^\n]*\n(.*?)[ \t]*`{3,}[ \t]*$",
                    r"(?ms)^[ \t]*`{3,}[^\n]*\n(.*?)[ \t]*`{3,}[ \t]*$"):
        blocks = re.findall(pattern, response)
        if blocks:
            return blocks[-1].strip("\n")
    return response


def indent_body_if_needed(body: str) -> str:
    """Repair: indent a body whose first code line arrived at column 0."""
    body = body.strip("\n")
    first = next((line for line in body.split("\n") if line.strip()), "")
    if not first or first[:1].isspace():
        return body
    return textwrap.indent(body, "    ")


def indent_top_level_lines(body: str) -> str:
    """Repair: indent only the lines at column 0."""
    return "\n".join("    " + line if line.strip() and not line[:1].isspace() else line
                     for line in body.strip("\n").split("\n"))


def normalize_body_indentation(body: str) -> str:
    """Repair: first line at 0, the rest over-indented (0 -> 4, 8 -> 4, 12 -> 8)."""
    lines = body.strip("\n").split("\n")
    indents = [len(line) - len(line.lstrip(" ")) for line in lines if line.strip()]
    nonzero = [i for i in indents if i > 0]
    if not nonzero:
        return textwrap.indent("\n".join(lines), "    ")
    dedent = max(0, min(nonzero) - 4)
    out = []
    for line in lines:
        indent = len(line) - len(line.lstrip(" "))
        if not line.strip():
            out.append(line)
        elif indent == 0:
            out.append("    " + line)
        elif dedent > 0 and indent >= dedent:
            out.append(line[dedent:])
        else:
            out.append(line)
    return "\n".join(out)


def humaneval_candidates(response: str, prompt: str) -> list:
    """[(pass_mode, program source)] in omlx's order (humaneval._candidate_codes), deduplicated.
    Only "canonical_raw" is the strict HumanEval completion; the rest are lenient repairs."""
    extracted = extract_response_code(response)
    if "def " in extracted:
        cands = [("standalone_function", _with_imports(extracted, prompt)), ("canonical_raw", prompt + response)]
        if extracted != response:
            cands.append(("canonical_extracted", prompt + extracted))
        cands.append(("canonical_normalize_indent", prompt + normalize_body_indentation(extracted)))
    else:
        cands = [("canonical_raw", prompt + response)]
        if extracted != response:
            cands.append(("canonical_extracted", prompt + extracted))
        cands += [("canonical_indented", prompt + indent_body_if_needed(extracted)),
                  ("canonical_top_level_indent", prompt + indent_top_level_lines(extracted)),
                  ("canonical_normalize_indent", prompt + normalize_body_indentation(extracted))]
    seen, unique = set(), []
    for mode, code in cands:
        if code not in seen:
            seen.add(code)
            unique.append((mode, code))
    return unique


def humaneval_script(code: str, test: str, entry_point: str) -> str:
    return f"{code}\n\n{test}\n\ncheck({entry_point})\n"


def humaneval_evaluate(response: str, item: dict, run: Runner) -> dict:
    """omlx HumanEvalBenchmark.evaluate_response: the first passing candidate wins.

    item: {"prompt", "test", "entry_point"}. Returns {"passed", "pass_mode", "lenient",
    "failure_type", "error", "code"}; on failure the first candidate's failure unless a
    later one got past syntax errors (omlx's best_failure rule)."""
    best = None
    for mode, code in humaneval_candidates(response, item["prompt"]):
        passed, error = run(humaneval_script(code, item["test"], item["entry_point"]))
        if passed:
            return {"passed": True, "pass_mode": mode, "lenient": mode in LENIENT_MODES,
                    "failure_type": "passed", "error": "", "code": code}
        failure = classify_error(error, item["entry_point"])
        if best is None or (best["failure_type"] in _SYNTAX and failure not in _SYNTAX):
            best = {"passed": False, "pass_mode": mode, "lenient": False, "failure_type": failure,
                    "error": error, "code": code}
    return best or {"passed": False, "pass_mode": "", "lenient": False, "failure_type": "runtime_error",
                    "error": "No candidate code produced", "code": ""}


# ---------------------------------------------------------------- MBPP


def mbpp_user_text(prompt: str, test_list: list) -> str:
    test_str = "\n".join(test_list[:3])
    return ("Write a Python function to solve the following problem. "
            "Provide only the complete function implementation, no explanations.\n\n"
            f"Problem: {prompt}\n\n"
            f"Test cases:\n{test_str}\n\n"
            "Solution:")


def mbpp_messages(prompt: str, test_list: list) -> list:
    return [{"role": "user", "content": mbpp_user_text(prompt, test_list)}]


def extract_last_code_block(response: str) -> str:
    """omlx base._extract_last_code_block: last ```python block, else last ``` block, else the
    lines from the first def/class/import/from/# line on, else the whole response."""
    response = response.strip()
    for pattern in (r"```python\s*\n(.*?)```", r"```\s*\n(.*?)```"):
        blocks = re.findall(pattern, response, re.DOTALL)
        if blocks:
            return blocks[-1].strip()
    code, started = [], False
    for line in response.split("\n"):
        if not started and line.startswith(("def ", "class ", "import ", "from ", "#")):
            started = True
        if started:
            code.append(line)
    return "\n".join(code) if code else response


TOLERANT_ASSERT_HELPER = r"""
import math as _omlx_math

def _omlx_close_equal(a, b):
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return _omlx_math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_omlx_close_equal(x, y) for x, y in zip(a, b))
    return a == b
"""


def tolerant_assert_tests(test_list: list) -> list:
    """Rewrite `assert X == Y` into `assert _omlx_close_equal(X, Y)` (tiny numeric drift passes)."""
    import ast

    out = []
    for test in test_list:
        try:
            module = ast.parse(test)
        except SyntaxError:
            out.append(test)
            continue
        body = module.body
        if (len(body) == 1 and isinstance(body[0], ast.Assert) and isinstance(body[0].test, ast.Compare)
                and len(body[0].test.ops) == 1 and isinstance(body[0].test.ops[0], ast.Eq)
                and len(body[0].test.comparators) == 1):
            cmp = body[0].test
            out.append(f"assert _omlx_close_equal({ast.unparse(cmp.left)}, {ast.unparse(cmp.comparators[0])})")
        else:
            out.append(test)
    return out


def mbpp_script(code: str, test_list: list, setup: str = "", tolerant: bool = False,
                setup_after_code: bool = False) -> str:
    setup = setup or ""
    tests = "\n".join(tolerant_assert_tests(test_list) if tolerant else test_list)
    helper = TOLERANT_ASSERT_HELPER if tolerant else ""
    if setup_after_code:
        return f"{code}\n{setup}\n{helper}\n{tests}\n"
    return f"{setup}\n{code}\n{helper}\n{tests}\n"


def mbpp_evaluate(response: str, item: dict, run: Runner) -> dict:
    """omlx mbpp: last code block, then mbpp._run_with_tests's retries (setup after code when
    the setup broke compilation, tolerant asserts after a wrong answer). item: {"test_list",
    "test_setup_code"?}. Returns {"passed", "pass_mode", "lenient", "failure_type", "error", "code"}."""
    code = extract_last_code_block(response)
    tests, setup = item["test_list"], item.get("test_setup_code", "") or ""

    def ok(mode):
        return {"passed": True, "pass_mode": mode, "lenient": mode in LENIENT_MODES,
                "failure_type": "passed", "error": "", "code": code}

    passed, error = run(mbpp_script(code, tests, setup))
    if passed:
        return ok("standalone_code")
    best_error, best = error, classify_error(error)
    hard = _SYNTAX + ("missing_entry_point",)
    if setup.strip():
        passed, error2 = run(mbpp_script(code, tests, setup, setup_after_code=True))
        if passed:
            return ok("setup_after_code")
        failure2 = classify_error(error2)
        if best in hard and failure2 not in hard:
            best_error, best = error2, failure2
    if best == "wrong_answer":
        for after, mode in ((False, "tolerant_numeric_asserts"), (True, "setup_after_code_tolerant_numeric_asserts")):
            if after and not setup.strip():
                continue
            passed, error3 = run(mbpp_script(code, tests, setup, tolerant=True, setup_after_code=after))
            if passed:
                return ok(mode)
            best_error = error3 or best_error
    return {"passed": False, "pass_mode": "", "lenient": False, "failure_type": classify_error(best_error),
            "error": best_error, "code": code}
