"""Evaluate a quant somebody already made: `--recipe path/to/quant-dir` or `--recipe hub:org/name`.

The quant is an mlx-lm directory (an omlx oQ4, an lmstudio 4-bit, a tier build, an
`mlx_lm.convert -q` output). Its plan is read back, not recomputed: mlx-lm's loader
quantizes a module with the config.json "quantization" block's per-path entry when
there is one (a dict, or false for float) and otherwise with the block's global
bits/group_size/mode exactly when the shards hold `<path>.scales`, so that is what
we read, and every quantized tensor's stored shapes are checked against the width
the config claims. `harness build` links the directory's files into the artifact
(no requantization; provenance names the directory and its fingerprint), and every
suite evaluates it against the float reference given by `--model`.

Before any of that, the quant must have been made from that reference: same tensor
names and (logical) shapes, same vocabulary, and its smallest quantized tensors must
dequantize to within quantization error of the reference's weights (a quant of
another checkpoint with the same architecture is refused too).
"""

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError
from harness.plan import MODES, Plan, Tensor
from harness.recipe import PlanContext, Recipe

HUB_PREFIX = "hub:"
# Relative error of dequantized vs reference weights: 2-bit g64 affine is ~0.3-0.45 on
# real and random weights, an unrelated tensor of the same shape ~1.4.
MAX_WEIGHT_ERROR = 0.7
_SAFETENSORS_DTYPE_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8}


def is_existing_spec(name: str) -> bool:
    """`hub:org/name`, or a directory holding an mlx-lm config.json (never a recipe name)."""
    if name.startswith(HUB_PREFIX):
        return True
    p = Path(name).expanduser()
    return p.is_dir() and (p / "config.json").is_file()


def weight_files(path: Path) -> list:
    """The shards mlx_lm.load reads (model*.safetensors), or every .safetensors file."""
    return sorted(path.glob("model*.safetensors")) or sorted(path.glob("*.safetensors"))


def read_header(path: Path) -> dict:
    """{tensor name: (dtype, shape)} of every safetensors shard in `path` (headers only)."""
    out = {}
    files = weight_files(path)
    if not files:
        raise HarnessError(f"{path} holds no .safetensors weights; pass a complete mlx-lm model directory")
    for f in files:
        try:
            with open(f, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(n))
        except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise HarnessError(f"{f} is not a readable safetensors file ({e}); re-download the quant")
        for name, info in header.items():
            if name != "__metadata__":
                out[name] = (info["dtype"], list(info["shape"]))
    return out


def quantization_block(config: dict, spec: str) -> dict:
    q = config.get("quantization") or config.get("quantization_config")
    if isinstance(q, dict) and q.get("quant_method"):  # GPTQ, AWQ, fp8 ... : not what mlx_lm.load reads
        raise HarnessError(f"{spec} is a {q['quant_method']} checkpoint, not an mlx-lm quant; convert it with "
                           "mlx_lm.convert first, or pass a float model as --model")
    if not isinstance(q, dict) or "bits" not in q or "group_size" not in q:
        raise HarnessError(f"{spec} is not an mlx-lm quantized model (its config.json has no \"quantization\" "
                           "block with bits/group_size); pass a float model as --model instead")
    return q


@dataclass
class ExistingQuant(Recipe):
    spec: str
    path: Path
    name: str
    description = "an existing mlx-lm quantized model, evaluated as is (plan read back from config.json)"

    @classmethod
    def from_spec(cls, spec: str, taken=()) -> "ExistingQuant":
        from harness.sources import resolve_model

        if spec.startswith(HUB_PREFIX):
            repo = spec[len(HUB_PREFIX):]
            if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
                raise HarnessError(f"{spec!r}: a hub quant is hub:org/name (e.g. hub:mlx-community/Qwen3-4B-4bit)")
            path = resolve_model(repo)
        else:
            path = Path(spec).expanduser().resolve()
        try:
            config = json.loads((path / "config.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise HarnessError(f"cannot read {path}/config.json ({e}); pass an mlx-lm model directory")
        quantization_block(config, spec)
        name = re.sub(r"[^\w.-]+", "_", path.name) or "existing"
        if name in taken:  # never shadow an installed recipe's results directory
            name += "-existing"
        return cls(spec=spec, path=path, name=name)

    @property
    def prebuilt_dir(self) -> Path:
        """`harness build` links these files instead of quantizing."""
        return self.path

    @property
    def params(self) -> dict:
        from harness.sources import fingerprint

        return {"existing": self.spec, "fingerprint": fingerprint(self.path)}

    def plan(self, ctx: PlanContext) -> Plan:
        config = json.loads((self.path / "config.json").read_text())
        q = quantization_block(config, self.spec)
        header = read_header(self.path)
        modules, other_params, _ = ctx.describe()
        default = {"bits": q["bits"], "group_size": q["group_size"], "mode": q.get("mode", "affine")}
        tensors, overrides, scale_dtype = [], 0, None
        for path, info in modules.items():
            t = Tensor(path=path, kind=info.kind, shape=list(info.shape))
            own = q.get(path)
            if own is False:
                t.reason = "config.json: false (float)"
            elif isinstance(own, dict) or f"{path}.scales" in header:
                setting = {**default, **own} if isinstance(own, dict) else default
                t.bits, t.group_size, t.mode = setting["bits"], setting["group_size"], setting.get("mode", "affine")
                overrides += isinstance(own, dict) and setting != default
                t.reason = "config.json: per-path" if isinstance(own, dict) else "config.json: default"
                self._check_stored(t, header)
                scale_dtype = scale_dtype or header[f"{path}.scales"][0]
            else:
                t.reason = "stored float (no scales)"
            tensors.append(t)
        check_same_source(ctx, self, header, tensors)
        plan = Plan(recipe=self.name, params=self.params, tensors=tensors, other_params=other_params,
                    dtype_bytes=self._float_bytes(header, tensors, scale_dtype))
        plan.summary = {
            "existing_quant": self.spec,
            "config_default": f"{default['bits']}-bit {default['mode']} g{default['group_size']}",
            "per_path_overrides": overrides,
            "float_paths": sum(not t.quantized for t in tensors),
        }
        return plan

    def _check_stored(self, t: Tensor, header: dict) -> None:
        """The packed weight and scales must hold exactly the width the config claims."""
        w, s = header.get(f"{t.path}.weight"), header.get(f"{t.path}.scales")
        if t.mode not in MODES or w is None or s is None:
            raise HarnessError(f"{self.spec}: {t.path} is quantized in config.json but its stored tensors are "
                               "missing or its mode is unknown; the quant is incomplete: re-download it")
        in_dim = t.shape[-1]
        if w[1][:-1] != t.shape[:-1] or w[1][-1] * 32 != in_dim * t.bits or s[1][-1] * t.group_size != in_dim:
            raise HarnessError(
                f"{self.spec} was not made from this --model, or its config.json lies: {t.path} is stored as "
                f"{w[1]} (scales {s[1]}), not {t.bits}-bit g{t.group_size} of the reference's {t.shape}; "
                "pass the quant's own float source as --model")

    @staticmethod
    def _float_bytes(header: dict, tensors: list, scale_dtype) -> int:
        if scale_dtype in _SAFETENSORS_DTYPE_BYTES:
            return _SAFETENSORS_DTYPE_BYTES[scale_dtype]
        floats = [header.get(f"{t.path}.weight") for t in tensors if not t.quantized]
        return next((_SAFETENSORS_DTYPE_BYTES.get(f[0], 2) for f in floats if f), 2)


def check_same_source(ctx: PlanContext, recipe: ExistingQuant, header: dict, tensors: list) -> None:
    """Refuse, in one line, a quant that was not made from the reference model."""
    from mlx.utils import tree_flatten

    spec = recipe.spec
    quantized = {t.path for t in tensors if t.quantized}
    stored = {n for n in header if not (n.rsplit(".", 1)[0] in quantized and n.endswith((".scales", ".biases")))}
    reference = dict(tree_flatten(ctx.model.parameters()))
    only_q, only_r = sorted(stored - set(reference)), sorted(set(reference) - stored)
    if only_q or only_r:
        example = (f"{only_q[0]!r} only in the quant" if only_q else "") + \
            (", " if only_q and only_r else "") + (f"{only_r[0]!r} only in the reference" if only_r else "")
        raise HarnessError(f"{spec} was not made from this --model: tensor names differ ({len(only_q) + len(only_r)}, "
                           f"e.g. {example}); pass the quant's own float source as --model")
    for name, arr in reference.items():
        if name.rsplit(".", 1)[0] in quantized and name.endswith(".weight"):
            continue  # checked against the config's width in _check_stored
        if list(arr.shape) != header[name][1]:
            raise HarnessError(f"{spec} was not made from this --model: {name} is {header[name][1]} in the quant, "
                               f"{list(arr.shape)} in the reference; pass the quant's own float source as --model")
    _check_vocab(ctx, recipe)
    _check_weights(ctx, recipe, tensors, reference)


def _check_vocab(ctx: PlanContext, recipe: ExistingQuant) -> None:
    from mlx_lm.utils import load_tokenizer

    files = ("tokenizer.json", "tokenizer.model", "vocab.json")
    if not any((recipe.path / f).is_file() for f in files):
        return  # a weights-only quant: nothing to compare (the reference's tokenizer is used)
    try:
        theirs = load_tokenizer(recipe.path).get_vocab()
    except Exception as e:  # a broken tokenizer must not pass silently as "same vocabulary"
        raise HarnessError(f"cannot load the tokenizer of {recipe.spec} ({type(e).__name__}); re-download the quant")
    ours = ctx.load_tokenizer().get_vocab()
    if theirs != ours:
        diff = len(set(theirs.items()) ^ set(ours.items()))
        raise HarnessError(f"{recipe.spec} was not made from this --model: its vocabulary differs ({len(theirs)} vs "
                           f"{len(ours)} tokens, {diff} entries differ); pass the quant's own float source as --model")


def _check_weights(ctx: PlanContext, recipe: ExistingQuant, tensors: list, reference: dict) -> None:
    """The smallest quantized tensors must dequantize close to the reference's."""
    import mlx.core as mx

    stored = {}
    for f in weight_files(recipe.path):
        stored.update(mx.load(str(f)))  # lazy: only the tensors used below are read
    for t in sorted((t for t in tensors if t.quantized), key=lambda t: (t.numel, t.path))[:3]:
        biases = stored.get(f"{t.path}.biases")
        w = mx.dequantize(stored[f"{t.path}.weight"], stored[f"{t.path}.scales"], biases,
                          group_size=t.group_size, bits=t.bits, mode=t.mode).astype(mx.float32)
        ref = reference[f"{t.path}.weight"].astype(mx.float32)
        err = (mx.linalg.norm((w - ref).flatten()) / mx.maximum(mx.linalg.norm(ref.flatten()), 1e-12)).item()
        if err > MAX_WEIGHT_ERROR:
            raise HarnessError(
                f"{recipe.spec} was not made from this --model: {t.path} dequantizes {err:.2f} away from the "
                f"reference's weights (relative; a {t.bits}-bit quant of it would be < {MAX_WEIGHT_ERROR}); "
                "pass the quant's own float source as --model")
