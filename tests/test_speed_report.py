"""The speed suite's depth sweep (llama-bench -d) in every output: `harness report` (md/html/json,
ratios vs the reference, one table per hardware/exec mode), the speed_vs_depth plot and `harness card`."""

import json
import re
from pathlib import Path

import pytest

from harness.cli import main
from harness.report.make import ReportOptions, make_report
from harness.report.plots import depth_figure, _style_of
from harness.report.compare import load_results
from harness.report.tables import depth_rows, speed_rows
from harness.results import result_dir, write_result
from test_report import PROV, _artifact

MODEL = "tiny"
OTHER_HW = {"cpu": "Other CPU", "cpu_count": 16, "memory_gb": 64.0, "mlx_device": "Device(gpu, 0)",
            "metal_device": "Apple M9", "openblas": False, "platform": "Darwin"}
# recipe: (bpw, {depth: (pp512 tok/s, tg tok/s, peak GB)})
DEPTHS = {"float": (16.0, {0: (1000.0, 100.0, 1.5), 4096: (800.0, 50.0, 2.25)}),
          "q4": (4.5, {0: (1500.0, 150.0, 0.5), 4096: (1000.0, 60.0, 0.75)})}


def write_speed(root: Path, recipe: str, bpw: float, summary: dict, hardware=None, exec_mode="native") -> Path:
    prov = dict(PROV, exec_mode=exec_mode, hardware=hardware or PROV["hardware"])
    out = result_dir(root, MODEL, recipe) / "speed.json"
    write_result(out, {"model": MODEL, "recipe": recipe, "suite": "speed", "run_key": f"{recipe}-speed",
                       "complete": True, "n_items": 2, "summary": summary, "artifact": _artifact(root, recipe, bpw),
                       "provenance": prov})
    return out


def depth_summary(points: dict, pp: int = 512, contexts: dict = None) -> dict:
    """The speed suite's summary layout (harness.suites.speed.summarize_records)."""
    s = {"n": len(points) + len(contexts or {}), "trials": 3, "gen_tokens": 128}
    for c, (p, t) in (contexts or {}).items():
        s[f"pp_tps_{c}"], s[f"tg_tps_{c}"] = p, t
    for d, (p, t, mem) in points.items():
        s[f"pp{pp}_tps_d{d}"], s[f"tg_tps_d{d}"], s[f"peak_memory_gb_d{d}"] = p, t, mem
        s[f"pp{pp}_tps_d{d}_range"], s[f"tg_tps_d{d}_range"] = [p - 1, p + 1], [t - 1, t + 1]
        s[f"text_pp{pp}_tps_d{d}"] = 1.0  # the text-prompt variant is not the headline
    return s


@pytest.fixture
def results(tmp_path):
    root = tmp_path / "results"
    for recipe, (bpw, points) in DEPTHS.items():
        write_speed(root, recipe, bpw, depth_summary(points, contexts={1024: (bpw * 10, bpw)}))
    return root


def cells(md: str, first: str) -> list:
    """The cells of every markdown table row starting with `first`."""
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in md.splitlines()
            if line.startswith("|") and line.strip("|").split("|")[0].strip() == first]


def test_depth_rows_reads_the_suite_keys():
    s = depth_summary(DEPTHS["q4"][1], pp=256, contexts={1024: (9.0, 1.0)})
    assert depth_rows(s) == [(0, 1500.0, 150.0, 0.5, 256), (4096, 1000.0, 60.0, 0.75, 256)]
    assert [r[0] for r in speed_rows(s)] == [1024]  # the two sweeps never leak into each other
    assert depth_rows({"text_pp16_tps_d8": 3.0, "text_tg_tps_d8": 2.0}) == [(8, 3.0, 2.0, None, 16)]
    assert depth_rows({"pp_tps_1024": 1.0, "tg_tps_1024": 1.0}) == []


def test_report_depth_table_with_ratios(results):
    md = make_report(ReportOptions(results=results))
    head = next(line for line in md.splitlines() if line.startswith("| Depth"))
    assert [c.strip() for c in head.strip("|").split("|")] == ["Depth", "", "float", "q4"]
    assert cells(md, "d0") == [["d0", "PP tok/s (pp512)", "1000.0", "1500.0 (×1.50)"],
                               ["d0", "TG tok/s", "100.0", "150.0 (×1.50)"],
                               ["d0", "Peak memory (GB)", "1.50", "0.50"]]
    assert cells(md, "d4k") == [["d4k", "PP tok/s (pp512)", "800.0", "1000.0 (×1.25)"],
                                ["d4k", "TG tok/s", "50.0", "60.0 (×1.20)"],
                                ["d4k", "Peak memory (GB)", "2.25", "0.75"]]
    assert cells(md, "1k")[0] == ["1k", "Prefill (PP, tok/s)", "160.0", "45.0"]  # the context sweep stays
    assert "Depth sweep (llama-bench -d), measured on Test CPU (2 cores, 8.0 GB)" in md
    assert "exec mode native" in md and "ratio to the reference float" in md
    assert "text_pp512" not in md  # no generic fallback table for the depth keys

    html = make_report(ReportOptions(results=results, format="html"))
    assert '<td style="text-align:right">1500.0 (×1.50)</td>' in html and ">Depth</th>" in html
    data = json.loads(make_report(ReportOptions(results=results, format="json")))
    table = next(b for b in data["blocks"] if b["kind"] == "table" and b["headers"][0] == "Depth")
    assert table["rows"][4] == ["d4k", "TG tok/s", "50.0", "60.0 (×1.20)"]


def test_report_ratio_against_the_chosen_reference(results):
    for path in results.rglob("speed.json"):  # the runs were compared against q4 (harness run --reference q4)
        data = json.loads(path.read_text())
        data["provenance"]["reference"] = "q4"
        path.write_text(json.dumps(data))
    md = make_report(ReportOptions(results=results))
    assert cells(md, "d4k")[0] == ["d4k", "PP tok/s (pp512)", "800.0 (×0.80)", "1000.0"]


def test_other_hardware_gets_its_own_table(results):
    write_speed(results, "q2", 2.5, depth_summary({0: (2000.0, 200.0, 0.3), 4096: (1600.0, 70.0, 0.4)}),
                hardware=OTHER_HW)
    md = make_report(ReportOptions(results=results))
    heads = [line for line in md.splitlines() if line.startswith("| Depth")]
    assert [[c.strip() for c in h.strip("|").split("|")] for h in heads] == [["Depth", "", "float", "q4"],
                                                                          ["Depth", "", "q2"]]
    assert cells(md, "d0")[3] == ["d0", "PP tok/s (pp512)", "2000.0"]  # no ratio across machines
    assert "measured on Other CPU (16 cores, 64.0 GB), MLX device Apple M9; exec mode native" in md
    assert "No float (reference) depth sweep on this hardware, so no ratios." in md
    fig = depth_figure({r.recipe: r for r in load_results(results)}, _style_of(["float", "q4", "q2"]))
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert labels == ["float (Test CPU, native)", "q4 (Test CPU, native)", "q2 (Apple M9, native)"]


def test_depth_plot_lines_and_png(results, tmp_path):
    per_recipe = {r.recipe: r for r in sorted(load_results(results), key=lambda r: r.recipe)}
    fig = depth_figure(per_recipe, _style_of(["float", "q4"]))
    pp_ax, tg_ax = fig.axes[:2]
    assert [line.get_label() for line in pp_ax.get_lines()] == ["float", "q4"]
    assert [list(line.get_ydata()) for line in pp_ax.get_lines()] == [[1000.0, 800.0], [1500.0, 1000.0]]
    assert [list(line.get_ydata()) for line in tg_ax.get_lines()] == [[100.0, 50.0], [150.0, 60.0]]
    assert list(pp_ax.get_lines()[0].get_xdata()) == [2048, 4096]
    assert pp_ax.get_xscale() == "log"  # log-x; depth 0 drawn one octave left of d4k
    assert [t.get_text() for t in pp_ax.get_xticklabels()] == ["d0", "d4k"]

    out = tmp_path / "report" / "README.md"
    assert main(["report", "--results", str(results), "--out", str(out)]) == 0
    png = out.parent / "plots" / "speed_vs_depth.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert (out.parent / "plots" / "speed_vs_context.png").is_file()
    assert "![tokens/s vs context depth (llama-bench -d sweep)](plots/speed_vs_depth.png)" in out.read_text()
    html = tmp_path / "report.html"
    assert main(["report", "--results", str(results), "--format", "html", "--out", str(html),
                 "--plots", str(tmp_path / "p")]) == 0
    assert 'src="p/speed_vs_depth.png"' in html.read_text()


def test_without_depth_sweep_no_depth_table_or_plot(tmp_path):
    root = tmp_path / "results"
    for recipe, bpw in (("float", 16.0), ("q4", 4.5)):
        write_speed(root, recipe, bpw, {"n": 1, "trials": 1, "gen_tokens": 8, "pp_tps_1024": 10.0 * bpw,
                                        "tg_tps_1024": bpw})
    out = tmp_path / "report" / "README.md"
    assert main(["report", "--results", str(root), "--out", str(out)]) == 0
    md = out.read_text()
    assert "| Depth" not in md and "Depth sweep" not in md and "### Speed" in md
    assert not (out.parent / "plots" / "speed_vs_depth.png").exists()
    assert (out.parent / "plots" / "speed_vs_context.png").exists()
    assert depth_figure({r.recipe: r for r in load_results(root)}, _style_of(["float", "q4"])) is None
    assert main(["card", "--results", str(root), "--recipe", "q4", "--out", str(tmp_path / "c.md")]) == 0
    assert "(depth)" not in (tmp_path / "c.md").read_text()


def test_depth_only_results_still_get_a_speed_section(tmp_path):
    root = tmp_path / "results"
    for recipe, (bpw, points) in DEPTHS.items():
        write_speed(root, recipe, bpw, depth_summary(points))
    md = make_report(ReportOptions(results=root))
    assert "### Speed" in md and "| Context" not in md and cells(md, "d0")[0][-1] == "1500.0 (×1.50)"


def test_card_has_the_depth_rows(results, tmp_path):
    out = tmp_path / "card.md"
    assert main(["card", "--results", str(results), "--recipe", "q4", "--out", str(out)]) == 0
    text = out.read_text()
    head = next(line for line in text.splitlines() if line.startswith("| Context"))
    assert [c.strip() for c in head.strip("|").split("|")] == [
        "Context", "Prefill (PP, tok/s)", "Generation (TG, tok/s)", "Peak memory (GB)", "PP float", "TG float"]
    assert cells(text, "1k") == [["1k", "45.0", "4.5", "-", "160.0", "16.0"]]
    assert cells(text, "pp512 @ d0 (depth)") == [["pp512 @ d0 (depth)", "1500.0", "150.0", "0.50", "1000.0",
                                                  "100.0"]]
    assert cells(text, "pp512 @ d4k (depth)") == [["pp512 @ d4k (depth)", "1000.0", "60.0", "0.75", "800.0",
                                                   "50.0"]]
    assert "Hardware: Test CPU (2 cores, 8.0 GB), MLX device Device(cpu, 0), OpenBLAS; exec mode native" in text
    assert "the KV cache already holds D tokens" in text


def test_card_hides_a_reference_measured_elsewhere(results, tmp_path):
    path = results / MODEL / "float" / "speed.json"
    data = json.loads(path.read_text())
    data["provenance"]["exec_mode"] = "simulated"
    path.write_text(json.dumps(data))
    out = tmp_path / "card.md"
    assert main(["card", "--results", str(results), "--recipe", "q4", "--out", str(out)]) == 0
    text = out.read_text()
    assert cells(text, "pp512 @ d4k (depth)") == [["pp512 @ d4k (depth)", "1000.0", "60.0", "0.75"]]
    assert "float was measured on other hardware or in another exec mode" in text


def test_report_from_a_real_tiny_depth_run(tmp_path):
    """The speed suite's own summary (seeded synthetic llama, depths 16/32) renders as is."""
    from mlx_lm import load

    from harness.sources.synthetic import write_synthetic
    from harness.suite import SuiteContext
    from harness.suites.speed import SpeedSuite

    model_dir = write_synthetic("llama", tmp_path / "llama")
    model, tok = load(str(model_dir))
    ctx = SuiteContext(model=model, tokenizer=tok, artifact=model_dir, exec_mode="native", reference=None,
                       limit=None, options={"contexts": "16", "depths": "16,32", "pp": 8, "gen_tokens": 2,
                                            "trials": 1, "warmup": 0}, progress=False)
    suite = SpeedSuite()
    summary = suite.summarize(ctx, list(suite.run(ctx, suite.items(ctx))))
    root = tmp_path / "results"
    write_speed(root, "float", 16.0, summary)
    fast = {k: v * 2 if re.fullmatch(r"(pp8|tg)_tps_d\d+", k) else v for k, v in summary.items()}
    write_speed(root, "q4", 4.5, fast)
    md = make_report(ReportOptions(results=root))
    for d in (16, 32):
        pp, tg = summary[f"pp8_tps_d{d}"], summary[f"tg_tps_d{d}"]
        assert cells(md, f"d{d}")[:2] == [[f"d{d}", "PP tok/s (pp8)", f"{pp:.1f}", f"{2 * pp:.1f} (×2.00)"],
                                          [f"d{d}", "TG tok/s", f"{tg:.1f}", f"{2 * tg:.1f} (×2.00)"]]
    card = tmp_path / "card.md"
    assert main(["card", "--results", str(root), "--recipe", "q4", "--out", str(card)]) == 0
    assert [row[0] for row in cells(card.read_text(), "pp8 @ d32 (depth)")] == ["pp8 @ d32 (depth)"]


def test_context_plot_unlabelled_when_only_the_depth_sweep_ran_elsewhere(results):
    from harness.report.plots import _speed_series

    write_speed(results, "q2", 2.5, depth_summary({0: (2000.0, 200.0, 0.3)}), hardware=OTHER_HW)
    per_recipe = {r.recipe: r for r in load_results(results)}
    assert list(_speed_series(per_recipe, speed_rows)) == ["float", "q4"]  # q2 has no context sweep
    assert list(_speed_series(per_recipe, depth_rows)) == ["float (Test CPU, native)", "q4 (Test CPU, native)",
                                                           "q2 (Apple M9, native)"]


def test_different_prompt_lengths_are_different_rows(results):
    write_speed(results, "q2", 2.5, depth_summary({0: (2000.0, 200.0, 0.3)}, pp=256))
    md = make_report(ReportOptions(results=results))
    assert cells(md, "pp256 @ d0")[0] == ["pp256 @ d0", "PP tok/s (pp256)", "-", "-", "2000.0"]
    assert cells(md, "pp512 @ d0")[0] == ["pp512 @ d0", "PP tok/s (pp512)", "1000.0", "1500.0 (×1.50)", "-"]
