"""Layer-streamed forward (harness/runtime/streamed.py) and its use by the fidelity suite:
the same numbers as the resident path, one decoder block in memory at a time."""

import json

import mlx.core as mx
import numpy as np
import pytest

from harness.errors import HarnessError
from harness.runtime.execution import load_artifact
from harness.runtime.streamed import StreamedModel, choose_placement, resident_bytes, tensor_index
from harness.sources.synthetic import write_synthetic


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("streamed")
    return {arch: write_synthetic(arch, root / arch) for arch in ("llama", "minimax", "qwen3_moe")}


@pytest.mark.parametrize("arch", ["llama", "minimax", "qwen3_moe"])
def test_streamed_equals_resident(arch, tiny):
    model, _, _ = load_artifact(tiny[arch], "native")
    tokens = np.random.default_rng(0).integers(0, 512, (3, 40))
    resident = np.concatenate([np.array(model(mx.array(tokens[:2])).astype(mx.float32)),
                               np.array(model(mx.array(tokens[2:])).astype(mx.float32))])
    streamed = dict(StreamedModel(tiny[arch]).logits(tokens, [[0, 1], [2]]))
    assert sorted(streamed) == [0, 1, 2]
    for i in range(3):
        assert streamed[i].shape == (40, 512) and streamed[i].dtype == np.float32
        np.testing.assert_allclose(streamed[i], resident[i], rtol=0, atol=1e-5)
    # a wrong block order or a dropped block would not be close
    assert np.abs(streamed[0] - resident[1]).max() > 0.1


def test_activations_spill_to_disk_same_numbers(tiny):
    tokens = np.random.default_rng(1).integers(0, 512, (2, 24))
    in_memory = dict(StreamedModel(tiny["minimax"]).logits(tokens, [[0], [1]]))
    spilled = dict(StreamedModel(tiny["minimax"], act_budget_bytes=1).logits(tokens, [[0], [1]]))
    for i in (0, 1):
        np.testing.assert_array_equal(in_memory[i], spilled[i])


@pytest.mark.parametrize("mode", ["simulated", "native"])
def test_streamed_quantized_artifact(mode, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    from harness.builder import BuildOptions, build

    art = build(BuildOptions(model="synthetic:minimax", recipe="uniform4", progress=False), log=lambda m: None).path
    model, _, _ = load_artifact(art, mode)
    tokens = np.random.default_rng(2).integers(0, 512, (2, 32))
    resident = np.array(model(mx.array(tokens)).astype(mx.float32))
    streamed = dict(StreamedModel(art, mode).logits(tokens, [[0, 1]]))
    for i in (0, 1):
        np.testing.assert_allclose(streamed[i], resident[i], rtol=0, atol=1e-5)


def test_resident_size_and_placement(tiny):
    d = tiny["llama"]
    index = tensor_index(d)
    n_params = sum(int(np.prod(t.shape)) for t in index.values())
    assert resident_bytes(d) == 4 * n_params  # fp32 on CPU
    small = choose_placement(d, budget_gb=n_params * 4 / 2**30 / 0.5)
    assert small.mode == "resident"
    big = choose_placement(d, budget_gb=n_params * 4 / 2**30)  # weights would take the whole budget
    assert big.mode == "streamed" and big.to_json()["memory_budget_gb"] == pytest.approx(n_params * 4 / 2**30)


def test_unsupported_names_are_one_line(tiny, tmp_path):
    import shutil

    d = tmp_path / "renamed"
    shutil.copytree(tiny["llama"], d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "no_such_arch"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(HarnessError, match="streamed execution"):
        StreamedModel(d)


# ---------------------------------------------------------------- fidelity, reference streamed


def _fidelity(model, tok, artifact, ref_dir, cache, budget, options):
    from harness.suite import SuiteContext
    from harness.suites.fidelity import FidelitySuite

    def reference():
        m, t, _ = load_artifact(ref_dir, "native")
        return m, t

    ctx = SuiteContext(model=model, tokenizer=tok, artifact=artifact, exec_mode="simulated", reference=reference,
                       reference_path=ref_dir, options=dict(options), cache_dir=cache, progress=False,
                       memory_budget_gb=budget)
    suite = FidelitySuite()
    records = list(suite.run(ctx, suite.items(ctx)))
    return suite.summarize(ctx, records), suite.data_info(ctx)


def _compare_paths(model_spec, tmp_path, options):
    from harness.builder import BuildOptions, build
    from harness.sources import resolve_model

    ref_dir = resolve_model(model_spec)
    art = build(BuildOptions(model=model_spec, recipe="uniform4", progress=False), log=lambda m: None).path
    model, tok, _ = load_artifact(art, "simulated")
    resident, info_r = _fidelity(model, tok, art, ref_dir, tmp_path / "a", 1000.0, options)
    streamed, info_s = _fidelity(model, tok, art, ref_dir, tmp_path / "b", 1e-6, options)
    both, info_b = _fidelity(None, tok, art, ref_dir, tmp_path / "c", 1e-6, options)
    assert info_r["reference_placement"]["mode"] == "resident" and info_r["model_placement"] == "resident"
    assert info_s["reference_placement"]["mode"] == "streamed"
    assert info_b["model_placement"] == "streamed"
    for other in (streamed, both):
        for key in ("ppl", "ref_ppl", "kld_mean", "kld_p99", "top1_agreement", "rms_dp"):
            assert other[key] == pytest.approx(resident[key], rel=1e-6, abs=1e-6), key
    assert resident["kld_mean"] > 1e-4  # a quantized model: the comparison is not trivially 0 = 0
    return resident


def test_fidelity_reference_streamed_equals_resident(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    _compare_paths("synthetic:llama", tmp_path, {"seq_len": 64, "num_windows": 3, "batch_size": 2})


@pytest.mark.slow
def test_fidelity_reference_streamed_equals_resident_smollm2(tmp_path):
    s = _compare_paths("smollm2-135m", tmp_path, {"seq_len": 128, "num_windows": 4})
    assert 15 < s["ref_ppl"] < 80  # 128-token windows: less context than the ~20 at 512


def test_reference_budget_counts_the_resident_model(tiny):
    from harness.suite import SuiteContext
    from harness.suites.fidelity import FidelitySuite

    d = tiny["llama"]
    gb = resident_bytes(d) / 2**30
    ctx = lambda model: SuiteContext(model=model, tokenizer=None, artifact=d, exec_mode="simulated",  # noqa: E731
                                     reference=None, reference_path=d, memory_budget_gb=gb * 1.5)
    assert FidelitySuite.reference_placement(ctx(None)).mode == "resident"  # model streamed: budget all free
    placed = FidelitySuite.reference_placement(ctx(object()))  # model resident: half the budget is taken
    assert placed.mode == "streamed" and placed.budget_gb == pytest.approx(gb * 0.5)
