"""Our speed suite vs `mlx_lm.benchmark` on the same artifact and context lengths.

    python benchmarks/speed_vs_mlx_lm.py --model PATH_OR_SPEC [--contexts 1024,4096]
        [--gen-tokens 128] [--trials 1] [--rounds 3]

For each context: `python -m mlx_lm.benchmark -p CONTEXT -g GEN -n TRIALS` in a
subprocess, and our speed suite in another fresh subprocess of the same
interpreter (same LD_PRELOAD, so the same BLAS; this script re-run with
--worker) on the same directory, loaded as mlx_lm.benchmark loads it
(`mlx_lm.load`, native kernels, stored dtype; the harness itself upcasts to
fp32 on CPU, which for an fp32 model like the converted SmolLM2 is the same).
Both do one warm-up run, then `--trials` timed runs (mlx_lm.benchmark prints
their mean; so do we here). Load and clock drift between runs, so the two
sides alternate `--rounds` times per context, who goes first alternating too,
and we print the median over rounds of each side and of the per-round ratio
(the paired comparison). Generation at batch 1 is memory-bound and a single
trial varies by a few %, so use --trials 3 for a tight comparison.
Target: within ±5 %.
"""

import argparse
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.runtime.blas import ensure_openblas  # noqa: E402
from harness.sources import resolve_model  # noqa: E402




AVERAGES = re.compile(r"Averages: prompt_tps=([\d.]+), generation_tps=([\d.]+), peak_memory=([\d.]+)")


def run_mlx_lm_benchmark(path: Path, context: int, gen_tokens: int, trials: int) -> dict:
    cmd = [sys.executable, "-m", "mlx_lm.benchmark", "--model", str(path), "-p", str(context),
           "-g", str(gen_tokens), "-n", str(trials)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    m = AVERAGES.search(out.stdout)
    if out.returncode != 0 or not m:
        raise SystemExit(f"mlx_lm.benchmark failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return {"prompt_tps": float(m.group(1)), "generation_tps": float(m.group(2)), "peak_memory_gb": float(m.group(3))}


def run_ours(path: Path, context: int, gen_tokens: int, trials: int) -> dict:
    """Our speed suite in a fresh process, like mlx_lm.benchmark's side."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--model", str(path), "--contexts",
           str(context), "--gen-tokens", str(gen_tokens), "--trials", str(trials)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"speed suite worker failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def worker(path: Path, context: int, gen_tokens: int, trials: int) -> dict:
    from mlx_lm import load

    from harness.suite import SuiteContext
    from harness.suites.speed import SpeedSuite

    model, tokenizer = load(str(path))  # exactly as mlx_lm.benchmark loads it
    ctx = SuiteContext(model=model, tokenizer=tokenizer, artifact=path, exec_mode="native", reference=None,
                       options={"contexts": str(context), "gen_tokens": gen_tokens, "trials": trials},
                       progress=False)
    suite = SpeedSuite()
    (record,) = list(suite.run(ctx, suite.items(ctx)))
    return {
        "prompt_tps": statistics.fmean(t["prompt_tps"] for t in record["trials"]),
        "generation_tps": statistics.fmean(t["generation_tps"] for t in record["trials"]),
        "peak_memory_gb": record["peak_memory_gb"],
        "record": record,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="mlx-lm model dir, or a harness model spec (smollm2-135m)")
    ap.add_argument("--contexts", default="1024,4096")
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--trials", type=int, default=1, help="timed trials per run (each side, each round)")
    ap.add_argument("--rounds", type=int, default=3, help="alternations of the two sides per context")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # our side, in a child process
    args = ap.parse_args()
    ensure_openblas()
    if args.worker:
        print(json.dumps(worker(Path(args.model), int(args.contexts), args.gen_tokens, args.trials)))
        return 0

    from tabulate import tabulate

    from harness.suites.speed import context_label, hardware_info

    path = resolve_model(args.model)
    hw = hardware_info()
    print(f"{path}\n{hw['cpu']} x{hw['cpu_count']}, {hw['memory_gb']} GB, {hw['device']}, "
          f"OpenBLAS {'on' if hw['openblas'] else 'OFF'}, mlx {hw['mlx']}, mlx-lm {hw['mlx_lm']}", file=sys.stderr)
    contexts = [int(c) for c in args.contexts.split(",")]
    rows = []
    for n in contexts:
        theirs, ours = [], []
        for r in range(args.rounds):
            sides = [(theirs, run_mlx_lm_benchmark), (ours, run_ours)]
            for results, run in sides if r % 2 == 0 else sides[::-1]:
                results.append(run(path, n, args.gen_tokens, args.trials))
            print(f"  {context_label(n)} round {r + 1}: mlx_lm PP {theirs[-1]['prompt_tps']:.1f} TG "
                  f"{theirs[-1]['generation_tps']:.1f} | ours PP {ours[-1]['prompt_tps']:.1f} TG "
                  f"{ours[-1]['generation_tps']:.1f}", file=sys.stderr)
        for kind, key in (("PP", "prompt_tps"), ("TG", "generation_tps")):
            a = statistics.median(t[key] for t in theirs)
            b = statistics.median(o[key] for o in ours)
            paired = statistics.median(o[key] / t[key] for o, t in zip(ours, theirs))
            rows.append([context_label(n), kind, f"{a:.1f}", f"{b:.1f}", f"{100 * (b / a - 1):+.1f} %",
                         f"{100 * (paired - 1):+.1f} %", "ok" if abs(paired - 1) <= 0.05 else "outside ±5 %"])
        rows.append([context_label(n), "peak GB", f"{max(t['peak_memory_gb'] for t in theirs):.2f}",
                     f"{max(o['peak_memory_gb'] for o in ours):.2f}", "", "", ""])
    print(tabulate(rows, headers=["Context", "", "mlx_lm.benchmark", "ours", "ours vs mlx_lm",
                                  "paired (median of rounds)", ""], tablefmt="github", disable_numparse=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
