"""`--recipe DIR`: evaluate a quant that mlx-lm (not this tool) made, against its float source."""

import json

import pytest

from harness.builder import BuildOptions, build, make_plan
from harness.errors import HarnessError
from harness.plan import diff_plans
from harness.results import read_result
from harness.sources import resolve_model


@pytest.fixture(scope="module")
def mlx_q4(tmp_path_factory):
    """synthetic:llama quantized by mlx_lm.convert (4-bit g64, bf16), not by our builder."""
    from mlx_lm import convert

    out = tmp_path_factory.mktemp("published") / "llama-4bit-mlx"
    convert(str(resolve_model("synthetic:llama")), mlx_path=str(out), quantize=True, q_bits=4, q_group_size=64,
            dtype="bfloat16")
    return out


def _plan(model, recipe, **kw):
    return make_plan(BuildOptions(model=model, recipe=recipe, progress=False, recipe_options=kw or None))[0]


def test_plan_read_back_from_config_and_tensors(mlx_q4):
    plan = _plan("synthetic:llama", str(mlx_q4))
    assert plan.recipe == "llama-4bit-mlx"
    assert all(t.quantized and (t.bits, t.group_size, t.mode) == (4, 64, "affine") for t in plan.tensors)
    assert {t.reason for t in plan.tensors} == {"config.json: default"}  # mlx-lm writes no per-path entries
    ours = _plan("synthetic:llama", "uniform4")
    assert diff_plans(plan, ours) == []
    assert plan.bpw == pytest.approx(4.5) and plan.bpw_mlx == pytest.approx(ours.bpw_mlx)


def test_per_path_overrides_and_float_paths_read_back(tmp_path):
    """Our own oq4 build of the MoE seed architecture, read back as an existing quant:
    mixed widths and float routers come back exactly."""
    built = build(BuildOptions(model="synthetic:minimax", recipe="oq4", out=tmp_path / "oq4",
                               recipe_options={"calib_samples": 4, "calib_seq_len": 32}, progress=False),
                  log=lambda m: None)
    back = _plan("synthetic:minimax", str(built.path))
    assert diff_plans(back, built.plan) == []
    assert len({t.bits for t in back.tensors if t.quantized}) > 1
    assert any(not t.quantized and t.path.endswith("block_sparse_moe.gate") for t in back.tensors)
    assert back.summary["per_path_overrides"] > 0 and back.bpw == pytest.approx(built.plan.bpw)


def test_fidelity_equals_our_uniform4_build(mlx_q4, tmp_path):
    from harness.cli import main

    out = tmp_path / "results"
    rc = main(["run", "--recipe", "uniform4", "--recipe", str(mlx_q4), "--model", "synthetic:llama",
               "--suite", "fidelity", "--limit", "2", "--out", str(out), "--no-progress"])
    assert rc == 0
    ours = read_result(out / "synthetic-llama" / "uniform4" / "fidelity.json")["summary"]
    theirs = read_result(out / "synthetic-llama" / "llama-4bit-mlx" / "fidelity.json")["summary"]
    assert theirs["kld_mean"] > 0
    for key in ("kld_mean", "kld_p99", "ppl"):
        if key in ours:
            assert theirs[key] == pytest.approx(ours[key], abs=1e-6), key


def test_artifact_links_the_files_and_records_provenance(mlx_q4, tmp_path):
    res = build(BuildOptions(model="synthetic:llama", recipe=str(mlx_q4), out=tmp_path / "art", progress=False),
                log=lambda m: None)
    prov = json.loads((res.path / "provenance.json").read_text())
    assert prov["existing_quant"] == str(mlx_q4) and prov["dtype"] == "existing"
    shards = list(res.path.glob("*.safetensors"))
    assert shards and all(s.is_symlink() and s.resolve().parent == mlx_q4 for s in shards)
    assert json.loads((res.path / "config.json").read_text())["quantization"]["bits"] == 4
    assert prov["bpw_mlx"] == pytest.approx(res.plan.bpw_mlx, abs=1e-3)


def test_quant_of_another_model_is_refused(mlx_q4):
    with pytest.raises(HarnessError, match="tensor names differ") as e:
        _plan("synthetic:minimax", str(mlx_q4))
    assert "\n" not in str(e.value)
    # same architecture and shapes, other weights (seed 1): the weight check catches it
    with pytest.raises(HarnessError, match="dequantizes .* away from the reference"):
        _plan("synthetic:llama@1", str(mlx_q4))


def test_not_a_quant_and_bad_hub_spec_are_one_line_errors(tmp_path):
    from harness.recipes import get_recipe

    with pytest.raises(HarnessError, match="not an mlx-lm quantized model"):
        get_recipe(str(resolve_model("synthetic:llama")))
    with pytest.raises(HarnessError, match="hub:org/name"):
        get_recipe("hub:not a repo")


def test_cli_plan_and_diff_against_our_recipes(mlx_q4, capsys):
    from harness.cli import main

    assert main(["plan", "--recipe", str(mlx_q4), "--model", "synthetic:llama", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "4.500 (quantized weights + scale/bias overhead, oQ definition)" in out and "mlx-lm compute_bits" in out
    assert "existing quant: " + str(mlx_q4) in out and "config.json: default" in out
    assert main(["plan", "--diff", str(mlx_q4), "uniform4", "--model", "synthetic:llama", "--no-progress"]) == 0
    assert "plans are identical" in capsys.readouterr().out
    assert main(["plan", "--diff", str(mlx_q4), "uniform3", "--model", "synthetic:llama", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "4b affine g64" in out and "3b affine g64" in out and "llama-4bit-mlx: 4.500 bpw" in out


def test_non_mlx_quantization_config_is_refused(mlx_q4, tmp_path):
    import shutil

    from harness.recipes import get_recipe

    other = tmp_path / "gptq"
    shutil.copytree(mlx_q4, other)
    config = json.loads((other / "config.json").read_text())
    config.pop("quantization")
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 128}
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(HarnessError, match="gptq checkpoint, not an mlx-lm quant"):
        get_recipe(str(other))
