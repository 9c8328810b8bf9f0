"""HumanEval's 164 canonical solutions: the old in-process verdict (main's
sandbox, one program = prompt + solution + tests) vs the new judge (candidate
process + separate judge process, plain data between them).

    .venv/bin/python benchmarks/sandbox_judge.py [--workers 2] [--repeat 3] [--old-ref main]

Prints pass counts and wall time of each, interleaved over --repeat rounds (the
machine may be shared: compare the medians), and the new/old ratio. The old
sandbox is main's harness/runtime/sandbox.py taken with `git show`, run as it is.
"""

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_old(ref: str):
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:harness/runtime/sandbox.py"],
                            check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="sandbox-old-")) / "sandbox_old.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("sandbox_old", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--old-ref", default="main", help="git ref whose sandbox.py is 'old'")
    args = ap.parse_args()

    from harness.runtime.sandbox import isolation, judge_many
    from harness.suites import humaneval

    old = load_old(args.old_ref)
    items, _, _ = humaneval.load_problems("offline")
    full = [humaneval.full_program(it, it["canonical_solution"]) for it in items]
    pairs = [(humaneval.build_program(it, it["canonical_solution"], chat=False), humaneval.judge_spec(it))
             for it in items]
    print(f"isolation: {isolation()}; {len(items)} problems, {args.workers} workers")
    times = {"old": [], "new": []}
    for rnd in range(args.repeat):
        for label in ("old", "new"):
            start = time.monotonic()
            if label == "old":
                results = old.run_many(full, workers=args.workers)
            else:
                results = judge_many(pairs, workers=args.workers)
            seconds = time.monotonic() - start
            times[label].append(seconds)
            passed = sum(r.passed for r in results)
            print(f"round {rnd + 1} {label}: {passed}/{len(results)} passed in {seconds:.2f} s "
                  f"({seconds / len(results) * 1000:.1f} ms per problem)", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"median wall time: old {med['old']:.2f} s, new {med['new']:.2f} s, "
          f"new/old = {med['new'] / med['old']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
