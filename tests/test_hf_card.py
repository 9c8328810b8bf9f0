"""`harness card`: the Hugging Face model card (metadata parsed by huggingface_hub,
quantization table computed from the plan, comparisons, bad input)."""

import json
from pathlib import Path
from unittest import mock

import pytest
from huggingface_hub import ModelCard

from harness.cli import main
from harness.plan import Plan, Tensor
from harness.report.hf_card import _floor_note
from harness.report.quant_details import _percentages, module_role, quantization_rows, source_info
from harness.results import SuiteResult, read_item_file
from harness.stats import wilson_ci
from test_report import MODEL, RECIPES, make_results


def synthetic_plan() -> Plan:
    """2 layers: embeddings 8-bit, lm_head float, attention 4-bit, MLP 4-bit in L0 and 8-bit in L1."""
    q = dict(group_size=64, mode="affine")
    tensors = [Tensor("model.embed_tokens", "Embedding", [100, 64], bits=8, reason="protected: embeddings", **q)]
    for i in range(2):
        for m in ("q", "k", "v", "o"):
            tensors.append(Tensor(f"model.layers.{i}.self_attn.{m}_proj", "Linear", [64, 64], bits=4,
                                  reason="base 4-bit", **q))
        for m, shape in (("gate", [128, 64]), ("up", [128, 64]), ("down", [64, 128])):
            tensors.append(Tensor(f"model.layers.{i}.mlp.{m}_proj", "Linear", shape, bits=8 if i else 4,
                                  reason="sensitivity: L1" if i else "base 4-bit", **q))
    tensors.append(Tensor("lm_head", "Linear", [100, 64], reason="kept float"))
    return Plan(recipe="oq4", params={}, tensors=tensors, other_params=1000)


def test_quantization_rows_from_plan():
    rows = quantization_rows(synthetic_plan())
    # embeddings 6400 + L1 MLP 3*8192 at 8 bits; attention 8*4096 + L0 MLP 3*8192 at 4; lm_head 6400 float
    total = 6400 + 6400 + 8 * 4096 + 6 * 8192
    assert [r[0] for r in rows] == ["float", "8", "4"]
    assert [r[1] for r in rows] == ["lm_head", "embeddings; MLP gate/up/down (L1)",
                                    "attention q/k/v/o; MLP gate/up/down (L0)"]
    pct = [float(r[2]) for r in rows]
    assert pct == [round(100 * 6400 / total, 1), round(100 * (6400 + 3 * 8192) / total, 1),
                   round(100 * (8 * 4096 + 3 * 8192) / total, 1)] == [6.8, 32.7, 60.5]
    assert sum(pct) == pytest.approx(100.0, abs=1e-9)
    assert rows[1][3].startswith("affine 8-bit, group size 64") and "sensitivity: L1" in rows[1][3]
    assert rows[0][3].startswith("float")


def test_percentages_always_add_to_100():
    for counts in ([1, 1, 1], [1, 2, 3, 4, 5, 6, 7], [999, 1], [1] * 13, [5]):
        pct = _percentages(counts, sum(counts))
        assert round(sum(pct), 6) == 100.0
        assert all(abs(p - 100 * c / sum(counts)) <= 0.1 + 1e-9 for p, c in zip(pct, counts))


def test_module_roles():
    assert module_role("model.layers.3.self_attn.q_proj") == ("attention", "q")
    assert module_role("model.layers.3.block_sparse_moe.switch_mlp.gate_proj") == ("experts", "gate")
    assert module_role("model.layers.3.block_sparse_moe.gate") == ("router", "")
    assert module_role("model.layers.3.mlp.shared_expert.up_proj") == ("shared experts", "up")
    assert module_role("model.embed_tokens") == ("embeddings", "")


def test_source_info(tmp_path):
    assert source_info("smollm2-135m", None) == ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")
    src = tmp_path / "hub" / "models--acme--Tiny-7B" / "snapshots" / "abc"
    src.mkdir(parents=True)
    (src / "README.md").write_text("---\nlicense: MIT\ntags: [x]\n---\n# Tiny\n")
    assert source_info(str(src), None) == ("acme/Tiny-7B", "mit")
    assert source_info("acme/Other", None) == ("acme/Other", None)


@pytest.fixture(scope="module")
def card_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("card") / "results"
    recipes = {k: RECIPES[k] for k in ("float", "oq4", "uniform4")}
    with mock.patch("os.fsync"):
        make_results(root, recipes=recipes, n_mmlu=200)
    (root / "artifacts" / "oq4" / "plan.json").write_text(synthetic_plan().to_json())
    return root


def _card(root, tmp_path, *extra):
    out = tmp_path / "card" / "README.md"
    rc = main(["card", "--results", str(root), "--recipe", "oq4", "--out", str(out), *extra])
    return rc, out


def test_card_parses_and_shows_the_numbers(card_results, tmp_path):
    rc, out = _card(card_results, tmp_path, "--repo-id", "acme/SmolLM2-oq4")
    assert rc == 0
    text = out.read_text()
    card = ModelCard(text)
    data = card.data
    assert data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert data.base_model_relation == "quantized"
    assert data.library_name == "mlx"
    assert data.license == "apache-2.0"
    assert data.pipeline_tag == "text-generation"
    assert {"mlx", "quantized", "oq4", "4-bit", "8-bit"} <= set(data.tags)
    # the quantization table comes from the plan
    assert "| Bits" in text and "% Params" in text
    assert "embeddings; MLP gate/up/down (L1)" in text
    assert "| 8.000" not in text  # bpw shown from the plan: (8*30976 + 4*57344 + 16*6400 + overhead) / 94720
    assert f"{synthetic_plan().bpw:.3f}" in text
    # benchmark table vs the reference and the other recipe, with CIs and flips
    results = {r: json.loads((card_results / MODEL / r / "mmlu.json").read_text()) for r in ("float", "oq4")}
    acc = results["oq4"]["summary"]["acc"]
    half = (results["oq4"]["summary"]["acc_ci95"][1] - results["oq4"]["summary"]["acc_ci95"][0]) / 2
    mmlu_row = next(line for line in text.splitlines() if line.startswith("| mmlu acc"))
    assert f"{100 * acc:.1f} ± {100 * half:.1f}" in mmlu_row
    float_items = read_item_file(card_results / MODEL / "float" / "mmlu.items.jsonl")
    oq_items = read_item_file(card_results / MODEL / "oq4" / "mmlu.items.jsonl")
    assert [f["id"] for f in float_items] == [o["id"] for o in oq_items]
    lost = sum(f["correct"] and not o["correct"] for f, o in zip(float_items, oq_items))
    gained = sum(o["correct"] and not f["correct"] for f, o in zip(float_items, oq_items))
    assert f"{lost}↓ {gained}↑" in mmlu_row
    header = next(line for line in text.splitlines() if line.startswith("| Benchmark"))
    assert header.index("float (reference)") < header.index("uniform4") < header.index("**oq4** (this model)")
    assert "| Model" in text and "| Grade" in text  # reasoning
    assert "| Context" in text and "Hardware: Test CPU" in text  # speed
    assert "Fidelity vs float" in text
    assert 'load("acme/SmolLM2-oq4")' in text and "from mlx_lm import load, generate" in text
    assert "## Provenance" in text and "Reference: `float`" in text
    assert "Equal size: **oq4**" in text  # head to head with uniform4


def test_card_reference_is_a_choice(card_results, tmp_path):
    rc, out = _card(card_results, tmp_path, "--reference", "uniform4")
    assert rc == 0
    text = out.read_text()
    header = next(line for line in text.splitlines() if line.startswith("| Benchmark"))
    assert "uniform4 (reference)" in header and "oq4 − uniform4" in header
    assert "Reference: `uniform4`" in text


@pytest.mark.parametrize("case", ["no-recipe", "missing-dir", "out-in-file", "out-is-dir", "same-as-ref",
                                  "bad-repo-id"])
def test_card_bad_input_exit_2(card_results, tmp_path, capsys, case):
    out = tmp_path / "README.md"
    args = ["card", "--results", str(card_results), "--recipe", "oq4", "--out", str(out)]
    if case == "no-recipe":
        args[4] = "uniform2"
    elif case == "missing-dir":
        args[2] = str(tmp_path / "nope")
    elif case == "out-in-file":
        (tmp_path / "afile").write_text("x")
        out = tmp_path / "afile" / "README.md"
        args[-1] = str(out)
    elif case == "out-is-dir":
        out = tmp_path / "adir"
        out.mkdir()
        args[-1] = str(out)
    elif case == "same-as-ref":
        args += ["--reference", "oq4"]
    elif case == "bad-repo-id":
        args += ["--repo-id", "not a repo"]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("harness: error: ")
    assert not out.is_file()
    assert not list(tmp_path.glob("*.tmp*")) and not list(tmp_path.glob(".*"))


def test_floor_and_chance_notes():
    """The card states the same floor rule as run/report/gate (harness.report.floor), from the
    metric declarations stored with the result; a lower-is-better rate at 0 is the best score,
    not a floor."""
    from harness.suite import MetricSpec

    specs = {"acc": MetricSpec("acc", True, "proportion", chance=0.25),
             "score": MetricSpec("score", True, "points", chance=0.0),
             "fffd_rate": MetricSpec("fffd_rate", False, "proportion", chance=0.0)}

    def ref(suite, summary):
        return SuiteResult(model="m", recipe="float", suite=suite, summary=summary,
                           metrics=tuple(specs[k] for k in summary if k in specs))

    k, n = 26, 100
    note = _floor_note("mmlu", "acc", ref("mmlu", {"acc": k / n, "acc_ci95": list(wilson_ci(k, n)), "n": n}))
    assert "includes chance (25.0 %)" in note and "cannot rank recipes" in note and "gated" not in note
    assert _floor_note("mmlu", "acc", ref("mmlu", {"acc": 0.6, "acc_ci95": list(wilson_ci(60, 100)), "n": 100})) is None
    assert "near the floor" in _floor_note("reasoning", "score", ref("reasoning", {"score": 4.1, "n": 20}))
    assert _floor_note("reasoning", "score", ref("reasoning", {"score": 55.0, "n": 4})) is None
    assert _floor_note("unicode", "fffd_rate", ref("unicode", {"fffd_rate": 0.0, "n": 50})) is None


def test_card_of_a_model_without_hub_id(card_results, tmp_path, capsys):
    """No hub id, no known licence: no base_model keys (the Hub would reject a null), --license fills in."""
    import shutil

    root = tmp_path / "results"
    shutil.copytree(card_results, root)
    for path in root.rglob("*.json"):
        data = json.loads(path.read_text())
        if data.get("schema") == "harness.result/1":
            data["model"] = "synthetic:llama"
            path.write_text(json.dumps(data))
    rc, out = _card(root, tmp_path)
    assert rc == 0 and "licence is unknown" in capsys.readouterr().err
    data = ModelCard(out.read_text()).data
    meta = data.to_dict()
    assert "base_model" not in meta and "base_model_relation" not in meta and "license" not in meta
    assert "null" not in out.read_text().split("---")[1]
    rc, out = _card(root, tmp_path, "--license", "mit", "--base-model", "acme/Llama-Tiny")
    data = ModelCard(out.read_text()).data
    assert (data.license, data.base_model, data.base_model_relation) == ("mit", "acme/Llama-Tiny", "quantized")
