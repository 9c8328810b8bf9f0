"""The CLI re-executes itself with OpenBLAS preloaded and records it in provenance."""

import json
import os
import subprocess
import sys

from harness.runtime.blas import find_openblas


def test_cli_preloads_openblas_and_records_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "_HARNESS_BLAS_REEXEC")}
    out = tmp_path / "artifact"
    proc = subprocess.run([sys.executable, "-m", "harness", "build", "--recipe", "uniform4", "--model",
                           "synthetic:llama", "--out", str(out), "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(out)
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["blas"]["openblas_loaded"] == (find_openblas() is not None)
    assert prov["hardware"]["openblas"] == (find_openblas() is not None)
    if find_openblas() is None:
        assert "libopenblas0-pthread" in proc.stderr  # the one command that fixes it


def test_opt_out(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "_HARNESS_BLAS_REEXEC")}
    env["HARNESS_NO_OPENBLAS"] = "1"
    out = tmp_path / "artifact"
    proc = subprocess.run([sys.executable, "-m", "harness", "build", "--recipe", "uniform4", "--model",
                           "synthetic:llama", "--out", str(out), "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "provenance.json").read_text())["blas"]["openblas_loaded"] is False
