"""`harness compare A B` and `harness gate --baseline FILE|DIR [--max-drop METRIC=VALUE ...]`.

The gate fails (exit 1) only on a drop that is both beyond its threshold and
statistically significant at ALPHA = 0.05 (fixed; two-sided):

* items paired by id on both sides, binary per-item values (correct, pass):
  McNemar exact on the flips;
* other per-item values (reasoning points, KL, NLL): paired bootstrap;
* summary only: z-test from the two 95 % CIs ("<metric>_ci95", or value ±
  1.96 "<metric>_err"; Wilson intervals from n for fractions without either).
  A drop no test can be run on is shown as "untestable", warned about, and
  does not fail the gate.

Drops are direction-aware (drop = baseline - current when higher is better).
Thresholds: `--max-drop acc=0.03` (absolute, in the metric's units: fractions
are 0..1, reasoning score is 0..100), `--max-drop ppl=5%` (relative to the
baseline); METRIC may be a glob and may be prefixed by a suite (`mmlu.acc`).
With --max-drop only the named metrics are gated; without it the defaults of
harness.report.core.METRICS apply: accuracies, pass@k, rates and top-1 agreement
0.02 absolute, reasoning score 5 points, perplexity (ppl) +5 % relative, mean
KLD (kld, kld_mean) +0.02 absolute; speed, memory, percentiles and counts are
not gated by default. Exit 0 pass, 1 regression, 2 bad input.

Pairing: results with the same (model, recipe, suite); otherwise, per suite,
the single result left on each side (so a 2-bit run can be gated against a
4-bit baseline). A baseline stored inside the --results directory is not
compared with itself.
"""

import fnmatch
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tabulate import tabulate

from harness.errors import HarnessError
from harness.report.core import ALPHA, Diff, Result, compare_metric, fmt_value, latest_by_key, load_results, metric_info, \
    metric_label, p_eq, p_text, scalar_metrics


@dataclass
class Threshold:
    suite: Optional[str]  # None: any suite
    metric: str  # fnmatch pattern
    value: float
    relative: bool = False
    spec: str = ""

    def matches(self, suite: str, metric: str) -> bool:
        suite_ok = self.suite is None or fnmatch.fnmatchcase(suite, self.suite)
        return suite_ok and fnmatch.fnmatchcase(metric, self.metric)

    def limit(self, baseline: float) -> float:
        return self.value * abs(baseline) if self.relative else self.value

    def text(self) -> str:
        return f"{self.value * 100:g}%" if self.relative else f"{self.value:g}"


def parse_max_drop(specs) -> list:
    """['acc=0.02', 'mmlu.acc=0.03', 'ppl=5%'] -> [Threshold]."""
    out = []
    for spec in specs or []:
        name, sep, value = spec.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise HarnessError(f"--max-drop {spec!r} is not METRIC=VALUE (e.g. --max-drop acc=0.02 "
                               "or --max-drop ppl=5%)")
        relative = value.endswith("%")
        try:
            number = float(value[:-1] if relative else value)
        except ValueError:
            raise HarnessError(f"--max-drop {spec!r}: {value!r} is not a number; use e.g. 0.02 (absolute) or 5% "
                               "(relative to the baseline)")
        if number < 0 or number != number:
            raise HarnessError(f"--max-drop {spec!r}: the allowed drop must be >= 0")
        suite, dot, metric = name.rpartition(".")
        out.append(Threshold(suite if dot else None, metric, number / 100 if relative else number, relative, spec))
    return out


def default_threshold(metric: str, summary: dict) -> Optional[Threshold]:
    info = metric_info(metric, summary)
    if info.max_drop is None or info.higher_is_better is None:
        return None
    return Threshold(None, metric, info.max_drop, info.relative, "default")


# ----------------------------------------------------------------------------
# Pairing baseline and current results


def _load_side(path: str, what: str) -> list:
    p = Path(path)
    if not p.exists():
        raise HarnessError(f"{what} {p} not found; give a result JSON or a results directory")
    return latest_by_key(load_results(p), warn=lambda m: print(f"harness: note: {m}", file=sys.stderr))


def pair_results(baseline: list, current: list) -> list:
    """[(baseline, current)]: same (model, recipe, suite) first; then, per suite,
    the single remaining result on each side (e.g. a 2-bit run against a 4-bit
    baseline). A baseline nobody matches is reported by the caller."""
    pairs, used_b, used_c = [], set(), set()
    cur_by_key = {r.key: r for r in current}
    for b in baseline:
        c = cur_by_key.get(b.key)
        if c is not None:
            pairs.append((b, c))
            used_b.add(id(b))
            used_c.add(id(c))
    for suite in sorted({r.suite for r in baseline}):
        bs = [r for r in baseline if r.suite == suite and id(r) not in used_b]
        cs = [r for r in current if r.suite == suite and id(r) not in used_c]
        if len(bs) == 1 and len(cs) == 1:
            pairs.append((bs[0], cs[0]))
            used_b.add(id(bs[0]))
            used_c.add(id(cs[0]))
    return pairs


def _load_pairs(baseline_path: str, current_path: str) -> tuple:
    baseline = _load_side(baseline_path, "baseline")
    current = _load_side(current_path, "results")
    own = {b.path.resolve() for b in baseline}
    others = [c for c in current if c.path.resolve() not in own]
    if others and Path(current_path).is_dir():  # a baseline committed inside the results dir is not "current"
        current = others
    elif not others:
        print("note: comparing the baseline with itself", file=sys.stderr)
    pairs = pair_results(baseline, current)
    if not pairs:
        raise HarnessError(
            f"no result in {current_path} matches the baseline "
            f"({', '.join(sorted({'/'.join(b.key) for b in baseline}))}) "
            "by model/recipe/suite, nor one-to-one by suite; run those suites or point at the result file to compare")
    paired = {id(b) for b, _ in pairs}
    unmatched = [b for b in baseline if id(b) not in paired]
    return pairs, unmatched


def _who(r: Result) -> str:
    return f"{r.recipe}" if r.model == "?" else f"{r.model}/{r.recipe}"


# ----------------------------------------------------------------------------
# Gate


@dataclass
class GateRow:
    recipe: str  # the current result's recipe (a gate can cover several)
    suite: str
    diff: Diff
    threshold: Threshold
    limit: float  # allowed drop in metric units
    verdict: str

    @property
    def failed(self) -> bool:
        return self.verdict == "FAIL"


def _verdict(diff: Diff, limit: float, alpha: float) -> str:
    drop = diff.worse_by
    if drop is None or drop <= limit:
        return "ok"
    if diff.p is None:
        return "untestable"
    return "FAIL" if diff.p < alpha else "ok (n.s.)"


def gate(pairs: list, thresholds: list, alpha: float = ALPHA) -> list:
    """GateRow for every (pair, gated metric). With thresholds, only metrics
    they name are gated (the first matching threshold applies); without, the
    registry defaults. A threshold matching no metric is bad input."""
    rows, used = [], set()
    for b, c in pairs:
        shared = [m for m in scalar_metrics(b.summary) if m in scalar_metrics(c.summary)]
        for metric in shared:
            if thresholds:
                t = next((t for t in thresholds if t.matches(b.suite, metric)), None)
            else:
                t = default_threshold(metric, b.summary)
            if t is None:
                continue
            if metric_info(metric, b.summary).higher_is_better is None:
                if thresholds and not any(ch in t.metric for ch in "*?["):
                    raise HarnessError(f"--max-drop {t.spec}: {b.suite} {metric} is informational (no better "
                                       "direction); gate a quality metric instead")
                continue  # a glob such as '*' does not gate counts
            diff = compare_metric(metric, b, c)
            if diff is None:
                continue
            used.add(t.spec)
            limit = t.limit(diff.base)
            rows.append(GateRow(c.recipe, b.suite, diff, t, limit, _verdict(diff, limit, alpha)))
    unused = [t.spec for t in thresholds if t.spec not in used]
    if unused:
        available = sorted({f"{b.suite}.{m}" for b, c in pairs for m in scalar_metrics(b.summary)
                            if m in scalar_metrics(c.summary) and metric_info(m, b.summary).higher_is_better is not None})
        raise HarnessError(f"--max-drop {', '.join(unused)} matches no metric of the compared results; "
                           f"available: {', '.join(available)}")
    return rows


def _drop_text(diff: Diff) -> str:
    if diff.worse_by is None:
        return "-"
    scale = 100 if diff.info.kind == "fraction" else 1
    unit = " pts" if diff.info.kind in ("fraction", "points") else ""
    text = f"{diff.worse_by * scale:+.2f}{unit}" if unit else f"{diff.worse_by:+.4g}"
    if diff.info.relative and diff.base:
        text += f" ({diff.worse_by / abs(diff.base):+.1%})"
    return text


def _limit_text(row: GateRow) -> str:
    if row.diff.info.kind == "fraction" and not row.threshold.relative:
        return f"{row.limit * 100:.2f} pts"
    if row.diff.info.kind == "points" and not row.threshold.relative:
        return f"{row.limit:.2f} pts"
    return f"{row.limit:.4g}" + (f" ({row.threshold.text()})" if row.threshold.relative else "")


def _test_text(diff: Diff) -> str:
    text = diff.test
    if diff.n:
        text += f", n={diff.n}"
    if diff.lost is not None:
        text += f", {diff.lost}↓ {diff.gained}↑"
    return text


def gate_table(rows: list) -> str:
    body = [[r.recipe, r.suite, metric_label(r.diff.metric, r.diff.info), fmt_value(r.diff.base, r.diff.info),
             fmt_value(r.diff.cur, r.diff.info),
             _drop_text(r.diff), _limit_text(r), p_text(r.diff.p), _test_text(r.diff), r.verdict] for r in rows]
    return tabulate(body, headers=["recipe", "suite", "metric", "baseline", "current", "drop", "max drop", "p", "test",
                                   "verdict"], disable_numparse=True)


def gate_cli(args) -> int:
    thresholds = parse_max_drop(args.max_drop)
    pairs, unmatched = _load_pairs(args.baseline, args.results)
    rows = gate(pairs, thresholds)
    for b, c in pairs:
        if b.recipe != c.recipe or b.model != c.model:
            print(f"{b.suite}: current {_who(c)} against baseline {_who(b)}")
        if c.data.get("complete") is False:
            print(f"note: {c.path} is incomplete (interrupted run); resume it for a full comparison")
    for b in unmatched:
        print(f"note: baseline {b.path} ({b.suite}) has no matching current result; not gated")
    if not rows:
        print("nothing to gate: no shared metric has a threshold (add --max-drop METRIC=VALUE)")
        return 0
    print(gate_table(rows))
    print(f"\nfails when drop > max drop AND p < {ALPHA} (two-sided; fractions in points, 'pts').")
    failed = [r for r in rows if r.failed]
    untested = [r for r in rows if r.verdict == "untestable"]
    if untested:
        print("warning: drops beyond the threshold without per-item data or CIs to test them: "
              + ", ".join(f"{r.suite} {r.diff.metric}" for r in untested))
    if failed:
        print("REGRESSION: " + ", ".join(f"{r.suite} {r.diff.metric} (drop {_drop_text(r.diff)}; {p_eq(r.diff.p)})"
                                         for r in failed))
        return 1
    print(f"gate passed: {len(rows)} metric(s) checked, no significant drop beyond its threshold")
    return 0


# ----------------------------------------------------------------------------
# Compare


def compare_rows(pairs: list) -> list:
    rows = []
    for b, c in pairs:
        for metric in scalar_metrics(b.summary):
            if metric not in scalar_metrics(c.summary):
                continue
            diff = compare_metric(metric, b, c)
            if diff is None:
                continue
            if diff.info.higher_is_better is None:
                verdict = ""
            elif diff.delta == 0:
                verdict = "="
            else:
                better = (diff.worse_by or 0) < 0
                verdict = ("B better" if better else "B worse") + (
                    "" if diff.p is None else (" *" if diff.significant() else " (n.s.)"))
            scale = 100 if diff.info.kind == "fraction" else 1
            delta = f"{diff.delta * scale:+.2f}" if diff.info.kind in ("fraction", "points") else f"{diff.delta:+.4g}"
            rows.append([b.suite, metric_label(metric, diff.info), fmt_value(diff.base, diff.info),
                         fmt_value(diff.cur, diff.info), delta, p_text(diff.p),
                         _test_text(diff) if diff.p is not None else "-", verdict])
    return rows


def compare_cli(args) -> int:
    pairs, unmatched = _load_pairs(args.a, args.b)
    for b, c in pairs:
        print(f"{b.suite}: A = {_who(b)} ({b.path}), B = {_who(c)} ({c.path})")
    for b in unmatched:
        print(f"note: {b.path} ({b.suite}) has no counterpart in {args.b}")
    print()
    print(tabulate(compare_rows(pairs), headers=["suite", "metric", "A", "B", "B - A", "p", "test", "verdict"],
                   disable_numparse=True))
    print(f"\nfractions in %, differences in points; * = significant at p < {ALPHA} (two-sided), "
          "n.s. = not significant.")
    return 0
