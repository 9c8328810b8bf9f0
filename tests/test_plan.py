"""harness.plan: pricing under both bpw definitions, serialisation, validation, diffs."""

import json

import pytest

from harness.errors import HarnessError
from harness.plan import Plan, Tensor, diff_plans, is_router


def _plan(**over) -> Plan:
    tensors = [
        Tensor("model.layers.0.self_attn.q_proj", "Linear", [128, 256], 4, 64, "affine"),
        Tensor("model.layers.0.mlp.down_proj", "Linear", [256, 128], 8, 64, "affine"),
        Tensor("model.layers.0.mlp.gate", "Linear", [4, 256]),  # router kept float
    ]
    return Plan(recipe="test", params={}, tensors=tensors, other_params=1000, dtype_bytes=2, **over)


def test_bpw_oq_definition_counts_group_overhead():
    plan = _plan()
    q, d, r = plan.tensors
    # 4-bit g64 affine: 4 + 32/64 = 4.5 bits; 8-bit: 8.5 bits; float router: 16 bits
    expected = (4.5 * q.numel + 8.5 * d.numel + 16 * r.numel) / (q.numel + d.numel + r.numel)
    assert plan.bpw == pytest.approx(expected)


def test_bpw_mlx_definition_counts_every_stored_byte():
    plan = _plan()
    q, d, r = plan.tensors
    nbytes = 1000 * 2 + r.numel * 2
    nbytes += q.numel * 4 // 8 + (q.numel // 64) * 2 * 2
    nbytes += d.numel * 8 // 8 + (d.numel // 64) * 2 * 2
    nparams = 1000 + q.numel + d.numel + r.numel
    assert plan.bpw_mlx == pytest.approx(nbytes * 8 / nparams)


def test_uniform_4bit_g64_is_4_5_bits():
    t = Tensor("w", "Linear", [64, 4096], 4, 64, "affine")
    assert Plan("u", {}, [t]).bpw == pytest.approx(4.5)
    mx = Tensor("w", "Linear", [64, 4096], 4, 32, "mxfp4")
    assert Plan("u", {}, [mx]).bpw == pytest.approx(4 + 8 / 32)


def test_json_round_trip_keeps_every_decision():
    plan = _plan(summary={"boosts": 3})
    again = Plan.from_json(plan.to_json())
    assert [(t.path, t.bits, t.group_size, t.mode) for t in again.tensors] == \
        [(t.path, t.bits, t.group_size, t.mode) for t in plan.tensors]
    assert again.summary == {"boosts": 3} and again.bpw == pytest.approx(plan.bpw)
    assert json.loads(plan.to_json())["format"] == "harness.plan/1"


@pytest.mark.parametrize("text, message", [
    ("{", "malformed plan JSON"),
    (json.dumps({"format": "other"}), "not a harness plan"),
    (json.dumps({"format": "harness.plan/1", "recipe": "x"}), "malformed plan JSON"),
])
def test_bad_plan_files_are_one_clear_error(text, message):
    with pytest.raises(HarnessError, match=message):
        Plan.from_json(text)


def test_quantization_config_names_every_path_and_picks_the_common_default():
    plan = _plan()
    cfg = plan.quantization_config()
    assert cfg["model.layers.0.mlp.gate"] is False
    assert cfg["model.layers.0.self_attn.q_proj"] == {"group_size": 64, "bits": 4, "mode": "affine"}
    # down_proj and q_proj have equal numel; the default is one of the quantized settings
    assert (cfg["bits"], cfg["group_size"]) in ((4, 64), (8, 64))


def _modules(plan):
    return {t.path: Tensor(t.path, t.kind, t.shape) for t in plan.tensors}


@pytest.mark.parametrize("change, message", [
    (dict(group_size=48), "group size 48 is not valid"),
    (dict(bits=7), "7-bit is not valid"),
    (dict(mode="int3"), "unknown quantization mode"),
    (dict(bits=4, group_size=32, mode="mxfp8"), "4-bit is not valid for mode mxfp8"),
])
def test_validate_rejects_impossible_settings(change, message):
    plan = _plan()
    modules = _modules(plan)
    for k, v in change.items():
        setattr(plan.tensors[0], k, v)
    with pytest.raises(HarnessError, match=message):
        plan.validate(modules)


def test_validate_rejects_group_not_dividing_input_and_unknown_paths():
    plan = _plan()
    plan.tensors[0].shape = [128, 96]
    plan.tensors[0].group_size = 64
    with pytest.raises(HarnessError, match="does not divide its input dimension 96"):
        plan.validate(_modules(plan))
    plan = _plan()
    modules = _modules(plan)
    plan.tensors.append(Tensor("model.other", "Linear", [64, 64], 4, 64, "affine"))
    with pytest.raises(HarnessError, match="not a quantizable module"):
        plan.validate(modules)


def test_diff_and_router_detection():
    a, b = _plan(), _plan()
    b.tensors[0].bits = 8
    assert diff_plans(a, b) == [("model.layers.0.self_attn.q_proj", "4b affine g64", "8b affine g64")]
    assert diff_plans(a, a) == []
    assert is_router("model.layers.3.block_sparse_moe.gate")
    assert is_router("model.layers.3.mlp.shared_expert_gate")
    assert not is_router("model.layers.3.mlp.gate_proj")
