"""harness gate / compare: significant drops beyond thresholds fail, noise and self-comparison pass."""

import json
from unittest import mock

import pytest
from test_report import MODEL, _write, make_results

from harness.cli import main
from harness.report.gate import gate, pair_results, parse_max_drop
from harness.report.compare import load_results
from harness.stats import wilson_ci

FOUR_AND_TWO = {"float": (16.0, 0.0, 0.0), "uniform4": (4.5, 0.08, 0.03), "uniform2": (2.5, 0.6, 0.05)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gate") / "results"
    with mock.patch("os.fsync"):
        make_results(root, recipes=FOUR_AND_TWO, suites=("mmlu", "reasoning", "fidelity", "speed"))
    return root


def _file(root, recipe, suite):
    return str(root / MODEL / recipe / f"{suite}.json")


def test_degraded_recipe_fails_against_4bit_baseline(runs, capsys):
    code = main(["gate", "--baseline", _file(runs, "uniform4", "mmlu"), "--results", _file(runs, "uniform2", "mmlu")])
    out = capsys.readouterr().out
    assert code == 1
    assert "mmlu: current smollm2-135m/uniform2 against baseline smollm2-135m/uniform4" in out
    assert "REGRESSION: mmlu acc" in out and "McNemar exact, n=300" in out
    row = next(line for line in out.splitlines() if line.split()[:2] == ["uniform2", "mmlu"] and " acc " in line)
    assert "FAIL" in row and "2.00 pts" in row  # default accuracy threshold: 0.02 absolute


def test_whole_directory_gate_names_every_failing_metric(runs, tmp_path, capsys):
    # baseline dir = the uniform4 run, current dir = the uniform2 run (pairs by suite)
    base, cur = tmp_path / "base", tmp_path / "cur"
    for dst, recipe in ((base, "uniform4"), (cur, "uniform2")):
        for suite in ("mmlu", "reasoning", "fidelity", "speed"):
            d = dst / MODEL / recipe
            d.mkdir(parents=True, exist_ok=True)
            for ext in (".json", ".items.jsonl"):
                src = runs / MODEL / recipe / f"{suite}{ext}"
                if src.exists():
                    (d / src.name).write_bytes(src.read_bytes())
    assert main(["gate", "--baseline", str(base), "--results", str(cur)]) == 1
    out = capsys.readouterr().out
    failing = out.split("REGRESSION: ")[1]
    for name in ("mmlu acc", "reasoning score", "fidelity ppl", "fidelity kld_mean", "fidelity top1_agreement"):
        assert name in failing, name
    assert "speed" not in failing  # speed has no default threshold: hardware-dependent


def test_same_recipe_against_itself_passes(runs, capsys):
    path = _file(runs, "uniform2", "mmlu")
    assert main(["gate", "--baseline", path, "--results", path]) == 0
    assert "gate passed" in capsys.readouterr().out
    assert main(["gate", "--baseline", str(runs), "--results", str(runs)]) == 0  # a whole directory too


def test_baseline_inside_results_dir_is_not_compared_with_itself(runs, tmp_path, capsys):
    results = tmp_path / "results"
    for recipe, where in (("uniform4", results / "baseline"), ("uniform2", results)):
        d = where / MODEL / recipe
        d.mkdir(parents=True)
        for ext in (".json", ".items.jsonl"):
            (d / f"mmlu{ext}").write_bytes((runs / MODEL / recipe / f"mmlu{ext}").read_bytes())
    assert main(["gate", "--baseline", str(results / "baseline"), "--results", str(results)]) == 1
    assert "current smollm2-135m/uniform2 against baseline smollm2-135m/uniform4" in capsys.readouterr().out


def test_big_but_not_significant_drop_passes(tmp_path, capsys):
    """3 of 10 items lost: a 30-point drop, far beyond 2 points, but McNemar p = 0.25."""
    root = tmp_path / "r"
    for recipe, lost in (("uniform4", 0), ("uniform2", 3)):
        recs = [{"id": f"q{i}", "correct": i >= lost} for i in range(10)]
        k = sum(r["correct"] for r in recs)
        _write(root, recipe, "mmlu", {"acc": k / 10, "acc_ci95": list(wilson_ci(k, 10)), "n": 10}, recs, {"bpw": 4.5})
    code = main(["gate", "--baseline", _file(root, "uniform4", "mmlu"), "--results", _file(root, "uniform2", "mmlu")])
    out = capsys.readouterr().out
    assert code == 0 and "ok (n.s.)" in out and "0.25" in out


def test_max_drop_overrides_and_relative_thresholds(runs):
    base, cur = load_results(_file(runs, "uniform4", "fidelity")), load_results(_file(runs, "uniform2", "fidelity"))
    pairs = pair_results(base, cur)
    rows = gate(pairs, parse_max_drop(["ppl=500%"]))  # only ppl gated, and very loosely
    assert [r.diff.metric for r in rows] == ["ppl"] and not rows[0].failed
    assert rows[0].limit == pytest.approx(5.0 * base[0].summary["ppl"])
    rows = gate(pairs, parse_max_drop(["fidelity.kld_mean=0.01", "top1*=0.99"]))
    verdicts = {r.diff.metric: r.verdict for r in rows}
    assert verdicts == {"kld_mean": "FAIL", "top1_agreement": "ok"}


def test_summary_only_results_use_ci_test(tmp_path, capsys):
    root = tmp_path / "r"
    for recipe, acc in (("a", 0.60), ("b", 0.40)):
        _write(root, recipe, "toy", {"acc": acc, "acc_ci95": [acc - 0.03, acc + 0.03], "n": 1000}, [], {})
    assert main(["gate", "--baseline", _file(root, "a", "toy"), "--results", _file(root, "b", "toy")]) == 1
    assert "CI z-test" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--max-drop", "acc"], "is not METRIC=VALUE"),
    (["--max-drop", "acc=abc"], "is not a number"),
    (["--max-drop", "acc=-1"], "must be >= 0"),
    (["--max-drop", "nosuch=0.1"], "matches no metric"),
    (["--max-drop", "n=1"], "informational"),
])
def test_bad_max_drop_is_exit_2(runs, capsys, argv, message):
    path = _file(runs, "uniform4", "mmlu")
    assert main(["gate", "--baseline", path, "--results", path, *argv]) == 2
    assert message in capsys.readouterr().err


def test_bad_inputs_are_exit_2(runs, tmp_path, capsys):
    good = _file(runs, "uniform4", "mmlu")
    assert main(["gate", "--baseline", str(tmp_path / "nope.json"), "--results", good]) == 2
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"schema": "something/else"}))
    assert main(["gate", "--baseline", str(other), "--results", good]) == 2
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert main(["gate", "--baseline", good, "--results", str(broken)]) == 2
    assert main(["gate", "--baseline", good, "--results", _file(runs, "uniform2", "reasoning")]) == 2  # no shared suite
    err = capsys.readouterr().err
    assert "not found" in err and "not a harness result" in err and "not valid JSON" in err
    assert "matches the baseline" in err


def test_compare_prints_every_shared_metric(runs, capsys):
    assert main(["compare", _file(runs, "uniform4", "fidelity"), _file(runs, "uniform2", "fidelity")]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[1]: line for line in out.splitlines() if line.startswith("fidelity ")}
    assert set(lines) >= {"ppl", "kld_mean", "top1_agreement", "n", "kld_p99"}
    assert "B worse *" in lines["kld_mean"] and "paired bootstrap, n=80" in lines["kld_mean"]
    assert "paired bootstrap, n=80" in lines["ppl"] and "B worse *" in lines["ppl"]  # on per-window NLL
    assert "worse" not in lines["ppl_err"] and "better" not in lines["ppl_err"]  # errors are informational
