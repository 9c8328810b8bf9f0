"""harness report: tables (md/html/json), model card, plots, generic suites — on fake results (no models)."""

import json
import math
import re
import shutil
import zlib
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from harness.cli import main
from harness.report.compare import compare_metric, load_results
from harness.report.make import ReportOptions, make_report
from harness.report.metrics import metric_info
from harness.report.tables import speed_rows
from harness.results import SuiteResult
from harness.results import ItemLog, result_dir, write_result
from harness.stats import mcnemar_exact, wilson_ci

MODEL = "smollm2-135m"
# recipe: (bpw, chance an item float got right is lost, chance a wrong one is won)
RECIPES = {"float": (16.0, 0.0, 0.0), "uniform8": (8.5, 0.01, 0.01), "oq4": (4.57, 0.05, 0.03),
           "uniform4": (4.5, 0.08, 0.03), "uniform2": (2.5, 0.6, 0.05)}
PROV = {"versions": {"harness": "0.1.0", "mlx": "0.32.4", "mlx-lm": "0.32.2"}, "python": "3.11",
        "hardware": {"cpu": "Test CPU", "cpu_count": 2, "memory_gb": 8.0, "mlx_device": "Device(cpu, 0)",
                     "openblas": True, "platform": "Linux"},
        "exec_mode": "simulated", "seed": 0, "limit": None, "options": {}, "suite_version": "1",
        "data": {"source": "fake", "sha256": "ab" * 32}, "time": "2025-01-01T00:00:00Z", "argv": ["run"]}


def _artifact(root: Path, recipe: str, bpw: float) -> dict:
    art = root / "artifacts" / recipe
    art.mkdir(parents=True, exist_ok=True)
    summary = {}
    tensors = []
    if recipe == "oq4":  # an oQ-like plan with per-layer sensitivity
        summary = {"boosts": 7, "promoted_layers": [0, 1, 2, 7], "target_bpw": 4.6,
                   "sensitivity": {str(i): float(s) for i, s in enumerate([0.09, 0.05, 0.02, 0.01, 0.008, 0.007,
                                                                            0.012, 0.04])}}
        for i in range(8):
            tensors.append({"path": f"model.layers.{i}.mlp.down_proj", "bits": 8 if i in (0, 7) else
                            (6 if i in (1, 2) else 4), "group_size": 64, "mode": "affine"})
    (art / "plan.json").write_text(json.dumps({"format": "harness.plan/1", "summary": summary, "tensors": tensors}))
    bits = {"uniform8": 8, "uniform4": 4, "uniform2": 2, "oq4": 4}.get(recipe)
    return {"path": str(art), "key": recipe, "recipe_params": {"bits": bits} if bits else {}, "bpw": bpw,
            "bpw_mlx": bpw + 0.3 if recipe != "float" else 16.0, "plan_summary":
            {k: v for k, v in summary.items() if not isinstance(v, dict)},
            "group_sizes": [64] if bits else [], "modes": ["affine"] if bits else []}


def _write(root: Path, recipe: str, suite: str, summary: dict, records: list, artifact: dict, paired=None):
    out = result_dir(root, MODEL, recipe)
    log = ItemLog(out / f"{suite}.items.jsonl", run_key=f"{recipe}-{suite}")
    for rec in records:
        log.append(rec)
    result = {"model": MODEL, "recipe": recipe, "suite": suite, "run_key": f"{recipe}-{suite}",
              "complete": True, "n_items": len(records), "summary": summary, "artifact": artifact,
              "provenance": dict(PROV, exec_mode="native" if suite == "speed" else "simulated"),
              "items_file": f"{suite}.items.jsonl"}
    if paired:
        result["paired"] = paired
    write_result(out / f"{suite}.json", result)
    return out / f"{suite}.json"


def make_results(root: Path, recipes=RECIPES, n_mmlu: int = 300, seed: int = 0, suites=None) -> dict:
    """Fake results for every recipe: mmlu (correct), reasoning (points), fidelity (kl/nll/top1),
    speed, and a generic 'unicode'-like suite. Degradation grows as bpw shrinks."""
    rng = np.random.default_rng(seed)
    base = rng.random(n_mmlu) < 0.45
    rq = rng.random(30)
    tokens = rng.integers(20, 60, size=80)
    suites = suites or ("mmlu", "reasoning", "fidelity", "speed", "echo")
    written = {}
    for recipe, (bpw, lose, win) in recipes.items():
        art = _artifact(root, recipe, bpw)
        r = np.random.default_rng(zlib.crc32(recipe.encode()) if recipe != "float" else 1)
        if "mmlu" in suites:
            flip_loss = r.random(n_mmlu) < lose
            flip_win = r.random(n_mmlu) < win
            correct = np.where(base, ~flip_loss, flip_win)
            recs = [{"id": f"q{i:03d}", "subject": "x", "correct": bool(c)} for i, c in enumerate(correct)]
            k = int(correct.sum())
            summary = {"acc": k / n_mmlu, "acc_ci95": list(wilson_ci(k, n_mmlu)), "n": n_mmlu,
                       "macro_acc": k / n_mmlu, "per_subject": {"x": {"acc": k / n_mmlu}}}
            written[(recipe, "mmlu")] = _write(root, recipe, "mmlu", summary, recs, art)
        if "reasoning" in suites:
            frac = np.clip(rq - (lose * 1.2) * r.random(30), 0, 1)
            recs = [{"id": f"r{i:02d}", "category": ["logic", "debugging", "algorithms"][i % 3],
                     "points": float(round(f * 10)), "max_points": 10.0, "correct": f > 0.85}
                    for i, f in enumerate(frac)]
            fr = [x["points"] / 10 for x in recs]
            score = round(100 * float(np.mean(fr)), 2)
            summary = {"score": score, "score_ci95": [score - 8, score + 8],
                       "accuracy": float(np.mean([x["correct"] for x in recs])),
                       "accuracy_ci95": [0.1, 0.5], "n": 30,
                       "grade": "A" if score >= 80 else "B" if score >= 70 else "C" if score >= 60 else "D",
                       "failed_critical": int(30 * lose), "table": "| Model | Score | Grade |\n|---|---|---|\n| m | 1 |"}
            for cat in ("logic", "debugging", "algorithms"):
                mine = [f for f, x in zip(fr, recs) if x["category"] == cat]
                summary[f"score_{cat}"] = round(100 * float(np.mean(mine)), 2)
            written[(recipe, "reasoning")] = _write(root, recipe, "reasoning", summary, recs, art)
        if "fidelity" in suites:  # the fidelity suite's layout: per-window records, llama.cpp-style summary
            scale = 0.0 if recipe == "float" else 2 ** (-bpw) * 4
            kl = np.abs(r.normal(scale, scale / 3 + 1e-9, size=80))
            nll = 3.0 + kl * 2 + r.normal(0, 0.01, size=80) * (recipe != "float")
            top1 = r.random(80) > scale * 2
            recs = [{"id": str(i), "window": i, "n": int(t), "ppl": float(np.exp(b)), "kld_mean": float(a),
                     "top1_agreement": float(c), "sum_nll": float(b * t)}
                    for i, (a, b, t, c) in enumerate(zip(kl, nll, tokens, top1))]
            n_tok = int(tokens.sum())
            ppl = float(math.exp(sum(x["sum_nll"] for x in recs) / n_tok))
            same = int(sum(x["top1_agreement"] * x["n"] for x in recs))
            summary = {"ppl": ppl, "ppl_err": ppl * 0.01, "ref_ppl": 20.0, "delta_ppl": ppl - 20.0,
                       "kld_mean": float(kl.mean()), "kld_err": float(kl.std() / 9), "kld_p99": float(kl.max()),
                       "kld_max": float(kl.max()), "top1_agreement": same / n_tok,
                       "top1_agreement_ci95": list(wilson_ci(same, n_tok)), "top1_agreement_err": 0.01,
                       "rms_dp": float(scale), "dp_p99": 0.1, "n": n_tok, "n_windows": 80,
                       "table": "====== Perplexity statistics ======\nMean PPL(Q) : 1.0"}
            written[(recipe, "fidelity")] = _write(root, recipe, "fidelity", summary, recs, art)
        if "speed" in suites:  # the speed suite's flat keys
            summary = {"n": 3, "trials": 3, "gen_tokens": 64, "table": "| Context | Prefill (PP) |"}
            for c in (512, 1024, 4096):
                summary[f"pp_tps_{c}"] = 3000 / bpw * (1 - c / 20000)
                summary[f"tg_tps_{c}"] = 400 / bpw * (1 - c / 30000)
                summary[f"pp_tps_{c}_range"] = [1.0, 2.0]
                summary[f"peak_memory_gb_{c}"] = 0.1 * bpw
                summary[f"text_pp_tps_{c}"] = 1.0  # the text-prompt variant is not the headline
            written[(recipe, "speed")] = _write(root, recipe, "speed", summary, [], art)
        if "echo" in suites:  # a suite the report has never heard of
            k = int(40 * (1 - lose))
            summary = {"exact_echo_rate": k / 40, "exact_echo_rate_ci95": list(wilson_ci(k, 40)),
                       "fffd_chars": int(10 * lose), "n": 40, "detok_roundtrip_pass": True}
            recs = [{"id": f"e{i}", "exact_echo": i < k} for i in range(40)]
            written[(recipe, "echo")] = _write(root, recipe, "echo", summary, recs, art)
    return written


@pytest.fixture(scope="module")
def shared_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("shared") / "results"
    with mock.patch("os.fsync"):  # the item log fsyncs every record; not needed for fixtures
        make_results(root)
    return root


@pytest.fixture()
def results_dir(shared_results):
    return shared_results  # read-only: tests that write get their own copy


def test_registry_directions_and_formats():
    assert metric_info("acc").higher_is_better and metric_info("acc").max_drop == 0.02
    assert metric_info("pass@1").kind == "fraction"
    assert metric_info("ppl").higher_is_better is False and metric_info("ppl").relative
    assert metric_info("kld").higher_is_better is False
    assert metric_info("score").kind == "points" and metric_info("score").max_drop == 5.0
    assert metric_info("fffd_rate").higher_is_better is False
    assert metric_info("n").higher_is_better is None
    # unknown name: accuracy-like only when it comes with a CI inside [0, 1]
    assert metric_info("wibble", {"wibble": 0.4, "wibble_ci95": [0.3, 0.5]}).higher_is_better is True
    assert metric_info("wibble", {"wibble": 12.0}).higher_is_better is None


def test_compare_metric_uses_mcnemar_on_items(results_dir):
    rs = {(r.recipe, r.suite): r for r in load_results(results_dir)}
    d = compare_metric("acc", rs[("float", "mmlu")], rs[("uniform2", "mmlu")])
    base = {x["id"]: x["correct"] for x in rs[("float", "mmlu")].items()}
    cur = {x["id"]: x["correct"] for x in rs[("uniform2", "mmlu")].items()}
    lost = sum(base[i] and not cur[i] for i in base)
    gained = sum(cur[i] and not base[i] for i in base)
    assert (d.lost, d.gained, d.n) == (lost, gained, 300)
    assert d.test == "McNemar exact" and d.p == pytest.approx(mcnemar_exact(lost, gained))
    assert d.worse_by == pytest.approx((lost - gained) / 300)
    # continuous per-item values -> paired bootstrap; lower-is-better direction
    k = compare_metric("kld_mean", rs[("float", "fidelity")], rs[("uniform2", "fidelity")])
    assert k.test == "paired bootstrap" and k.p < 0.01 and k.worse_by > 0


def test_markdown_report_sections_and_numbers(results_dir):
    md = make_report(ReportOptions(results=results_dir))
    for heading in ("## Model: `smollm2-135m`", "### Quantization details", "### Benchmark comparison",
                    "### Reasoning", "### Fidelity vs float", "### Speed", "### echo: other metrics",
                    "### Notes", "### Provenance"):
        assert heading in md, heading
    # column order: float first, then by bpw descending
    header = next(line for line in md.splitlines() if line.startswith("| Benchmark"))
    assert [c.strip() for c in header.strip("|").split("|")][2:] == ["float", "uniform8", "oq4", "uniform4", "uniform2"]
    # the mmlu row: value ± CI half-width, flips and significance vs float
    res = {(r.recipe, r.suite): r for r in load_results(results_dir)}
    u2 = res[("uniform2", "mmlu")].summary
    half = (u2["acc_ci95"][1] - u2["acc_ci95"][0]) / 2
    d = compare_metric("acc", res[("float", "mmlu")], res[("uniform2", "mmlu")])
    assert f"{100 * u2['acc']:.1f} ± {100 * half:.1f} ({d.lost}↓ {d.gained}↑, *)" in md
    d8 = compare_metric("acc", res[("float", "mmlu")], res[("uniform8", "mmlu")])
    assert d8.p >= 0.05 and f"({d8.lost}↓ {d8.gained}↑, n.s.)" in md
    assert "echo exact_echo_rate (%)" in md  # unknown suite joins the benchmark comparison by its CI
    assert "| Promoted layers" in md and "0-2, 7" in md  # plan summary of oQ, layers compacted
    assert re.search(r"\| 1k +\| Prefill \(PP, tok/s\) +\| +177\.9 \| +334\.9 \| +622\.8 \| +632\.5 \| +1138\.6 \|", md)
    assert "not significant" in md
    equal = next(line for line in md.splitlines()
                 if line.startswith("- Equal size: **oq4** (4.570 bpw) vs **uniform4**"))
    kd = compare_metric("kld_mean", res[("uniform4", "fidelity")], res[("oq4", "fidelity")])
    verdict = "**oq4 better**" if kd.significant() and kd.delta < 0 else "not significant"
    assert f"fidelity kld_mean {kd.delta:+.3g} ({verdict}, p = {kd.p:.2g})" in equal  # head to head, paired
    d2 = compare_metric("acc", res[("uniform4", "mmlu")], res[("uniform2", "mmlu")])
    assert d2.significant()  # the same test marks a real gap
    assert "Test CPU (2 cores, 8.0 GB)" in md and "mlx-lm 0.32.2" in md
    assert "<details><summary>echo" not in md  # echo has no table of its own
    assert "<details><summary>reasoning" not in md  # its table is the Score | Grade table above
    # a suite's own plain-text table (fidelity's llama.cpp block) is embedded, folded, as a code block
    assert "<details><summary>fidelity / oq4: table</summary>\n\n```text\n====== Perplexity statistics" in md


def test_html_and_json_formats(results_dir):
    page = make_report(ReportOptions(results=results_dir, format="html"))
    assert page.startswith("<!doctype html>") and page.count("<table>") >= 6 and "<h3>Speed</h3>" in page
    data = json.loads(make_report(ReportOptions(results=results_dir, format="json")))
    assert data["schema"] == "harness.report/1"
    by = {(r["recipe"], r["suite"]): r for r in data["results"]}
    assert len(by) == 25 and by[("uniform2", "mmlu")]["metrics"]["acc"] == pytest.approx(
        load_results(results_dir / MODEL / "uniform2" / "mmlu.json")[0].summary["acc"])
    titles = [b["text"] for b in data["blocks"] if b["kind"] == "heading"]
    assert "Benchmark comparison" in titles and "Reasoning" in titles


def test_model_card_has_provenance_and_honest_notes(results_dir):
    card = make_report(ReportOptions(results=results_dir, model_card=True))
    assert card.startswith("## Quantized variants")
    assert "### Provenance" in card and "### Notes" in card and "simulated" in card
    assert "**not significant**" in card
    assert "echo: other metrics" not in card and "<details>" not in card  # the card stays compact


def test_plots_written_and_embedded(results_dir, tmp_path):
    out = tmp_path / "report" / "README.md"
    assert main(["report", "--results", str(results_dir), "--out", str(out)]) == 0
    plots = out.parent / "plots"
    names = {p.name for p in plots.iterdir()}
    for stem in ("pareto_mmlu_acc", "pareto_fidelity_kld_mean", "pareto_fidelity_ppl", "pareto_fidelity_top1_agreement",
                 "pareto_reasoning_score", "speed_vs_context",
                 "sensitivity_oq4", "pareto_echo_exact_echo_rate"):
        assert f"{stem}.png" in names and f"{stem}.svg" in names, stem
        assert (plots / f"{stem}.png").stat().st_size > 20_000  # a real rendered figure, not an empty canvas
    assert not any(n.startswith(".") for n in names)  # no temp files left
    md = out.read_text()
    assert "![mmlu acc vs bits per weight](plots/pareto_mmlu_acc.png)" in md


def test_new_suite_plugs_in_without_report_changes(tmp_path):
    root = tmp_path / "r"
    art = {"bpw": 4.5, "path": str(tmp_path)}
    for recipe, v in (("float", 0.8), ("a", 0.7), ("b", 0.6)):
        _write(root, recipe, "lm-eval:toy", {"f1": v, "f1_ci95": [v - 0.05, v + 0.05], "latency_ms": 12.0,
                                             "n": 100}, [], dict(art, bpw={"float": 16, "a": 4.5, "b": 3.5}[recipe]))
    md = make_report(ReportOptions(results=root))
    assert "| lm-eval:toy f1 (%) | 100 | 80.0 ± 5.0 | 70.0 ± 5.0 (*) | 60.0 ± 5.0 (*) |" in md
    assert "latency_ms ↓" in md


def test_speed_rows_layouts():
    assert speed_rows({"pp_1024": 100.0, "tg_1024": 10.0, "pp4k": 50.0, "tg4k": 5.0}) == [
        (1024, 100.0, 10.0, None), (4096, 50.0, 5.0, None)]
    assert speed_rows({"by_context": {"512": {"prompt_tps": {"mean": 7.0}, "generation_tps": 2.0}}}) == [
        (512, 7.0, 2.0, None)]


def test_report_bad_inputs(tmp_path, capsys):
    assert main(["report", "--results", str(tmp_path / "missing")]) == 2
    bogus = tmp_path / "x.json"
    bogus.write_text('{"hello": 1}')
    assert main(["report", "--results", str(bogus)]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["report", "--results", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "not a harness result" in err and "no harness results" in err


def test_result_dir_scan_skips_other_json(results_dir, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(results_dir, root)
    (root / "notes.json").write_text("[1, 2]")
    (root / "plan.json").write_text('{"format": "harness.plan/1"}')
    loaded = load_results(root)
    assert len(loaded) == 25 and all(isinstance(r, SuiteResult) for r in loaded)


def test_json_report_with_explicit_plots_dir(tmp_path):
    root = tmp_path / "results"
    with mock.patch("os.fsync"):
        make_results(root, recipes={k: RECIPES[k] for k in ("float", "uniform8", "uniform4", "uniform2")},
                     suites=("mmlu",))
    out, figs = tmp_path / "out" / "report.json", tmp_path / "figs"
    assert main(["report", "--results", str(root), "--format", "json", "--out", str(out), "--plots", str(figs)]) == 0
    data = json.loads(out.read_text())
    images = [b["path"] for b in data["blocks"] if b["kind"] == "image"]
    assert images == ["../figs/pareto_mmlu_acc.png"]  # relative to the report; no sensitivity without a plan
    assert (out.parent / images[0]).resolve().stat().st_size > 20_000 and (figs / "pareto_mmlu_acc.svg").is_file()


def test_sandbox_isolation_is_shown(tmp_path):
    root = tmp_path / "r"
    for recipe in ("float", "uniform4"):
        path = _write(root, recipe, "humaneval", {"pass@1": 0.5, "pass@1_ci95": [0.4, 0.6], "n": 100}, [],
                      {"bpw": 16.0 if recipe == "float" else 4.5})
        data = json.loads(path.read_text())
        data["provenance"]["data"]["sandbox"] = "namespaces+rlimits"
        path.write_text(json.dumps(data))
    md = make_report(ReportOptions(results=root))
    header = next(line for line in md.splitlines() if line.startswith("| Suite"))
    assert header.rstrip("| ").endswith("Sandbox") and "namespaces+rlimits" in md
