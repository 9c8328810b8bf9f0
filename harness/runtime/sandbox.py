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

import marshal
import math
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import List, Optional, Sequence

from harness.errors import HarnessError
from harness.runtime import sandbox_child
from harness.runtime.sandbox_child import CONFIG_NAME

STATUSES = ("passed", "failed", "timeout", "error")
LEVELS = ("namespaces", "seatbelt", "rlimits-only", "refused")
CHILD = os.path.abspath(sandbox_child.__file__)
DIR_PREFIX = "harness-sandbox-"


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


# The child loads its code precompiled from the config file: compiling
# sandbox_child.py's source costs more than the rest of a start (~10 ms of
# CPU per process, two processes per judged problem).
BOOT = ("import marshal,os,sys\nwith open(%r,'rb') as f: c=marshal.load(f)\nos.remove(%r)\n"
        "g={'__name__':'sandbox_child','__builtins__':__builtins__}\nexec(c.pop('code'),g)\n"
        "g['main'](c,sys.argv[1])" % (CONFIG_NAME, CONFIG_NAME))
_CHILD_CODE = None


def _child_code():
    global _CHILD_CODE
    if _CHILD_CODE is None:
        with open(CHILD, encoding="utf-8") as f:
            _CHILD_CODE = compile(f.read(), CHILD, "exec")
    return _CHILD_CODE


def _spawn(python, role, cwd, config, stderr_path, pass_fds, wrap=()):
    same = os.path.realpath(python) == os.path.realpath(sys.executable)
    with open(os.path.join(cwd, CONFIG_NAME), "wb") as f:
        # marshal's code format is this interpreter's: another python reads the source
        marshal.dump({**config, "code": _child_code()} if same else config, f)
    boot = ["-c", BOOT] if same else [CHILD]
    env = {"PATH": "/usr/bin:/bin", "HOME": cwd, "TMPDIR": cwd, "LANG": "C.UTF-8"}
    with open(stderr_path, "wb") as stderr:
        return subprocess.Popen(
            [*wrap, python, "-I", "-B", "-S", *boot, role], cwd=cwd, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
            pass_fds=pass_fds, start_new_session=True,
        )


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
            cand = _spawn(python, "candidate" if spec else "program", work, config,
                          os.path.join(base, "stderr"), pass_fds, wrap)
            if spec is not None:
                judge = _JUDGES.acquire(python, limits, not os_isolation)
                job_nonce = secrets.token_hex(16)
                judge.send({"setup": spec.setup, "proxies": list(spec.proxies), "test": spec.test,
                            "nonce": job_nonce}, (req_w, rep_r))
        except OSError as e:
            if cand is not None:
                _wait_then_kill_group(cand, time.monotonic(), report_r, [])
            if judge is not None:
                judge.kill()
            return SandboxResult(False, "error", f"sandbox failed to start: {e}", 0.0)
        close(report_w, *(() if spec is None else (req_r, rep_w, req_w, rep_r)))
        report = []
        if judge is None:
            timed_out = _wait_then_kill_group(cand, start + timeout, report_r, report)
        else:
            judged = judge.receive(job_nonce, start + timeout)
            timed_out = judged is None
            _wait_then_kill_group(cand, time.monotonic(), report_r, report)  # the judge is done with it
            if timed_out:  # the candidate's death unblocks a waiting judge; else it is stuck
                judged = judge.receive(job_nonce, time.monotonic() + 1)
            if judged is None:
                judge.kill()
            else:
                _JUDGES.release(judge)
        seconds = time.monotonic() - start
        report = "".join(report) + _read_nonblocking(report_r)
        stderr_tail = _tail(os.path.join(base, "stderr"))
    finally:
        close(*list(fds))
        shutil.rmtree(base, ignore_errors=True)

    isolation, verdict = _parse_report(report, nonce)
    if spec is not None:
        # only the judge can say "done"; the candidate can only report a compile error
        verdict = "done" if judged and judged[0] else ("error" if verdict == "error" else None)
        if judged and judged[1]:
            stderr_tail = (stderr_tail + "\n[judge] " + judged[1])[-2000:]
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


class _Judge:
    """One judge server process (trusted; no sandbox) and its socket."""

    def __init__(self, python: str, limits: dict, not_dumpable: bool):
        import socket

        self.key = (python, limits["memory_bytes"], not_dumpable)
        self.dir = tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-judge-")
        ours, theirs = socket.socketpair()
        self.sock = ours
        try:
            config = {"socket_fd": theirs.fileno(), "memory_bytes": limits["memory_bytes"],
                      "not_dumpable": not_dumpable}
            self.proc = _spawn(python, "judge", self.dir, config, os.devnull, (theirs.fileno(),))
        finally:
            theirs.close()

    def send(self, job: dict, fds: tuple) -> None:
        import socket

        payload = marshal.dumps(job)
        socket.send_fds(self.sock, [len(payload).to_bytes(4, "big")], list(fds))
        self.sock.sendall(payload)

    def receive(self, nonce: str, deadline: float):
        """(passed, error text), or None if the deadline passed or the judge died."""
        try:
            head = self._read(4, deadline)
            reply = marshal.loads(self._read(int.from_bytes(head, "big"), deadline))
        except (OSError, EOFError, ValueError, TimeoutError):
            return None
        got_nonce, passed, error = reply
        return (bool(passed) and got_nonce == nonce, error)

    def _read(self, n: int, deadline: float) -> bytes:
        chunks, got = [], 0
        while got < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(n - got)
            except OSError:  # socket.timeout included
                raise TimeoutError from None
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def kill(self) -> None:
        self.sock.close()
        _kill_group(self.proc.pid)
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class _JudgePool:
    """Idle judges for reuse: a judge's start (an interpreter) would otherwise
    double the cost of every problem."""

    def __init__(self):
        import atexit
        import threading

        self.lock = threading.Lock()
        self.idle = []
        atexit.register(self.close)

    def acquire(self, python: str, limits: dict, not_dumpable: bool) -> _Judge:
        key = (python, limits["memory_bytes"], not_dumpable)
        with self.lock:
            for i, judge in enumerate(self.idle):
                if judge.key == key and judge.proc.poll() is None:
                    return self.idle.pop(i)
        return _Judge(python, limits, not_dumpable)

    def release(self, judge: _Judge) -> None:
        with self.lock:
            self.idle.append(judge)
            extra = self.idle[:-max(2, os.cpu_count() or 1) * 2]
            del self.idle[:len(extra)]
        for j in extra:
            j.kill()

    def close(self) -> None:
        with self.lock:
            idle, self.idle = self.idle, []
        for judge in idle:
            judge.kill()


_JUDGES = _JudgePool()


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


# ---------------------------------------------------------------- process plumbing


def _wait_then_kill_group(proc, deadline: float, read_fd: int, report: list) -> bool:
    """Wait for the child until `deadline`, then SIGKILL its whole process group.

    The child is not reaped before the kill (WNOWAIT), so its pid, which is
    also the group id, cannot be reused by an unrelated process meanwhile.
    With a PID namespace the inner process is killed first so that the outer
    one reaps it. Returns True if the deadline passed.
    """
    timed_out = _wait(proc, deadline)
    if timed_out:
        report.append(_read_nonblocking(read_fd))
        inner = _parse_inner_pid("".join(report))
        # The outer process reaps the inner one only after it has died, so
        # while the outer is alive the inner pid cannot have been reused.
        if inner and _wait(proc, 0):  # outer still running
            try:
                os.kill(inner, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            _wait(proc, time.monotonic() + 2)
    _kill_group(proc.pid)  # stray children included
    proc.wait()
    for _ in range(100):  # orphans die asynchronously; the group id stays reserved meanwhile
        if not _kill_group(proc.pid) or not _group_alive(proc.pid):
            break
        time.sleep(0.01)
    return timed_out


def _wait(proc, deadline: float) -> bool:
    """Wait until the child has exited, without reaping it where the platform
    allows; True if `deadline` passed first (Linux: pidfd; else waitid; else reap)."""
    if hasattr(os, "pidfd_open") and hasattr(select, "poll"):
        try:
            fd = os.pidfd_open(proc.pid)
        except OSError:
            fd = None
        if fd is not None:
            try:
                poller = select.poll()
                poller.register(fd, select.POLLIN)
                return not poller.poll(max(0.0, deadline - time.monotonic()) * 1000)
            finally:
                os.close(fd)
    if not hasattr(os, "waitid"):
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            return False
        except subprocess.TimeoutExpired:
            return True
    delay = 0.001
    while True:
        try:
            if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return False
        except ChildProcessError:
            return False
        if time.monotonic() >= deadline:
            return True
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


def _group_alive(pgid: int) -> bool:
    """Does the group still have a live (not zombie) member? Linux: /proc; elsewhere no."""
    if not os.path.isdir("/proc/self"):
        return False
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):  # state, ppid, pgrp
            return True
    return False


def _kill_group(pgid: int) -> bool:
    """SIGKILL a process group; False once the group no longer exists."""
    try:
        os.killpg(pgid, signal.SIGKILL)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _read_nonblocking(fd: int, limit: int = 1 << 16) -> str:
    # A leftover grandchild could hold the pipe open: never block on it.
    os.set_blocking(fd, False)
    chunks = []
    try:
        while sum(map(len, chunks)) < limit and (chunk := os.read(fd, 4096)):
            chunks.append(chunk)
    except BlockingIOError:
        pass
    return b"".join(chunks).decode("utf-8", "replace")


def _tail(path: str, n: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - n))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _parse_inner_pid(report: str) -> Optional[int]:
    first = report.split("\n", 1)[0].split(" ")
    return int(first[1]) if first[0] == "inner" and len(first) > 1 and first[1].isdigit() else None


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
