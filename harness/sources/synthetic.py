"""Seeded tiny random models for tests, built with mlx-lm's own model classes.

`write_synthetic("minimax", dir)` writes an mlx-lm directory (config.json,
model.safetensors, tokenizer.json, tokenizer_config.json) that `mlx_lm.load`
opens like any converted checkpoint. The models are random but shaped like the
real ones (MiniMax-M2: SwitchGLU experts, sigmoid router with
e_score_correction_bias, qk-norm, partial rotary; Qwen3-MoE: softmax router,
per-head qk-norm; Llama: dense, tied embeddings), so every quantization and
suite code path runs on them in well under a second.

Sizes are chosen so that every group size and mode works: all Linear input
dims (128, 256) are divisible by 64, 32 and 16. Four decoder layers so the
"first/last layer" tiers differ from the middle ones.
"""

import importlib
import json
import zlib
from functools import lru_cache
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.utils import save_config, save_model

from harness.cache import atomic_dir
from harness.errors import HarnessError

VOCAB_SIZE = 512
BRANCH=3.0
BOS_TOKEN = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN]  # ids 0, 1, 2 (as in SmolLM2)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_COMMON = {
    "hidden_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "vocab_size": VOCAB_SIZE,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 8192,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "torch_dtype": "float32",
}

CONFIGS = {
    "llama": {
        **_COMMON,
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "intermediate_size": 256,
        "rope_theta": 100000.0,
        "tie_word_embeddings": True,
    },
    "minimax": {
        **_COMMON,
        "model_type": "minimax",
        "architectures": ["MiniMaxM2ForCausalLM"],
        "intermediate_size": 128,  # per-expert width in MiniMax-M2
        "shared_intermediate_size": 0,
        "num_local_experts": 4,
        "num_experts_per_tok": 2,
        "scoring_func": "sigmoid",
        "use_qk_norm": True,
        "rotary_dim": 16,  # partial rotary: half of head_dim
        "rope_theta": 5000000.0,
        "tie_word_embeddings": False,
    },
    "qwen3_moe": {
        **_COMMON,
        "model_type": "qwen3_moe",
        "architectures": ["Qwen3MoeForCausalLM"],
        "intermediate_size": 256,  # dense MLP width (unused: every layer is MoE)
        "moe_intermediate_size": 128,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "norm_topk_prob": True,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": False,
    },
}

SYNTHETIC_ARCHS = tuple(CONFIGS)

# Training text for the tokenizer: a little English, code and digits so common
# words and Python keywords get merges of their own.
_TOKENIZER_TEXT = """\
The capital of France is Paris. The capital of Germany is Berlin. The capital
of Italy is Rome. Paris is a city on the river Seine, and Berlin is on the Spree.
A language model predicts the next token of a text from the tokens before it.
Quantization stores each weight with fewer bits: four bits, three bits, or eight
bits per weight, with a scale and a bias for every group of weights. The model
is then smaller and faster, but its answers may change a little. We measure the
perplexity, the accuracy on questions, and the speed of the quantized model.
Question: What is two plus three? Answer: Five. Question: Which planet is the
largest? Answer: Jupiter. The quick brown fox jumps over the lazy dog.
Experts in a mixture of experts model are chosen by a router for every token.
def add(a, b):
    return a + b

def is_even(n):
    \"\"\"Return True if n is even.\"\"\"
    return n % 2 == 0

for i in range(10):
    if is_even(i):
        print(i, add(i, 1))
class Counter:
    def __init__(self):
        self.count = 0
0 1 2 3 4 5 6 7 8 9 10 100 1000 2024 3.14 42
"""


@lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    """A byte-level BPE with exactly VOCAB_SIZE tokens (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    # Like SmolLM2's "smollm" pre-tokenizer: digits split one by one, then byte-level.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TOKENIZER_TEXT.splitlines(keepends=True), trainer)
    if tok.get_vocab_size() != VOCAB_SIZE:
        raise HarnessError(
            f"synthetic tokenizer has {tok.get_vocab_size()} tokens, expected "
            f"{VOCAB_SIZE}; lengthen _TOKENIZER_TEXT in harness/synthetic.py"
        )
    return tok.to_str()


def _write_tokenizer(out: Path) -> None:
    (out / "tokenizer.json").write_text(_tokenizer_json(), encoding="utf-8")
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "unk_token": PAD_TOKEN,
        "add_bos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": CONFIGS["llama"]["max_position_embeddings"],
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config, indent=2), encoding="utf-8"
    )


def _init_value(name: str, shape: tuple, seed: int) -> np.ndarray:
    """Deterministic value for one parameter, independent of creation order."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    if name.endswith("norm.weight"):
        # Not all ones, so a test notices if a norm is lost or replaced.
        return 1.0 + 0.05 * rng.standard_normal(shape)
    if name.endswith("e_score_correction_bias"):
        return 0.02 * rng.standard_normal(shape)
    if "embed_tokens" in name:
        # Tied llama reads logits through the embedding: std 0.25 * sqrt(128)
        # gives logits of std ~3, peaked but not one-hot.
        return 0.25 * rng.standard_normal(shape)
    # Linear (and stacked SwitchLinear) weights: std 1/sqrt(fan_in) keeps every
    # activation O(1); lm_head x3 gives logits of std ~3 like the tied case.
    std = shape[-1] ** -0.5
    if name == "lm_head.weight":
        std *= 3.0
    return std * rng.standard_normal(shape)


def build_model(arch: str, seed: int = 0):
    """(model, config) for a synthetic `arch`, fp32, seeded."""
    if arch not in CONFIGS:
        raise HarnessError(
            f"unknown synthetic architecture {arch!r}; use one of: "
            + ", ".join(f"synthetic:{a}" for a in SYNTHETIC_ARCHS)
        )
    config = dict(CONFIGS[arch])
    module = importlib.import_module(f"mlx_lm.models.{config['model_type']}")
    model = module.Model(module.ModelArgs.from_dict(config))
    params = [
        (name, mx.array(_init_value(name, p.shape, seed), dtype=mx.float32))
        for name, p in tree_flatten(model.parameters())
    ]
    model.update(tree_unflatten(params))
    mx.eval(model.parameters())
    return model, config


def write_synthetic(arch: str, out_dir: Path, seed: int = 0) -> Path:
    """Write a seeded tiny random `arch` model as an mlx-lm directory at out_dir."""
    model, config = build_model(arch, seed)
    config["harness_synthetic"] = {"arch": arch, "seed": seed}
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        save_model(tmp, model)
        save_config(config, tmp / "config.json")
        _write_tokenizer(tmp)
    return out_dir


# ---------------------------------------------------------------- models at the users' scale
#
# `synthetic:minimax-m2.5@SEED:layers=4,experts=32` is a seeded random model with
# MiniMax-M2.5's real per-layer shapes (DESIGN.md section 4) and a chosen number of
# layers and experts, written as bf16 safetensors shards tensor by tensor: the writer
# never holds more than one tensor's chunk, so a 7 GB model is generated with ~100 MB
# of memory. Real shapes matter for memory/speed benchmarks (block size, vocab-sized
# logits); the weights are noise scaled so activations stay O(1).

SCALE_CONFIGS = {
    "minimax-m2.5": {  # MiniMaxAI/MiniMax-M2.5 config.json (62 layers, 256 experts)
        "model_type": "minimax",
        "architectures": ["MiniMaxM2ForCausalLM"],
        "hidden_size": 3072,
        "intermediate_size": 1536,
        "num_attention_heads": 48,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "rotary_dim": 64,
        "num_hidden_layers": 62,
        "num_local_experts": 256,
        "num_experts_per_tok": 8,
        "shared_intermediate_size": 0,
        "scoring_func": "sigmoid",
        "use_qk_norm": True,
        "vocab_size": 200064,
        "rms_norm_eps": 1e-6,
        "rope_theta": 5000000.0,
        "max_position_embeddings": 196608,
        "tie_word_embeddings": False,
    },
    "qwen3-moe-30b": {  # Qwen/Qwen3-30B-A3B config.json (48 layers, 128 experts)
        "model_type": "qwen3_moe",
        "architectures": ["Qwen3MoeForCausalLM"],
        "hidden_size": 2048,
        "intermediate_size": 6144,
        "moe_intermediate_size": 768,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "head_dim": 128,
        "num_hidden_layers": 48,
        "num_experts": 128,
        "num_experts_per_tok": 8,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "norm_topk_prob": True,
        "vocab_size": 151936,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "max_position_embeddings": 40960,
        "tie_word_embeddings": False,
    },
}
SCALE_ARCHS = tuple(SCALE_CONFIGS)
SIZE_KEYS = ("layers", "experts", "top_k", "vocab")  # vocab: only to make tests fast
SHARD_BYTES = 2 << 30  # mlx-lm writes 5 GB shards; smaller ones keep one shard cheap to hold
_CHUNK_ELEMS = 1 << 24  # rows generated at a time (~64 MB of fp32)


def scale_config(arch: str, layers=None, experts=None, top_k=None, vocab=None) -> dict:
    """The config.json of a scale model: real shapes, chosen depth and expert count."""
    if arch not in SCALE_CONFIGS:
        raise HarnessError(f"unknown synthetic architecture {arch!r}; use one of: "
                           + ", ".join(f"synthetic:{a}" for a in SYNTHETIC_ARCHS + SCALE_ARCHS))
    config = dict(SCALE_CONFIGS[arch])
    n_key = "num_local_experts" if config["model_type"] == "minimax" else "num_experts"
    if layers is not None:
        config["num_hidden_layers"] = int(layers)
    if experts is not None:
        config[n_key] = int(experts)
    if top_k is not None:
        config["num_experts_per_tok"] = int(top_k)
    if vocab is not None:
        if int(vocab) < VOCAB_SIZE:
            raise HarnessError(f"synthetic:{arch}: vocab must be at least {VOCAB_SIZE} (the tokenizer's merges)")
        config["vocab_size"] = int(vocab)
    config["num_experts_per_tok"] = min(config["num_experts_per_tok"], config[n_key])
    if config["num_hidden_layers"] < 1 or config[n_key] < 1 or config["num_experts_per_tok"] < 1:
        raise HarnessError(f"synthetic:{arch}: layers, experts and top_k must be positive integers")
    config.update({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "torch_dtype": "bfloat16"})
    return config


def _shapes(config: dict) -> list:
    """[(name, shape)] of every parameter, in mlx-lm's layout, without allocating weights."""
    import mlx.nn as nn

    module = importlib.import_module(f"mlx_lm.models.{config['model_type']}")
    model = module.Model(module.ModelArgs.from_dict(config))  # lazy init: nothing is computed
    shapes = [(name, tuple(p.shape)) for name, p in tree_flatten(model.parameters())]
    del model, nn
    return shapes


def _stream_values(name: str, shape: tuple, seed: int):
    """The tensor `name` as float32 chunks along its first axis (seeded by name)."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    if name.endswith("norm.weight"):
        yield (1.0 + 0.05 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
        return
    if name.endswith("e_score_correction_bias"):
        yield 0.02 * rng.standard_normal(shape, dtype=np.float32)
        return
    std = shape[-1] ** -0.5  # Linear/SwitchLinear: fan_in is the last axis; Embedding: O(1) rows
    if "embed_tokens" in name:
        std = 1.0
    elif name == "lm_head.weight":
        std *= 3.0  # logits of std ~3: peaked but not one-hot
    row = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    step = max(1, _CHUNK_ELEMS // max(row, 1))
    for start in range(0, shape[0], step):
        n = min(step, shape[0] - start)
        chunk = rng.standard_normal((n, *shape[1:]), dtype=np.float32)
        chunk *= np.float32(std)
        yield chunk


def _to_bf16_bytes(x: np.ndarray) -> bytes:
    """float32 -> bfloat16 bytes, rounding to nearest even (as mx.astype does)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    u = (u + (np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1)))) >> 16
    return u.astype("<u2").tobytes()


def _plan_shards(entries: list) -> list:
    """Group (name, shape, dtype) entries into shards of at most SHARD_BYTES, in order
    (so one decoder block's tensors sit together)."""
    shards, current, size = [], [], 0
    for name, shape, dtype in entries:
        nbytes = int(np.prod(shape)) * (4 if dtype == "F32" else 2)
        if current and size + nbytes > SHARD_BYTES:
            shards.append(current)
            current, size = [], 0
        current.append((name, shape, dtype, nbytes))
        size += nbytes
    if current:
        shards.append(current)
    return shards


def _write_shard(path: Path, entries: list, seed: int) -> None:
    """A safetensors file written tensor by tensor (header first: every offset is known)."""
    header, offset = {"__metadata__": {"format": "mlx"}}, 0
    for name, shape, dtype, nbytes in entries:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # keep the data 8-byte aligned
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for name, shape, dtype, _ in entries:
            for chunk in _stream_values(name, shape, seed):
                f.write(np.ascontiguousarray(chunk, dtype="<f4").tobytes() if dtype == "F32"
                        else _to_bf16_bytes(chunk))


def _scale_tokenizer_json(vocab_size: int) -> str:
    """The tiny byte-level BPE (every text is encodable) padded with reserved tokens to
    `vocab_size` entries, so the tokenizer covers the model's whole vocabulary."""
    tok = json.loads(_tokenizer_json())
    vocab = tok["model"]["vocab"]
    for i in range(len(vocab), vocab_size):
        vocab[f"<reserved_{i}>"] = i
    return json.dumps(tok, ensure_ascii=False)


def write_scaled(arch: str, out_dir: Path, seed: int = 0, layers=None, experts=None, top_k=None, vocab=None,
                 progress: bool = False) -> Path:
    """Write a scale model (see SCALE_CONFIGS) as bf16 shards at out_dir, atomically."""
    from tqdm import tqdm

    config = scale_config(arch, layers, experts, top_k, vocab)
    keep_f32 = config["model_type"] == "minimax"  # mlx-lm keeps the routing bias in fp32
    entries = [(n, s, "F32" if keep_f32 and n.endswith("e_score_correction_bias") else "BF16")
               for n, s in _shapes(config)]
    shards = _plan_shards(entries)
    total = sum(e[3] for shard in shards for e in shard)
    config["harness_synthetic"] = {"arch": arch, "seed": seed, "layers": config["num_hidden_layers"],
                                   "experts": config.get("num_local_experts", config.get("num_experts")),
                                   "top_k": config["num_experts_per_tok"]}
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        index = {"metadata": {"total_size": total}, "weight_map": {}}
        bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"synthetic:{arch}", disable=not progress)
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            _write_shard(tmp / name, shard, seed)
            index["weight_map"].update({e[0]: name for e in shard})
            bar.update(sum(e[3] for e in shard))
        bar.close()
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=1), encoding="utf-8")
        save_config(config, tmp / "config.json")
        _write_tokenizer(tmp)
        (tmp / "tokenizer.json").write_text(_scale_tokenizer_json(config["vocab_size"]), encoding="utf-8")
    return out_dir


def parse_spec(spec: str):
    """'synthetic:ARCH[@SEED][:layers=N,experts=N,top_k=N,vocab=N]' -> (arch, seed, sizes)."""
    import re

    usage = (f"use synthetic:ARCH[@SEED] with ARCH one of {', '.join(SYNTHETIC_ARCHS)}, or "
             f"synthetic:ARCH[@SEED][:layers=N,experts=N,top_k=N] with ARCH one of {', '.join(SCALE_ARCHS)}")
    m = re.fullmatch(r"synthetic:([\w.-]+?)(?:@(\d+))?(?::([\w=,]*))?", spec)
    if not m or m.group(1) not in SYNTHETIC_ARCHS + SCALE_ARCHS:
        raise HarnessError(f"unknown synthetic model {spec!r}; {usage}")
    arch, seed, sizes = m.group(1), int(m.group(2) or 0), {}
    for pair in filter(None, (m.group(3) or "").split(",")):
        key, _, value = pair.partition("=")
        if key not in SIZE_KEYS or not value.isdigit() or int(value) < 1:
            raise HarnessError(f"synthetic size {pair!r} in {spec!r} is invalid; use layers=N, experts=N, "
                               "top_k=N (vocab=N for tests) with N a positive integer")
        sizes[key] = int(value)
    if sizes and arch in SYNTHETIC_ARCHS:
        raise HarnessError(f"synthetic:{arch} is the tiny test model and takes no sizes; {usage}")
    return arch, seed, sizes
