"""Our speed suite vs `mlx_lm.benchmark` on the same artifact and context lengths.

    python benchmarks/speed_vs_mlx_lm.py --model PATH_OR_SPEC [--contexts 1024,4096]
        [--gen-tokens 128] [--trials 3] [--rounds 1]

For each context: `python -m mlx_lm.benchmark -p CONTEXT -g GEN -n TRIALS` in a
subprocess (same interpreter, same LD_PRELOAD, so the same BLAS) and our speed
suite in this process on the same directory, loaded as mlx_lm.benchmark loads
it (`mlx_lm.load`, native kernels, stored dtype; the harness itself upcasts to
fp32 on CPU, which for an fp32 model like the converted SmolLM2 is the same). mlx_lm.benchmark prints the
mean over trials; for a like-for-like comparison we print our mean as well as
our median. The two sides alternate per context (`--rounds N` repeats the
alternation and keeps each side's best round), since on a shared machine the
load drifts. Target: within ±5 %.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def ensure_openblas() -> None:
    """Re-exec this script once with OpenBLAS preloaded (MLX's CPU wheel ships reference BLAS)."""
    from harness.blas import find_openblas, openblas_loaded

    if not sys.platform.startswith("linux") or openblas_loaded() or os.environ.get("_SPEED_BENCH_REEXEC"):
        return
    lib = find_openblas()
    if lib is None:
        print("note: OpenBLAS not found; fp32 matmuls use the slow reference BLAS "
              "(apt-get install -y libopenblas0-pthread)", file=sys.stderr)
        return
    env = dict(os.environ, _SPEED_BENCH_REEXEC="1")
    env["LD_PRELOAD"] = ":".join(p for p in (lib, env.get("LD_PRELOAD", "")) if p)
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def resolve(spec: str) -> Path:
    path = Path(spec).expanduser()
    if path.is_dir():
        return path.resolve()
    from harness.sources import resolve_model

    return resolve_model(spec)


AVERAGES = re.compile(r"Averages: prompt_tps=([\d.]+), generation_tps=([\d.]+), peak_memory=([\d.]+)")


def run_mlx_lm_benchmark(path: Path, context: int, gen_tokens: int, trials: int) -> dict:
    cmd = [sys.executable, "-m", "mlx_lm.benchmark", "--model", str(path), "-p", str(context),
           "-g", str(gen_tokens), "-n", str(trials)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    m = AVERAGES.search(out.stdout)
    if out.returncode != 0 or not m:
        raise SystemExit(f"mlx_lm.benchmark failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return {"prompt_tps": float(m.group(1)), "generation_tps": float(m.group(2)), "peak_memory_gb": float(m.group(3))}


def run_ours(model, tokenizer, path: Path, context: int, gen_tokens: int, trials: int) -> dict:
    from harness.suite import SuiteContext
    from suites.speed import SpeedSuite

    ctx = SuiteContext(model=model, tokenizer=tokenizer, artifact=path, exec_mode="native", reference=None,
                       options={"contexts": str(context), "gen_tokens": gen_tokens, "trials": trials},
                       progress=False)
    suite = SpeedSuite()
    (record,) = list(suite.run(ctx, suite.items(ctx)))
    return {
        "prompt_tps": statistics.fmean(t["prompt_tps"] for t in record["trials"]),
        "generation_tps": statistics.fmean(t["generation_tps"] for t in record["trials"]),
        "prompt_tps_median": record["prompt_tps"],
        "generation_tps_median": record["generation_tps"],
        "peak_memory_gb": record["peak_memory_gb"],
        "record": record,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="mlx-lm model dir, or a harness model spec (smollm2-135m)")
    ap.add_argument("--contexts", default="1024,4096")
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    ensure_openblas()

    from tabulate import tabulate

    from mlx_lm import load

    from suites.speed import context_label, hardware_info

    path = resolve(args.model)
    model, tokenizer = load(str(path))  # exactly as mlx_lm.benchmark loads it
    hw = hardware_info()
    print(f"{path}\n{hw['cpu']} x{hw['cpu_count']}, {hw['memory_gb']} GB, {hw['device']}, "
          f"OpenBLAS {'on' if hw['openblas'] else 'OFF'}, mlx {hw['mlx']}, mlx-lm {hw['mlx_lm']}", file=sys.stderr)
    contexts = [int(c) for c in args.contexts.split(",")]
    rows = []
    for n in contexts:
        best_theirs, best_ours = None, None
        for r in range(args.rounds):
            theirs = run_mlx_lm_benchmark(path, n, args.gen_tokens, args.trials)
            ours = run_ours(model, tokenizer, path, n, args.gen_tokens, args.trials)
            print(f"  {context_label(n)} round {r + 1}: mlx_lm PP {theirs['prompt_tps']:.1f} TG "
                  f"{theirs['generation_tps']:.1f} | ours PP {ours['prompt_tps']:.1f} TG "
                  f"{ours['generation_tps']:.1f}", file=sys.stderr)
            if best_theirs is None or theirs["prompt_tps"] > best_theirs["prompt_tps"]:
                best_theirs = theirs
            if best_ours is None or ours["prompt_tps"] > best_ours["prompt_tps"]:
                best_ours = ours
        for kind, key in (("PP", "prompt_tps"), ("TG", "generation_tps")):
            ratio = best_ours[key] / best_theirs[key]
            rows.append([context_label(n), kind, f"{best_theirs[key]:.1f}", f"{best_ours[key]:.1f}",
                         f"{best_ours[key + '_median']:.1f}", f"{100 * (ratio - 1):+.1f} %",
                         "ok" if abs(ratio - 1) <= 0.05 else "outside ±5 %"])
        rows.append([context_label(n), "peak GB", f"{best_theirs['peak_memory_gb']:.2f}",
                     f"{best_ours['peak_memory_gb']:.2f}", "", "", ""])
    print(tabulate(rows, headers=["Context", "", "mlx_lm.benchmark (mean)", "ours (mean)", "ours (median)",
                                  "ours vs mlx_lm", ""], tablefmt="github", disable_numparse=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
