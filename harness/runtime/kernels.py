"""Fast CPU kernels for mlx-lm models, as a scoped context manager.

`with cpu_kernels(): ...` runs the attention softmax and SwiGLU of every mlx-lm model
in numpy for the duration of the block, and restores MLX's own kernels on exit (also
on an exception). Why: MLX's CPU exp is scalar, ~20x slower than numpy's SIMD exp,
and once matmuls run on OpenBLAS the attention softmax and SiLU are most of a CPU
forward pass. Outputs agree with MLX's kernels to ~1e-6 (fp32).

kind: "numpy" patches, "mlx" changes nothing, "auto" (default) = numpy on CPU, mlx
on a GPU. Not thread-safe against other code patching the same names.
"""

from contextlib import contextmanager
from functools import lru_cache

import mlx.core as mx
import numpy as np

KINDS = ("auto", "mlx", "numpy")

ATTENTION_BLOCK = 128  # query rows per block: causal blocks skip the keys they cannot see


@lru_cache(maxsize=8)
def _future(n: int) -> tuple:
    return np.triu_indices(n, 1)


def _softmax_rows(s: np.ndarray) -> np.ndarray:
    """In-place softmax over the last axis (rows hold -inf where masked)."""
    s -= s.max(axis=-1, keepdims=True)
    # Probabilities below ~1e-38 are subnormal in fp32 and subnormals make the next
    # GEMM crawl; weights under exp(-70) ~ 4e-31 vanish in any sum anyway: use 0.
    np.copyto(s, -np.inf, where=s < -70.0)
    np.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    return s


def _numpy_sdpa(native):
    """mx.fast.scaled_dot_product_attention with the softmax done in numpy.

    Both matmuls stay in MLX (BLAS). Causal attention is computed in blocks of
    query rows that only see the keys up to their last position (~40 % less work
    at 512 tokens). Only the multi-token causal/unmasked case without sinks is
    handled here (every forward of this suite); anything else goes to `native`.
    """

    def sdpa(q, k, v, scale, mask=None, sinks=None, **kwargs):
        if (sinks is not None or kwargs or q.shape[2] == 1 or q.dtype != mx.float32
                or not (mask is None or (isinstance(mask, str) and mask == "causal"))):
            return native(q, k, v, scale=scale, mask=mask, sinks=sinks, **kwargs)
        B, H, L, D = q.shape
        KV, S = k.shape[1], k.shape[2]
        r = H // KV  # grouped-query attention: r query heads share a kv head
        offset = S - L  # keys before the first query (a KV cache prefix)
        qs = (q * scale).reshape(B, KV, r, L, D)
        v = mx.contiguous(v)
        outs = []
        for a in range(0, L, ATTENTION_BLOCK):
            b = min(a + ATTENTION_BLOCK, L)
            end = offset + b if mask == "causal" else S  # keys visible to this block
            scores = qs[:, :, :, a:b].reshape(B, KV, r * (b - a), D) @ k[:, :, :end].swapaxes(-1, -2)
            s = np.array(scores, dtype=np.float32).reshape(B, KV, r, b - a, end)
            if mask == "causal":
                rows, cols = _future(b - a)  # the block's own keys: mask the future ones
                s[..., rows, offset + a + cols] = -np.inf
            p = mx.array(_softmax_rows(s)).reshape(B, KV, r * (b - a), end)
            outs.append((p @ v[:, :, :end]).reshape(B, KV, r, b - a, -1))
        return mx.concatenate(outs, axis=3).reshape(B, H, L, -1)

    return sdpa


def _numpy_swiglu(native):
    """mlx-lm's swiglu (silu(gate) * x) with the sigmoid's exp done in numpy."""

    def swiglu(gate, x):
        if gate.dtype != mx.float32 or gate.size < 4096:
            return native(gate, x)
        a = np.array(gate, dtype=np.float32)
        e = np.negative(a)
        np.exp(e, out=e)
        e += 1.0
        np.divide(a, e, out=a)
        a *= np.asarray(x, dtype=np.float32)
        return mx.array(a)

    return swiglu


def resolve_kind(kind: str = "auto") -> str:
    """auto -> numpy on CPU, mlx on a GPU."""
    if kind == "auto":
        return "mlx" if mx.default_device() == mx.gpu else "numpy"
    return kind


@contextmanager
def cpu_kernels(kind: str = "auto"):
    """Within the block, mlx-lm models run attention softmax and SwiGLU in numpy
    (kind="numpy"); kind="mlx" changes nothing.

    Why: MLX's CPU exp is scalar, ~20x slower than numpy's SIMD exp, and the
    attention softmax and SiLU are most of a CPU forward pass once matmuls run on
    OpenBLAS. Outputs agree with MLX's kernels to ~1e-6. Patched: the
    mx.fast.scaled_dot_product_attention attribute (mlx-lm looks it up per call)
    and the `swiglu` name in every loaded mlx_lm.models module; restored on exit.
    """
    if kind not in KINDS:
        raise ValueError(f"cpu_kernels kind {kind!r} is not one of {KINDS}")
    if resolve_kind(kind) != "numpy":
        yield
        return
    import sys

    from mlx_lm.models import activations

    native_sdpa, native_swiglu = mx.fast.scaled_dot_product_attention, activations.swiglu
    fast_swiglu = _numpy_swiglu(native_swiglu)
    patched = [m for name, m in list(sys.modules.items())
               if name.startswith("mlx_lm.models.") and getattr(m, "swiglu", None) is native_swiglu]
    mx.fast.scaled_dot_product_attention = _numpy_sdpa(native_sdpa)
    for m in patched:
        m.swiglu = fast_swiglu
    try:
        yield
    finally:
        mx.fast.scaled_dot_product_attention = native_sdpa
        for m in patched:
            m.swiglu = native_swiglu
