"""The shared runtime pieces every generative suite uses: prompt encoder, greedy
generation helper, scoped CPU kernels."""

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm import load
from mlx_lm.generate import generate as mlx_generate
from mlx_lm.generate import stream_generate

from harness.errors import HarnessError
from harness.runtime.generate import Generation, _Stream, generate, generate_iter
from harness.runtime.kernels import cpu_kernels
from harness.runtime.prompt import encode_prompt, wants_chat
from harness.sources.synthetic import write_synthetic

PROMPTS = ["The capital of France is", "def add(a, b):\n    return", "Question: What is two plus three? Answer:",
           "0 1 2"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = write_synthetic("llama", tmp_path_factory.mktemp("gen") / "llama")
    model, tokenizer = load(str(path))
    return model, tokenizer


# --- prompt encoder ------------------------------------------------------------


class FakeTokenizer:
    """Adds BOS on encode (like Llama/Mistral) and its template writes BOS too."""

    bos_token, bos_token_id, has_chat_template = "<s>", 1, True

    def __init__(self):
        self.kwargs = None

    def encode(self, text, add_special_tokens=True):
        ids = [1] if add_special_tokens else []
        rest = text
        while rest.startswith("<s>"):
            ids.append(1)
            rest = rest[3:]
        return ids + [100 + ord(c) % 50 for c in rest]

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=True, **kwargs):
        self.kwargs = kwargs
        text = "<s>" + "".join(f"[{m['role']}]{m['content']}" for m in messages) + "[assistant]"
        return self.encode(text, add_special_tokens=False) if tokenize else text


def test_bos_never_doubled():
    tok = FakeTokenizer()
    chat = encode_prompt(tok, "hi", chat=True)
    assert chat[:2] == [1, 100 + ord("[") % 50]  # the template's BOS, once
    assert encode_prompt(tok, "hi")[:2] == [1, 100 + ord("h") % 50]  # raw: the tokenizer adds BOS
    assert encode_prompt(tok, "<s>hi")[:2] == [1, 100 + ord("h") % 50]  # text with BOS: not added again
    assert encode_prompt(tok, "<s><s>hi")[:2] == [1, 100 + ord("h") % 50]  # a doubled BOS loses one


def test_chat_messages_system_and_thinking_passthrough():
    tok = FakeTokenizer()
    encode_prompt(tok, "hi", chat=True)
    assert tok.kwargs == {}  # None: the tokenizer's own default
    ids = encode_prompt(tok, "hi", chat=True, system="be brief", enable_thinking=False)
    assert tok.kwargs == {"enable_thinking": False}
    assert ids == tok.encode("<s>[system]be brief[user]hi[assistant]", add_special_tokens=False)
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    assert encode_prompt(tok, msgs, chat=True) == tok.encode("<s>[user]a[assistant]b[user]c[assistant]",
                                                              add_special_tokens=False)
    with pytest.raises(HarnessError):
        encode_prompt(tok, msgs, chat=False)


def test_encoder_matches_mlx_lm_on_a_real_template(tiny):
    _, tok = tiny
    for p in PROMPTS:
        assert encode_prompt(tok, p, chat=True) == list(
            tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True))
        assert encode_prompt(tok, p) == list(tok.encode(p))


def test_wants_chat(tiny):
    _, tok = tiny
    assert wants_chat("auto", tok) and wants_chat("on", tok) and not wants_chat("off", tok)
    assert wants_chat(True, tok) and not wants_chat(False, tok)

    class NoTemplate:
        has_chat_template, chat_template = False, None

    assert not wants_chat("auto", NoTemplate())
    with pytest.raises(HarnessError, match="has none"):
        wants_chat("on", NoTemplate())
    with pytest.raises(HarnessError):
        wants_chat("maybe", tok)


# --- generation ----------------------------------------------------------------


def test_unbatched_equals_mlx_lm_generate(tiny):
    model, tok = tiny
    ids = [encode_prompt(tok, p) for p in PROMPTS]
    out = generate(model, tok, ids, max_tokens=12, batch_size=1)
    assert [g.index for g in out] == list(range(len(PROMPTS)))
    for g, prompt in zip(out, ids):
        tokens = [r.token for r in stream_generate(model, tok, mx.array(prompt), max_tokens=12)
                  if r.finish_reason != "stop"]
        assert g.tokens == tokens and len(tokens) > 0
        # the streamed text (mlx_lm.generate's; tok.decode(g.tokens) may keep a leading space it trims)
        assert g.text == mlx_generate(model, tok, prompt, max_tokens=12)
        assert g.finish_reason == ("length" if len(tokens) == 12 else "stop")
        assert g.prompt_tokens == len(prompt)


def test_batched_equals_unbatched(tiny):
    model, tok = tiny
    ids = [encode_prompt(tok, p, chat=True) for p in PROMPTS]  # different lengths: left padding
    one = generate(model, tok, ids, max_tokens=16, batch_size=1)
    many = generate(model, tok, ids, max_tokens=16, batch_size=3)  # more prompts than the batch
    assert [(g.tokens, g.text, g.finish_reason, g.stop) for g in many] == \
        [(g.tokens, g.text, g.finish_reason, g.stop) for g in one]
    assert sorted(g.index for g in generate_iter(model, tok, ids, max_tokens=4, batch_size=4)) == [0, 1, 2, 3]


@pytest.mark.parametrize("batch_size", [1, 4])
def test_eos_length_and_stop_callback(tiny, batch_size):
    model, tok = tiny
    ids = [encode_prompt(tok, p) for p in PROMPTS]
    free = generate(model, tok, ids, max_tokens=10, batch_size=batch_size)
    assert all(g.finish_reason == "length" and g.stop == "length" and len(g.tokens) == 10 for g in free)
    # EOS: make each prompt's 4th token an EOS id; generation ends there, EOS not kept
    saved = set(tok.eos_token_ids)
    tok.eos_token_ids = saved | {g.tokens[3] for g in free}
    try:
        eos = generate(model, tok, ids, max_tokens=10, batch_size=batch_size)
    finally:
        tok.eos_token_ids = saved
    for g, f in zip(eos, free):
        cut = next(i for i, t in enumerate(f.tokens) if t in {x.tokens[3] for x in free})
        assert (g.finish_reason, g.stop, g.tokens) == ("stop", "eos", f.tokens[:cut])
    # a caller's stop rule: ends the sequence with its label, the triggering token kept
    seen = []

    def stop(i, tokens, text):
        seen.append((i, len(tokens), text))
        return "enough" if len(tokens) == 3 + i else None

    out = generate(model, tok, ids, max_tokens=10, batch_size=batch_size, stop=stop)
    for i, (g, f) in enumerate(zip(out, free)):
        assert (g.finish_reason, g.stop, g.tokens) == ("stop", "enough", f.tokens[: 3 + i])
    assert seen and all(free[i].text.startswith(text) for i, n, text in seen)  # the text streamed so far
    per_prompt_limits = generate(model, tok, ids, max_tokens=[1, 2, 3, 4], batch_size=batch_size)
    assert [len(g.tokens) for g in per_prompt_limits] == [1, 2, 3, 4]


def test_streamed_text_shows_broken_utf8(tiny):
    """A cut multi-byte character is flushed as U+FFFD, not silently dropped or repaired."""
    _, tok = tiny
    ids = list(tok.encode("한국어", add_special_tokens=False))
    s = _Stream(tok)
    for t in ids:
        s.add(t)
    assert s.finish(0, "length", "length", 1).text == "한국어"
    byte_tokens = [t for t in ids if len(tok.decode([t]).encode()) and "\ufffd" in tok.decode([t])]
    assert byte_tokens, "the byte-level BPE splits Hangul into byte tokens"
    s = _Stream(tok)
    s.add(byte_tokens[0])
    g = s.finish(0, "length", "length", 1)
    assert isinstance(g, Generation) and g.text.endswith("\ufffd")


def test_bad_calls(tiny):
    model, tok = tiny
    assert generate(model, tok, []) == []
    with pytest.raises(ValueError):
        generate(model, tok, [[]])
    with pytest.raises(ValueError):
        generate(model, tok, [[1, 2]], max_tokens=0)


# --- scoped CPU kernels ----------------------------------------------------------


def test_cpu_kernels_restore_on_exit_and_on_error(tiny):
    from mlx_lm.models import activations, llama

    model, _ = tiny
    x = mx.array(np.random.default_rng(0).integers(0, 512, (2, 300)))  # > one attention block
    sdpa, swiglu = mx.fast.scaled_dot_product_attention, activations.swiglu
    native = model(x)
    with cpu_kernels("numpy"):
        assert mx.fast.scaled_dot_product_attention is not sdpa and llama.swiglu is not swiglu
        fast = model(x)
    assert mx.fast.scaled_dot_product_attention is sdpa and llama.swiglu is swiglu
    assert float(mx.abs(native - fast).max()) < 1e-4
    with pytest.raises(RuntimeError):
        with cpu_kernels("numpy"):
            raise RuntimeError("boom")
    assert mx.fast.scaled_dot_product_attention is sdpa and llama.swiglu is swiglu  # restored after an error
    with cpu_kernels("mlx"):
        assert mx.fast.scaled_dot_product_attention is sdpa
    with cpu_kernels():  # auto: numpy on CPU, MLX's own on a GPU
        patched = mx.fast.scaled_dot_product_attention is not sdpa
    assert patched == (mx.default_device() != mx.gpu)
    with pytest.raises(ValueError):
        with cpu_kernels("fast"):
            pass
