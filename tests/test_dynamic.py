import json

import mlx.core as mx
import pytest

from harness.errors import HarnessError
from harness.plan import Plan, Tensor
from harness.recipe import PlanContext
from harness.recipes import get_recipe
from harness.sources import load_float, resolve_model
from harness.quantizers.dynamic import DynamicRecipe, threshold_prefix, widths_for_target

SMALL = {"calib_samples": 4, "calib_seq_len": 32}


def _ctx(path):
    model, config = load_float(path, lazy=True)
    return PlanContext(model=model, model_path=path, config=config, progress=False)


def test_widths_follow_the_target():
    assert widths_for_target(4.6, 64) == (4, 5)  # mlx-lm's default 4/5
    assert widths_for_target(4.5, 64) == (4, 5)
    assert widths_for_target(3.7, 64) == (3, 4)
    assert widths_for_target(6.9, 64) == (6, 8)
    assert widths_for_target(4.3, 128) == (4, 5)
    for bad in (2.4, 8.5, 9.0):
        with pytest.raises(HarnessError):
            widths_for_target(bad, 64)


def test_threshold_is_the_longest_sorted_prefix_under_target():
    tensors = [Tensor(f"l{i}", "Linear", [64, 64], 4, 64, "affine") for i in range(4)]
    plan = Plan("dynamic", {}, tensors)  # 4.5 bpw; each tensor at 5 bits adds 0.25
    scores = {"l0": 0.1, "l1": 3.0, "l2": 2.0, "l3": 1.0}
    assert threshold_prefix(plan, scores, 5.0, 5, {"l0", "l1", "l2", "l3"}) == {"l1", "l2"}
    assert threshold_prefix(plan, scores, 4.74, 5, {"l0", "l1", "l2", "l3"}) == set()
    # a non-adjustable tensor (router, model-refused) is skipped, not a stopping point
    assert threshold_prefix(plan, scores, 5.0, 5, {"l0", "l2", "l3"}) == {"l2", "l3"}


@pytest.fixture(scope="module")
def minimax_plan():
    return DynamicRecipe(target_bpw=4.6, **SMALL).plan(_ctx(resolve_model("synthetic:minimax")))


def test_dynamic_plan_on_minimax(minimax_plan):
    plan = minimax_plan
    assert 4.5 < plan.bpw <= 4.6
    assert all(not t.quantized for t in plan.tensors if t.path.endswith("block_sparse_moe.gate"))
    high = {t.path for t in plan.tensors if t.bits == 5}
    assert len(high) == plan.summary["high_tensors"] > 0
    # threshold semantics: every high tensor is more sensitive than every low one
    sens, thr = plan.summary["sensitivity"], plan.summary["threshold"]
    low = {t.path for t in plan.tensors if t.bits == 4}
    assert min(sens[p] for p in high) == thr
    assert all(sens[p] < thr for p in low)


def test_dynamic_uses_our_calibration_not_the_download(monkeypatch):
    import mlx_lm.quant.utils as qutils

    def no_download(*a, **k):
        raise AssertionError("dynamic must not call mlx-lm's load_data (it downloads)")

    monkeypatch.setattr(qutils, "load_data", no_download)
    ctx = _ctx(resolve_model("synthetic:llama"))
    a = DynamicRecipe(target_bpw=3.7, **SMALL).plan(ctx)
    b = DynamicRecipe(target_bpw=3.7, **SMALL).plan(_ctx(resolve_model("synthetic:llama")))
    assert a.to_json() == b.to_json()  # deterministic
    assert {t.bits for t in a.tensors} <= {3, 4} and a.bpw <= 3.7
    assert a.params["calibration_sha256"] == json.loads(a.to_json())["summary"]["calibration_sha256"]


def test_dynamic_recipe_options_and_build(tmp_path):
    from harness.builder import BuildOptions, build

    assert get_recipe("dynamic").target_bpw == 4.6
    p = get_recipe("dynamic", target_bpw=5.6).params
    assert (p["low_bits"], p["high_bits"], p["target_bpw"]) == (5, 6, 5.6)
    with pytest.raises(HarnessError, match="oQ"):
        get_recipe("dynamic", sensitivity="x.json")
    with pytest.raises(HarnessError, match="affine"):
        get_recipe("dynamic", mode="nvfp4")
    res = build(BuildOptions(model="synthetic:llama", recipe="dynamic", recipe_options={"target_bpw": 4.55, **SMALL},
                             out=tmp_path / "art", progress=False), log=lambda m: None)
    q = json.loads((res.path / "config.json").read_text())["quantization"]
    assert any(v and v["bits"] == 5 for k, v in q.items() if isinstance(v, dict))
    import mlx_lm

    model, _ = mlx_lm.load(str(res.path))
    assert mx.isfinite(model(mx.array([[1, 2, 3]]))).all().item()
