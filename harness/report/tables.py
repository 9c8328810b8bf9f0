"""The report's sections, one function per table: quantization details, the
benchmark comparison (value ± CI, flips vs float), reasoning, fidelity, speed, and
a generic table for any other suite, plus a suite's own embedded tables.

Nothing here is suite-specific beyond the three named sections: a metric's
direction and format come from its declaration (or the name-pattern fallback,
harness.report.metrics), any suite whose summary has "<metric>_ci95" joins the
benchmark comparison, and every other suite gets a generic table.
"""

import re
from typing import Callable, Optional

from harness.report.compare import Diff, compare_metric
from harness.report.metrics import (_is_number, ci95, fmt_ci, fmt_value, info_of, metric_info, metric_label,
                                    scalar_metrics)
from harness.report.render import Doc, Table

DEDICATED = ("reasoning", "fidelity", "speed")  # suites with their own section


def _compact_layers(values) -> str:
    """[1, 2, 3, 7] -> '1-3, 7'; ['lm_head', 'L0', 'L1', 'L5'] -> 'lm_head, L0-1, L5'."""
    if not isinstance(values, (list, tuple)):
        return str(values)
    names, nums, prefix = [], [], ""
    for v in values:
        m = re.fullmatch(r"([A-Za-z]?)(\d+)", str(v))
        if m and (not nums or m.group(1) == prefix):
            prefix = m.group(1)
            nums.append(int(m.group(2)))
        else:
            names.append(str(v))
    nums = sorted(set(nums))
    spans, start = [], None
    for a, b in zip(nums, nums[1:] + [None]):
        start = a if start is None else start
        if b != a + 1:
            spans.append(f"{prefix}{start}" if start == a else f"{prefix}{start}-{a}")
            start = None
    return ", ".join(names + spans) or "-"


def _first_per_recipe(results: list) -> dict:
    out = {}
    for r in results:
        out.setdefault(r.recipe, r)
    return out


PLAN_SUMMARY_SHOWN = ("effective_bpw", "group_size", "sensitivity_file")  # already rows of the table / noise
PLAN_SUMMARY_LABELS = {"base_bits": "Base bits", "target_bpw": "Target bpw", "cap_bpw": "bpw cap",
                       "promoted_to_8bit": "Promoted to 8-bit", "boosted_layers": "Boosted layers",
                       "calibration_sha256": "Calibration sha256"}


def quantization_section(doc: Doc, results: list, recipes: list, level: int):
    """Rows = attributes, one column per recipe (like the cards' Parameter | Value)."""
    arts = {name: r.artifact for name, r in _first_per_recipe(results).items()}
    summary_keys = []
    for a in arts.values():
        for k, v in (a.get("plan_summary") or {}).items():
            if k not in summary_keys and not isinstance(v, dict):
                summary_keys.append(k)

    def row(label, get):
        return [label] + [get(arts[name]) for name in recipes]

    def number(x, d=3):
        return f"{x:.{d}f}" if _is_number(x) else "-"

    def params(a):
        # what the other rows do not already say (group size, mode, the plan summary's keys; hashes go)
        p = a.get("recipe_params") or {}
        if not isinstance(p, dict):
            return str(p)
        skip = {"group_size", "mode", *(a.get("plan_summary") or {})}
        shown = [f"{k}={v}" for k, v in p.items() if k not in skip and not k.endswith("sha256")]
        return ", ".join(shown) or "-"

    def summary_value(a, key):
        v = (a.get("plan_summary") or {}).get(key)
        if v is None:
            return "-"
        if isinstance(v, (list, tuple)):
            return _compact_layers(v)
        if key.endswith("sha256"):
            return str(v)[:12]
        return f"{v:g}" if _is_number(v) else str(v)

    rows = [
        row("Recipe parameters", params),
        row("Effective bpw (weights + scales)", lambda a: number(a.get("bpw"))),
        row("bpw (mlx-lm, whole model)", lambda a: number(a.get("bpw_mlx"))),
        row("Group size", lambda a: ", ".join(map(str, a.get("group_sizes") or [])) or "-"),
        row("Mode", lambda a: ", ".join(a.get("modes") or []) or "-"),
    ]
    for key in summary_keys:
        if key in PLAN_SUMMARY_SHOWN:
            continue
        label = PLAN_SUMMARY_LABELS.get(key) or key.replace("_", " ").capitalize()
        rows.append(row(label, lambda a, key=key: summary_value(a, key)))
    doc.h(level, "Quantization details")
    doc.table(Table(["Parameter", *recipes], rows,
                    "Effective bpw: quantized bits plus per-group scale/bias overhead over the quantizable "
                    "weights (the number model cards quote); mlx-lm bpw counts every stored array."))


def _diff_suffix(d: Optional[Diff], flips: str, with_p: bool) -> str:
    """' (a↓ b↑, *)' after a cell: the flips (`flips` formatted with lost/gained) and
    the significance mark (with the p-value when `with_p`)."""
    if d is None:
        return ""
    if d.settings:
        return " (other settings)"
    parts = []
    if d.lost is not None:
        parts.append(flips.format(lost=d.lost, gained=d.gained))
    if d.p is not None:
        parts.append(("*" if d.significant() else "n.s.") + (f" p={d.p:.2g}" if with_p else ""))
    return f" ({', '.join(parts)})" if parts else ""


def _vs_float_suffix(d: Optional[Diff]) -> str:
    return _diff_suffix(d, "{lost}↓ {gained}↑", with_p=False)


def diffs_vs_float(by_suite: dict, recipes: list, metrics_of: Callable, reference: str = "float") -> dict:
    """{(suite, metric, recipe): Diff vs the reference's result of that suite (float unless
    the runs chose another with --reference)}."""
    out = {}
    for suite, per_recipe in by_suite.items():
        ref = per_recipe.get(reference)
        if ref is None:
            continue
        for metric in metrics_of(suite):
            for name in recipes:
                r = per_recipe.get(name)
                if r is not None and name != reference:
                    d = compare_metric(metric, ref, r)
                    if d is not None:
                        out[(suite, metric, name)] = d
    return out


HEALTH_PREFIX = "health_"  # harness.runtime.health's summary keys: their own section
GENERATION_KEYS = ("thinking_tokens_mean", "answer_tokens_mean", "thinking_items")


def is_health_metric(name: str) -> bool:
    return name.startswith(HEALTH_PREFIX) or name in GENERATION_KEYS


def benchmark_metrics(per_recipe: dict) -> list:
    """Metrics of a suite with a CI in any recipe's summary (accuracy-like), in summary order
    (generation-health rates excluded: `health_section` shows them)."""
    names = []
    for r in per_recipe.values():
        for k in r.summary:
            name = k[:-5]
            if k.endswith("_ci95") and _is_number(r.summary.get(name)) and name not in names \
                    and not is_health_metric(name):
                names.append(name)
    return names


HEALTH_FLAGS = ("any", "loop", "budget_hit", "empty", "bad_unicode", "language_switch")


def health_metrics(per_recipe: dict) -> list:
    """The health rate metrics any recipe's summary has, in HEALTH_FLAGS order."""
    keys = set()
    for r in per_recipe.values():
        keys |= {k for k in r.summary if _is_number(r.summary.get(k))}
    return [f"{HEALTH_PREFIX}{f}_rate" for f in HEALTH_FLAGS if f"{HEALTH_PREFIX}{f}_rate" in keys]


def _health_suffix(d: Optional[Diff]) -> str:
    return _diff_suffix(d, "+{lost} new, {gained} gone", with_p=True)


def health_section(doc: Doc, by_suite: dict, recipes: list, level: int, reference: str = "float") -> dict:
    """Generation health: per suite and flag, each recipe's rate ± CI, and against the
    reference the items newly flagged / no longer flagged with the exact McNemar p.
    Returns {(suite, metric, recipe): Diff} (for the notes)."""
    rows, diffs = [], {}
    for suite, per_recipe in by_suite.items():
        metrics = health_metrics(per_recipe)
        ref = per_recipe.get(reference)
        for metric in metrics:
            info = info_of(next(r for r in per_recipe.values() if metric in r.summary), metric)
            cells = []
            for name in recipes:
                r = per_recipe.get(name)
                if r is None or not _is_number(r.summary.get(metric)):
                    cells.append("-")
                    continue
                d = compare_metric(metric, ref, r) if ref is not None and name != reference else None
                if d is not None:
                    diffs[(suite, metric, name)] = d
                cells.append(fmt_ci(r.summary[metric], ci95(r.summary, metric), info) + _health_suffix(d))
            flag = metric[len(HEALTH_PREFIX):-len("_rate")]
            rows.append([suite, flag.replace("_", " "), *cells])
    if not rows:
        return diffs
    doc.h(level, "Generation health")
    doc.table(Table(["Suite", "Flag (%)", *recipes], rows,
                    "Share of outputs flagged (lower is better) ± half-width of the Wilson 95 % CI: budget hit = ran "
                    "into its token budget, loop = ends in a repeated n-gram, empty = no answer after thinking, "
                    "bad unicode = U+FFFD / invalid UTF-8, language switch = answer in another script, any = at "
                    f"least one. Against {reference}: +a new, b gone = items flagged only in this recipe / only in "
                    f"{reference}; exact McNemar p, * = significant at p < 0.05. Gated by default (+5 points)."))
    return diffs


_FLIP_LEGEND = ("a↓ b↑: items float got right that this recipe gets wrong / the reverse; "
                "* = differs from float at p < 0.05 (paired test), n.s. = not significant.")


def benchmark_section(doc: Doc, by_suite: dict, recipes: list, diffs: dict, level: int):
    rows = []
    for suite, per_recipe in by_suite.items():
        if suite in DEDICATED:
            continue
        for metric in benchmark_metrics(per_recipe):
            info = info_of(next(iter(per_recipe.values())), metric)
            n = sorted({r.summary.get("n") for r in per_recipe.values() if _is_number(r.summary.get("n"))})
            cells = []
            for name in recipes:
                r = per_recipe.get(name)
                if r is None or not _is_number(r.summary.get(metric)):
                    cells.append("-")
                    continue
                cell = fmt_ci(r.summary[metric], ci95(r.summary, metric), info)
                cells.append(cell + _vs_float_suffix(diffs.get((suite, metric, name))))
            rows.append([f"{suite} {metric_label(metric, info)}", "/".join(map(str, n)) or "-", *cells])
    if not rows:
        return
    doc.h(level, "Benchmark comparison")
    doc.table(Table(["Benchmark", "n", *recipes], rows,
                    "value ± half-width of the 95 % CI (Wilson for accuracies). " + _FLIP_LEGEND))


def reasoning_section(doc: Doc, per_recipe: dict, recipes: list, diffs: dict, level: int, full: bool):
    info = metric_info("score")
    rows = []
    for name in recipes:
        r = per_recipe.get(name)
        if r is None:
            continue
        s = r.summary
        acc = s.get("accuracy")
        rows.append([name, fmt_ci(s.get("score"), s.get("score_ci95"), info) + "/100"
                     + _vs_float_suffix(diffs.get(("reasoning", "score", name))),
                     s.get("grade", "-"), fmt_value(acc, metric_info("accuracy")) if _is_number(acc) else "-",
                     fmt_value(s.get("n"), metric_info("n"))])
    doc.h(level, "Reasoning")
    doc.table(Table(["Recipe", "Score", "Grade", "Fully correct (%)", "Questions"], rows,
                    "Score: rubric points per question, averaged and scaled to 100, ± bootstrap 95 % CI; "
                    "grades S ≥ 95, A+ ≥ 90, A ≥ 80, B ≥ 70, C ≥ 60, D below. "
                    + _FLIP_LEGEND.split("; ", 1)[1]))
    cats = []
    for r in per_recipe.values():
        cats += [k[6:] for k in r.summary if k.startswith("score_") and k != "score_ci95"
                 and _is_number(r.summary[k]) and k[6:] not in cats]
    judge = any(_is_number(r.summary.get("judge_score")) for r in per_recipe.values())
    if cats and full:
        rows = [[name] + [fmt_value(per_recipe[name].summary.get(f"score_{c}"), info) for c in cats]
                for name in recipes if name in per_recipe]
        doc.table(Table(["Recipe", *(c.replace("_", " ") for c in cats)], rows, "Score per category (/100)."))
    if judge:
        rows = [[name, fmt_ci(per_recipe[name].summary.get("judge_score"),
                              per_recipe[name].summary.get("judge_score_ci95"), info),
                 per_recipe[name].summary.get("judge_grade", "-")] for name in recipes if name in per_recipe]
        doc.table(Table(["Recipe", "LLM judge score", "Judge grade"], rows,
                        "The LLM judge is reported separately and never mixes into the rubric score."))


# The fidelity table's columns: the first key of each group present in the summaries.
FIDELITY_COLUMNS = (("ppl", "perplexity"), ("kld_mean", "kld", "kl_mean", "kl"), ("kld_p99", "kl_p99"),
                    ("top1_agreement", "top1", "same_top", "same_top_p"), ("rms_dp",))


def fidelity_metrics(per_recipe: dict) -> list:
    """Headline fidelity metrics (PPL, KLD mean and p99, top-1, RMS Δp); a summary
    with none of those names falls back to its directed metrics."""
    keys = set()
    for r in per_recipe.values():
        keys |= set(scalar_metrics(r.summary))
    chosen = [next(k for k in group if k in keys) for group in FIDELITY_COLUMNS if any(k in keys for k in group)]
    if chosen:
        return chosen
    first = next(iter(per_recipe.values()))
    return [k for k in scalar_metrics(first.summary) if info_of(first, k).higher_is_better is not None]


def fidelity_section(doc: Doc, per_recipe: dict, recipes: list, diffs: dict, level: int):
    metrics = fidelity_metrics(per_recipe)
    if not metrics:
        return
    ref = per_recipe.get("float")
    ppl = next((m for m in metrics if m in ("ppl", "perplexity")), None)
    rows = []
    for name in recipes:
        r = per_recipe.get(name)
        if r is None:
            continue
        row = [name, f"{r.bpw:.3f}" if r.bpw is not None else "-"]
        for m in metrics:
            info = info_of(r, m)
            v = r.summary.get(m)
            row.append("-" if not _is_number(v) else
                       fmt_ci(v, ci95(r.summary, m), info) + _vs_float_suffix(diffs.get(("fidelity", m, name))))
            if m == ppl and ref is not None:  # ΔPPL vs float, right after PPL
                base = ref.summary.get(m)
                ratio = v / base if _is_number(v) and _is_number(base) and base else None
                row.append("-" if name == "float" or ratio is None else
                           f"{100 * (ratio - 1):+.1f} %" if ratio < 10 else f"×{ratio:.3g}")
        rows.append(row)
    headers = ["Recipe", "bpw"]
    for m in metrics:
        headers.append(metric_label(m, info_of(next(iter(per_recipe.values())), m)))
        if m == ppl and ref is not None:
            headers.append("ΔPPL vs float")
    doc.h(level, "Fidelity vs float")
    doc.table(Table(headers, rows,
                    "PPL: perplexity on held-out text (lower is better); KLD: KL divergence of the next-token "
                    "distribution from the float model's, mean and 99th percentile over tokens (nats, lower is "
                    "better); top-1: share of tokens whose most likely next token matches float; RMS Δp: root mean "
                    "square change of the correct token's probability. ± = 95 % CI; * / n.s.: paired test vs float."))


_CTX_KEYS = ("context", "ctx", "context_length", "prompt_tokens", "prompt_len", "depth", "tokens")
_PP_KEYS = ("pp", "pp_tps", "prompt_tps", "prefill_tps", "prefill", "prompt_tok_s")
_TG_KEYS = ("tg", "tg_tps", "generation_tps", "decode_tps", "generation", "gen_tps", "generation_tok_s")
_MEM_KEYS = ("peak_memory_gb", "peak_memory", "memory_gb", "peak_mem_gb")
_SPEED_KEY_RE = re.compile(r"^(?:(?P<kind>[a-z]+)_)??(?P<what>pp|tg|prompt|generation|prefill|decode|peak_memory)"
                           r"(?:_tps|_gb)?[_@]?(?P<ctx>\d+)(?P<k>k?)(?:_tps)?$")


def _first(d: dict, keys) -> Optional[float]:
    for k in keys:
        v = d.get(k)
        if isinstance(v, dict):  # {"mean": .., "sd": ..}
            v = v.get("mean", v.get("value"))
        if _is_number(v):
            return float(v)
    return None


def speed_rows(summary: dict) -> list:
    """[(context, pp_tps, tg_tps, peak_mem)] from a speed summary, whatever its
    layout: a list of per-context dicts, a {context: {...}} dict, or flat keys
    like pp_1024 / tg_1024 (also pp1k)."""
    rows = {}
    for value in summary.values():
        entries = []
        if isinstance(value, list):
            entries = [e for e in value if isinstance(e, dict)]
        elif isinstance(value, dict) and value and all(str(k).isdigit() for k in value):
            entries = [{"context": int(k), **v} for k, v in value.items() if isinstance(v, dict)]
        for e in entries:
            ctx = _first(e, _CTX_KEYS)
            pp, tg = _first(e, _PP_KEYS), _first(e, _TG_KEYS)
            if ctx is not None and (pp is not None or tg is not None):
                rows[int(ctx)] = (int(ctx), pp, tg, _first(e, _MEM_KEYS))
        if rows:
            break
    if not rows:
        flat = {}  # prompt kind ("" = the default random prompt) -> {ctx: [pp, tg, mem]}
        for k, v in summary.items():
            m = _SPEED_KEY_RE.match(k)
            if not m or not _is_number(v):
                continue
            ctx = int(m["ctx"]) * (1024 if m["k"] else 1)
            slot = {"pp": 0, "prompt": 0, "prefill": 0, "tg": 1, "generation": 1, "decode": 1}.get(m["what"], 2)
            flat.setdefault(m["kind"] or "", {}).setdefault(ctx, [None, None, None])[slot] = float(v)
        kind = "" if "" in flat else next(iter(flat), None)
        for ctx, (pp, tg, mem) in (flat.get(kind) or {}).items():
            if pp is not None or tg is not None:
                rows[ctx] = (ctx, pp, tg, mem)
    return [rows[c] for c in sorted(rows)]


_DEPTH_KEY_RE = re.compile(r"^(?:(?P<kind>[a-z]+)_)?(?:pp(?P<pp>\d+)_tps|(?P<what>tg_tps|peak_memory_gb))_d(?P<d>\d+)$")


def depth_rows(summary: dict) -> list:
    """[(depth, pp_tps, tg_tps, peak_mem, pp)] from the speed suite's depth sweep (llama-bench's
    pp512 @ d4096: keys pp512_tps_d4096 / tg_tps_d4096 / peak_memory_gb_d4096), for the headline
    random prompt (another prompt kind only when the sweep has no random one); [] without a sweep."""
    flat = {}  # prompt kind -> {depth: [pp_tps, tg_tps, mem, pp]}
    for k, v in summary.items():
        m = _DEPTH_KEY_RE.match(k)
        if not m or not _is_number(v):
            continue
        slot = flat.setdefault(m["kind"] or "", {}).setdefault(int(m["d"]), [None, None, None, None])
        if m["pp"]:
            slot[0], slot[3] = float(v), int(m["pp"])
        else:
            slot[1 if m["what"] == "tg_tps" else 2] = float(v)
    kind = "" if "" in flat else next(iter(sorted(flat)), None)
    rows = flat.get(kind) or {}
    return [(d, *rows[d]) for d in sorted(rows) if rows[d][0] is not None or rows[d][1] is not None]


def _ctx_label(ctx: int) -> str:
    return f"{ctx // 1024}k" if ctx >= 1024 and ctx % 1024 == 0 else str(ctx)


def depth_label(depth: int, pp: Optional[int] = None) -> str:
    """llama-bench's 'pp512 @ d4096' (depth in k when whole)."""
    return (f"pp{pp} @ " if pp else "") + f"d{_ctx_label(depth)}"


def speed_hardware(r) -> dict:
    """The hardware a speed result was measured on: the run's provenance (one layout for every result),
    else the speed suite's own record in its summary."""
    h = r.summary.get("hardware") if isinstance(r.summary.get("hardware"), dict) else None
    return r.provenance.get("hardware") or h or {}


def hardware_label(h: dict, exec_mode: Optional[str] = None) -> str:
    """'Test CPU (2 cores, 8.0 GB), MLX device Device(cpu, 0), OpenBLAS; exec mode native'."""
    dev = h.get("metal_device") or h.get("mlx_device") or h.get("device") or "?"
    text = (f"{h.get('cpu', '?')} ({h.get('cpu_count', '?')} cores, {h.get('memory_gb', '?')} GB), MLX device {dev}"
            + (", OpenBLAS" if h.get("openblas") else ""))
    return text + (f"; exec mode {exec_mode}" if exec_mode else "")


def speed_groups(per_recipe: dict, recipes: list) -> list:
    """[(hardware label, [recipe, ...])]: recipes measured on the same hardware and exec mode.
    Speeds from different machines or modes never share a table (nor a ratio)."""
    groups: dict = {}
    for name in recipes:
        r = per_recipe.get(name)
        if r is not None:
            groups.setdefault(hardware_label(speed_hardware(r), r.provenance.get("exec_mode", "?")), []).append(name)
    return list(groups.items())


def _sweep_rows(parsed: dict, names: list, label: Callable, columns: tuple, reference: Optional[str]) -> list:
    """Rows = (point, measure), one cell per recipe; with a reference among the names, each other
    recipe's cell in a ratio column carries its ratio to the reference (×1.05 = 5 % faster).
    parsed: {recipe: {x: row}}; columns: (row index, header or header(x), format, ratio?)."""
    points = sorted({x for rows in parsed.values() for x in rows})
    out = []
    for x in points:
        for col, head, fmt, ratio in columns:
            values = {n: parsed[n].get(x, (None,) * 5)[col] for n in names}
            if all(v is None for v in values.values()):
                continue
            ref = values.get(reference) if reference in names else None
            cells = []
            for n in names:
                v = values[n]
                cell = "-" if v is None else fmt.format(v)
                if v is not None and ratio and ref and n != reference:
                    cell += f" (×{v / ref:.2f})"
                cells.append(cell)
            out.append([label(x), head(x) if callable(head) else head, *cells])
    return out


_SPEED_LEGEND = "PP = prompt tokens / time to first token, TG = generated tokens / s (mlx_lm.benchmark conventions)."


def speed_section(doc: Doc, per_recipe: dict, recipes: list, level: int, reference: str = "float") -> bool:
    """Rows = (context, PP | TG | memory), one column per recipe; then the depth sweep (llama-bench -d)
    with each recipe's ratio to the reference. One table per hardware / exec mode."""
    drawn = False
    for hardware, group in speed_groups(per_recipe, recipes):
        parsed = {n: {row[0]: row for row in speed_rows(per_recipe[n].summary)} for n in group}
        names = [n for n in group if parsed.get(n)]
        rows = _sweep_rows({n: parsed[n] for n in names}, names, _ctx_label,
                           ((1, "Prefill (PP, tok/s)", "{:.1f}", True), (2, "Generation (TG, tok/s)", "{:.1f}", True),
                            (3, "Peak memory (GB)", "{:.2f}", False)), None)
        # keyed by (depth, pp): prompts of different lengths are different measurements, never one row
        depths = {n: {(row[0], row[4]): row for row in depth_rows(per_recipe[n].summary)} for n in group}
        depth_names = [n for n in group if depths.get(n)]
        if not rows and not depth_names:
            continue
        if not drawn:
            doc.h(level, "Speed")
            drawn = True
        if rows:
            doc.table(Table(["Context", "", *names], rows, f"Measured on {hardware}. " + _SPEED_LEGEND))
        if depth_names:
            ref = reference if reference in depth_names else None
            one_pp = len({pp for n in depth_names for _, pp in depths[n]}) == 1
            drows = _sweep_rows({n: depths[n] for n in depth_names}, depth_names,
                                lambda x: depth_label(x[0], None if one_pp else x[1]),
                                ((1, lambda x: f"PP tok/s (pp{x[1]})", "{:.1f}", True), (2, "TG tok/s", "{:.1f}", True),
                                 (3, "Peak memory (GB)", "{:.2f}", False)),
                                ref)
            doc.table(Table(["Depth", "", *depth_names], drows,
                            f"Depth sweep (llama-bench -d), measured on {hardware}: d = tokens already in the KV "
                            "cache; PP = tok/s of the timed prompt processed on top of them, TG = tok/s generated "
                            "after it. " + (f"(×r) = ratio to the reference {ref} measured on the same hardware."
                                            if ref else f"No {reference} (reference) depth sweep on this hardware, "
                                            "so no ratios.")))
    return drawn


def generic_section(doc: Doc, suite: str, per_recipe: dict, recipes: list, skip: set, level: int):
    """Any suite: a table of its scalar metrics not shown elsewhere, one column per recipe."""
    metrics = []
    for r in per_recipe.values():
        for k, v in r.summary.items():
            if k in skip or k in metrics or k.endswith("_ci95"):
                continue
            if _is_number(v) or isinstance(v, bool):
                metrics.append(k)
    def varies(m):
        values = {repr(r.summary.get(m)) for r in per_recipe.values()}
        return len(values) > 1

    # informational numbers (counts, skipped rows) only when they differ between recipes
    metrics = [m for m in metrics if m != "n" and (_info_any(per_recipe, m).higher_is_better is not None or varies(m))]
    if not metrics:
        return
    rows = []
    for m in metrics:
        first = next(r for r in per_recipe.values() if m in r.summary)
        info = info_of(first, m)
        arrow = {True: " ↑", False: " ↓"}.get(info.higher_is_better, "")
        rows.append([metric_label(m, info) + arrow] + [
            fmt_ci(per_recipe[n].summary.get(m), ci95(per_recipe[n].summary, m), info)
            if n in per_recipe else "-" for n in recipes])
    doc.h(level, f"{suite}: other metrics" if skip else suite)
    doc.table(Table(["Metric", *[n for n in recipes]], rows, "↑ higher is better, ↓ lower is better."))


def _info_any(per_recipe: dict, metric: str):
    """The metric's info from the first result that has it (declarations differ only across versions)."""
    first = next((r for r in per_recipe.values() if metric in r.summary), None)
    return info_of(first, metric) if first is not None else metric_info(metric)


def embedded_tables(doc: Doc, suite: str, per_recipe: dict, recipes: list, skip=()):
    """A suite's own markdown tables (summary keys ending in "table"), folded."""
    for name in recipes:
        r = per_recipe.get(name)
        if r is None:
            continue
        for key, text in r.summary.items():
            if key.endswith("table") and key not in skip and isinstance(text, str) and text.strip():
                doc.raw(f"{suite} / {name}: {key.replace('_', ' ')}", text)
