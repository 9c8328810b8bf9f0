"""harness gate / compare: significant drops beyond thresholds fail, noise and self-comparison pass."""

import json
from unittest import mock

import numpy as np
import pytest
from test_report import MODEL, _write, make_results

from harness.cli import main
from harness.errors import HarnessError
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


# ----------------------------------------------------------------------------
# Results that cannot be silently wrong; like with like; small n


def _edit(path, **changes):
    """Rewrite a result file with top-level or provenance changes (provenance__limit=4)."""
    data = json.loads(open(path).read())
    for key, value in changes.items():
        if key.startswith("provenance__"):
            data["provenance"][key.split("__", 1)[1]] = value
        elif value is None:
            data.pop(key, None)
        else:
            data[key] = value
    open(path, "w").write(json.dumps(data))


def _copy_suite(runs, dst, recipe, suite):
    d = dst / MODEL / recipe
    d.mkdir(parents=True, exist_ok=True)
    for ext in (".json", ".items.jsonl"):
        (d / f"{suite}{ext}").write_bytes((runs / MODEL / recipe / f"{suite}{ext}").read_bytes())
    return d / f"{suite}.json"


@pytest.mark.parametrize("side", ["baseline", "current"])
@pytest.mark.parametrize("damage", ["truncated", "wrong types"])
def test_unreadable_result_in_a_directory_is_exit_2_naming_it(runs, tmp_path, capsys, side, damage):
    base, cur = tmp_path / "base", tmp_path / "cur"
    _copy_suite(runs, base, "uniform4", "mmlu")
    _copy_suite(runs, cur, "uniform4", "mmlu")
    _copy_suite(runs, base, "uniform4", "fidelity")
    _copy_suite(runs, cur, "uniform4", "fidelity")
    bad = (base if side == "baseline" else cur) / MODEL / "uniform4" / "fidelity.json"
    if damage == "truncated":
        bad.write_text(bad.read_text()[:200])  # a result cut short: it used to be skipped silently
    else:
        _edit(bad, summary=[1, 2])
    assert main(["gate", "--baseline", str(base), "--results", str(cur)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "harness: error:" in err
    assert main(["report", "--results", str(bad.parent.parent.parent)]) == 2  # the report too, no traceback
    assert str(bad) in capsys.readouterr().err


def test_missing_gated_metric_or_suite_is_exit_2(runs, tmp_path, capsys):
    base, cur = tmp_path / "base", tmp_path / "cur"
    _copy_suite(runs, base, "uniform4", "fidelity")
    cur_file = _copy_suite(runs, cur, "uniform4", "fidelity")
    data = json.loads(cur_file.read_text())
    del data["summary"]["kld_mean"]  # a gated metric vanished from the current run
    _edit(cur_file, summary=data["summary"])
    assert main(["gate", "--baseline", str(base), "--results", str(cur)]) == 2
    err = capsys.readouterr().err
    assert "lacks the gated metric fidelity kld_mean" in err and str(cur_file) in err
    # a NaN is not a value either
    data["summary"]["kld_mean"] = float("nan")
    _edit(cur_file, summary=data["summary"])
    assert main(["gate", "--baseline", str(base), "--results", str(cur)]) == 2
    # a baseline suite the current run did not produce is not "passed"
    _copy_suite(runs, cur, "uniform4", "fidelity")
    _copy_suite(runs, base, "uniform4", "mmlu")
    assert main(["gate", "--baseline", str(base), "--results", str(cur)]) == 2
    assert "no current result for baseline" in capsys.readouterr().err


def _windows(root, recipe, n, limit, data_sha="d" * 64, shift=0.0):
    """A fidelity-like result over the first n windows (prefix-stable, like the real suite)."""
    recs = [{"id": str(i), "n": 100, "sum_nll": 100 * (3.0 + 0.05 * i + shift), "kld_mean": 0.1 + 0.01 * i}
            for i in range(n)]
    ppl = float(np.exp(sum(r["sum_nll"] for r in recs) / (100 * n)))
    summary = {"ppl": ppl, "kld_mean": float(np.mean([r["kld_mean"] for r in recs])), "n": 100 * n,
               "n_windows": n}
    path = _write(root, recipe, "fidelity", summary, recs, {"bpw": 4.5, "key": "same-artifact"})
    _edit(path, provenance__limit=limit, provenance__data={"source": "x", "sha256": data_sha})
    return path


def test_same_artifact_at_two_limits_is_never_a_regression(tmp_path, capsys):
    """The issue's case: --limit 4 vs a --limit 8 baseline of the same artifact gave '+13.7 % ppl,
    p = 0.008' and exit 1. Different settings are named and the gate does not judge (exit 2)."""
    base = _windows(tmp_path / "b", "uniform4", 8, 8, data_sha="8" * 64)
    cur = _windows(tmp_path / "c", "uniform4", 4, 4, data_sha="4" * 64)
    code = main(["gate", "--baseline", str(base), "--results", str(cur)])
    captured = capsys.readouterr()
    assert code == 2 and "REGRESSION" not in captured.out
    assert "different settings (--limit 8 vs 4; data sha256 888888888888 vs 444444444444)" in captured.err
    # the same data but fewer items scored (e.g. an interrupted run): the values are recomputed on the
    # shared items, so the delta is 0 there and nothing fails
    base = _windows(tmp_path / "b2", "uniform4", 8, None)
    cur = _windows(tmp_path / "c2", "uniform4", 4, None)
    assert main(["gate", "--baseline", str(base), "--results", str(cur)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if " ppl " in line)
    assert "+0 (+0.0%)" in row and "n=4 shared" in row and "exact permutation" in row
    pairs = pair_results(load_results(base), load_results(cur))
    d = next(r.diff for r in gate(pairs, []) if r.diff.metric == "ppl")
    assert d.shared_only and d.base == d.cur == pytest.approx(np.exp(3.0 + 0.05 * 1.5))


def test_four_items_are_too_few_to_tell(tmp_path, capsys):
    """4 windows, every one 10 % worse: a bootstrap said p < 0.001; no exact test on 4 pairs can
    reach p < 0.05, so the gate says so (exit 2) instead of passing or failing."""
    base = _windows(tmp_path / "b", "uniform4", 4, None)
    cur = _windows(tmp_path / "c", "uniform2", 4, None, shift=0.1)
    pairs = pair_results(load_results(base), load_results(cur))
    rows = {r.diff.metric: r for r in gate(pairs, [])}
    assert rows["ppl"].diff.test == "exact permutation" and rows["ppl"].diff.p == pytest.approx(0.125)
    assert rows["ppl"].verdict == "too few items to tell"
    assert main(["gate", "--baseline", str(base), "--results", str(cur)]) == 2
    assert "too few items to tell: fidelity ppl" in capsys.readouterr().err
    # identical numbers on 4 items: not significant, and no drop, so the gate passes
    same = _windows(tmp_path / "s", "uniform2", 4, None)
    d = next(r.diff for r in gate(pair_results(load_results(base), load_results(same)), []) if r.diff.metric == "ppl")
    assert d.p == 1.0 and not d.significant()
    assert main(["gate", "--baseline", str(base), "--results", str(same)]) == 0
    assert main(["compare", str(base), str(cur)]) == 0
    assert "< 0.001" not in capsys.readouterr().out


def test_gate_reads_results_and_metric_specs_only():
    """The CI gate does not depend on the report's tables, renderers, card or plots (floor: metric declarations only)."""
    import subprocess
    import sys

    code = ("import sys, harness.report.gate; "
            "bad = sorted(m for m in sys.modules if m.startswith('harness.report.') and m.rsplit('.', 1)[1] "
            "not in ('gate', 'compare', 'metrics', 'floor')); print(','.join(bad)); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, f"harness.report.gate pulls in {proc.stdout}{proc.stderr}"


def test_settings_difference_names_options_and_reference(tmp_path):
    from harness.report.compare import settings_difference

    base = _windows(tmp_path / "b", "uniform4", 8, None)
    cur = _windows(tmp_path / "c", "uniform4", 8, None)
    b, c = load_results(base)[0], load_results(cur)[0]
    assert settings_difference(b, c) is None
    b.provenance["options"], c.provenance["options"] = {"shots": 5, "protocol": "omlx"}, {"shots": 0}
    b.artifact.source_fingerprint, c.artifact.source_fingerprint = "a" * 64, "b" * 64
    assert settings_difference(b, c) == "option shots=5 vs 0; reference model aaaaaaaaaaaa vs bbbbbbbbbbbb"
    with pytest.raises(HarnessError, match="different settings"):
        gate([(b, c)], [])


def test_declared_metrics_drive_the_gate(tmp_path, capsys):
    """Declarations stored in the result win over name patterns: 'quality' (a name no pattern knows)
    is gated by its declared threshold; 'acc' (a pattern-gated name) is not gated when undeclared."""
    from harness.suite import MetricSpec

    specs = [MetricSpec("quality", True, "proportion", max_drop=0.05, item_key="ok").to_json()]
    paths = []
    for recipe, lost in (("uniform4", 0), ("uniform2", 40)):
        recs = [{"id": f"q{i}", "ok": i >= lost, "correct": i >= lost} for i in range(100)]
        k = 100 - lost
        path = _write(tmp_path / recipe, recipe, "toy", {"quality": k / 100, "acc": k / 100, "n": 100}, recs,
                      {"bpw": 4.5})
        _edit(path, metrics=specs)
        paths.append(str(path))
    assert main(["gate", "--baseline", paths[0], "--results", paths[1]]) == 1
    out = capsys.readouterr().out
    assert "REGRESSION: toy quality" in out and " acc " not in out
    assert "quality (%)" in out and "McNemar exact, n=100, 40↓ 0↑" in out
