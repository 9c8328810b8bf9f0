"""The report as a document: per model, the sections of harness.report.tables
laid out like the seed model cards (quantization details, benchmark comparison,
reasoning, fidelity, speed), then plots, notes (what is and is not significant,
equal-size head-to-heads, caveats) and provenance. `model_card=True` keeps to
the headline tables.
"""

import os
from pathlib import Path
from typing import Callable, Optional

from harness.report.compare import EQUAL_BPW, compare_metric, delta_text, recipe_order
from harness.report.metrics import ALPHA, p_eq
from harness.report.render import Doc, Table
from harness.stats import MIN_BOOTSTRAP_N
from harness.report.floor import floor_effects
from harness.report.tables import (DEDICATED, GENERATION_KEYS, benchmark_metrics, benchmark_section, diffs_vs_float,
                                   embedded_tables, fidelity_metrics, fidelity_section, generic_section,
                                   health_section, is_health_metric, quantization_section, reasoning_section,
                                   speed_section)


def _equal_size_notes(recipes: list, by_suite: dict, metrics_of: Callable, tol: float = EQUAL_BPW) -> list:
    """Recipes of (nearly) the same bpw compared head to head, with the paired test."""
    bpw = {}
    for per_recipe in by_suite.values():
        for name, r in per_recipe.items():
            if r.bpw is not None:
                bpw.setdefault(name, r.bpw)
    names = [n for n in recipes if n in bpw and n != "float"]
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if abs(bpw[a] - bpw[b]) > tol:
                continue
            parts = []
            for suite, per_recipe in by_suite.items():
                if a not in per_recipe or b not in per_recipe:
                    continue
                for metric in metrics_of(suite):
                    d = compare_metric(metric, per_recipe[b], per_recipe[a])  # delta = a - b
                    if d is None or d.info.higher_is_better is None:
                        continue
                    if d.settings:
                        parts.append(f"{suite} {metric} not compared (settings differ: {d.settings})")
                    elif d.significant():
                        winner = b if (d.worse_by or 0) > 0 else a
                        parts.append(f"{suite} {metric} {delta_text(d)} (**{winner} better**, {p_eq(d.p)})")
                    elif d.p is None:
                        parts.append(f"{suite} {metric} {delta_text(d)} (untested: no per-item values or CI)")
                    else:
                        parts.append(f"{suite} {metric} {delta_text(d)} (not significant, {p_eq(d.p)})")
            head = (f"Equal size: **{a}** ({bpw[a]:.3f} bpw) vs **{b}** ({bpw[b]:.3f} bpw) cost the same memory, "
                    "so compare them directly")
            out.append(head + (f"; {a} minus {b}: " + ", ".join(parts) + "." if parts else "."))
    return out


def notes(results: list, recipes: list, by_suite: dict, diffs: dict, metrics_of: Callable = lambda s: []) -> list:
    lines = []
    for name in recipes:
        groups = {"not significant": [], "too few items to tell": [], "significantly worse": [],
                  "significantly better": []}
        for (suite, metric, who), d in sorted(diffs.items()):
            if who != name or d.info.higher_is_better is None or d.p is None:
                continue
            key = ("not significant" if not d.significant() and not d.too_few else
                   "too few items to tell" if not d.significant() else
                   "significantly worse" if (d.worse_by or 0) > 0 else "significantly better")
            groups[key].append(f"{suite} {metric} {delta_text(d)} ({p_eq(d.p)})")
        parts = [f"{'**not significant**' if k == 'not significant' else k}: {', '.join(v)}"
                 for k, v in groups.items() if v]
        if parts:
            lines.append(f"**{name}** vs float — " + "; ".join(parts) + ".")
        other = sorted({(suite, d.settings) for (suite, _, who), d in diffs.items() if who == name and d.settings})
        for suite, what in other:
            lines.append(f"{suite}: **{name}** and float were computed under different settings ({what}); "
                         "not compared — re-run them with the same settings.")
    if diffs:
        lines.append("A difference marked not significant is within the noise of this sample size: treat those "
                     f"recipes as equal to float there. Tests are paired where items are paired (McNemar exact on "
                     f"right/wrong items; on per-item scores, KL, NLL an exact permutation test below "
                     f"{MIN_BOOTSTRAP_N} pairs, else a paired bootstrap), else a z-test from the "
                     f"95 % CIs; significant means p < {ALPHA}, two-sided.")
    lines += _equal_size_notes(recipes, by_suite, metrics_of)
    for suite, per_recipe in by_suite.items():
        ns = {name: r.summary.get("n", r.n_items) for name, r in per_recipe.items()}
        if len(set(ns.values())) > 1:
            lines.append(f"{suite}: recipes were scored on different numbers of items "
                         f"({', '.join(f'{k} {v}' for k, v in ns.items())}); paired tests use the shared items only.")
        limits = {r.provenance.get("limit") for r in per_recipe.values()} - {None}
        if limits:
            lines.append(f"{suite}: a subset was evaluated (--limit {', '.join(map(str, sorted(limits)))}); "
                         "confidence intervals reflect that sample size.")
        if "float" not in per_recipe and suite not in ("speed",):
            lines.append(f"{suite}: no float result, so no flips or tests against float are shown.")
    incomplete = [f"{r.recipe}/{r.suite}" for r in results if not r.complete]
    if incomplete:
        lines.append(f"Incomplete runs (interrupted; resume with the same `harness run`): {', '.join(incomplete)}.")
    modes = {r.provenance.get("exec_mode") for r in results if r.suite != "speed"}
    if "simulated" in modes:
        lines.append("Quality suites marked *simulated* ran with each quantized layer dequantized to fp32 "
                     "(same outputs as the quantized kernels up to float rounding); speed is always measured "
                     "with native quantized kernels.")
    return lines


def floor_lines(per_recipe: dict, reference: str = "float") -> list:
    """The floor-effect lines (harness.report.floor) of a suite's reference result."""
    ref = per_recipe.get(reference)
    return floor_effects(ref) if ref is not None else []


def health_notes(health_diffs: dict) -> list:
    """One line per recipe whose generation health is significantly worse than the reference's."""
    worse: dict = {}
    for (suite, metric, name), d in sorted(health_diffs.items()):
        if d.significant() and (d.worse_by or 0) > 0:
            flag = metric[len("health_"):-len("_rate")].replace("_", " ")
            worse.setdefault(name, []).append(f"{suite} {flag} {delta_text(d)} ({p_eq(d.p)})")
    return [f"**{name}** generates less healthily than float — " + ", ".join(parts) + "."
            for name, parts in worse.items()]


def _isolation(r) -> str:
    """The sandbox isolation level a code suite recorded (namespaces / seatbelt / rlimits-only ...)."""
    data = r.provenance.get("data") if isinstance(r.provenance.get("data"), dict) else {}
    for value in (r.provenance.get("isolation"), data.get("isolation"), data.get("sandbox"),
                  r.summary.get("isolation")):
        if isinstance(value, str) and value:
            return value
    return ""


def provenance_section(doc: Doc, results: list, level: int, recipes: list):
    rows = []
    for suite in sorted({r.suite for r in results}):
        rs = [r for r in results if r.suite == suite]
        data = rs[0].provenance.get("data") or {}
        src = str(data.get("source", "-"))
        if data.get("sha256"):
            src += f" (sha256 {str(data['sha256'])[:12]})"
        ns = sorted({str(r.n_items) for r in rs})
        rows.append([suite, ", ".join(n for n in recipes if any(r.recipe == n for r in rs)), "/".join(ns),
                     ", ".join(sorted({str(r.provenance.get("exec_mode", "-")) for r in rs})),
                     ", ".join(sorted({str(r.provenance.get("limit") or "-") for r in rs})),
                     ", ".join(sorted({str(r.provenance.get("seed", "-")) for r in rs})),
                     ", ".join(sorted({str(r.provenance.get("suite_version", "-")) for r in rs})), src,
                     ", ".join(sorted({_isolation(r) or "-" for r in rs}))])
    headers = ["Suite", "Recipes", "Items", "Exec mode", "Limit", "Seed", "Suite version", "Data", "Sandbox"]
    if not any(_isolation(r) for r in results):  # only code suites run model-written programs
        headers, rows = headers[:-1], [row[:-1] for row in rows]
    doc.h(level, "Provenance")
    doc.table(Table(headers, rows))
    versions = {}
    for r in results:
        for k, v in (r.provenance.get("versions") or {}).items():
            versions.setdefault(k, set()).add(str(v))
    hw = {}
    for r in results:
        h = r.provenance.get("hardware") or {}
        key = (h.get("cpu"), h.get("cpu_count"), h.get("memory_gb"), h.get("mlx_device"), h.get("metal_device"),
               h.get("openblas"))
        hw[key] = h
    lines = []
    if versions:
        lines.append("Versions: " + ", ".join(f"{k} {'/'.join(sorted(v))}" for k, v in sorted(versions.items())))
    for h in hw.values():
        if h:
            dev = h.get("metal_device") or h.get("mlx_device") or "?"
            lines.append(f"Hardware: {h.get('cpu', '?')} ({h.get('cpu_count', '?')} cores, "
                         f"{h.get('memory_gb', '?')} GB), MLX device {dev}"
                         + (", OpenBLAS" if h.get("openblas") else "") + f"; {h.get('platform', '')}".rstrip("; "))
    times = sorted(str(r.provenance.get("time")) for r in results if r.provenance.get("time"))
    if times:
        lines.append(f"Results produced {times[0]}" + (f" to {times[-1]}" if times[-1] != times[0] else "") + ".")
    commands = list(dict.fromkeys("harness " + " ".join(map(str, r.provenance["argv"]))
                                  for r in results if r.provenance.get("argv")))
    for cmd in commands[:8]:
        lines.append(f"Command: `{cmd}`")
    if len(commands) > 8:
        lines.append(f"... and {len(commands) - 8} more commands (see each result's provenance.argv).")
    doc.bullets(lines)


def compared_metrics(suite: str, per_recipe: dict) -> list:
    """Metrics tested against float and between equal-size recipes."""
    if suite == "reasoning":
        return ["score"]
    if suite == "fidelity":
        return fidelity_metrics(per_recipe)
    if suite == "speed":
        return []  # hardware-dependent, no per-item pairing
    return benchmark_metrics(per_recipe)


def reference_of(results: list) -> str:
    """The reference the runs were compared against (`harness run --reference`, recorded in each
    result's provenance): the most common one among results that name one present here, else float."""
    present = {r.recipe for r in results}
    named = [r.provenance.get("reference") for r in results if isinstance(r.provenance, dict)]
    named = [n for n in named if n and n != "none" and n in present]
    return max(set(named), key=named.count) if named else "float"


def build_doc(results: list, model_card: bool = False, plot_files: Optional[dict] = None,
              link_base: Optional[Path] = None) -> Doc:
    """The report as blocks. plot_files: {model: [(path, alt)]} to embed."""
    doc = Doc()
    models = sorted({r.model for r in results})
    top = 2 if model_card else 1
    if model_card:
        doc.h(top, "Quantized variants: quality and speed")
    else:
        doc.h(top, "Benchmark report")
    for model in models:
        rs = [r for r in results if r.model == model]
        recipes = recipe_order(rs)
        by_suite = {}
        for r in sorted(rs, key=lambda r: r.suite):
            by_suite.setdefault(r.suite, {})[r.recipe] = r
        level = top + 1
        titled = len(models) > 1 or not model_card
        if titled:
            doc.h(level, f"Model: `{model}`")
            level += 1
        reference = reference_of(rs)
        doc.p(("Recipes " if titled else f"Model `{model}`; recipes ") + ", ".join(f"**{n}**" for n in recipes)
              + (" (float = the unquantized reference; columns ordered by size)." if reference == "float" else
                 f" (float = the unquantized model; comparisons are against the reference **{reference}**, "
                 "chosen with `harness run --reference`; columns ordered by size)."))
        quantization_section(doc, rs, recipes, level)

        metrics_of = lambda suite: compared_metrics(suite, by_suite[suite])  # noqa: E731
        diffs = diffs_vs_float(by_suite, recipes, metrics_of, reference)
        benchmark_section(doc, by_suite, recipes, diffs, level)
        if "reasoning" in by_suite:
            reasoning_section(doc, by_suite["reasoning"], recipes, diffs, level, full=not model_card)
        floors = [line for suite in by_suite for line in floor_lines(by_suite[suite], reference)]
        if floors:  # say it before anyone reads a bare 0/100 as a verdict
            doc.p("**Can these suites rank recipes on this model?** Not where the reference scores at the floor "
                  "or at chance:")
            doc.bullets(floors)
        health_diffs = health_section(doc, by_suite, recipes, level, reference)
        if "fidelity" in by_suite:
            fidelity_section(doc, by_suite["fidelity"], recipes, diffs, level)
        if "speed" in by_suite and not speed_section(doc, by_suite["speed"], recipes, level, reference):
            generic_section(doc, "speed", by_suite["speed"], recipes, set(), level)
        for suite, per_recipe in by_suite.items():
            if model_card:
                continue  # the card keeps to the headline tables
            if suite not in DEDICATED:
                shown = {k for r in per_recipe.values() for k in r.summary if is_health_metric(k)}
                generic_section(doc, suite, per_recipe, recipes,
                                set(benchmark_metrics(per_recipe)) | {"n"} | shown | set(GENERATION_KEYS), level)
            # the suite's own tables, except those our sections already show (reasoning/speed "table")
            embedded_tables(doc, suite, per_recipe, recipes, skip=("table",) if suite in ("reasoning", "speed") else ())
        model_plots = (plot_files or {}).get(model, [])
        if model_plots:
            doc.h(level, "Plots")
        for path, alt in model_plots:
            doc.img(_relative(path, link_base), alt)
        doc.h(level, "Notes")
        doc.bullets(notes(rs, recipes, by_suite, diffs, metrics_of) + health_notes(health_diffs) or ["No caveats."])
        provenance_section(doc, rs, level, recipes)
    return doc


def _relative(path: Path, base: Optional[Path]) -> str:
    path = Path(path)
    if base is None:
        return str(path)
    try:
        return str(path.resolve().relative_to(Path(base).resolve()))
    except ValueError:
        return os.path.relpath(path.resolve(), Path(base).resolve())
