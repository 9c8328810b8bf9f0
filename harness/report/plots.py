"""Report plots (PNG + SVG): bpw vs quality Pareto, tok/s vs context and vs depth (the speed
suite's llama-bench -d sweep), oQ per-layer sensitivity.

Figures are built with matplotlib's object API (no pyplot global state, no GUI
backend), written atomically, and sized so text stays legible when a PNG is
shown at its natural width in a markdown page.
"""

import json
import re
from functools import partial
from pathlib import Path
from typing import Optional

from matplotlib import rc_context
from matplotlib.figure import Figure

from harness.cache import atomic_file
from harness.report.compare import EQUAL_BPW, recipe_order
from harness.report.metrics import _is_number, ci95, info_of, metric_label
from harness.report.tables import (DEDICATED, _ctx_label, benchmark_metrics, depth_label, depth_rows,
                                   fidelity_metrics, speed_groups, speed_hardware, speed_rows)
from harness.results import SuiteResult

STYLE = {"font.size": 11, "axes.titlesize": 13, "axes.labelsize": 11, "legend.fontsize": 9.5,
         "xtick.labelsize": 10, "ytick.labelsize": 10}
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
          "#bcbd22", "#7f7f7f"]
MARKERS = "osD^vP*Xh<>"
BITS_COLORS = {2: "#c6dbef", 3: "#9ecae1", 4: "#6baed6", 5: "#4292c6", 6: "#2171b5", 8: "#08306b"}


def _figure(w: float, h: float) -> Figure:
    return Figure(figsize=(w, h), dpi=130, layout="constrained")


def _save(fig: Figure, stem: Path) -> list:
    """stem.png and stem.svg, each written to a temp name then renamed."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in ("png", "svg"):
        final = stem.with_suffix(f".{ext}")
        with atomic_file(final, durable=False) as f:
            fig.savefig(f, format=ext, facecolor="white")
        out.append(final)
        fig.set_layout_engine("none")  # laid out by the first save; the second reuses it (2x faster)
    return out


def _style_of(recipes: list) -> dict:
    return {name: (COLORS[i % len(COLORS)], MARKERS[i % len(MARKERS)]) for i, name in enumerate(recipes)}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def _direction(info) -> str:
    return "higher is better" if info.higher_is_better else "lower is better"


def _scale(info) -> float:
    return 100.0 if info.kind == "fraction" else 1.0


def pareto_plot(per_recipe: dict, suite: str, metric: str, styles: dict, stem: Path) -> Optional[list]:
    """Quality vs effective bpw, one point per recipe (± CI), the Pareto front
    drawn, recipes of equal size joined by a vertical bracket, float as a line."""
    info = info_of(next(iter(per_recipe.values())), metric)
    if info.higher_is_better is None:
        return None
    scale = _scale(info)
    points = []
    for name, r in per_recipe.items():
        v = r.summary.get(metric)
        if name == "float" or r.bpw is None or not _is_number(v):
            continue
        ci = ci95(r.summary, metric)
        points.append((r.bpw, v * scale, name, [c * scale for c in ci] if ci else None))
    if len(points) < 2:
        return None
    points.sort()
    fig = _figure(9.5, 4.8)
    ax = fig.add_subplot()
    for bpw, y, name, ci in points:
        color, marker = styles[name]
        yerr = [[max(y - ci[0], 0)], [max(ci[1] - y, 0)]] if ci else None
        ax.errorbar([bpw], [y], yerr=yerr, fmt=marker, color=color, markersize=8, capsize=4, elinewidth=1.2,
                    label=f"{name} ({bpw:.2f} bpw)", zorder=3)
    # Pareto front: each point better than every smaller one.
    front, best = [], None
    for bpw, y, _, _ in points:
        better = best is None or (y > best if info.higher_is_better else y < best)
        if better:
            front.append((bpw, y))
            best = y
    if len(front) > 1:
        ax.plot([p[0] for p in front], [p[1] for p in front], "-", color="#999999", lw=1.5, zorder=1,
                label="Pareto front")
    # Equal-size groups: a dotted bracket so the like-for-like comparison stands out;
    # their labels go left then right so they do not collide.
    groups, i = [], 0
    while i < len(points):
        j = i
        while j + 1 < len(points) and points[j + 1][0] - points[i][0] <= EQUAL_BPW:
            j += 1
        groups.append(points[i:j + 1])
        i = j + 1
    side, bracket_label = {}, f"same size (within {EQUAL_BPW:g} bpw)"
    for group in groups:
        for k, p in enumerate(group):
            side[p[2]] = (-1 if group is groups[-1] else 1) if len(group) == 1 else (-1 if k % 2 == 0 else 1)
        if len(group) > 1:
            x = sum(p[0] for p in group) / len(group)
            ys = [p[1] for p in group]
            ax.plot([x, x], [min(ys), max(ys)], ":", color="black", lw=2, zorder=2, label=bracket_label)
            bracket_label = None
    for bpw, y, name, _ in points:
        dx = 9 * side[name]
        ax.annotate(name, (bpw, y), xytext=(dx, 7), textcoords="offset points", fontsize=9.5,
                    ha="left" if dx > 0 else "right", color=styles[name][0], zorder=4,
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})
    ref = per_recipe.get("float")
    ref_y = ref.summary[metric] * scale if ref is not None and _is_number(ref.summary.get(metric)) else None
    ys = [p[1] for p in points]
    log = info.kind != "fraction" and min(ys) > 0 and max(ys) / min(ys) > 20  # e.g. PPL 30 vs 3e7 at 2 bits
    if log:
        ax.set_yscale("log")
    if ref_y is not None and (ref_y > 0 or not log):
        ax.axhline(ref_y, color="black", ls="--", lw=1, zorder=0,
                   label=f"float reference ({ref_y:.{3 if abs(ref_y) < 1 else 1}f})")
    ax.margins(y=0.1)  # room for the labels of the top and bottom points
    lo, hi = points[0][0], points[-1][0]
    pad = max(0.4, 0.1 * (hi - lo))
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_xlabel("effective bits per weight (quantized weights + scales)")
    ax.set_ylabel(f"{metric_label(metric, info)}  ({_direction(info)}{', log scale' if log else ''})")
    ax.set_title(f"{suite}: {metric} vs model size")
    ax.grid(True, alpha=0.3)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper")  # outside: never covers a point
    return _save(fig, stem)


def tps_figure(series: dict, styles: dict, xlabel: str, tick_label=_ctx_label,
               titles=("Prefill (PP)", "Generation (TG)")) -> Figure:
    """Prefill and generation tok/s panels, one line per series: {label: (recipe, [(x, pp, tg, ...)])},
    on a log-2 x axis. An x of 0 (depth 0: an empty cache) has no place on a log axis, so it is drawn
    one octave left of the smallest positive x and labelled by tick_label(0)."""
    fig = _figure(11.5, 4.4)
    axes = fig.subplots(1, 2)
    xs = sorted({row[0] for _, rows in series.values() for row in rows})
    positive = [x for x in xs if x > 0]
    zero_at = positive[0] / 2 if positive else 1

    def place(x):
        return x if x > 0 else zero_at

    for ax, col, title in ((axes[0], 1, titles[0]), (axes[1], 2, titles[1])):
        for label, (recipe, rows) in series.items():
            pts = [(place(row[0]), row[col]) for row in rows if row[col] is not None]
            if pts:
                color, marker = styles[recipe]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=color, lw=1.8,
                        markersize=7, label=label)
        if len(xs) > 1:
            ax.set_xscale("log", base=2)
            ax.minorticks_off()
        ax.set_xticks([place(x) for x in xs])
        ax.set_xticklabels([tick_label(x) for x in xs])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("tokens / second (higher is better)")
        ax.set_title(title)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", title="recipe")  # outside: never hides a line
    return fig


def _speed_series(per_recipe: dict, rows_of) -> dict:
    """{legend label: (recipe, rows)}; recipes measured on other hardware / exec modes than the
    first are labelled with theirs (short: device, mode; the report's tables give the full line),
    so no line passes for a like-for-like comparison it is not."""
    rows_by = {name: rows_of(r.summary) for name, r in per_recipe.items()}
    groups = speed_groups(per_recipe, [name for name, rows in rows_by.items() if rows])
    out = {}
    for _, names in groups:
        for name in names:
            r, rows = per_recipe[name], rows_by[name]
            h = speed_hardware(r)
            short = f"{h.get('metal_device') or h.get('cpu') or '?'}, {r.provenance.get('exec_mode', '?')}"
            out[name if len(groups) == 1 else f"{name} ({short})"] = (name, rows)
    return out


def speed_plot(per_recipe: dict, styles: dict, stem: Path) -> Optional[list]:
    """Prefill and generation tok/s against context length, one line per recipe."""
    series = _speed_series(per_recipe, speed_rows)
    if not series:
        return None
    return _save(tps_figure(series, styles, "context length (tokens)"), stem)


def depth_figure(per_recipe: dict, styles: dict) -> Optional[Figure]:
    """The depth sweep (llama-bench -d): PP and TG tok/s against the tokens already in the KV cache."""
    series = _speed_series(per_recipe, depth_rows)
    if not series:
        return None
    pps = sorted({row[4] for _, rows in series.values() for row in rows if row[4]})
    pp = f"pp{'/'.join(map(str, pps))}" if pps else "PP"
    return tps_figure(series, styles, "depth: tokens already in the KV cache", depth_label,
                      (f"Prefill ({pp}) at depth", "Generation (TG) at depth"))


def depth_plot(per_recipe: dict, styles: dict, stem: Path) -> Optional[list]:
    fig = depth_figure(per_recipe, styles)
    return _save(fig, stem) if fig is not None else None


def read_sensitivity(artifact_path) -> Optional[tuple]:
    """(sensitivity {layer label: s}, {layer: max bits}) from an artifact's plan.json, if it has one."""
    plan_file = Path(artifact_path) / "plan.json"
    if not plan_file.is_file():
        return None
    try:
        plan = json.loads(plan_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    sens = (plan.get("summary") or {}).get("sensitivity")
    if not isinstance(sens, dict) or not sens:
        return None
    values = {}
    for key, v in sens.items():
        if isinstance(v, dict):
            v = next((v[k] for k in ("s", "score", "sensitivity", "value") if _is_number(v.get(k))), None)
        if _is_number(v):
            values[str(key)] = float(v)
    bits = {}
    for t in plan.get("tensors") or []:
        m = re.search(r"(?:^|\.)layers\.(\d+)\.", t.get("path", ""))
        if m and t.get("bits"):
            layer = int(m.group(1))
            bits[layer] = max(bits.get(layer, 0), t["bits"])
    return (values, bits) if values else None


def _layer_index(label: str) -> Optional[int]:
    m = re.findall(r"\d+", label)
    return int(m[-1]) if m else None


def sensitivity_plot(result: SuiteResult, stem: Path) -> Optional[list]:
    """Per-layer sensitivity bars, coloured by the widest bits the plan gave each layer."""
    got = read_sensitivity(result.artifact.get("path", ""))
    if got is None:
        return None
    values, bits = got
    labels = sorted(values, key=lambda k: (_layer_index(k) is None, _layer_index(k) or 0, k))
    layers = [_layer_index(k) for k in labels]
    widths = sorted({bits[l] for l in layers if l in bits})
    palette = {b: BITS_COLORS.get(b, "#777777") for b in widths}  # darker = more bits, the same in every plot
    fig = _figure(max(7.5, 0.28 * len(labels) + 2), 4.4)
    ax = fig.add_subplot()
    xs = range(len(labels))
    colors = [palette.get(bits.get(l), "#bbbbbb") for l in layers]
    ax.bar(xs, [values[k] for k in labels], color=colors, edgecolor="#333333", linewidth=0.5)
    step = max(1, len(labels) // 24)
    ax.set_xticks(list(xs)[::step])
    ax.set_xticklabels([str(l) if l is not None else k for k, l in zip(labels, layers)][::step])
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("sensitivity (relative output MSE at base bits)")
    vals = [v for v in values.values() if v > 0]
    if vals and max(vals) / min(vals) > 100:
        ax.set_yscale("log")
    ax.set_title(f"{result.recipe}: per-layer sensitivity; colour = widest bits the plan gave the layer")
    ax.grid(True, axis="y", alpha=0.3)
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=palette[b], edgecolor="#333333", label=f"{b}-bit") for b in widths]
    if handles:
        fig.legend(handles=handles, loc="outside right upper", title="bits")
    return _save(fig, stem)


def quality_metrics(suite: str, per_recipe: dict) -> list:
    """The metrics a Pareto plot is drawn for: reasoning score, fidelity PPL/KLD/top-1,
    and every benchmark accuracy (metrics with a CI) of other suites."""
    if suite == "speed":
        return []
    if suite == "reasoning":
        return ["score"]
    if suite == "fidelity":
        first = next(iter(per_recipe.values()))
        return [m for m in fidelity_metrics(per_recipe) if info_of(first, m).max_drop is not None]
    return benchmark_metrics(per_recipe)


def write_plots(results: list, out_dir: Path) -> list:
    """Every plot the results allow, as (path, alt text) for PNG and SVG files."""
    out_dir = Path(out_dir)
    recipes = recipe_order(results)
    styles = _style_of(recipes)
    by_suite = {}
    for r in sorted(results, key=lambda r: recipes.index(r.recipe)):  # legends in report column order
        by_suite.setdefault(r.suite, {})[r.recipe] = r
    jobs = []  # (draw, alt text), in report order: benchmarks, reasoning, fidelity, speed, sensitivity
    for suite in sorted(by_suite, key=lambda s: (DEDICATED.index(s) + 1 if s in DEDICATED else 0, s)):
        per_recipe = by_suite[suite]
        for metric in quality_metrics(suite, per_recipe):
            stem = out_dir / f"pareto_{_slug(suite)}_{_slug(metric)}"
            jobs.append((partial(pareto_plot, per_recipe, suite, metric, styles, stem),
                         f"{suite} {metric} vs bits per weight"))
    if "speed" in by_suite:
        jobs.append((partial(speed_plot, by_suite["speed"], styles, out_dir / "speed_vs_context"),
                     "tokens/s vs context length"))
        jobs.append((partial(depth_plot, by_suite["speed"], styles, out_dir / "speed_vs_depth"),
                     "tokens/s vs context depth (llama-bench -d sweep)"))
    artifacts = {}
    for r in sorted(results, key=lambda r: recipes.index(r.recipe)):
        artifacts.setdefault(r.artifact.get("path"), r)
    for path, r in artifacts.items():
        if path:
            jobs.append((partial(sensitivity_plot, r, out_dir / f"sensitivity_{_slug(r.recipe)}"),
                         f"{r.recipe} per-layer sensitivity"))
    written = []
    with rc_context(STYLE):  # our fonts without touching the caller's matplotlib settings
        for draw, alt in jobs:
            written.extend((p, alt) for p in draw() or [])
    return written
