"""Upcycle a dense Llama-architecture model into a Mixtral-style MoE.

No small pretrained MoE exists in any registry, so for an MoE with meaningful
weights we "sparse-upcycle" SmolLM2 (Komatsuzaki et al., 2022):

* every decoder layer's MLP (gate/up/down_proj) is copied into E experts,
  each copy with a little seeded Gaussian noise of relative size `noise`
  (W_e = W + noise * rms(W) * N(0, 1), a fresh draw per expert), so the experts
  are distinct tensors that quantize differently, but each still computes
  almost exactly what the dense MLP did;
* the router `block_sparse_moe.gate` is seeded random, scaled so its logits
  have std ~1 on RMS-normed inputs. Mixtral routes to the top-k logits and
  softmax-renormalises over those k, so the expert weights of a token always
  sum to 1; with near-identical experts *any* routing gives ~the dense output,
  while the random router still spreads tokens over all experts (routing is
  non-trivial for recipes and suites that look at it);
* attention, norms, embeddings and lm_head are copied unchanged.

With noise=0 the MoE reproduces the dense logits up to float rounding; with the
default noise=0.01 the relative logit error is about 1e-2 and greedy text is
unchanged. The result is an mlx-lm directory with `model_type: "mixtral"`
whose experts are stored pre-stacked as mlx-lm's SwitchGLU expects
(`model.layers.N.block_sparse_moe.switch_mlp.{gate,up,down}_proj.weight`,
shape [E, out, in]); tokenizer files are copied.
"""

import json
import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx_lm.models.mixtral import Model, ModelArgs
from mlx_lm.utils import save_config, save_model
from tqdm import tqdm

from harness.cache import atomic_dir
from harness.errors import HarnessError

# Files copied from the dense directory besides the weights and config.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)

# Config keys carried over from the dense Llama config (the rest is MoE-specific
# or unused by mlx-lm's mixtral.py).
COPIED_KEYS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "rms_norm_eps",
    "vocab_size",
    "rope_theta",
    "rope_traditional",
    "tie_word_embeddings",
    "max_position_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "torch_dtype",
)

ROUTER_LOGIT_STD = 1.0
PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


def _check_dense_config(config: dict, dense_dir: Path) -> None:
    if config.get("model_type") != "llama":
        raise HarnessError(
            f"{dense_dir} is a {config.get('model_type')!r} model; upcycling needs a "
            "llama-architecture model (e.g. smollm2-135m)"
        )
    if "quantization" in config or "quantization_config" in config:
        raise HarnessError(
            f"{dense_dir} is quantized; upcycle the float model instead (e.g. smollm2-135m)"
        )
    head_dim = config.get("head_dim")
    if head_dim and head_dim * config["num_attention_heads"] != config["hidden_size"]:
        raise HarnessError(
            f"{dense_dir} has head_dim {head_dim} != hidden_size / num_attention_heads, "
            "which mlx-lm's mixtral model cannot express; upcycle a model without it"
        )
    for key in ("attention_bias", "mlp_bias", "rope_scaling", "sliding_window"):
        if config.get(key):
            raise HarnessError(
                f"{dense_dir} sets {key}={config[key]!r}, which mlx-lm's mixtral model "
                "does not support; upcycle a plain llama model"
            )


def _load_weights(dense_dir: Path) -> dict:
    files = sorted(dense_dir.glob("*.safetensors"))
    if not files:
        raise HarnessError(f"{dense_dir} has no .safetensors weights; convert the model first")
    weights = {}
    for f in files:
        weights.update(mx.load(str(f)))
    return weights


def _noisy_copy(w: mx.array, noise: float, rng: np.random.Generator) -> mx.array:
    if noise == 0:
        return w
    w32 = w.astype(mx.float32)
    rms = mx.sqrt(mx.mean(w32 * w32)).item()
    eps = rng.standard_normal(w.shape, dtype=np.float32)
    return (w32 + mx.array(eps) * (noise * rms)).astype(w.dtype)


def upcycle_to_moe(
    dense_dir: Path,
    out_dir: Path,
    num_experts: int = 4,
    top_k: int = 2,
    noise: float = 0.01,
    seed: int = 0,
) -> Path:
    """Write a Mixtral-style MoE upcycled from the llama model at dense_dir to out_dir."""
    dense_dir, out_dir = Path(dense_dir), Path(out_dir)
    if not 1 <= top_k <= num_experts:
        raise HarnessError(
            f"top_k={top_k} must be between 1 and num_experts={num_experts}; pick e.g. 4 experts, top-2"
        )
    if noise < 0:
        raise HarnessError(f"noise={noise} must be >= 0; 0.01 is the default")
    config_path = dense_dir / "config.json"
    if not config_path.is_file():
        raise HarnessError(f"{dense_dir} has no config.json; pass an mlx-lm model directory")
    dense_config = json.loads(config_path.read_text())
    _check_dense_config(dense_config, dense_dir)

    config = {k: dense_config[k] for k in COPIED_KEYS if k in dense_config}
    config["tie_word_embeddings"] = dense_config.get("tie_word_embeddings", True)
    config.update(
        model_type="mixtral",
        architectures=["MixtralForCausalLM"],
        num_local_experts=num_experts,
        num_experts_per_tok=top_k,
        harness_upcycle={
            "dense": dense_config.get("_name_or_path", dense_dir.name),
            "num_experts": num_experts,
            "top_k": top_k,
            "noise": noise,
            "seed": seed,
        },
    )

    # What llama's sanitize drops (mixtral's does not know these names).
    weights = {
        k: v for k, v in _load_weights(dense_dir).items() if "rotary_emb.inv_freq" not in k
    }
    if config["tie_word_embeddings"]:
        weights.pop("lm_head.weight", None)
    hidden = config["hidden_size"]
    for layer in tqdm(range(config["num_hidden_layers"]), desc="upcycle", leave=False):
        prefix = f"model.layers.{layer}"
        for p, proj in enumerate(PROJECTIONS):
            w = weights.pop(f"{prefix}.mlp.{proj}.weight")
            experts = [
                _noisy_copy(w, noise, np.random.default_rng([seed, layer, p, e]))
                for e in range(num_experts)
            ]
            weights[f"{prefix}.block_sparse_moe.switch_mlp.{proj}.weight"] = mx.stack(experts)
        # Router logits of std ~ROUTER_LOGIT_STD: its input is the RMS-normed
        # hidden state times the post-attention norm weight.
        norm_w = weights[f"{prefix}.post_attention_layernorm.weight"]
        norm_rms = max(mx.sqrt(mx.mean(norm_w.astype(mx.float32) ** 2)).item(), 1e-6)
        rng = np.random.default_rng([seed, layer, len(PROJECTIONS)])
        gate = rng.standard_normal((num_experts, hidden), dtype=np.float32)
        gate *= ROUTER_LOGIT_STD / (hidden**0.5 * norm_rms)
        weights[f"{prefix}.block_sparse_moe.gate.weight"] = mx.array(gate).astype(norm_w.dtype)
        mx.eval(weights)

    # Loading into mlx-lm's own Mixtral class checks every name and shape.
    model = Model(ModelArgs.from_dict(config))
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as e:
        raise HarnessError(
            f"{dense_dir} does not map onto a mixtral model ({e}); upcycle a plain llama model"
        )
    with atomic_dir(out_dir) as tmp:
        save_model(tmp, model)
        save_config(config, tmp / "config.json")
        for name in TOKENIZER_FILES:
            if (dense_dir / name).is_file():
                shutil.copy2(dense_dir / name, tmp / name)
    return out_dir
