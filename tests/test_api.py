"""The public Python API mirrors the CLI with the same options dataclasses."""

import subprocess
import sys

import pytest

import harness


def test_api_names_stay_callable_after_every_stage_is_imported():
    import harness.builder  # noqa: F401  (the stage modules must not shadow the API functions)
    import harness.runner  # noqa: F401

    for name in ("resolve_model", "make_plan", "build", "run", "load_results", "compare", "gate", "make_report"):
        assert callable(getattr(harness, name)), name
    assert set(harness.__all__) >= {"BuildOptions", "RunOptions", "GateOptions", "CompareOptions", "ReportOptions"}


def test_import_harness_is_lazy():
    code = "import sys, harness; print(any(m.startswith(('mlx', 'harness.runner', 'harness.builder')) for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip()
    assert out == "False"


def test_plan_build_and_gate_through_the_api(tmp_path):
    opts = harness.BuildOptions(model="synthetic:llama", recipe="uniform4", progress=False)
    plan = harness.make_plan(opts)
    assert plan.recipe == "uniform4" and plan.bpw == pytest.approx(4.5)
    built = harness.build(opts, log=lambda m: None)
    assert (built.path / "config.json").is_file()
    with pytest.raises(harness.HarnessError):
        harness.gate(harness.GateOptions(baseline=str(tmp_path / "missing"), results=str(tmp_path / "missing")))
