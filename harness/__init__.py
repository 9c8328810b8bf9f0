"""harness: benchmark and evaluation harness for quantized MLX language models.

The public Python API mirrors the command line (like `mlx_lm.load/generate/convert`);
each function takes the same options dataclass the CLI builds, so notebooks and CI
scripts need not shell out:

    import harness
    src = harness.resolve_model("smollm2-135m")                        # harness plan/build --model
    plan = harness.make_plan(harness.BuildOptions(recipe="oq4"))       # harness plan
    art = harness.build(harness.BuildOptions(recipe="oq4"))            # harness build
    results = harness.run(harness.RunOptions(recipes=["oq4"], suites=["fidelity"], limit=8))  # harness run
    loaded = harness.load_results("results")                           # what report/compare/gate read
    rows = harness.compare(harness.CompareOptions(a="results/m/uniform4", b="results/m/oq4"))
    verdict = harness.gate(harness.GateOptions(baseline="results/m", results="new"))  # .exit_code 0/1/2
    text = harness.make_report(harness.ReportOptions(results="results"))

Names are imported lazily: `import harness` stays cheap and loads no stage it does not use.
"""

import importlib

__version__ = "0.1.0"

# public name -> "module:attribute"
_API = {
    "HarnessError": "harness.errors:HarnessError",
    "resolve_model": "harness.sources:resolve_model",
    "BuildOptions": "harness.builder:BuildOptions",
    "BuildResult": "harness.builder:BuildResult",
    "build": "harness.builder:build",
    "Plan": "harness.plan:Plan",
    "Recipe": "harness.recipe:Recipe",
    "Suite": "harness.suite:Suite",
    "MetricSpec": "harness.suite:MetricSpec",
    "RunOptions": "harness.runner:RunOptions",
    "SuiteResult": "harness.results:SuiteResult",
    "load_results": "harness.report.compare:load_results",
    "CompareOptions": "harness.report.gate:CompareOptions",
    "compare": "harness.report.gate:compare_results",
    "GateOptions": "harness.report.gate:GateOptions",
    "gate": "harness.report.gate:run_gate",
    "ReportOptions": "harness.report.make:ReportOptions",
    "make_report": "harness.report.make:make_report",
}

__all__ = sorted([*_API, "make_plan", "run"])


def make_plan(opts):
    """`harness plan`: the Plan a recipe makes for opts.model (BuildOptions); nothing is built."""
    from harness.builder import make_plan as _make_plan

    return _make_plan(opts)[0]


def run(opts, log=None):
    """`harness run`: build or reuse each recipe's artifact, run each suite, store and return the results."""
    import sys

    from harness.runner import run as _run

    return _run(opts, log=log or (lambda message: print(message, file=sys.stderr)))


def __getattr__(name):
    if name in _API:
        module, attr = _API[name].split(":")
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'harness' has no attribute {name!r}")


def __dir__():
    return __all__
