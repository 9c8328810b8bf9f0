"""Run untrusted Python (model-written code) in separate, limited processes,
and decide verdicts outside them.

`run_judged(program, JudgeSpec)` -- what the code suites use:
  - the *candidate* process runs the model's program under every OS layer this
    machine has (see sandbox_child.py: namespaces + a new root holding only
    the standard library and a size-limited work dir, or macOS's seatbelt),
    rlimits and the in-process guard; it then serves calls of its functions;
  - the *judge* process runs the dataset's trusted test code, with the
    candidate's functions replaced by proxies that send the arguments over a
    pipe and get back plain data only (numbers, strings, bytes, None, bools
    and lists/tuples/sets/dicts of them; anything else fails the call);
  - the verdict is the judge's: "passed" only when the tests ran to their end
    and the judge wrote this run's nonce to a pipe the candidate never holds.
  Nothing the candidate does to its own interpreter (frames, globals,
  builtins, `__eq__` on a returned object, exiting early, writing to file
  descriptors, removing the guard) can change it.

`run_python(program)` runs a program whose verdict is its own (it ran to the
end); kept for whole-program checks and the sandbox's own tests.

Isolation levels (`isolation_level()`, recorded in every code-suite result):
  namespaces    Linux: network + mount (+ PID) namespaces, host file tree
                hidden, disk quota, root -> nobody / rootless -> no capabilities
  seatbelt      macOS: sandbox-exec with a deny-by-default profile (seatbelt.py)
  rlimits-only  neither is available: rlimits + the in-process guard only;
                code suites refuse unless the user allows it (`require_isolation`)
"""

import math
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import List, Optional, Sequence

from harness.errors import HarnessError
from harness.runtime.sandbox_procs import (
    CHILD,
    DIR_PREFIX,
    JUDGES,
    Judge,
    read_nonblocking,
    spawn,
    tail,
    wait_then_kill_group,
)

STATUSES = ("passed", "failed", "timeout", "error")
LEVELS = ("namespaces", "seatbelt", "rlimits-only", "refused")


@dataclass
class SandboxResult:
    passed: bool
    status: str  # "passed" | "failed" | "timeout" | "error"
    stderr_tail: str
    seconds: float
    isolation: str = ""  # layers obtained, e.g. "netns+pidns+fs-hidden+disk-quota+nobody+guard"


@dataclass(frozen=True)
class JudgeSpec:
    """Trusted test code for one problem, run in the judge process.

    setup: code run first (e.g. HumanEval's prompt: its helper functions);
    proxies: names then bound to proxies of the candidate's functions;
    test: the tests (e.g. `check(entry_point)` or MBPP's asserts)."""

    setup: str
    proxies: tuple
    test: str


def _limits_config(timeout, memory_mb, max_procs, file_size_mb, max_open_files, disk_mb) -> dict:
    return {
        "cpu_seconds": int(math.ceil(timeout)) + 1,
        "memory_bytes": int(memory_mb) << 20,
        "max_procs": int(max_procs),
        "file_size_bytes": int(file_size_mb) << 20,
        "max_open_files": int(max_open_files),
        "disk_bytes": int(disk_mb) << 20,
        "disk_inodes": 4096,
    }


def run_python(program: str, timeout: float = 10.0, memory_mb: int = 1024, max_procs: int = 64,
               file_size_mb: int = 16, max_open_files: int = 64, disk_mb: int = 64,
               os_isolation: bool = True, python_guard: bool = True,
               python: str = sys.executable) -> SandboxResult:
    """Run `program` in a fresh sandboxed interpreter; its verdict is its own
    (it ran to its last line). Never raises for what the program does.

    status: "passed", "failed" (exception, assertion, exit or killed by a
    limit), "timeout" (wall clock or CPU limit), "error" (does not compile,
    or the sandbox could not start)."""
    return _run(program, None, timeout, python, os_isolation, python_guard,
                _limits_config(timeout, memory_mb, max_procs, file_size_mb, max_open_files, disk_mb))


def run_judged(program: str, spec: JudgeSpec, timeout: float = 10.0, memory_mb: int = 1024,
               max_procs: int = 64, file_size_mb: int = 16, max_open_files: int = 64, disk_mb: int = 64,
               os_isolation: bool = True, python_guard: bool = True,
               python: str = sys.executable) -> SandboxResult:
    """Run `program` sandboxed as a candidate and `spec`'s tests in a judge
    process against it; the judge decides the verdict (statuses as run_python)."""
    return _run(program, spec, timeout, python, os_isolation, python_guard,
                _limits_config(timeout, memory_mb, max_procs, file_size_mb, max_open_files, disk_mb))


def _run(program, spec, timeout, python, os_isolation, python_guard, limits) -> SandboxResult:
    start = time.monotonic()
    cleanup_stale_dirs()
    base = tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-")
    fds = []

    def pipe():
        r, w = os.pipe()
        fds.extend((r, w))
        return r, w

    def close(*which):
        for fd in which:
            if fd in fds:
                fds.remove(fd)
                os.close(fd)

    cand = judge = None
    judged = None  # (passed, error text) from the judge
    try:
        work, root = os.path.join(base, "work"), os.path.join(base, "root")
        os.mkdir(work)
        os.mkdir(root)
        nonce = secrets.token_hex(16)
        report_r, report_w = pipe()
        config = {"program": program, "nonce": nonce, "result_fd": report_w, "root_dir": root,
                  "os_isolation": os_isolation, "python_guard": python_guard, **limits}
        wrap = ()
        if os_isolation and sys.platform == "darwin" and _seatbelt_available():
            from harness.runtime.seatbelt import wrap_command

            wrap = wrap_command(work, python, CHILD)
            config["seatbelt"] = True
        pass_fds = [report_w]
        if spec is not None:
            req_r, req_w = pipe()
            rep_r, rep_w = pipe()
            config["serve_fds"] = (req_r, rep_w)
            pass_fds += [req_r, rep_w]
        try:
            cand = spawn(python, "candidate" if spec else "program", work, config,
                          os.path.join(base, "stderr"), pass_fds, wrap)
            if spec is not None:
                job_nonce = secrets.token_hex(16)
                job = {"setup": spec.setup, "proxies": list(spec.proxies), "test": spec.test,
                       "nonce": job_nonce}
                judge = JUDGES.acquire(python, limits, not os_isolation)
                try:
                    judge.send(job, (req_w, rep_r))
                except OSError:  # an idle judge died meanwhile: one fresh try
                    judge.kill()
                    judge = Judge(python, limits, not os_isolation)
                    judge.send(job, (req_w, rep_r))
        except OSError as e:
            if cand is not None:
                wait_then_kill_group(cand, time.monotonic(), report_r, [])
            if judge is not None:
                judge.kill()
            return SandboxResult(False, "error", f"sandbox failed to start: {e}", 0.0)
        close(report_w, *(() if spec is None else (req_r, rep_w, req_w, rep_r)))
        report = []
        if judge is None:
            timed_out = wait_then_kill_group(cand, start + timeout, report_r, report)
        else:
            judged = judge.receive(job_nonce, start + timeout)
            timed_out = judged is None
            wait_then_kill_group(cand, time.monotonic(), report_r, report)  # the judge is done with it
            if timed_out:  # the candidate's death unblocks a waiting judge; else it is stuck
                judged = judge.receive(job_nonce, time.monotonic() + 1)
            if judged is None:
                judge.kill()
            else:
                JUDGES.release(judge)
        seconds = time.monotonic() - start
        report = "".join(report) + read_nonblocking(report_r)
        stderr_tail = tail(os.path.join(base, "stderr"))
    finally:
        close(*list(fds))
        shutil.rmtree(base, ignore_errors=True)

    isolation, verdict = _parse_report(report, nonce)
    if spec is not None:
        # only the judge can say "done"; the candidate can only report a compile error
        verdict = "done" if judged and judged[0] else ("error" if verdict == "error" else None)
        if judged and judged[1]:
            # the last line names the cause: the judge's failure, or the candidate's own
            # traceback when its program never got to serve calls
            judge_text = "[judge] " + judged[1].rstrip()
            if "did not run to its end" in judged[1] and stderr_tail.strip():
                stderr_tail = judge_text[-1000:] + "\n[candidate] " + stderr_tail[-1000:]
            else:
                stderr_tail = (stderr_tail + "\n" + judge_text)[-2000:]
    if timed_out or cand.returncode == -signal.SIGXCPU:
        status = "timeout"
    elif verdict == "done" and (spec is not None or cand.returncode == 0):
        status = "passed"
    elif verdict == "error" or not isolation:  # does not compile, or never got to run it
        status = "error"
    else:
        status = "failed"
    if cand.returncode < 0 and status != "passed" and spec is None:
        stderr_tail += f"\n[sandbox] killed by signal {-cand.returncode}"
    return SandboxResult(status == "passed", status, stderr_tail, seconds, isolation)


def run_many(programs: List[str], workers: Optional[int] = None, progress: bool = False,
             **limits) -> List[SandboxResult]:
    """`run_python` over many programs with `workers` parallel launches; input order."""
    return _pool([(run_python, (p,)) for p in programs], workers, progress, limits)


def judge_many(pairs: Sequence[tuple], workers: Optional[int] = None, progress: bool = False,
               **limits) -> List[SandboxResult]:
    """`run_judged` over (program, JudgeSpec) pairs; results in input order."""
    return _pool([(run_judged, pair) for pair in pairs], workers, progress, limits)


def _pool(jobs, workers, progress, limits) -> list:
    from tqdm import tqdm

    workers = max(1, workers or os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(fn, *args, **limits) for fn, args in jobs]
        results = []
        try:
            for future in tqdm(futures, desc="sandbox", disable=not progress, file=sys.stderr):
                results.append(future.result())
        except BaseException:  # Ctrl-C: do not start the programs still queued
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return results


# ---------------------------------------------------------------- isolation levels


_ISOLATION = None


def isolation() -> str:
    """Which layers the sandbox gets on this machine (runs one trivial program)."""
    global _ISOLATION
    if _ISOLATION is None:
        _ISOLATION = run_python("pass", timeout=10).isolation or "unknown"
    return _ISOLATION


def level_of(layers: str) -> str:
    """namespaces | seatbelt | rlimits-only, from a "+"-joined layer list."""
    got = set(layers.split("+"))
    if {"netns", "fs-hidden", "disk-quota"} <= got and got & {"nobody", "no-caps"}:
        return "namespaces"
    if "seatbelt" in got:
        return "seatbelt"
    return "rlimits-only"


def isolation_level() -> str:
    return level_of(isolation())


def require_isolation(allow_unsafe: bool, who: str = "code suites") -> str:
    """The level model-written code will run under; refuses (HarnessError)
    where no OS layer exists unless the user explicitly allowed it."""
    level = isolation_level()
    if level == "rlimits-only" and not allow_unsafe:
        raise HarnessError(
            f"{who} run model-written code, and this machine gives the sandbox no OS isolation "
            f"(layers: {isolation()}; no usable namespaces or sandbox-exec); refusing. To run it with "
            "only rlimits and the in-process guard, pass --opt allow_unsafe=true (harness score: "
            "--allow-unsafe)")
    return level


def _seatbelt_available() -> bool:
    return os.path.exists("/usr/bin/sandbox-exec")


# ---------------------------------------------------------------- leftovers


_CLEANED = False


def cleanup_stale_dirs(tmp: Optional[str] = None, force: bool = False) -> list:
    """Remove sandbox dirs left by crashed runs (their harness process is gone).
    Dirs are named harness-sandbox-<pid>-*; runs once per process."""
    global _CLEANED
    if _CLEANED and not force:
        return []
    _CLEANED = True
    tmp = tmp or tempfile.gettempdir()
    removed = []
    try:
        entries = os.listdir(tmp)
    except OSError:
        return removed
    for name in entries:
        if not name.startswith(DIR_PREFIX):
            continue
        pid = name[len(DIR_PREFIX):].split("-", 1)[0]
        path = os.path.join(tmp, name)
        if pid.isdigit():
            if int(pid) == os.getpid() or _alive(int(pid)):
                continue
        else:  # the old naming (no pid): only when clearly stale
            try:
                if time.time() - os.stat(path).st_mtime < 3600:
                    continue
            except OSError:
                continue
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.exists(path):
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True


def _parse_report(report: str, nonce: str):
    """The child writes `start <isolation>` then `done|error <nonce>`."""
    isolation, verdict = "", None
    for line in report.splitlines():
        parts = line.split(" ")
        if parts[0] == "start" and not isolation and len(parts) > 1:
            isolation = parts[1]
        elif parts[0] in ("done", "error") and len(parts) > 1 and parts[1] == nonce:
            verdict = parts[0]
    return isolation, verdict
