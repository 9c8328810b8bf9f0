"""Several ranks through mlx.launch (ring backend on localhost): data parallel items,
sweeps of whole jobs, sharded models, a rank killed mid-run and the resume
(harness/distributed.py).

Ranks and the one-process baselines run as subprocesses with OPENBLAS_NUM_THREADS=1
(what --launch gives each of 2 ranks on 2 cores): OpenBLAS's thread count changes
fp32 sums in the last bits, and these tests compare bits.
"""

import base64
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from harness import distributed
from harness.distributed import Dist, evaluate, in_item_order, part_path, plan_jobs, strip_launch
from harness.results import ItemLog, read_items, read_result

COUNTING = textwrap.dedent('''
    import os
    import time
    import mlx.core as mx

    class CountingSuite:
        """Per-item numbers from the model's logits; HARNESS_TEST_SLEEP slows it down to be killed."""
        name = "counting"
        description = "test suite"
        version = "1"

        def items(self, ctx):
            return [{"id": f"q{i:02d}", "tokens": [1 + i, 7, 9 + i]} for i in range(ctx.limit or 12)]

        def run(self, ctx, items):
            for it in items:
                logits = ctx.model(mx.array([it["tokens"]]))[0, -1]
                top = int(mx.argmax(logits).item())
                time.sleep(float(os.environ.get("HARNESS_TEST_SLEEP", "0")))
                yield {"id": it["id"], "top": top, "correct": top % 2 == 0,
                       "logit": float(logits[top].item()), "pid": 0}

        def summarize(self, ctx, records):
            n = len(records)
            return {"acc": sum(r["correct"] for r in records) / max(n, 1), "n": n,
                    "logit_sum": sum(r["logit"] for r in records)}
''')

# `python driver.py PLUGIN_DIR run ...`: the counting suite registered, then the real CLI
# with this process's own command line (so --launch re-issues `python driver.py ...`)
DRIVER = textwrap.dedent('''
    import sys
    sys.path.insert(0, sys.argv[1])
    import harness.suites_registry as reg
    reg.BUILTIN_SUITES["counting"] = "fake_suite:CountingSuite"
    from harness.cli import main
    sys.argv = [sys.argv[0]] + sys.argv[2:]
    raise SystemExit(main())
''')


def _env(**extra) -> dict:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", TQDM_DISABLE="1", HARNESS_DIST_CONNECT_TIMEOUT="300")
    env.update(extra)
    return env


def harness(*args, timeout=900, env=None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "harness", *args, "--no-progress"], env=env or _env(),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _close(a, b, tol: float, where: str = "") -> None:
    if isinstance(a, float) or isinstance(b, float):
        assert abs(a - b) <= tol * max(1.0, abs(a)), f"{where}: {a} != {b}"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _close(a[k], b[k], tol, f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, tol, f"{where}[{i}]")
    elif isinstance(a, str) and tol and a != b:
        try:  # fidelity's per-token arrays: base64 float32
            x, y = (np.frombuffer(base64.b64decode(v, validate=True), dtype=np.float32) for v in (a, b))
        except ValueError:  # a printed table: same text, numbers within the printed precision
            number = r"-?\d+\.\d+"
            assert re.sub(number, "#", a) == re.sub(number, "#", b), where
            x, y = (np.array([float(v) for v in re.findall(number, t)]) for t in (a, b))
            tol = max(tol, 1e-3)  # a last printed digit may round the other way
        assert np.allclose(x, y, rtol=tol, atol=tol), f"{where}: max diff {np.abs(x - y).max()}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_results(one: Path, many: Path, recipe: str, suite: str, tol: float = 0.0,
                        model: str = "synthetic-llama") -> dict:
    """The stored items (same ids, same order, same values) and summary of two runs."""
    ra = read_result(one / model / recipe / f"{suite}.json")
    rb = read_result(many / model / recipe / f"{suite}.json")
    ia = read_items(one / model / recipe / f"{suite}.json")
    ib = read_items(many / model / recipe / f"{suite}.json")
    assert [r["id"] for r in ia] == [r["id"] for r in ib]
    _close(ia, ib, tol, f"{suite} items")
    _close(ra["summary"], rb["summary"], tol, f"{suite} summary")
    assert (ra["run_key"], ra["n_items"], ra["complete"]) == (rb["run_key"], rb["n_items"], True)
    if tol == 0.0:  # byte for byte, header included
        a = (one / model / recipe / f"{suite}.items.jsonl").read_bytes()
        assert a == (many / model / recipe / f"{suite}.items.jsonl").read_bytes()
    assert not list((many / model / recipe).glob("*.rank*.jsonl")), "per-rank logs left behind"
    return rb


# -- no processes ---------------------------------------------------------------


def test_jobs_go_to_ranks_round_robin_only_when_they_divide_evenly():
    jobs = [(r, s) for r in ("uniform4", "uniform3") for s in ("mmlu", "fidelity")]
    assert plan_jobs(Dist(rank=1, size=2, hosts=["a", "b"]), jobs, "auto") == [jobs[1], jobs[3]]
    d = Dist(rank=0, size=3, hosts=["a", "b", "c"])
    assert plan_jobs(d, jobs, "auto") == jobs and d.distribute == "items"  # 4 jobs on 3 ranks: split items
    d = Dist(rank=2, size=3, hosts=["a", "b", "c"])
    assert plan_jobs(d, jobs, "jobs") == [jobs[2]] and d.distribute == "jobs"
    d = Dist(rank=0, size=2, hosts=["a", "b"], shard="tensor")
    assert plan_jobs(d, jobs, "jobs") == jobs and d.distribute == "items"  # a sharded model runs everything


def test_launch_flag_is_stripped_and_speed_refused_with_two_ranks_per_host():
    assert strip_launch(["run", "--launch", "2", "--suite", "mmlu", "--launch=3"]) == ["run", "--suite", "mmlu"]

    class Speed:
        name = "speed"

    from harness.errors import HarnessError

    with pytest.raises(HarnessError, match="speed suite cannot run with 2 ranks on one host"):
        distributed.check_suites(Dist(rank=0, size=2, hosts=["vm", "vm"]), [Speed()])
    distributed.check_suites(Dist(rank=0, size=2, hosts=["mac1", "mac2"]), [Speed()])  # one rank per host


class _Numbers:
    """A suite with no model: record i holds i * 1.5."""
    name = "numbers"

    def __init__(self):
        self.ran = []

    def run(self, ctx, items):
        for it in reversed(items):  # any order: the store puts them in item order
            self.ran.append(it["id"])
            yield {"id": it["id"], "x": int(it["id"][1:]) * 1.5}


def test_resume_merges_logs_of_ranks_that_are_gone(tmp_path):
    """A rerun with fewer ranks on the same disk keeps what a vanished rank 1 logged."""
    items = [{"id": f"n{i}"} for i in range(6)]
    items_path = tmp_path / "numbers.items.jsonl"
    main = ItemLog(items_path, "key")
    main.append({"id": "n0", "x": 0.0})
    gone = ItemLog(part_path(items_path, 1), "key")  # rank 1 of the killed run
    gone.append({"id": "n3", "x": 4.5})
    gone.append({"id": "n5", "x": 7.5})
    stale = ItemLog(part_path(items_path, 2), "other-settings")
    stale.append({"id": "n1", "x": 99.0})  # another run key: ignored
    suite = _Numbers()
    log_ = evaluate(Dist(), suite, None, items, items_path, "key", fresh=False)
    assert sorted(suite.ran) == ["n1", "n2", "n4"]  # only what nobody finished
    records = in_item_order(log_, [it["id"] for it in items])
    assert [r["x"] for r in records] == [0.0, 1.5, 3.0, 4.5, 6.0, 7.5]
    assert [r["id"] for r in read_items(tmp_path / "numbers.json")] == [f"n{i}" for i in range(6)]
    assert not part_path(items_path, 1).exists() and not part_path(items_path, 2).exists()


# -- two ranks on localhost ----------------------------------------------------------


def test_two_ranks_store_what_one_process_stores(tmp_path):
    """--launch 2 (mlx.launch, ring backend, localhost) on mmlu and fidelity with a tiny model."""
    common = ["run", "--recipe", "uniform4", "--suite", "mmlu", "--suite", "fidelity", "--model",
              "synthetic:llama", "--limit", "5"]
    harness(*common, "--out", str(tmp_path / "one"))
    proc = harness(*common, "--out", str(tmp_path / "two"), "--launch", "2", "--distribute", "items")
    assert proc.stdout.count("results written to") == 1  # rank 0 prints, rank 1 is quiet
    # fidelity runs every window in fixed batches: bit-identical records
    res = assert_same_results(tmp_path / "one", tmp_path / "two", "uniform4", "fidelity")
    dist = res["provenance"]["distributed"]
    assert (dist["world_size"], dist["backend"], len(dist["hosts"])) == (2, "ring", 2)
    assert dist["items_per_rank"] == [3, 2] and dist["mode"] == "items"
    # mmlu batches questions right-padded by length: a question's batch-mates change the
    # fp32 GEMM blocking, so its log-probs move in the last bits (here ~1e-6 relative; on
    # SmolLM2 q4, 40 questions: up to 1.4e-5 relative, 7e-5 absolute); the predictions,
    # correctness and every count in the summary are identical
    res = assert_same_results(tmp_path / "one", tmp_path / "two", "uniform4", "mmlu", tol=1e-5)
    assert res["provenance"]["distributed"]["items_per_rank"] == [3, 2]


def _find_rank(rank: int, marker: str):
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker.encode() in cmd and f"MLX_RANK={rank}".encode() in env and b"mlx._distributed" not in cmd:
            return int(proc.name)
    return None


@pytest.mark.slow
def test_killed_rank_stops_run_and_rerun_resumes_to_identical_result(tmp_path):
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "fake_suite.py").write_text(COUNTING)
    (plugin / "driver.py").write_text(DRIVER)
    out = tmp_path / "two"
    cmd = [sys.executable, str(plugin / "driver.py"), str(plugin), "run", "--recipe", "uniform4", "--suite",
           "counting", "--model", "synthetic:llama", "--limit", "12", "--no-progress"]
    base = subprocess.run(cmd + ["--out", str(tmp_path / "one")], env=_env(), capture_output=True, text=True)
    assert base.returncode == 0, base.stderr[-2000:]

    proc = subprocess.Popen(cmd + ["--out", str(out), "--launch", "2"], env=_env(HARNESS_TEST_SLEEP="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    items = out / "synthetic-llama" / "uniform4" / "counting.items.jsonl"
    part1 = part_path(items, 1)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if part1.is_file() and len(part1.read_text().splitlines()) >= 3:  # header + 2 records
            break
        time.sleep(0.2)
    pid = _find_rank(1, str(out))
    assert pid is not None, "rank 1 not found"
    os.kill(pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1
    lines = [line for line in err.splitlines() if line.startswith("harness: error")]
    assert len(lines) == 1 and "rank 1 exited with code -9" in lines[0] and "rerun" in lines[0], err[-2000:]
    assert not (out / "synthetic-llama" / "uniform4" / "counting.json").exists()
    kept = {r["id"] for r in read_items(out / "synthetic-llama" / "uniform4" / "counting.json")}
    for rank in (0, 1):  # the ranks' own logs (rank 1's records since the last gather, at least)
        own = part_path(items, rank)
        kept |= {json.loads(line)["id"] for line in own.read_text().splitlines()[1:]} if own.is_file() else set()
    kept = len(kept)
    assert 2 <= kept < 12

    again = subprocess.run(cmd + ["--out", str(out), "--launch", "2"], env=_env(), capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    done = int(again.stderr.split("resuming: ")[1].split()[0])
    assert done >= kept  # nothing finished was lost (rank 0 may have finished more before it was stopped)
    assert_same_results(tmp_path / "one", out, "uniform4", "counting")


@pytest.mark.slow
def test_sweep_hands_whole_jobs_to_ranks(tmp_path):
    common = ["run", "--recipe", "uniform4", "--recipe", "uniform3", "--suite", "fidelity", "--model",
              "synthetic:llama", "--limit", "2"]
    harness(*common, "--out", str(tmp_path / "one"))
    proc = harness(*common, "--out", str(tmp_path / "two"), "--launch", "2")
    assert "uniform3" in proc.stdout and "uniform4" in proc.stdout  # rank 0 lists every job
    for rank, recipe in enumerate(("uniform4", "uniform3")):
        res = assert_same_results(tmp_path / "one", tmp_path / "two", recipe, "fidelity")
        assert res["provenance"]["distributed"]["mode"] == "jobs"
        assert res["provenance"]["distributed"]["rank"] == rank


@pytest.mark.slow
def test_tensor_sharded_model_matches_whole_model(tmp_path):
    common = ["run", "--recipe", "uniform4", "--suite", "fidelity", "--model", "synthetic:llama",
              "--limit", "2"]
    harness(*common, "--out", str(tmp_path / "one"))
    cache = tmp_path / "cache2"  # the sharded run computes its own reference logits too
    env = _env(HARNESS_CACHE=str(cache))
    harness(*common, "--out", str(tmp_path / "two"), "--launch", "2", "--shard", "tensor", env=env)
    res = assert_same_results(tmp_path / "one", tmp_path / "two", "uniform4", "fidelity", tol=1e-5)
    assert res["provenance"]["distributed"]["mode"] == "shard-tensor"
    err = subprocess.run([sys.executable, "-m", "harness", *common, "--out", str(tmp_path / "p"), "--launch",
                          "2", "--shard", "pipeline", "--no-progress"], env=env, capture_output=True, text=True)
    assert err.returncode == 2
    assert err.stderr.count("harness: error: mlx-lm has no pipeline-parallel support for model_type 'llama'") == 1


def test_shard_without_ranks_is_one_clear_error(capsys):
    from harness.cli import main

    assert main(["run", "--recipe", "float", "--suite", "fidelity", "--model", "synthetic:llama",
                 "--shard", "tensor"]) == 2
    assert "--shard tensor needs several ranks" in capsys.readouterr().err


# -- SmolLM2, the acceptance runs (minutes on 2 cores) ------------------------


@pytest.mark.slow
@pytest.mark.parametrize("suite,limit,tol", [("mmlu", 40, 1e-4), ("fidelity", 4, 0.0), ("reasoning", 4, 0.0)])
def test_smollm2_two_ranks_match_one_process(tmp_path, suite, limit, tol):
    common = ["run", "--recipe", "uniform4", "--suite", suite, "--limit", str(limit)]
    harness(*common, "--out", str(tmp_path / "one"), timeout=3000)
    harness(*common, "--out", str(tmp_path / "two"), "--launch", "2", timeout=3000)
    assert_same_results(tmp_path / "one", tmp_path / "two", "uniform4", suite, tol=tol, model="smollm2-135m")


@pytest.mark.slow
def test_smollm2_tensor_sharded_fidelity_ppl_matches(tmp_path):
    """SmolLM2-135M has 9 attention heads and 3 KV heads: it splits over 3 ranks, not 2."""
    common = ["run", "--recipe", "uniform4", "--suite", "fidelity", "--limit", "4"]
    two = subprocess.run([sys.executable, "-m", "harness", *common, "--out", str(tmp_path / "x"), "--launch", "2",
                          "--shard", "tensor", "--no-progress"], env=_env(), capture_output=True, text=True)
    assert two.returncode == 2 and two.stderr.count("num_attention_heads=9") == 1, two.stderr[-2000:]
    harness(*common, "--out", str(tmp_path / "one"), timeout=3000)
    # the converted model and the artifacts are reused; the reference logits are computed again, sharded
    cache = tmp_path / "cache"
    cache.mkdir()
    for name in ("sources", "artifacts", "plans"):
        (cache / name).symlink_to(Path(os.environ["HARNESS_CACHE"]) / name)
    env = _env(HARNESS_CACHE=str(cache))
    harness(*common, "--out", str(tmp_path / "two"), "--launch", "3", "--shard", "tensor", env=env, timeout=3000)
    a = read_result(tmp_path / "one" / "smollm2-135m" / "uniform4" / "fidelity.json")["summary"]
    b = read_result(tmp_path / "two" / "smollm2-135m" / "uniform4" / "fidelity.json")["summary"]
    assert abs(a["ppl"] - b["ppl"]) <= 1e-4, (a["ppl"], b["ppl"])
    assert abs(a["ref_ppl"] - b["ref_ppl"]) <= 1e-4, (a["ref_ppl"], b["ref_ppl"])
    assert abs(a["kld_mean"] - b["kld_mean"]) <= 1e-4


def test_one_process_rerun_keeps_what_stopped_ranks_logged(fake_counting, tmp_path):
    """A run on 2 ranks died; `harness run` without any launcher finishes it from their logs."""
    from harness.cli import main

    args = ["run", "--recipe", "float", "--suite", "counting", "--model", "synthetic:llama", "--limit", "4",
            "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    done = read_items(tmp_path / "one" / "synthetic-llama" / "float" / "counting.json")
    items = tmp_path / "two" / "synthetic-llama" / "float" / "counting.items.jsonl"
    run_key = json.loads((tmp_path / "one" / "synthetic-llama" / "float" / "counting.items.jsonl")
                         .read_text().splitlines()[0])["_run_key"]
    part = ItemLog(part_path(items, 1), run_key)
    part.append({**done[3], "logit": 123.0})  # a value the rerun cannot have computed itself
    assert main([*args, "--out", str(tmp_path / "two")]) == 0
    again = read_items(tmp_path / "two" / "synthetic-llama" / "float" / "counting.json")
    assert [r["id"] for r in again] == [r["id"] for r in done] and again[3]["logit"] == 123.0
    assert not part_path(items, 1).exists()
    ItemLog(part_path(items, 1), run_key).append({**done[3], "logit": 123.0})
    assert main([*args, "--out", str(tmp_path / "two"), "--fresh"]) == 0  # --fresh drops rank logs too
    assert not part_path(items, 1).exists()
    assert read_items(tmp_path / "two" / "synthetic-llama" / "float" / "counting.json") == done


@pytest.fixture()
def fake_counting(tmp_path, monkeypatch):
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "fake_suite.py").write_text(COUNTING)
    monkeypatch.syspath_prepend(str(plugin))
    monkeypatch.delitem(sys.modules, "fake_suite", raising=False)  # other tests' fake_suite of the same name
    import harness.suites_registry as reg

    monkeypatch.setitem(reg.BUILTIN_SUITES, "counting", "fake_suite:CountingSuite")
