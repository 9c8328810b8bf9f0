"""GGUF import: exact weights (incl. the llama q/k un-permute), tokenizer, bad input."""

import json
import time
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize, quantize
from mlx.utils import tree_flatten
from tokenizers import pre_tokenizers

from harness.sources import gguf_import
from harness.errors import HarnessError
from harness.sources.gguf_import import convert_gguf, unpermute_rope

HIDDEN, HEADS, KV_HEADS, LAYERS, FFN = 64, 4, 2, 2, 256
HEAD_DIM = HIDDEN // HEADS
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "1 2"]
CHAT_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


def llama_cpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf does to llama q/k rows (LlamaModel.permute)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tiny_vocab():
    """Byte-level alphabet + a few merges + control tokens, as GGUF tokens/types."""
    tokens = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens += [m.replace(" ", "") for m in MERGES] + SPECIALS + ["<tool>"]
    types = [1] * (len(tokens) - len(SPECIALS) - 1) + [3] * len(SPECIALS) + [4]
    return tokens, types


def hf_weights(arch: str, vocab: int, tied: bool, seed: int = 0) -> dict:
    """Random weights in mlx-lm / HF naming and layout."""
    rng = np.random.default_rng(seed)

    def rand(*shape):
        return rng.standard_normal(shape).astype(np.float32) * 0.1

    w = {"model.embed_tokens.weight": rand(vocab, HIDDEN), "model.norm.weight": 1 + rand(HIDDEN)}
    if not tied:
        w["lm_head.weight"] = rand(vocab, HIDDEN)
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = 1 + rand(HIDDEN)
        w[p + "post_attention_layernorm.weight"] = 1 + rand(HIDDEN)
        w[p + "self_attn.q_proj.weight"] = rand(HEADS * HEAD_DIM, HIDDEN)
        w[p + "self_attn.k_proj.weight"] = rand(KV_HEADS * HEAD_DIM, HIDDEN)
        w[p + "self_attn.v_proj.weight"] = rand(KV_HEADS * HEAD_DIM, HIDDEN)
        w[p + "self_attn.o_proj.weight"] = rand(HIDDEN, HEADS * HEAD_DIM)
        w[p + "mlp.gate_proj.weight"] = rand(FFN, HIDDEN)
        w[p + "mlp.up_proj.weight"] = rand(FFN, HIDDEN)
        w[p + "mlp.down_proj.weight"] = rand(HIDDEN, FFN)
        if arch == "qwen2":
            for proj, rows in (("q", HEADS), ("k", KV_HEADS), ("v", KV_HEADS)):
                w[p + f"self_attn.{proj}_proj.bias"] = rand(rows * HEAD_DIM)
        if arch == "qwen3":
            w[p + "self_attn.q_norm.weight"] = 1 + rand(HEAD_DIM)
            w[p + "self_attn.k_norm.weight"] = 1 + rand(HEAD_DIM)
    return w


GGUF_NAMES = {
    "model.embed_tokens": "token_embd",
    "model.norm": "output_norm",
    "lm_head": "output",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_name(name: str) -> str:
    stem, suffix = name.rsplit(".", 1)
    if stem.startswith("model.layers."):
        _, _, i, rest = stem.split(".", 3)
        return f"blk.{i}.{GGUF_NAMES[rest]}.{suffix}"
    return f"{GGUF_NAMES[stem]}.{suffix}"


def write_gguf(
    path: Path, arch: str, weights: dict, pre: str = "gpt-2", quant: dict = None, raw: dict = None, add_bos=False,
    extra: dict = None,
):
    """Write weights the way llama.cpp's converter would (llama q/k permuted).

    quant: {hf name: GGMLQuantizationType} to quantize with gguf.quants;
    raw: {hf name: (uint8 bytes array, type)} already-encoded tensors.
    """
    quant, raw = quant or {}, raw or {}
    tokens, types = tiny_vocab()
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(512)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(500000.0)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(MERGES)
    w.add_bos_token_id(tokens.index("<|im_start|>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_add_bos_token(add_bos)
    w.add_chat_template(CHAT_TEMPLATE)
    for name, value in weights.items():
        if name in raw:
            data, qtype = raw[name]
            w.add_tensor(gguf_name(name), data, raw_dtype=qtype)
            continue
        if arch == "llama" and ".q_proj." in name:
            value = llama_cpp_permute(value, HEADS)
        elif arch == "llama" and ".k_proj." in name:
            value = llama_cpp_permute(value, KV_HEADS)
        if name in quant:
            w.add_tensor(gguf_name(name), quantize(value, quant[name]), raw_dtype=quant[name])
        else:
            w.add_tensor(gguf_name(name), value)
    for name, value in (extra or {}).items():
        w.add_tensor(name, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def loaded_weights(model) -> dict:
    return {k: np.array(v) for k, v in tree_flatten(model.parameters())}


@pytest.mark.parametrize("arch,tied", [("llama", False), ("qwen2", True), ("qwen3", False)])
def test_tiny_model_weights_exact(tmp_path, arch, tied):
    import mlx_lm

    tokens, _ = tiny_vocab()
    weights = hf_weights(arch, len(tokens), tied)
    src = write_gguf(tmp_path / "tiny.gguf", arch, weights)
    out = convert_gguf(src, tmp_path / "model")

    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == arch
    assert config["num_key_value_heads"] == KV_HEADS
    assert config["tie_word_embeddings"] is tied
    assert config["rope_theta"] == 500000.0 and config["rms_norm_eps"] == 1e-6
    assert config["vocab_size"] == len(tokens)

    model, tokenizer = mlx_lm.load(str(out))
    got = loaded_weights(model)
    assert set(got) == set(weights)
    for name, value in weights.items():
        assert np.array_equal(got[name], value), name
    if arch == "llama":
        # the permutation is not a no-op, so the equality above proves the un-permute
        q = weights["model.layers.0.self_attn.q_proj.weight"]
        assert not np.array_equal(llama_cpp_permute(q, HEADS), q)
    assert tokenizer.eos_token_ids == {tokens.index("<|im_end|>")}


def test_unpermute_inverts_llama_cpp_permute():
    w = np.arange(8 * 16 * 3, dtype=np.float32).reshape(8 * 16, 3)
    assert np.array_equal(unpermute_rope(llama_cpp_permute(w, 8), 8), w)
    b = np.arange(4 * 16, dtype=np.float32)  # biases are permuted the same way
    assert np.array_equal(unpermute_rope(llama_cpp_permute(b, 4), 4), b)


def test_quantized_tensors_dequantize(tmp_path):
    import mlx_lm

    tokens, _ = tiny_vocab()
    weights = hf_weights("llama", len(tokens), tied=True, seed=1)
    q_name, k_name = "model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.weight"
    down = "model.layers.0.mlp.down_proj.weight"
    # Q4_K cannot be written by gguf-py; build valid blocks by hand (144 bytes per
    # 256 values: f16 d, f16 dmin, 12 scale bytes, 128 nibble bytes).
    rng = np.random.default_rng(2)
    blocks = rng.integers(0, 256, size=(HIDDEN, 144), dtype=np.uint8)
    blocks[:, 0:4] = np.frombuffer(np.array([0.01, 0.002], dtype=np.float16).tobytes(), np.uint8)
    Q = gguf.GGMLQuantizationType
    src = write_gguf(
        tmp_path / "q.gguf", "llama", weights,
        quant={q_name: Q.Q8_0, k_name: Q.Q4_0}, raw={down: (blocks, Q.Q4_K)},
    )
    out = convert_gguf(src, tmp_path / "model")
    model, _ = mlx_lm.load(str(out))
    got = loaded_weights(model)

    expected_q = unpermute_rope(dequantize(quantize(llama_cpp_permute(weights[q_name], HEADS), Q.Q8_0), Q.Q8_0), HEADS)
    assert np.array_equal(got[q_name], expected_q)
    assert np.abs(got[q_name] - weights[q_name]).max() < 0.01  # Q8_0 error, rows in the right place
    assert np.abs(got[k_name] - weights[k_name]).max() < 0.1  # Q4_0 error
    assert np.array_equal(got[down], dequantize(blocks, Q.Q4_K).reshape(HIDDEN, FFN))
    assert np.array_equal(got["model.layers.0.mlp.up_proj.weight"], weights["model.layers.0.mlp.up_proj.weight"])


def test_llama3_rope_freqs(tmp_path):
    """Llama 3.1+ GGUFs carry rope scaling only as computed factors (rope_freqs)."""
    import mlx_lm

    # as convert_hf_to_gguf computes them for factor 32, low 1, high 4, original 8192
    freqs = 1.0 / 500000.0 ** (np.arange(0, HEAD_DIM, 2) / HEAD_DIM)
    wavelen = 2 * np.pi / freqs
    smooth = (8192 / wavelen - 1) / (4 - 1)
    factors = np.where(wavelen < 8192 / 4, 1.0, np.where(wavelen > 8192, 32.0, 1 / ((1 - smooth) / 32 + smooth)))
    assert len(set(factors.round(3))) == 3  # fast, smoothed and slow dimensions all present
    tokens, _ = tiny_vocab()
    weights = hf_weights("llama", len(tokens), tied=True)
    src = write_gguf(tmp_path / "l3.gguf", "llama", weights, extra={"rope_freqs.weight": factors.astype(np.float32)})
    out = convert_gguf(src, tmp_path / "model")
    config = json.loads((out / "config.json").read_text())
    assert config["rope_scaling"] == {
        "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    model, _ = mlx_lm.load(str(out))
    assert type(model.model.layers[0].self_attn.rope).__name__ == "Llama3RoPE"


def test_bfloat16_output(tmp_path):
    import mlx.core as mx

    tokens, _ = tiny_vocab()
    src = write_gguf(tmp_path / "tiny.gguf", "qwen2", hf_weights("qwen2", len(tokens), tied=True))
    out = convert_gguf(src, tmp_path / "model", dtype="bfloat16")
    w = mx.load(str(out / "model.safetensors"))
    assert all(v.dtype == mx.bfloat16 for v in w.values())
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"


@pytest.mark.parametrize(
    "pre,digits,add_bos",
    [("smollm", ["1", "2"], False), ("gpt-2", ["12"], False), ("qwen2", ["1", "2"], False),
     ("llama-bpe", ["12"], True), ("default", ["12"], False)],
)
def test_tokenizer(tmp_path, pre, digits, add_bos):
    import mlx_lm

    tokens, _ = tiny_vocab()
    weights = hf_weights("llama", len(tokens), tied=True)
    src = write_gguf(tmp_path / "tiny.gguf", "llama", weights, pre=pre, add_bos=add_bos)
    _, tok = mlx_lm.load(str(convert_gguf(src, tmp_path / "model")))

    bos = [tokens.index("<|im_start|>")] * add_bos
    assert tok.encode(" the he") == bos + [tokens.index("Ġthe"), tokens.index("Ġ"), tokens.index("he")]
    # digits: smollm/qwen2 split them one by one even though the merge "1 2" exists
    assert tok.encode("12") == bos + [tokens.index(t) for t in digits]
    ids = tok.encode("<|endoftext|>user<tool>", add_special_tokens=False)
    assert ids[0] == tokens.index("<|endoftext|>") and ids[-1] == tokens.index("<tool>")
    assert tok.decode(ids, skip_special_tokens=True) == "user<tool>"  # control = special
    for text in ["héllo wörld 12345", "def f(x):\n\treturn x  # 🤖👍🏽", "<|im_start|>user\nhi<|im_end|>\n"]:
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    assert tok.bos_token == "<|im_start|>" and tok.eos_token == "<|im_end|>"
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n"


def _assert_nothing_written(parent: Path, out: Path):
    assert not out.exists()
    assert not parent.exists() or not any(p.name.startswith(f".{out.name}.tmp") for p in parent.iterdir())


def test_bad_inputs(tmp_path):
    tokens, _ = tiny_vocab()
    good = write_gguf(tmp_path / "good.gguf", "llama", hf_weights("llama", len(tokens), tied=True))
    out = tmp_path / "out" / "model"

    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_text("this is not a gguf file")
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size - 1000])
    header_only = tmp_path / "header.gguf"
    header_only.write_bytes(good.read_bytes()[:100])
    cases = {not_gguf: "not a GGUF file", truncated: "truncated", header_only: "truncated",
             tmp_path / "missing.gguf": "does not exist"}
    for path, words in cases.items():
        with pytest.raises(HarnessError, match=words) as e:
            convert_gguf(path, out)
        assert "\n" not in str(e.value)
        _assert_nothing_written(out.parent, out)


def test_unsupported_arch_and_pre_tokenizer(tmp_path):
    tokens, _ = tiny_vocab()
    weights = hf_weights("llama", len(tokens), tied=True)
    out = tmp_path / "out" / "model"
    falcon = write_gguf(tmp_path / "falcon.gguf", "falcon", weights)
    with pytest.raises(HarnessError, match="architecture 'falcon' is not supported"):
        convert_gguf(falcon, out)
    odd = write_gguf(tmp_path / "odd.gguf", "llama", weights, pre="made-up-bpe")
    with pytest.raises(HarnessError, match="pre-tokenizer 'made-up-bpe' is not supported"):
        convert_gguf(odd, out)
    q8_1 = (np.zeros(2 * 40, np.uint8), gguf.GGMLQuantizationType.Q8_1)  # gguf-py cannot dequantize Q8_1
    odd_type = write_gguf(tmp_path / "q81.gguf", "llama", weights, raw={"model.norm.weight": q8_1})
    with pytest.raises(HarnessError, match="Q8_1, which the gguf package cannot dequantize"):
        convert_gguf(odd_type, out)
    _assert_nothing_written(out.parent, out)


def test_failure_while_writing_leaves_nothing(tmp_path, monkeypatch):
    tokens, _ = tiny_vocab()
    src = write_gguf(tmp_path / "tiny.gguf", "qwen2", hf_weights("qwen2", len(tokens), tied=True))
    out = tmp_path / "out" / "model"

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(gguf_import, "_write_json", fail)
    with pytest.raises(OSError):
        convert_gguf(src, out)
    _assert_nothing_written(out.parent, out)


@pytest.mark.slow
def test_smollm2_gguf(tmp_path):
    import mlx_lm
    from mlx_lm.sample_utils import make_sampler

    from harness.data.packages import smollm2_gguf

    start = time.perf_counter()
    out = convert_gguf(smollm2_gguf(), tmp_path / "smollm2")
    assert time.perf_counter() - start < 60  # ~8 s measured on 2 CPU cores

    model, tok = mlx_lm.load(str(out))
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] and config["vocab_size"] == 49152
    assert sum(v.size for _, v in tree_flatten(model.parameters())) == 134_515_008
    assert all(v.dtype.size == 4 for _, v in tree_flatten(model.parameters()))

    first = next(mlx_lm.stream_generate(model, tok, "The capital of France is", max_tokens=1,
                                        sampler=make_sampler(temp=0.0)))
    assert tok.decode([first.token]) == " Paris"

    # ids of SmolLM2's own tokenizer (digits split one by one)
    assert tok.encode("The capital of France is") == [504, 3575, 282, 4649, 314]
    assert tok.encode("Hello world! 123") == [19556, 905, 17, 216, 33, 34, 35]
    assert tok.encode("<|im_start|>user") == [1, 4093]
    for text in ["12345", "def add(a, b):\n    return a + b  # sum\n", "naïve café 日本語 🤖👍🏽",
                 "<|im_start|>user\nhi<|im_end|>\n"]:
        assert tok.decode(tok.encode(text)) == text
    assert "<|im_start|>assistant" in tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
