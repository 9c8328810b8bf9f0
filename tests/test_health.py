"""harness.runtime.health: each flag fires on a crafted degenerate output and stays quiet on
a healthy one; rates carry Wilson CIs; pairing against a reference uses exact McNemar."""

import pytest

from harness.runtime import health as h
from harness.stats import mcnemar_exact, wilson_ci

HEALTHY = ("The Civil War was fought from 1861 to 1865 between the Union and the Confederacy, "
           "ending with the surrender at Appomattox. It abolished slavery and reshaped the nation.")


def flags(answer, **kw):
    out = h.health_flags(answer, **kw)
    return {k[len(h.PREFIX):] for k, v in out.items() if v is True}


def test_healthy_outputs_raise_nothing():
    assert flags(HEALTHY, prompt="When was the Civil War?") == set()
    assert flags("B", prompt="Answer with just the letter.") == set()  # short answers: not a switch
    assert flags("東京は日本の首都です。人口は約千四百万人です。", prompt="日本の首都はどこですか？") == set()
    code = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"
    assert flags(code, prompt="Write add and sub.") == set()


@pytest.mark.parametrize("text,period", [
    ("A " * 40, 1),
    (HEALTHY + " I think so. I think so. I think so. I think so. I think so. I think so.", 4),
    ("def f(x):\n" + "    x = x + 1\n" * 8, 5),  # x = x + 1: 5 units
    ("答案是" + "好的" * 12, 2),  # CJK: one unit per character
])
def test_loop_fires_on_repeated_tail(text, period):
    out = h.health_flags(text)
    assert out["health_loop"] and out["health_any"] and out["health_loop_period"] == period


def test_loop_definition_boundaries():
    cfg = h.HealthConfig(min_repeats=3, min_span=16, max_period=64)
    # period-4 unit x4 = 16 tokens: fires; x3 = 12 tokens < min_span: does not
    assert h.find_loop(list("abcd") * 4, cfg) == h.Loop(4, 16)
    assert h.find_loop(list("xyz") + list("abcd") * 3, cfg) is None
    # long unit: 2 repeats of 10 tokens (20 >= 16) is not enough, 3 are (30 >= 3 * 10)
    unit = [str(i) for i in range(10)]
    assert h.find_loop(["s"] + unit * 2, cfg) is None
    assert h.find_loop(["s"] + unit * 3, cfg).period == 10
    # a loop in the middle that recovers is not a tail loop
    assert h.find_loop(list("ab") * 20 + list("the end of it all"), cfg) is None
    # token ids work too (the model's tokens)
    assert h.health_flags("x", tokens=[5, 6, 7] * 6)["health_loop"]


def test_budget_empty_unicode_flags():
    assert flags(HEALTHY, budget_hit=True) == {"budget_hit", "any"}
    assert flags("   \n ") == {"empty", "any"}
    assert flags("") == {"empty", "any"}
    assert flags("caf\ufffd au lait, please") == {"bad_unicode", "any"}
    assert flags("caf\ufffd", prompt="Repeat: caf\ufffd") == set()  # the prompt had it
    assert flags("ok", raw=b"ok \xff\xfe") == {"bad_unicode", "any"}
    assert flags("ok", raw="ok é".encode()) == set()
    assert flags("lone \ud800 surrogate") == {"bad_unicode", "any"}


def test_language_switch():
    prompt = "Explain in one sentence why the sky is blue."
    assert flags("Небо голубое из-за рассеяния Рэлея в атмосфере.", prompt=prompt) == {"language_switch", "any"}
    assert flags("天空之所以是蓝色的，是因为瑞利散射。", prompt=prompt) == {"language_switch", "any"}
    assert flags("The sky is blue because of Rayleigh scattering.", prompt=prompt) == set()
    # expected script from the item, not the prompt (a translation task asked in English)
    assert flags("Небо голубое из-за рассеяния.", prompt="Translate into Russian: ...", expected_script="CYRILLIC") == set()
    assert flags("The sky is blue.", prompt="Translate into Russian", expected_script="CYRILLIC") == {"language_switch", "any"}
    # a few foreign words inside an English answer are not a switch
    assert flags("In Japanese the word is 東京, meaning eastern capital city.", prompt=prompt) == set()
    assert h.dominant_script("ひらがなとカタカナと漢字") == "CJK"
    assert h.char_script("1") is None and h.char_script("é") == "LATIN"


def _rec(i, **fl):
    base = {f"{h.PREFIX}{f}": False for f in h.FLAGS}
    base.update({f"{h.PREFIX}{k}": v for k, v in fl.items()})
    base[h.PREFIX + "any"] = any(base.values())
    return {"id": str(i), **base}


def test_summary_rates_and_paired_mcnemar():
    ref = [_rec(i, loop=(i == 0)) for i in range(40)]
    cand = [_rec(i, loop=(i < 12), budget_hit=(i < 10)) for i in range(40)]
    s = h.summarize_health(cand)
    assert s["health_n"] == 40 and s["health_loop_rate"] == 12 / 40
    assert s["health_loop_rate_ci95"] == list(wilson_ci(12, 40))
    assert s["health_any_rate"] == 12 / 40 and s["health_empty_rate"] == 0.0
    p = h.paired_health(ref, cand)
    assert p["n_paired"] == 40
    assert (p["loop"]["new"], p["loop"]["gone"]) == (11, 0)
    assert p["loop"]["p"] == mcnemar_exact(11, 0) < 0.001 and p["loop"]["worse"]
    assert p["budget_hit"]["worse"] and not p["empty"]["worse"] and p["empty"]["p"] == 1.0
    line = h.format_health(s, p)
    assert "loop 30.0%" in line and "WORSE" in line
    # a small difference is not significant
    cand2 = [_rec(i, loop=(i < 2)) for i in range(40)]
    assert not h.paired_health(ref, cand2)["loop"]["worse"]
    # records without health fields are ignored
    assert h.summarize_health([{"id": "x", "correct": True}])["health_n"] == 0


def test_metric_declarations_fit_metricspec():
    from harness.suite import MetricSpec

    specs = [MetricSpec(**d) for d in h.METRIC_DECLS]
    assert {s.name for s in specs} == {f"health_{f}_rate" for f in h.ALL_FLAGS}
    assert all(s.higher_is_better is False and s.kind == "proportion" for s in specs)
    assert next(s for s in specs if s.name == "health_loop_rate").item_key == "health_loop"


def test_checked_generation_end_to_end():
    from harness.runtime import thinking as th

    class Tok:
        chat_template = None

        def encode(self, text, add_special_tokens=False):
            return h.text_units(text)

    prompt = "Why is the sky blue?"

    def looping(p, max_tokens, stop):  # thinks briefly, then loops in the answer until the budget
        if p == prompt:
            return th.Generation("<think>", 1, False)
        if p.endswith("<think>"):
            return th.Generation("short thought</think>", 3, False)
        return th.Generation(" blue" * max_tokens, max_tokens, True)

    out = h.checked_generation(looping, Tok(), [{"role": "user", "content": prompt}],
                               plan=th.BudgetPlan(thinking=50, answer=20))
    rec = out["record"]
    assert out["thinking"] == "short thought" and out["answer"] == ("blue " * 20).strip()
    assert rec["answer_budget_hit"] and rec["health_budget_hit"] and rec["health_loop"]
    assert (rec["thinking_tokens"], rec["answer_tokens"]) == (4, 20)
    assert not rec["health_language_switch"] and not rec["health_empty"]
