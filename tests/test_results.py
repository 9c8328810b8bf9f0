"""The results store: typed result files, one writer per results file, item hashes, leftovers of killed runs."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_report import MODEL, _write
from test_run import fake_suite  # noqa: F401  (fixture)

from harness.cli import main
from harness.errors import HarnessError
from harness.report.compare import load_results
from harness.results import (Artifact, Record, SuiteResult, items_sha256, load_result, read_result,
                             remove_stale_temps, run_lock)
from harness.suite import MetricSpec

ROOT = Path(__file__).resolve().parents[1]


def test_suite_result_round_trip_and_committed_baseline():
    r = load_result(ROOT / "baseline" / "smollm2-135m" / "oq4" / "fidelity.json")
    assert (r.model, r.recipe, r.suite, r.n_items) == ("smollm2-135m", "oq4", "fidelity", 8)
    assert isinstance(r.artifact, Artifact) and r.artifact.bpw == pytest.approx(4.6998)
    assert r.provenance["limit"] == 8 and len(r.items()) == 8
    again = SuiteResult.from_json(json.loads(json.dumps(r.to_json())), r.path)
    assert again.to_json() == r.to_json()
    spec = MetricSpec("ppl", False, "ppl", 0.05, relative=True, item_key="nll")
    r.metrics = [spec]
    assert SuiteResult.from_json(r.to_json()).metrics == [spec]
    rec = Record.from_json({"id": "q1", "correct": 1, "points": 3})
    assert rec == Record("q1", True, {"points": 3}) and rec.to_json() == {"id": "q1", "points": 3, "correct": True}
    with pytest.raises(HarnessError, match="not a harness result"):
        SuiteResult.from_json({"schema": "x"}, Path("f.json"))
    with pytest.raises(HarnessError, match="'recipe' is missing"):
        SuiteResult.from_json({"schema": "harness.result/1", "model": "m", "suite": "s"}, Path("f.json"))


def test_tampered_or_truncated_items_are_flagged(tmp_path, capsys):
    recs = [{"id": f"q{i}", "correct": i % 2 == 0} for i in range(6)]
    path = _write(tmp_path, "uniform4", "mmlu", {"acc": 0.5, "n": 6}, recs, {"bpw": 4.5})
    data = json.loads(path.read_text())
    data["items_sha256"] = items_sha256(recs)
    path.write_text(json.dumps(data))
    assert load_result(path).check_items() is None  # untouched: no warning
    load_results(tmp_path)
    assert "do not match" not in capsys.readouterr().err
    items = path.with_name("mmlu.items.jsonl")
    lines = items.read_text().splitlines()
    items.write_text("\n".join(lines[:-1]) + "\n")  # truncated
    load_results(tmp_path)
    err = capsys.readouterr().err
    assert "harness: warning:" in err and "do not match the summary" in err and "5 records" in err
    items.write_text("\n".join(lines).replace('"correct": false', '"correct": true') + "\n")  # hand-edited
    assert main(["report", "--results", str(tmp_path)]) == 0
    assert "do not match the summary" in capsys.readouterr().err


def test_second_writer_fails_fast(tmp_path):
    items = tmp_path / "m" / "r" / "s.items.jsonl"
    with run_lock(items) as lock:
        assert lock.is_file() and f"pid {os.getpid()}" in lock.read_text()
        with pytest.raises(HarnessError, match=r"another `harness run` \(pid \d+\) is writing"):
            with run_lock(items):
                pass
    assert not lock.exists()  # released and removed
    with run_lock(items):  # free again
        pass


def _driver(fake_suite, out, *extra):  # noqa: F811
    return [sys.executable, str(fake_suite / "driver.py"), str(fake_suite), "run", "--recipe", "uniform3", "--suite",
            "counting", "--model", "synthetic:llama", "--no-progress", "--out", str(out), *extra]


def test_run_refuses_a_results_file_another_run_holds(fake_suite, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "results"
    items = out / "synthetic-llama" / "uniform3" / "counting.items.jsonl"
    with run_lock(items):  # what a running `harness run` holds
        code = main(["run", "--recipe", "uniform3", "--suite", "counting", "--model", "synthetic:llama",
                     "--no-progress", "--out", str(out), "--limit", "3"])
    assert code == 2 and "another `harness run`" in capsys.readouterr().err
    assert not items.exists()  # nothing written


@pytest.mark.slow
def test_two_concurrent_runs_cannot_mix_items(fake_suite, tmp_path):  # noqa: F811
    out = tmp_path / "results"
    items = out / "synthetic-llama" / "uniform3" / "counting.items.jsonl"
    first = subprocess.Popen(_driver(fake_suite, out, "--opt", "sleep=2", "--limit", "8"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (items.is_file() and len(items.read_text().splitlines()) >= 2):
            time.sleep(0.05)
        header = json.loads(items.read_text().splitlines()[0])
        # a second run on the same (model, recipe, suite) with other settings would start the file over
        # (and interleave its records with the first's); it fails at once instead
        second = subprocess.run(_driver(fake_suite, out, "--opt", "sleep=0"), capture_output=True, text=True,
                                timeout=120)
        assert first.poll() is None, "the first run ended before the second started: slow machine?"
        assert second.returncode == 2, second.stderr
        assert "another `harness run`" in second.stderr and second.stderr.count("harness: error:") == 1
    finally:
        first.kill()
        first.wait()
    lines = [json.loads(x) for x in items.read_text().splitlines()]
    assert lines[0] == header and len(lines) >= 2  # the first run's records only, none twice
    assert len({r["id"] for r in lines[1:]}) == len(lines) - 1
    # the next run (other settings) starts over instead of mixing in the killed run's records; the
    # killed run's lock does not block it (flock dies with its process)
    again = subprocess.run(_driver(fake_suite, out, "--opt", "sleep=0", "--limit", "5"), capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 0 and "produced with other settings" in again.stderr, again.stderr
    result = read_result(out / "synthetic-llama" / "uniform3" / "counting.json")
    lines = [json.loads(x) for x in items.read_text().splitlines()]
    assert lines[0]["_run_key"] == result["run_key"] != header["_run_key"]
    assert sorted(r["id"] for r in lines[1:]) == [f"q{i:02d}" for i in range(5)] and result["n_items"] == 5
    assert result["items_sha256"] == items_sha256(lines[1:]) and result["complete"]
    assert load_result(out / "synthetic-llama" / "uniform3" / "counting.json").check_items() is None
    assert not list(items.parent.glob(".*"))  # no lock or temp left behind


def test_stale_temps_of_killed_runs_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out, sandbox = tmp_path / "results", tmp_path / "tmp"
        d = out / MODEL / "uniform4"
        d.mkdir(parents=True)
        sandbox.mkdir()
        old = time.time() - 3 * 3600
        made = {
            "dead_old": d / f".mmlu.json.tmp-{dead.pid}-abc123",
            "dead_new": d / f".fidelity.json.tmp-{dead.pid}-def456",
            "alive_old": d / f".reasoning.json.tmp-{alive.pid}-ghi789",
            "nopid_old": d / ".speed.json.tmp-x1y2z3",
            "artifact_dir": out / MODEL / f".oq4-1234.tmp-{dead.pid}-q1w2e3",
            "sandbox_old": sandbox / "harness-sandbox-abcd",
            "sandbox_new": sandbox / "harness-sandbox-efgh",
            "unrelated": d / "mmlu.json",
        }
        for name, p in made.items():
            if "dir" in name or "sandbox" in name:
                p.mkdir()
                (p / "work").mkdir()
            else:
                p.write_text("x")
            if name != "dead_new" and name != "sandbox_new":
                os.utime(p, (old, old))
        removed = set(remove_stale_temps([out], sandbox_tmp=sandbox))
        assert removed == {made[k] for k in ("dead_old", "nopid_old", "artifact_dir", "sandbox_old")}
        assert all(made[k].exists() for k in ("dead_new", "alive_old", "sandbox_new", "unrelated"))
    finally:
        alive.kill()
        alive.wait()


def test_smaller_limit_resume_keeps_to_its_own_items(tmp_path):
    """A run resumed with a smaller --limit summarizes a subset of its item log: the result names
    those items, so the report pairs and hashes exactly what the summary was computed from."""
    from harness.results import ItemLog, item_fields, write_result

    items = tmp_path / MODEL / "uniform4" / "toy.items.jsonl"
    log = ItemLog(items, "k")
    for i in range(6):
        log.append({"id": f"q{i}", "correct": i % 2 == 0})
    used = [log.records[f"q{i}"] for i in range(3)]
    fields = item_fields(log, used)
    assert fields["item_ids"] == ["q0", "q1", "q2"]
    assert item_fields(log, list(log.records.values())).keys() == {"items_sha256"}  # the usual case: all of them
    path = items.with_name("toy.json")
    write_result(path, {"model": MODEL, "recipe": "uniform4", "suite": "toy", "run_key": "k", "n_items": 3,
                        "summary": {"acc": 2 / 3, "n": 3}, "provenance": {}, "items_file": items.name, **fields})
    r = load_result(path)
    assert [x["id"] for x in r.records()] == ["q0", "q1", "q2"] and r.check_items() is None
