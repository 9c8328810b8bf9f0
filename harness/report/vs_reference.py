"""What `harness run` prints after its own tables: each recipe's headline metrics beside the
reference's (--reference, default float), the difference and its paired significance, and one
line where the reference itself scores at the floor or at chance (the suite cannot rank recipes).
"""

from pathlib import Path
from typing import Optional

from tabulate import tabulate

from harness.errors import HarnessError
from harness.report.compare import compare_metric, delta_text
from harness.report.floor import floor_effects
from harness.report.metrics import fmt_ci, metric_info, p_text
from harness.results import SuiteResult, load_result, result_dir


def _headline(result: SuiteResult) -> list:
    """Declared metrics that are gated by default: the ones a model card would show."""
    return [m for m in (result.metrics or ()) if m.higher_is_better is not None and m.max_drop is not None
            and m.name in result.summary]


def _load(path: Path) -> Optional[SuiteResult]:
    try:
        return load_result(path) if path.is_file() else None
    except HarnessError:
        return None


def reference_comparison(results: list, reference: str, out: Path, slug: str) -> str:
    """Text block comparing every result of this run with the reference's result of its suite."""
    if reference in (None, "none"):
        return ""
    rows, lines, floored = [], [], set()
    for raw in results:
        recipe, suite = raw["recipe"], raw["suite"]
        ref = _load(result_dir(out, slug, reference) / f"{suite}.json")
        if ref is None:
            continue
        if suite not in floored:
            floored.add(suite)
            lines += floor_effects(ref)
        if recipe == reference:
            continue
        cur = _load(result_dir(out, slug, recipe) / f"{suite}.json")
        if cur is None:
            continue
        for spec in _headline(cur):
            d = compare_metric(spec.name, ref, cur)
            if d is None:
                continue
            info = metric_info(spec.name, cur.summary, cur.metrics)
            if d.settings:
                rows.append((suite, spec.name, "-", "-", "-", f"not comparable: {d.settings}"))
                continue
            test = f"{p_text(d.p)} ({d.test}, n={d.n})" if d.p is not None else "-"
            if d.too_few:
                test = "too few items to tell"
            rows.append((suite, spec.name, fmt_ci(d.base, None, info), f"{recipe}: {fmt_ci(d.cur, None, info)}",
                         delta_text(d), test))
    if not rows and not lines:
        return ""
    text = f"vs the reference ({reference}):\n"
    if rows:
        text += tabulate(rows, headers=["suite", "metric", reference, "recipe", "difference", "paired test"])
    if lines:
        text += "\n" + "\n".join(f"note: {line}" for line in lines)
    return text
