"""The sandbox: verdicts, limits, and hostile programs (each must fail while
the test process survives, nothing is written, no secret leaks)."""

import os
import socket
import sys
import time
import uuid
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.runtime import sandbox
from harness.runtime.sandbox import isolation, level_of, require_isolation, run_many, run_python

LAYERS = isolation().split("+")
OS_LAYERS = pytest.mark.skipif(
    not {"nobody", "pidns", "fs-hidden", "netns"} <= set(LAYERS),
    reason=f"needs root on Linux with namespaces (this machine: {isolation()})",
)
REPO = Path(__file__).resolve().parents[1]


def live_processes_of(uid: int) -> list:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                status = Path(f"/proc/{entry}/status").read_text()
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            if int(fields["Uid"].split()[0]) == uid and not fields["State"].strip().startswith(("Z", "X")):
                out.append(int(entry))
    return out


# ---------------------------------------------------------------- verdicts


def test_verdicts():
    assert run_python("x = 1 + 1\nassert x == 2").status == "passed"
    r = run_python("assert 1 == 2, 'nope'")
    assert (r.status, r.passed) == ("failed", False) and "AssertionError: nope" in r.stderr_tail
    r = run_python("def f(:\n  pass")
    assert r.status == "error" and "SyntaxError" in r.stderr_tail
    assert run_python("raise ValueError('x')").status == "failed"


def test_stdin_is_closed():
    start = time.monotonic()
    r = run_python("input()", timeout=5)
    assert r.status == "failed" and "EOFError" in r.stderr_tail and time.monotonic() - start < 3


def test_exiting_early_is_not_passing():
    # A program that exits "successfully" before its asserts ran must not pass.
    assert run_python("import sys; sys.exit(0)\nassert False").status == "failed"
    assert run_python("import os; os._exit(0)\nassert False").status == "failed"
    assert run_python("raise SystemExit").status == "failed"


def test_files_inside_the_work_dir_and_stdlib_work():
    program = (
        "import tempfile, json, fractions, statistics, hashlib\n"
        "open('a.txt', 'w').write('hi')\n"
        "assert open('a.txt').read() == 'hi'\n"
        "with tempfile.NamedTemporaryFile() as f: f.write(b'x')\n"
        "assert statistics.mean([1, 2, 3]) == 2\n"
    )
    r = run_python(program)
    assert r.status == "passed", r.stderr_tail


def test_work_dirs_are_removed():
    import tempfile

    before = set(Path(tempfile.gettempdir()).glob("harness-sandbox-*"))
    run_many(["open('x', 'w').write('y' * 1000)"] * 3, workers=2)
    assert set(Path(tempfile.gettempdir()).glob("harness-sandbox-*")) == before


# ---------------------------------------------------------------- time


@pytest.mark.parametrize("program", ["while True: pass", "import time; time.sleep(1000)"])
def test_wall_timeout_bound(program):
    start = time.monotonic()
    r = run_python(program, timeout=1.5)
    elapsed = time.monotonic() - start
    assert r.status == "timeout" and not r.passed
    assert 1.5 <= elapsed < 1.5 + 2, elapsed


def test_rlimits_are_set():
    program = (
        "import resource as r\n"
        "assert r.getrlimit(r.RLIMIT_CPU) == (4, 5)\n"  # ceil(timeout) + 1, hard one more
        "assert r.getrlimit(r.RLIMIT_AS) == (300 << 20, 300 << 20)\n"
        "assert r.getrlimit(r.RLIMIT_FSIZE) == (2 << 20, 2 << 20)\n"
        "assert r.getrlimit(r.RLIMIT_NOFILE) == (40, 40)\n"
        "assert r.getrlimit(r.RLIMIT_CORE) == (0, 0)\n"
    )
    if "nobody" in LAYERS:
        program += "assert r.getrlimit(r.RLIMIT_NPROC) == (7, 7)\n"
    r = run_python(program, timeout=2.5, memory_mb=300, file_size_mb=2, max_open_files=40, max_procs=7,
                   python_guard=False)
    assert r.status == "passed", r.stderr_tail


def test_big_file_fails():
    r = run_python("open('big', 'wb').write(b'x' * (8 << 20))", file_size_mb=4)
    assert r.status == "failed"


def test_run_many_keeps_order_and_runs_in_parallel():
    programs = ["import time; time.sleep(1.5)", "assert False", "import time; time.sleep(1.5)", "pass"]
    start = time.monotonic()
    results = run_many(programs, workers=2)
    elapsed = time.monotonic() - start
    assert [r.status for r in results] == ["passed", "failed", "passed", "passed"]
    assert elapsed < 2.8, elapsed  # the two sleeps overlapped (in turn: >= 3 s)


# ---------------------------------------------------------------- hostile programs


def test_fork_bomb_fails_fast():
    start = time.monotonic()
    r = run_python("import os\nwhile True:\n    os.fork()", timeout=5)
    assert r.status == "failed" and time.monotonic() - start < 3
    r = run_python("import posix\nwhile True:\n    posix.fork()", timeout=5)  # behind os's back
    assert r.status == "failed"
    r = run_python("import subprocess\nsubprocess.run(['sh', '-c', ':(){ :|:& };:'])", timeout=5)
    assert r.status == "failed"
    r = run_python("import multiprocessing\nmultiprocessing.Process(target=print).start()", timeout=5)
    assert r.status == "failed"


@OS_LAYERS
def test_fork_bomb_bounded_by_the_os_alone():
    """Python guard off: RLIMIT_NPROC (enforced for `nobody`) stops the bomb,
    the PID namespace takes every child down with the program."""
    start = time.monotonic()
    r = run_python("import os\nwhile True:\n    os.fork()", timeout=5, max_procs=32, python_guard=False)
    assert r.status in ("failed", "timeout")
    assert "Resource temporarily unavailable" in r.stderr_tail  # fork hit the limit
    assert time.monotonic() - start < 5 + 2
    assert live_processes_of(65534) == []


def test_memory_bomb_fails():
    r = run_python("x = bytearray(10 * 2**30)\nprint(len(x))", memory_mb=512)
    assert r.status == "failed" and "MemoryError" in r.stderr_tail


@pytest.mark.parametrize("guard", [True, pytest.param(False, marks=OS_LAYERS)])
def test_writing_outside_tmp_fails_and_leaves_nothing(tmp_path, guard):
    tag = uuid.uuid4().hex
    victim = tmp_path / "victim.txt"
    victim.write_text("original")
    targets = [
        f"/tmp/pwned-{tag}",
        str(tmp_path / f"new-{tag}.txt"),
        str(REPO / "harness" / f"_pwned_{tag}.py"),  # the harness's own files
        str(REPO / f"_pwned_{tag}"),
    ]
    try:
        for target in targets:
            r = run_python(f"open({target!r}, 'w').write('pwned')", python_guard=guard)
            assert r.status == "failed", (target, r)
        for action in (f"open({str(victim)!r}, 'w').write('pwned')", f"import os; os.remove({str(victim)!r})",
                       f"import os; os.chdir({str(tmp_path)!r}); open('victim.txt', 'w').write('pwned')",
                       f"import shutil; shutil.rmtree({str(tmp_path)!r})",
                       f"import os; os.rename({str(victim)!r}, 'stolen')"):
            r = run_python(action, python_guard=guard)
            assert r.status == "failed", (action, r)
        assert victim.read_text() == "original"
        for target in targets:
            assert not os.path.exists(target), target
    finally:
        for target in targets:
            if os.path.exists(target):
                os.remove(target)


@pytest.mark.parametrize("guard", [True, pytest.param(False, marks=OS_LAYERS)])
def test_killing_the_harness_fails_and_we_survive(guard):
    me = os.getpid()
    for program in (
        "import os, signal; os.kill(os.getppid(), signal.SIGKILL)",
        f"import os, signal; os.kill({me}, signal.SIGKILL)",
        f"import os, signal; os.killpg(os.getpgid({me}), signal.SIGKILL)",
    ):
        r = run_python(program, python_guard=guard)
        if guard or str(me) in program:
            assert r.status == "failed", (program, r)
        os.kill(me, 0)  # still here
    assert os.getpid() == me


@pytest.mark.parametrize("guard", [True, pytest.param(False, marks=OS_LAYERS)])
def test_env_and_parent_environ_hold_no_secret(monkeypatch, guard):
    secret = "s3cr3t-" + uuid.uuid4().hex
    monkeypatch.setenv("HARNESS_TEST_SECRET", secret)
    program = (
        "import os, sys\n"
        "seen = repr(dict(os.environ))\n"
        f"for path in ('/proc/{os.getpid()}/environ', f'/proc/{{os.getppid()}}/environ', '/proc/1/environ'):\n"
        "    try:\n"
        "        seen += open(path, 'rb').read().decode('latin-1')\n"
        "    except Exception as e:\n"
        "        print('blocked', path, type(e).__name__, file=sys.stderr)\n"
        "print(seen, file=sys.stderr)\n"
        "assert 'HARNESS_TEST_SECRET' in seen\n"
    )
    r = run_python(program, python_guard=guard)
    assert r.status == "failed"
    assert "HARNESS_TEST_SECRET" not in r.stderr_tail.split("assert")[0]
    assert secret not in r.stderr_tail


@pytest.mark.parametrize("guard", [True, pytest.param(False, marks=OS_LAYERS)])
def test_no_network(guard):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        program = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'hi')"
        r = run_python(program, timeout=5, python_guard=guard)
        assert r.status == "failed", r
    finally:
        server.close()


def test_ctypes_is_refused():
    r = run_python("import ctypes\nctypes.CDLL(None).kill(1, 9)")
    assert r.status == "failed" and "ctypes" in r.stderr_tail


def test_isolation_reports_guard():
    assert "guard" in LAYERS
    if sys.platform.startswith("linux") and os.geteuid() == 0:
        assert {"netns", "pidns", "fs-hidden", "disk-quota", "nobody"} <= set(LAYERS), isolation()
        assert level_of(isolation()) == "namespaces"


# ---------------------------------------------------------------- isolation levels and refusal


@pytest.mark.parametrize("layers, level", [
    ("netns+pidns+fs-hidden+disk-quota+nobody+guard", "namespaces"),
    ("userns+netns+pidns+fs-hidden+disk-quota+no-caps+guard", "namespaces"),
    ("netns+guard", "rlimits-only"),  # network cut but the host tree visible: not enough
    ("userns+netns+fs-hidden+disk-quota+guard", "rlimits-only"),  # capabilities kept
    ("seatbelt+guard", "seatbelt"),
    ("guard", "rlimits-only"),
    ("none", "rlimits-only"),
])
def test_isolation_levels(layers, level):
    assert level_of(layers) == level


def test_refusal_without_os_isolation(monkeypatch):
    monkeypatch.setattr(sandbox, "_ISOLATION", "guard")
    with pytest.raises(HarnessError, match="allow_unsafe=true"):
        require_isolation(False, "humaneval")
    assert require_isolation(True) == "rlimits-only"
    monkeypatch.setattr(sandbox, "_ISOLATION", "seatbelt+guard")
    assert require_isolation(False) == "seatbelt"


def test_stale_sandbox_dirs_are_removed(tmp_path):
    import subprocess

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs (reaped)
    stale = tmp_path / f"harness-sandbox-{dead.pid}-abc"
    (stale / "work").mkdir(parents=True)
    (stale / "work" / "f").write_text("x")
    live = tmp_path / f"harness-sandbox-{os.getpid()}-def"
    live.mkdir()
    other = tmp_path / "harness-sandbox-nopid"  # old naming, fresh: kept
    other.mkdir()
    removed = sandbox.cleanup_stale_dirs(str(tmp_path), force=True)
    assert removed == [str(stale)] and not stale.exists() and live.exists() and other.exists()


def test_rootless_sandbox_as_nobody(tmp_path):  # noqa: C901
    """Linux without root: user namespaces give the same layers (run as uid 65534
    with the system interpreter, which `nobody` can execute)."""
    import shutil
    import subprocess

    setpriv, python = shutil.which("setpriv"), "/usr/bin/python3"
    if os.geteuid() != 0 or not setpriv or not os.path.exists(python):
        pytest.skip("needs root (to become nobody), setpriv and /usr/bin/python3")
    # nobody cannot enter a checkout under a 0700 dir (mktemp -d, pytest's tmp): give it a readable copy
    import tempfile

    readable = Path(tempfile.mkdtemp(prefix="harness-nobody-", dir="/tmp"))
    shutil.copytree(REPO / "harness", readable / "harness", ignore=shutil.ignore_patterns("__pycache__"))
    for d in [readable, *readable.rglob("*")]:
        d.chmod(0o755 if d.is_dir() else 0o644)
    script = tmp_path / "rootless.py"
    script.write_text(
        "import os, sys\n"
        f"sys.path.insert(0, {str(readable)!r})\n"
        "from harness.runtime.sandbox import JudgeSpec, isolation, level_of, run_judged, run_python\n"
        "print('layers', isolation())\n"
        "if level_of(isolation()) != 'namespaces':\n"
        "    sys.exit(3)\n"
        "spec = JudgeSpec('', ('add',), 'assert add(1, 2) == 3')\n"
        "print('good', run_judged('def add(a, b):\\n    return a + b', spec).status)\n"
        "print('bad', run_judged('def add(a, b):\\n    return 3 if (a, b) == (1, 2) else 0\\n'\n"
        "    'import os\\nos._exit(0)', spec).status)\n"
        "hostile = ('import ctypes, os\\n'\n"
        "           'libc = ctypes.CDLL(None, use_errno=True)\\n'\n"
        "           'assert libc.mount(b\"tmpfs\", b\"/usr\", b\"tmpfs\", 0, None) != 0\\n'  # no capabilities\n"
        "           'assert libc.unshare(0x10000000) != 0 or libc.mount(b\"tmpfs\", b\"/usr\", b\"tmpfs\", 0, None) != 0\\n'\n"
        "           'assert not os.path.exists(\"/etc/passwd\")\\n'\n"
        "           'try:\\n    open(\"/usr/lib/pwned\", \"w\")\\nexcept OSError:\\n    pass\\n'\n"
        "           'else:\\n    raise AssertionError(\"wrote\")\\n')\n"
        "r = run_python(hostile, python_guard=False)\n"
        "print('checks', r.status, r.stderr_tail[-300:].replace(chr(10), ' '))\n"
    )
    try:
        proc = subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", python, "-I",
                               "-c", script.read_text()], capture_output=True, text=True, timeout=120, cwd="/")
    finally:
        shutil.rmtree(readable, ignore_errors=True)
    if proc.returncode == 3:
        pytest.skip(f"the kernel gives no unprivileged user namespaces here ({proc.stdout.strip()}); "
                    "code suites would refuse without --opt allow_unsafe=true")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "userns" in out and "no-caps" in out and "fs-hidden" in out
    assert "good passed" in out and "bad failed" in out and "checks passed" in out, out


# ---------------------------------------------------------------- macOS seatbelt profile (generated here, run on Macs)


def _sexprs(text: str) -> list:
    """A tiny SBPL reader: nested lists of atoms and strings."""
    import re

    tokens = re.findall(r'\(|\)|"(?:\\.|[^"\\])*"|[^\s()]+', text)
    stack = [[]]
    for tok in tokens:
        if tok == "(":
            stack.append([])
        elif tok == ")":
            done = stack.pop()
            stack[-1].append(done)
        else:
            stack[-1].append(tok)
    assert len(stack) == 1, "unbalanced parentheses"
    return stack[0]


def test_seatbelt_profile_structure(tmp_path):
    from harness.runtime.seatbelt import profile, quote, wrap_command

    work = str(tmp_path / "work")
    text = profile(work, sys.executable, sandbox.CHILD)
    forms = _sexprs(text)
    assert forms[0] == ["version", "1"] and forms[1] == ["deny", "default"]  # deny by default, first
    allows = [f for f in forms if f[0] == "allow"]
    ops = [f[1] for f in allows]
    assert not any(op.startswith(("network", "process-fork", "mach", "ipc", "iokit")) for op in ops), ops
    assert not any(f[0] == "allow" and len(f) == 2 and f[1] not in ("file-read-metadata", "sysctl-read")
                   for f in allows), "an unconditional allow"
    writes = [f for f in allows if f[1] == "file-write*"]
    assert len(writes) == 1
    targets = {(kind, path.strip('"')) for kind, path in writes[0][2:]}
    real_work = os.path.realpath(work)
    assert targets <= {("subpath", work), ("subpath", real_work), ("literal", "/dev/null")}, targets
    assert ("subpath", work) in targets
    execs = [f for f in allows if f[1] == "process-exec"]
    assert len(execs) == 1 and all(kind == "literal" for kind, _ in execs[0][2:])
    assert {p.strip('"') for _, p in execs[0][2:]} >= {sys.executable, os.path.realpath(sys.executable)}
    reads = next(f for f in allows if f[1] == "file-read*")
    read_paths = {p.strip('"') for _, p in reads[2:]}
    import sysconfig

    assert sysconfig.get_paths()["stdlib"] in read_paths and work in read_paths
    assert not any("site-packages" in p or p == sys.prefix != sys.base_prefix for p in read_paths)
    assert sandbox.CHILD in read_paths
    assert not any(p in read_paths for p in ("/", "/Users", os.path.expanduser("~"), "/etc", "/private"))
    for f in allows:
        if f[1] in ("signal", "process-info*"):
            assert f[2] == ["target", "self"]
    assert quote('a"b\\c') == '"a\\"b\\\\c"'
    with pytest.raises(ValueError):
        quote("bad\npath")
    argv = wrap_command(work, sys.executable, sandbox.CHILD)
    assert argv[:2] == ["/usr/bin/sandbox-exec", "-p"] and argv[2] == text
