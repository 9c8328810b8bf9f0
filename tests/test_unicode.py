import json
import statistics
import unicodedata
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import pytest
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm import load
from mlx_lm.models.cache import make_prompt_cache

from harness.errors import HarnessError
from harness.suite import SuiteContext
from harness.sources.synthetic import write_synthetic
from harness.suites import unicode as uni
from harness.suites.unicode import UnicodeSuite
from harness.runtime import health


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The seeded tiny llama with its SmolLM2-like byte-level BPE tokenizer."""
    path = write_synthetic("llama", tmp_path_factory.mktemp("unicode") / "llama")
    model, tokenizer = load(str(path))
    return path, model, tokenizer


@pytest.fixture(scope="module")
def fitted(tiny):
    """(model, items): the tiny llama after a few Adam steps on echoing 3 short targets.

    A random model is no better at the targets than a damaged copy of it; one
    fitted to them is, so damaging it must cost log-prob."""
    path, _, tokenizer = tiny
    model, _ = load(str(path))
    template, items = uni.load_items()
    items = sorted(items, key=lambda it: len(tokenizer.encode(it["target"])))[:3]
    seqs = []
    for it in items:
        prompt = uni.build_prompt_ids(tokenizer, template, it["target"], use_chat=True)
        seqs.append((prompt, tokenizer.encode(it["target"], add_special_tokens=False)))
    width = max(len(p) + len(t) for p, t in seqs)
    ids = mx.array([p + t + [0] * (width - len(p) - len(t)) for p, t in seqs])
    on_target = mx.array([[0] * (len(p) - 1) + [1] * len(t) + [0] * (width - len(p) - len(t)) for p, t in seqs])

    def loss(m):
        ce = nn.losses.cross_entropy(m(ids[:, :-1]), ids[:, 1:])
        return (ce * on_target).sum() / on_target.sum()

    step, opt = nn.value_and_grad(model, loss), optim.Adam(learning_rate=3e-3)
    for _ in range(6):
        _, grads = step(model)
        opt.update(model, grads)
        mx.eval(model.parameters(), opt.state)
    return model, items


@pytest.fixture(scope="module")
def perturbed(tiny, fitted):
    """The fitted model plus seeded noise of the weights' own magnitude."""
    copy, _ = load(str(tiny[0]))
    noisy = [
        (name, w + w.abs().mean() * mx.random.normal(w.shape, key=mx.random.key(i)))
        for i, (name, w) in enumerate(tree_flatten(fitted[0].parameters()))
    ]
    copy.update(tree_unflatten(noisy))
    mx.eval(copy.parameters())
    return copy


def make_ctx(tiny, model=None, reference=None, artifact=None, **kw):
    path, ref_model, tokenizer = tiny
    return SuiteContext(
        model=model if model is not None else ref_model,
        tokenizer=tokenizer,
        artifact=artifact or path,
        exec_mode="simulated",
        reference=reference or (lambda: (ref_model, tokenizer)),
        reference_path=path,
        progress=False,
        **kw,
    )


# --- data --------------------------------------------------------------------


def test_data_file_covers_every_category_with_nfc_nfd_pairs():
    template, items = uni.load_items()
    assert "{target}" in template
    assert len(items) >= 30
    assert {it["category"] for it in items} == set(uni.CATEGORIES)
    nfd = [it for it in items if it.get("form") == "NFD"]
    assert len(nfd) >= 4
    for it in items:
        if "form" in it:
            assert unicodedata.is_normalized(it["form"], it["target"]), it["id"]
    for it in nfd:
        assert unicodedata.normalize("NFC", it["target"]) != it["target"], it["id"]
    # Every NFD combining item has an NFC twin with the same text.
    targets = {it["target"] for it in items}
    for it in nfd:
        if it["category"] == "combining":
            assert unicodedata.normalize("NFC", it["target"]) in targets, it["id"]


def test_items_round_robin_over_categories(tiny):
    items = UnicodeSuite().items(make_ctx(tiny, limit=10))
    assert [it["category"] for it in items] == list(uni.CATEGORIES)
    assert len({it["id"] for it in UnicodeSuite().items(make_ctx(tiny))}) == len(uni.load_items()[1])


def test_bad_option_is_one_clear_error(tiny):
    with pytest.raises(HarnessError, match="chat='maybe' is invalid; use one of: auto"):
        list(UnicodeSuite().run(make_ctx(tiny, options={"chat": "maybe"}), []))
    with pytest.raises(HarnessError, match="valid keys.*chat, slack"):
        list(UnicodeSuite().run(make_ctx(tiny, options={"temperature": "1"}), []))
    with pytest.raises(HarnessError, match="slack"):
        list(UnicodeSuite().run(make_ctx(tiny, options={"slack": "-1"}), []))


def test_prompt_ids_and_echo_are_what_mlx_lm_gives(tiny):
    """The shared encoder/generator reproduce the suite's former direct mlx-lm calls."""
    from mlx_lm.generate import stream_generate

    path, model, tokenizer = tiny
    template, items = uni.load_items()
    for it in items[:4]:
        text = template.replace("{target}", it["target"])
        chat = uni.build_prompt_ids(tokenizer, template, it["target"], use_chat=True)
        assert chat == list(tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                          add_generation_prompt=True))
        assert uni.build_prompt_ids(tokenizer, template, it["target"], use_chat=False) == \
            list(tokenizer.encode(text + "\n"))
        gen = uni.generate_echo(model, tokenizer, chat, 12)
        segments, tokens = [], []
        for r in stream_generate(model, tokenizer, mx.array(chat), max_tokens=12):
            segments.append(r.text)
            if r.finish_reason != "stop":
                tokens.append(r.token)
        assert gen["tokens"] == tokens and gen["finish_reason"] == r.finish_reason
        assert gen["output"] + "\ufffd" * bool(gen["truncated"]) == "".join(segments)


# --- counting and excerpts ----------------------------------------------------


@pytest.mark.parametrize(
    "raw, invalid",
    [
        (b"plain ascii", 0),
        ("caf\u00e9 \U0001F44D".encode(), 0),
        (b"\xef\xbf\xbd", 0),  # a literal U+FFFD is valid UTF-8
        (b"\xff", 1),
        (b"a\xe2\x82b", 1),  # truncated 3-byte sequence inside text
        (b"\xc0\xaf", 2),  # overlong encoding: both bytes invalid
        (b"\x80\x80\x80", 3),  # stray continuation bytes
        (b"ok\xf0\x9f\x98", 1),  # cut-off emoji at the end
    ],
)
def test_count_invalid_utf8(raw, invalid):
    assert uni.count_invalid_utf8(raw) == invalid
    # Same convention as errors="replace": one U+FFFD per invalid sequence.
    decoded = raw.decode("utf-8", "replace")
    assert uni.count_fffd(decoded) == invalid + raw.count(b"\xef\xbf\xbd")


def test_incomplete_tail():
    emoji = "\U0001F44D".encode()
    assert uni.incomplete_tail(b"ok" + emoji) == 0
    assert uni.incomplete_tail(b"ok" + emoji[:3]) == 3
    assert uni.incomplete_tail(b"ok" + emoji[:1]) == 1
    assert uni.incomplete_tail("é".encode()[:1]) == 1
    assert uni.incomplete_tail(b"\xe0\x80") == 0  # invalid, not merely unfinished
    assert uni.incomplete_tail(b"\x80\x80") == 0
    assert uni.incomplete_tail(b"") == 0


def test_diff_excerpt():
    assert uni.diff_excerpt("café", "Sure! café, as asked.") is None
    nfd = unicodedata.normalize("NFD", "café au lait")
    nfc = unicodedata.normalize("NFC", "café au lait")
    ex = uni.diff_excerpt(nfd, "Here: " + nfc, context=2)
    assert ex == {"at": 3, "before": "afe\u0301 a", "after": "afé a"}
    ex = uni.diff_excerpt("你好，世界", "你好,世界", context=1)
    assert ex == {"at": 2, "before": "好，世", "after": "好,世"}
    # A dropped ZWJ in the middle of a family emoji.
    family = "\U0001F468\u200D\U0001F469\u200D\U0001F467"
    ex = uni.diff_excerpt(family, family.replace("\u200D", "", 1), context=1)
    assert ex["at"] == 1 and ex["before"] == "\U0001F468\u200D\U0001F469"
    assert uni.escape_invisible(ex["before"]) == "\U0001F468\\u{200D}\U0001F469"
    assert len(uni.diff_excerpt("x", "y" * 500, width=40)["after"]) == 40


def test_score_output_flags_corruption():
    ok = uni.score_output("안녕", " 안녕\n", "안녕".encode())
    assert ok["exact_echo"] and not ok["corrupted"] and ok["excerpt"] is None
    bad_bytes = "안".encode() + b"\xeb\x85"  # second syllable cut short
    bad = uni.score_output("안녕", bad_bytes.decode("utf-8", "replace"), bad_bytes)
    assert (bad["fffd_count"], bad["invalid_utf8_count"], bad["corrupted"]) == (1, 1, True)
    assert bad["excerpt"]["after"] == "안\ufffd"
    nfc = uni.score_output("cafe\u0301", "café", None)
    assert not nfc["exact_echo"] and nfc["normalized_echo"] and nfc["invalid_utf8_count"] is None


# --- detokenizer check --------------------------------------------------------


def test_token_bytes_are_the_utf8_of_the_text(tiny):
    _, _, tokenizer = tiny
    for it in uni.load_items()[1]:
        ids = tokenizer.encode(it["target"], add_special_tokens=False)
        assert uni.token_bytes(tokenizer, ids) == it["target"].encode("utf-8"), it["id"]


def test_detokenizer_check_passes_on_byte_level_bpe(tiny):
    _, _, tokenizer = tiny
    for it in uni.load_items()[1]:
        check = uni.detokenizer_check(tokenizer, it["target"])
        assert check["roundtrip"] and check["streaming"], it["id"]
        assert check["streamed"] == it["target"]
        # Multi-byte characters really are split across byte tokens here.
    assert len(uni.detokenizer_check(tokenizer, "\U0001F44D")["ids"]) > 1


class PerTokenDetokenizer:
    """A broken streaming detokenizer: decodes every token on its own, so a
    character split across tokens comes out as U+FFFDs."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self.reset()

    def reset(self):
        self.text, self.tokens, self.offset = "", [], 0

    def add_token(self, token):
        self.tokens.append(token)
        self.text += self._tokenizer.decode([token])

    def finalize(self):
        pass

    @property
    def last_segment(self):
        segment, self.offset = self.text[self.offset :], len(self.text)
        return segment


class BrokenTokenizer:
    """Wraps the real tokenizer with a per-token detokenizer and (optionally) an
    NFC-normalizing decode, two real-world bugs."""

    def __init__(self, tokenizer, normalize_decode=False):
        self._tokenizer = tokenizer
        self._normalize = normalize_decode

    def encode(self, *args, **kwargs):
        return self._tokenizer.encode(*args, **kwargs)

    def decode(self, ids):
        text = self._tokenizer.decode(ids)
        return unicodedata.normalize("NFC", text) if self._normalize else text

    @property
    def detokenizer(self):
        return PerTokenDetokenizer(self._tokenizer)


def test_broken_detokenizers_fail_the_check(tiny):
    _, _, tokenizer = tiny
    broken = uni.detokenizer_check(BrokenTokenizer(tokenizer), "\U0001F44D\U0001F3FD")
    assert broken["roundtrip"] and not broken["streaming"]
    assert "\ufffd" in broken["streamed"]
    # ASCII survives per-token decoding, so the check is about multi-byte text.
    assert uni.detokenizer_check(BrokenTokenizer(tokenizer), "abc")["streaming"]
    normalizing = BrokenTokenizer(tokenizer, normalize_decode=True)
    assert not uni.detokenizer_check(normalizing, unicodedata.normalize("NFD", "café"))["roundtrip"]
    assert uni.detokenizer_check(normalizing, unicodedata.normalize("NFC", "café"))["roundtrip"]


# --- teacher-forced log-prob --------------------------------------------------


def test_target_logprob_matches_token_by_token_decoding(tiny):
    _, model, tokenizer = tiny
    prompt = uni.build_prompt_ids(tokenizer, "Repeat: {target}", "한국어", use_chat=True)
    target = tokenizer.encode("한국어", add_special_tokens=False)
    assert prompt[-3:] == tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)[-3:]
    # Independent computation: incremental decoding with a KV cache.
    cache = make_prompt_cache(model)
    logits = model(mx.array([prompt]), cache=cache)[0, -1]
    expected = 0.0
    for t in target:
        expected += (logits - mx.logsumexp(logits)).astype(mx.float32)[t].item()
        logits = model(mx.array([[t]]), cache=cache)[0, -1]
    assert uni.target_logprob(model, prompt, target) == pytest.approx(expected, rel=1e-4)


def test_drop_is_exactly_zero_for_the_reference_and_positive_for_a_perturbed_copy(tiny, fitted, perturbed, tmp_path):
    path, _, tokenizer = tiny
    reference, items = fitted
    suite = UnicodeSuite()

    def ctx(model, artifact, load_reference=lambda: (reference, tokenizer)):
        return make_ctx(tiny, model=model, artifact=artifact, reference=load_reference)

    # Same model scored twice (artifact is a different path): identical numbers.
    same = list(suite.run(ctx(reference, tmp_path / "float-artifact"), items))
    assert [r["logprob_drop_nats_per_char"] for r in same] == [0.0] * len(items)
    assert all(r["ref_logprob"] < 0 for r in same)

    # The artifact *is* the reference: the reference model is never loaded.
    def no_reference():
        raise AssertionError("reference loaded for the reference itself")

    itself = list(UnicodeSuite().run(ctx(reference, path, no_reference), items))
    assert [r["logprob_drop_nats_per_char"] for r in itself] == [0.0] * len(items)
    assert [r["model_logprob"] for r in itself] == [r["ref_logprob"] for r in same]

    noisy = list(suite.run(ctx(perturbed, tmp_path / "noisy"), items))
    drops = [r["logprob_drop_nats_per_char"] for r in noisy]
    assert min(drops) > 0.5
    for r, s in zip(noisy, same):
        assert r["ref_logprob"] == s["ref_logprob"]  # the reference side did not move
        assert r["logprob_drop_nats_per_char"] == pytest.approx(
            (r["ref_logprob"] - r["model_logprob"]) / len(r["target"])
        )
    summary = suite.summarize(None, noisy)
    assert summary["logprob_drop_nats_per_char_mean"] == pytest.approx(statistics.fmean(drops))
    assert summary["logprob_drop_nats_per_char_median"] == pytest.approx(statistics.median(drops))


def test_reference_logprobs_are_cached_on_disk(tiny, fitted, perturbed, tmp_path):
    reference, items = fitted

    def ctx(load_reference):
        return make_ctx(tiny, model=perturbed, artifact=tmp_path / "a", cache_dir=tmp_path, reference=load_reference)

    first = list(UnicodeSuite().run(ctx(lambda: (reference, tiny[2])), items))
    assert len(list(tmp_path.glob("unicode_v1_ref_logprobs_*.json"))) == 1

    def no_reference():
        raise AssertionError("reference should come from the disk cache")

    # A fresh suite (as in a new process) reads the cache instead of loading the reference.
    second = list(UnicodeSuite().run(ctx(no_reference), items))
    assert [r["ref_logprob"] for r in second] == [r["ref_logprob"] for r in first]
    assert first[0]["ref_logprob"] != first[0]["model_logprob"]


# --- the whole suite ----------------------------------------------------------


def test_run_records_and_summary(tiny):
    suite = UnicodeSuite()
    ctx = make_ctx(tiny, limit=20)  # every category twice
    items = suite.items(ctx)
    records = list(suite.run(ctx, items))
    assert [r["id"] for r in records] == [it["id"] for it in items]
    json.dumps(records)  # the results store writes these as JSON
    for r in records:
        assert r["generated_tokens"] <= 2 * r["target_tokens"] + uni.SLACK_TOKENS
        assert r["corrupted"] == (not r["exact_echo"] or r["fffd_count"] > 0 or r["invalid_utf8_count"] > 0)
        assert r["correct"] == r["exact_echo"]
    summary = suite.summarize(ctx, records)
    n = len(records)
    assert summary["n"] == n and summary["detok_roundtrip_pass"] and summary["detok_roundtrip_passed"] == n
    # A random model garbles multi-byte text: every measure must notice.
    assert summary["fffd_rate"] == sum(r["fffd_count"] > 0 for r in records) / n > 0.3
    assert summary["invalid_utf8_rate"] == sum(r["invalid_utf8_count"] > 0 for r in records) / n
    assert summary["exact_echo_rate"] == sum(r["exact_echo"] for r in records) / n
    lo, hi = summary["exact_echo_rate_ci95"]
    assert lo <= summary["exact_echo_rate"] <= hi
    assert set(summary["per_category"]) == set(uni.CATEGORIES)
    assert sum(c["n"] for c in summary["per_category"].values()) == n
    corrupted = {c["id"] for c in summary["corrupted"]}
    assert corrupted == {r["id"] for r in records if r["corrupted"]}
    assert all(c["before"] or c["after"] for c in summary["corrupted"])


def test_summary_on_hand_made_records():
    def rec(i, cat, echo, fffd, invalid, drop, detok=True):
        return {
            "id": f"{cat}.{i}",
            "category": cat,
            "output": "x",
            "exact_echo": echo,
            "normalized_echo": echo,
            "fffd_count": fffd,
            "invalid_utf8_count": invalid,
            "corrupted": not echo or fffd > 0,
            "excerpt": None if echo else {"at": 0, "before": "e\u0301", "after": "\ufffd"},
            "detok_pass": detok,
            "logprob_drop_nats_per_char": drop,
        }

    records = [
        rec(1, "cjk", True, 0, 0, 0.1),
        rec(2, "cjk", False, 2, 1, 0.3),
        rec(3, "math", True, 0, None, 0.2, detok=False),
        rec(4, "math", True, 0, 0, 1.0),
    ]
    s = UnicodeSuite().summarize(None, records)
    assert s["exact_echo_rate"] == 0.75 and s["fffd_rate"] == 0.25
    assert s["exact_echo_rate_ci95"] == pytest.approx([0.3006, 0.9544], abs=1e-4)  # Wilson, 3 of 4
    assert s["invalid_utf8_rate"] == pytest.approx(1 / 3)  # over the 3 measurable records
    assert s["detok_roundtrip_pass"] is False and s["detok_failures"] == ["math.3"]
    assert s["logprob_drop_nats_per_char_mean"] == pytest.approx(0.4)
    assert s["logprob_drop_nats_per_char_median"] == pytest.approx(0.25)
    assert s["per_category"]["math"]["logprob_drop_nats_per_char_mean"] == pytest.approx(0.6)
    assert s["corrupted"] == [
        {"id": "cjk.2", "category": "cjk", "before": "e\u0301", "after": "\ufffd",
         "before_escaped": "e\\u{0301}", "after_escaped": "\ufffd"}
    ]


# --- real model ---------------------------------------------------------------


def _quantize_dequantize(model, group_size=64, bits=2):
    """Simulated uniform quantization: the weights nn.quantize would store, back in fp32
    (same numbers as the native kernels, but fast fp32 matmuls on CPU)."""
    for _, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)) and module.weight.shape[-1] % group_size == 0:
            q = mx.quantize(module.weight, group_size=group_size, bits=bits)
            module.weight = mx.dequantize(*q, group_size=group_size, bits=bits)
    mx.eval(model.parameters())
    return model


@pytest.mark.slow
def test_smollm2_two_bit_drops_more_than_float():
    try:
        from harness.sources import resolve_model

        path = resolve_model("smollm2-135m")
    except (ImportError, HarnessError) as e:
        pytest.skip(f"SmolLM2 source not available: {e}")
    ref_model, tokenizer = load(str(path))
    q_model, _ = load(str(path))
    _quantize_dequantize(q_model)

    def ctx(model, artifact):
        return SuiteContext(
            model=model, tokenizer=tokenizer, artifact=artifact, exec_mode="simulated",
            reference=lambda: (ref_model, tokenizer), reference_path=path, limit=10, progress=False,
        )

    suite = UnicodeSuite()
    items = suite.items(ctx(ref_model, path))
    float_summary = suite.summarize(None, list(suite.run(ctx(ref_model, path), items)))
    q_summary = suite.summarize(None, list(suite.run(ctx(q_model, Path("uniform2")), items)))
    assert float_summary["logprob_drop_nats_per_char_mean"] == 0.0
    assert q_summary["logprob_drop_nats_per_char_mean"] > 0.1
    assert float_summary["detok_roundtrip_pass"] and q_summary["detok_roundtrip_pass"]
    assert float_summary["exact_echo_rate"] >= q_summary["exact_echo_rate"]


# --- generation health and thinking ------------------------------------------------


def test_health_flags_per_item_and_summary(tiny):
    suite = UnicodeSuite()
    ctx = make_ctx(tiny, limit=10)
    records = list(suite.run(ctx, suite.items(ctx)))
    for r in records:
        assert r["health_bad_unicode"] == (r["fffd_count"] > 0 or bool(r["invalid_utf8_count"]))
        assert r["health_budget_hit"] == r["budget_hit"] == (r["finish_reason"] == "length")
        assert r["health_empty"] == (not r["output"].strip())
        assert (r["thinking_tokens"], r["answer_tokens"]) == (0, r["generated_tokens"])
        expected = uni.expected_script(r["target"])
        if expected is None:  # emoji / math: nothing to switch from
            assert r["health_language_switch"] is False
    s = suite.summarize(ctx, records)
    n = len(records)
    for flag in ("budget_hit", "loop", "empty", "bad_unicode", "language_switch", "any"):
        assert s[f"health_{flag}_rate"] == sum(r[f"health_{flag}"] for r in records) / n
    assert s["health_bad_unicode_rate"] > 0.3  # a random model garbles multi-byte text
    assert {m.name for m in suite.metrics} >= {"health_loop_rate", "health_any_rate"}
    assert uni.expected_script("日本語") == "CJK" and uni.expected_script("한국어") == "HANGUL"


def _scripted_generate(tokenizer, base: list, script: str, answer_after_close: str):
    """A stand-in for harness.runtime.generate.generate that 'generates' `script` token by
    token after `base` (honouring max_tokens, EOS at its end and the stop callback); after a
    forced </think> it continues with `answer_after_close`."""
    from harness.runtime.generate import Generation

    def one(prompts, max_tokens, stop):
        done = tokenizer.decode(prompts[0][len(base):])
        rest = script[len(done):] if script.startswith(done) else answer_after_close
        ids = tokenizer.encode(rest, add_special_tokens=False)
        out = []
        for t in ids:
            out.append(t)
            text = tokenizer.decode(out)
            if stop is not None and stop(0, out, text):
                return [Generation(0, out, text, "stop", "tag", len(prompts[0]))]
            if len(out) == max_tokens:
                return [Generation(0, out, text, "length", "length", len(prompts[0]))]
        return [Generation(0, out, tokenizer.decode(out), "stop", "eos", len(prompts[0]))]

    def gen(model, tok, prompts, max_tokens=256, batch_size=1, stop=None):
        return one(prompts, max_tokens, stop)

    return gen


def test_thinking_is_split_off_budgeted_and_not_graded(tiny, monkeypatch):
    path, model, tokenizer = tiny
    base = tokenizer.encode("Repeat: 日本語\n")
    script = "<think>maybe 日本 or 中国 hmm</think>日本語"
    monkeypatch.setattr(uni, "generate", _scripted_generate(tokenizer, base, script, "日本語"))
    g = uni.generate_thinking_echo(model, tokenizer, base, max_tokens=20, thinking_budget=200)
    sp = g["split"]
    assert g["answer"] == "日本語" and sp.has_thinking and sp.closed and "中国" in sp.thinking
    assert sp.answer_tokens == len(tokenizer.encode("日本語", add_special_tokens=False))
    assert sp.thinking_tokens == len(tokenizer.encode(script, add_special_tokens=False)) - sp.answer_tokens
    assert not sp.budget_hit and uni.score_output("日本語", g["answer"], g["raw"])["exact_echo"]
    # a thinking budget that runs out: the block is closed for the model, the answer keeps its own budget
    g = uni.generate_thinking_echo(model, tokenizer, base, max_tokens=20, thinking_budget=3)
    assert g["split"].thinking_budget_hit and not g["split"].answer_budget_hit and g["answer"] == "日本語"
    # thinking=off: one phase of the answer budget, the think block (if any) split off the graded text
    g = uni.generate_thinking_echo(model, tokenizer, base, max_tokens=60, thinking_budget=200, allow_thinking=False)
    assert g["answer"] == "日本語" and g["split"].has_thinking and g["split"].thinking_tokens == len(g["tokens"])
    flags = health.health_flags(g["answer"], expected_script="CJK")
    assert not flags["health_any"]
