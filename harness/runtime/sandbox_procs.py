"""Process plumbing of the sandbox (harness/runtime/sandbox.py): starting the
child interpreter, waiting without reaping, killing whole process groups, and
the pool of judge processes."""

import marshal
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Optional

from harness.runtime import sandbox_child
from harness.runtime.sandbox_child import CONFIG_NAME

CHILD = os.path.abspath(sandbox_child.__file__)
DIR_PREFIX = "harness-sandbox-"

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


def spawn(python, role, cwd, config, stderr_path, pass_fds, wrap=()):
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


class Judge:
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
            self.proc = spawn(python, "judge", self.dir, config, os.devnull, (theirs.fileno(),))
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


class JudgePool:
    """Idle judges for reuse: a judge's start (an interpreter) would otherwise
    double the cost of every problem."""

    def __init__(self):
        import atexit
        import threading

        self.lock = threading.Lock()
        self.idle = []
        atexit.register(self.close)

    def acquire(self, python: str, limits: dict, not_dumpable: bool) -> Judge:
        key = (python, limits["memory_bytes"], not_dumpable)
        with self.lock:
            for i, judge in enumerate(self.idle):
                if judge.key == key and judge.proc.poll() is None:
                    return self.idle.pop(i)
        return Judge(python, limits, not_dumpable)

    def release(self, judge: Judge) -> None:
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


JUDGES = JudgePool()


def wait_then_kill_group(proc, deadline: float, read_fd: int, report: list) -> bool:
    """Wait for the child until `deadline`, then SIGKILL its whole process group.

    The child is not reaped before the kill (WNOWAIT), so its pid, which is
    also the group id, cannot be reused by an unrelated process meanwhile.
    With a PID namespace the inner process is killed first so that the outer
    one reaps it. Returns True if the deadline passed.
    """
    timed_out = _wait(proc, deadline)
    if timed_out:
        report.append(read_nonblocking(read_fd))
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


def read_nonblocking(fd: int, limit: int = 1 << 16) -> str:
    # A leftover grandchild could hold the pipe open: never block on it.
    os.set_blocking(fd, False)
    chunks = []
    try:
        while sum(map(len, chunks)) < limit and (chunk := os.read(fd, 4096)):
            chunks.append(chunk)
    except BlockingIOError:
        pass
    return b"".join(chunks).decode("utf-8", "replace")


def tail(path: str, n: int = 2000) -> str:
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
