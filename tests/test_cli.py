"""The command line: every subcommand answers --help, bad input is one `harness: error:` line with exit 2
before any work, and nothing is written on refusal."""

import subprocess
import sys

import pytest

from harness.builder import BuildOptions, make_plan
from harness.cli import main

COMMANDS = ("recipes", "suites", "plan", "build", "run", "report", "compare", "gate")


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("harness: error: "), err
    return lines[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    proc = subprocess.run([sys.executable, "-m", "harness", command, "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "usage: harness" in proc.stdout


def test_unknown_command_and_flag_exit_2():
    proc = subprocess.run([sys.executable, "-m", "harness", "frobnicate"], capture_output=True, text=True)
    assert proc.returncode == 2
    proc = subprocess.run([sys.executable, "-m", "harness", "plan", "--recipe", "uniform4", "--bogus"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "unrecognized arguments: --bogus" in proc.stderr


@pytest.mark.parametrize("argv, message", [
    (["build", "--recipe", "uniform4", "--group-size", "0"], "--group-size 0 is not a group size"),
    (["plan", "--recipe", "oq4", "--target-bpw", "nan"], "--target-bpw nan is not a bits-per-weight target"),
    (["plan", "--recipe", "oq4", "--target-bpw", "inf"], "--target-bpw inf is not"),
    (["plan", "--recipe", "oq4", "--calib-samples", "0"], "--calib-samples 0 must be a positive number"),
    (["plan", "--recipe", "oq4", "--target-bpw", "3.5"], "is not above oq4's base of 4 bits"),
    (["plan", "--recipe", "oq4", "--target-bpw", "5"], "is above oq4's 4.7 cap"),
    (["plan"], "plan needs --recipe"),
])
def test_bad_recipe_flags_are_refused_before_work(capsys, argv, message):
    code, out, err = run_cli(capsys, *argv, "--model", "synthetic:llama", "--no-progress")
    assert code == 2 and message in one_error_line(err)


def test_out_that_is_a_file_is_refused_before_work(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    for out in (blocker, blocker / "sub"):
        code, _, err = run_cli(capsys, "run", "--recipe", "uniform4", "--suite", "fidelity", "--out", str(out),
                               "--model", "synthetic:llama", "--no-progress")
        assert code == 2 and "choose a directory" in one_error_line(err)
    assert blocker.read_text() == "keep me"


def test_plan_file_from_another_recipe_is_refused(capsys, tmp_path):
    plan = make_plan(BuildOptions(model="synthetic:llama", recipe="uniform8", progress=False))[0]
    path = tmp_path / "plan.json"
    path.write_text(plan.to_json())
    out_dir = tmp_path / "artifact"
    code, _, err = run_cli(capsys, "build", "--recipe", "uniform4", "--plan", str(path), "--model",
                           "synthetic:llama", "--out", str(out_dir), "--no-progress")
    assert code == 2 and "made by recipe 'uniform8'" in one_error_line(err)
    assert not out_dir.exists()


def test_plan_prints_both_bpw_numbers(capsys):
    code, out, _ = run_cli(capsys, "plan", "--recipe", "uniform4", "--model", "synthetic:llama", "--no-progress")
    assert code == 0 and "4.500" in out and "mlx-lm" in out


def test_recipes_and_suites_list_to_stdout(capsys):
    code, out, err = run_cli(capsys, "recipes")
    assert code == 0 and "uniform4" in out and "oq4" in out
    code, out, err = run_cli(capsys, "suites")
    assert code == 0 and "fidelity" in out and "mmlu" in out
