"""Plan: the per-tensor quantization decision a recipe makes, before any build.

A Plan lists every quantizable module of the model (anything with `to_quantized`:
Linear, Embedding, SwitchLinear) with either (bits, group_size, mode) or float.
It is JSON-serialisable, validated against the model before building, and
prices itself under two bits-per-weight definitions:

* `bpw` (oQ definition): quantized bits plus per-group scale/bias overhead, over
  the quantizable weights only. Affine groups carry a 16-bit scale and a 16-bit
  bias (32 bits / group), mxfp4/mxfp8 one 8-bit scale per 32, nvfp4 one 8-bit
  scale per 16. Float-kept quantizable weights count 16 bits. This is the number
  model cards quote (uniform 4-bit g64 = 4.5).
* `bpw_mlx`: mlx-lm's `compute_bits_per_weight`: every stored byte (norms,
  scales in the model's dtype, float tensors at their dtype) over every
  parameter. Computed analytically here and checked against mlx-lm on the built
  model in the tests.
"""

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Optional

from harness.errors import HarnessError

MODES = {
    # mode: (allowed bits, allowed group sizes or None for any dividing size, scale bits, has bias)
    "affine": ({2, 3, 4, 5, 6, 8}, {32, 64, 128}, 16, True),
    "mxfp4": ({4}, {32}, 8, False),
    "nvfp4": ({4}, {16}, 8, False),
    "mxfp8": ({8}, {32}, 8, False),
}
MODE_DEFAULT_GROUP = {"affine": 64, "mxfp4": 32, "nvfp4": 16, "mxfp8": 32}
FLOAT_BITS = 16  # float-kept quantizable weights are priced as bf16 in the oQ definition

_ROUTER_RE = re.compile(r"(^|\.)(gate|router|shared_expert_gate)$")
_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")


@dataclass
class Tensor:
    """One quantizable module and the decision for it."""

    path: str
    kind: str  # module class name: Linear, Embedding, SwitchLinear, ...
    shape: list  # logical (unquantized) weight shape
    bits: Optional[int] = None  # None = keep float
    group_size: Optional[int] = None
    mode: Optional[str] = None
    reason: str = ""  # why this decision (shown by `harness plan`)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def quantized(self) -> bool:
        return self.bits is not None

    @property
    def layer(self) -> Optional[int]:
        m = _LAYER_RE.search(self.path)
        return int(m.group(1)) if m else None

    def params(self) -> dict:
        return {"group_size": self.group_size, "bits": self.bits, "mode": self.mode}

    def stored_bits(self) -> float:
        """Bits under the oQ definition (weights + per-group overhead)."""
        if not self.quantized:
            return FLOAT_BITS * self.numel
        _, _, scale_bits, has_bias = MODES[self.mode]
        groups = self.numel // self.group_size
        return self.bits * self.numel + groups * scale_bits * (2 if has_bias else 1)


@dataclass
class Plan:
    recipe: str
    params: dict
    tensors: list  # list[Tensor]
    other_params: int = 0  # non-quantizable parameters (norms, biases, router bias ...)
    dtype_bytes: int = 2  # bytes per element of the artifact's float dtype (scales, float weights)
    summary: dict = field(default_factory=dict)  # recipe-specific: boosts, promoted layers ...

    # --- pricing -----------------------------------------------------------
    @property
    def bpw(self) -> float:
        total = sum(t.numel for t in self.tensors)
        return sum(t.stored_bits() for t in self.tensors) / max(total, 1)

    @property
    def bpw_mlx(self) -> float:
        """mlx-lm's compute_bits_per_weight for the model this plan builds."""
        nbytes = self.other_params * self.dtype_bytes
        nparams = self.other_params
        for t in self.tensors:
            nparams += t.numel
            if not t.quantized:
                nbytes += t.numel * self.dtype_bytes
                continue
            _, _, _, has_bias = MODES[t.mode]
            groups = t.numel // t.group_size
            nbytes += t.numel * t.bits // 8
            if t.mode == "affine":
                nbytes += groups * self.dtype_bytes * (2 if has_bias else 1)
            else:
                nbytes += groups  # one uint8 scale per group
        return nbytes * 8 / max(nparams, 1)

    # --- decisions ---------------------------------------------------------
    def by_path(self) -> dict:
        return {t.path: t for t in self.tensors}

    def predicate(self):
        """A class_predicate for nn.quantize / mlx-lm: path -> dict params or False."""
        lookup = self.by_path()

        def predicate(path, module):
            t = lookup.get(path)
            return t.params() if t is not None and t.quantized else False

        return predicate

    def quantization_config(self) -> dict:
        """The config.json "quantization" block: a default plus an explicit entry
        for EVERY quantizable path (False for float) so mlx_lm.load never guesses."""
        quantized = [t for t in self.tensors if t.quantized]
        if quantized:
            # the most common setting becomes the top-level default
            counts = {}
            for t in quantized:
                key = (t.group_size, t.bits, t.mode)
                counts[key] = counts.get(key, 0) + t.numel
            gs, bits, mode = max(counts, key=counts.get)
        else:
            gs, bits, mode = 64, 4, "affine"
        config = {"group_size": gs, "bits": bits, "mode": mode}
        for t in self.tensors:
            config[t.path] = t.params() if t.quantized else False
        return config

    def widths(self) -> dict:
        """{label: numel share} of each (bits, mode) or float."""
        out = {}
        total = sum(t.numel for t in self.tensors) or 1
        for t in self.tensors:
            label = f"{t.bits}-bit {t.mode} g{t.group_size}" if t.quantized else "float"
            out[label] = out.get(label, 0) + t.numel / total
        return dict(sorted(out.items()))

    # --- serialisation -----------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["bpw"] = round(self.bpw, 4)
        d["bpw_mlx"] = round(self.bpw_mlx, 4)
        d["format"] = "harness.plan/1"
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        if d.get("format") != "harness.plan/1":
            raise HarnessError(
                f"not a harness plan (format={d.get('format')!r}); write plans with `harness plan --out`"
            )
        tensors = [Tensor(**t) for t in d["tensors"]]
        keys = ("recipe", "params", "other_params", "dtype_bytes", "summary")
        return cls(tensors=tensors, **{k: d[k] for k in keys if k in d})

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        try:
            return cls.from_dict(json.loads(text))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise HarnessError(f"malformed plan JSON ({e}); regenerate it with `harness plan --out`")

    # --- validation --------------------------------------------------------
    def validate(self, modules: dict) -> None:
        """Reject a plan the build would fail on or silently change.

        `modules` maps path -> Tensor describing the model (from `describe_model`).
        """
        for t in self.tensors:
            if t.path not in modules:
                parent = t.path.rsplit(".", 1)[0]
                if parent in modules and modules[parent].kind.endswith("SwitchLinear"):
                    raise HarnessError(
                        f"plan gives {t.path} its own width, but {parent} is one fused "
                        "SwitchLinear (one width for all experts of a projection per layer); "
                        "give the whole projection one setting"
                    )
                raise HarnessError(
                    f"plan names {t.path}, which is not a quantizable module of this model; "
                    "regenerate the plan for this model"
                )
            if not t.quantized:
                continue
            if t.mode not in MODES:
                raise HarnessError(
                    f"{t.path}: unknown quantization mode {t.mode!r}; use one of {', '.join(MODES)}"
                )
            allowed_bits, allowed_groups, _, _ = MODES[t.mode]
            if t.bits not in allowed_bits:
                raise HarnessError(
                    f"{t.path}: {t.bits}-bit is not valid for mode {t.mode}; "
                    f"valid widths: {sorted(allowed_bits)}"
                )
            if t.group_size not in allowed_groups:
                raise HarnessError(
                    f"{t.path}: group size {t.group_size} is not valid for mode {t.mode}; "
                    f"use {' or '.join(map(str, sorted(allowed_groups)))}"
                )
            in_dim = t.shape[-1]
            if in_dim % t.group_size:
                raise HarnessError(
                    f"{t.path}: group size {t.group_size} does not divide its input dimension "
                    f"{in_dim}; pick a group size that divides it (e.g. "
                    f"{_dividing_group(in_dim)}) or keep this tensor float"
                )


def _dividing_group(in_dim: int) -> str:
    ok = [g for g in (128, 64, 32) if in_dim % g == 0]
    return str(ok[0]) if ok else "keep float"


def is_router(path: str) -> bool:
    return bool(_ROUTER_RE.search(path))


def describe_model(model) -> tuple:
    """(modules, other_params, dtype_bytes) for a loaded (lazy ok) float model.

    modules: {path: Tensor} for every quantizable module, in model order.
    """
    import mlx.core as mx
    from mlx.utils import tree_flatten

    modules = {}
    quantizable_params = set()
    for path, module in model.named_modules():
        if not hasattr(module, "to_quantized") or "weight" not in module:
            continue
        if hasattr(module, "bits"):  # already quantized
            raise HarnessError(
                f"{path} is already quantized; plans start from a float model "
                "(pass the unquantized source, or the `float` recipe to evaluate it as is)"
            )
        modules[path] = Tensor(path=path, kind=type(module).__name__, shape=list(module.weight.shape))
        quantizable_params.add(f"{path}.weight" if path else "weight")
    order = sorted(modules)  # named_modules() order is not stable across versions
    modules = {p: modules[p] for p in order}

    other_params = 0
    float_dtype = mx.float32
    for name, arr in tree_flatten(model.parameters()):
        if name in quantizable_params:
            float_dtype = arr.dtype
            continue
        other_params += arr.size
    return modules, other_params, float_dtype.size


def diff_plans(a: "Plan", b: "Plan") -> list:
    """Rows (path, a-setting, b-setting) where two plans differ."""

    def label(t):
        if t is None:
            return "-"
        return f"{t.bits}b {t.mode} g{t.group_size}" if t.quantized else "float"

    pa, pb = a.by_path(), b.by_path()
    rows = []
    for path in sorted(set(pa) | set(pb)):
        la, lb = label(pa.get(path)), label(pb.get(path))
        if la != lb:
            rows.append((path, la, lb))
    return rows
