import json
import time

import mlx.core as mx
import mlx_lm
import pytest
from mlx.utils import tree_flatten
from mlx_lm.models.switch_layers import SwitchLinear

from harness.errors import HarnessError
from harness.sources.synthetic import SYNTHETIC_ARCHS, VOCAB_SIZE, write_synthetic


@pytest.fixture(scope="module")
def synthetic_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return {arch: write_synthetic(arch, root / arch) for arch in SYNTHETIC_ARCHS}


def _weights(path):
    return mx.load(str(path / "model.safetensors"))


def test_archs():
    assert SYNTHETIC_ARCHS == ("llama", "minimax", "qwen3_moe")


@pytest.mark.parametrize("arch", SYNTHETIC_ARCHS)
def test_build_is_fast(arch, tmp_path):
    start = time.perf_counter()
    write_synthetic(arch, tmp_path / arch)
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("arch", SYNTHETIC_ARCHS)
def test_loads_and_forward_is_finite_and_not_degenerate(arch, synthetic_dirs):
    model, tokenizer, config = mlx_lm.load(str(synthetic_dirs[arch]), return_config=True)
    assert config["model_type"] == arch
    assert len(tokenizer.vocab) == VOCAB_SIZE == config["vocab_size"]
    ids = tokenizer.encode("The capital of France is Paris. def add(a, b): return a + b")
    logits = model(mx.array([ids]))
    assert logits.shape == (1, len(ids), VOCAB_SIZE)
    assert logits.dtype == mx.float32
    assert mx.isfinite(logits).all().item()
    # Peaked but not one-hot: mean entropy well between 0 and log(512) = 6.24.
    p = mx.softmax(logits, axis=-1)
    entropy = -(p * mx.log(p + 1e-30)).sum(-1).mean().item()
    assert 1.0 < entropy < 5.0
    # Predictions depend on the input: not the same argmax everywhere.
    assert len(set(logits[0].argmax(-1).tolist())) > 3


@pytest.mark.parametrize("arch", SYNTHETIC_ARCHS)
def test_generate(arch, synthetic_dirs):
    model, tokenizer = mlx_lm.load(str(synthetic_dirs[arch]))
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True
    )
    assert tokenizer.decode(prompt).endswith("<|im_start|>assistant\n")
    tokens = [
        r.token
        for r in mlx_lm.stream_generate(model, tokenizer, prompt, max_tokens=5)
    ]
    assert 1 <= len(tokens) <= 5
    assert all(0 <= t < VOCAB_SIZE for t in tokens)


def test_tokenizer_files(synthetic_dirs):
    d = synthetic_dirs["llama"]
    tok_cfg = json.loads((d / "tokenizer_config.json").read_text())
    assert tok_cfg["eos_token"] == "<|im_end|>"
    assert "chat_template" in tok_cfg
    _, tokenizer = mlx_lm.load(str(d))
    assert tokenizer.eos_token_id == 2
    assert tokenizer.bos_token_id == 1
    text = "Quantization stores 4 bits per weight.\n"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    # BPE merges exist: far fewer tokens than bytes.
    assert len(tokenizer.encode(text)) < len(text.encode()) / 2


@pytest.mark.parametrize("arch", SYNTHETIC_ARCHS)
def test_seeded(arch, tmp_path):
    a = _weights(write_synthetic(arch, tmp_path / "a", seed=0))
    b = _weights(write_synthetic(arch, tmp_path / "b", seed=0))
    c = _weights(write_synthetic(arch, tmp_path / "c", seed=1))
    assert a.keys() == b.keys() == c.keys()
    for k in a:
        assert mx.array_equal(a[k], b[k]), k
        assert not mx.array_equal(a[k], c[k]), k
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (
        tmp_path / "c" / "tokenizer.json"
    ).read_bytes()


def test_tied_and_untied(synthetic_dirs):
    assert "lm_head.weight" not in _weights(synthetic_dirs["llama"])
    for arch in ("minimax", "qwen3_moe"):
        assert _weights(synthetic_dirs[arch])["lm_head.weight"].shape == (VOCAB_SIZE, 128)


def test_minimax_structure(synthetic_dirs):
    model, _ = mlx_lm.load(str(synthetic_dirs["minimax"]))
    assert len(model.layers) == 4
    moe = model.layers[0].block_sparse_moe
    for proj in ("gate_proj", "up_proj", "down_proj"):
        layer = getattr(moe.switch_mlp, proj)
        assert isinstance(layer, SwitchLinear)
        assert layer.weight.shape[0] == 4  # experts
    assert moe.gate.weight.shape == (4, 128)
    assert moe.num_experts_per_tok == 2
    # Nonzero routing bias, so a recipe that drops it changes the outputs.
    assert mx.abs(moe.e_score_correction_bias).max().item() > 0
    attn = model.layers[0].self_attn
    assert attn.use_qk_norm and attn.rope.dims == 16
    # The model's own predicate keeps the router at 8 bits.
    predicate = model.quant_predicate
    assert predicate("model.layers.0.block_sparse_moe.gate", moe.gate) == {
        "group_size": 64,
        "bits": 8,
    }
    assert predicate("model.layers.0.self_attn.q_proj", attn.q_proj) is True
    params = dict(tree_flatten(model.parameters()))
    assert params["model.layers.0.block_sparse_moe.switch_mlp.down_proj.weight"].shape == (
        4,
        128,
        128,
    )


def test_qwen3_moe_structure(synthetic_dirs):
    model, _ = mlx_lm.load(str(synthetic_dirs["qwen3_moe"]))
    for layer in model.layers:
        assert isinstance(layer.mlp.switch_mlp.gate_proj, SwitchLinear)
        assert layer.mlp.gate.weight.shape == (4, 128)
    assert hasattr(model, "quant_predicate")


def test_linear_in_dims_fit_every_group_size(synthetic_dirs):
    for arch, d in synthetic_dirs.items():
        for name, w in _weights(d).items():
            if w.ndim >= 2 and "embed" not in name:
                assert w.shape[-1] % 64 == 0, (arch, name, w.shape)


def test_unknown_arch(tmp_path):
    with pytest.raises(HarnessError, match="synthetic:minimax"):
        write_synthetic("gpt5", tmp_path / "x")
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------- scale models (real per-layer shapes)


def test_scale_spec_parsing():
    from harness.sources.synthetic import parse_spec

    assert parse_spec("synthetic:minimax-m2.5@3:layers=4,experts=32") == ("minimax-m2.5", 3, {"layers": 4, "experts": 32})
    assert parse_spec("synthetic:qwen3-moe-30b") == ("qwen3-moe-30b", 0, {})
    assert parse_spec("synthetic:llama@2") == ("llama", 2, {})
    for bad, msg in [("synthetic:minimax-m2.5:layers=0", "positive"), ("synthetic:minimax-m2.5:depth=3", "layers=N"),
                     ("synthetic:llama:layers=2", "takes no sizes"), ("synthetic:gpt5", "unknown synthetic")]:
        with pytest.raises(HarnessError, match=msg):
            parse_spec(bad)


def test_scale_values_are_seeded():
    import numpy as np

    from harness.sources.synthetic import _stream_values, _to_bf16_bytes

    a = np.concatenate(list(_stream_values("model.layers.0.mlp.gate_proj.weight", (4096, 4096), 1)))
    b = np.concatenate(list(_stream_values("model.layers.0.mlp.gate_proj.weight", (4096, 4096), 1)))
    c = np.concatenate(list(_stream_values("model.layers.0.mlp.gate_proj.weight", (4096, 4096), 2)))
    assert a.shape == (4096, 4096) and np.array_equal(a, b) and not np.array_equal(a, c)
    assert abs(a.std() - 4096 ** -0.5) < 1e-4  # std 1/sqrt(fan_in)
    x = np.array([1.0, -2.5, 3.14159, 1e-3], dtype=np.float32)  # bf16 rounding as MLX does it
    assert _to_bf16_bytes(x) == bytes(memoryview(mx.array(x).astype(mx.bfloat16).view(mx.uint16)))


@pytest.mark.parametrize("arch,experts_key,vocab", [
    ("minimax-m2.5", "num_local_experts", 4096),  # real block shapes, small vocab: fast
    ("qwen3-moe-30b", "num_experts", 4096),
    pytest.param("minimax-m2.5", "num_local_experts", None, marks=pytest.mark.slow),  # 2.5 GB embed + lm_head
    pytest.param("qwen3-moe-30b", "num_experts", None, marks=pytest.mark.slow),
])
def test_scale_model_has_real_shapes_and_loads(arch, experts_key, vocab, tmp_path):
    import numpy as np

    from harness.sources.synthetic import SCALE_CONFIGS, write_scaled

    out = write_scaled(arch, tmp_path / arch, seed=1, layers=1, experts=2, vocab=vocab)
    config = json.loads((out / "config.json").read_text())
    real = dict(SCALE_CONFIGS[arch], **({"vocab_size": vocab} if vocab else {}))
    assert config["num_hidden_layers"] == 1 and config[experts_key] == 2 and config["num_experts_per_tok"] == 2
    for key in ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size"):
        assert config[key] == real[key]
    index = json.loads((out / "model.safetensors.index.json").read_text())
    weights = {}
    for shard in set(index["weight_map"].values()):
        weights.update(mx.load(str(out / shard)))
    if arch == "minimax-m2.5":
        assert weights["model.layers.0.block_sparse_moe.switch_mlp.gate_proj.weight"].shape == (2, 1536, 3072)
        assert weights["model.layers.0.self_attn.q_proj.weight"].shape == (48 * 128, 3072)
        assert weights["model.layers.0.self_attn.k_norm.weight"].shape == (8 * 128,)
        assert weights["model.layers.0.block_sparse_moe.e_score_correction_bias"].dtype == mx.float32
        assert config["rotary_dim"] == 64 and config["use_qk_norm"] and config["scoring_func"] == "sigmoid"
    else:
        assert weights["model.layers.0.mlp.switch_mlp.down_proj.weight"].shape == (2, 2048, 768)
    assert weights["lm_head.weight"].shape == (real["vocab_size"], real["hidden_size"])
    assert weights["lm_head.weight"].dtype == mx.bfloat16
    # loads with mlx-lm, the tokenizer covers the vocabulary, and the forward is sane
    model, tokenizer = mlx_lm.load(str(out))
    assert len(tokenizer.vocab) == real["vocab_size"]
    ids = tokenizer.encode("The capital of France is Paris.")
    model.set_dtype(mx.float32)
    logits = model(mx.array([ids]))
    assert logits.shape == (1, len(ids), real["vocab_size"]) and mx.isfinite(logits).all().item()
    assert 2.0 < float(np.std(np.array(logits))) < 4.0  # lm_head scaled for logits of std ~3


def test_resolve_scale_model(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    from harness.sources import model_slug, resolve_model

    path = resolve_model("synthetic:qwen3-moe-30b@0:layers=1,experts=2,vocab=1024")
    assert path.name == "synthetic-qwen3-moe-30b-s0-e2-l1-v1024-v1"
    config = json.loads((path / "config.json").read_text())
    assert config["harness_synthetic"]["experts"] == 2 and config["vocab_size"] == 1024
    assert resolve_model("synthetic:qwen3-moe-30b@0:layers=1,experts=2,vocab=1024") == path  # cached
    assert model_slug("synthetic:qwen3-moe-30b@0:layers=1,experts=2") == "synthetic-qwen3-moe-30b-s0-layers_1_experts_2"
