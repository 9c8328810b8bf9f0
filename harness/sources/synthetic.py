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
