"""Issue 15 wired into the suites: thinking budgets and splitting through the real
generation path, the omlx protocol in the code suites, generation-health metrics in
report and gate, and the floor-effect check."""

import json
from pathlib import Path
from unittest import mock

import pytest
import yaml

from harness.errors import HarnessError
from harness.results import ItemLog, result_dir, write_result
from harness.runtime import generate as generate_mod
from harness.runtime import health, thinking
from harness.suite import MetricSpec, SuiteContext
from harness.suites import humaneval, mbpp, omlx
from harness.suites.codegen import CodeOptions, parse_options
from harness.suites.reasoning import ReasoningSuite, summarize_records

CASES = {c["name"]: c for c in json.loads(
    (Path(__file__).parent / "fixtures" / "thinking_outputs.json").read_text(encoding="utf-8"))}


# ---------------------------------------------------------------- a char tokenizer and a scripted "model"


class CharTokenizer:
    """One token per character: decode(encode(text)) == text, so recorded outputs replay exactly."""

    bos_token = None
    bos_token_id = None
    chat_template = None
    has_chat_template = False
    eos_token_ids = [0]

    def encode(self, text, add_special_tokens=True):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


class TemplateCharTokenizer(CharTokenizer):
    """A chat template that ends each prompt with the recorded case's prompt tail (the case is
    named in the question): MiniMax's template opens <think> itself, Qwen3's does not."""

    chat_template = "{{ messages }}"
    has_chat_template = True

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=False, **kwargs):
        content = messages[-1]["content"]
        tail = next(c["prompt_tail"] for name, c in CASES.items() if f"[{name}]" in content)
        return "<user>" + content + "</user>" + tail


def scripted_generate_iter(script):
    """A stand-in for harness.runtime.generate.generate_iter: the "model" writes script(prompt
    text, phase) one character per token, honouring max_tokens and the stop callback exactly
    as the real loop does (stop checked after every token; EOS at the end of the script)."""
    calls = []

    def fake(model, tokenizer, prompts, *, max_tokens=256, batch_size=8, stop=None, progress=False,
             desc="generate"):
        limits = max_tokens if isinstance(max_tokens, list) else [max_tokens] * len(prompts)
        for i, p in enumerate(prompts):
            prompt = tokenizer.decode(p)
            calls.append((desc, prompt, limits[i]))
            target = tokenizer.encode(script(prompt, desc))
            tokens, finish, label = [], "stop", "eos"
            for t in target:
                tokens.append(t)
                reason = stop(i, tokens, tokenizer.decode(tokens)) if stop else None
                if reason:
                    label = reason if isinstance(reason, str) else "stop"
                    break
                if len(tokens) >= limits[i]:
                    finish, label = "length", "length"
                    break
            yield generate_mod.Generation(i, tokens, tokenizer.decode(tokens), finish, label, len(p))

    return fake, calls


# ---------------------------------------------------------------- thinking through the reasoning suite


def _with_final(case: dict) -> str:
    """The recorded output with its answer as the questionnaire's FINAL ANSWER line; a draft that
    differs from the final answer becomes a draft FINAL ANSWER line inside the thinking."""
    text, exp = case["text"], case["expect"]
    close = text.rfind("</think>")
    if close < 0:  # generation ended inside the thinking, or a model that does not think
        return text if "<think>" in text else f"FINAL ANSWER: {exp['graded']}\n"
    thinking_part = text[:close]
    if exp["raw_text_graded"] != exp["graded"]:
        thinking_part += f"\nFINAL ANSWER: {exp['raw_text_graded']}\n"  # the draft
    return thinking_part + f"</think>\n\nFINAL ANSWER: {exp['graded']}\n"


def _questionnaire(tmp_path, names) -> Path:
    data = {"version": 1, "categories": ["control"], "questions": [
        {"id": name, "category": "control", "question": f"[{name}] When was the American Civil War?",
         "answer_format": "<letter>",
         "criteria": [{"type": "final_exact", "answers": [CASES[name]["expect"]["graded"] or "B"], "points": 1,
                       "severity": "critical"}]}
        for name in names]}
    path = tmp_path / "q.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_reasoning_grades_the_answer_not_the_thinking(tmp_path):
    names = ["qwen3_closed_draft_differs", "minimax_template_opened", "truncated_in_thinking", "no_thinking",
             "interleaved_blocks"]
    after_forced_close = "FINAL ANSWER: B\n"
    budget = max(len(_with_final(CASES[n])) for n in names if n != "truncated_in_thinking") + 10
    outputs = {n: _with_final(CASES[n]) for n in names}
    outputs["truncated_in_thinking"] += "".join(f" Check {k}." for k in range(budget // 8))  # never closes

    def script(prompt, phase):
        name = next(n for n in names if f"[{n}]" in prompt)
        return after_forced_close if phase == "answer" else outputs[name]

    fake, calls = scripted_generate_iter(script)
    suite = ReasoningSuite()
    ctx = SuiteContext(model=None, tokenizer=TemplateCharTokenizer(), artifact=tmp_path, exec_mode="native",
                       reference=lambda: None, progress=False,
                       options={"questions": str(_questionnaire(tmp_path, names)), "thinking_budget": str(budget),
                                "max_tokens": "64", "batch_size": "1"})
    with mock.patch.object(generate_mod, "generate_iter", fake):
        records = {r["id"]: r for r in suite.run(ctx, suite.items(ctx))}
    # a draft FINAL ANSWER inside a closed think block never counts: the final one does
    draft = records["qwen3_closed_draft_differs"]
    assert "FINAL ANSWER: A" in draft["thinking"] and draft["final"] == "B" and draft["correct"]
    assert draft["has_thinking"] and draft["closed"] and not draft["budget_hit"]
    assert draft["thinking_tokens"] + draft["answer_tokens"] == draft["generated_tokens"]
    assert draft["answer_tokens"] == len("\n\nFINAL ANSWER: B\n")  # counted from </think> on
    # template-opened thinking (only the closing tag in the output), draft "C" inside it
    assert records["minimax_template_opened"]["correct"] and records["minimax_template_opened"]["has_thinking"]
    # no closing tag within the thinking budget: closed for the model, the answer gets its own budget
    cut = records["truncated_in_thinking"]
    assert cut["thinking_budget_hit"] and not cut["answer_budget_hit"] and cut["health_budget_hit"]
    assert cut["thinking_tokens"] == budget and cut["answer_tokens"] == len(after_forced_close)
    assert cut["correct"] and cut["final"] == "B"
    phase2 = [c for c in calls if c[0] == "answer"]
    assert len(phase2) == 1 and phase2[0][1].endswith(thinking.FORCE_CLOSE) and phase2[0][2] == 64
    # interleaved blocks: both are thinking
    inter = records["interleaved_blocks"]
    assert inter["has_thinking"] and inter["correct"] and "Maybe A." not in inter["answer"]
    plain = records["no_thinking"]
    assert not plain["has_thinking"] and plain["thinking_tokens"] == 0 and plain["correct"]
    for r in records.values():
        assert {"health_loop", "health_empty", "health_any"} <= set(r) and not r["health_empty"]


def test_eos_inside_thinking_is_an_empty_answer(tmp_path):
    case = CASES["truncated_in_thinking"]
    fake, calls = scripted_generate_iter(lambda prompt, phase: case["text"])  # EOS before </think>
    suite = ReasoningSuite()
    ctx = SuiteContext(model=None, tokenizer=CharTokenizer(), artifact=tmp_path, exec_mode="native",
                       reference=lambda: None, progress=False,
                       options={"questions": str(_questionnaire(tmp_path, ["truncated_in_thinking"]))})
    with mock.patch.object(generate_mod, "generate_iter", fake):
        (r,) = list(suite.run(ctx, suite.items(ctx)))
    assert r["answer"] == "" and r["health_empty"] and r["health_any"] and not r["budget_hit"]
    assert r["points"] == 0 and r["thinking_tokens"] == len(case["text"]) and r["answer_tokens"] == 0
    assert [c[0] for c in calls] == ["generate"]  # no answer phase after EOS
    assert calls[0][2] == 4096 + 1024  # the default budgets: thinking 4096, answer 1024


def test_answer_budget_and_loop_flags(tmp_path):
    case = CASES["answer_runs_past_budget"]
    loop = case["text"] + " A" * 200
    fake, _ = scripted_generate_iter(lambda prompt, phase: loop)
    suite = ReasoningSuite()
    ctx = SuiteContext(model=None, tokenizer=CharTokenizer(), artifact=tmp_path, exec_mode="native",
                       reference=lambda: None, progress=False,
                       options={"questions": str(_questionnaire(tmp_path, ["answer_runs_past_budget"])),
                                "max_tokens": "40", "stop_on_repeat": "false"})
    with mock.patch.object(generate_mod, "generate_iter", fake):
        (r,) = list(suite.run(ctx, suite.items(ctx)))
    assert r["answer_budget_hit"] and not r["thinking_budget_hit"] and r["answer_tokens"] == 40
    assert r["health_loop"] and r["health_budget_hit"] and r["stop"] == "max_tokens"
    summary = suite.summarize(ctx, [r])
    assert summary["health_loop_rate"] == 1.0 and summary["health_n"] == 1


# ---------------------------------------------------------------- the omlx protocol in the code suites

ADD = {"id": "fx/add", "prompt": 'def add(a, b):\n    """Add two numbers."""\n',
       "test": "def check(f):\n    assert f(1, 2) == 3\n    assert f(-1, 1) == 0\n", "entry_point": "add"}
RESPONSES = {
    "strict": "    return a + b\n",  # the plain completion: passes as is
    "col0": "return a + b\n",  # body at column 0: omlx's indentation repair passes it
    "function": "```python\ndef add(a, b):\n    return a + b\n```",  # a standalone function (lenient)
    "wrong": "    return a - b\n",
}


def _omlx_items():
    return [dict(ADD, id=f"fx/{k}") for k in RESPONSES]


def test_code_options_resolve_protocol_budgets():
    assert (CodeOptions().max_tokens, CodeOptions().thinking_budget) == (512, 4096)  # lm-eval: today's budget
    omlx_opts = parse_options({"protocol": "omlx"}, "humaneval")
    assert (omlx_opts.max_tokens, omlx_opts.thinking_budget) == (omlx.CODE_MAX_TOKENS, 8192)
    assert parse_options({"protocol": "omlx", "max_tokens": "64"}, "humaneval").max_tokens == 64
    with pytest.raises(HarnessError, match="protocol"):
        parse_options({"protocol": "openai"}, "humaneval")


def test_humaneval_omlx_prompt_lenient_and_strict(tmp_path):
    items = _omlx_items()
    # the user text omlx sends, character for character (omlx/eval/humaneval.py)
    expected = ("Complete the following Python function. Return only the missing indented function body, "
                "no explanations.\n\n" + ADD["prompt"])
    assert omlx.humaneval_user_text(ADD["prompt"]) == expected
    order = iter(RESPONSES)  # every item has the same prompt: the "model" answers in item order
    fake, calls = scripted_generate_iter(lambda prompt, phase: RESPONSES[next(order)])
    suite = humaneval.HumanEvalSuite()
    ctx = SuiteContext(model=None, tokenizer=CharTokenizer(), artifact=tmp_path, exec_mode="native",
                       reference=lambda: None, progress=False,
                       options={"protocol": "omlx", "batch_size": "8", "workers": "2", "allow_unsafe": "true"})
    with mock.patch.object(generate_mod, "generate_iter", fake):
        records = {r["id"]: r for r in suite.run(ctx, items)}
    assert [c[1] for c in calls] == [expected] * 4  # no chat template here: the plain user text
    assert all(c[2] == 8192 + 2048 for c in calls)  # omlx budgets: thinking 8192 + answer 2048
    strict, col0, function, wrong = (records[f"fx/{k}"] for k in RESPONSES)
    assert strict["correct"] and strict["strict_correct"] and strict["pass_mode"] == "canonical_raw"
    assert not strict["lenient"]
    assert col0["correct"] and not col0["strict_correct"] and col0["lenient"]
    assert col0["pass_mode"] in omlx.LENIENT_MODES
    assert function["correct"] and function["pass_mode"] == "standalone_function" and function["lenient"]
    assert not function["strict_correct"]  # prompt + a fenced block is not a program
    assert not wrong["correct"] and not wrong["strict_correct"] and wrong["failure_type"] == "wrong_answer"
    assert all(r["protocol"] == "omlx" and "health_any" in r for r in records.values())
    summary = suite.summarize(ctx, list(records.values()))
    assert summary["omlx_pass@1"] == 0.75 and summary["omlx_strict_pass@1"] == 0.25
    assert summary["passed_lenient_only"] == 2 and "pass@1" not in summary  # never the lm-eval column
    names = {m.name for m in suite.metric_specs(ctx)}
    assert {"omlx_pass@1", "omlx_strict_pass@1", "health_loop_rate"} <= names and "pass@1" not in names
    lm = SuiteContext(model=None, tokenizer=None, artifact=tmp_path, exec_mode="native", reference=lambda: None)
    assert "pass@1" in {m.name for m in suite.metric_specs(lm)}


def test_mbpp_omlx_prompt_and_tolerant_asserts(tmp_path):
    item = {"id": "mbpp/1", "task_id": 1, "text": "Write a function to halve a number.",
            "test_list": ["assert half(1) == 0.5", "assert half(0.3) == 0.15", "assert half(4) == 2"],
            "test_setup_code": "", "reference_code": ""}
    expected = ("Write a Python function to solve the following problem. Provide only the complete function "
                "implementation, no explanations.\n\nProblem: Write a function to halve a number.\n\n"
                "Test cases:\nassert half(1) == 0.5\nassert half(0.3) == 0.15\nassert half(4) == 2\n\nSolution:")
    # 0.3 * 0.5 is exactly 0.15, but 0.3 / 2 * 1.0000000000000002 is not: only tolerant asserts pass it
    answers = iter(["```python\ndef half(x):\n    return x / 2\n```",
                    "```python\ndef half(x):\n    return x / 2 * 1.0000000000000002\n```"])
    fake, calls = scripted_generate_iter(lambda prompt, phase: next(answers))
    suite = mbpp.MBPPSuite()
    ctx = SuiteContext(model=None, tokenizer=CharTokenizer(), artifact=tmp_path, exec_mode="native",
                       reference=lambda: None, progress=False,
                       options={"protocol": "omlx", "batch_size": "1", "workers": "1"})
    with mock.patch.object(generate_mod, "generate_iter", fake):
        exact, drift = list(suite.run(ctx, [item, dict(item, id="mbpp/2")]))
    assert calls[0][1] == expected
    assert exact["correct"] and exact["strict_correct"] and exact["pass_mode"] == "standalone_code"
    assert drift["correct"] and not drift["strict_correct"] and drift["lenient"]
    assert drift["pass_mode"] == "tolerant_numeric_asserts"


def test_code_suite_omlx_on_a_tiny_model(tmp_path):
    """The real generation path with a synthetic model: records and summary of protocol=omlx."""
    synthetic = pytest.importorskip("harness.sources.synthetic")
    import mlx_lm

    path = synthetic.write_synthetic("llama", tmp_path / "llama")
    model, tokenizer = mlx_lm.load(str(path))
    suite = humaneval.HumanEvalSuite()
    ctx = SuiteContext(model=model, tokenizer=tokenizer, artifact=path, exec_mode="native",
                       reference=lambda: (model, tokenizer), limit=2, progress=False,
                       options={"protocol": "omlx", "max_tokens": "6", "allow_unsafe": "true"})
    items = suite.items(ctx)
    all_items, _, _ = humaneval.load_problems("auto")
    assert items == omlx.deterministic_sample(all_items, 2)  # omlx's seed-42 sample
    records = list(suite.run(ctx, items))
    for r in records:
        assert r["protocol"] == "omlx" and r["answer_tokens"] <= 6 and r["thinking_tokens"] == 0
        assert isinstance(r["health_loop"], bool) and r["correct"] in (True, False)
        json.dumps(r)
    summary = suite.summarize(ctx, records)
    assert summary["n"] == 2 and summary["health_n"] == 2 and "omlx_pass@1_ci95" in summary
    assert suite.data_info(ctx)["protocol"] == "omlx"


# ---------------------------------------------------------------- gate and report: health and floor


def _result(root, recipe, suite_name, summary, records, metrics):
    out = result_dir(root, "m", recipe)
    log = ItemLog(out / f"{suite_name}.items.jsonl", run_key=f"{recipe}-{suite_name}")
    for rec in records:
        log.append(rec)
    art = root / "artifacts" / recipe
    art.mkdir(parents=True, exist_ok=True)
    write_result(out / f"{suite_name}.json", {
        "model": "m", "recipe": recipe, "suite": suite_name, "run_key": f"{recipe}-{suite_name}",
        "complete": True, "n_items": len(records), "summary": summary,
        "artifact": {"path": str(art), "bpw": 16.0 if recipe == "float" else 2.5},
        "provenance": {"limit": None, "seed": 0, "exec_mode": "simulated"},
        "metrics": [m.to_json() for m in metrics], "items_file": f"{suite_name}.items.jsonl"})
    return out / f"{suite_name}.json"


def _reasoning_records(n: int, looping: set, points: dict) -> list:
    recs = []
    for i in range(n):
        answer = "FINAL ANSWER: 4" if i not in looping else "the the the " * 10
        flags = health.health_flags(answer, prompt="What is 2+2?", budget_hit=i in looping)
        p = points.get(i, 0.0)
        recs.append({"id": f"q{i:02d}", "category": "control", "points": p, "max_points": 1.0,
                     "score": 100.0 * p, "correct": p == 1.0, "failed": [], "thinking_tokens": 0,
                     "answer_tokens": 10, "has_thinking": False, **flags})
    return recs


def test_gate_fails_health_regression_and_skips_floor_metric(tmp_path, capsys):
    from harness.cli import main

    metrics = ReasoningSuite().metrics
    ref = _reasoning_records(40, looping=set(), points={})  # the reference scores 0: the floor
    bad = _reasoning_records(40, looping=set(range(20)), points={})
    root = tmp_path / "results"
    with mock.patch("os.fsync"):
        for recipe, recs in (("float", ref), ("uniform2", bad)):
            _result(root, recipe, "reasoning", summarize_records(recs, ["control"]), recs, metrics)
    base = root / "m" / "float" / "reasoning.json"
    code = main(["gate", "--baseline", str(base), "--results", str(root / "m" / "uniform2" / "reasoning.json")])
    out = capsys.readouterr().out
    assert code == 1
    regression = out.split("REGRESSION: ")[1]
    assert "reasoning health_loop_rate (drop" in regression and "reasoning health_budget_hit_rate" in regression
    assert "reasoning score" not in regression
    score_row = next(line for line in out.splitlines() if " score " in f" {line} " and "reasoning" in line)
    assert "not gated (floor)" in score_row
    assert "note: reasoning score: the reference (float) scores 0.0/100" in out and "not gated" in out
    # the report: a health section with the paired test, and the floor line
    from harness.report.make import ReportOptions, make_report

    text = make_report(ReportOptions(results=root))
    assert "## Generation health" in text or "### Generation health" in text
    loop_row = next(line for line in text.splitlines() if line.startswith("| reasoning") and "| loop" in line)
    assert "+20 new, 0 gone" in loop_row and "*" in loop_row
    assert "Can these suites rank recipes on this model?" in text
    assert "reasoning score: the reference (float) scores 0.0/100" in text
    assert "**uniform2** generates less healthily than float" in text


def test_floor_effect_rules():
    from harness.report.floor import floor_effect

    class R:
        suite, recipe, metrics = "mmlu", "float", ()

        def __init__(self, summary):
            self.summary = summary

    acc = MetricSpec("acc", True, "proportion", chance=0.25)
    assert "includes chance (25.0 %)" in floor_effect(R({"acc": 0.27, "acc_ci95": [0.22, 0.32]}), acc)
    assert floor_effect(R({"acc": 0.45, "acc_ci95": [0.40, 0.50]}), acc) is None
    assert floor_effect(R({"acc": 0.45}), MetricSpec("acc", True, "proportion")) is None  # no chance declared
    score = MetricSpec("score", True, "points", chance=0.0)
    assert "near the floor (0.0/100)" in floor_effect(R({"score": 4.08, "score_ci95": [0.83, 8.0]}), score)
    assert floor_effect(R({"score": 12.0, "score_ci95": [6.0, 18.0]}), score) is None
    assert "near chance" in floor_effect(R({"acc": 0.31, "acc_ci95": [0.26, 0.36]}), acc)
    assert "includes the floor" in floor_effect(R({"score": 6.0, "score_ci95": [0.0, 12.0]}), score)
    assert floor_effect(R({"score": 60.0, "score_ci95": [50.0, 70.0]}), score) is None
    rate = MetricSpec("health_loop_rate", False, "proportion", chance=0.0)
    assert floor_effect(R({"health_loop_rate": 0.0}), rate) is None  # lower is better: never a floor


# ---------------------------------------------------------------- SmolLM2: uniform2 vs float (slow)


@pytest.mark.slow
def test_smollm2_uniform2_generates_less_healthily(tmp_path):
    """Issue 15: on SmolLM2 the questionnaire shows uniform2 looping / running into its budget
    significantly more often than float, and the gate fails it by default (no --max-drop)."""
    try:
        from harness.sources import resolve_model

        resolve_model("smollm2-135m")
    except (ImportError, HarnessError) as e:
        pytest.skip(f"SmolLM2 source not available: {e}")
    from harness.report.gate import GateOptions, run_gate
    from harness.runner import RunOptions, run

    out = tmp_path / "results"
    run(RunOptions(recipes=["float", "uniform2"], suites=["reasoning"], limit=20, out=out, progress=False,
                   options={"max_tokens": "128"}), log=lambda *a, **k: None)
    model_dir = next(p for p in out.iterdir() if p.is_dir())
    base, cur = model_dir / "float" / "reasoning.json", model_dir / "uniform2" / "reasoning.json"
    report = run_gate(GateOptions(baseline=base, results=cur))
    failed = {r.diff.metric for r in report.with_verdict("FAIL")}
    assert report.exit_code == 1
    assert failed & {"health_loop_rate", "health_budget_hit_rate", "health_any_rate"}, failed
    floor = [r for r in report.rows if r.verdict == "not gated (floor)"]
    # SmolLM2 scores ~4/100 on the questionnaire: the score cannot rank recipes and is not gated
    assert [r.diff.metric for r in floor] == ["score"] and "cannot rank recipes" in floor[0].note
