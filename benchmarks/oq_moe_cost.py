"""oQ sensitivity cost: dense SmolLM2 vs its upcycled MoE (4 experts, top-2).

    python benchmarks/oq_moe_cost.py [--samples 16] [--seq-len 256] [--legacy]

Measures `measure_sensitivity` alone (the calibration tokens, model load and the
one-time conversions are outside the timed region) on both models with the same
calibration windows, and prints wall/CPU seconds, the MoE/dense ratio and the
parameter ratio. `--legacy` also times the MoE with mlx-lm's own gather_mm experts
(what the pass did before it ran each expert on its routed tokens only).
The issue's target: MoE <= 3x the dense time (~2.8x the parameters).
"""

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.runtime.blas import ensure_openblas  # noqa: E402


def _params(path) -> int:
    import mlx.core as mx

    return sum(v.size for f in Path(path).glob("*.safetensors") for v in mx.load(str(f)).values())


def time_one(spec: str, samples: int, seq_len: int, routed: bool = True) -> dict:
    from mlx_lm.utils import load_tokenizer

    from harness.data.calibration import load_calibration
    from harness.quantizers.oq.sensitivity import measure_sensitivity
    from harness.sources import load_float, resolve_model

    path = resolve_model(spec)
    model, _ = load_float(path, lazy=True)
    tokens = load_calibration(load_tokenizer(path), None, samples, seq_len, 0).tokens
    t0, c0 = time.time(), time.process_time()
    scores = measure_sensitivity(model, tokens, 4, weights_dir=path, progress=False, routed_experts=routed)
    return {"model": spec, "wall": time.time() - t0, "cpu": time.process_time() - c0, "params": _params(path),
            "top": max(scores, key=scores.get), "scores": scores}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--legacy", action="store_true", help="also time mlx-lm's gather_mm expert path")
    args = ap.parse_args()
    ensure_openblas()
    print(f"calibration {args.samples} x {args.seq_len} tokens, 4-bit g64", flush=True)
    rows = []
    runs = [("smollm2-135m", True), ("smollm2-moe", True)] + ([("smollm2-moe", False)] if args.legacy else [])
    for spec, routed in runs:
        r = time_one(spec, args.samples, args.seq_len, routed=routed)
        r["model"] += "" if routed else " (gather_mm)"
        rows.append(r)
        print(f"{r['model']:26s} wall {r['wall']:7.1f} s  cpu {r['cpu']:7.1f} s  params {r['params'] / 1e6:6.1f}M  "
              f"most sensitive L{r['top']}", flush=True)
    dense, moe = rows[0], rows[1]
    print(f"MoE / dense: time {moe['wall'] / dense['wall']:.2f}x wall, {moe['cpu'] / dense['cpu']:.2f}x cpu; "
          f"params {moe['params'] / dense['params']:.2f}x  (target: time <= 3x)")
    if args.legacy:
        same = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(moe["scores"].values(), rows[2]["scores"].values()))
        print(f"routed vs gather_mm scores: max relative difference {same:.2e}; "
              f"speed-up {rows[2]['wall'] / moe['wall']:.1f}x")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
