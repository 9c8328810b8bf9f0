"""fidelity suite and corpus windows on the seeded synthetic llama (vocab 512)."""

import math
import random
import shutil

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm import load

from harness.data.corpus import CorpusSpec, load_texts, load_windows, tokenize_windows
from harness.errors import HarnessError
from harness.suite import Suite, SuiteContext
from harness.sources.synthetic import write_synthetic
from harness.suites.fidelity import (
    FidelityOptions,
    FidelitySuite,
    cpu_kernels,
    decode_f32,
    parse_options,
    summarize_records,
)

OPTS = {"seq_len": 128, "num_windows": 6}


@pytest.fixture(scope="module")
def float_dir(tmp_path_factory):
    return write_synthetic("llama", tmp_path_factory.mktemp("fid") / "llama")


@pytest.fixture(scope="module")
def loaded(float_dir):
    return load(str(float_dir))


def perturbed(float_dir, scale=0.05, seed=1):
    """The model with seeded relative noise on every weight: a stand-in for a quantized model."""
    model, _ = load(str(float_dir))
    rng = np.random.default_rng(seed)
    params = [(name, p * (1 + scale * mx.array(rng.standard_normal(p.shape).astype(np.float32))))
              for name, p in tree_flatten(model.parameters())]
    model.update(tree_unflatten(params))
    mx.eval(model.parameters())
    return model


def make_ctx(model, tok, artifact, reference, reference_path, tmp_path, options=OPTS, limit=None):
    return SuiteContext(model=model, tokenizer=tok, artifact=artifact, exec_mode="native", reference=reference,
                        reference_path=reference_path, limit=limit, options=dict(options),
                        cache_dir=tmp_path / "cache", progress=False)


def run_suite(ctx, suite=None, items=None):
    suite = suite or FidelitySuite()
    items = items if items is not None else suite.items(ctx)
    records = list(suite.run(ctx, items))
    return suite, records, suite.summarize(ctx, records)


def independent(ref_model, model, tokens):
    """Plain full-vocabulary numbers: mlx_lm.perplexity's cross-entropy for the NLL,
    float64 numpy log-softmax for the KL."""
    x = mx.array(tokens)
    nll, kl = [], []
    for row in range(len(tokens)):
        lq = model(x[row : row + 1, :-1]).astype(mx.float32)[0]
        lp = ref_model(x[row : row + 1, :-1]).astype(mx.float32)[0]
        nll.append(np.array(nn.losses.cross_entropy(lq, x[row, 1:], reduction="none")))
        lq, lp = np.array(lq, np.float64), np.array(lp, np.float64)
        lq -= np.logaddexp.reduce(lq, axis=-1, keepdims=True)
        lp -= np.logaddexp.reduce(lp, axis=-1, keepdims=True)
        kl.append((np.exp(lp) * (lp - lq)).sum(-1))
    return np.concatenate(nll), np.concatenate(kl)


def test_float_vs_float_is_exactly_zero(loaded, float_dir, tmp_path):
    model, tok = loaded
    ctx = make_ctx(model, tok, float_dir, lambda: loaded, float_dir, tmp_path)
    suite, records, s = run_suite(ctx)
    assert s["n_windows"] == 6 and s["n"] == 6 * 127
    assert s["kld_mean"] == 0.0 and s["kld_max"] == 0.0 and s["kld_min"] == 0.0
    assert all((decode_f32(r["kld_f32"]) == 0).all() for r in records)
    assert s["top1_agreement"] == 1.0
    assert s["rms_dp"] == 0.0 and s["delta_ppl"] == 0.0
    assert s["ppl"] == s["ref_ppl"]
    # perplexity equals mlx_lm.perplexity's way of computing it on the same windows
    _, w = suite.windows(ctx)
    nll, _ = independent(model, model, w.tokens)
    assert s["ppl"] == pytest.approx(math.exp(nll.mean()), rel=1e-5)
    std_err = math.exp(nll.mean()) * nll.std(ddof=1) / math.sqrt(len(nll))  # mlx_lm's stderr
    assert s["ppl_err"] == pytest.approx(std_err, rel=1e-4)
    assert "Same top p: 100.000" in s["table"]


def test_separately_loaded_reference_is_exactly_zero_and_cached(loaded, float_dir, tmp_path):
    ref_dir = tmp_path / "ref"
    shutil.copytree(float_dir, ref_dir)
    ref = load(str(ref_dir))
    model, tok = loaded
    calls = []

    def reference():
        calls.append(1)
        return ref

    ctx = make_ctx(model, tok, float_dir, reference, ref_dir, tmp_path)
    _, _, s = run_suite(ctx)
    assert calls and s["kld_max"] == 0.0 and s["top1_agreement"] == 1.0
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == 6

    def no_reference():
        raise AssertionError("reference logits should come from the disk cache")

    ctx2 = make_ctx(model, tok, float_dir, no_reference, ref_dir, tmp_path)
    _, _, s2 = run_suite(ctx2)  # a fresh suite: only the disk cache can serve it
    assert s2 == s


def test_perturbed_model_matches_full_vocab_computation(loaded, float_dir, tmp_path):
    model, tok = loaded
    noisy = perturbed(float_dir)
    full_k = {**OPTS, "min_logp": "-1e30", "kernels": "mlx"}  # every token kept: no lumping
    ctx = make_ctx(noisy, tok, tmp_path / "q", lambda: loaded, float_dir, tmp_path, options=full_k)
    suite, _, s = run_suite(ctx)
    _, w = suite.windows(ctx)
    nll, kl = independent(model, noisy, w.tokens)
    assert s["kld_mean"] > 0.01 and s["top1_agreement"] < 1.0 and s["rms_dp"] > 0
    assert s["ppl"] != s["ref_ppl"]
    assert s["ppl"] == pytest.approx(math.exp(nll.mean()), rel=1e-5)
    assert s["kld_mean"] == pytest.approx(kl.mean(), rel=1e-4, abs=1e-7)
    assert s["kld_max"] == pytest.approx(kl.max(), rel=1e-4)
    assert s["kld_median"] == pytest.approx(np.median(kl), rel=1e-3, abs=1e-6)


def test_truncation_error_is_a_small_lower_bound(loaded, float_dir, tmp_path):
    """Entries with log p >= min_logp plus the lumped tail: a lower bound of the
    full KL that tightens as min_logp falls. Measured on this model: -6 -> -10.9 %,
    -9 -> -0.96 %, -12 (default) -> -0.03 % (SmolLM2: see suites/fidelity.py)."""
    model, tok = loaded
    noisy = perturbed(float_dir)
    gaps = []
    for min_logp in (-6, -9, -12):
        ctx = make_ctx(noisy, tok, tmp_path / "q", lambda: loaded, float_dir, tmp_path,
                       options={**OPTS, "min_logp": min_logp, "kernels": "mlx"})
        suite, records, s = run_suite(ctx)
        if not gaps:
            _, w = suite.windows(ctx)
            _, kl = independent(model, noisy, w.tokens)
        kl_s = np.concatenate([decode_f32(r["kld_f32"]) for r in sorted(records, key=lambda r: r["window"])])
        assert (kl_s <= kl + 1e-5).all()  # lumping never increases KL
        gaps.append((kl.mean() - kl_s.mean()) / kl.mean())
    assert gaps[0] > gaps[1] > gaps[2] >= 0 and gaps[2] < 0.002, gaps


def test_numpy_kernels_match_mlx(loaded):
    from mlx_lm.models import activations, llama

    model, tok = loaded
    x = mx.array(np.random.default_rng(0).integers(0, 512, (2, 300)))  # > one attention block
    sdpa, swiglu = mx.fast.scaled_dot_product_attention, activations.swiglu
    native = model(x)
    with cpu_kernels("numpy"):
        assert mx.fast.scaled_dot_product_attention is not sdpa and llama.swiglu is not swiglu
        fast = model(x)
    assert mx.fast.scaled_dot_product_attention is sdpa and llama.swiglu is swiglu  # restored
    assert float(mx.abs(native - fast).max()) < 1e-4
    with cpu_kernels("mlx"):
        assert mx.fast.scaled_dot_product_attention is sdpa


def test_resume_split_aggregates_exactly(loaded, float_dir, tmp_path):
    model, tok = loaded
    noisy = perturbed(float_dir)
    ctx = make_ctx(noisy, tok, tmp_path / "q", lambda: loaded, float_dir, tmp_path, options={**OPTS, "batch_size": 2})
    suite, records, s = run_suite(ctx)
    # a run killed after half the windows, then resumed with the rest (new suite object)
    items = suite.items(ctx)
    first = list(FidelitySuite().run(ctx, items[:3]))
    second = list(FidelitySuite().run(ctx, items[3:]))
    assert sorted(first + second, key=lambda r: r["id"]) == sorted(records, key=lambda r: r["id"])
    shuffled = first + second
    random.Random(0).shuffle(shuffled)
    assert summarize_records(shuffled) == s
    assert summarize_records(records[:2] + records[2:]) == s


def test_limit_takes_the_first_windows(loaded, float_dir, tmp_path):
    model, tok = loaded
    ctx = make_ctx(model, tok, float_dir, lambda: loaded, float_dir, tmp_path, limit=2)
    suite = FidelitySuite()
    assert [it["id"] for it in suite.items(ctx)] == ["0", "1"]
    _, w2 = suite.windows(ctx)
    _, w6 = FidelitySuite().windows(make_ctx(model, tok, float_dir, None, float_dir, tmp_path))
    assert (w2.tokens == w6.tokens[:2]).all()


def test_options_are_validated():
    assert parse_options({"min_logp": "-14", "shots": 5}).min_logp == -14.0  # other suites' keys ignored
    with pytest.raises(HarnessError, match="windowing"):
        parse_options({"windowing": "random"})
    with pytest.raises(HarnessError, match="seq_len='long' is not an integer"):
        parse_options({"seq_len": "long"})
    with pytest.raises(HarnessError, match="min_logp=0.0 must be negative"):
        parse_options({"min_logp": "0"})
    with pytest.raises(HarnessError, match="batch_size=0 is out of range"):
        parse_options({"batch_size": 0})


def test_suite_declares_options_and_metrics():
    from harness.options import route_options

    assert issubclass(FidelitySuite, Suite) and FidelitySuite.Options is FidelityOptions
    specs = {m.name: m for m in FidelitySuite.metrics}
    assert (specs["ppl"].kind, specs["ppl"].higher_is_better, specs["ppl"].max_drop, specs["ppl"].relative) == (
        "ppl", False, 0.05, True)
    assert (specs["kld_mean"].higher_is_better, specs["kld_mean"].max_drop) == (False, 0.02)
    assert (specs["top1_agreement"].kind, specs["top1_agreement"].higher_is_better) == ("proportion", True)
    assert specs["rms_dp"].kind == "info" and specs["rms_dp"].higher_is_better is None
    routed = route_options({"seq_len": "64", "fidelity.min_logp": "-10"}, {"fidelity": FidelityOptions})
    assert parse_options(routed["fidelity"]) == FidelityOptions(seq_len=64, min_logp=-10.0)


# ---------------------------------------------------------------- corpus


def test_boolq_texts_are_distinct_passages():
    texts, source = load_texts("boolq")
    assert 2800 < len(texts) < 3000 and len(set(texts)) == len(texts)
    assert "boolq" in source


def test_mlx_lm_windowing_matches_mlx_lm_perplexity(loaded, monkeypatch):
    """Same texts and seed -> the windows mlx_lm.perplexity.load_data builds."""
    import mlx_lm.perplexity as ppl
    from mlx_lm.tuner.datasets import TextDataset

    _, tok = loaded
    texts = load_texts("boolq")[0][:300]
    monkeypatch.setattr(ppl, "load_dataset", lambda args, tokenizer: (
        TextDataset([{"text": t} for t in texts], tokenizer), [], []))
    np.random.seed(7)
    theirs = np.array(ppl.load_data(tok, "unused", num_samples=5, sequence_length=64))
    ours, _ = tokenize_windows(tok, texts, CorpusSpec(seq_len=64, num_windows=5, windowing="mlx_lm", seed=7))
    assert (ours == theirs).all()
    concat, _ = tokenize_windows(tok, texts, CorpusSpec(seq_len=64, num_windows=5))
    assert not (concat == theirs).all()


def test_local_corpus_file_and_errors(loaded, tmp_path):
    _, tok = loaded
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "The capital of France is Paris."}\n' * 40)
    w = load_windows(tok, CorpusSpec(source=str(path), seq_len=16, num_windows=3))
    assert w.tokens.shape == (3, 16) and len(w.sha256) == 64
    with pytest.raises(HarnessError, match="windows"):
        load_windows(tok, CorpusSpec(source=str(path), seq_len=16, num_windows=10_000))
    with pytest.raises(HarnessError, match="unknown corpus"):
        load_texts("no-such-corpus")


@pytest.mark.slow
def test_smollm2_float_ppl_about_20_and_q4_higher(tmp_path):
    from harness.builder import BuildOptions, build
    from harness.runtime.execution import load_artifact

    ref = build(BuildOptions(model="smollm2-135m", recipe="float", progress=False), log=lambda m: None).path
    q4 = build(BuildOptions(model="smollm2-135m", recipe="uniform4", progress=False), log=lambda m: None).path
    ref_loaded = load_artifact(ref, "native")[:2]
    opts = {"num_windows": 8}
    ctx = make_ctx(*ref_loaded, ref, lambda: ref_loaded, ref, tmp_path, options=opts)
    _, _, s_float = run_suite(ctx)
    print(f"\nSmolLM2 float: ppl {s_float['ppl']:.3f} ± {s_float['ppl_err']:.3f}")
    assert 15 < s_float["ppl"] < 26 and s_float["kld_max"] == 0.0
    model, tok, _ = load_artifact(q4, "simulated")
    ctx = make_ctx(model, tok, q4, lambda: ref_loaded, ref, tmp_path, options=opts)
    _, _, s_q4 = run_suite(ctx)
    print(f"SmolLM2 uniform4 (simulated): ppl {s_q4['ppl']:.3f} ± {s_q4['ppl_err']:.3f}, "
          f"KLD {s_q4['kld_mean']:.4f}, top-1 {s_q4['top1_agreement']:.4f}, RMS Δp {s_q4['rms_dp']:.4f}")
    assert s_q4["ref_ppl"] == pytest.approx(s_float["ppl"], rel=1e-9)
    assert s_q4["ppl"] > s_float["ppl"] * 1.05 and s_q4["kld_mean"] > 0.01
    assert 0.5 < s_q4["top1_agreement"] < 1.0
