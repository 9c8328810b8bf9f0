"""Simulated vs native execution of the fidelity suite on the same quantized artifact.

Prints, side by side, the wall time and the perplexity/KLD each mode measures on
identical token windows. Targets (issue 7): simulated >= 20x faster on CPU, |delta ppl| < 1e-3.

    python benchmarks/simulated_vs_native.py [--model smollm2-135m] [--recipe uniform4] [--windows 4]

The float reference pass is computed (and cached) first, so both timed runs do
exactly the same work: one forward per window + the comparison with the cache.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

from harness.runtime.blas import ensure_openblas


def run_mode(artifact: Path, mode: str, windows: int, seq_len: int, reference, ref_path: Path, cache_dir: Path):
    from harness.runtime.execution import load_artifact
    from harness.suite import SuiteContext
    from harness.suites.fidelity import FidelitySuite

    t0 = time.perf_counter()
    model, tokenizer, resolved = load_artifact(artifact, mode)
    load_s = time.perf_counter() - t0
    ctx = SuiteContext(model=model, tokenizer=tokenizer, artifact=artifact, exec_mode=resolved,
                       reference=reference, reference_path=ref_path, limit=windows,
                       options={"seq_len": seq_len, "num_windows": windows},
                       cache_dir=cache_dir, progress=False)
    suite = FidelitySuite()
    items = suite.items(ctx)
    t0 = time.perf_counter()
    records = list(suite.run(ctx, items))
    run_s = time.perf_counter() - t0
    return suite.summarize(ctx, records), load_s, run_s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--recipe", default="uniform4")
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=512)
    args = ap.parse_args()
    ensure_openblas()

    from harness.builder import BuildOptions, build
    from harness.runtime.execution import load_artifact

    artifact = build(BuildOptions(model=args.model, recipe=args.recipe, progress=False), log=lambda m: None).path
    ref_path = build(BuildOptions(model=args.model, recipe="float", progress=False), log=lambda m: None).path
    ref = {}

    def reference():
        if not ref:
            ref["m"] = load_artifact(ref_path, "native")[:2]
        return ref["m"]

    with tempfile.TemporaryDirectory(prefix="sim-vs-native-") as tmp:
        cache_dir = Path(tmp)
        # fill the reference cache (a model's reference is cached on disk, keyed by its path's
        # fingerprint) so neither timed run pays for the float pass
        run_mode(artifact, "simulated", args.windows, args.seq_len, reference, ref_path, cache_dir)
        sim, sim_load, sim_run = run_mode(artifact, "simulated", args.windows, args.seq_len, reference, ref_path,
                                          cache_dir)
        nat, nat_load, nat_run = run_mode(artifact, "native", args.windows, args.seq_len, reference, ref_path,
                                          cache_dir)
    tokens = args.windows * args.seq_len
    rows = [
        ("native", f"{nat['ppl']:.4f}", f"{nat['kld_mean']:.5f}", f"{nat_load:.1f}", f"{nat_run:.1f}",
         f"{tokens / nat_run:.0f}"),
        ("simulated", f"{sim['ppl']:.4f}", f"{sim['kld_mean']:.5f}", f"{sim_load:.1f}", f"{sim_run:.1f}",
         f"{tokens / sim_run:.0f}"),
    ]
    print(f"{args.recipe} on {args.model}: {args.windows} x {args.seq_len} tokens, fidelity suite, same artifact")
    print(tabulate(rows, headers=["exec", "ppl", "KLD mean", "load s", "run s", "tok/s"]))
    dppl = abs(nat["ppl"] - sim["ppl"])
    speedup = nat_run / sim_run
    print(f"\nspeed-up simulated/native: {speedup:.1f}x (target >= 20x) | |delta ppl| = {dppl:.2e} (target < 1e-3)")
    print(f"verdict: {'PASS' if speedup >= 20 and dppl < 1e-3 else 'MISS'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
