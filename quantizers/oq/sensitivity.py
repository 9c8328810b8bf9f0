"""oQ's per-block sensitivity pass (shared by every oQ variant).

Per decoder block, on the float output of the previous block (teacher forcing, so
errors do not accumulate): `out_f = block(x)`; quantize-dequantize the block's
weights at the widths the plan would give them (`widths(path, module)`);
`out_q = block(x)`; `s = mean((out_f - out_q)^2) / max(mean(out_f^2), 1e-10)`.

Cost and memory, so it runs at the users' scale:
* one block resident: with `weights_dir` the block's weights are fresh lazy copies
  read from the model's safetensors, so the loaded model is never materialised, and
  only the embedding rows of the calibration tokens are read (a 200k x 3072
  vocabulary is 2.4 GB in fp32);
  the next block's input is the float output of this one (kept in memory);
* MoE: mlx-lm's SwitchLinear runs `gather_mm`, which has no BLAS path on CPU;
  during the pass each expert instead multiplies only the tokens routed to it
  (sorted by expert, one BLAS matmul per expert), so a block costs the work it
  really does (top-k of E experts), and the experts are quantize-dequantized once
  per block; a MoE block's batches hold `batch_tokens / top_k` tokens, so its
  activations take no more room than a dense block's;
* resumable: with `partial` the scores so far and the next block's input are
  saved after every block; a killed pass continues from the last finished block.

A quantized proxy (`measure_proxy_sensitivity`, omlx's route for models larger
than memory) perturbs each quantized layer of a block by re-quantizing it at one
bit less than it is stored, as omlx does, and measures the same relative MSE.
"""

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from harness.cache import atomic_file, atomic_write_text
from harness.errors import HarnessError
from harness.plan import is_router

SENSITIVITY_FORMAT = "harness.oq-sensitivity/1"
PARTIAL_FORMAT = "harness.oq-sensitivity-partial/1"
PROXY_VALID_BITS = (2, 3, 4, 5, 6, 8)


class _Captured(Exception):
    """Raised by the stand-in for block 0 to stop the forward once its inputs are known."""


class _StandIn:
    """Takes block 0's place for one forward: records its inputs, then stops the model.
    Attribute reads go to the real block (models look at e.g. `layer.use_sliding`)."""

    def __init__(self, layer):
        self._layer = layer

    def __getattr__(self, name):
        return getattr(self._layer, name)

    def __call__(self, x, *args, **kwargs):
        raise _Captured(x, args, kwargs)


def qdq(w, bits: int, group_size: int, mode: str = "affine"):
    import mlx.core as mx

    wq, scales, *rest = mx.quantize(w, group_size=group_size, bits=bits, mode=mode)
    return mx.dequantize(wq, scales, rest[0] if rest else None, group_size=group_size, bits=bits, mode=mode)


def _module_at(model, path: str):
    """The object at dotted `path` ("model.layers", "model.layers.0"); "" is the model."""
    obj = model
    for part in path.split(".") if path else []:
        obj = obj[int(part)] if isinstance(obj, list) else getattr(obj, part)
    return obj


def decoder_layers(model) -> tuple:
    """(layers list, dotted path of the list) of an mlx-lm model."""
    layers = getattr(model, "layers", None)
    if not layers:
        raise HarnessError(
            f"{type(model).__name__} exposes no decoder `layers`; oQ needs an mlx-lm decoder model "
            "(use uniformN or a tier file for this one)"
        )
    for path, module in model.named_modules():
        if module is layers[0]:
            prefix = path.rsplit(".", 1)[0]
            return _module_at(model, prefix), prefix  # `model.layers` may be a slice (pipeline models)
    raise HarnessError(f"cannot locate the decoder layers of {type(model).__name__}; use uniformN")


def _disk_weights(model, weights_dir: Optional[Path]) -> Optional[dict]:
    """Fresh lazy arrays for every parameter, read from the model's safetensors
    (None if the files do not match the model). Computing with these leaves the
    loaded model lazy, so only the block being measured is ever in memory."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    if weights_dir is None:
        return None
    files = sorted(Path(weights_dir).glob("model*.safetensors"))
    if not files:
        return None
    weights = {}
    for f in files:
        weights.update(mx.load(str(f)))
    if hasattr(model, "sanitize"):
        weights = model.sanitize(weights)
    own = dict(tree_flatten(model.parameters()))
    if weights.keys() != own.keys() or any(weights[k].shape != own[k].shape for k in own):
        return None
    return weights


def _working_copy(own: list, fresh: Optional[dict], prefix: str) -> list:
    """fp32 arrays to compute with: fresh disk copies when streaming, else the model's own."""
    import mlx.core as mx

    out = []
    for name, arr in own:
        src = fresh.pop(prefix + name) if fresh is not None else arr
        out.append((name, src.astype(mx.float32) if mx.issubdtype(src.dtype, mx.floating) else src))
    return out


def _token_embedding(model, prefix: str) -> Optional[tuple]:
    """(parent module, attribute, dotted path) of the float token embedding outside the
    decoder layers: the nn.Embedding with the most rows (position embeddings are smaller)."""
    import mlx.nn as nn

    found = [(path, m) for path, m in model.named_modules()
             if type(m) is nn.Embedding and not path.startswith(prefix + ".")]
    if not found:
        return None
    path = max(found, key=lambda pm: pm[1].weight.shape[0])[0]
    parent_path, _, attr = path.rpartition(".")
    return _module_at(model, parent_path), attr, path


def _rows_embedding(weights_dir: Path, path: str, fallback):
    """An embedding that reads only the rows it is asked for from the safetensors
    file (memmap), as fp32 (bf16 widens exactly: equal to casting the whole matrix).
    Reading a 200k-row vocabulary in fp32 would otherwise be the pass's largest array."""
    import mlx.core as mx
    import mlx.nn as nn

    from harness.runtime.streamed import read_rows, tensor_index

    info = tensor_index(weights_dir).get(f"{path}.weight")
    if info is None or info.dtype not in ("BF16", "F16", "F32") or len(info.shape) != 2:
        return None

    class RowsEmbedding(nn.Module):
        def __call__(self, ids):
            uniq, inverse = np.unique(np.array(ids), return_inverse=True)
            rows = mx.array(read_rows(info, uniq))
            return rows[mx.array(inverse.reshape(ids.shape).astype(np.int32))]

        def as_linear(self, x):  # tied heads are never reached: the pass stops at block 0
            return fallback.as_linear(x)

    return RowsEmbedding()


def _first_layer_inputs(model, layers, prefix, tokens, fresh, weights_dir=None):
    """(hidden states, extra args, kwargs) that the model passes to block 0."""
    from mlx.utils import tree_flatten, tree_unflatten

    own = [(k, v) for k, v in tree_flatten(model.parameters()) if not k.startswith(prefix + ".")]
    first = layers[0]
    layers[0] = _StandIn(first)
    model.update(tree_unflatten(_working_copy(own, fresh, "")))
    swapped = None
    if fresh is not None and weights_dir is not None:
        where = _token_embedding(model, prefix)
        rows = where and _rows_embedding(Path(weights_dir), where[2], where[0][where[1]])
        if rows is not None:
            swapped = (where[0], where[1], where[0][where[1]])
            where[0][where[1]] = rows
    try:
        model(tokens)
    except _Captured as c:
        x, args, kwargs = c.args
        return x, args, kwargs
    finally:
        layers[0] = first
        if swapped is not None:
            swapped[0][swapped[1]] = swapped[2]
        model.update(tree_unflatten(own))
    raise HarnessError(f"{type(model).__name__} never called its first decoder layer; oQ cannot measure it")


def _batch_slice(value, n: int, lo: int, hi: int):
    """Slice per-sample arrays (leading dim == n, ndim >= 3) of the captured block args."""
    import mlx.core as mx

    if isinstance(value, mx.array) and value.ndim >= 3 and value.shape[0] == n:
        return value[lo:hi]
    return value


# --- MoE: each expert computes only its routed tokens ------------------------------

def _per_expert_matmul(x, weight, indices, bias=None):
    """What `SwitchLinear` computes (x @ weight[indices].T), one BLAS matmul per expert
    over exactly the rows routed to it."""
    import mlx.core as mx

    xbatch = tuple(x.shape[:-2])
    batch = np.broadcast_shapes(xbatch, tuple(indices.shape))
    m, d = x.shape[-2:]
    idx = np.broadcast_to(np.array(indices), batch).reshape(-1)
    order = np.argsort(idx, kind="stable")
    counts = np.bincount(idx, minlength=weight.shape[0])
    # the row of x behind each (token, expert slot): one gather, no broadcast copy of x
    src = np.broadcast_to(np.arange(int(np.prod(xbatch)), dtype=np.int64).reshape(xbatch), batch).reshape(-1)
    xs = x.reshape(-1, m, d)[mx.array(src[order].astype(np.int32))]
    outs, start = [], 0
    for e, c in enumerate(counts):
        if c == 0:
            continue
        seg = xs[start:start + c].reshape(-1, d) @ weight[e].T
        if bias is not None:
            seg = seg + bias[e]
        mx.eval(seg)  # now: left lazy, every expert's weight copy (BLAS wants it contiguous) lives at once
        outs.append(seg.reshape(int(c), m, -1))
        start += c
    y = mx.concatenate(outs) if len(outs) > 1 else outs[0]
    y = y[mx.array(np.argsort(order).astype(np.int32))]
    return y.reshape(*batch, m, y.shape[-1])


@contextmanager
def routed_expert_matmuls(enabled: bool = True):
    """Within the block, run float SwitchLinear layers expert by expert (see module doc)."""
    if not enabled:
        yield
        return
    from mlx_lm.models import switch_layers as sl

    original = sl.SwitchLinear.__call__

    def call(self, x, indices, sorted_indices=False):
        return _per_expert_matmul(x, self["weight"], indices, self["bias"] if "bias" in self else None)

    sl.SwitchLinear.__call__ = call
    try:
        yield
    finally:
        sl.SwitchLinear.__call__ = original


def _experts_per_token(layer) -> int:
    """Experts each token visits in this block (1 for a dense block). A MoE block's
    activations are top_k times a dense one's, so its batches are top_k times smaller:
    the pass's memory stays one block + about `batch_tokens` rows of activations."""
    for _, module in layer.named_modules():
        for attr in ("num_experts_per_tok", "top_k", "num_selected_experts"):
            k = getattr(module, attr, None)
            if isinstance(k, int) and k > 0:
                return k
    return 1


# --- widths used while measuring -------------------------------------------------------

Widths = Callable[[str, object], Optional[tuple]]  # (path, module) -> (bits, group_size, mode) or None


def uniform_widths(bits: int, group_size: int, model_predicate=None) -> Widths:
    """Every quantizable weight at `bits` (router float; the model's own predicate honoured)."""

    def widths(path, module):
        if is_router(path):
            return None
        own = model_predicate(path, module) if model_predicate else True
        if own is False:
            return None
        if isinstance(own, dict):
            return own.get("bits", bits), own.get("group_size", group_size), own.get("mode", "affine")
        return bits, group_size, "affine"

    return widths


def _targets(layer, layer_path: str, widths: Widths) -> list:
    out = []
    for name, module in layer.named_modules():
        if not hasattr(module, "to_quantized") or "weight" not in module:
            continue
        w = widths(f"{layer_path}.{name}" if name else layer_path, module)
        if w is not None and module.weight.shape[-1] % w[1] == 0:
            out.append((module, *w))
    return out


# --- sensitivity files ----------------------------------------------------------------

def save_sensitivity(path: Path, scores: dict, meta: dict) -> None:
    doc = {"format": SENSITIVITY_FORMAT, **meta, "sensitivity": {str(k): v for k, v in sorted(scores.items())}}
    atomic_write_text(Path(path), json.dumps(doc, indent=1, sort_keys=True))


def load_sensitivity(path, num_layers: Optional[int] = None) -> tuple:
    """(scores {layer: s}, metadata) from a sensitivity.json."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise HarnessError(f"cannot read sensitivity file {path} ({e.strerror}); check the path")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HarnessError(f"sensitivity file {path} is not valid JSON ({e}); regenerate it with `harness plan`")
    if (not isinstance(doc, dict) or doc.get("format") != SENSITIVITY_FORMAT
            or not isinstance(doc.get("sensitivity"), dict)):
        raise HarnessError(f"{path} is not an oQ sensitivity file; use one written by `harness plan --recipe oqN`")
    try:
        scores = {int(k): float(v) for k, v in doc["sensitivity"].items()}
    except (TypeError, ValueError):
        raise HarnessError(f"{path}: sensitivity entries must be layer index -> number; regenerate the file")
    if num_layers is not None and sorted(scores) != list(range(num_layers)):
        raise HarnessError(
            f"{path} has sensitivities for {len(scores)} layers but the model has {num_layers}; "
            "use a file measured on this model"
        )
    if any(not np.isfinite(v) or v < 0 for v in scores.values()):
        raise HarnessError(f"{path}: sensitivities must be finite and >= 0; regenerate the file")
    return scores, {k: v for k, v in doc.items() if k not in ("sensitivity", "format")}


# --- partial results (resume) -------------------------------------------------------------

def _load_partial(partial: Optional[Path], key: str):
    import mlx.core as mx

    if partial is None or not partial.is_file() or not partial.with_suffix(".npy").is_file():
        return {}, None
    try:
        doc = json.loads(partial.read_text())
        if doc.get("format") != PARTIAL_FORMAT or doc.get("key") != key:
            return {}, None
        x = mx.array(np.load(partial.with_suffix(".npy")))
    except (OSError, ValueError):
        return {}, None  # unreadable: measure from the start
    return {int(k): float(v) for k, v in doc["sensitivity"].items()}, x


def _save_partial(partial: Path, key: str, scores: dict, x) -> None:
    with atomic_file(partial.with_suffix(".npy"), durable=False) as fh:
        np.save(fh, np.array(x))
    atomic_write_text(partial, json.dumps({"format": PARTIAL_FORMAT, "key": key,
                                           "sensitivity": {str(k): v for k, v in scores.items()}}))


# --- the pass ---------------------------------------------------------------------------

def measure_sensitivity(model, tokens, bits: int, group_size: int = 64, weights_dir: Optional[Path] = None,
                        batch_tokens: int = 4096, progress: bool = True, widths: Optional[Widths] = None,
                        routed_experts: bool = True, partial: Optional[Path] = None, partial_key: str = "") -> dict:
    """{block index: relative MSE of the block output} when the block's weights are
    quantize-dequantized at `widths` (default: `bits`/`group_size` everywhere but the router).

    `tokens` is [samples, seq_len]. With `weights_dir` (the model's own directory)
    the weights are streamed block by block from disk; the model is left exactly as
    it was (same arrays, still lazy). Every block gets the extra arguments the model
    passed to block 0 (mask, cache=None): exact for models with one mask kind, and
    for sliding-window layers as long as seq_len <= the window.
    """
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten
    from tqdm import tqdm

    widths = widths or uniform_widths(bits, group_size, getattr(model, "quant_predicate", None))
    layers, prefix = decoder_layers(model)
    fresh = _disk_weights(model, weights_dir)
    x, args, kwargs = _first_layer_inputs(model, layers, prefix, mx.array(np.asarray(tokens, dtype=np.int32)), fresh,
                                          weights_dir)
    scores, resumed = _load_partial(partial, partial_key)
    start = len(scores) if resumed is not None and sorted(scores) == list(range(len(scores))) else 0
    if start:
        x = resumed
    else:
        scores = {}
    x = x.astype(mx.float32)
    mx.eval(x)
    n = x.shape[0]

    def run(layer, inp, lo, hi):
        a = [_batch_slice(v, n, lo, hi) for v in args]
        kw = {k: _batch_slice(v, n, lo, hi) for k, v in kwargs.items()}
        return layer(inp[lo:hi], *a, **kw)

    bar = tqdm(range(len(layers)), initial=start, desc=f"oQ sensitivity ({bits}-bit g{group_size})",
               unit="block", disable=not progress, file=sys.stderr)
    if start:
        bar.set_postfix_str(f"resumed at block {start}")
        if fresh is not None:  # blocks measured before the kill are not read again
            depth = len(prefix.split("."))
            for k in [k for k in fresh if k.startswith(prefix + ".") and int(k.split(".")[depth]) < start]:
                fresh.pop(k)
    for i in range(start, len(layers)):
        layer = layers[i]
        own = tree_flatten(layer.parameters())
        working = _working_copy(own, fresh, f"{prefix}.{i}.")
        for _, arr in working:  # one tensor at a time: the bf16 source and its fp32 copy never all coexist
            mx.eval(arr)
        layer.update(tree_unflatten(working))
        del working
        step = max(1, batch_tokens // (_experts_per_token(layer) * x.shape[1]))
        try:
            with routed_expert_matmuls(routed_experts):
                out_f = []
                for lo in range(0, n, step):
                    out_f.append(run(layer, x, lo, min(lo + step, n)))
                    mx.eval(out_f[-1])
                for module, b, g, mode in _targets(layer, f"{prefix}.{i}", widths):
                    module.weight = qdq(module.weight, b, g, mode)
                    mx.eval(module.weight)  # once per block, shared by every batch
                err = ref = mx.array(0.0)
                for j, lo in enumerate(range(0, n, step)):
                    out_q = run(layer, x, lo, min(lo + step, n))
                    err = err + ((out_q - out_f[j]) ** 2).sum()
                    ref = ref + (out_f[j] ** 2).sum()
                    mx.eval(err, ref)
        finally:
            layer.update(tree_unflatten(own))  # the model's own (lazy, float) arrays, untouched
        numel = sum(o.size for o in out_f)
        s = (err.item() / numel) / max(ref.item() / numel, 1e-10)
        scores[i] = float(f"{s:.6g}")  # rounded: plans must not hinge on float noise
        x = mx.concatenate(out_f) if len(out_f) > 1 else out_f[0]
        mx.eval(x)
        del out_f
        if partial is not None and i + 1 < len(layers):
            _save_partial(partial, partial_key, scores, x)
        bar.update(1)
        bar.set_postfix(s=f"{s:.2e}")
    bar.close()
    if partial is not None:
        for f in (partial, partial.with_suffix(".npy")):
            f.unlink(missing_ok=True)
    return scores


def measure_proxy_sensitivity(proxy, tokens, batch_tokens: int = 4096, progress: bool = True) -> dict:
    """Sensitivity on a quantized proxy model (omlx's `--sensitivity-model`): per block,
    every quantized layer is re-quantized at one bit less than stored (affine, same
    group size; 8-bit layers have no 7-bit neighbour and are left as they are)."""
    import mlx.core as mx
    from tqdm import tqdm

    layers, prefix = decoder_layers(proxy)
    if not any(hasattr(m, "scales") for _, m in layers[0].named_modules()):
        raise HarnessError("--sensitivity-model must be a quantized mlx-lm model (a 4-bit proxy, as omlx uses); "
                           "for a float model measure on it directly (drop --sensitivity-model)")
    x, args, kwargs = _first_layer_inputs(proxy, layers, prefix, mx.array(np.asarray(tokens, dtype=np.int32)), None)
    x = x.astype(mx.float32)
    n = x.shape[0]
    step = max(1, batch_tokens // x.shape[1])

    def run(layer, lo, hi):
        a = [_batch_slice(v, n, lo, hi) for v in args]
        kw = {k: _batch_slice(v, n, lo, hi) for k, v in kwargs.items()}
        return layer(x[lo:hi], *a, **kw).astype(mx.float32)

    scores = {}
    for i, layer in enumerate(tqdm(layers, desc="oQ sensitivity (proxy, bits-1)", unit="block",
                                   disable=not progress, file=sys.stderr)):
        out_f = []
        for lo in range(0, n, step):
            out_f.append(run(layer, lo, min(lo + step, n)))
            mx.eval(out_f[-1])
        saved = []
        for _, m in layer.named_modules():
            if not hasattr(m, "scales") or getattr(m, "bits", None) is None or m.bits - 1 not in PROXY_VALID_BITS:
                continue
            mode = getattr(m, "mode", "affine")
            biases = m.get("biases") if hasattr(m, "get") and "biases" in m else None
            w = mx.dequantize(m.weight, m.scales, biases, group_size=m.group_size, bits=m.bits, mode=mode)
            saved.append((m, m.weight, m.scales, biases, m.bits, mode))
            qw, sc, *rest = mx.quantize(w, group_size=m.group_size, bits=m.bits - 1, mode="affine")
            m.weight, m.scales, m.bits, m.mode = qw, sc, m.bits - 1, "affine"
            m.biases = rest[0] if rest else None
        try:
            err = ref = mx.array(0.0)
            for j, lo in enumerate(range(0, n, step)):
                out_q = run(layer, lo, min(lo + step, n))
                err = err + ((out_q - out_f[j]) ** 2).sum()
                ref = ref + (out_f[j] ** 2).sum()
                mx.eval(err, ref)
        finally:
            for m, w, sc, b, bits, mode in saved:
                m.weight, m.scales, m.bits, m.mode = w, sc, bits, mode
                if b is not None:
                    m.biases = b
                elif "biases" in m:
                    del m["biases"]
        numel = sum(o.size for o in out_f)
        scores[i] = float(f"{(err.item() / numel) / max(ref.item() / numel, 1e-10):.6g}")
        x = mx.concatenate(out_f) if len(out_f) > 1 else out_f[0]
        mx.eval(x)
    return scores
