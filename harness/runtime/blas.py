"""Fast CPU matmuls: run MLX against OpenBLAS instead of the reference BLAS.

The Linux `mlx[cpu]` wheel links netlib's reference BLAS (~2.5 GFLOP/s fp32 on
2 cores); preloading Debian's OpenBLAS makes the same matmuls ~68x faster. The
dynamic loader reads LD_PRELOAD only at process start, so the CLI re-executes
itself once with it set (`ensure_openblas`). HARNESS_NO_OPENBLAS=1 opts out.
"""

import glob
import os
import sys

OPENBLAS_GLOBS = [
    "/usr/lib/*-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/*-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas*.so.0",
]
FIX = "apt-get install -y libopenblas0-pthread"


def find_openblas():
    for pattern in OPENBLAS_GLOBS:
        hits = sorted(glob.glob(pattern))
        if hits:
            return hits[0]
    return None


def openblas_loaded() -> bool:
    """True when libopenblas is mapped into this process."""
    try:
        with open("/proc/self/maps") as f:
            return "libopenblas" in f.read()
    except OSError:
        return False


def ensure_openblas() -> None:
    """Re-exec the current command with OpenBLAS preloaded (Linux only, once).

    Prints the one command that fixes it when OpenBLAS is not installed.
    """
    if not sys.platform.startswith("linux") or os.environ.get("HARNESS_NO_OPENBLAS"):
        return
    if os.environ.get("_HARNESS_BLAS_REEXEC") or openblas_loaded():
        return
    lib = find_openblas()
    if lib is None:
        print(
            f"harness: note: MLX is using the slow reference BLAS on this CPU; `{FIX}` "
            "(as root) makes float matmuls ~70x faster",
            file=sys.stderr,
        )
        return
    env = dict(os.environ)
    env["LD_PRELOAD"] = ":".join(p for p in (lib, env.get("LD_PRELOAD", "")) if p)
    env["_HARNESS_BLAS_REEXEC"] = "1"
    # sys.orig_argv is the interpreter's own command line (`python -m harness ...`,
    # `.venv/bin/harness ...` or `python benchmarks/x.py ...`), so any entry point re-execs as itself
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def blas_info() -> dict:
    return {"openblas_loaded": openblas_loaded(), "openblas_path": find_openblas()}
