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

from harness.build import BuildOptions, build
from harness.cli import main
from harness.runtime.execution import load_artifact
from harness.results import ItemLog, read_result

FAKE_SUITE = textwrap.dedent('''
    import time
    import mlx.core as mx

    class CountingSuite:
        """Deterministic per-item numbers from the model's logits; slow enough to be killed mid-run."""
        name = "counting"
        description = "test suite"
        version = "1"

        def items(self, ctx):
            n = ctx.limit or 12
            return [{"id": f"q{i:02d}", "tokens": [1 + i, 7, 9 + i]} for i in range(n)]

        def run(self, ctx, items):
            for it in items:
                logits = ctx.model(mx.array([it["tokens"]]))[0, -1]
                top = int(mx.argmax(logits).item())
                time.sleep(float(ctx.options.get("sleep", 0)))
                yield {"id": it["id"], "top": top, "correct": top % 2 == 0,
                       "logit": round(float(logits[top].item()), 5)}

        def summarize(self, ctx, records):
            n = len(records)
            return {"acc": sum(r["correct"] for r in records) / max(n, 1), "n": n,
                    "checksum": sum(r["top"] for r in records)}
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
    (plugin_dir / "fake_suite.py").write_text(FAKE_SUITE)
    (plugin_dir / "driver.py").write_text(DRIVER)
    monkeypatch.syspath_prepend(str(plugin_dir))
    import harness.suites_registry as reg

    monkeypatch.setitem(reg.BUILTIN_SUITES, "counting", "fake_suite:CountingSuite")
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
