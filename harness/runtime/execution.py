"""Execution modes: how a built artifact is run.

* native    - the real quantized kernels (what users run on Metal; always used for speed).
* simulated - every quantized layer replaced by its dequantized weight, run as a
              float layer. Same numbers as native (up to matmul summation order), but
              on CPU it runs at BLAS speed: MLX's CPU quantized matmul does not use BLAS
              (~2 GFLOP/s) while fp32 GEMM with OpenBLAS reaches ~170 GFLOP/s.
* auto      - simulated on CPU, native on a GPU (Metal/CUDA).

On CPU everything computes in fp32 (bf16/fp16 matmuls are not accelerated there):
scales and biases are upcast before dequantizing, which is exact, so native and
simulated see bit-identical weights.
"""

from pathlib import Path

from harness.errors import HarnessError

EXEC_MODES = ("auto", "native", "simulated")


def on_gpu() -> bool:
    import mlx.core as mx

    return mx.default_device() == mx.gpu


def resolve_exec_mode(requested: str) -> str:
    if requested not in EXEC_MODES:
        raise HarnessError(f"unknown exec mode {requested!r}; use one of {', '.join(EXEC_MODES)}")
    if requested == "auto":
        return "native" if on_gpu() else "simulated"
    return requested


def simulate(model):
    """Replace quantized layers by float layers holding their dequantized weights (in place)."""
    from mlx_lm.utils import dequantize_model

    return dequantize_model(model)


def is_quantized(model) -> bool:
    return any(hasattr(m, "bits") for _, m in model.named_modules())


def load_artifact(path: Path, exec_mode: str = "auto"):
    """Load an artifact for evaluation. Returns (model, tokenizer, resolved exec mode)."""
    import mlx.core as mx
    from mlx_lm.utils import load

    mode = resolve_exec_mode(exec_mode)
    try:
        model, tokenizer = load(str(path))
    except Exception as e:  # corrupt/missing files: one clear line
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise HarnessError(f"cannot load artifact {path} ({msg}); rebuild it with `harness build --force`")
    if not on_gpu():
        model.set_dtype(mx.float32)  # exact upcast of float weights, scales and biases
    if mode == "simulated" and is_quantized(model):
        simulate(model)
    mx.eval(model.parameters())
    return model, tokenizer, mode
