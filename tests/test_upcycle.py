import json

import mlx.core as mx
import mlx_lm
import pytest
from mlx_lm.models.base import create_attention_mask
from mlx_lm.models.switch_layers import SwitchLinear

from harness.errors import HarnessError
from harness.sources.synthetic import write_synthetic
from harness.sources.upcycle import upcycle_to_moe

PROMPT = "The capital of France is Paris. def add(a, b): return a + b\n"


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory):
    return write_synthetic("llama", tmp_path_factory.mktemp("dense") / "llama")


@pytest.fixture(scope="module")
def dense(dense_dir):
    model, tokenizer = mlx_lm.load(str(dense_dir))
    ids = mx.array([tokenizer.encode(PROMPT)])
    return ids, model(ids)


def _rel_err(a, b):
    return (mx.linalg.norm(a - b) / mx.linalg.norm(b)).item()


def _experts_used(model, ids):
    """Per layer, the set of experts the router picks for the prompt's tokens."""
    h = model.model.embed_tokens(ids)
    mask = create_attention_mask(h, None)
    used = []
    for layer in model.layers:
        r = h + layer.self_attn(layer.input_layernorm(h), mask, None)
        moe = layer.block_sparse_moe
        gates = moe.gate(layer.post_attention_layernorm(r))
        inds = mx.argpartition(-gates, kth=moe.num_experts_per_tok - 1, axis=-1)
        used.append(set(inds[..., : moe.num_experts_per_tok].flatten().tolist()))
        h = layer(h, mask, None)
    return used


def test_noise_zero_matches_dense(dense_dir, dense, tmp_path):
    ids, ref = dense
    out = upcycle_to_moe(dense_dir, tmp_path / "moe", noise=0.0)
    model, _ = mlx_lm.load(str(out))
    logits = model(ids)
    assert mx.abs(logits - ref).max().item() < 1e-4
    assert _rel_err(logits, ref) < 1e-5


def test_default_noise_is_close_and_routes(dense_dir, dense, tmp_path):
    ids, ref = dense
    out = upcycle_to_moe(dense_dir, tmp_path / "moe")
    model, tokenizer, config = mlx_lm.load(str(out), return_config=True)
    assert config["model_type"] == "mixtral"
    assert config["num_local_experts"] == 4 and config["num_experts_per_tok"] == 2
    moe = model.layers[0].block_sparse_moe
    assert isinstance(moe.switch_mlp.gate_proj, SwitchLinear)
    assert moe.switch_mlp.down_proj.weight.shape == (4, 128, 256)
    assert moe.gate.weight.shape == (4, 128)

    logits = model(ids)
    err = _rel_err(logits, ref)
    assert 1e-3 < err < 0.05  # measured 0.015: noisy, but close to dense
    assert (logits.argmax(-1) == ref.argmax(-1)).mean().item() > 0.9

    # Experts are distinct noisy copies, ~1% apart.
    w = moe.switch_mlp.up_proj.weight
    assert 0.005 < _rel_err(w[1], w[0]) < 0.03

    # The router spreads tokens: every layer uses at least 3 of its 4 experts.
    assert all(len(s) >= 3 for s in _experts_used(model, ids))

    # Tokenizer copied byte for byte.
    assert (out / "tokenizer.json").read_bytes() == (dense_dir / "tokenizer.json").read_bytes()
    assert tokenizer.encode(PROMPT) == ids[0].tolist()


def test_seeded(dense_dir, tmp_path):
    a = mx.load(str(upcycle_to_moe(dense_dir, tmp_path / "a", seed=0) / "model.safetensors"))
    b = mx.load(str(upcycle_to_moe(dense_dir, tmp_path / "b", seed=0) / "model.safetensors"))
    c = mx.load(str(upcycle_to_moe(dense_dir, tmp_path / "c", seed=1) / "model.safetensors"))
    key = "model.layers.2.block_sparse_moe.switch_mlp.gate_proj.weight"
    assert mx.array_equal(a[key], b[key])
    assert not mx.array_equal(a[key], c[key])
    gate = "model.layers.2.block_sparse_moe.gate.weight"
    assert mx.array_equal(a[gate], b[gate]) and not mx.array_equal(a[gate], c[gate])


def test_experts_and_top_k(dense_dir, dense, tmp_path):
    ids, ref = dense
    out = upcycle_to_moe(dense_dir, tmp_path / "moe", num_experts=8, top_k=1, noise=0.0)
    model, _ = mlx_lm.load(str(out))
    assert model.layers[3].block_sparse_moe.switch_mlp.up_proj.weight.shape[0] == 8
    assert _rel_err(model(ids), ref) < 1e-5


def test_rejects_bad_input(dense_dir, tmp_path):
    with pytest.raises(HarnessError, match="top_k"):
        upcycle_to_moe(dense_dir, tmp_path / "x", num_experts=2, top_k=3)
    with pytest.raises(HarnessError, match="noise"):
        upcycle_to_moe(dense_dir, tmp_path / "x", noise=-1)
    moe_dir = write_synthetic("minimax", tmp_path / "minimax")
    with pytest.raises(HarnessError, match="llama"):
        upcycle_to_moe(moe_dir, tmp_path / "x")
    quantized = tmp_path / "quantized"
    quantized.mkdir()
    config = json.loads((dense_dir / "config.json").read_text())
    config["quantization"] = {"group_size": 64, "bits": 4}
    (quantized / "config.json").write_text(json.dumps(config))
    with pytest.raises(HarnessError, match="quantized"):
        upcycle_to_moe(quantized, tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_smollm2_moe_still_knows_paris():
    from harness.sources import resolve_model

    try:
        resolve_model("smollm2-135m")
    except (HarnessError, ImportError) as e:
        pytest.skip(f"SmolLM2 source not available: {e}")
    model, tokenizer = mlx_lm.load(str(resolve_model("smollm2-moe")))
    assert model.args.model_type == "mixtral"
    ids = tokenizer.encode("The capital of France is")
    tokens = [r.token for r in mlx_lm.stream_generate(model, tokenizer, ids, max_tokens=3)]
    # Decode the tokens: the streaming detokenizer drops the first leading space.
    text = tokenizer.decode(tokens)
    assert text.startswith(" Paris"), text
