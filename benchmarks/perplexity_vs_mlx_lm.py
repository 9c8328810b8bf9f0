"""Our fidelity suite's perplexity vs `mlx_lm.perplexity` on the same model and token windows.

    python benchmarks/perplexity_vs_mlx_lm.py --model PATH_OR_SPEC [--num-samples 64]
        [--sequence-length 512] [--seed 123] [--chunk 8]

Same windows: the BoolQ passages are written as a local dataset (train.jsonl) and
mlx-lm's own `mlx_lm.perplexity.load_data` tokenizes and windows them (its seeded
permutation); our corpus module with windowing=mlx_lm must give the identical
token array (checked, the script stops otherwise).

Same model: both sides run the model exactly as `mlx_lm.load` returns it, upcast
to fp32 on CPU (what harness.runtime.execution does). mlx-lm scores with its
`eval_ppl(model, data, batch_size=8)`; we run the fidelity suite with the model as
its own reference (which also yields KL = 0, top-1 = 1 as a check), once to fill
the reference cache (timed separately: the one-time reference pass), then again
against the cached reference (the pass every quantized model pays).

Timing on a shared machine: the two sides are interleaved chunk by chunk
(`--chunk` windows each, default 8 = mlx-lm's batch), so load changes hit both
alike; per-chunk results combine exactly into the totals (equal tokens per
chunk). Printed: ppl ± stderr each, Δppl (target: relative < 1e-3), seconds,
tok/s, the tok/s ratio (target >= 2x), peak memory, achieved GFLOP/s (2 x
parameters per token) against a measured fp32 GEMM peak, and one window's mean
NLL computed exactly in float64 next to both sides (MLX's fp32 logsumexp on CPU
is off by ~1e-4 nats; ours uses a float64 accumulation and is within ~1e-7).
"""

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.runtime.blas import ensure_openblas  # noqa: E402
from harness.sources import resolve_model  # noqa: E402




def gemm_peak_gflops(n: int = 1024, reps: int = 5) -> float:
    """Best-of-reps fp32 GEMM rate of this process (the FLOP roofline)."""
    import mlx.core as mx

    a, b = mx.random.normal((n, n)), mx.random.normal((n, n))
    mx.eval(a @ b)
    best = float("inf")
    for _ in range(reps):
        tic = time.perf_counter()
        mx.eval(a @ b)
        best = min(best, time.perf_counter() - tic)
    return 2 * n**3 / best / 1e9


def mlx_lm_windows(tokenizer, num_samples: int, seq_len: int, seed: int):
    """mlx_lm.perplexity.load_data on the BoolQ passages written as a local dataset."""
    import numpy as np
    from mlx_lm.perplexity import load_data

    from harness.data.corpus import load_texts, write_jsonl

    texts, _ = load_texts("boolq")
    with tempfile.TemporaryDirectory() as tmp:
        write_jsonl(texts, Path(tmp))
        np.random.seed(seed)  # what mlx_lm.perplexity's main() does before load_data
        return np.array(load_data(tokenizer, tmp, num_samples=num_samples, sequence_length=seq_len))


def combine(chunks: list) -> tuple:
    """(ppl, stderr) over equal-size chunks from each chunk's (ppl, stderr, n_tokens),
    exactly as mlx_lm's eval_ppl would give on all of them at once."""
    n = sum(c[2] for c in chunks)
    means = [math.log(c[0]) for c in chunks]
    mean = sum(m * c[2] for m, c in zip(means, chunks)) / n
    # per chunk: se = ppl * sd / sqrt(n_i), sd with ddof=1
    ss = sum((c[2] - 1) * (c[1] / c[0] * math.sqrt(c[2])) ** 2 + c[2] * (m - mean) ** 2
             for m, c in zip(means, chunks))
    ppl = math.exp(mean)
    return ppl, ppl * math.sqrt(ss / (n - 1)) / math.sqrt(n)


def nll_check(model, window) -> dict:
    """Mean NLL of one window three ways from the same fp32 logits: float64 numpy
    (exact), mlx_lm's cross_entropy, and our one-pass log-softmax."""
    import mlx.core as mx
    import mlx.nn as nn
    import numpy as np

    from harness.suites.fidelity import reference_entries

    logits = model(mx.array(window[None, :-1]))[0].astype(mx.float32)
    targets = window[1:]
    theirs = nn.losses.cross_entropy(logits, mx.array(targets), reduction="none").mean().item()
    a = np.array(logits)
    exact = a.astype(np.float64)
    exact = np.logaddexp.reduce(exact, axis=-1) - exact[np.arange(len(targets)), targets]
    ours = reference_entries(a.copy(), targets, -12.0)["nll"].astype(np.float64)
    return {"exact": float(exact.mean()), "mlx_lm": theirs, "ours": float(ours.mean())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="mlx-lm model dir, or a harness model spec (smollm2-135m)")
    ap.add_argument("--num-samples", type=int, default=64)
    ap.add_argument("--sequence-length", type=int, default=512)
    ap.add_argument("--seed", type=int, default=123)
    ap.add_argument("--batch-size", type=int, default=8, help="mlx_lm eval_ppl batch size")
    ap.add_argument("--chunk", type=int, default=8, help="windows per interleaved timing chunk")
    args = ap.parse_args()
    ensure_openblas()

    import mlx.core as mx
    import numpy as np
    from mlx_lm import load
    from mlx_lm.perplexity import eval_ppl
    from mlx_lm.utils import get_total_parameters

    from harness.runtime.blas import openblas_loaded
    from harness.runtime.execution import on_gpu
    from harness.suite import SuiteContext
    from harness.suites.fidelity import FidelitySuite

    path = resolve_model(args.model)
    model, tokenizer = load(str(path))
    if not on_gpu():
        model.set_dtype(mx.float32)
    mx.eval(model.parameters())
    params = get_total_parameters(model)
    print(f"model {path} ({params / 1e6:.1f}M params), OpenBLAS {'on' if openblas_loaded() else 'OFF'}, "
          f"device {mx.default_device()}", file=sys.stderr)

    theirs = mlx_lm_windows(tokenizer, args.num_samples, args.sequence_length, args.seed)
    suite = FidelitySuite()
    with tempfile.TemporaryDirectory() as cache:
        options = {"seq_len": args.sequence_length, "num_windows": args.num_samples,
                   "windowing": "mlx_lm", "window_seed": args.seed}
        ctx = SuiteContext(model=model, tokenizer=tokenizer, artifact=path, exec_mode="native",
                           reference=lambda: (model, tokenizer), reference_path=path, options=options,
                           cache_dir=Path(cache), progress=False)
        _, ours_w = suite.windows(ctx)
        if ours_w.tokens.shape != theirs.shape or not (ours_w.tokens == theirs).all():
            print(f"windows differ: ours {ours_w.tokens.shape} vs mlx_lm {theirs.shape}", file=sys.stderr)
            return 1
        print(f"identical windows: {theirs.shape[0]} x {theirs.shape[1]} tokens, sha256 {ours_w.sha256[:16]}",
              file=sys.stderr)
        items = suite.items(ctx)

        # one-time reference pass (fills the cache; the float model is its own reference)
        tic = time.perf_counter()
        list(suite.run(ctx, items))
        t_ref = time.perf_counter() - tic

        data = mx.array(theirs)
        t_mlx = t_ours = 0.0
        peak_mlx = peak_ours = 0.0
        chunks, records = [], []
        cached = FidelitySuite()  # fresh object: reference entries come from the disk cache
        for s in range(0, len(items), args.chunk):
            mx.reset_peak_memory()
            tic = time.perf_counter()
            ppl_c, se_c = eval_ppl(model, data[s : s + args.chunk], batch_size=args.batch_size)
            t_mlx += time.perf_counter() - tic
            peak_mlx = max(peak_mlx, mx.get_peak_memory() / 1e9)
            chunks.append((ppl_c, se_c, min(args.chunk, len(items) - s) * (args.sequence_length - 1)))
            mx.reset_peak_memory()
            tic = time.perf_counter()
            records += list(cached.run(ctx, items[s : s + args.chunk]))
            t_ours += time.perf_counter() - tic
            peak_ours = max(peak_ours, mx.get_peak_memory() / 1e9)
            print(f"  chunk {s // args.chunk + 1}/{math.ceil(len(items) / args.chunk)}: "
                  f"mlx_lm {t_mlx:.1f}s, ours {t_ours:.1f}s", file=sys.stderr)
        summary = cached.summarize(ctx, records)

    ppl_mlx, se_mlx = combine(chunks)
    exact = nll_check(model, theirs[0])
    tokens = theirs.shape[0] * (theirs.shape[1] - 1)
    peak = gemm_peak_gflops()
    flop = 2 * params * tokens / 1e9

    def row(name, ppl, se, t, mem):
        return (f"{name:<28} ppl {ppl:9.4f} ± {se:6.4f}   {t:7.1f} s   {tokens / t:7.1f} tok/s   "
                f"peak {mem:5.2f} GB   {flop / t:6.1f} GFLOP/s ({100 * flop / t / peak:4.1f} % of {peak:.0f})")

    print()
    print(f"{tokens} scored tokens ({theirs.shape[0]} windows x {theirs.shape[1] - 1})")
    print(row("mlx_lm.perplexity (eval_ppl)", ppl_mlx, se_mlx, t_mlx, peak_mlx))
    print(row("harness fidelity (cached ref)", summary["ppl"], summary["ppl_err"], t_ours, peak_ours))
    print(f"{'harness reference pass':<28} {'':26}{t_ref:7.1f} s   {tokens / t_ref:7.1f} tok/s   (once per model)")
    rel = abs(summary["ppl"] - ppl_mlx) / ppl_mlx
    print(f"Δppl = {summary['ppl'] - ppl_mlx:+.2e} (relative {rel:.1e}, target < 1e-3);  tok/s ratio "
          f"ours/mlx_lm = {t_mlx / t_ours:.2f}x (target >= 2x)")
    print(f"window 0 mean NLL: float64 exact {exact['exact']:.7f}, mlx_lm {exact['mlx_lm']:.7f} "
          f"({exact['mlx_lm'] - exact['exact']:+.1e}: mx.logsumexp's fp32 error), "
          f"ours {exact['ours']:.7f} ({exact['ours'] - exact['exact']:+.1e})")
    print(f"self-check: KLD max {summary['kld_max']:.3g}, top-1 agreement {summary['top1_agreement']:.4f}")
    return 0 if rel < 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
