"""Convert a llama.cpp GGUF file into a float mlx-lm model directory.

Weights are dequantized with the `gguf` package (every type `gguf.quants`
supports, K-quants and IQ types included), renamed to Hugging Face / mlx-lm
names and saved as safetensors; the tokenizer is rebuilt with `tokenizers`
from the GGUF metadata. `mlx_lm.load(out_dir)` then loads the result.

    convert_gguf(Path("model.gguf"), Path("out"))
"""

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from harness.cache import atomic_dir
from harness.errors import HarnessError

HF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
SUPPORTED_ARCHS = tuple(HF_ARCHITECTURES)
DTYPES = ("float32", "float16", "bfloat16")

# Keep each safetensors shard small so peak memory stays at about one shard.
MAX_SHARD_BYTES = 2 << 30

# llama.cpp token types (gguf.TokenType)
CONTROL, USER_DEFINED = 3, 4

_MISSING = object()

# GGUF tensor name (after "blk.N.") -> mlx-lm name (after "model.layers.N.")
_LAYER_TENSORS = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_TENSORS = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}

# Pre-tokenizer regexes as in the original Hugging Face tokenizer.json files
# (llama.cpp's llama-vocab.cpp carries rewritten copies of the same patterns).
_GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_RE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_RE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# llama.cpp's fallback when `tokenizer.ggml.pre` is "default" or missing
_DEFAULT_RES = (
    r"[\p{P}\$\+<=>\^~\|]+",
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
    r"\p{N}+",
    r"[0-9][0-9][0-9]",
)

# `tokenizer.ggml.pre` value -> pre-tokenizer family (names as llama.cpp spells them)
PRE_TOKENIZERS = {
    "default": "default",
    "gpt-2": "gpt2",
    "gpt2": "gpt2",
    "phi-2": "gpt2",
    "mpt": "gpt2",
    "olmo": "gpt2",
    "jais": "gpt2",
    "smollm": "digits",
    "starcoder": "digits",
    "refact": "digits",
    "llama-bpe": "llama3",
    "llama3": "llama3",
    "llama-v3": "llama3",
    "falcon3": "llama3",
    "pixtral": "llama3",
    "dbrx": "llama3",
    "smaug-bpe": "llama3",
    "qwen2": "qwen2",
    "deepseek-r1-qwen": "qwen2",
    "megrez": "qwen2",
}


def convert_gguf(gguf_path: Path, out_dir: Path, dtype: str = "float32") -> Path:
    """Convert `gguf_path` into an mlx-lm model directory at `out_dir`.

    `out_dir` is written atomically: on any error it is left untouched.
    Returns `out_dir`.
    """
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if dtype not in DTYPES:
        raise HarnessError(f"unknown dtype {dtype!r} for GGUF conversion; use one of {', '.join(DTYPES)}")
    reader = open_gguf(gguf_path)
    # Everything that can fail on bad metadata runs before anything is written.
    config = model_config(reader, gguf_path)
    config["torch_dtype"] = dtype
    plan = weight_plan(reader, config, gguf_path)
    tokenizer, tokenizer_config, generation_config = build_tokenizer(
        reader, gguf_path, config["max_position_embeddings"]
    )
    config.update(generation_config)  # bos/eos/pad token ids

    with atomic_dir(out_dir) as tmp:
        write_weights(plan, tmp, dtype)
        _write_json(tmp / "config.json", config)
        _write_json(tmp / "generation_config.json", generation_config)
        _write_json(tmp / "tokenizer_config.json", tokenizer_config)
        tokenizer.save(str(tmp / "tokenizer.json"))
    return out_dir


# -- reading -------------------------------------------------------------------


def open_gguf(path: Path):
    """A `GGUFReader` for `path`, or a HarnessError saying what is wrong with it."""
    from gguf import GGUFReader

    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"GGUF file {path} does not exist; check the path")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise HarnessError(f"{path} is not a GGUF file (no GGUF magic bytes); pass a llama.cpp .gguf model file")
    try:
        reader = GGUFReader(path)
    except Exception as e:  # the reader fails in many ways on truncated/corrupt files
        raise HarnessError(
            f"{path} is truncated or corrupt ({type(e).__name__}: {e}); download or copy the GGUF file again"
        ) from None
    size = path.stat().st_size
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size or t.data.nbytes != t.n_bytes:
            raise HarnessError(
                f"{path} is truncated (tensor {t.name} runs past the end of the file); "
                "download or copy the GGUF file again"
            )
    return reader


def gguf_field(reader, key: str, default: Any = _MISSING) -> Any:
    """The value of metadata `key` (str, int, float, bool or list)."""
    field = reader.fields.get(key)
    if field is None:
        if default is _MISSING:
            raise HarnessError(f"GGUF metadata key {key!r} is missing; the file is incomplete or not a model")
        return default
    return field.contents()


def _f32(value: float) -> float:
    # GGUF stores float32: 1e-5 comes back as 9.999999747e-06; keep the short form.
    return float(str(np.float32(value)))


def _uniform(value, key: str) -> int:
    if isinstance(value, list):
        if len(set(value)) != 1:
            raise HarnessError(f"GGUF {key} differs per layer ({sorted(set(value))}); such models are not supported")
        value = value[0]
    return int(value)


def model_config(reader, path: Path) -> Dict[str, Any]:
    """The mlx-lm / Hugging Face config.json for the GGUF's model."""
    arch = gguf_field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise HarnessError(
            f"{path.name}: GGUF architecture {arch!r} is not supported (supported: {', '.join(SUPPORTED_ARCHS)}); "
            "convert the original Hugging Face checkpoint with mlx_lm.convert instead"
        )

    def key(name, default=_MISSING):
        return gguf_field(reader, f"{arch}.{name}", default)

    tensors = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in tensors:
        raise HarnessError(f"{path.name} has no token_embd.weight tensor; it is not a complete {arch} model")
    hidden = int(key("embedding_length"))
    n_heads = _uniform(key("attention.head_count"), "attention.head_count")
    n_kv_heads = _uniform(key("attention.head_count_kv", n_heads), "attention.head_count_kv")
    head_dim = int(key("attention.key_length", hidden // n_heads))
    rope_dims = int(key("rope.dimension_count", head_dim))
    if rope_dims != head_dim:
        raise HarnessError(
            f"{path.name}: partial rotary embeddings (rope dims {rope_dims} of head dim {head_dim}) "
            f"are not supported for {arch}"
        )
    if arch == "qwen2" and head_dim * n_heads != hidden:
        raise HarnessError(f"{path.name}: qwen2 with head_dim {head_dim} != hidden/heads is not supported by mlx-lm")

    config = {
        "model_type": arch,
        "architectures": [HF_ARCHITECTURES[arch]],
        "hidden_size": hidden,
        "num_hidden_layers": int(key("block_count")),
        "intermediate_size": _uniform(key("feed_forward_length"), "feed_forward_length"),
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv_heads,
        "head_dim": head_dim,
        "rms_norm_eps": _f32(key("attention.layer_norm_rms_epsilon")),
        "rope_theta": _f32(key("rope.freq_base", 10000.0)),  # llama.cpp's default
        "max_position_embeddings": int(key("context_length", 4096)),
        # the embedding matrix, not the token list: converters pad it (Qwen)
        "vocab_size": int(tensors["token_embd.weight"].shape[1]),
        "tie_word_embeddings": "output.weight" not in tensors,
    }
    if arch == "llama":
        config["attention_bias"] = "blk.0.attn_q.bias" in tensors
        config["mlp_bias"] = "blk.0.ffn_up.bias" in tensors
    rope_scaling = _rope_scaling(reader, arch, tensors, config, path)
    if rope_scaling:
        config["rope_scaling"] = rope_scaling
    return config


def _rope_scaling(reader, arch: str, tensors, config: dict, path: Path) -> Optional[dict]:
    kind = gguf_field(reader, f"{arch}.rope.scaling.type", "none")
    factor = gguf_field(reader, f"{arch}.rope.scaling.factor", None)
    if "rope_freqs.weight" in tensors:
        # Llama 3.1+: llama.cpp stores the computed per-frequency factors, not the
        # parameters; recover them by matching the standard Llama 3 settings.
        return _llama3_rope_scaling(tensors["rope_freqs.weight"], config, path)
    if kind in ("none", "") or factor in (None, 1.0):
        return None
    if kind == "linear":
        return {"type": "linear", "factor": _f32(factor)}
    if kind == "yarn":
        scaling = {"type": "yarn", "factor": _f32(factor)}
        orig = gguf_field(reader, f"{arch}.rope.scaling.original_context_length", None)
        if orig:
            scaling["original_max_position_embeddings"] = int(orig)
        return scaling
    raise HarnessError(f"{path.name}: rope scaling type {kind!r} is not supported (supported: linear, yarn, llama3)")


def _llama3_rope_scaling(tensor, config: dict, path: Path) -> dict:
    from gguf.quants import dequantize

    factors = dequantize(tensor.data, tensor.tensor_type).astype(np.float64).reshape(-1)
    dims, base = config["head_dim"], config["rope_theta"]
    wavelens = 2 * np.pi * base ** (np.arange(0, dims, 2) / dims)
    factor = float(factors.max())
    for low, high, orig in ((1.0, 4.0, 8192),):
        smooth = (orig / wavelens - low) / (high - low)
        expected = np.where(
            wavelens < orig / high, 1.0, np.where(wavelens > orig / low, factor, 1 / ((1 - smooth) / factor + smooth))
        )
        if expected.shape == factors.shape and np.allclose(expected, factors, rtol=1e-3):
            return {
                "rope_type": "llama3",
                "factor": _f32(factor),
                "low_freq_factor": low,
                "high_freq_factor": high,
                "original_max_position_embeddings": orig,
            }
    raise HarnessError(
        f"{path.name}: rope_freqs does not match Llama 3 rope scaling; this rope variant is not supported"
    )


# -- weights -------------------------------------------------------------------


def mlx_name(gguf_name: str) -> Optional[str]:
    """The mlx-lm weight name for a GGUF tensor name (None if it has no counterpart)."""
    stem, _, suffix = gguf_name.rpartition(".")
    if suffix not in ("weight", "bias"):
        return None
    if stem in _GLOBAL_TENSORS:
        return f"{_GLOBAL_TENSORS[stem]}.{suffix}"
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_TENSORS:
        return f"model.layers.{parts[1]}.{_LAYER_TENSORS[parts[2]]}.{suffix}"
    return None


def unpermute_rope(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation for llama (inverse of convert_hf_to_gguf's
    `LlamaModel.permute`): it interleaves the two rotary halves of each head for
    llama.cpp's rope; mlx-lm (like HF) expects the halves split."""
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def weight_plan(reader, config: dict, path: Path) -> List[Tuple[str, Any, Optional[int]]]:
    """(mlx-lm name, GGUF tensor, heads to un-permute or None) for every weight."""
    permute = config["model_type"] == "llama"
    plan = []
    for t in reader.tensors:
        if t.name == "rope_freqs.weight":  # folded into config["rope_scaling"]
            continue
        name = mlx_name(t.name)
        if name is None:
            raise HarnessError(
                f"{path.name}: unexpected tensor {t.name!r} for a {config['model_type']} model; "
                "this model variant is not supported"
            )
        if not _can_dequantize(t.tensor_type):
            raise HarnessError(
                f"{path.name}: tensor {t.name} uses GGML type {t.tensor_type.name}, which the gguf package "
                "cannot dequantize; use a GGUF with another quantization"
            )
        heads = None
        if permute and ".self_attn.q_proj." in name:
            heads = config["num_attention_heads"]
        elif permute and ".self_attn.k_proj." in name:
            heads = config["num_key_value_heads"]
        plan.append((name, t, heads))
    names = {name for name, _, _ in plan}
    expected = expected_weights(config)
    if expected - names:
        missing = sorted(expected - names)
        raise HarnessError(
            f"{path.name}: {len(missing)} weights are missing (first: {missing[0]}); the file is incomplete"
        )
    if names - expected:
        extra = sorted(names - expected)
        raise HarnessError(
            f"{path.name}: unexpected weight {extra[0]} for this {config['model_type']} config; "
            "this model variant is not supported"
        )
    return plan


@lru_cache(maxsize=None)
def _can_dequantize(qtype) -> bool:
    """Whether gguf.quants can dequantize `qtype` (probed on one zero block)."""
    from gguf import GGML_QUANT_SIZES
    from gguf.quants import dequantize

    try:
        dequantize(np.zeros((1, GGML_QUANT_SIZES[qtype][1]), np.uint8), qtype)
    except (NotImplementedError, KeyError, ValueError):
        return False
    return True


def expected_weights(config: dict) -> set:
    """The weight names mlx-lm's model class for `config` loads."""
    arch = config["model_type"]
    layer = ["input_layernorm.weight", "post_attention_layernorm.weight"]
    layer += [f"self_attn.{p}_proj.weight" for p in "qkvo"] + [f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")]
    if arch == "qwen2":
        layer += [f"self_attn.{p}_proj.bias" for p in "qkv"]
    if arch == "qwen3":
        layer += ["self_attn.q_norm.weight", "self_attn.k_norm.weight"]
    if config.get("attention_bias"):
        layer += [f"self_attn.{p}_proj.bias" for p in "qkvo"]
    if config.get("mlp_bias"):
        layer += [f"mlp.{p}_proj.bias" for p in ("gate", "up", "down")]
    names = {f"model.layers.{i}.{n}" for i in range(config["num_hidden_layers"]) for n in layer}
    names |= {"model.embed_tokens.weight", "model.norm.weight"}
    if not config["tie_word_embeddings"]:
        names.add("lm_head.weight")
    return names


def dequantized(tensor, heads: Optional[int]) -> np.ndarray:
    """The tensor as float32 numpy in (out, in) layout, un-permuted if `heads`."""
    from gguf.quants import dequantize

    w = dequantize(tensor.data, tensor.tensor_type)
    w = np.asarray(w, dtype=np.float32).reshape([int(d) for d in reversed(tensor.shape)])
    if heads is not None:
        w = unpermute_rope(w, heads)
    return w


def write_weights(plan, out: Path, dtype: str) -> None:
    """Save the weights as mlx-lm does (model.safetensors or shards + index),
    dequantizing one shard at a time."""
    import mlx.core as mx
    from tqdm import tqdm

    itemsize = {"float32": 4, "float16": 2, "bfloat16": 2}[dtype]
    shards: List[list] = []
    size = 0
    for item in plan:
        nbytes = int(np.prod(item[1].shape)) * itemsize
        if not shards or size + nbytes > MAX_SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += nbytes
    fmt = "model-{:05d}-of-{:05d}.safetensors" if len(shards) > 1 else "model.safetensors"
    weight_map, total = {}, 0
    with tqdm(total=len(plan), desc="dequantizing GGUF", unit="tensor", leave=False) as bar:
        for i, shard in enumerate(shards):
            arrays = {}
            for name, tensor, heads in shard:
                arrays[name] = mx.array(dequantized(tensor, heads)).astype(getattr(mx, dtype))
                mx.eval(arrays[name])
                total += arrays[name].nbytes
                bar.update()
            file = fmt.format(i + 1, len(shards))
            mx.save_safetensors(str(out / file), arrays, metadata={"format": "mlx"})
            weight_map.update({name: file for name in arrays})
            del arrays
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    _write_json(out / "model.safetensors.index.json", index)


# -- tokenizer -----------------------------------------------------------------


def _pre_tokenizer(pre: str, path: Path):
    from tokenizers import Regex, normalizers, pre_tokenizers

    family = PRE_TOKENIZERS.get(pre)
    if family is None:
        raise HarnessError(
            f"{path.name}: GGUF pre-tokenizer {pre!r} is not supported "
            f"(supported: {', '.join(sorted(PRE_TOKENIZERS))}); use the model's original Hugging Face checkpoint"
        )
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    normalizer = None
    if family == "gpt2":
        steps = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    elif family == "digits":
        # SmolLM / StarCoder: every digit is its own piece, then GPT-2 splitting.
        steps = [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    elif family == "llama3":
        steps = [pre_tokenizers.Split(Regex(_LLAMA3_RE), "isolated"), byte_level]
    elif family == "qwen2":
        normalizer = normalizers.NFC()
        steps = [pre_tokenizers.Split(Regex(_QWEN2_RE), "isolated"), byte_level]
    else:  # llama.cpp "default": its regexes applied one after another
        steps = [pre_tokenizers.Split(Regex(r), "isolated") for r in _DEFAULT_RES] + [byte_level]
    return pre_tokenizers.Sequence(steps), normalizer, family


def build_tokenizer(reader, path: Path, max_length: int = 4096):
    """(tokenizers.Tokenizer, tokenizer_config dict, generation_config dict) from GGUF metadata."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors

    kind = gguf_field(reader, "tokenizer.ggml.model", None)
    if kind != "gpt2":
        what = "SentencePiece ('llama')" if kind == "llama" else repr(kind)
        raise HarnessError(
            f"{path.name}: GGUF tokenizer model {what} is not supported (only byte-level BPE 'gpt2'); "
            "use the model's original Hugging Face checkpoint"
        )
    tokens = gguf_field(reader, "tokenizer.ggml.tokens")
    merges = gguf_field(reader, "tokenizer.ggml.merges")
    types = gguf_field(reader, "tokenizer.ggml.token_type", [1] * len(tokens))
    pre = gguf_field(reader, "tokenizer.ggml.pre", "default")
    pre_tokenizer, normalizer, family = _pre_tokenizer(pre, path)

    vocab = {token: i for i, token in enumerate(tokens)}
    bpe = models.BPE(
        vocab=vocab,
        merges=[tuple(m.split(" ", 1)) for m in merges],
        ignore_merges=family == "llama3",  # as llama.cpp and the HF Llama 3 tokenizer
        fuse_unk=False,
        byte_fallback=False,
    )
    tokenizer = Tokenizer(bpe)
    if normalizer is not None:
        tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.ByteLevel()
    # Control tokens (<|im_start|>, <|endoftext|>, ...) must be matched whole and
    # count as special; user-defined ones are matched whole but decode as text.
    tokenizer.add_special_tokens(
        [AddedToken(tokens[i], special=True, normalized=False) for i, t in enumerate(types) if t == CONTROL]
    )
    tokenizer.add_tokens(
        [AddedToken(tokens[i], special=False, normalized=False) for i, t in enumerate(types) if t == USER_DEFINED]
    )

    def token_id(name):
        value = gguf_field(reader, f"tokenizer.ggml.{name}_token_id", None)
        return int(value) if value is not None and 0 <= int(value) < len(tokens) else None

    bos, eos, unk, pad = (token_id(n) for n in ("bos", "eos", "unknown", "padding"))
    eot, eom = token_id("eot"), token_id("eom")
    if eos is None:
        raise HarnessError(
            f"{path.name}: GGUF metadata has no valid tokenizer.ggml.eos_token_id; the file is incomplete"
        )
    add_bos = bool(gguf_field(reader, "tokenizer.ggml.add_bos_token", family == "llama3")) and bos is not None
    add_eos = bool(gguf_field(reader, "tokenizer.ggml.add_eos_token", False))

    if add_bos or add_eos:

        def sequence(piece: str, type_id: int) -> str:
            parts = [tokens[bos]] * add_bos + [piece] + [tokens[eos]] * add_eos
            return " ".join(f"{p}:{type_id}" for p in parts)

        tokenizer.post_processor = processors.TemplateProcessing(
            single=sequence("$A", 0),
            pair=f"{sequence('$A', 0)} {sequence('$B', 1)}",
            special_tokens=[(tokens[i], i) for i, on in ((bos, add_bos), (eos, add_eos)) if on],
        )
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)

    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "bos_token": tokens[bos] if bos is not None else None,
        "eos_token": tokens[eos],
        "unk_token": tokens[unk] if unk is not None else None,
        "pad_token": tokens[pad] if pad is not None else None,
        "model_max_length": max_length,
    }
    chat_template = gguf_field(reader, "tokenizer.chat_template", None)
    if chat_template:
        tokenizer_config["chat_template"] = chat_template

    eos_ids = list(dict.fromkeys(i for i in (eos, eot, eom) if i is not None))
    generation_config = {"eos_token_id": eos_ids[0] if len(eos_ids) == 1 else eos_ids}
    if bos is not None:
        generation_config["bos_token_id"] = bos
    if pad is not None:
        generation_config["pad_token_id"] = pad
    return tokenizer, tokenizer_config, generation_config


def _write_json(path: Path, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")
