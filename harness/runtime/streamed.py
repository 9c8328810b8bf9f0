"""Layer-streamed forward: run a model larger than memory one decoder block at a time.

A resident forward needs every weight in memory (on CPU in fp32: twice a bf16
checkpoint). `StreamedModel` needs one decoder block plus the activations:

  1. a skeleton model is built with mlx-lm's own classes from config.json
     (`load_model(lazy=True)`: every parameter is an unevaluated array, nothing is read);
  2. the embedding rows the windows use are read from the safetensors file (memmap);
  3. for each block: its weights are read (mx.load is lazy: only that block's tensors
     are touched), cast to the compute dtype (fp32 on CPU, as the resident path does),
     dequantized in simulated mode, the block runs over every batch of windows, and
     its weights are dropped before the next block. The activations (windows x tokens
     x hidden, fp32) live in memory, or in a temp file when they exceed `act_budget`;
  4. the final norm, then lm_head in chunks of vocabulary rows (read by memmap), one
     window at a time: the caller gets (window, fp32 logits (T, V)) and reduces them
     (log-probs of the targets, a sparse top-k) before the next window.

Numbers equal the resident path's (same kernels, same dtype, same batches) up to
float summation order in the chunked lm_head matmul (~1e-6 relative).

Supported: mlx-lm models shaped `model.model.{embed_tokens, layers, norm}` +
`lm_head` or tied embeddings (llama, qwen2/3, qwen3_moe, minimax, mixtral ...)
whose blocks are called as `layer(x, mask, cache)`, with mlx-lm-format tensor names.
"""

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from harness.errors import HarnessError

DEFAULT_BUDGET_SHARE = 0.6  # of physical memory: room for the OS, the logits and the candidate
HEAD_CHUNK_BYTES = 256 << 20  # fp32 lm_head rows materialised at a time
_NP_DTYPES = {"F32": np.float32, "F16": np.float16, "U32": np.uint32, "I32": np.int32, "U8": np.uint8,
              "I64": np.int64, "BF16": np.uint16}  # bf16 is read as raw uint16, widened exactly
_QUANT_SUFFIXES = (".scales", ".biases", ".global_scale")


# ---------------------------------------------------------------- sizes and the budget


def physical_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16 << 30


def default_budget_gb() -> float:
    return round(DEFAULT_BUDGET_SHARE * physical_memory_bytes() / 2**30, 1)


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    dtype: str  # safetensors dtype name
    shape: tuple
    offset: int  # absolute byte offset of the data in the file

    @property
    def nbytes(self) -> int:
        size = {"F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "U8": 1, "I64": 8}.get(self.dtype, 4)
        return int(np.prod(self.shape)) * size


def tensor_index(model_dir: Path) -> dict:
    """{name: TensorInfo} from the safetensors headers of a model directory (reads headers only)."""
    out = {}
    for f in sorted(Path(model_dir).glob("model*.safetensors")):
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            a, _ = meta["data_offsets"]
            out[name] = TensorInfo(f.resolve(), meta["dtype"], tuple(meta["shape"]), 8 + n + a)
    if not out:
        raise HarnessError(f"{model_dir} has no model*.safetensors weights; re-download or rebuild it")
    return out


def read_rows(info: TensorInfo, rows=None) -> np.ndarray:
    """Rows of a tensor straight from the file (memmap: only those rows are read), as
    float32 for float tensors (bf16 widened exactly), raw for integer ones."""
    if info.dtype not in _NP_DTYPES:
        raise HarnessError(f"{info.file.name}: tensor dtype {info.dtype} is not supported by streamed execution")
    mm = np.memmap(info.file, dtype=_NP_DTYPES[info.dtype], mode="r", offset=info.offset, shape=info.shape)
    part = np.array(mm if rows is None else mm[rows])
    del mm
    if info.dtype == "BF16":
        return (part.astype(np.uint32) << 16).view(np.float32)
    if info.dtype == "F16":
        return part.astype(np.float32)
    return part


def _quant_settings(config: dict, path: str) -> Optional[dict]:
    q = config.get("quantization") or config.get("quantization_config")
    if not q:
        return None
    per = q.get(path, q)
    if per is False:
        return None
    if not isinstance(per, dict):
        per = q
    return {"bits": per.get("bits", q.get("bits")), "group_size": per.get("group_size", q.get("group_size")),
            "mode": per.get("mode", q.get("mode", "affine"))}


def resident_bytes(model_dir: Path, exec_mode: str = "simulated", on_gpu: bool = False) -> int:
    """Memory a resident load of the model needs for its weights, as harness loads it:
    on CPU every float tensor (and quantization scale) becomes fp32; in simulated mode
    every quantized weight is dequantized to fp32."""
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    index = tensor_index(model_dir)
    total = 0
    for name, t in index.items():
        is_float = t.dtype in ("F32", "F16", "BF16")
        if name.endswith(_QUANT_SUFFIXES):
            if exec_mode == "native":
                total += t.nbytes if on_gpu else int(np.prod(t.shape)) * 4
            continue
        base = name[: -len(".weight")] if name.endswith(".weight") else name
        if f"{base}.scales" in index:  # a packed quantized weight
            q = _quant_settings(config, base) or {"bits": 4}
            elems = int(np.prod(t.shape[:-1])) * t.shape[-1] * 32 // int(q["bits"])
            total += t.nbytes if exec_mode == "native" else elems * (2 if on_gpu else 4)
        elif is_float and not on_gpu:
            total += int(np.prod(t.shape)) * 4
        else:
            total += t.nbytes
    return total


@dataclass(frozen=True)
class Placement:
    """Where a model's forward runs, and why (recorded in provenance)."""

    mode: str  # "resident" | "streamed"
    estimated_gb: float  # resident weight memory
    budget_gb: float

    def to_json(self) -> dict:
        return {"mode": self.mode, "estimated_resident_gb": self.estimated_gb, "memory_budget_gb": self.budget_gb}


def choose_placement(model_dir: Path, budget_gb: Optional[float], exec_mode: str = "simulated",
                     on_gpu: bool = False) -> Placement:
    """Resident when the weights take at most 3/4 of the budget (the rest: activations,
    logits, the other model), else streamed."""
    budget = default_budget_gb() if budget_gb is None else float(budget_gb)
    need = resident_bytes(model_dir, exec_mode, on_gpu) / 2**30
    mode = "resident" if need <= 0.75 * budget else "streamed"
    return Placement(mode, round(need, 3), budget)


# ---------------------------------------------------------------- the streamed forward


class StreamedModel:
    """A model run one decoder block at a time (see the module docstring)."""

    def __init__(self, model_dir: Path, exec_mode: str = "simulated", act_budget_bytes: int = 1 << 30,
                 compute_dtype: Optional[str] = None):
        import mlx.core as mx
        from mlx_lm.utils import load_model

        self.dir = Path(model_dir)
        self.exec_mode = exec_mode
        self.act_budget = act_budget_bytes
        if compute_dtype is None:
            compute_dtype = "float32" if mx.default_device() != mx.gpu else None
        self.dtype = getattr(mx, compute_dtype) if compute_dtype else None
        try:
            self.model, self.config = load_model(self.dir, lazy=True)  # a skeleton: nothing is read
        except Exception as e:  # noqa: BLE001 - corrupt/missing files: one clear line
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise HarnessError(f"cannot open {self.dir} for streamed execution ({msg}); re-download or rebuild it")
        inner = getattr(self.model, "model", None)
        if inner is None or not all(hasattr(inner, a) for a in ("embed_tokens", "layers", "norm")):
            raise HarnessError(f"{self.config.get('model_type')}: streamed execution supports models shaped "
                               "model.{embed_tokens, layers, norm} (llama, qwen3_moe, minimax ...); "
                               "lower --memory-budget is not possible for this architecture")
        if any(getattr(layer, "use_sliding", False) for layer in inner.layers):
            raise HarnessError("streamed execution does not support sliding-window layers yet; raise --memory-budget")
        self.inner = inner
        self.index = tensor_index(self.dir)
        self.tied = not hasattr(self.model, "lm_head")
        names = {id(m): n for n, m in self.model.named_modules()}
        self.layer_prefix = [names[id(layer)] + "." for layer in inner.layers]
        self.embed_path = names[id(inner.embed_tokens)]
        self.norm_path = names[id(inner.norm)]
        self.head_path = self.embed_path if self.tied else names[id(self.model.lm_head)]
        for p in (self.embed_path, self.head_path, self.norm_path):
            if f"{p}.weight" not in self.index:
                raise HarnessError(f"{self.dir}: tensor {p}.weight not found; streamed execution needs "
                                   "mlx-lm tensor names (convert the model with mlx_lm.convert first)")

    # -- weights

    def _tensor(self, path: str, rows=None):
        """(weight, scales, biases) numpy rows of module `path` (scales None when float)."""
        w = read_rows(self.index[f"{path}.weight"], rows)
        if f"{path}.scales" not in self.index:
            return w, None, None
        s = read_rows(self.index[f"{path}.scales"], rows)
        b = read_rows(self.index[f"{path}.biases"], rows) if f"{path}.biases" in self.index else None
        return w, s, b

    def _float_rows(self, path: str, rows=None):
        """fp32 (or compute dtype) rows of a possibly quantized matrix, as an mx.array."""
        import mlx.core as mx

        w, s, b = self._tensor(path, rows)
        if s is None:
            return mx.array(w) if self.dtype is None else mx.array(w).astype(self.dtype)
        q = _quant_settings(self.config, path)
        if q is None:
            raise HarnessError(f"{self.dir}: {path} is quantized but config.json has no quantization block")
        out = mx.dequantize(mx.array(w), mx.array(s), None if b is None else mx.array(b),
                            group_size=q["group_size"], bits=q["bits"], mode=q["mode"])
        return out if self.dtype is None else out.astype(self.dtype)

    def _load_block(self, i: int, lazy: dict):
        """Put block i's weights (popped from `lazy`) into the skeleton, cast and
        (simulated) dequantized. Returns what `_drop_block` needs to restore it."""
        import mlx.core as mx
        import mlx.nn as nn
        from mlx.utils import tree_flatten, tree_unflatten
        from mlx_lm.models.switch_layers import QuantizedSwitchLinear
        from mlx_lm.utils import dequantize_model

        layer = self.inner.layers[i]
        skeleton = layer.parameters()  # the unevaluated placeholders, restored afterwards
        prefix = self.layer_prefix[i]
        mine = [(k[len(prefix):], lazy.pop(k)) for k in [k for k in lazy if k.startswith(prefix)]]
        if not mine:
            raise HarnessError(f"{self.dir}: no weights for block {i} ({prefix}*)")
        layer.update(tree_unflatten(mine), strict=False)
        del mine
        if self.dtype is not None:
            layer.set_dtype(self.dtype)  # floats and scales, like the resident load (exact)
        quantized = [(n, m) for n, m in layer.named_modules()
                     if isinstance(m, (nn.QuantizedLinear, QuantizedSwitchLinear, nn.QuantizedEmbedding))]
        for _, p in tree_flatten(layer.parameters()):  # tensor by tensor: peak ~ one block
            mx.eval(p)
        if self.exec_mode == "simulated" and quantized:
            dequantize_model(layer)
            for _, p in tree_flatten(layer.parameters()):
                mx.eval(p)
            flat = dict(tree_flatten(skeleton))
            for name, m in quantized:  # the packed weights are not needed while it runs
                sub = [(k[len(name) + 1:], v) for k, v in flat.items() if k.startswith(name + ".")]
                m.update(tree_unflatten(sub), strict=False)
        return layer, skeleton, quantized

    @staticmethod
    def _drop_block(state) -> None:
        import mlx.core as mx
        from mlx.utils import tree_unflatten

        layer, skeleton, quantized = state
        if quantized:
            layer.update_modules(tree_unflatten(quantized))
        layer.update(skeleton, strict=False)
        mx.clear_cache()

    # -- the forward

    def _activations(self, shape: tuple, workdir: Path):
        if int(np.prod(shape)) * 4 <= self.act_budget:
            return np.empty(shape, dtype=np.float32)
        return np.memmap(workdir / "activations.f32", dtype=np.float32, mode="w+", shape=shape)

    def _embed(self, tokens: np.ndarray) -> np.ndarray:
        """Embedding rows of the windows' tokens: only those rows are read from disk."""
        import mlx.core as mx

        uniq, inverse = np.unique(tokens, return_inverse=True)
        rows = np.array(self._float_rows(self.embed_path, uniq).astype(mx.float32))
        return rows[inverse.reshape(tokens.shape)]

    def logits(self, tokens: np.ndarray, batches: list, progress: bool = False, desc: str = "streamed") \
            -> Iterator[tuple[int, np.ndarray]]:
        """(row of `tokens`, fp32 logits (T, V) as a writable numpy array) for every window
        in `batches` (lists of row indices: each batch is one forward call per block)."""
        import mlx.core as mx
        from mlx_lm.models.base import create_attention_mask
        from tqdm import tqdm

        rows = sorted({r for b in batches for r in b})
        pos = {r: j for j, r in enumerate(rows)}
        tokens = np.asarray(tokens)
        n, T = len(rows), tokens.shape[1]
        hidden = self.config["hidden_size"]
        n_blocks = len(self.inner.layers)
        with tempfile.TemporaryDirectory(prefix="harness-streamed-") as workdir:
            h = self._activations((n, T, hidden), Path(workdir))
            h[:] = self._embed(tokens[rows])
            lazy = {}
            for f in sorted({t.file for t in self.index.values()}):
                lazy.update(mx.load(str(f)))  # lazy: a block's tensors are read when evaluated
            if hasattr(self.model, "sanitize"):
                lazy = self.model.sanitize(lazy)
            bar = tqdm(total=n_blocks + 1, desc=desc, unit="block", disable=not progress)
            for i in range(n_blocks):
                state = self._load_block(i, lazy)
                layer = state[0]
                for batch in batches:
                    idx = [pos[r] for r in batch]
                    x = mx.array(h[idx]) if self.dtype is None else mx.array(h[idx]).astype(self.dtype)
                    y = layer(x, create_attention_mask(x, None), None)
                    mx.eval(y)
                    h[idx] = np.array(y.astype(mx.float32))
                    del x, y
                self._drop_block(state)
                del state, layer
                bar.update(1)
            del lazy
            norm_w = mx.array(read_rows(self.index[f"{self.norm_path}.weight"]))
            if self.dtype is not None:
                norm_w = norm_w.astype(self.dtype)
            eps = getattr(self.inner.norm, "eps", 1e-6)
            vocab = self.index[f"{self.head_path}.weight"].shape[0]
            step = max(1024, HEAD_CHUNK_BYTES // (4 * hidden))
            for batch in batches:
                for r in batch:
                    x = mx.array(h[pos[r]])
                    x = mx.fast.rms_norm(x if self.dtype is None else x.astype(self.dtype), norm_w, eps)
                    out = np.empty((T, vocab), dtype=np.float32)
                    for a in range(0, vocab, step):
                        w = self._float_rows(self.head_path, slice(a, min(a + step, vocab)))
                        part = (x @ w.T).astype(mx.float32)
                        mx.eval(part)
                        out[:, a:a + w.shape[0]] = np.array(part)
                        del w, part
                    yield r, out
            bar.update(1)
            bar.close()
            del h
