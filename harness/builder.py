"""Build: source + plan -> an mlx-lm artifact directory, cached by content.

The artifact is what `mlx_lm.load` reads: config.json whose "quantization" block
names every quantizable path explicitly (settings or False), safetensors shards,
the source's tokenizer files, plus our plan.json and provenance.json.
It is written into a temp dir and renamed into place, so an interrupted build
(Ctrl-C, crash, full disk) leaves nothing behind.
"""

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from harness.cache import atomic_dir, atomic_write_text, cache_root, sha256_bytes
from harness.errors import HarnessError
from harness.plan import Plan
from harness.recipe import PlanContext
from harness.recipes import get_recipe
from harness.sources import fingerprint, load_float, model_slug, resolve_model

DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
BUILD_FORMAT = "1"  # bump when the artifact layout changes
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json",
                   "generation_config.json", "added_tokens.json")


@dataclass
class BuildOptions:
    model: str = "smollm2-135m"
    recipe: str = "uniform4"
    recipe_options: Optional[dict] = None  # group_size, mode, target_bpw, calibration ...
    seed: int = 0
    out: Optional[Path] = None  # write the artifact here instead of the cache
    plan_file: Optional[Path] = None  # build this plan instead of asking the recipe
    progress: bool = True
    force: bool = False  # rebuild even if cached
    # Stored dtype of float tensors and scales in quantized artifacts. bf16 is what
    # mlx-lm produces from real (bf16) checkpoints, so artifacts match what users run;
    # execution on CPU upcasts to fp32 at load time (exact).
    dtype: str = "bfloat16"


@dataclass
class BuildResult:
    path: Path
    plan: Plan
    cache_hit: bool
    source: Path


def _versions_key() -> str:
    from harness.provenance import package_versions

    v = package_versions()
    return f"mlx={v.get('mlx')};mlx-lm={v.get('mlx-lm')};format={BUILD_FORMAT}"


def make_plan(opts: BuildOptions):
    """Resolve the source and let the recipe plan it. Returns (plan, source_dir, recipe, model)."""
    src = resolve_model(opts.model)
    model, config = load_float(src, lazy=True)
    recipe = get_recipe(opts.recipe, **(opts.recipe_options or {}))
    ctx = PlanContext(model=model, model_path=src, config=config, seed=opts.seed, progress=opts.progress)
    modules = ctx.describe()[0]
    if opts.plan_file:
        try:
            plan = Plan.from_json(Path(opts.plan_file).read_text())
        except OSError as e:
            raise HarnessError(f"cannot read plan {opts.plan_file} ({e.strerror}); check the path")
        if plan.recipe != recipe.name:
            # the artifact and its results are filed under the recipe name: a plan made by
            # another recipe would be stored (and compared) under the wrong one
            raise HarnessError(f"plan {opts.plan_file} was made by recipe {plan.recipe!r}, not {recipe.name!r}; "
                               f"pass --recipe {plan.recipe}")
    else:
        plan = _cached_plan(src, recipe, opts, ctx)
    plan.validate(modules)
    if any(t.quantized for t in plan.tensors) and not getattr(recipe, "prebuilt_dir", None):
        # float tensors and scales are stored in opts.dtype (an existing quant keeps its own)
        plan.dtype_bytes = DTYPE_BYTES.get(opts.dtype, plan.dtype_bytes)
    return plan, src, recipe, model


def _cached_plan(src: Path, recipe, opts: BuildOptions, ctx: PlanContext) -> Plan:
    """Plans of data-driven recipes (oQ, dynamic) cost a calibration pass: cache them
    by (source, recipe, params, seed)."""
    key = sha256_bytes(json.dumps(
        [fingerprint(src), recipe.name, recipe.params, opts.seed, _versions_key()],
        sort_keys=True, default=str).encode())[:16]
    path = cache_root() / "plans" / f"{model_slug(opts.model)}-{recipe.name}-{key}.json"
    if path.is_file() and not opts.force:
        return Plan.from_json(path.read_text())
    ctx.out_dir = path.parent
    plan = recipe.plan(ctx)
    atomic_write_text(path, plan.to_json())
    return plan


def artifact_key(source_fp: str, plan: Plan, dtype: str) -> str:
    decisions = [(t.path, t.bits, t.group_size, t.mode) for t in plan.tensors]
    if not any(t.quantized for t in plan.tensors):
        dtype = "source"  # the float artifact links the source weights as they are
    return sha256_bytes(json.dumps([source_fp, decisions, dtype, _versions_key()]).encode())[:16]


def build(opts: BuildOptions, log=print) -> BuildResult:
    plan, src, recipe, model = make_plan(opts)
    source_fp = fingerprint(src)
    prebuilt = getattr(recipe, "prebuilt_dir", None)  # an existing quant: link its files, never requantize
    key = artifact_key(source_fp + (f"|existing:{recipe.params}" if prebuilt else ""), plan, opts.dtype)
    out = Path(opts.out) if opts.out else cache_root() / "artifacts" / model_slug(opts.model) / f"{recipe.name}-{key}"
    if _complete(out, key) and not opts.force:
        log(f"cache hit: {recipe.name} on {opts.model} already built ({key})")
        return BuildResult(out, plan, True, src)
    if out.exists() and not _complete(out, key) and any(out.iterdir()):
        if not (out / "provenance.json").is_file():
            raise HarnessError(f"{out} exists and is not a harness artifact; choose another --out")

    t0 = time.time()
    try:
        with atomic_dir(out) as tmp:
            if prebuilt:
                _link_prebuilt(Path(prebuilt), tmp)
            elif plan.tensors and any(t.quantized for t in plan.tensors):
                _write_quantized(model, plan, src, tmp, opts.progress, opts.dtype)
            else:
                _link_float(src, tmp)
            _copy_tokenizer(src, tmp)
            bpw_mlx = _measured_bpw(tmp)
            atomic_write_text(tmp / "plan.json", plan.to_json())
            atomic_write_text(tmp / "provenance.json", json.dumps(_provenance(
                opts, recipe, plan, src, source_fp, key, bpw_mlx, time.time() - t0), indent=1, sort_keys=True))
    except HarnessError:
        raise
    except (PermissionError, NotADirectoryError, FileExistsError, IsADirectoryError) as e:
        raise HarnessError(f"cannot write the artifact to {out} ({e.strerror or e}); choose a writable --out "
                           "or set HARNESS_CACHE")
    except OSError as e:
        if e.errno == 28:
            raise HarnessError(f"disk full while writing {out}; free space or set HARNESS_CACHE elsewhere")
        raise HarnessError(f"building {out} failed ({e}); the source weights may be corrupt: re-convert them")
    except (ValueError, RuntimeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise HarnessError(f"quantizing {opts.model} failed ({msg}); the source weights may be corrupt or "
                           "incomplete: re-download or re-convert them")
    return BuildResult(out, plan, False, src)


def _complete(out: Path, key: str) -> bool:
    prov = out / "provenance.json"
    if not prov.is_file():
        return False
    try:
        return json.loads(prov.read_text()).get("artifact_key") == key
    except (OSError, json.JSONDecodeError):
        return False


def _write_quantized(model, plan: Plan, src: Path, tmp: Path, progress: bool, dtype: str) -> None:
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten, tree_unflatten
    from mlx_lm.utils import get_total_parameters, load_config, make_shards, save_config
    from tqdm import tqdm

    if dtype not in DTYPE_BYTES:
        raise HarnessError(f"unknown dtype {dtype!r}; use bfloat16, float16 or float32")
    model.set_dtype(getattr(mx, dtype))  # before quantizing, so scales get this dtype too
    # Everything below stays lazy until a tensor is written: nn.quantize builds
    # mx.quantize nodes over the source's mmap-backed (lazy) arrays, make_shards and
    # compute_bits_per_weight only read shapes (nbytes), and each tensor is evaluated,
    # written and dropped on its own (_save_streaming), so peak memory is about the
    # largest tensor (an expert stack: one block) whatever the model size.
    nn.quantize(model, class_predicate=plan.predicate())
    weights = dict(tree_flatten(model.parameters()))
    index = {"metadata": {"total_size": sum(v.nbytes for v in weights.values()),
                          "total_parameters": get_total_parameters(model)}, "weight_map": {}}
    # The model must not keep the evaluated arrays alive: it would end up holding the
    # whole quantized model. Point its parameters at empty arrays (the caller only
    # reads the artifact back from disk).
    model.update(tree_unflatten([(k, mx.zeros((0,), dtype=v.dtype)) for k, v in weights.items()]))
    shards = make_shards(weights)
    del weights
    name = "model-{:05d}-of-{:05d}.safetensors" if len(shards) > 1 else "model.safetensors"
    total = sum(v.nbytes for shard in shards for v in shard.values())
    bar = tqdm(total=total, desc="quantize+write", unit="B", unit_scale=True, disable=not progress,
               file=sys.stderr)
    for i, shard in enumerate(shards):
        shard_name = name.format(i + 1, len(shards))
        index["weight_map"].update({k: shard_name for k in shard})
        shards[i] = None
        _save_streaming(tmp / shard_name, shard, bar)
    bar.close()
    index["weight_map"] = dict(sorted(index["weight_map"].items()))
    (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=4))
    config = load_config(src)
    config.pop("quantization_config", None)
    config["quantization"] = plan.quantization_config()
    config["torch_dtype"] = dtype
    save_config(config, tmp / "config.json")


_ST_DTYPES = {"uint32": "U32", "uint8": "U8", "int32": "I32", "bfloat16": "BF16", "float16": "F16",
              "float32": "F32", "uint16": "U16", "int8": "I8"}


def _save_streaming(path: Path, shard: dict, bar=None) -> None:
    """Write a safetensors file tensor by tensor: the header (every offset follows from
    the shapes) first, then each tensor is evaluated, written and dropped, so at most
    one tensor (and the source tensors it is computed from) is in memory. `shard` is
    emptied as it goes. Same bytes as mx.save_safetensors, in name order."""
    import mlx.core as mx
    import numpy as np

    header, offset = {"__metadata__": {"format": "mlx"}}, 0
    names = sorted(shard)
    for k in names:
        v = shard[k]
        dt = str(v.dtype).split(".")[-1]
        if dt not in _ST_DTYPES:
            raise HarnessError(f"cannot store tensor {k} of dtype {dt} in safetensors")
        header[k] = {"dtype": _ST_DTYPES[dt], "shape": list(v.shape), "data_offsets": [offset, offset + v.nbytes]}
        offset += v.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for k in names:
            v = shard.pop(k)
            mx.eval(v)
            if v.dtype == mx.bfloat16:
                v = v.view(mx.uint16)  # numpy has no bf16: write the raw bits
            data = np.ascontiguousarray(np.asarray(v))  # a view of the array's buffer when contiguous
            f.write(data.data if data.ndim else data.tobytes())
            if bar is not None:
                bar.update(v.nbytes)
            del v, data


def _link_float(src: Path, tmp: Path) -> None:
    """The float recipe's artifact points at the source weights instead of copying them."""
    for f in src.iterdir():
        if f.suffix == ".safetensors" or f.name in ("config.json", "model.safetensors.index.json"):
            (tmp / f.name).symlink_to(f.resolve())


def _link_prebuilt(quant: Path, tmp: Path) -> None:
    """An existing quant's files as they are (its config, shards, tokenizer); ours are added beside."""
    for f in quant.iterdir():
        if f.is_file() and f.name not in ("plan.json", "provenance.json"):
            (tmp / f.name).symlink_to(f.resolve())


def _copy_tokenizer(src: Path, tmp: Path) -> None:
    for name in TOKENIZER_FILES:
        f = src / name
        if f.is_file() and not (tmp / name).exists():
            shutil.copy2(f, tmp / name)


def _measured_bpw(path: Path) -> float:
    """mlx-lm's compute_bits_per_weight on the artifact as it will be loaded."""
    from mlx_lm.utils import compute_bits_per_weight, load_model

    model, _ = load_model(path, lazy=True)
    return round(compute_bits_per_weight(model), 4)


def _provenance(opts, recipe, plan, src, source_fp, key, bpw_mlx, seconds) -> dict:
    from harness.runtime.blas import blas_info
    from harness.provenance import provenance

    return provenance(
        kind="artifact",
        artifact_key=key,
        model=opts.model,
        source_path=str(src),
        source_fingerprint=source_fp,
        recipe=recipe.name,
        recipe_params=recipe.params,
        plan_sha256=sha256_bytes(plan.to_json().encode()),
        seed=opts.seed,
        dtype=("existing" if getattr(recipe, "prebuilt_dir", None) else opts.dtype)
        if any(t.quantized for t in plan.tensors) else "source",
        existing_quant=str(getattr(recipe, "prebuilt_dir", "") or "") or None,
        bpw=round(plan.bpw, 4),
        bpw_mlx=bpw_mlx,
        build_seconds=round(seconds, 2),
        blas=blas_info(),
    )


def read_provenance(artifact: Path) -> dict:
    try:
        return json.loads((Path(artifact) / "provenance.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
