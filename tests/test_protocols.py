"""Protocols never overwrite or mix (mmlu.json beside mmlu@omlx.json), and data-dependent
chance levels (truthfulqa MC1/MC2) drive the floor-effect check of the run, report and gate."""

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.cli import main
from harness.options import option
from harness.report.compare import load_results
from harness.report.floor import floor_effect
from harness.report.gate import NOT_GATED, gate, pair_results
from harness.results import load_result, read_result
from harness.suite import (MetricSpec, Suite, SuiteContext, chance_level, protocol_variant, result_name,
                           split_result_name, with_chance)
from harness.suites import omlx
from harness.suites import truthfulqa as tq
from test_report import MODEL, _artifact, _write

FIXTURE = Path(__file__).parent / "fixtures" / "truthfulqa_mc.jsonl"
ROWS = [json.loads(line) for line in FIXTURE.read_text().splitlines()]


# ---------------------------------------------------------------- names


@dataclass(frozen=True)
class _Opts:
    protocol: str = option("lm-eval", choices=("lm-eval", "omlx"))
    shots: int = option(0)


class _Toy(Suite):
    name = "toy"
    Options = _Opts

    def items(self, ctx):
        return []

    def run(self, ctx, items):
        return iter(())

    def summarize(self, ctx, records):
        return {}


def _ctx(**options):
    return SuiteContext(model=None, tokenizer=None, artifact=Path("."), exec_mode="simulated",
                        reference=lambda: None, options=options, progress=False)


def test_result_name_is_the_suite_or_suite_at_protocol():
    toy = _Toy()
    assert result_name(toy, _ctx()) == "toy"
    assert result_name(toy, _ctx(protocol="lm-eval", shots=5)) == "toy"  # the default protocol: the old path
    assert result_name(toy, _ctx(protocol="omlx")) == "toy@omlx"
    assert protocol_variant(_Opts(shots=3)) is None and protocol_variant({"protocol": "omlx"}) is None
    # a duck-typed suite (no Suite base) gets the same rule from its Options
    duck = SimpleNamespace(name="duck", Options=_Opts)
    assert result_name(duck, SimpleNamespace(options=_Opts(protocol="omlx"))) == "duck@omlx"
    assert split_result_name("mmlu@omlx") == ("mmlu", "omlx") and split_result_name("mmlu") == ("mmlu", None)
    # the four suites with a protocol option
    from harness.suites.humaneval import HumanEvalSuite
    from harness.suites.mbpp import MBPPSuite
    from harness.suites.mmlu import MMLUSuite

    for cls in (MMLUSuite, tq.TruthfulQASuite, HumanEvalSuite, MBPPSuite):
        suite = cls()
        assert result_name(suite, _ctx()) == suite.name
        assert result_name(suite, _ctx(protocol="omlx")) == f"{suite.name}@omlx"


# ---------------------------------------------------------------- chance levels


def test_truthfulqa_chance_levels_equal_the_hand_computed_values():
    """Fixture: 9 questions with 4 mc1 choices and one with 3; mc2 true/total per question
    3/6, 2/4, 2/4, 2/4, 2/5, 2/4, 2/5, 2/4, 1/5, 3/5."""
    items, _ = tq.clean_rows(ROWS)
    levels = tq.chance_levels(items)
    assert levels["mc1"] == pytest.approx((9 * 0.25 + 1 / 3) / 10)  # 0.258333
    assert levels["mc2"] == pytest.approx((0.5 * 6 + 0.4 * 2 + 0.2 + 0.6) / 10)  # 0.46
    assert tq.chance_levels(items[:3]) == pytest.approx({"mc1": (0.25 + 0.25 + 1 / 3) / 3, "mc2": 0.5})
    # omlx: the same mc1 choices, shuffled: the same level
    assert tq.chance_levels(omlx.truthfulqa_items(ROWS), "omlx") == pytest.approx({"omlx_mc1": 31 / 120})
    # the suite's summary reports the level of the questions it scored, and the runner stores it in the specs
    suite = tq.TruthfulQASuite()
    ctx = _ctx(data=str(FIXTURE))
    records = [{"id": it["id"], "correct": i % 3 == 0, "mc2": 0.4} for i, it in enumerate(items[1:4])]
    s = suite.summarize(ctx, records)
    assert s["chance"] == pytest.approx({"mc1": (0.25 + 1 / 3 + 0.25) / 3, "mc2": 0.5})
    specs = {m.name: m for m in with_chance(suite.metrics, s)}
    assert specs["mc1"].chance == pytest.approx(s["chance"]["mc1"]) and specs["mc2"].chance == 0.5
    assert specs["omlx_mc1"].chance is None  # not reported under this protocol
    # summary first, then the declaration
    assert chance_level(MetricSpec("acc", True, "proportion", chance=0.25), {"chance": {"acc": 0.2}}) == 0.2
    assert chance_level(MetricSpec("acc", True, "proportion", chance=0.25), {"chance": {"x": 0.2}}) == 0.25


def test_reference_at_the_data_dependent_chance_cannot_rank_and_is_not_gated(tmp_path):
    """MC1 of a float reference at 30 % with chance 25.8 % (its CI includes it): one 'cannot rank'
    line, and a 30-point drop with 12 flips (McNemar p < 0.001) is "not gated (floor)"; the same
    numbers with chance 0.10 (a 10-way task) FAIL."""
    spec = MetricSpec("mc1", True, "proportion", max_drop=0.02, item_key="correct").to_json()
    mc2 = MetricSpec("mc2", True, "mean", item_key="mc2").to_json()

    def results(root, chance):
        paths = {}
        for recipe, k in (("float", 12), ("uniform2", 0)):
            recs = [{"id": f"q{i}", "correct": i < k, "mc2": 0.47} for i in range(40)]
            summary = {"mc1": k / 40, "mc1_ci95": [0.18, 0.46] if k else [0.0, 0.09], "mc2": 0.47,
                       "mc2_ci95": [0.45, 0.49], "n": 40, "chance": {"mc1": chance, "mc2": 0.46}}
            path = _write(root, recipe, "truthfulqa", summary, recs, _artifact(root, recipe, 16.0))
            data = json.loads(path.read_text())
            data["metrics"] = [spec, mc2]
            path.write_text(json.dumps(data))
            paths[recipe] = path
        return paths

    at = results(tmp_path / "at", 31 / 120)
    ref = load_result(at["float"])
    line = floor_effect(ref, "mc1")
    assert line == ("truthfulqa mc1: the reference (float) scores 30.0 % [18.0, 46.0], its 95 % CI includes chance "
                    "(25.8 %): this suite cannot rank recipes on this model; mc1 is not gated.")
    assert "includes chance (0.4600)" in floor_effect(ref, "mc2")
    rows = gate(pair_results([ref], [load_result(at["uniform2"])]), [])
    row = next(r for r in rows if r.diff.metric == "mc1")
    assert row.verdict == NOT_GATED and row.diff.p < 0.001 and row.note == line
    assert main(["gate", "--baseline", str(at["float"]), "--results", str(at["uniform2"])]) == 0

    above = results(tmp_path / "above", 0.10)
    assert floor_effect(load_result(above["float"]), "mc1") is None
    rows = gate(pair_results([load_result(above["float"])], [load_result(above["uniform2"])]), [])
    assert next(r for r in rows if r.diff.metric == "mc1").verdict == "FAIL"
    assert main(["gate", "--baseline", str(above["float"]), "--results", str(above["uniform2"])]) == 1


# ---------------------------------------------------------------- both protocols in one results dir


def _run(out, *extra):
    return main(["run", "--model", "synthetic:llama", "--recipe", "float", "--recipe", "uniform4",
                 "--suite", "truthfulqa", "--opt", f"data={FIXTURE}", "--limit", "6", "--out", str(out),
                 "--no-progress", *extra])


def test_both_protocols_coexist_resume_and_never_share_a_column(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tq, "QA_PREAMBLE", "Q: Where is Paris?\nA: Paris is in France.")  # cheap on CPU
    out = tmp_path / "results"
    omlx_opts = ["--opt", "protocol=omlx", "--opt", "thinking=off", "--opt", "answer_budget=3"]
    assert _run(out) == 0
    assert _run(out, *omlx_opts) == 0
    printed = capsys.readouterr()
    assert "[float / truthfulqa@omlx]" in printed.err and "truthfulqa@omlx  omlx_mc1" in printed.out
    root = out / "synthetic-llama"
    for recipe in ("float", "uniform4"):
        lm, gen = read_result(root / recipe / "truthfulqa.json"), read_result(root / recipe / "truthfulqa@omlx.json")
        assert (lm["suite"], gen["suite"]) == ("truthfulqa", "truthfulqa@omlx")
        assert lm["provenance"]["options"]["protocol"] == "lm-eval" and gen["provenance"]["options"]["protocol"] == "omlx"
        assert "mc1" in lm["summary"] and "omlx_mc1" not in lm["summary"]
        assert "omlx_mc1" in gen["summary"] and "mc1" not in gen["summary"]
        assert lm["items_file"] == "truthfulqa.items.jsonl" and gen["items_file"] == "truthfulqa@omlx.items.jsonl"
        # each file holds its own protocol's records: log-likelihoods vs generated answers
        lm_items = [json.loads(x) for x in (root / recipe / "truthfulqa.items.jsonl").read_text().splitlines()[1:]]
        gen_items = [json.loads(x) for x in (root / recipe / "truthfulqa@omlx.items.jsonl").read_text().splitlines()[1:]]
        assert len(lm_items) == len(gen_items) == 6
        assert all("mc1_ll" in r for r in lm_items) and all("answer_tokens" in r for r in gen_items)
        # chance levels of the questions each protocol scored, stored in the summary and the specs
        lm_ids = {r["id"] for r in lm_items}
        items = [it for it in tq.clean_rows(ROWS)[0] if it["id"] in lm_ids]
        assert lm["summary"]["chance"] == pytest.approx(tq.chance_levels(items))
        assert {m["name"]: m["chance"] for m in lm["metrics"]}["mc1"] == pytest.approx(lm["summary"]["chance"]["mc1"])
    assert read_result(root / "uniform4" / "truthfulqa@omlx.json")["paired"]["vs"] == "float"
    gen = load_result(root / "uniform4" / "truthfulqa@omlx.json")
    assert (gen.suite_name, gen.variant, load_result(root / "uniform4" / "truthfulqa.json").variant) == (
        "truthfulqa", "omlx", None)

    # resume/caching per protocol: re-running either finds all its items done and leaves the other alone
    before = {p.name: p.read_bytes() for p in (root / "uniform4").glob("truthfulqa*.items.jsonl")}
    assert _run(out) == 0
    err = capsys.readouterr().err
    assert err.count("resuming: 6 of 6 items already done") == 2
    assert {p.name: p.read_bytes() for p in (root / "uniform4").glob("truthfulqa*.items.jsonl")} == before

    # the report: one row per (suite@protocol, metric), never a protocol mixed into another's row
    report = tmp_path / "report.md"
    assert main(["report", "--results", str(out), "--out", str(report)]) == 0
    text = report.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| truthfulqa")]
    assert any(r.startswith("| truthfulqa mc1 (%)") for r in rows)
    assert any(r.startswith("| truthfulqa@omlx omlx_mc1 (%)") for r in rows)
    assert not any("omlx" in r for r in rows if r.startswith("| truthfulqa mc"))

    # the gate pairs like with like: lm-eval with lm-eval, omlx with omlx
    cur = tmp_path / "cur" / "synthetic-llama"
    shutil.copytree(root / "uniform4", cur / "uniform4")
    pairs = pair_results(load_results(root / "float"), load_results(tmp_path / "cur"))
    assert sorted((b.suite, c.suite, c.recipe) for b, c in pairs) == [
        ("truthfulqa", "truthfulqa", "uniform4"), ("truthfulqa@omlx", "truthfulqa@omlx", "uniform4")]
    rows = gate(pairs, [])
    assert {(r.suite, r.diff.metric) for r in rows if r.diff.metric.endswith("mc1")} == {
        ("truthfulqa", "mc1"), ("truthfulqa@omlx", "omlx_mc1")}
    # an lm-eval baseline and an omlx run only: nothing to pair (never compared across protocols)
    assert pair_results(load_results(root / "float" / "truthfulqa.json"),
                        load_results(root / "uniform4" / "truthfulqa@omlx.json")) == []
    assert main(["gate", "--baseline", str(root / "float" / "truthfulqa.json"),
                 "--results", str(root / "uniform4" / "truthfulqa@omlx.json")]) == 2
    assert "matches the baseline" in capsys.readouterr().err

    # the model card: separate rows, labelled with the protocol
    card = tmp_path / "card.md"
    assert main(["card", "--results", str(out), "--recipe", "uniform4", "--license", "mit",
                 "--out", str(card)]) == 0
    labels = [line.split("|")[1].strip() for line in card.read_text().splitlines() if line.startswith("| truthfulqa")]
    assert "truthfulqa mc1 (%)" in labels and "truthfulqa@omlx omlx_mc1 (%)" in labels
