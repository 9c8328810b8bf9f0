"""Can this suite rank recipes on this model? The floor-effect check.

When the reference (float) itself scores at the floor or at chance, every recipe
scores there too and a difference between them is noise: a 0/100 questionnaire on
a 135M model says nothing about which quantization is better. A metric is at the
floor when its suite declared a `chance` level (MetricSpec.chance: 0.25 for 4-way
multiple choice, 0 for pass@1 or a rubric score; or, when it depends on the data, the
level the suite reported in the summary's "chance" mapping: TruthfulQA MC1 is the mean
of 1/n_choices over the questions scored, MC2 the mean share of true answers) and the
reference's

* 95 % CI includes that chance level, or
* value is near it: within NEAR of the scale above the chance level (10 %:
  pass@1 <= 0.10, a /100 score <= 10, 4-way multiple choice <= 0.325). SmolLM2
  scores ~4/100 on the questionnaire (CI [0.8, 8.0]): every recipe's difference
  there is a coin toss over a handful of points.

`floor_effect` returns the one line the run and the report print for such a
metric; the gate does not gate it (a note instead). Metrics without a declared
chance level are never called "at the floor".
"""

from typing import Optional

from harness.report.metrics import ci95, fmt_value, from_spec, is_ci, is_number
from harness.suite import chance_level

NEAR = 0.10  # "near the floor": this share of the scale above chance
SCALE_TOP = {"proportion": 1.0, "points": 100.0}  # the best score of each kind


def _spec_of(result, metric):
    """The MetricSpec for `metric` (a name or a MetricSpec) from the result's declarations."""
    if not isinstance(metric, str):
        return metric
    return next((m for m in getattr(result, "metrics", None) or () if m.name == metric), None)


def floor_effect(reference_result, metric_spec, gated: bool = True) -> Optional[str]:
    """One line when the reference's score on this metric cannot rank recipes, else None.

    reference_result: a SuiteResult (summary, suite, recipe); metric_spec: a MetricSpec
    (or a metric name looked up in the result's declarations); gated: end the line with
    "not gated" (run, report, gate) or not (a model card has no gate)."""
    spec = _spec_of(reference_result, metric_spec)
    if spec is None or spec.higher_is_better is not True:
        return None
    summary = reference_result.summary or {}
    chance = chance_level(spec, summary)  # the summary's data-dependent level first, then the declared one
    value = summary.get(spec.name)
    if chance is None or not is_number(value):
        return None
    ci = ci95(summary, spec.name)
    chance = float(chance)
    top = SCALE_TOP.get(spec.kind)
    at_chance = is_ci(ci) and ci[0] <= chance <= ci[1]
    near_zero = top is not None and value <= chance + NEAR * (top - chance)
    if not (at_chance or near_zero):
        return None
    info = from_spec(spec)
    unit = " %" if info.kind == "fraction" else "/100" if info.kind == "points" else ""
    shown = fmt_value(value, info) + unit
    if is_ci(ci):
        shown += f" [{fmt_value(ci[0], info)}, {fmt_value(ci[1], info)}]"
    level = fmt_value(chance, info) + unit
    what = "chance" if chance > 0 else "the floor"
    why = f"its 95 % CI includes {what} ({level})" if at_chance else f"near {what} ({level})"
    who = getattr(reference_result, "recipe", "reference")
    tail = f"; {spec.name} is not gated." if gated else "."
    return (f"{reference_result.suite} {spec.name}: the reference ({who}) scores {shown}, {why}: this suite "
            f"cannot rank recipes on this model{tail}")


def floor_effects(reference_result) -> list:
    """floor_effect lines for every declared metric of a reference result."""
    lines = []
    for spec in getattr(reference_result, "metrics", None) or ():
        line = floor_effect(reference_result, spec)
        if line:
            lines.append(line)
    return lines


__all__ = ["floor_effect", "floor_effects", "NEAR"]
