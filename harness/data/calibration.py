"""Calibration text for data-driven recipes (oQ, dynamic): read, tokenize, sample.

The shipped set, `harness/data/calibration_v1.jsonl`, is one JSON object per line
({"category", "source", "text"}) in seven categories: code, English prose,
Chinese, Japanese, Korean, tool-calling JSON and step-by-step reasoning. The
prose, CJK text, reasoning and tool-calling records were written for this
project (Apache-2.0); the code records are small CPython standard-library modules
(PSF License 2.0, named in each record's `source`). None of it comes from an
evaluation set the harness scores (BoolQ passages, MMLU, GSM8K, MBPP, HumanEval).

A user's own file (`--calibration FILE`) is either `.jsonl` (objects with a
"text" field, optional "category") or `.txt` (the whole file is one text).

Sampling is deterministic: each category's texts are tokenized and concatenated
(EOS between texts), cut into non-overlapping windows of `seq_len` tokens, the
windows of each category are shuffled with `seed`, and samples are drawn
round-robin over the categories, so every category is represented equally while
it has windows left. The file's sha256 identifies the set in plan params and
provenance.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from harness.cache import sha256_file
from harness.errors import HarnessError

DEFAULT_FILE = Path(__file__).parent / "calibration_v1.jsonl"
DEFAULT_NAME = "builtin:calibration_v1"
# The oQ card's setting. CPU-only defaults are smaller (CPU_CALIBRATION below).
DEFAULT_SAMPLES = 128
DEFAULT_SEQ_LEN = 256
MIN_SEQ_LEN = 8


@dataclass
class Calibration:
    """Token windows ready for a forward pass."""

    tokens: np.ndarray  # [samples, seq_len] int32
    source: str  # DEFAULT_NAME or the user's file name
    sha256: str  # of the text file
    seed: int
    categories: dict = field(default_factory=dict)  # {category: samples drawn}

    @property
    def samples(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.tokens.shape[1])

    def describe(self) -> dict:
        return {"source": self.source, "sha256": self.sha256, "samples": self.samples,
                "seq_len": self.seq_len, "seed": self.seed, "categories": dict(self.categories)}


def resolve_file(path: Optional[str]) -> tuple:
    """(path, display name) of the calibration text; None means the shipped set."""
    if path is None:
        return DEFAULT_FILE, DEFAULT_NAME
    file = Path(path).expanduser()
    if not file.is_file():
        raise HarnessError(f"calibration file {path} not found; pass an existing .jsonl or .txt file")
    if file.suffix not in (".jsonl", ".txt"):
        raise HarnessError(
            f"calibration file {path} must be .jsonl (one {{\"text\": ...}} object per line) or .txt"
        )
    return file, file.name


def file_sha256(path: Optional[str]) -> str:
    """sha256 of the calibration text (cheap: what recipe params hash)."""
    return sha256_file(resolve_file(path)[0])


def read_texts(path: Path) -> list:
    """[(category, text)] from a .jsonl or .txt calibration file."""
    try:
        raw = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise HarnessError(f"calibration file {path} is not UTF-8 text ({e.reason}); re-save it as UTF-8")
    except OSError as e:
        raise HarnessError(f"cannot read calibration file {path} ({e.strerror}); check the path")
    if Path(path).suffix == ".txt":
        if not raw.strip():
            raise HarnessError(f"calibration file {path} is empty; put some representative text in it")
        return [("text", raw)]
    texts = []
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise HarnessError(f"{path} line {n} is not valid JSON ({e.msg}); one JSON object per line")
        if not isinstance(record, dict) or not isinstance(record.get("text"), str) or not record["text"].strip():
            raise HarnessError(f"{path} line {n} needs a non-empty string field \"text\"")
        texts.append((str(record.get("category", "text")), record["text"]))
    if not texts:
        raise HarnessError(f"calibration file {path} has no records; add lines like {{\"text\": \"...\"}}")
    return texts


def _encode_all(tokenizer, texts: list) -> list:
    """Token ids of each text, no special tokens (windows are cut from running text)."""
    hf = getattr(tokenizer, "_tokenizer", tokenizer)  # mlx-lm's TokenizerWrapper wraps an HF tokenizer
    try:
        return hf(texts, add_special_tokens=False, verbose=False)["input_ids"]
    except TypeError:  # not an HF tokenizer: encode one by one
        return [list(tokenizer.encode(t)) for t in texts]


def check_calibration_size(samples: int, seq_len: int) -> None:
    if samples < 1:
        raise HarnessError(f"--calib-samples must be at least 1 (got {samples})")
    if seq_len < MIN_SEQ_LEN:
        raise HarnessError(f"--calib-seq-len must be at least {MIN_SEQ_LEN} tokens (got {seq_len})")


def load_calibration(tokenizer, path: Optional[str] = None, samples: int = DEFAULT_SAMPLES,
                     seq_len: int = DEFAULT_SEQ_LEN, seed: int = 0) -> Calibration:
    """Deterministic [samples, seq_len] token windows from the calibration text."""
    check_calibration_size(samples, seq_len)
    file, name = resolve_file(path)
    texts = read_texts(file)
    eos = getattr(tokenizer, "eos_token_id", None)
    sep = [eos] if isinstance(eos, int) else []

    streams = {}
    for (category, _), ids in zip(texts, _encode_all(tokenizer, [t for _, t in texts])):
        streams.setdefault(category, []).extend(list(ids) + sep)

    rng = np.random.default_rng(seed)
    windows = {}
    for category in sorted(streams):
        stream = np.asarray(streams[category], dtype=np.int32)
        n = len(stream) // seq_len
        if n:
            chunks = stream[: n * seq_len].reshape(n, seq_len)
            windows[category] = chunks[rng.permutation(n)]
    available = sum(len(w) for w in windows.values())
    if available < samples:
        raise HarnessError(
            f"calibration text {name} gives only {available} windows of {seq_len} tokens with this "
            f"tokenizer, fewer than the {samples} samples asked for; use a longer file or lower "
            "--calib-samples / --calib-seq-len"
        )

    picked, counts, depth = [], {}, 0
    while len(picked) < samples:  # round-robin over categories, in sorted order
        for category, chunks in windows.items():
            if depth < len(chunks) and len(picked) < samples:
                picked.append(chunks[depth])
                counts[category] = counts.get(category, 0) + 1
        depth += 1
    return Calibration(tokens=np.stack(picked), source=name, sha256=sha256_file(file), seed=seed,
                       categories=counts)


# Calibration size without a GPU. MLX's CPU backend runs exp/softmax at ~20M
# elements/s, so a SmolLM2-135M sensitivity pass costs ~8 CPU-ms per calibration
# token: oQ's 128 x 256 takes 261 CPU-s on 2 cores. Measured against it (30 blocks):
#   16 x 256: 32 CPU-s, Spearman 0.9996, same top-8 layers, max deviation 6%
#   32 x 128: 26 CPU-s, Spearman 0.9915, max deviation 54% (short windows shift the scores)
#   32 x 256: 62 CPU-s (too slow for a 60 s plan)
# so CPU-only machines default to 16 x 256 (whole `harness plan --recipe oq4` on
# smollm2-135m: ~40 CPU-s); with a GPU the default is the card's 128 x 256.
CPU_CALIBRATION = (16, 256)


def default_calibration_size() -> tuple:
    """(samples, seq_len): oQ's 128 x 256 with a GPU, CPU_CALIBRATION without."""
    import mlx.core as mx

    try:
        gpu = mx.metal.is_available() or mx.cuda.is_available()
    except AttributeError:
        gpu = mx.metal.is_available()
    return (DEFAULT_SAMPLES, DEFAULT_SEQ_LEN) if gpu else CPU_CALIBRATION


def calibration_size(samples: Optional[int], seq_len: Optional[int]) -> tuple:
    """(samples, seq_len) a data-driven recipe uses: the given values, this machine's
    default for the ones left None, validated."""
    default_samples, default_seq_len = default_calibration_size()
    samples = default_samples if samples is None else samples
    seq_len = default_seq_len if seq_len is None else seq_len
    check_calibration_size(samples, seq_len)
    return samples, seq_len
