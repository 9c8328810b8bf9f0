"""macOS: the seatbelt profile the sandboxed interpreter runs under
(`sandbox-exec -p PROFILE python ...`), generated per run.

Deny by default, then allow only:
  - exec of the interpreter itself (its path, its resolved path, and a framework
    build's Python.app stub target) -- no fork, so no other process can start;
  - reads of the interpreter's install (stdlib, lib-dynload, libpython), the
    child script, the system's libraries and dyld cache, and the work dir;
    stat()-style metadata anywhere (path resolution walks every ancestor);
  - writes in the work dir and to /dev/null only;
  - sysctl reads, and signals/process info for itself only.
No network rule is allowed, so every network operation is denied.

The profile is built from plain strings and unit-tested on Linux
(tests/test_sandbox.py); it has not been run on a Mac by this project's tests.
"""

import os
import sys
import sysconfig
from typing import Iterable, List

SANDBOX_EXEC = "/usr/bin/sandbox-exec"
# Where macOS keeps what every process maps at start (dyld, libSystem, the shared cache).
SYSTEM_READ = ("/usr/lib", "/usr/share/icu", "/System/Library", "/System/Volumes/Preboot/Cryptexes",
               "/private/var/db/dyld", "/private/var/db/timezone", "/Library/Apple/System/Library")
DEVICES_READ = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random")


def quote(path: str) -> str:
    """An SBPL string literal; refuses paths a profile cannot hold safely."""
    if any(ord(c) < 32 for c in path):
        raise ValueError(f"path with a control character cannot go in a seatbelt profile: {path!r}")
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _unique(paths: Iterable[str]) -> List[str]:
    out = []
    for p in paths:
        for q in (p, os.path.realpath(p)):  # seatbelt matches resolved paths (/tmp -> /private/tmp)
            if q not in out:
                out.append(q)
    return out


def interpreter_paths(python: str) -> dict:
    """{"exec": [...], "read": [dirs], "files": [...]} for `python` (install prefix, stdlib)."""
    exe = [python, os.path.realpath(python)]
    prefix = sys.base_prefix
    stub = os.path.join(prefix, "Resources", "Python.app", "Contents", "MacOS", "Python")
    if os.path.exists(stub):  # framework builds: bin/python3.x re-execs this
        exe.append(stub)
    # the base interpreter's stdlib, not a venv's (whose lib dir holds site-packages)
    base = {"base": sys.base_prefix, "platbase": sys.base_exec_prefix, "installed_base": sys.base_prefix}
    stdlib = [sysconfig.get_path(k, vars=base) for k in ("stdlib", "platstdlib")]
    read = [prefix, *stdlib, os.path.dirname(os.path.realpath(python))]
    # a venv's interpreter reads pyvenv.cfg next to it or one level up at start
    bindir = os.path.dirname(os.path.abspath(python))
    files = [os.path.join(bindir, "pyvenv.cfg"), os.path.join(os.path.dirname(bindir), "pyvenv.cfg")]
    return {"exec": _unique(exe), "read": _unique(read), "files": _unique(files)}


def profile(work: str, python: str, script: str) -> str:
    """The SBPL text for one run: `work` is the only writable dir."""
    paths = interpreter_paths(python)
    work_paths = _unique([work])
    lines = [
        "(version 1)",
        "(deny default)",
        "(allow process-exec " + " ".join(f"(literal {quote(p)})" for p in paths["exec"]) + ")",
        "(allow file-read-metadata)",
        "(allow file-read* " + " ".join(
            [f"(subpath {quote(p)})" for p in _unique([*paths["read"], *SYSTEM_READ, *work_paths])]
            + [f"(literal {quote(p)})" for p in _unique([script, *paths["files"], *DEVICES_READ])]) + ")",
        "(allow file-map-executable " + " ".join(
            f"(subpath {quote(p)})" for p in _unique([*paths["read"], *SYSTEM_READ])) + ")",
        "(allow file-write* " + " ".join(f"(subpath {quote(p)})" for p in work_paths)
        + ' (literal "/dev/null"))',
        "(allow sysctl-read)",
        "(allow process-info* (target self))",
        "(allow signal (target self))",
    ]
    return "\n".join(lines) + "\n"


def wrap_command(work: str, python: str, script: str) -> list:
    """The argv prefix that runs `python ...` under the profile."""
    return [SANDBOX_EXEC, "-p", profile(work, python, script)]
