"""Runner, results store, resume after SIGKILL, and exec modes."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlx.core as mx
import pytest

from harness.builder import BuildOptions, build
from harness.cli import main
from harness.errors import HarnessError
from harness.runtime.execution import load_artifact
from harness.results import ItemLog, read_result

FAKE_SUITE = textwrap.dedent('''
    import time
    from dataclasses import dataclass

    import mlx.core as mx

    from harness.options import option
    from harness.suite import MetricSpec

    @dataclass(frozen=True)
    class CountingOptions:
        sleep: float = option(0.0, help="seconds per item", min=0)
        shots: int = option(0, min=0, max=5)

    class CountingSuite:
        """Deterministic per-item numbers from the model's logits; slow enough to be killed mid-run."""
        name = "counting"
        description = "test suite"
        version = "1"
        Options = CountingOptions
        metrics = (MetricSpec("acc", True, "proportion", max_drop=0.02, item_key="correct"),
                   MetricSpec("n", None, "count"))

        def items(self, ctx):
            n = ctx.limit or 12
            return [{"id": f"q{i:02d}", "tokens": [1 + i, 7, 9 + i]} for i in range(n)]

        def run(self, ctx, items):
            for it in items:
                logits = ctx.model(mx.array([it["tokens"]]))[0, -1]
                top = int(mx.argmax(logits).item())
                time.sleep(ctx.options.sleep)
                yield {"id": it["id"], "top": top, "correct": top % 2 == 0,
                       "logit": round(float(logits[top].item()), 5)}

        def summarize(self, ctx, records):
            n = len(records)
            return {"acc": sum(r["correct"] for r in records) / max(n, 1), "n": n,
                    "checksum": sum(r["top"] for r in records)}
''')

LEGACY_SUITE = textwrap.dedent('''
    class LegacySuite:
        """A third-party suite written before Options existed: reads ctx.options as a dict."""
        name = "legacy"
        version = "1"

        def items(self, ctx):
            return [{"id": "a"}, {"id": "b"}]

        def run(self, ctx, items):
            for it in items:
                yield {"id": it["id"], "value": ctx.options.get("value", 1)}

        def summarize(self, ctx, records):
            return {"total": sum(r["value"] for r in records)}
''')

DRIVER = textwrap.dedent('''
    import sys
    sys.path.insert(0, sys.argv[1])
    import harness.suites_registry as reg
    reg.BUILTIN_SUITES["counting"] = "fake_suite:CountingSuite"
    from harness.cli import main
    raise SystemExit(main(sys.argv[2:]))
''')


@pytest.fixture()
def fake_suite(tmp_path, monkeypatch):
    plugin_dir = tmp_path / "plugin"
    plugin_dir.mkdir()
    (plugin_dir / "fake_suite.py").write_text(FAKE_SUITE + LEGACY_SUITE)
    monkeypatch.delitem(sys.modules, "fake_suite", raising=False)  # other tests' fake_suite of the same name
    (plugin_dir / "driver.py").write_text(DRIVER)
    monkeypatch.syspath_prepend(str(plugin_dir))
    import harness.suites_registry as reg

    monkeypatch.setitem(reg.BUILTIN_SUITES, "counting", "fake_suite:CountingSuite")
    monkeypatch.setitem(reg.BUILTIN_SUITES, "legacy", "fake_suite:LegacySuite")
    return plugin_dir


def test_run_writes_schema_and_summary(fake_suite, tmp_path, capsys):
    out = tmp_path / "results"
    code = main(["run", "--recipe", "float", "--recipe", "uniform4", "--suite", "counting", "--model",
                 "synthetic:llama", "--out", str(out), "--no-progress", "--limit", "6"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "counting" in printed and "results written to" in printed
    res = read_result(out / "synthetic-llama" / "uniform4" / "counting.json")
    assert res["complete"] and res["n_items"] == 6
    assert res["provenance"]["exec_mode"] == "simulated"
    for key in ("versions", "hardware", "seed", "suite_version", "options"):
        assert key in res["provenance"]
    assert res["artifact"]["bpw"] == pytest.approx(4.5)
    assert "paired" in res and res["paired"]["vs"] == "float"  # float ran first: flips are computed
    assert res["metrics"] == [{"name": "acc", "higher_is_better": True, "kind": "proportion", "max_drop": 0.02,
                               "relative": False, "item_key": "correct", "description": "", "chance": None},
                              {"name": "n", "higher_is_better": None, "kind": "count", "max_drop": None,
                               "relative": False, "item_key": None, "description": "", "chance": None}]
    assert res["provenance"]["reference"] == "float"
    assert res["provenance"]["options"] == {"sleep": 0.0, "shots": 0}  # every field, defaults included


def _no_build(monkeypatch):
    import harness.runner as run_mod

    def fail(*a, **k):
        raise AssertionError("built before the options were checked")

    monkeypatch.setattr(run_mod, "build", fail)


@pytest.mark.parametrize("opts, message", [
    (["--opt", "temperature=1"], "unknown option 'temperature'; valid keys — counting: sleep, shots"),
    (["--opt", "counting.bogus=1"], "unknown counting option 'bogus'; valid: sleep, shots"),
    (["--opt", "mmlu.shots=5"], "scoped to 'mmlu', which is not in this run"),
    (["--opt", "shots=9"], "counting option shots='9' is out of range; it must be <= 5"),
    (["--opt", "sleep=soon"], "counting option sleep='soon' is not a finite number"),
    (["--opt", "sleep"], "is not KEY=VALUE"),
    (["--judge", "http://localhost:1"], "--judge grades the reasoning suite"),
])
def test_bad_options_exit_2_before_any_work(fake_suite, tmp_path, capsys, monkeypatch, opts, message):
    _no_build(monkeypatch)
    out = tmp_path / "results"
    code = main(["run", "--recipe", "uniform4", "--suite", "counting", "--model", "synthetic:llama",
                 "--out", str(out), "--no-progress", *opts])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("harness: error: ") and message in err[-1], err
    assert not out.exists()  # nothing written


def test_options_route_by_key_and_scope(fake_suite):
    from harness.runner import suite_options
    from harness.suites_registry import get_suite

    suites = [get_suite("counting"), get_suite("speed"), get_suite("mmlu")]
    counting, speed, mmlu = suite_options(suites, {"trials": "2", "counting.shots": "3", "mmlu.shots": "1",
                                                   "contexts": "64,128"})
    assert (counting.shots, mmlu.shots) == (3, 1)  # scoped keys reach one suite each
    assert speed.trials == 2 and speed.contexts == (64, 128)
    counting, mmlu = suite_options([suites[0], suites[2]], {"shots": "2"})  # a plain key: every suite with it
    assert counting.shots == 2 and mmlu.shots == 2
    legacy = get_suite("legacy")
    assert suite_options([legacy], {}) == [{}]  # no Options declared: takes no keys, reads {}
    with pytest.raises(HarnessError, match="legacy: \\(none\\)"):
        suite_options([legacy], {"value": "3"})


def test_legacy_suite_without_options_still_runs(fake_suite, tmp_path):
    out = tmp_path / "results"
    assert main(["run", "--recipe", "float", "--suite", "legacy", "--model", "synthetic:llama", "--out", str(out),
                 "--no-progress"]) == 0
    res = read_result(out / "synthetic-llama" / "float" / "legacy.json")
    assert res["summary"]["total"] == 2 and res["metrics"] == [] and res["provenance"]["options"] == {}


def test_run_prints_tables_rendered_from_data():
    from harness.runner import rendered_tables
    from harness.suites.speed import summarize_records

    rec = {"prompt": "random", "gen_tokens": 8, "trials": [{}], "prompt_tps": 145.04, "prompt_tps_min": 140.0,
           "prompt_tps_max": 150.0, "generation_tps": 16.0, "generation_tps_min": 15.5,
           "generation_tps_max": 16.5, "peak_memory_gb": 1.0, "context": 1024, "id": "random-1024"}
    text = rendered_tables({"suite": "speed", "summary": summarize_records([rec])})
    assert "Prefill (PP)" in text and "| 1k " in text and "145.0 tok/s [140.0-150.0]" in text
    assert rendered_tables({"suite": "mmlu", "summary": {"acc": 0.5}}) == ""
    # a suite not converted yet still stores its table as text: printed as before
    assert rendered_tables({"suite": "no-such-suite", "summary": {"table": "| a |"}}) == "| a |"


def test_suites_lists_options(capsys):
    assert main(["suites"]) == 0
    out = capsys.readouterr().out
    assert "mmlu:" in out and "prefix_cache" in out and "auto|on|off" in out
    assert "speed:" in out and "1024,4096" in out
    assert "lm-eval:TASK" in out and "include_path" in out


def test_unknown_suite_suggests(capsys):
    code = main(["run", "--recipe", "float", "--suite", "fidelty", "--model", "synthetic:llama"])
    err = capsys.readouterr().err
    assert code == 2 and "did you mean fidelity" in err


def test_sigkill_then_resume_matches_uninterrupted(fake_suite, tmp_path):
    env = dict(os.environ)
    args = ["run", "--recipe", "uniform3", "--suite", "counting", "--model", "synthetic:llama", "--no-progress",
            "--opt", "sleep=0.25"]
    # uninterrupted reference
    ref_out = tmp_path / "ref"
    subprocess.run([sys.executable, str(fake_suite / "driver.py"), str(fake_suite), *args, "--out", str(ref_out)],
                   env=env, check=True, capture_output=True)
    # killed run
    out = tmp_path / "killed"
    items = out / "synthetic-llama" / "uniform3" / "counting.items.jsonl"
    proc = subprocess.Popen([sys.executable, str(fake_suite / "driver.py"), str(fake_suite), *args, "--out",
                             str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        if items.is_file() and len(items.read_text().splitlines()) >= 5:  # header + 4 items
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(items.read_text().splitlines()) - 1
    assert 0 < done_before < 12
    assert not (out / "synthetic-llama" / "uniform3" / "counting.json").exists()
    resumed = subprocess.run([sys.executable, str(fake_suite / "driver.py"), str(fake_suite), *args, "--out",
                              str(out)], env=env, check=True, capture_output=True, text=True)
    assert f"resuming: {done_before} of 12" in resumed.stderr
    a = read_result(ref_out / "synthetic-llama" / "uniform3" / "counting.json")
    b = read_result(out / "synthetic-llama" / "uniform3" / "counting.json")
    assert a["summary"] == b["summary"]
    lines = [json.loads(x) for x in items.read_text().splitlines()[1:]]
    assert sorted(r["id"] for r in lines) == [f"q{i:02d}" for i in range(12)]  # none lost, none twice


def test_torn_last_line_is_dropped(tmp_path):
    path = tmp_path / "s.items.jsonl"
    log = ItemLog(path, "k1")
    log.append({"id": "a", "v": 1})
    log.append({"id": "b", "v": 2})
    with open(path, "a") as f:
        f.write('{"id": "c", "v"')  # killed mid-write
    again = ItemLog(path, "k1")
    assert set(again.records) == {"a", "b"}
    again.append({"id": "c", "v": 3})
    assert set(ItemLog(path, "k1").records) == {"a", "b", "c"}
    assert set(ItemLog(path, "other-settings").records) == set()  # settings changed: start over


RECIPE_FAMILIES = [
    ("synthetic:llama", "uniform2", {}),
    ("synthetic:llama", "uniform4", {}),
    ("synthetic:llama", "uniform8", {"group_size": 32}),
    ("synthetic:llama", "uniform4", {"mode": "mxfp4"}),
    ("synthetic:llama", "uniform4", {"mode": "nvfp4"}),
    ("synthetic:llama", "uniform8", {"mode": "mxfp8"}),
    ("synthetic:llama", "mlx-mixed-3-6", {}),
    ("synthetic:minimax", "tiers-3.7", {}),
    ("synthetic:qwen3_moe", "uniform3", {}),
]


@pytest.mark.parametrize("model,recipe,options", RECIPE_FAMILIES)
def test_simulated_equals_native(model, recipe, options):
    """Simulated (dequantized fp32) and native kernels see bit-identical weights, so logits differ
    only by fp32 summation order: ~1e-7 relative per dot product, growing mildly with depth.
    1e-4 of the logit scale is ~100x that and far below any quantization effect (>1e-2)."""
    res = build(BuildOptions(model=model, recipe=recipe, recipe_options=options, progress=False),
                log=lambda m: None)
    tokens = mx.array([[3, 17, 42, 99, 7, 250, 11, 64, 5, 301]])
    native, _, mode_n = load_artifact(res.path, "native")
    simulated, _, mode_s = load_artifact(res.path, "simulated")
    assert (mode_n, mode_s) == ("native", "simulated")
    assert not any(hasattr(m, "bits") for _, m in simulated.named_modules())
    a, b = native(tokens), simulated(tokens)
    scale = mx.abs(a).max().item()
    assert mx.abs(a - b).max().item() <= 1e-4 * scale


def test_reference_is_evaluated_and_compared(fake_suite, tmp_path, capsys):
    """--reference (default float) is run on scored suites even when not listed, flips pair against it,
    and the run prints each recipe beside it; --reference uniform8 makes uniform8 the reference."""
    out = tmp_path / "res"
    code = main(["run", "--recipe", "uniform4", "--suite", "counting", "--model", "synthetic:llama",
                 "--out", str(out), "--no-progress", "--limit", "6"])
    assert code == 0
    printed = capsys.readouterr().out
    assert (out / "synthetic-llama" / "float" / "counting.json").is_file()  # the reference ran too
    res = read_result(out / "synthetic-llama" / "uniform4" / "counting.json")
    assert res["paired"]["vs"] == "float"
    assert "vs the reference (float)" in printed
    code = main(["run", "--recipe", "uniform4", "--suite", "counting", "--model", "synthetic:llama",
                 "--out", str(out), "--no-progress", "--limit", "6", "--reference", "uniform8"])
    assert code == 0
    res = read_result(out / "synthetic-llama" / "uniform4" / "counting.json")
    assert res["paired"]["vs"] == "uniform8" and res["provenance"]["reference"] == "uniform8"
    assert (out / "synthetic-llama" / "uniform8" / "counting.json").is_file()
    code = main(["run", "--recipe", "uniform4", "--suite", "counting", "--model", "synthetic:llama",
                 "--out", str(tmp_path / "none"), "--no-progress", "--limit", "6", "--reference", "none"])
    assert code == 0 and not (tmp_path / "none" / "synthetic-llama" / "float").exists()
