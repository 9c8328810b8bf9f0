"""dynamic: mlx-lm's dynamic_quant (gradient sensitivity + threshold) as a baseline for oQ.

mlx-lm's `mlx_lm.quant.dynamic_quant` scores every quantizable tensor by how much
the KL divergence to the float model would change if it were stored at high
instead of low bits (gradient of the loss of the low-bit model, dotted with the
weight difference, per million parameters), then searches the sensitivity
threshold above which tensors get the high width so the model meets a bpw
target. Here its `estimate_sensitivities` runs unchanged, but:

* it is fed the harness calibration set (mlx-lm's script downloads a text file
  from a gist otherwise), at the same size oQ uses, so the two compare on equal data;
* the threshold search prices plans with `Plan.bpw` (the oQ definition) instead
  of `compute_bits_per_weight`, so `--target-bpw` means the same number for oq and
  dynamic; and it is exact (the sensitivity-sorted prefix that fits the target,
  which is what the bisection converges to) instead of bisecting with tolerance;
* low/high widths follow from the target (the widest width whose uniform price
  fits it, and the next one up), e.g. 4/5 for 4.5-5.5 bpw at g64 as in mlx-lm's
  default; routers stay float and the model's own quant_predicate is honoured.

The gradient pass costs about five forward passes of the whole model per token,
so on a CPU it is several times slower than oQ's sensitivity pass with the same
calibration size.
"""

import sys
import time
from dataclasses import dataclass
from typing import Optional

from harness.data.calibration import file_sha256, load_calibration
from harness.errors import HarnessError
from harness.plan import Plan, Tensor
from harness.recipe import PlanContext, Recipe, plan_from_rule

DYNAMIC_VERSION = 1
WIDTHS = (2, 3, 4, 5, 6, 8)
DEFAULT_TARGET = 4.6  # oq4's target, so `dynamic` compares with oq4 out of the box


def widths_for_target(target_bpw: float, group_size: int) -> tuple:
    """(low, high) bits: the widest width whose uniform price fits the target, and the next one."""
    price = {b: b + 32 / group_size for b in WIDTHS}  # affine: 16-bit scale + 16-bit bias per group
    fitting = [b for b in WIDTHS if price[b] <= target_bpw + 1e-9]
    if not fitting or fitting[-1] == WIDTHS[-1]:
        raise HarnessError(
            f"--target-bpw {target_bpw} is outside what 2-8 bit g{group_size} mixes can reach "
            f"({price[WIDTHS[0]]:.2f}-{price[WIDTHS[-1]]:.2f}); pick a target in that range"
        )
    low = fitting[-1]
    return low, WIDTHS[WIDTHS.index(low) + 1]


@dataclass
class DynamicRecipe(Recipe):
    target_bpw: float = DEFAULT_TARGET
    group_size: int = 64
    calibration: Optional[str] = None
    calib_samples: Optional[int] = None
    calib_seq_len: Optional[int] = None
    batch_size: int = 4
    name = "dynamic"
    description = "mlx-lm dynamic_quant: gradient sensitivity, low/high bits at --target-bpw (oQ bpw definition)"

    def __post_init__(self):
        from harness.data.calibration import calibration_size

        self.low_bits, self.high_bits = widths_for_target(self.target_bpw, self.group_size)
        self.calib_samples, self.calib_seq_len = calibration_size(self.calib_samples, self.calib_seq_len)

    @property
    def params(self) -> dict:
        return {"target_bpw": self.target_bpw, "group_size": self.group_size, "low_bits": self.low_bits,
                "high_bits": self.high_bits, "calibration_sha256": file_sha256(self.calibration),
                "calib_samples": self.calib_samples, "calib_seq_len": self.calib_seq_len,
                "dynamic_version": DYNAMIC_VERSION}

    def plan(self, ctx: PlanContext) -> Plan:
        import mlx.core as mx
        from mlx_lm.quant.dynamic_quant import estimate_sensitivities

        low, high, gs = self.low_bits, self.high_bits, self.group_size

        def low_rule(t):
            return low, gs, "affine", f"dynamic: low {low}-bit"

        plan = plan_from_rule(ctx, self.name, self.params, low_rule)
        calib = load_calibration(ctx.load_tokenizer(), self.calibration, self.calib_samples, self.calib_seq_len,
                                 ctx.seed)
        model = ctx.model
        model.set_dtype(mx.float32)  # gradients in fp32 (fast on CPU; the build sets the artifact dtype)
        t0 = time.time()
        if ctx.progress:
            print(f"dynamic: mlx-lm estimate_sensitivities on {calib.samples} x {calib.seq_len} tokens "
                  f"({low}/{high}-bit g{gs})", file=sys.stderr)
        scores = dict(estimate_sensitivities(model, mx.array(calib.tokens), low, gs, high, gs,
                                             batch_size=self.batch_size))
        seconds = time.time() - t0
        scores = {p: float(f"{s:.6g}") for p, s in scores.items()}  # plans must not hinge on float noise

        chosen = threshold_prefix(plan, scores, self.target_bpw, high,
                                  adjustable={t.path for t in plan.tensors if t.reason.startswith("dynamic: low")})

        def rule(t):
            if t.path in chosen:
                return high, gs, "affine", f"dynamic: sensitivity {scores[t.path]:.3g} above threshold"
            return low, gs, "affine", f"dynamic: low {low}-bit"

        final = plan_from_rule(ctx, self.name, self.params, rule)
        final.summary = {
            "target_bpw": self.target_bpw,
            "low_bits": low,
            "high_bits": high,
            "group_size": gs,
            "effective_bpw": round(final.bpw, 4),
            "high_tensors": len(chosen),
            "threshold": min((scores[p] for p in chosen), default=None),
            "calibration": calib.source,
            "calibration_sha256": calib.sha256,
            "calibration_samples": f"{calib.samples} x {calib.seq_len} tokens, seed {calib.seed}",
            "sensitivity": {p: scores[p] for p in sorted(scores)},
        }
        if ctx.progress:
            print(f"dynamic: gradient sensitivities in {seconds:.1f} s", file=sys.stderr)
        return final

    def view(self, plan: Plan) -> str:
        from tabulate import tabulate

        s = plan.summary
        if "sensitivity" not in s:
            return ""
        widths = {t.path: t.bits for t in plan.tensors}
        ranked = sorted(s["sensitivity"].items(), key=lambda kv: (-kv[1], kv[0]))
        rows = [(i, p, f"{v:.3e}", widths.get(p) or "float") for i, (p, v) in enumerate(ranked[:20], 1)]
        head = (f"dynamic: {s['low_bits']}/{s['high_bits']}-bit g{s['group_size']}, target {s['target_bpw']} -> "
                f"{s['effective_bpw']:.3f} bpw, {s['high_tensors']} tensors at {s['high_bits']}-bit")
        return head + "\n" + tabulate(rows, headers=["rank", "tensor", "sensitivity", "bits"])


def threshold_prefix(plan: Plan, scores: dict, target_bpw: float, high: int, adjustable: set) -> set:
    """Paths above mlx-lm's sensitivity threshold: the longest sensitivity-sorted prefix
    of `adjustable` tensors that, at `high` bits, keeps the plan's bpw <= target."""
    numel = sum(t.numel for t in plan.tensors)
    total = sum(int(t.stored_bits()) for t in plan.tensors)
    by_path = plan.by_path()
    chosen = set()
    for path in sorted((p for p in scores if p in adjustable), key=lambda p: (-scores[p], p)):
        t = by_path[path]
        delta = int(Tensor(t.path, t.kind, t.shape, high, t.group_size, t.mode).stored_bits()) - int(t.stored_bits())
        if (total + delta) / numel > target_bpw:
            break  # a threshold puts everything above it at high bits: stop at the first misfit
        total += delta
        chosen.add(path)
    return chosen


def _make(target_bpw=None, group_size=None, mode=None, calibration=None, calib_samples=None, calib_seq_len=None,
          sensitivity=None):
    if mode not in (None, "affine"):
        raise HarnessError(f"dynamic quantizes in affine mode only (got --mode {mode}); drop --mode")
    if sensitivity is not None:
        raise HarnessError("--sensitivity is for oQ recipes; dynamic measures gradient sensitivities itself")
    return DynamicRecipe(target_bpw=target_bpw or DEFAULT_TARGET, group_size=group_size or 64,
                         calibration=calibration, calib_samples=calib_samples, calib_seq_len=calib_seq_len)


_make.description = DynamicRecipe.description
RECIPES = {"dynamic": _make}
