"""Loading results and comparing one metric between two of them, like with like.

Two results are compared only when they were computed under the same settings
(--limit, seed, suite version, suite options, data hash, reference model): a
difference is named by `settings_difference` and no test is run. Paired tests use
only the items both runs scored; when the runs scored different item sets, both
values are recomputed on the shared items, so the delta and its test describe
the same items. Small samples get exact tests (harness.stats.paired_test).

Used by the report's tables and by the gate; it never imports either.
"""

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from harness.errors import HarnessError
from harness.report.metrics import ALPHA, Metric, _is_ci, _is_number, _window_nll, ci95, info_of
from harness.results import SCHEMA, SuiteResult, find_results, load_result

EQUAL_BPW = 0.15  # recipes within this many bits per weight are "the same size" (oQ4 4.6 vs uniform4 4.5)


def _warn(message: str) -> None:
    print(f"harness: warning: {message}", file=sys.stderr)


# ----------------------------------------------------------------------------
# Loading


def load_results(root, warn: Callable = _warn) -> list:
    """Every result under `root` (a results dir or one result JSON), as SuiteResult.

    A file given explicitly must be a result; while scanning a directory, JSON
    files that are not results (plans, configs) are skipped, but a result that
    cannot be read (damaged JSON beside its item log, wrong field types) is an
    error naming the file: a report or gate that silently dropped it would be wrong.
    Items that no longer match their summary are warned about.
    """
    root = Path(root)
    paths = find_results(root)
    out = []
    for p in paths:
        if root.is_file():
            out.append(load_result(p))
            continue
        try:
            raw = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise HarnessError(f"cannot read {p} ({e}); fix its permissions or remove it from {root}")
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as e:
            if SCHEMA in raw or p.with_name(p.name.replace(".json", ".items.jsonl")).is_file():
                raise HarnessError(f"{p} is a damaged harness result ({e}); re-run that suite or remove the file")
            continue
        if isinstance(data, dict) and data.get("schema") == SCHEMA:
            out.append(SuiteResult.from_json(data, p))
    if not out:
        raise HarnessError(f"no harness results under {root}; run `harness run ... --out {root}` first "
                           "or point at a results directory")
    for r in out:
        problem = r.check_items()
        if problem:
            warn(problem)
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
# Like with like


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True, default=str) if isinstance(value, (dict, list)) else str(value)
    return text[:12] if isinstance(value, str) and len(value) >= 32 else text  # hashes: a prefix is enough


def settings_difference(base: SuiteResult, cur: SuiteResult) -> Optional[str]:
    """'limit 8 vs 4; data sha256 0a1874c8156c vs 3b...' when the two results were
    computed under different settings (their items are not the same items), else None.
    A setting missing on either side (older results) is not compared."""
    bp, cp = base.provenance, cur.provenance
    diffs = []
    for key, label in (("limit", "--limit"), ("seed", "seed"), ("suite_version", "suite version"),
                       ("reference", "--reference")):
        if key in bp and key in cp and bp[key] != cp[key]:
            diffs.append(f"{label} {_short(bp[key])} vs {_short(cp[key])}")
    bo, co = bp.get("options"), cp.get("options")
    if isinstance(bo, dict) and isinstance(co, dict):
        # keys on both sides only: one side may list defaults the other left out (results of older versions)
        for key in sorted(set(bo) & set(co)):
            if bo[key] != co[key]:
                diffs.append(f"option {key}={_short(bo[key])} vs {_short(co[key])}")
    bd, cd = bp.get("data") or {}, cp.get("data") or {}
    if isinstance(bd, dict) and isinstance(cd, dict) and bd.get("sha256") and cd.get("sha256") \
            and bd["sha256"] != cd["sha256"]:
        diffs.append(f"data sha256 {_short(bd['sha256'])} vs {_short(cd['sha256'])}")
    bf, cf = base.artifact.source_fingerprint, cur.artifact.source_fingerprint
    if bf and cf and bf != cf:
        diffs.append(f"reference model {_short(bf)} vs {_short(cf)}")
    return "; ".join(diffs) or None


# ----------------------------------------------------------------------------
# Paired comparison of one metric between two results


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
    min_p: Optional[float] = None  # smallest p the test could give at this n (>= ALPHA: too few items to tell)
    settings: Optional[str] = None  # the runs' settings differ (no test was run): what differs
    shared_only: bool = False  # base/cur recomputed on the items both runs scored

    @property
    def delta(self) -> float:
        return self.cur - self.base

    @property
    def worse_by(self) -> Optional[float]:
        """Drop in the metric's 'better' direction (> 0: current is worse)."""
        if self.info.higher_is_better is None:
            return None
        return self.base - self.cur if self.info.higher_is_better else self.cur - self.base

    @property
    def too_few(self) -> bool:
        """No outcome of the exact test at this n could be significant."""
        return self.min_p is not None and self.min_p >= ALPHA

    def significant(self, alpha: float = ALPHA) -> bool:
        return self.p is not None and self.p < alpha


def _item_values(metric: str, records: list, info: Metric) -> tuple:
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
            return out, cand
    return {}, None


def item_values(metric: str, records: list, info: Optional[Metric] = None) -> dict:
    """{id: number} of a metric's per-item values, found by the metric's item keys,
    then its own name, then the name without _rate/_mean, also inside a record's
    "metrics" dict (lm-eval). {} when records do not carry it."""
    from harness.report.metrics import metric_info

    return _item_values(metric, records, info or metric_info(metric))[0]


def _aggregate(values: dict, ids: list, source, records: list, info: Metric) -> float:
    """The metric recomputed over `ids` only: perplexity from token-weighted window
    NLL, exp(mean NLL) for other perplexities, else the mean of the item values."""
    if source is _window_nll:
        by_id = {r["id"]: r for r in records if "id" in r}
        total_nll = sum(float(by_id[i]["sum_nll"]) for i in ids)
        total_n = sum(float(by_id[i]["n"]) for i in ids)
        return math.exp(total_nll / total_n) if total_n else float("nan")
    mean = sum(values[i] for i in ids) / len(ids)
    if source == "nll":
        return math.exp(mean)
    return mean


def compare_metric(metric: str, base: SuiteResult, cur: SuiteResult, use_items: bool = True) -> Optional[Diff]:
    """Diff of `metric` from `base` to `cur`, with the strongest test the data allows:
    exact McNemar on binary per-item values paired by id, an exact permutation test
    (few pairs) or paired bootstrap on other per-item values, else a z-test from the
    two CIs (or Wilson intervals for fractions with n). None when either side lacks
    the metric. Runs under different settings get no test (Diff.settings says why)."""
    from harness.stats import paired_test, wilson_ci

    b_val, c_val = base.summary.get(metric), cur.summary.get(metric)
    if not (_is_number(b_val) and _is_number(c_val)):
        return None
    info = info_of(base, metric)
    diff = Diff(metric, float(b_val), float(c_val), info)
    if info.higher_is_better is None:
        return diff  # informational (counts, errors): shown, never tested
    diff.settings = settings_difference(base, cur)
    if diff.settings:
        diff.test = "settings differ"
        return diff
    if use_items:
        b_recs, c_recs = base.items(), cur.items()
        (bv, b_src), (cv, c_src) = _item_values(metric, b_recs, info), _item_values(metric, c_recs, info)
        ids = sorted(set(bv) & set(cv), key=str)
        if ids:
            if set(ids) != set(bv) or set(ids) != set(cv):  # different item sets: compare the shared ones
                diff.base = _aggregate(bv, ids, b_src, b_recs, info)
                diff.cur = _aggregate(cv, ids, c_src, c_recs, info)
                diff.shared_only = True
            t = paired_test([bv[i] for i in ids], [cv[i] for i in ids])
            diff.p, diff.test, diff.n, diff.min_p = t["p"], t["test"], t["n"], t["min_p"]
            if "down" in t:
                worse_is_down = info.higher_is_better is not False
                diff.lost, diff.gained = (t["down"], t["up"]) if worse_is_down else (t["up"], t["down"])
            return diff
        paired = cur.paired or {}
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


def delta_text(d: Diff) -> str:
    """Change from base to current in display units ('points' for fractions and scores)."""
    if d.info.kind in ("fraction", "points"):
        return f"{d.delta * (100 if d.info.kind == 'fraction' else 1):+.1f} pts"
    return f"{d.delta:+.3g}"
