"""`harness report`: comparison tables (markdown, HTML, JSON) and plots from stored results.

Reads only "harness.result/1" files (harness/results.py). Laid out like the seed
model cards: quantization details, a benchmark comparison (one column per
recipe, value ± 95 % CI, flips vs float), reasoning (Score | Grade), fidelity
(PPL, KLD, top-1) and speed (Context | PP | TG), then notes and provenance.

Nothing here is suite-specific beyond the three named sections: a metric's
direction, format and default gate threshold come from METRICS by name pattern
(unknown names fall back to sensible defaults), any suite whose summary has
"<metric>_ci95" joins the benchmark comparison, and every other suite gets a
generic table of its scalar metrics.
"""

import fnmatch
import html
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from tabulate import tabulate

from harness.cache import atomic_write_text
from harness.errors import HarnessError
from harness.results import SCHEMA, find_results, read_items, read_result

ALPHA = 0.05  # significance level for every "significant" mark, note and gate decision
DEDICATED = ("reasoning", "fidelity", "speed")  # suites with their own section
EQUAL_BPW = 0.15  # recipes within this many bits per weight are "the same size" (oQ4 4.6 vs uniform4 4.5)


# ----------------------------------------------------------------------------
# Metric registry: direction, display and default gate threshold by name pattern


@dataclass(frozen=True)
class Metric:
    pattern: str  # fnmatch pattern on the summary key
    higher_is_better: Optional[bool]  # None: informational, never "better"/"worse"
    kind: str = "float"  # fraction (shown in %), points (/100), float, count, speed (tok/s)
    max_drop: Optional[float] = None  # default gate threshold; None: gated only via --max-drop
    relative: bool = False  # max_drop is a fraction of the baseline value
    items: tuple = ()  # per-item record keys (or record -> value callables) for paired tests
    digits: int = 4  # significant digits for kind "float"


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


def metric_info(name: str, summary: Optional[dict] = None) -> Metric:
    """Registry entry for a summary key; an unknown key that comes with a CI
    inside [0, 1] is treated as an accuracy."""
    for m in METRICS:
        if fnmatch.fnmatchcase(name, m.pattern):
            return m
    if summary is not None:
        ci, value = ci95(summary, name), summary.get(name)
        if _is_ci(ci) and _is_number(value) and 0.0 <= value <= 1.0 and 0.0 <= ci[0] and ci[1] <= 1.0:
            return ACCURACY_LIKE
    return FALLBACK


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


# ----------------------------------------------------------------------------
# Loading


@dataclass
class Result:
    path: Path
    data: dict
    _items: Optional[list] = field(default=None, repr=False)

    model = property(lambda self: str(self.data.get("model", "?")))
    recipe = property(lambda self: str(self.data.get("recipe", "?")))
    suite = property(lambda self: str(self.data.get("suite", "?")))
    summary = property(lambda self: self.data.get("summary") or {})
    artifact = property(lambda self: self.data.get("artifact") or {})
    provenance = property(lambda self: self.data.get("provenance") or {})

    @property
    def bpw(self) -> Optional[float]:
        bpw = self.artifact.get("bpw")
        return bpw if _is_number(bpw) else None

    @property
    def key(self) -> tuple:
        return (self.model, self.recipe, self.suite)

    def items(self) -> list:
        if self._items is None:
            self._items = read_items(self.path)
        return self._items


def load_results(root) -> list:
    """Every result under `root` (a results dir or one result JSON).

    A file given explicitly must be a result (HarnessError otherwise); other
    JSON files met while scanning a directory (plans, configs) are skipped.
    """
    root = Path(root)
    paths = find_results(root)
    out = []
    for p in paths:
        if root.is_file():
            out.append(Result(p, read_result(p)))
            continue
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(data, dict) and data.get("schema") == SCHEMA:
            out.append(Result(p, data))
    if not out:
        raise HarnessError(f"no harness results under {root}; run `harness run ... --out {root}` first "
                           "or point at a results directory")
    return out


def latest_by_key(results: list, warn: Callable = None) -> list:
    """One result per (model, recipe, suite): the newest when a directory holds several."""
    chosen = {}
    for r in results:
        old = chosen.get(r.key)
        if old is not None and warn:
            warn(f"{'/'.join(r.key)}: several results ({old.path}, {r.path}); using the newest")
        if old is None or str(r.provenance.get("time", "")) > str(old.provenance.get("time", "")):
            chosen[r.key] = r
    return list(chosen.values())


def recipe_order(results: list) -> list:
    """Recipes: float first, then by bpw descending, then name."""
    bpw = {}
    for r in results:
        if r.bpw is not None:
            bpw.setdefault(r.recipe, r.bpw)
    names = sorted({r.recipe for r in results})
    return sorted(names, key=lambda n: (n != "float", -bpw.get(n, 0.0), n))


# ----------------------------------------------------------------------------
# Paired comparison of one metric between two results (used by notes and the gate)


@dataclass
class Diff:
    metric: str
    base: float
    cur: float
    info: Metric
    p: Optional[float] = None  # two-sided
    test: str = "-"
    n: Optional[int] = None  # items paired (None for summary-only tests)
    lost: Optional[int] = None  # binary items that got worse (e.g. right -> wrong)
    gained: Optional[int] = None

    @property
    def delta(self) -> float:
        return self.cur - self.base

    @property
    def worse_by(self) -> Optional[float]:
        """Drop in the metric's 'better' direction (> 0: current is worse)."""
        if self.info.higher_is_better is None:
            return None
        return self.base - self.cur if self.info.higher_is_better else self.cur - self.base

    def significant(self, alpha: float = ALPHA) -> bool:
        return self.p is not None and self.p < alpha


def item_values(metric: str, records: list, info: Optional[Metric] = None) -> dict:
    """{id: number} of a metric's per-item values, found by the registry's item
    keys, then the metric's own name, then the name without _rate/_mean, also
    inside a record's "metrics" dict (lm-eval). {} when records do not carry it."""
    info = info or metric_info(metric)
    candidates = list(info.items) + [metric]
    for suffix in ("_rate", "_mean"):
        if metric.endswith(suffix):
            candidates.append(metric[: -len(suffix)])
    for cand in candidates:
        out = {}
        for r in records:
            try:
                if callable(cand):
                    v = cand(r)
                else:
                    v = r[cand] if cand in r else (r.get("metrics") or {})[cand]
            except (KeyError, TypeError, ZeroDivisionError):
                continue
            if isinstance(v, bool):
                v = float(v)
            if _is_number(v) and "id" in r:
                out[r["id"]] = float(v)
        if out:
            return out
    return {}


def compare_metric(metric: str, base: Result, cur: Result, use_items: bool = True) -> Optional[Diff]:
    """Diff of `metric` from `base` to `cur`, with the strongest test the data allows:
    McNemar exact on binary per-item values paired by id, a paired bootstrap on
    other per-item values, else a z-test from the two CIs (or Wilson intervals
    for fractions with n). None when either side lacks the metric."""
    from harness.stats import mcnemar_exact, paired_bootstrap, paired_flips, wilson_ci

    b_val, c_val = base.summary.get(metric), cur.summary.get(metric)
    if not (_is_number(b_val) and _is_number(c_val)):
        return None
    info = metric_info(metric, base.summary)
    diff = Diff(metric, float(b_val), float(c_val), info)
    if info.higher_is_better is None:
        return diff  # informational (counts, errors): shown, never tested
    if use_items:
        bv, cv = item_values(metric, base.items(), info), item_values(metric, cur.items(), info)
        ids = sorted(set(bv) & set(cv))
        if ids:
            a, b = [bv[i] for i in ids], [cv[i] for i in ids]
            diff.n = len(ids)
            if all(x in (0.0, 1.0) for x in a + b):
                flips = paired_flips([{"id": i, "correct": x} for i, x in zip(ids, a)],
                                     [{"id": i, "correct": x} for i, x in zip(ids, b)])
                down, up = flips["right_to_wrong"], flips["wrong_to_right"]
                diff.p, diff.test = mcnemar_exact(down, up), "McNemar exact"
                worse_is_down = info.higher_is_better is not False
                diff.lost, diff.gained = (down, up) if worse_is_down else (up, down)
            else:
                diff.p, diff.test = paired_bootstrap(a, b, n_boot=5000, seed=0)["p_value"], "paired bootstrap"
            return diff
        paired = cur.data.get("paired") or {}
        if (base.recipe == "float" and paired.get("vs") == "float" and "correct" in info.items
                and _is_number(paired.get("mcnemar_p"))):  # items not kept: the runner's stored flips
            diff.p, diff.test = float(paired["mcnemar_p"]), "McNemar exact (stored)"
            diff.n, diff.lost, diff.gained = paired.get("n_paired"), paired.get("right_to_wrong"), \
                paired.get("wrong_to_right")
            return diff
    b_ci, c_ci = ci95(base.summary, metric), ci95(cur.summary, metric)
    test = "CI z-test"
    if not (_is_ci(b_ci) and _is_ci(c_ci)) and info.kind == "fraction":
        nb, nc = base.summary.get("n"), cur.summary.get("n")
        if _is_number(nb) and _is_number(nc) and nb > 0 and nc > 0 and 0 <= b_val <= 1 and 0 <= c_val <= 1:
            b_ci, c_ci = wilson_ci(round(b_val * nb), int(nb)), wilson_ci(round(c_val * nc), int(nc))
            test = "Wilson z-test"
    if _is_ci(b_ci) and _is_ci(c_ci):
        se = math.hypot((b_ci[1] - b_ci[0]) / 3.92, (c_ci[1] - c_ci[0]) / 3.92)
        if se > 0:
            diff.p = math.erfc(abs(diff.delta) / se / math.sqrt(2))
        else:
            diff.p = 1.0 if diff.delta == 0 else 0.0
        diff.test = test
    return diff


# ----------------------------------------------------------------------------
# Document: a list of blocks rendered to markdown, HTML or JSON


@dataclass
class Table:
    headers: list
    rows: list
    caption: str = ""  # legend shown under the table


@dataclass
class Doc:
    blocks: list = field(default_factory=list)  # (kind, payload); kind: h, p, table, bullets, details, img

    def h(self, level: int, text: str):
        self.blocks.append(("h", (level, text)))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def table(self, t: Table):
        self.blocks.append(("table", t))

    def bullets(self, lines: list):
        if lines:
            self.blocks.append(("bullets", lines))

    def raw(self, title: str, text: str):
        """A suite's own table (e.g. summary["table"]), folded away; plain text goes in a code block."""
        is_markdown = any(line.lstrip().startswith("|") for line in text.splitlines())
        self.blocks.append(("details", (title, text if is_markdown else f"```text\n{text}\n```")))

    def img(self, path: str, alt: str):
        self.blocks.append(("img", (path, alt)))


def _md_cell(x) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def _align(t: Table) -> list:
    """Numbers right, text left: a column is numeric when every filled cell starts like a number."""
    out = []
    for j in range(len(t.headers)):
        cells = [str(row[j]) for row in t.rows if j < len(row) and str(row[j]) not in ("", "-")]
        numeric = j > 0 and cells and all(re.match(r"[-+×]?\d", c) for c in cells)
        out.append("right" if numeric else "left")
    return out


def _md_table(t: Table) -> str:
    align = _align(t)
    rows = [[_md_cell(c) for c in row] for row in t.rows]
    text = tabulate(rows, headers=[_md_cell(h) for h in t.headers], tablefmt="pipe",
                    disable_numparse=True, colalign=align)
    return text + (f"\n\n<sub>{t.caption}</sub>" if t.caption else "")


def render_markdown(doc: Doc) -> str:
    out = []
    for kind, x in doc.blocks:
        if kind == "h":
            out.append("#" * x[0] + " " + x[1])
        elif kind == "p":
            out.append(x)
        elif kind == "table":
            out.append(_md_table(x))
        elif kind == "bullets":
            out.append("\n".join(f"- {line}" for line in x))
        elif kind == "details":
            out.append(f"<details><summary>{html.escape(x[0])}</summary>\n\n{x[1]}\n\n</details>")
        elif kind == "img":
            out.append(f"![{x[1]}]({x[0]})")
    return "\n\n".join(out) + "\n"


_CSS = """body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1f2328;line-height:1.45}table{border-collapse:collapse;margin:.6em 0;display:block;overflow-x:auto}
th,td{border:1px solid #d0d7de;padding:4px 10px;font-variant-numeric:tabular-nums}th{background:#f6f8fa}
tr:nth-child(even) td{background:#fbfbfc}
img{max-width:100%;border:1px solid #eee;margin:.4em 0}code{background:#f6f8fa;padding:0 .3em}
.caption{font-size:.85em;color:#57606a}h1,h2{border-bottom:1px solid #d8dee4;padding-bottom:.2em}"""


def _inline_html(text: str) -> str:
    """Escape, then the little inline markdown the report itself writes (`code`, **bold**)."""
    text = html.escape(str(text))
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)


def _markdown_to_html(markdown: str) -> str:
    try:  # suites' own tables are markdown; markdown-it renders them when installed
        from markdown_it import MarkdownIt

        return MarkdownIt("commonmark").enable("table").render(markdown)
    except ImportError:
        return f"<pre>{html.escape(markdown)}</pre>"


def render_html(doc: Doc, title: str = "harness report") -> str:
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{_CSS}</style></head><body>"]
    for kind, x in doc.blocks:
        if kind == "h":
            out.append(f"<h{x[0]}>{_inline_html(x[1])}</h{x[0]}>")
        elif kind == "p":
            out.append(f"<p>{_inline_html(x)}</p>")
        elif kind == "table":
            align = _align(x)
            head = "".join(f"<th style='text-align:{a}'>{_inline_html(h)}</th>" for h, a in zip(x.headers, align))
            body = "".join("<tr>" + "".join(f"<td style='text-align:{a}'>{_inline_html(c)}</td>"
                                            for c, a in zip(row, align)) + "</tr>" for row in x.rows)
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            if x.caption:
                out.append(f"<p class='caption'>{_inline_html(x.caption)}</p>")
        elif kind == "bullets":
            out.append("<ul>" + "".join(f"<li>{_inline_html(line)}</li>" for line in x) + "</ul>")
        elif kind == "details":
            out.append(f"<details><summary>{html.escape(x[0])}</summary>{_markdown_to_html(x[1])}</details>")
        elif kind == "img":
            out.append(f"<p><img src='{html.escape(x[0])}' alt='{html.escape(x[1])}'></p>")
    out.append("</body></html>")
    return "\n".join(out)


def render_json(doc: Doc, results: list) -> str:
    blocks = []
    for kind, x in doc.blocks:
        if kind == "table":
            blocks.append({"kind": "table", "headers": x.headers, "rows": x.rows, "caption": x.caption})
        elif kind == "h":
            blocks.append({"kind": "heading", "level": x[0], "text": x[1]})
        elif kind == "details":
            blocks.append({"kind": "suite_markdown", "title": x[0], "markdown": x[1]})
        elif kind == "img":
            blocks.append({"kind": "image", "path": x[0], "alt": x[1]})
        else:
            blocks.append({"kind": {"p": "paragraph"}.get(kind, kind), "content": x})
    data = {
        "schema": "harness.report.core/1",
        "results": [{"model": r.model, "recipe": r.recipe, "suite": r.suite, "path": str(r.path),
                     "bpw": r.bpw, "bpw_mlx": r.artifact.get("bpw_mlx"), "n_items": r.data.get("n_items"),
                     "complete": r.data.get("complete"), "exec_mode": r.provenance.get("exec_mode"),
                     "metrics": scalar_metrics(r.summary),
                     "ci95": {k[:-5]: v for k, v in r.summary.items() if k.endswith("_ci95") and _is_ci(v)},
                     "paired_vs_float": r.data.get("paired")}
                    for r in results],
        "blocks": blocks,
    }
    return json.dumps(data, indent=1, ensure_ascii=False, default=str)


# ----------------------------------------------------------------------------
# Sections


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


def _vs_float_suffix(d: Optional[Diff]) -> str:
    if d is None:
        return ""
    parts = []
    if d.lost is not None:
        parts.append(f"{d.lost}↓ {d.gained}↑")
    if d.p is not None:
        parts.append("*" if d.significant() else "n.s.")
    return f" ({', '.join(parts)})" if parts else ""


def _diffs_vs_float(by_suite: dict, recipes: list, metrics_of: Callable) -> dict:
    """{(suite, metric, recipe): Diff vs the float result of that suite}."""
    out = {}
    for suite, per_recipe in by_suite.items():
        ref = per_recipe.get("float")
        if ref is None:
            continue
        for metric in metrics_of(suite):
            for name in recipes:
                r = per_recipe.get(name)
                if r is not None and name != "float":
                    d = compare_metric(metric, ref, r)
                    if d is not None:
                        out[(suite, metric, name)] = d
    return out


def benchmark_metrics(per_recipe: dict) -> list:
    """Metrics of a suite with a CI in any recipe's summary (accuracy-like), in summary order."""
    names = []
    for r in per_recipe.values():
        for k in r.summary:
            if k.endswith("_ci95") and _is_number(r.summary.get(k[:-5])) and k[:-5] not in names:
                names.append(k[:-5])
    return names


_FLIP_LEGEND = ("a↓ b↑: items float got right that this recipe gets wrong / the reverse; "
                "* = differs from float at p < 0.05 (paired test), n.s. = not significant.")


def benchmark_section(doc: Doc, by_suite: dict, recipes: list, diffs: dict, level: int):
    rows = []
    for suite, per_recipe in by_suite.items():
        if suite in DEDICATED:
            continue
        for metric in benchmark_metrics(per_recipe):
            info = metric_info(metric, next(iter(per_recipe.values())).summary)
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
    first = next(iter(per_recipe.values())).summary
    return [k for k in scalar_metrics(first) if metric_info(k, first).higher_is_better is not None]


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
            info = metric_info(m, r.summary)
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
        headers.append(metric_label(m, metric_info(m)))
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


def _ctx_label(ctx: int) -> str:
    return f"{ctx // 1024}k" if ctx >= 1024 and ctx % 1024 == 0 else str(ctx)


def speed_section(doc: Doc, per_recipe: dict, recipes: list, level: int) -> bool:
    """Rows = (context, PP | TG | memory), one column per recipe."""
    parsed = {name: {row[0]: row for row in speed_rows(r.summary)} for name, r in per_recipe.items()}
    contexts = sorted({c for rows in parsed.values() for c in rows})
    if not contexts:
        return False
    names = [n for n in recipes if parsed.get(n)]
    rows = []
    for ctx in contexts:
        for col, label, fmt in ((1, "Prefill (PP, tok/s)", "{:.1f}"), (2, "Generation (TG, tok/s)", "{:.1f}"),
                                (3, "Peak memory (GB)", "{:.2f}")):
            cells = [parsed[n].get(ctx, (None,) * 4)[col] for n in names]
            if any(c is not None for c in cells):
                rows.append([_ctx_label(ctx), label, *("-" if c is None else fmt.format(c) for c in cells)])
    exec_modes = sorted({r.provenance.get("exec_mode", "?") for r in per_recipe.values()})
    doc.h(level, "Speed")
    doc.table(Table(["Context", "", *names], rows, f"Measured with exec mode {', '.join(exec_modes)}; PP = prompt "
                    "tokens / time to first token, TG = generated tokens / s (mlx_lm.benchmark conventions)."))
    return True


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
    metrics = [m for m in metrics if m != "n" and (metric_info(m).higher_is_better is not None or varies(m))]
    if not metrics:
        return
    rows = []
    for m in metrics:
        first = next(r for r in per_recipe.values() if m in r.summary)
        info = metric_info(m, first.summary)
        arrow = {True: " ↑", False: " ↓"}.get(info.higher_is_better, "")
        rows.append([metric_label(m, info) + arrow] + [
            fmt_ci(per_recipe[n].summary.get(m), ci95(per_recipe[n].summary, m), info)
            if n in per_recipe else "-" for n in recipes])
    doc.h(level, f"{suite}: other metrics" if skip else suite)
    doc.table(Table(["Metric", *[n for n in recipes]], rows, "↑ higher is better, ↓ lower is better."))


def embedded_tables(doc: Doc, suite: str, per_recipe: dict, recipes: list, skip=()):
    """A suite's own markdown tables (summary keys ending in "table"), folded."""
    for name in recipes:
        r = per_recipe.get(name)
        if r is None:
            continue
        for key, text in r.summary.items():
            if key.endswith("table") and key not in skip and isinstance(text, str) and text.strip():
                doc.raw(f"{suite} / {name}: {key.replace('_', ' ')}", text)


# ----------------------------------------------------------------------------
# Notes and provenance


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
                    if d.significant():
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


def p_text(p: Optional[float]) -> str:
    if p is None:
        return "-"
    return f"{p:.2g}" if p >= 0.001 else "< 0.001"


def p_eq(p: Optional[float]) -> str:
    """'p = 0.25' or 'p < 0.001'."""
    text = p_text(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def delta_text(d: Diff) -> str:
    """Change from base to current in display units ('points' for fractions and scores)."""
    if d.info.kind in ("fraction", "points"):
        return f"{d.delta * (100 if d.info.kind == 'fraction' else 1):+.1f} pts"
    return f"{d.delta:+.3g}"


def notes(results: list, recipes: list, by_suite: dict, diffs: dict, metrics_of: Callable = lambda s: []) -> list:
    lines = []
    for name in recipes:
        groups = {"not significant": [], "significantly worse": [], "significantly better": []}
        for (suite, metric, who), d in sorted(diffs.items()):
            if who != name or d.info.higher_is_better is None or d.p is None:
                continue
            key = ("not significant" if not d.significant() else
                   "significantly worse" if (d.worse_by or 0) > 0 else "significantly better")
            groups[key].append(f"{suite} {metric} {delta_text(d)} ({p_eq(d.p)})")
        parts = [f"{'**not significant**' if k == 'not significant' else k}: {', '.join(v)}"
                 for k, v in groups.items() if v]
        if parts:
            lines.append(f"**{name}** vs float — " + "; ".join(parts) + ".")
    if diffs:
        lines.append("A difference marked not significant is within the noise of this sample size: treat those "
                     f"recipes as equal to float there. Tests are paired where items are paired (McNemar exact on "
                     f"right/wrong items, paired bootstrap on per-item scores, KL, NLL), else a z-test from the "
                     f"95 % CIs; significant means p < {ALPHA}, two-sided.")
    lines += _equal_size_notes(recipes, by_suite, metrics_of)
    for suite, per_recipe in by_suite.items():
        ns = {name: r.summary.get("n", r.data.get("n_items")) for name, r in per_recipe.items()}
        if len(set(ns.values())) > 1:
            lines.append(f"{suite}: recipes were scored on different numbers of items "
                         f"({', '.join(f'{k} {v}' for k, v in ns.items())}); paired tests use the shared items only.")
        limits = {r.provenance.get("limit") for r in per_recipe.values()} - {None}
        if limits:
            lines.append(f"{suite}: a subset was evaluated (--limit {', '.join(map(str, sorted(limits)))}); "
                         "confidence intervals reflect that sample size.")
        if "float" not in per_recipe and suite not in ("speed",):
            lines.append(f"{suite}: no float result, so no flips or tests against float are shown.")
    incomplete = [f"{r.recipe}/{r.suite}" for r in results if r.data.get("complete") is False]
    if incomplete:
        lines.append(f"Incomplete runs (interrupted; resume with the same `harness run`): {', '.join(incomplete)}.")
    modes = {r.provenance.get("exec_mode") for r in results if r.suite != "speed"}
    if "simulated" in modes:
        lines.append("Quality suites marked *simulated* ran with each quantized layer dequantized to fp32 "
                     "(same outputs as the quantized kernels up to float rounding); speed is always measured "
                     "with native quantized kernels.")
    return lines


def provenance_section(doc: Doc, results: list, level: int, recipes: list):
    rows = []
    for suite in sorted({r.suite for r in results}):
        rs = [r for r in results if r.suite == suite]
        data = rs[0].provenance.get("data") or {}
        src = str(data.get("source", "-"))
        if data.get("sha256"):
            src += f" (sha256 {str(data['sha256'])[:12]})"
        ns = sorted({str(r.data.get("n_items", "-")) for r in rs})
        rows.append([suite, ", ".join(n for n in recipes if any(r.recipe == n for r in rs)), "/".join(ns),
                     ", ".join(sorted({str(r.provenance.get("exec_mode", "-")) for r in rs})),
                     ", ".join(sorted({str(r.provenance.get("limit") or "-") for r in rs})),
                     ", ".join(sorted({str(r.provenance.get("seed", "-")) for r in rs})),
                     ", ".join(sorted({str(r.provenance.get("suite_version", "-")) for r in rs})), src])
    doc.h(level, "Provenance")
    doc.table(Table(["Suite", "Recipes", "Items", "Exec mode", "Limit", "Seed", "Suite version", "Data"], rows))
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


# ----------------------------------------------------------------------------
# Report


@dataclass
class ReportOptions:
    results: Path = Path("results")
    format: str = "md"  # md | html | json
    out: Optional[Path] = None
    model_card: bool = False
    plots: Optional[Path] = None  # default when `out` is given: <out dir>/plots


def compared_metrics(suite: str, per_recipe: dict) -> list:
    """Metrics tested against float and between equal-size recipes."""
    if suite == "reasoning":
        return ["score"]
    if suite == "fidelity":
        return fidelity_metrics(per_recipe)
    if suite == "speed":
        return []  # hardware-dependent, no per-item pairing
    return benchmark_metrics(per_recipe)


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
        doc.p(("Recipes " if titled else f"Model `{model}`; recipes ") + ", ".join(f"**{n}**" for n in recipes)
              + " (float = the unquantized reference; columns ordered by size).")
        quantization_section(doc, rs, recipes, level)

        metrics_of = lambda suite: compared_metrics(suite, by_suite[suite])  # noqa: E731
        diffs = _diffs_vs_float(by_suite, recipes, metrics_of)
        benchmark_section(doc, by_suite, recipes, diffs, level)
        if "reasoning" in by_suite:
            reasoning_section(doc, by_suite["reasoning"], recipes, diffs, level, full=not model_card)
        if "fidelity" in by_suite:
            fidelity_section(doc, by_suite["fidelity"], recipes, diffs, level)
        if "speed" in by_suite and not speed_section(doc, by_suite["speed"], recipes, level):
            generic_section(doc, "speed", by_suite["speed"], recipes, set(), level)
        for suite, per_recipe in by_suite.items():
            if model_card:
                continue  # the card keeps to the headline tables
            if suite not in DEDICATED:
                generic_section(doc, suite, per_recipe, recipes, set(benchmark_metrics(per_recipe)) | {"n"}, level)
            # the suite's own tables, except those our sections already show (reasoning/speed "table")
            embedded_tables(doc, suite, per_recipe, recipes, skip=("table",) if suite in ("reasoning", "speed") else ())
        model_plots = (plot_files or {}).get(model, [])
        if model_plots:
            doc.h(level, "Plots")
        for path, alt in model_plots:
            doc.img(_relative(path, link_base), alt)
        doc.h(level, "Notes")
        doc.bullets(notes(rs, recipes, by_suite, diffs, metrics_of) or ["No caveats."])
        provenance_section(doc, rs, level, recipes)
    return doc


def _relative(path: Path, base: Optional[Path]) -> str:
    path = Path(path)
    if base is None:
        return str(path)
    try:
        return str(path.resolve().relative_to(Path(base).resolve()))
    except ValueError:
        import os

        return os.path.relpath(path.resolve(), Path(base).resolve())


def make_report(opts: ReportOptions) -> str:
    if opts.format not in ("md", "html", "json"):
        raise HarnessError(f"--format {opts.format!r} is not one of md, html, json")
    results = latest_by_key(load_results(opts.results), warn=lambda m: print(f"harness: note: {m}", file=sys.stderr))
    plots_dir = opts.plots or (Path(opts.out).parent / "plots" if opts.out else None)
    plot_files = {}
    if plots_dir is not None:
        from harness.report.plots import write_plots

        for model in sorted({r.model for r in results}):
            rs = [r for r in results if r.model == model]
            sub = Path(plots_dir) / _slug(model) if len({r.model for r in results}) > 1 else Path(plots_dir)
            plot_files[model] = [(p, alt) for p, alt in write_plots(rs, sub) if p.suffix == ".png"]
    base = Path(opts.out).parent if opts.out else Path.cwd()
    doc = build_doc(results, model_card=opts.model_card, plot_files=plot_files, link_base=base)
    if opts.format == "html":
        return render_html(doc)
    if opts.format == "json":
        return render_json(doc, results)
    return render_markdown(doc)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "model"


def report_cli(args) -> int:
    opts = ReportOptions(results=Path(args.results), format=args.format,
                         out=Path(args.out) if args.out else None, model_card=args.model_card,
                         plots=Path(args.plots) if args.plots else None)
    text = make_report(opts)
    if opts.out:
        atomic_write_text(opts.out, text)
        print(f"report written to {opts.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
