"""fidelity: how far the model's next-token distributions are from the float reference.

On a held-out text corpus (harness/corpus.py: BoolQ's Wikipedia paragraphs
offline, wikitext online, or a local file) cut into windows of `seq_len` tokens,
each window is one forward pass; every position but the last predicts the next
token. Reported in llama.cpp's `perplexity --kl-divergence` layout:

  ppl ± err         exp(mean NLL), err by the delta method (ppl * sd / sqrt(n-1))
  ref_ppl, delta_ppl, ppl_ratio, ln_ppl_ratio, ppl_cor   the float model's own
                    perplexity on the same tokens and the paired comparisons
  kld_*             KL(P_ref || P_model) per token: mean ± err, median, p90, p95,
                    p99, p99.9, max (percentiles over ALL tokens, exact)
  top1_agreement    share of tokens whose argmax equals the reference's ("Same top p")
  rms_dp            RMS of p_model(target) - p_ref(target) (llama.cpp's "RMS Δp")

Reference logits are computed once per (reference weights, window tokens,
min_logp, kernels, device/BLAS) and cached under ctx.cache_dir, one .npz per
window: for every position the tokens the reference gives log p >= min_logp
(default -12, always including the argmax) as id + fp32 log-prob, the log of
the remaining tail mass, the target NLL and the argmax. KL is computed with the
tail lumped into one outcome:

  KL_S = sum_{i in S} p_i log(p_i / q_i) + P_tail log(P_tail / Q_tail)

Lumping outcomes never increases a KL divergence (log-sum inequality), so KL_S
is a lower bound of the full-vocabulary KL. Measured gap, SmolLM2-135M (49,152
tokens), 16 x 512 BoolQ tokens, q4 g64 (KL 0.453) / q8 (KL 0.00294):

  min_logp   mean KL      p99 KL       cache/window   scoring/window
  top-64     -17.3 %      -9.3 %       0.3 MB         (a fixed top-k misses the fat tail)
  -10        -4.5/-4.9 %  -3.8/-2.5 %  1.5 MB         140 ms
  -12        -1.5/-1.6 %  -1.3/-0.5 %  5.0 MB         165 ms   (default)
  -14        -0.4 %       -0.4/-0.2 %  13.5 MB        260 ms
  -16        -0.09 %      -0.08/-0.03 % 30 MB         510 ms   (llama.cpp's e^-16 floor)

tests/test_fidelity.py checks the bound and its shrinking on the synthetic model.

A model compared with itself gives KL exactly 0 and top-1 agreement exactly 1:
the test pass recomputes the same quantities with the same code from bitwise
identical logits (windows are always run in the same batches, see batch_size).

Speed on CPU: the forward runs in fp32 with matmuls on OpenBLAS; MLX's CPU exp
is scalar (~20x slower than numpy's SIMD exp) and the attention softmax and
SiLU dominate what is left, so on CPU those run in numpy (`kernels=mlx` turns
this off; outputs agree to ~1e-6). Per-token statistics are computed in numpy
on one window's logits at a time, in place, with a single log-softmax, in a
worker thread that overlaps the next window's forward.

Memory: when the float reference does not fit the run's memory budget
(`harness run --memory-budget GB`, default 0.6 x RAM) its logits are computed
layer-streamed (harness/runtime/streamed.py: one decoder block resident), with the
same numbers as the resident path; so is the model under test when the runner
did not load it (ctx.model is None). data_info records where each ran.

Options (--opt key=value): corpus (boolq|wikitext|PATH), seq_len (512),
num_windows (64; --limit caps it), windowing (concat|mlx_lm), window_seed (123),
min_logp (-12), batch_size (1), kernels (auto|mlx|numpy).
"""

import base64
import json
import math
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import mlx.core as mx
import numpy as np
from tqdm import tqdm

from harness.cache import atomic_file
from harness.data.corpus import WINDOWINGS, CorpusSpec, Windows, load_windows, windows_sha256
from harness.errors import HarnessError
from harness.options import option, option_names
from harness.options import parse_options as _parse_options
from harness.runtime.blas import openblas_loaded
from harness.runtime.kernels import cpu_kernels, resolve_kind  # noqa: F401 (cpu_kernels: re-exported)
from harness.runtime.streamed import StreamedModel, choose_placement, default_budget_gb, resident_bytes
from harness.stats import wilson_ci
from harness.suite import MetricSpec, Suite

CACHE_FORMAT = 2
ENTRY_KEYS = ("ids", "logp", "row_ptr", "log_tail", "nll", "top1")
FLT_TINY = np.float32(np.finfo(np.float32).tiny)
KLD_PERCENTILES = (("p999", 99.9), ("p99", 99.0), ("p95", 95.0), ("p90", 90.0),
                   ("p10", 10.0), ("p5", 5.0), ("p1", 1.0), ("p01", 0.1))
DP_PERCENTILES = (("p999", 99.9), ("p99", 99.0), ("p95", 95.0), ("p90", 90.0), ("p75", 75.0),
                  ("p25", 25.0), ("p10", 10.0), ("p5", 5.0), ("p1", 1.0), ("p01", 0.1))
SUM_KEYS = ("sum_nll", "sum_nll2", "sum_nll_ref", "sum_nll_ref2", "sum_nll_nll_ref",
            "sum_kld", "sum_kld2", "sum_dp", "sum_dp2", "sum_dp4")


# ---------------------------------------------------------------- options


@dataclass(frozen=True)
class FidelityOptions:
    corpus: str = option("boolq", help="boolq, wikitext or a local text file")
    seq_len: int = option(512, min=2, help="tokens per window")
    num_windows: int = option(64, min=-1, help="windows to score (-1: every full window; --limit caps it)")
    windowing: str = option("concat", choices=WINDOWINGS, help="how the corpus is cut into windows")
    window_seed: int = option(123, help="seed of the window order")
    min_logp: float = option(-12.0, help="reference entries kept per position: log p >= this (negative)")
    batch_size: int = option(1, min=1, help="windows per forward pass")
    kernels: str = option("auto", choices=("auto", "mlx", "numpy"),
                          help="auto: numpy softmax/SwiGLU on CPU, MLX on GPU")

    def validate(self):
        if not self.min_logp < 0:
            raise HarnessError(f"fidelity option min_logp={self.min_logp} must be negative (e.g. -12)")
        if self.num_windows == 0:
            raise HarnessError("fidelity option num_windows=0 scores nothing; use a positive number or -1 (all)")


def parse_options(options) -> FidelityOptions:
    """FidelityOptions from --opt pairs (the one option rule, harness.options); keys other
    suites of the run declare are ignored here (the runner routes them)."""
    if isinstance(options, FidelityOptions):
        return options
    names = set(option_names(FidelityOptions))
    mine = {k: v for k, v in (options or {}).items() if k in names}
    return _parse_options(FidelityOptions, mine, "fidelity")


def corpus_spec(opts: FidelityOptions, limit: Optional[int] = None) -> CorpusSpec:
    n = None if opts.num_windows < 0 else opts.num_windows
    if limit:
        n = min(n, limit) if n else limit  # windows are prefix-stable: fewer = the first ones
    return CorpusSpec(source=opts.corpus, seq_len=opts.seq_len, num_windows=n,
                      windowing=opts.windowing, seed=opts.window_seed)


# ---------------------------------------------------------------- fast CPU kernels
# Attention softmax and SwiGLU in numpy on CPU: harness/runtime/kernels.py (scoped).


def kernels_kind(opts: "FidelityOptions") -> str:
    return resolve_kind(opts.kernels)


# ---------------------------------------------------------------- per-token math


def _lumped_log_probs(logits: np.ndarray, targets: np.ndarray, rows: np.ndarray, ids: np.ndarray,
                      row_max: np.ndarray):
    """log-probs of the kept (rows, ids) entries, log of each row's remaining
    (tail) mass, and the target NLL, from one window's fp32 logits (T, V).
    Overwrites `logits`.

    One log-softmax: the tail sum is exp(logits - max) with the kept entries
    masked out, the head sum comes from the gathered kept logits.
    """
    T = len(logits)
    target_logit = logits[np.arange(T), targets].astype(np.float64)
    head_logits = logits[rows, ids].astype(np.float64)
    logits[rows, ids] = -np.inf
    logits -= row_max[:, None]
    np.exp(logits, out=logits)
    tail = logits.sum(axis=-1, dtype=np.float64)
    m = row_max.astype(np.float64)
    head = np.bincount(rows, weights=np.exp(head_logits - m[rows]), minlength=T)
    lse = m + np.log(head + tail)
    log_head = (head_logits - lse[rows]).astype(np.float32)
    log_tail = (np.log(np.maximum(tail, FLT_TINY)) + m - lse).astype(np.float32)
    nll = (lse - target_logit).astype(np.float32)
    return log_head, log_tail, nll


def entry_rows(ref: dict) -> np.ndarray:
    """Row (position) of every kept entry, from the CSR row pointer."""
    return np.repeat(np.arange(len(ref["row_ptr"]) - 1), np.diff(ref["row_ptr"]))


def reference_entries(logits: np.ndarray, targets: np.ndarray, min_logp: float) -> dict:
    """What the cache keeps of one reference window (CSR layout, row-major): every
    token with log p >= min_logp (and always the argmax) as id + fp32 log-prob,
    each row's lumped tail mass, the target NLL and the argmax. Overwrites logits."""
    T, V = logits.shape
    top1 = logits.argmax(axis=-1)
    row_max = logits[np.arange(T), top1]
    shifted = logits - row_max[:, None]
    np.exp(shifted, out=shifted)
    lse = row_max.astype(np.float64) + np.log(shifted.sum(axis=-1, dtype=np.float64))
    del shifted
    cut = np.minimum(lse + min_logp, row_max).astype(np.float32)  # the argmax always qualifies
    rows, ids = np.nonzero(logits >= cut[:, None])
    log_head, log_tail, nll = _lumped_log_probs(logits, targets, rows, ids, row_max)
    row_ptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=T))]).astype(np.int64)
    return {"ids": ids.astype(np.uint16 if V <= 1 << 16 else np.int32), "logp": log_head, "row_ptr": row_ptr,
            "log_tail": log_tail, "nll": nll, "top1": top1.astype(np.int32)}


def compare_to_reference(logits: np.ndarray, targets: np.ndarray, ref: dict) -> dict:
    """Per-token NLL, KL (tail lumped), same-top-1 and Δp of one window. Overwrites logits."""
    T = len(logits)
    top1 = logits.argmax(axis=-1)
    row_max = logits[np.arange(T), top1]
    rows = entry_rows(ref)
    logq, logq_tail, nll = _lumped_log_probs(logits, targets, rows, ref["ids"], row_max)
    logp = ref["logp"].astype(np.float64)
    kld = np.bincount(rows, weights=np.exp(logp) * (logp - logq), minlength=T)
    log_tail = ref["log_tail"].astype(np.float64)
    kld += np.exp(log_tail) * (log_tail - logq_tail)
    dp = np.exp(-nll.astype(np.float64)) - np.exp(-ref["nll"].astype(np.float64))
    return {
        "nll": nll,
        "kld": kld.astype(np.float32),
        "same_top": top1 == ref["top1"],
        "dp": dp.astype(np.float32),
    }


def score_window(window: int, logits: np.ndarray, targets: np.ndarray, ref: Optional[dict], min_logp: float):
    """(record, reference entry, whether the entry was computed here) for one window.
    ref=None: the model is its own reference; its entry comes from these logits."""
    computed = ref is None
    if computed:
        ref = reference_entries(logits.copy(), targets, min_logp)
    if logits.shape[-1] <= int(ref["ids"].max()):
        raise HarnessError(
            f"the model's vocabulary ({logits.shape[-1]}) is smaller than the reference's; "
            "compare models that share a tokenizer"
        )
    return window_record(window, compare_to_reference(logits, targets, ref), ref["nll"]), ref, computed


def window_record(window: int, cmp: dict, ref_nll: np.ndarray) -> dict:
    """One window's record: sufficient statistics (float64 sums of the float32
    per-token values) plus every per-token KL and Δp, so any resumed split of
    the windows aggregates to exactly the same summary."""
    nll = cmp["nll"].astype(np.float64)
    nll_ref = ref_nll.astype(np.float64)
    kld = cmp["kld"].astype(np.float64)
    dp = cmp["dp"].astype(np.float64)
    n = len(nll)
    return {
        "id": str(window),
        "window": window,
        "n": n,
        "ppl": math.exp(nll.mean()),
        "ref_ppl": math.exp(nll_ref.mean()),
        "kld_mean": float(kld.mean()),
        "top1_agreement": float(cmp["same_top"].mean()),
        "n_same_top": int(cmp["same_top"].sum()),
        "sum_nll": float(nll.sum()),
        "sum_nll2": float((nll * nll).sum()),
        "sum_nll_ref": float(nll_ref.sum()),
        "sum_nll_ref2": float((nll_ref * nll_ref).sum()),
        "sum_nll_nll_ref": float((nll * nll_ref).sum()),
        "sum_kld": float(kld.sum()),
        "sum_kld2": float((kld * kld).sum()),
        "sum_dp": float(dp.sum()),
        "sum_dp2": float((dp * dp).sum()),
        "sum_dp4": float((dp**4).sum()),
        "kld_f32": encode_f32(cmp["kld"]),
        "dp_f32": encode_f32(cmp["dp"]),
    }


def encode_f32(values: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(values, dtype="<f4").tobytes()).decode("ascii")


def decode_f32(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4")


# ---------------------------------------------------------------- summary


def mean_and_err(total: float, total2: float, n: int) -> tuple[float, float]:
    """llama.cpp's mean_and_uncertainty: mean and its standard error."""
    if n < 1:
        return 0.0, 0.0
    f = total / n
    var = total2 / n - f * f
    return f, (math.sqrt(var / (n - 1)) if var > 0 and n > 10 else 0.0)


def summarize_records(records: list) -> dict:
    """Every summary number from window records, independent of their order."""
    records = sorted(records, key=lambda r: r["window"])
    if not records:
        return {"n": 0, "n_windows": 0}
    n = sum(r["n"] for r in records)
    s = {k: math.fsum(r[k] for r in records) for k in SUM_KEYS}
    same_top = sum(r["n_same_top"] for r in records)
    kld = np.concatenate([decode_f32(r["kld_f32"]) for r in records]).astype(np.float64)
    dp = np.concatenate([decode_f32(r["dp_f32"]) for r in records]).astype(np.float64)

    log_ppl, log_ppl_err = mean_and_err(s["sum_nll"], s["sum_nll2"], n)
    log_ref, log_ref_err = mean_and_err(s["sum_nll_ref"], s["sum_nll_ref2"], n)
    cov = 0.0
    if n >= 10:
        cov = (s["sum_nll_nll_ref"] / n - (s["sum_nll"] / n) * (s["sum_nll_ref"] / n)) / (n - 1)
    ppl, ref_ppl = math.exp(log_ppl), math.exp(log_ref)
    ppl_err, ref_ppl_err = ppl * log_ppl_err, ref_ppl * log_ref_err
    ln_ratio = log_ppl - log_ref
    ln_ratio_err = math.sqrt(max(log_ppl_err**2 + log_ref_err**2 - 2 * cov, 0.0))
    delta_err = math.sqrt(max(ppl_err**2 + ref_ppl_err**2 - 2 * ppl * ref_ppl * cov, 0.0))
    cor = cov / (log_ppl_err * log_ref_err) if log_ppl_err > 0 and log_ref_err > 0 else 1.0
    kld_mean, kld_err = mean_and_err(s["sum_kld"], s["sum_kld2"], n)
    dp_mean, dp_mean_err = mean_and_err(s["sum_dp"], s["sum_dp2"], n)
    mse, mse_err = mean_and_err(s["sum_dp2"], s["sum_dp4"], n)
    rms_dp = math.sqrt(mse)
    top1 = same_top / n

    out = {
        # the headline numbers first (the run summary prints the first few)
        "ppl": ppl,
        "ref_ppl": ref_ppl,
        "delta_ppl": ppl - ref_ppl,
        "kld_mean": kld_mean,
        "kld_p99": float(np.percentile(kld, 99.0)),
        "top1_agreement": top1,
        "rms_dp": rms_dp,
        "n": n,
        "n_windows": len(records),
        "ppl_err": ppl_err,
        "ref_ppl_err": ref_ppl_err,
        "delta_ppl_err": delta_err,
        "ppl_ratio": math.exp(ln_ratio),
        "ppl_ratio_err": math.exp(ln_ratio) * ln_ratio_err,
        "ln_ppl_ratio": ln_ratio,
        "ln_ppl_ratio_err": ln_ratio_err,
        "ppl_cor": cor,
        "kld_err": kld_err,
        "kld_median": float(np.median(kld)),
        "kld_max": float(kld.max()),
        "kld_min": float(kld.min()),
        **{f"kld_{name}": float(np.percentile(kld, q)) for name, q in KLD_PERCENTILES},
        "top1_agreement_err": math.sqrt(top1 * (1 - top1) / (n - 1)) if n > 1 else 0.0,
        "top1_agreement_ci95": list(wilson_ci(same_top, n)),
        "rms_dp_err": 0.5 / rms_dp * mse_err if rms_dp > 0 else 0.0,
        "dp_mean": dp_mean,
        "dp_mean_err": dp_mean_err,
        "dp_median": float(np.median(dp)),
        "dp_max": float(dp.max()),
        "dp_min": float(dp.min()),
        **{f"dp_{name}": float(np.percentile(dp, q)) for name, q in DP_PERCENTILES},
    }
    out["table"] = format_llama_cpp(out)
    return out


def format_llama_cpp(s: dict) -> str:
    """The summary as llama.cpp `perplexity --kl-divergence` prints it."""
    pct = lambda v: 100.0 * v  # noqa: E731
    lines = [
        "====== Perplexity statistics ======",
        f"Mean PPL(Q)                   : {s['ppl']:10.6f} ± {s['ppl_err']:10.6f}",
        f"Mean PPL(base)                : {s['ref_ppl']:10.6f} ± {s['ref_ppl_err']:10.6f}",
        f"Cor(ln(PPL(Q)), ln(PPL(base))): {pct(s['ppl_cor']):6.2f}%",
        f"Mean ln(PPL(Q)/PPL(base))     : {s['ln_ppl_ratio']:10.6f} ± {s['ln_ppl_ratio_err']:10.6f}",
        f"Mean PPL(Q)/PPL(base)         : {s['ppl_ratio']:10.6f} ± {s['ppl_ratio_err']:10.6f}",
        f"Mean PPL(Q)-PPL(base)         : {s['delta_ppl']:10.6f} ± {s['delta_ppl_err']:10.6f}",
        "",
        "====== KL divergence statistics ======",
        f"Mean    KLD: {s['kld_mean']:10.6f} ± {s['kld_err']:10.6f}",
        f"Maximum KLD: {s['kld_max']:10.6f}",
        f"99.9%   KLD: {s['kld_p999']:10.6f}",
        f"99.0%   KLD: {s['kld_p99']:10.6f}",
        f"95.0%   KLD: {s['kld_p95']:10.6f}",
        f"90.0%   KLD: {s['kld_p90']:10.6f}",
        f"Median  KLD: {s['kld_median']:10.6f}",
        f"10.0%   KLD: {s['kld_p10']:10.6f}",
        f" 5.0%   KLD: {s['kld_p5']:10.6f}",
        f" 1.0%   KLD: {s['kld_p1']:10.6f}",
        f" 0.1%   KLD: {s['kld_p01']:10.6f}",
        f"Minimum KLD: {s['kld_min']:10.6f}",
        "",
        "====== Token probability statistics ======",
        f"Mean    Δp: {pct(s['dp_mean']):6.3f} ± {pct(s['dp_mean_err']):5.3f} %",
        f"Maximum Δp: {pct(s['dp_max']):6.3f}%",
        f"99.9%   Δp: {pct(s['dp_p999']):6.3f}%",
        f"99.0%   Δp: {pct(s['dp_p99']):6.3f}%",
        f"95.0%   Δp: {pct(s['dp_p95']):6.3f}%",
        f"90.0%   Δp: {pct(s['dp_p90']):6.3f}%",
        f"75.0%   Δp: {pct(s['dp_p75']):6.3f}%",
        f"Median  Δp: {pct(s['dp_median']):6.3f}%",
        f"25.0%   Δp: {pct(s['dp_p25']):6.3f}%",
        f"10.0%   Δp: {pct(s['dp_p10']):6.3f}%",
        f" 5.0%   Δp: {pct(s['dp_p5']):6.3f}%",
        f" 1.0%   Δp: {pct(s['dp_p1']):6.3f}%",
        f" 0.1%   Δp: {pct(s['dp_p01']):6.3f}%",
        f"Minimum Δp: {pct(s['dp_min']):6.3f}%",
        f"RMS Δp    : {pct(s['rms_dp']):6.3f} ± {pct(s['rms_dp_err']):5.3f} %",
        f"Same top p: {pct(s['top1_agreement']):6.3f} ± {pct(s['top1_agreement_err']):5.3f} %",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- forward passes


def window_logits(model, tokens: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(row, fp32 logits (T, V) as a writable numpy array) for a batch of windows."""
    logits = model(mx.array(tokens[:, :-1])).astype(mx.float32)
    mx.eval(logits)
    for b in range(len(tokens)):
        yield b, np.array(logits[b])


def fixed_batches(n_windows: int, size: int, wanted) -> list:
    """Batches of window indices [0, size), [size, 2 size), ... that hold a wanted
    window. Always the same batches, so a window meets the same batch-mates (and
    gets bitwise the same logits) whatever subset a resumed run asks for."""
    wanted = set(wanted)
    out = []
    for start in range(0, n_windows, size):
        batch = list(range(start, min(start + size, n_windows)))
        if wanted.intersection(batch):
            out.append(batch)
    return out


class ReferenceCache:
    """Per-window reference entries on disk (one .npz per window), memoised in memory."""

    def __init__(self, directory: Optional[Path]):
        self.directory = Path(directory) if directory else None
        self.memo: dict = {}

    def _path(self, name: str) -> Optional[Path]:
        return self.directory / f"{name}.npz" if self.directory else None

    def get(self, name: str) -> Optional[dict]:
        if name in self.memo:
            return self.memo[name]
        path = self._path(name)
        if path is None or not path.is_file():
            return None
        try:
            with np.load(path) as z:
                entry = {k: z[k] for k in ENTRY_KEYS}
        except (OSError, ValueError, KeyError, EOFError):
            return None  # a damaged cache file is recomputed, never trusted
        self.memo[name] = entry
        return entry

    def put(self, name: str, entry: dict) -> None:
        self.memo[name] = entry
        path = self._path(name)
        if path is None:
            return
        with atomic_file(path, durable=False) as f:  # a damaged entry is recomputed
            np.savez(f, **entry)


def _info(name: str, description: str) -> MetricSpec:
    return MetricSpec(name, None, kind="info", description=description)


class FidelitySuite(Suite):
    name = "fidelity"
    description = "perplexity, KL divergence, top-1 agreement and RMS Δp vs the float reference (llama.cpp layout)"
    version = "1"
    needs_reference = True
    exec_mode = None
    streamable = True  # runs models larger than --memory-budget layer by layer (ctx.model None: stream it)
    Options = FidelityOptions
    metrics = (
        MetricSpec("ppl", False, kind="ppl", max_drop=0.05, relative=True, item_key="ppl",
                   description="perplexity of the model on the windows"),
        MetricSpec("kld_mean", False, kind="mean", max_drop=0.02, item_key="kld_mean",
                   description="mean KL(P_ref || P_model) per token (tail lumped: a lower bound)"),
        MetricSpec("top1_agreement", True, kind="proportion", max_drop=0.02, item_key="top1_agreement",
                   description="share of tokens whose argmax equals the reference's (llama.cpp 'Same top p')"),
        _info("ref_ppl", "perplexity of the float reference on the same tokens"),
        _info("delta_ppl", "ppl - ref_ppl"),
        _info("ppl_ratio", "ppl / ref_ppl"),
        _info("kld_p99", "99th percentile of per-token KL"),
        _info("kld_median", "median per-token KL"),
        _info("kld_max", "largest per-token KL"),
        _info("rms_dp", "RMS of p_model(target) - p_ref(target)"),
        _info("n", "scored tokens"),
        _info("n_windows", "scored windows"),
    )

    def __init__(self):
        self._windows: dict = {}
        self._caches: dict = {}

    # -- data

    def windows(self, ctx) -> tuple[FidelityOptions, Windows]:
        opts = parse_options(ctx.options)
        spec = corpus_spec(opts, ctx.limit)
        key = (id(ctx.tokenizer), spec)
        if key not in self._windows:  # keep the tokenizer alive so its id stays unique
            self._windows[key] = (ctx.tokenizer, load_windows(ctx.tokenizer, spec))
        return opts, self._windows[key][1]

    def items(self, ctx) -> list:
        _, w = self.windows(ctx)
        return [{"id": str(i), "window": i} for i in range(len(w.tokens))]

    def data_info(self, ctx) -> dict:
        opts, w = self.windows(ctx)
        info = {"source": w.source, "sha256": w.sha256, "texts_sha256": w.texts_sha256,
                "seq_len": opts.seq_len, "num_windows": int(len(w.tokens)), "windowing": opts.windowing,
                "min_logp": opts.min_logp, "texts_used": w.texts_used, "kernels": kernels_kind(opts)}
        # Where each forward ran (resident or layer-streamed) under the memory budget.
        if ctx.reference_path is not None and not ctx.is_reference:
            info["reference_placement"] = self.reference_placement(ctx).to_json()
        if ctx.artifact is not None and Path(ctx.artifact).is_dir():
            info["model_placement"] = ("streamed" if ctx.model is None else "resident")
        return info

    # -- memory

    @staticmethod
    def reference_placement(ctx):
        """Resident or streamed for the float reference, under ctx's memory budget less
        what the model under test already holds (both are in memory at once)."""
        gpu = mx.default_device() == mx.gpu
        budget = getattr(ctx, "memory_budget_gb", None)
        budget = default_budget_gb() if budget is None else float(budget)
        if ctx.model is not None and ctx.artifact is not None and Path(ctx.artifact).is_dir():
            held = resident_bytes(ctx.artifact, ctx.exec_mode, on_gpu=gpu) / 2**30
            budget = max(budget - held, 0.0)
        return choose_placement(ctx.reference_path, budget, "native", on_gpu=gpu)

    @staticmethod
    def forward(model, path, exec_mode, tokens: np.ndarray, batches: list, progress: bool, desc: str):
        """(row, fp32 logits (T, V)) for the windows in `batches`: resident when `model` is
        loaded, else layer-streamed from `path` (one decoder block in memory at a time)."""
        if model is None:
            yield from StreamedModel(path, exec_mode).logits(tokens[:, :-1], batches, progress=progress,
                                                             desc=desc)
            return
        for batch in batches:
            for b, logits in window_logits(model, tokens[batch]):
                yield batch[b], logits

    # -- reference

    def reference_cache(self, ctx, opts: FidelityOptions) -> ReferenceCache:
        ident = {
            "format": CACHE_FORMAT,
            "reference": _reference_fingerprint(ctx.reference_path),
            "min_logp": opts.min_logp,
            "batch_size": opts.batch_size,
            "kernels": kernels_kind(opts),
            "device": str(mx.default_device()),
            "openblas": openblas_loaded(),
        }
        key = json.dumps(ident, sort_keys=True)
        if key not in self._caches:
            directory = None
            if ctx.cache_dir is not None and ident["reference"] is not None:
                from harness.cache import sha256_bytes

                directory = Path(ctx.cache_dir) / "fidelity-reference" / sha256_bytes(key.encode())[:16]
            self._caches[key] = ReferenceCache(directory)
        return self._caches[key]

    @staticmethod
    def _entry_name(w: Windows, i: int) -> str:
        return f"{i:05d}-{windows_sha256(w.tokens[i])[:16]}"

    def ensure_reference(self, ctx, opts, w: Windows, wanted: list, cache: ReferenceCache) -> dict:
        """{window: reference entry}, computing the missing ones with the reference model."""
        names = {i: self._entry_name(w, i) for i in wanted}
        entries = {i: cache.get(names[i]) for i in wanted}
        missing = [i for i in wanted if entries[i] is None]
        if missing:
            streamed = self.reference_placement(ctx).mode == "streamed"
            ref_model = None if streamed else ctx.reference()[0]
            bar = tqdm(total=len(missing), desc="fidelity: reference logits", unit="win",
                       disable=not ctx.progress)
            batches = fixed_batches(len(w.tokens), opts.batch_size, missing)
            with cpu_kernels(kernels_kind(opts)):
                for i, logits in self.forward(ref_model, ctx.reference_path, "native", w.tokens, batches,
                                              ctx.progress, "fidelity: reference, streamed"):
                    if entries.get(i, True) is not None:
                        continue  # not wanted, or already cached
                    entries[i] = reference_entries(logits, w.tokens[i, 1:], opts.min_logp)
                    cache.put(names[i], entries[i])
                    bar.update(1)
            bar.close()
        return entries

    # -- protocol

    def run(self, ctx, items: list) -> Iterator[dict]:
        opts, w = self.windows(ctx)
        wanted = sorted(int(it["window"]) for it in items)
        cache = self.reference_cache(ctx, opts)
        is_reference = ctx.is_reference
        if is_reference:
            # The float recipe is its own reference: missing entries come from the
            # same forward pass (a copy of the logits), no second pass.
            refs = {i: cache.get(self._entry_name(w, i)) for i in wanted}
        else:
            refs = self.ensure_reference(ctx, opts, w, wanted, cache)
        bar = tqdm(total=len(wanted), desc="fidelity", unit="win", disable=not ctx.progress)
        # Scoring a window (numpy, releases the GIL) overlaps the next window's forward.
        pending: deque = deque()

        def finished(block: bool):
            while pending and (block or pending[0][1].done()):
                i, job = pending.popleft()
                record, ref, computed = job.result()
                if computed:
                    cache.put(self._entry_name(w, i), ref)
                bar.update(1)
                yield record

        batches = fixed_batches(len(w.tokens), opts.batch_size, wanted)
        with cpu_kernels(kernels_kind(opts)), ThreadPoolExecutor(max_workers=1) as pool:
            for i, logits in self.forward(ctx.model, ctx.artifact, ctx.exec_mode, w.tokens, batches,
                                          ctx.progress, "fidelity: model, streamed"):
                if i not in refs:
                    continue  # a batch-mate of a wanted window
                pending.append((i, pool.submit(score_window, i, logits, w.tokens[i, 1:], refs[i], opts.min_logp)))
                yield from finished(block=len(pending) > 1)
            yield from finished(block=True)
        bar.close()

    def summarize(self, ctx, records: list) -> dict:
        return summarize_records(records)

    def render(self, summary: dict) -> str:
        """llama.cpp's --kl-divergence layout, rendered from the stored summary."""
        return format_llama_cpp(summary) if "kld_p999" in summary else ""


def _reference_fingerprint(path) -> Optional[str]:
    if path is None or not Path(path).is_dir():
        return None
    from harness.sources import fingerprint

    return fingerprint(Path(path))
