"""Cache locations and content hashing."""

import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def cache_root() -> Path:
    """Root of every cache (converted sources, artifacts, reference logits).

    `HARNESS_CACHE` overrides; defaults to ~/.cache/harness.
    """
    root = os.environ.get("HARNESS_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "harness"
    )
    return Path(root)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextmanager
def atomic_dir(final: Path):
    """Yield a temp dir next to `final`; rename it to `final` only on success.

    On any exception (Ctrl-C included) the temp dir is removed, so `final` either
    does not exist or is complete.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))  # pid: stale-temp cleanup
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_file(path: Path, mode: str = "wb", durable: bool = True, **open_kwargs):
    """Yield a file object for a temp file next to `path`, renamed to `path` only
    if the block succeeds, so readers never see half a file. Permissions follow
    the umask (mkstemp makes 0600; results and caches are meant to be shared).
    durable=False skips the fsync (caches that are recomputed when damaged)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent)  # pid: stale-temp cleanup
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file via temp + rename (see atomic_file)."""
    with atomic_file(path, "w", encoding="utf-8") as f:
        f.write(text)
