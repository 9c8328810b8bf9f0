"""What a summary metric means, for display and for the gate.

A result declares its metrics (`"metrics"`: a list of harness.suite.MetricSpec);
those declarations win. Results of suites that declare nothing fall back to the
name-pattern table METRICS below (direction, display kind, default gate threshold,
per-item record keys). Also the number formatting every table shares.
"""

import fnmatch
import math
from dataclasses import dataclass, replace
from typing import Optional

ALPHA = 0.05  # significance level for every "significant" mark, note and gate decision


@dataclass(frozen=True)
class Metric:
    pattern: str  # fnmatch pattern on the summary key (the metric's name for declared metrics)
    higher_is_better: Optional[bool]  # None: informational, never "better"/"worse"
    kind: str = "float"  # fraction (shown in %), points (/100), float, count, speed (tok/s)
    max_drop: Optional[float] = None  # default gate threshold; None: gated only via --max-drop
    relative: bool = False  # max_drop is a fraction of the baseline value
    items: tuple = ()  # per-item record keys (or record -> value callables) for paired tests
    digits: int = 4  # significant digits for kind "float"
    declared: bool = False  # came from the result's own MetricSpec
    spec_kind: str = ""  # the MetricSpec kind when declared (proportion, mean, ppl, ...)


def _reasoning_points(r: dict) -> float:
    return 100.0 * r["points"] / r["max_points"] if r["max_points"] else 0.0


def _window_nll(r: dict) -> float:  # fidelity windows: mean NLL, the log of the window's perplexity
    return r["sum_nll"] / r["n"]


# First match wins. The default thresholds (max_drop) are what `harness gate` uses without --max-drop.
METRICS = (
    # bookkeeping, errors and the reference's own numbers: never compared
    Metric("n", None, "count"),
    Metric("n_*", None, "count"),
    Metric("*_n", None, "count"),
    Metric("passed", None, "count"),
    Metric("skipped*", None, "count"),
    Metric("trials", None, "count"),
    Metric("gen_tokens", None, "count"),
    Metric("seconds", None, "float"),
    Metric("*_err", None, "float"),
    Metric("*_stderr", None, "float"),
    Metric("ref_*", None, "float"),
    Metric("*_cor", None, "float"),
    # accuracies
    Metric("acc", True, "fraction", 0.02, items=("correct",)),
    Metric("accuracy", True, "fraction", 0.02, items=("correct",)),
    Metric("pass@*", True, "fraction", 0.02, items=("correct",)),
    Metric("pass_at_*", True, "fraction", 0.02, items=("correct",)),
    Metric("exact_match*", True, "fraction", 0.02),
    Metric("*acc*", True, "fraction", 0.02),
    # reasoning
    Metric("score", True, "points", 5.0, items=(_reasoning_points,)),
    Metric("judge_score", True, "points"),
    Metric("score_*", True, "points"),
    Metric("failed_*", False, "count"),
    # fidelity (llama.cpp --kl-divergence names and plain ones)
    Metric("ppl", False, "float", 0.05, relative=True, items=(_window_nll, "nll")),
    Metric("perplexity", False, "float", 0.05, relative=True, items=(_window_nll, "nll")),
    Metric("*ppl*", False, "float"),
    Metric("kld", False, "float", 0.02, items=("kld", "kl")),
    Metric("kld_mean", False, "float", 0.02, items=("kld_mean", "kld", "kl")),
    Metric("kl", False, "float", 0.02, items=("kl", "kld")),
    Metric("kl_mean", False, "float", 0.02, items=("kl_mean", "kl", "kld")),
    Metric("kld_*", False, "float"),
    Metric("kl_*", False, "float"),
    Metric("top1", True, "fraction", 0.02, items=("top1", "same_top")),
    Metric("top1_agreement", True, "fraction", 0.02, items=("top1_agreement", "top1", "same_top")),
    Metric("same_top*", True, "fraction", 0.02, items=("same_top", "top1")),
    Metric("*top1*", True, "fraction"),
    Metric("rms_dp", False, "float"),
    Metric("dp_*", None, "float"),
    Metric("nll*", False, "float", items=("nll",)),
    # unicode and other rates
    Metric("*fffd*rate", False, "fraction", 0.02),
    Metric("*invalid*rate", False, "fraction", 0.02),
    Metric("*error*rate", False, "fraction"),
    Metric("*fffd*", False, "count"),
    Metric("*invalid*", False, "count"),
    Metric("*_rate", True, "fraction", 0.02),
    # speed: hardware-dependent, so never gated by default
    Metric("*tps*", True, "speed"),
    Metric("*tok_s*", True, "speed"),
    Metric("*tokens_per_s*", True, "speed"),
    Metric("*memory*", False, "float"),
    Metric("*_gb", False, "float"),
    Metric("*latency*", False, "float"),
    Metric("*drop*", False, "float"),
)
FALLBACK = Metric("*", None, "float")
ACCURACY_LIKE = Metric("*", True, "fraction", 0.02)  # unknown metric with a CI inside [0, 1]
KIND_UNITS = {"fraction": " (%)", "points": " (/100)", "speed": " (tok/s)"}
# MetricSpec.kind -> display kind
SPEC_KINDS = {"proportion": "fraction", "mean": "float", "ppl": "float", "points": "points", "count": "count",
              "speed": "speed", "info": "float"}


def _pattern_info(name: str, summary: Optional[dict] = None) -> Metric:
    for m in METRICS:
        if fnmatch.fnmatchcase(name, m.pattern):
            return m
    if summary is not None:
        ci, value = ci95(summary, name), summary.get(name)
        if _is_ci(ci) and _is_number(value) and 0.0 <= value <= 1.0 and 0.0 <= ci[0] and ci[1] <= 1.0:
            return ACCURACY_LIKE
    return FALLBACK


def from_spec(spec, fallback: Optional[Metric] = None) -> Metric:
    """Display/gate info of a declared MetricSpec. The pattern table's per-item
    extractors are kept after the declared item_key (e.g. a window's NLL behind ppl)."""
    items = ((spec.item_key,) if spec.item_key else ()) + (fallback.items if fallback else ())
    higher = None if spec.kind == "info" else spec.higher_is_better
    return Metric(spec.name, higher, SPEC_KINDS.get(spec.kind, "float"), spec.max_drop, spec.relative, items,
                  declared=True, spec_kind=spec.kind)


def metric_info(name: str, summary: Optional[dict] = None, specs=None) -> Metric:
    """How to read one summary metric: its declaration in `specs` (a result's
    MetricSpec list) when there is one, else the name-pattern table (an unknown
    key that comes with a CI inside [0, 1] is treated as an accuracy). For a
    result that declares metrics, an undeclared one keeps the pattern's display
    and direction but gets no default gate threshold."""
    for spec in specs or ():
        if spec.name == name:
            return from_spec(spec, _pattern_info(name, summary))
    info = _pattern_info(name, summary)
    if specs and info.max_drop is not None:  # a suite that declares its metrics declares what is gated
        info = replace(info, max_drop=None)
    return info


def info_of(result, name: str) -> Metric:
    """metric_info for a metric of a SuiteResult (its declarations, then patterns)."""
    return metric_info(name, result.summary, result.metrics)


def metric_label(name: str, info: Optional[Metric] = None) -> str:
    info = info or metric_info(name)
    return name + KIND_UNITS.get(info.kind, "")


def fmt_value(value, info: Metric) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if not _is_number(value):
        return str(value)
    if info.kind == "fraction":
        return f"{100 * value:.1f}"
    if info.kind == "points":
        return f"{value:.1f}"
    if info.kind == "speed":
        return f"{value:.1f}"
    if info.kind == "count":
        return f"{value:g}"
    return f"{value:#.{info.digits}g}".rstrip(".")  # '#': keep trailing zeros (20.50, not 20.5)


def fmt_ci(value, ci, info: Metric) -> str:
    """`value ± half-width` (the CI's mean half-width, in display units)."""
    text = fmt_value(value, info)
    if not _is_ci(ci) or not _is_number(value):
        return text
    half = (ci[1] - ci[0]) / 2
    return f"{text} ± {fmt_value(half, info) if info.kind != 'float' else f'{half:.2g}'}"


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_ci(x) -> bool:
    return isinstance(x, (list, tuple)) and len(x) == 2 and all(_is_number(v) for v in x)


is_number, is_ci = _is_number, _is_ci


def ci95(summary: dict, metric: str) -> Optional[list]:
    """The metric's 95 % CI: "<metric>_ci95", else value ± 1.96 "<metric>_err" (a standard error)."""
    ci = summary.get(f"{metric}_ci95")
    if _is_ci(ci):
        return list(ci)
    value, err = summary.get(metric), summary.get(f"{metric}_err")
    if err is None and metric.endswith("_mean"):  # llama.cpp style: kld_mean ± kld_err
        err = summary.get(f"{metric[:-5]}_err")
    if _is_number(value) and _is_number(err):
        return [value - 1.959964 * err, value + 1.959964 * err]
    return None


def scalar_metrics(summary: dict) -> dict:
    """{name: number} of a summary's numeric metrics (no CIs, lists, tables)."""
    return {k: v for k, v in summary.items() if _is_number(v) and not k.endswith("_ci95")}


def p_text(p: Optional[float]) -> str:
    if p is None:
        return "-"
    return f"{p:.2g}" if p >= 0.001 else "< 0.001"


def p_eq(p: Optional[float]) -> str:
    """'p = 0.25' or 'p < 0.001'."""
    text = p_text(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


__all__ = ["ALPHA", "Metric", "METRICS", "metric_info", "info_of", "from_spec", "metric_label", "fmt_value",
           "fmt_ci", "ci95", "scalar_metrics", "p_text", "p_eq", "is_number", "is_ci"]
