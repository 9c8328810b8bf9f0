"""The judge: verdicts decided outside the model's process. Hostile programs that
game an in-process verdict all fail; the harness survives; nothing outside the
work dir changes; only plain data crosses."""

import json
import os
import shutil
import time
import uuid
from pathlib import Path

import pytest

from harness.cli import main as cli_main
from harness.errors import HarnessError
from harness.runtime.sandbox import JudgeSpec, isolation, judge_many, level_of, run_judged, run_python
from harness.runtime.sandbox_child import decode, encode

LAYERS = isolation().split("+")
NAMESPACES = pytest.mark.skipif(level_of(isolation()) != "namespaces",
                                reason=f"needs Linux namespaces (this machine: {isolation()})")
REPO = Path(__file__).resolve().parents[1]
ADD = JudgeSpec(setup="def add(a, b):\n    '''Add two numbers.'''\n", proxies=("add",),
                test="assert add(1, 2) == 3\nassert add(-5, 5) == 0\nassert add('a', 'b') == 'ab'\n")
GOOD = "def add(a, b):\n    return a + b\n"


def encoded(value) -> bytes:
    out = []
    encode(value, out)
    return b"".join(out)


# ---------------------------------------------------------------- plain data


@pytest.mark.parametrize("value", [
    None, True, False, 0, -7, 1.5, float("inf"), -0.0, 1e-300, 2 + 3j, "", "héllo\udc80",
    b"\x00\xff", [1, [2, (3, "x")]], (), {1: "a", "b": [None]}, {1, 2}, frozenset({"z"}), {(1, 2): {3}},
])
def test_plain_values_round_trip_exactly(value):
    back = decode(encoded(value))
    assert back == value and type(back) is type(value)
    assert repr(back) == repr(value)  # -0.0, nested types


def test_nan_and_huge_ints_round_trip():
    back = decode(encoded(float("nan")))
    assert back != back
    big = -(7 ** 20000)  # past int->str's 4300-digit limit: hex on the wire
    assert decode(encoded(big)) == big


def test_non_plain_values_are_refused():
    class Sneaky(int):
        def __eq__(self, other):
            return True

    for value in (Sneaky(3), object(), print, iter([1]), type, Path("x")):
        with pytest.raises(TypeError, match="not plain data"):
            encoded(value)
    nested = []
    for _ in range(300):
        nested = [nested]
    with pytest.raises(ValueError, match="deeply"):
        encoded(nested)


def test_container_subclasses_cross_as_plain_containers():
    from collections import Counter, OrderedDict, namedtuple

    class Liar(dict):
        def __eq__(self, other):
            return True

        def items(self):
            return [("fake", 1)]

    point = namedtuple("P", "x y")(1, 2)
    assert decode(encoded(point)) == (1, 2) and type(decode(encoded(point))) is tuple
    assert decode(encoded(Counter("aab"))) == {"a": 2, "b": 1}
    assert type(decode(encoded(OrderedDict(a=1)))) is dict
    assert decode(encoded(Liar(real=2))) == {"real": 2}  # read with dict's own methods


@pytest.mark.parametrize("data", [b"", b"X", b"i;", b"s5:ab", b"l2:N", b"S1:l0:", b"d1:l0:N", b"NN",
                                  b"s-1:", b"f1.0", b"c1.0;"])
def test_malformed_wire_data_is_an_error(data):
    with pytest.raises((ValueError, TypeError, IndexError)):
        decode(data)


# ---------------------------------------------------------------- verdicts


def test_correct_wrong_and_broken_candidates():
    cases = [GOOD, "def add(a, b):\n    return a - b\n", "def add(a, b:\n", "raise ValueError('x')\n",
             "def plus(a, b):\n    return a + b\n"]
    results = judge_many([(c, ADD) for c in cases], workers=2)
    assert [r.status for r in results] == ["passed", "failed", "error", "failed", "failed"]
    assert "AssertionError" in results[1].stderr_tail
    assert "KeyError" in results[4].stderr_tail  # no such function in the candidate


def test_candidate_exceptions_reach_the_tests_as_builtin_types():
    spec = JudgeSpec("", ("f",), "try:\n    f()\nexcept ValueError as e:\n    assert 'bad' in str(e)\n"
                                 "else:\n    raise AssertionError('no error')\n")
    assert run_judged("def f():\n    raise ValueError('bad input')\n", spec).status == "passed"
    assert run_judged("def f():\n    return 1\n", spec).status == "failed"


def test_candidate_keeps_state_between_calls_and_gets_copies():
    spec = JudgeSpec("", ("push",), "x = [1]\nassert push(x) == [1, 0]\nassert x == [1]\n"
                                    "assert push([]) == [1]\n")
    program = "n = 0\ndef push(xs):\n    global n\n    xs.append(n); n += 1\n    return xs\n"
    assert run_judged(program, spec).status == "passed"


def test_timeout_of_a_hanging_candidate():
    start = time.monotonic()
    r = run_judged("def add(a, b):\n    while True: pass\n", ADD, timeout=1.5)
    assert r.status == "timeout" and time.monotonic() - start < 1.5 + 3
    assert run_judged(GOOD, ADD).status == "passed"  # the judges still work afterwards


# ---------------------------------------------------------------- hostile programs

# Each must fail although it "wins" against an in-process verdict.
HOSTILE = {
    "eq_always_true": "class Any:\n    def __eq__(self, o): return True\n    __hash__ = None\n"
                      "def add(a, b):\n    return Any()\n",
    "int_subclass_eq": "class Any(int):\n    def __eq__(self, o): return True\n"
                       "def add(a, b):\n    return Any(0)\n",
    "frames_report_success":  # the old exploit: find the bootstrap's nonce, write the verdict, exit
        "import sys, os\n"
        "f = sys._getframe()\n"
        "while f is not None:\n"
        "    loc = f.f_locals\n"
        "    if 'nonce' in loc and 'result_fd' in loc:\n"
        "        os.write(loc['result_fd'], ('done %s\\n' % loc['nonce']).encode())\n"
        "        os._exit(0)\n"
        "    f = f.f_back\n",
    "globals_and_builtins":
        "import builtins\n"
        "builtins.AssertionError = type('Nope', (Exception,), {})\n"
        "builtins.__dict__['assert'] = None\n"
        "def add(a, b):\n"
        "    import sys\n"
        "    for f in (sys._getframe(1), sys._getframe(1).f_back):\n"
        "        f.f_globals['__builtins__'] = {}\n"
        "    return None\n",
    "exit_early_top_level": "import os\nos._exit(0)\ndef add(a, b):\n    return a + b\n",
    "sys_exit_in_call": "def add(a, b):\n    raise SystemExit(0)\n",
    "os_exit_in_call": "import os\ndef add(a, b):\n    os._exit(0)\n",
    "fake_verdict_on_every_fd":
        "import os, sys\n"
        "print('done 00000000000000000000000000000000')\n"
        "print('passed', file=sys.stderr)\n"
        "for fd in range(64):\n"
        "    for line in (b'done x\\n', b'\\x00\\x00\\x00\\x01R', b'\\x00\\x00\\x00\\x02VT'):\n"
        "        try:\n"
        "            os.write(fd, line)\n"
        "        except OSError:\n"
        "            pass\n"
        "os._exit(0)\n",
    "disables_the_guard":  # empty the audit hook's deny lists (reachable through frames), then act
        "import sys\n"
        "f = sys._getframe()\n"
        "while f is not None:\n"
        "    for name in ('DENIED_EVENTS', 'DENIED_IMPORTS', 'PATH_EVENTS'):\n"
        "        if name in f.f_globals:\n"
        "            f.f_globals[name].clear()\n"
        "    f = f.f_back\n"
        "del sys.modules['posix']\n"
        "import posix  # a fresh copy with fork/kill restored\n"
        "for pid in range(1, 200):\n"
        "    try:\n"
        "        posix.kill(pid, 9)\n"
        "    except OSError:\n"
        "        pass\n"
        "def add(a, b):\n"
        "    return posix.getpid()\n",
    "fills_the_disk":
        "def add(a, b):\n"
        "    i = 0\n"
        "    while True:\n"
        "        with open('fill%d' % i, 'wb') as f:\n"
        "            f.write(b'x' * (4 << 20))\n"
        "        i += 1\n",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_programs_fail(name):
    if name == "disables_the_guard" and level_of(isolation()) == "rlimits-only":
        pytest.skip("without OS isolation a guard-less program could signal this user's processes")
    me = os.getpid()
    r = run_judged(HOSTILE[name], ADD, timeout=5)
    assert r.status in ("failed", "timeout", "error") and not r.passed, (name, r)
    os.kill(me, 0)  # the harness is alive


def test_the_old_in_process_verdict_is_fooled_but_the_judge_is_not():
    """Why the judge exists: the frame exploit makes run_python's own verdict pass."""
    exploit = HOSTILE["frames_report_success"] + "assert False\n"
    assert run_python(exploit).status == "passed"  # a program's own verdict can be forged
    assert run_judged(exploit, ADD).status == "failed"


@NAMESPACES
@pytest.mark.parametrize("guard", [True, False])
def test_hostile_programs_change_nothing_outside_the_work_dir(tmp_path, guard):
    """With the guard off (as if the program had removed it) the OS layers hold."""
    victim = tmp_path / "victim.txt"
    victim.write_text("original")
    tag = uuid.uuid4().hex
    before = sorted(p.name for p in (REPO / "harness").iterdir())
    program = (
        "import os, shutil\n"
        "def add(a, b):\n"
        f"    for target in ({str(victim)!r}, '/tmp/pwned-{tag}', {str(REPO / f'pwned-{tag}')!r}):\n"
        "        try:\n"
        "            open(target, 'w').write('pwned')\n"
        "        except OSError:\n"
        "            pass\n"
        "    try:\n"
        f"        shutil.rmtree({str(tmp_path)!r})\n"
        "    except OSError:\n"
        "        pass\n"
        "    for pid in range(1, 50):\n"
        "        try:\n"
        "            os.kill(pid, 9)\n"
        "        except OSError:\n"
        "            pass\n"
        "    try:\n"
        f"        return os.listdir({str(REPO)!r})\n"
        "    except OSError:\n"
        "        return 'hidden'\n"
    )
    spec = JudgeSpec("", ("add",), "assert add(1, 2) == 'hidden'\n")  # the host tree is invisible
    r = run_judged(program, spec, python_guard=guard)
    assert r.status == "passed", r.stderr_tail
    assert victim.read_text() == "original"
    assert not os.path.exists(f"/tmp/pwned-{tag}") and not (REPO / f"pwned-{tag}").exists()
    assert sorted(p.name for p in (REPO / "harness").iterdir()) == before


@NAMESPACES
def test_disk_quota_bounds_the_work_dir():
    program = (
        "import os\n"
        "total = 0\n"
        "try:\n"
        "    for i in range(100):\n"
        "        with open('f%d' % i, 'wb') as f:\n"
        "            f.write(b'x' * (2 << 20))\n"
        "        total += 2 << 20\n"
        "except OSError as e:\n"
        "    assert e.errno == 28, e  # ENOSPC: the quota, not the 4 MB per-file limit\n"
        "assert total <= 8 << 20, total\n"
    )
    # the work dir is a size-limited tmpfs: ENOSPC at the quota, nothing reaches the host's disk
    r = run_python(program, disk_mb=8, file_size_mb=4, python_guard=False)
    assert r.status == "passed", r.stderr_tail


@NAMESPACES
def test_host_tree_is_hidden_and_stdlib_read_only():
    import sysconfig

    stdlib = sysconfig.get_paths()["stdlib"]
    program = (
        "import os, json, sys\n"
        "assert sorted(os.listdir('/')) == sorted(set(os.listdir('/')) & "
        "{'dev', 'lib', 'lib64', 'lib32', 'usr', 'root', 'tmp', 'home', 'opt', 'work', 'var', 'srv'}), "
        "os.listdir('/')\n"
        "assert not os.path.exists('/etc/passwd') and not os.path.exists('/proc/1')\n"
        f"assert os.path.isfile({os.path.join(stdlib, 'json', '__init__.py')!r})\n"
        "try:\n"
        f"    open({os.path.join(stdlib, 'pwned.py')!r}, 'w')\n"
        "except OSError as e:\n"
        "    assert e.errno == 30, e  # EROFS\n"
        "else:\n"
        "    raise AssertionError('stdlib writable')\n"
    )
    r = run_python(program, python_guard=False)
    assert r.status == "passed", r.stderr_tail


# ---------------------------------------------------------------- harness score


def _write(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


HOSTILE_COMPLETIONS = {  # HumanEval completions (prompt + completion is the program)
    "HumanEval/0": "    return True\n\nclass _T:\n    def __eq__(self, o): return True\n"
                   "def has_close_elements(numbers, threshold):\n    return _T()\n",
    "HumanEval/1": "    return []\n" + HOSTILE["frames_report_success"],
    "HumanEval/2": "    return 0.0\nimport os\nos._exit(0)\n",
    "HumanEval/3": "    raise SystemExit(0)\n",
    "HumanEval/4": "    print('passed')\n    import os\n    os._exit(0)\n",
    "HumanEval/5": "    while True:\n        open('x', 'ab').write(b'x' * (1 << 20))\n",
    "HumanEval/7": "    import sys\n    sys.modules['builtins'].AssertionError = Exception\n    return None\n",
}


def test_score_hostile_completions_all_fail(tmp_path):
    samples = _write(tmp_path / "hostile.jsonl",
                     [{"task_id": t, "completion": c} for t, c in HOSTILE_COMPLETIONS.items()])
    from harness.score import score_samples

    summary = score_samples("humaneval", samples, timeout=5, progress=False)
    assert summary["passed"] == 0 and summary["pass@1"] == 0.0 and summary["tasks"] == len(HOSTILE_COMPLETIONS)
    lines = [json.loads(line) for line in (tmp_path / "hostile.jsonl_results.jsonl").read_text().splitlines()]
    assert [row["task_id"] for row in lines] == list(HOSTILE_COMPLETIONS)
    assert all(row["passed"] is False and row["result"] != "passed" for row in lines)


def test_score_cli_output_and_multiple_samples(tmp_path, capsys):
    from harness.suites import humaneval

    items = {it["id"]: it for it in humaneval.load_problems("offline")[0]}
    rows = [{"task_id": "HumanEval/0", "completion": items["HumanEval/0"]["canonical_solution"], "k": 1},
            {"task_id": "HumanEval/0", "completion": "    return False\n"},
            {"task_id": "HumanEval/2", "completion": items["HumanEval/2"]["canonical_solution"]}]
    samples = _write(tmp_path / "s.jsonl", rows)
    out = tmp_path / "r.jsonl"
    assert cli_main(["score", "--suite", "humaneval", "--samples", str(samples), "--out", str(out),
                     "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "HumanEval/0\t1/2 passed" in text and "HumanEval/2\tpassed" in text
    assert "pass@1 = 0.7500" in text and "{'pass@1': 0.75}" in text  # (1/2 + 1) / 2 tasks
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["passed"] for r in results] == [True, False, True] and results[0]["k"] == 1
    assert results[1]["result"].startswith("failed: ")


def test_score_mbpp_ids(tmp_path):
    from harness.score import score_samples
    from harness.suites import mbpp

    item = mbpp.load_problems("offline")[0][0]
    rows = [{"task_id": item["task_id"], "completion": item["reference_code"]},
            {"task_id": f"Mbpp/{item['task_id']}", "completion": "def remove_Occ(s, ch):\n    return s\n"}]
    summary = score_samples("mbpp", _write(tmp_path / "m.jsonl", rows), progress=False)
    assert summary["per_task"] == {item["id"]: ["passed", summary["per_task"][item["id"]][1]]}
    assert summary["per_task"][item["id"]][1].startswith("failed")


@pytest.mark.parametrize("rows, message", [
    (["not json"], "line 1 is not JSON"),
    ([{"task_id": "HumanEval/0"}], 'needs an object with "task_id" and "completion"'),
    ([[1, 2]], 'needs an object'),
    ([{"task_id": "HumanEval/0", "completion": 3}], '"completion" must be a string'),
    ([{"task_id": "HumanEval/0", "completion": ""}, {"task_id": "HumanEval/999", "completion": ""}],
     "line 2: unknown task_id 'HumanEval/999'"),
    ([], "holds no samples"),
])
def test_score_bad_input_is_one_clear_error(tmp_path, capsys, rows, message):
    samples = _write(tmp_path / "bad.jsonl", rows)
    assert cli_main(["score", "--suite", "humaneval", "--samples", str(samples)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("harness: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "bad.jsonl_results.jsonl").exists()


def test_score_bad_out_and_missing_file(tmp_path, capsys):
    samples = _write(tmp_path / "s.jsonl", [{"task_id": "HumanEval/0", "completion": ""}])
    assert cli_main(["score", "--suite", "humaneval", "--samples", str(samples), "--out", str(tmp_path)]) == 2
    assert cli_main(["score", "--suite", "humaneval", "--samples", str(tmp_path / "nope.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "cannot write a file there" in err and "no such file" in err


def test_score_refuses_without_os_isolation(tmp_path, monkeypatch):
    from harness.runtime import sandbox
    from harness.score import score_samples

    monkeypatch.setattr(sandbox, "_ISOLATION", "guard")
    samples = _write(tmp_path / "s.jsonl", [{"task_id": "HumanEval/0", "completion": "    return True\n"}])
    with pytest.raises(HarnessError, match="allow-unsafe"):
        score_samples("humaneval", samples, progress=False)
    assert not (tmp_path / "s.jsonl_results.jsonl").exists()
    summary = score_samples("humaneval", samples, allow_unsafe=True, progress=False)
    assert summary["required_level"] == "rlimits-only"


@pytest.mark.slow
def test_score_canonical_humaneval_164(tmp_path, capsys):
    from harness.suites import humaneval

    rows = [{"task_id": it["id"], "completion": it["canonical_solution"]}
            for it in humaneval.load_problems("offline")[0]]
    samples = _write(tmp_path / "canonical.jsonl", rows)
    start = time.monotonic()
    assert cli_main(["score", "--suite", "humaneval", "--samples", str(samples), "--no-progress"]) == 0
    seconds = time.monotonic() - start
    text = capsys.readouterr().out
    assert "pass@1 = 1.0000 (164/164 samples passed, 164 tasks" in text
    print(f"\nharness score on 164 canonical solutions: 164/164 in {seconds:.1f} s")
