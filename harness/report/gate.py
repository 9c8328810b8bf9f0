"""`harness compare A B` and `harness gate --baseline FILE|DIR [--max-drop METRIC=VALUE ...]`.

The gate fails (exit 1) only on a drop that is both beyond its threshold and
statistically significant at ALPHA = 0.05 (fixed; two-sided):

* items paired by id on both sides, binary per-item values (correct, pass):
  McNemar exact on the flips;
* other per-item values (reasoning points, KL, NLL): exact sign-flip permutation
  test below 10 pairs, paired bootstrap from there;
* summary only: z-test from the two 95 % CIs ("<metric>_ci95", or value ±
  1.96 "<metric>_err"; Wilson intervals from n for fractions without either).
  A drop no test can be run on is shown as "untestable", warned about, and
  does not fail the gate.

A metric whose baseline scores at the floor or at chance (harness.report.floor:
its 95 % CI includes the chance level its suite declared, or it is near 0) is not
gated: the row says "not gated (floor)" and a note says why. Generation-health
rates (health_*_rate, lower is better) are gated by default: +0.05 absolute.

Drops are direction-aware (drop = baseline - current when higher is better).
Thresholds: `--max-drop acc=0.03` (absolute, in the metric's units: fractions
are 0..1, reasoning score is 0..100), `--max-drop ppl=5%` (relative to the
baseline); METRIC may be a glob and may be prefixed by a suite (`mmlu.acc`).
With --max-drop only the named metrics are gated; without it the defaults the
baseline result declares (`max_drop` of its MetricSpecs; for suites that declare
none, harness.report.metrics.METRICS): accuracies, pass@k, rates and top-1
agreement 0.02 absolute, reasoning score 5 points, perplexity (ppl) +5 % relative, mean
KLD (kld, kld_mean) +0.02 absolute; speed, memory, percentiles and counts are
not gated by default. Exit 0 pass, 1 regression, 2 bad input or cannot judge.

Pairing: results with the same (model, recipe, suite); otherwise, per suite,
the single result left on each side (so a 2-bit run can be gated against a
4-bit baseline). A baseline stored inside the --results directory is not
compared with itself.

The gate never passes on what it could not check (exit 2, naming the file or
the difference): a result that cannot be read, a baseline result with no current
counterpart, a gated metric missing on either side, results computed under
different settings (--limit, seed, options, suite version, data, reference), or
a drop beyond its threshold on too few items for any test to tell (fewer than 6
pairs: an exact test cannot reach p < 0.05). Tests use only the items both runs
scored, and the values they compare are recomputed on those items.

Reads results, metric declarations and the comparison code only (never the
report's tables or renderers).
"""

import fnmatch
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from tabulate import tabulate

from harness.errors import HarnessError
from harness.report.compare import Diff, compare_metric, latest_by_key, load_results, settings_difference
from harness.report.floor import floor_effect
from harness.report.metrics import ALPHA, fmt_value, info_of, metric_label, p_eq, p_text, scalar_metrics
from harness.results import SuiteResult


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


def default_threshold(metric: str, result: SuiteResult) -> Optional[Threshold]:
    info = info_of(result, metric)
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


def _who(r: SuiteResult) -> str:
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
    note: str = ""  # why a metric was not gated (the floor-effect line)

    @property
    def failed(self) -> bool:
        return self.verdict == "FAIL"


def _verdict(diff: Diff, limit: float, alpha: float) -> str:
    drop = diff.worse_by
    if drop is None or drop <= limit:
        return "ok"
    if diff.p is None:
        return "untestable"
    if diff.p < alpha:
        return "FAIL"
    return TOO_FEW if diff.too_few else "ok (n.s.)"


TOO_FEW = "too few items to tell"
NOT_GATED = "not gated (floor)"


def check_settings(pairs: list) -> None:
    """HarnessError (one line) when any pair was computed under different settings."""
    problems = []
    for b, c in pairs:
        what = settings_difference(b, c)
        if what:
            problems.append(f"{b.suite}: baseline {b.path} and current {c.path} were computed under different "
                            f"settings ({what})")
    if problems:
        raise HarnessError("; ".join(problems) + "; re-run the current results with the baseline's settings "
                           "(or gate against a baseline made with these)")


def gate(pairs: list, thresholds: list, alpha: float = ALPHA) -> list:
    """GateRow for every (pair, gated metric). With thresholds, only metrics
    they name are gated (the first matching threshold applies); without, the
    defaults of the baseline's metric declarations. A threshold matching no
    metric, a gated metric missing on either side, or results computed under
    different settings are bad input (HarnessError)."""
    check_settings(pairs)
    rows, used = [], set()
    for b, c in pairs:
        bm, cm = scalar_metrics(b.summary), scalar_metrics(c.summary)
        for metric in list(bm) + [m for m in cm if m not in bm]:
            if thresholds:
                t = next((t for t in thresholds if t.matches(b.suite, metric)), None)
            else:
                t = default_threshold(metric, b) if metric in bm else None
            if t is None:
                continue
            info = info_of(b if metric in bm else c, metric)
            if info.higher_is_better is None:
                if thresholds and not any(ch in t.metric for ch in "*?["):
                    raise HarnessError(f"--max-drop {t.spec}: {b.suite} {metric} is informational (no better "
                                       "direction); gate a quality metric instead")
                continue  # a glob such as '*' does not gate counts
            if metric not in cm:  # a gated metric vanished: never pass on it
                raise HarnessError(f"current result {c.path} lacks the gated metric {b.suite} {metric} (the baseline "
                                   f"{b.path} has it); re-run that suite, or gate other metrics with --max-drop")
            if metric not in bm:
                if any(ch in t.metric for ch in "*?["):
                    continue  # a glob over a metric only the current run has: nothing to compare with
                raise HarnessError(f"baseline {b.path} lacks the gated metric {b.suite} {metric}; "
                                   "regenerate the baseline or drop that --max-drop")
            diff = compare_metric(metric, b, c)
            if diff is None:
                continue
            used.add(t.spec)
            limit = t.limit(diff.base)
            floor = floor_effect(b, metric)  # the baseline cannot rank recipes here: noise, not a verdict
            if floor:
                rows.append(GateRow(c.recipe, b.suite, diff, t, limit, NOT_GATED, floor))
                continue
            rows.append(GateRow(c.recipe, b.suite, diff, t, limit, _verdict(diff, limit, alpha)))
    unused = [t.spec for t in thresholds if t.spec not in used]
    if unused:
        available = sorted({f"{b.suite}.{m}" for b, c in pairs for m in scalar_metrics(b.summary)
                            if m in scalar_metrics(c.summary) and info_of(b, m).higher_is_better is not None})
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
        text += f", n={diff.n}" + (" shared" if diff.shared_only else "")
    if diff.lost is not None:
        text += f", {diff.lost}↓ {diff.gained}↑"
    return text


def gate_table(rows: list) -> str:
    body = [[r.recipe, r.suite, metric_label(r.diff.metric, r.diff.info), fmt_value(r.diff.base, r.diff.info),
             fmt_value(r.diff.cur, r.diff.info),
             _drop_text(r.diff), _limit_text(r), p_text(r.diff.p), _test_text(r.diff), r.verdict] for r in rows]
    return tabulate(body, headers=["recipe", "suite", "metric", "baseline", "current", "drop", "max drop", "p", "test",
                                   "verdict"], disable_numparse=True)


@dataclass
class GateOptions:
    """What `harness gate` takes (also the Python API: run_gate(GateOptions(...)))."""

    baseline: Path
    results: Path = Path("results")
    max_drop: list = field(default_factory=list)  # ["acc=0.02", "ppl=5%", ...]

    @classmethod
    def from_args(cls, args) -> "GateOptions":
        return cls(Path(args.baseline), Path(args.results), list(args.max_drop or []))


@dataclass
class GateReport:
    pairs: list  # [(baseline SuiteResult, current SuiteResult)]
    rows: list  # [GateRow]

    def with_verdict(self, verdict: str) -> list:
        return [r for r in self.rows if r.verdict == verdict]

    @property
    def exit_code(self) -> int:
        """0 pass, 1 significant regression, 2 a drop on too few items to tell."""
        return 1 if self.with_verdict("FAIL") else 2 if self.with_verdict(TOO_FEW) else 0


def run_gate(opts: GateOptions) -> GateReport:
    """Pair, check and gate; HarnessError (exit 2) on anything it cannot judge."""
    thresholds = parse_max_drop(opts.max_drop)
    pairs, unmatched = _load_pairs(str(opts.baseline), str(opts.results))
    if unmatched:  # a baseline nobody gates would pass silently
        raise HarnessError("no current result for baseline " + ", ".join(f"{b.path} ({b.suite})" for b in unmatched)
                           + f" in {opts.results}; run those suites, or gate against the single result file")
    return GateReport(pairs, gate(pairs, thresholds))


def gate_cli(args) -> int:
    report = run_gate(GateOptions.from_args(args))
    rows = report.rows
    for b, c in report.pairs:
        if b.recipe != c.recipe or b.model != c.model:
            print(f"{b.suite}: current {_who(c)} against baseline {_who(b)}")
        if not c.complete:
            print(f"note: {c.path} is incomplete (interrupted run); resume it for a full comparison")
    if not rows:
        print("nothing to gate: no shared metric has a threshold (add --max-drop METRIC=VALUE)")
        return 0
    print(gate_table(rows))
    print(f"\nfails when drop > max drop AND p < {ALPHA} (two-sided; fractions in points, 'pts').")
    for r in report.with_verdict(NOT_GATED):
        print(f"note: {r.note}")
    untested = report.with_verdict("untestable")
    if untested:
        print("warning: drops beyond the threshold without per-item data or CIs to test them: "
              + ", ".join(f"{r.suite} {r.diff.metric}" for r in untested))
    if report.exit_code == 1:
        print("REGRESSION: " + ", ".join(f"{r.suite} {r.diff.metric} (drop {_drop_text(r.diff)}; {p_eq(r.diff.p)})"
                                         for r in report.with_verdict("FAIL")))
    elif report.exit_code == 2:
        print("harness: error: too few items to tell: " + ", ".join(
            f"{r.suite} {r.diff.metric} (drop {_drop_text(r.diff)} on n={r.diff.n}; no outcome of an exact test on "
            f"{r.diff.n} pairs reaches p < {ALPHA})" for r in report.with_verdict(TOO_FEW))
            + "; gate more items (a larger --limit on both sides)", file=sys.stderr)
    else:
        gated = len(rows) - len(report.with_verdict(NOT_GATED))
        print(f"gate passed: {gated} metric(s) checked, no significant drop beyond its threshold")
    return report.exit_code


# ----------------------------------------------------------------------------
# Compare


@dataclass
class CompareOptions:
    """What `harness compare A B` takes (also the Python API: compare_results(CompareOptions(...)))."""

    a: Path
    b: Path

    @classmethod
    def from_args(cls, args) -> "CompareOptions":
        return cls(Path(args.a), Path(args.b))


def compare_results(opts: CompareOptions) -> tuple:
    """([(A result, B result, [Diff of every shared metric])], [A results with no counterpart])."""
    pairs, unmatched = _load_pairs(str(opts.a), str(opts.b))
    out = []
    for b, c in pairs:
        cm = scalar_metrics(c.summary)
        diffs = [compare_metric(m, b, c) for m in scalar_metrics(b.summary) if m in cm]
        out.append((b, c, [d for d in diffs if d is not None]))
    return out, unmatched


def compare_rows(compared: list) -> list:
    rows = []
    for b, c, diffs in compared:
        for diff in diffs:
            metric = diff.metric
            if diff.info.higher_is_better is None:
                verdict = ""
            elif diff.settings:
                verdict = "settings differ"
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
    compared, unmatched = compare_results(CompareOptions.from_args(args))
    for b, c, _ in compared:
        print(f"{b.suite}: A = {_who(b)} ({b.path}), B = {_who(c)} ({c.path})")
        what = settings_difference(b, c)
        if what:
            print(f"harness: warning: {b.suite}: A and B were computed under different settings ({what}); "
                  "no tests shown", file=sys.stderr)
    for b in unmatched:
        print(f"note: {b.path} ({b.suite}) has no counterpart in {args.b}")
    print()
    print(tabulate(compare_rows(compared), headers=["suite", "metric", "A", "B", "B - A", "p", "test", "verdict"],
                   disable_numparse=True))
    print(f"\nfractions in %, differences in points; * = significant at p < {ALPHA} (two-sided), "
          "n.s. = not significant.")
    return 0
