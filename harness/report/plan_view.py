"""Human-readable views of a Plan (`harness plan`, `harness build`)."""

import re

from tabulate import tabulate

from harness.plan import Plan


def _setting(t) -> str:
    return f"{t.bits}-bit {t.mode} g{t.group_size}" if t.quantized else "float"


def plan_table(plan: Plan, full: bool = False) -> str:
    """Per-tensor table; by default tensors that differ only by layer index are grouped."""
    if full:
        rows = [(t.path, t.kind, "x".join(map(str, t.shape)), _setting(t), t.reason) for t in plan.tensors]
        return tabulate(rows, headers=["tensor", "kind", "shape", "setting", "why"])
    groups = {}
    for t in plan.tensors:
        pattern = re.sub(r"layers\.\d+\.", "layers.*.", t.path)
        key = (pattern, _setting(t), t.reason)
        g = groups.setdefault(key, {"layers": [], "numel": 0, "count": 0})
        if t.layer is not None:
            g["layers"].append(t.layer)
        g["numel"] += t.numel
        g["count"] += 1
    rows = []
    for (pattern, setting, reason), g in groups.items():
        rows.append((pattern, _layers(g["layers"]), g["count"], f"{g['numel'] / 1e6:.2f}M", setting, reason))
    return tabulate(rows, headers=["tensor", "layers", "n", "params", "setting", "why"])


def _layers(layers) -> str:
    if not layers:
        return "-"
    layers = sorted(set(layers))
    spans, start = [], layers[0]
    for a, b in zip(layers, layers[1:] + [None]):
        if b != a + 1:
            spans.append(f"{start}" if start == a else f"{start}-{a}")
            start = b
    return ",".join(spans)


def plan_summary(plan: Plan) -> str:
    lines = [
        f"recipe: {plan.recipe}  params: {plan.params if plan.params else '-'}",
        f"bpw: {plan.bpw:.3f} (quantized weights + scale/bias overhead, oQ definition) | "
        f"{plan.bpw_mlx:.3f} (mlx-lm compute_bits_per_weight, whole model)",
        "widths: " + ", ".join(f"{k} {v:.1%}" for k, v in plan.widths().items()),
    ]
    quantized = sum(t.quantized for t in plan.tensors)
    lines.append(f"tensors: {quantized} quantized, {len(plan.tensors) - quantized} float")
    for key, value in plan.summary.items():
        if isinstance(value, (list, tuple)):
            value = ", ".join(map(str, value)) if value else "-"
        elif isinstance(value, dict):
            continue  # detailed data (e.g. sensitivity) is shown by the recipe's own view
        lines.append(f"{key.replace('_', ' ')}: {value}")
    return "\n".join(lines)
