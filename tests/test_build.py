"""Foundation: recipes -> plans -> builds, checked on what is actually stored."""

import json
import os
from pathlib import Path

import mlx.core as mx
import pytest

from harness.builder import BuildOptions, build, make_plan
from harness.cache import cache_root
from harness.cli import main
from harness.errors import HarnessError
from harness.plan import Plan, Tensor, diff_plans
from harness.sources import resolve_model


def stored_settings(artifact: Path) -> dict:
    """{module path: bits or 'float'} recovered from the safetensors + config, not the plan."""
    config = json.loads((artifact / "config.json").read_text())
    weights = {}
    for f in artifact.glob("*.safetensors"):
        weights.update(mx.load(str(f)))
    out = {}
    for name, w in weights.items():
        if not name.endswith(".weight"):
            continue
        path = name[: -len(".weight")]
        if f"{path}.scales" in weights:
            q = config["quantization"][path]
            scales = weights[f"{path}.scales"]
            in_dim = scales.shape[-1] * q["group_size"]
            out[path] = w.shape[-1] * 32 // in_dim  # packed uint32 words -> bits per weight
        else:
            out[path] = "float"
    return out


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_recipes_lists_at_least_six(capsys):
    code, out, _ = run_cli(capsys, "recipes")
    assert code == 0
    names = [line.split()[0] for line in out.splitlines()[2:] if line.strip() and not line.startswith("Also")]
    assert len(names) >= 6
    for expected in ("uniform4", "float", "tiers-3.7", "mlx-mixed-3-6"):
        assert expected in names


def test_tiers_stores_exact_bits_on_minimax(capsys):
    code, out, err = run_cli(capsys, "build", "--recipe", "tiers-3.7", "--model", "synthetic:minimax",
                             "--no-progress")
    assert code == 0, err
    artifact = Path(out.strip().splitlines()[-1])
    stored = stored_settings(artifact)
    layers = {int(p.split(".")[2]) for p in stored if p.startswith("model.layers.")}
    first, last = min(layers), max(layers)
    assert len(layers) == 4
    for path, bits in stored.items():
        if "self_attn" in path and path.endswith("_proj"):
            assert bits == 8, path
        elif "switch_mlp" in path:
            layer = int(path.split(".")[2])
            assert bits == (4 if layer in (first, last) else 3), path
        elif path.endswith("block_sparse_moe.gate") or "norm" in path:
            assert bits == "float", path
        elif path.endswith(("embed_tokens", "lm_head")):
            assert bits == 8, path
    # norms are float tensors without scales
    weights = {}
    for f in artifact.glob("*.safetensors"):
        weights.update(mx.load(str(f)))
    assert "model.layers.0.input_layernorm.weight" in weights
    assert "model.layers.0.input_layernorm.scales" not in weights
    assert "model.layers.0.block_sparse_moe.gate.scales" not in weights
    config = json.loads((artifact / "config.json").read_text())
    assert config["quantization"]["model.layers.0.block_sparse_moe.gate"] is False
    assert (artifact / "plan.json").is_file() and (artifact / "provenance.json").is_file()


def test_uniform4_bpw_both_definitions_and_cache_hit(capsys):
    # a seed no other test builds, so the first build is a miss whatever ran before in this session
    opts = BuildOptions(model="synthetic:llama@11", recipe="uniform4", progress=False)
    first = build(opts, log=lambda m: None)
    assert not first.cache_hit
    assert first.plan.bpw == pytest.approx(4.5)
    prov = json.loads((first.path / "provenance.json").read_text())
    # analytic mlx-lm bpw == mlx-lm's compute_bits_per_weight on the artifact
    assert prov["bpw_mlx"] == pytest.approx(first.plan.bpw_mlx, abs=1e-3)
    for key in ("versions", "source_fingerprint", "recipe", "recipe_params", "seed", "time", "host", "blas"):
        assert key in prov
    second = build(opts, log=lambda m: None)
    assert second.cache_hit and second.path == first.path
    code, out, err = run_cli(capsys, "build", "--recipe", "uniform4", "--model", "synthetic:llama@11", "--no-progress")
    assert code == 0 and "cache hit" in err and out.strip().splitlines()[-1] == str(first.path)


@pytest.mark.parametrize("mode,bits", [("mxfp4", 4), ("nvfp4", 4), ("mxfp8", 8)])
def test_uniform_modes_store_their_format(mode, bits):
    res = build(BuildOptions(model="synthetic:llama", recipe=f"uniform{bits}", progress=False,
                             recipe_options={"mode": mode}), log=lambda m: None)
    config = json.loads((res.path / "config.json").read_text())
    q = config["quantization"]["model.layers.0.self_attn.q_proj"]
    assert q["mode"] == mode and q["bits"] == bits
    assert set(stored_settings(res.path).values()) - {"float"} == {bits}


def test_mlx_mixed_matches_mlx_lm_predicate():
    from mlx_lm.convert import mixed_quant_predicate_builder

    plan, _, _, model = make_plan(BuildOptions(model="synthetic:llama", recipe="mlx-mixed-3-6", progress=False))
    predicate = mixed_quant_predicate_builder("mixed_3_6", model, 64)
    for t in plan.tensors:
        assert t.bits == predicate(t.path, None)["bits"], t.path
    assert {t.bits for t in plan.tensors} == {3, 6}


def test_model_predicate_composed_not_replaced(tmp_path):
    """A tier file that unprotects the router: the router follows the rule, the rest too."""
    tiers = tmp_path / "t.toml"
    tiers.write_text("""
[[rules]]
pattern = '(^|\\.)gate$'
bits = 8
[[rules]]
pattern = '.'
bits = 4
""")
    plan = make_plan(BuildOptions(model="synthetic:minimax", recipe=str(tiers), progress=False))[0]
    gates = [t for t in plan.tensors if t.path.endswith("block_sparse_moe.gate")]
    assert gates and all(t.bits == 8 for t in gates)
    # default recipes keep it float (protected) although MiniMax's own predicate says 8-bit
    plan = make_plan(BuildOptions(model="synthetic:minimax", recipe="uniform4", progress=False))[0]
    assert all(not t.quantized for t in plan.tensors if t.path.endswith("block_sparse_moe.gate"))


def test_plan_json_roundtrip_and_diff(tmp_path, capsys):
    plan = make_plan(BuildOptions(model="synthetic:llama", recipe="mlx-mixed-3-6", progress=False))[0]
    again = Plan.from_json(plan.to_json())
    assert again.to_json() == plan.to_json()
    assert again.bpw == plan.bpw
    other = make_plan(BuildOptions(model="synthetic:llama", recipe="uniform3", progress=False))[0]
    rows = diff_plans(plan, other)
    assert rows and all(r[2] == "3b affine g64" for r in rows)
    code, out, _ = run_cli(capsys, "plan", "--diff", "mlx-mixed-3-6", "uniform3", "--model", "synthetic:llama")
    assert code == 0 and "v_proj" in out


def test_build_from_edited_plan_file(tmp_path, capsys):
    plan = make_plan(BuildOptions(model="synthetic:llama", recipe="uniform4", progress=False))[0]
    plan.tensors[0].bits = 8
    path = tmp_path / "plan.json"
    path.write_text(plan.to_json())
    code, out, err = run_cli(capsys, "build", "--recipe", "uniform4", "--plan", str(path), "--model",
                             "synthetic:llama", "--no-progress")
    assert code == 0, err
    stored = stored_settings(Path(out.strip().splitlines()[-1]))
    assert stored[plan.tensors[0].path] == 8


def _validate_error(plan_edit):
    plan, _, _, model = make_plan(BuildOptions(model="synthetic:minimax", recipe="uniform4", progress=False))
    from harness.plan import describe_model

    modules = describe_model(model)[0]
    plan_edit(plan)
    with pytest.raises(HarnessError) as e:
        plan.validate(modules)
    return str(e.value)


def test_invalid_plans_rejected():
    def per_expert(p):
        p.tensors.append(Tensor(path="model.layers.0.block_sparse_moe.switch_mlp.up_proj.3",
                                kind="SwitchLinear", shape=[128, 128], bits=2, group_size=64, mode="affine"))

    assert "one width for all experts" in _validate_error(per_expert)

    def bad_mode(p):
        p.tensors[0].mode = "int3"

    assert "unknown quantization mode" in _validate_error(bad_mode)

    def bad_group(p):
        p.tensors[0].group_size = 48

    assert "group size 48" in _validate_error(bad_group)


def test_bad_input_one_line_exit_2(capsys, tmp_path):
    code, _, err = run_cli(capsys, "build", "--recipe", "unifrom4", "--model", "synthetic:llama")
    assert code == 2 and "did you mean uniform4" in err and len(err.strip().splitlines()) == 1

    code, _, err = run_cli(capsys, "build", "--recipe", "uniform4", "--model", str(tmp_path / "nope"))
    assert code == 2 and "not found" in err and len(err.strip().splitlines()) == 1

    code, _, err = run_cli(capsys, "build", "--recipe", "uniform4", "--group-size", "128", "--mode", "mxfp4",
                           "--model", "synthetic:llama")
    assert code == 2 and "group size 128" in err

    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli(capsys, "build", "--recipe", "uniform4", "--model", "synthetic:llama",
                           "--out", str(blocker / "artifact"), "--no-progress")
    assert code == 2 and "inside a file" in err and not (blocker / "artifact").exists()

    code, _, err = run_cli(capsys, "build", "--recipe", "uniform5", "--mode", "mxfp8", "--model", "synthetic:llama")
    assert code == 2 and "not possible" in err


def test_corrupt_model_leaves_nothing(capsys, tmp_path):
    src = resolve_model("synthetic:llama")
    bad = tmp_path / "bad-model"
    bad.mkdir()
    for f in src.iterdir():
        data = f.read_bytes()
        (bad / f.name).write_bytes(data[: len(data) // 3] if f.suffix == ".safetensors" else data)
    before = set((cache_root() / "artifacts").rglob("*")) if (cache_root() / "artifacts").exists() else set()
    code, _, err = run_cli(capsys, "build", "--recipe", "uniform4", "--model", str(bad), "--no-progress")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "corrupt" in err
    after = set((cache_root() / "artifacts").rglob("*")) if (cache_root() / "artifacts").exists() else set()
    assert after == before


def test_interrupted_build_leaves_nothing(monkeypatch, tmp_path):
    import harness.builder as b

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(b, "_save_streaming", boom)  # interrupted while writing a shard
    out = tmp_path / "artifact"
    with pytest.raises(KeyboardInterrupt):
        b.build(BuildOptions(model="synthetic:llama", recipe="uniform3", out=out, progress=False),
                log=lambda m: None)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir()]  # no temp dir left either


def test_recipe_from_python_file(tmp_path):
    f = tmp_path / "my_recipe.py"
    f.write_text('''
from harness.recipe import plan_from_rule

class AttnHigh:
    name = "attn-high"
    description = "8-bit attention, 2-bit rest"
    params = {}

    def plan(self, ctx):
        return plan_from_rule(ctx, self.name, {}, lambda t: (8 if "self_attn" in t.path else 2, 64, "affine", "x"))
''')
    res = build(BuildOptions(model="synthetic:llama", recipe=f"{f}:AttnHigh", progress=False), log=lambda m: None)
    stored = stored_settings(res.path)
    assert stored["model.layers.1.self_attn.q_proj"] == 8
    assert stored["model.layers.1.mlp.down_proj"] == 2


def test_float_recipe_links_source():
    res = build(BuildOptions(model="synthetic:llama", recipe="float", progress=False), log=lambda m: None)
    assert all(not t.quantized for t in res.plan.tensors)
    config = json.loads((res.path / "config.json").read_text())
    assert "quantization" not in config
    assert os.path.islink(res.path / "model.safetensors")


@pytest.mark.slow
def test_smollm2_uniform4_says_paris(capsys):
    from mlx_lm import load
    from mlx_lm.generate import generate_step

    code, out, err = run_cli(capsys, "build", "--recipe", "uniform4", "--model", "smollm2-135m", "--no-progress")
    assert code == 0, err
    assert "4.500 (quantized weights" in err
    model, tok = load(out.strip().splitlines()[-1])
    model.set_dtype(mx.float32)
    prompt = mx.array(tok.encode("The capital of France is"))
    tokens = []
    for (token, _), _ in zip(generate_step(prompt, model, max_tokens=3), range(3)):
        tokens.append(int(token))
    assert tok.decode(tokens).startswith(" Paris")


def test_streaming_writer_matches_mlx_quantize(tmp_path, monkeypatch):
    """The shard writer (tensor by tensor) stores exactly what nn.quantize computes."""
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    from harness.builder import make_plan
    from harness.sources import load_float

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    opts = BuildOptions(model="synthetic:minimax", recipe="uniform4", progress=False)
    art = build(opts, log=lambda m: None).path
    plan, src = make_plan(opts)[:2]
    model, _ = load_float(src)
    model.set_dtype(mx.bfloat16)
    nn.quantize(model, class_predicate=plan.predicate())
    expected = dict(tree_flatten(model.parameters()))
    stored = mx.load(str(art / "model.safetensors"))
    assert sorted(stored) == sorted(expected)
    for k, v in expected.items():
        assert stored[k].dtype == v.dtype and mx.array_equal(stored[k], v).item(), k
