"""harness.runtime.thinking: graders see the answer, not the thinking; budgets; chat templates.

tests/fixtures/thinking_outputs.json holds thinking-model outputs in the shapes Qwen3 and
MiniMax-M2/DeepSeek-R1 produce (hand-written in those formats: no thinking model is
available offline), each with what grading the answer and grading the raw text give."""

import json
from pathlib import Path

import pytest

from harness.runtime import thinking as th
from harness.suites.omlx import extract_mmlu_answer

CASES = json.loads((Path(__file__).parent / "fixtures" / "thinking_outputs.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_recorded_outputs_graded_without_thinking(case):
    opened = th.template_opens_thinking("<|im_start|>user\nQ<|im_end|>\n" + case["prompt_tail"])
    split = th.split_thinking(case["text"], opened=opened, count=lambda s: len(s.split()),
                              hit_limit=case["hit_limit"])
    e = case["expect"]
    assert split.answer == e["answer"]
    assert (split.has_thinking, split.closed) == (e["has_thinking"], e["closed"])
    assert (split.thinking_budget_hit, split.answer_budget_hit) == (e["thinking_budget_hit"], e["answer_budget_hit"])
    assert extract_mmlu_answer(split.answer) == e["graded"]
    assert extract_mmlu_answer(case["text"]) == e["raw_text_graded"]  # what grading the raw text would do
    # inferred opening (no `opened`) gives the same split
    assert th.split_thinking(case["text"], hit_limit=case["hit_limit"]).answer == e["answer"]
    # token counts: thinking covers everything up to the last </think>, the rest is answer
    assert split.answer_tokens == len(split.answer.split())
    assert split.thinking_tokens == len(case["text"].split()) - split.answer_tokens


def test_draft_inside_thinking_is_not_the_answer():
    case = next(c for c in CASES if c["name"] == "qwen3_closed_draft_differs")
    split = th.split_thinking(case["text"])
    assert "the answer is A" in split.thinking and split.answer == "B"
    assert "<think>" not in split.thinking and "</think>" not in split.thinking


def test_token_counts_with_total():
    text = "<think>one two three</think> four five"
    s = th.split_thinking(text, count=lambda t: len(t.replace("<think>", " ").replace("</think>", " ").split()),
                          n_tokens=7)
    assert (s.thinking_tokens, s.answer_tokens) == (3, 4)  # answer = total - thinking
    s = th.split_thinking("plain answer", n_tokens=2)
    assert (s.thinking_tokens, s.answer_tokens, s.has_thinking) == (0, 2, False)
    assert th.split_thinking("x</think>y").thinking == "x"  # template-opened, inferred
    assert th.split_thinking("x</think>y", opened=False).answer == "xy"  # told it was not opened


def test_template_opens_thinking():
    assert th.template_opens_thinking("<|Assistant|><think>\n")
    assert not th.template_opens_thinking("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert not th.template_opens_thinking("<|im_start|>assistant\n")


QWEN3_LIKE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def _tokenizer(template):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from harness.sources.synthetic import _tokenizer_json

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_tokenizer_json()))
    tok.chat_template = template
    return tok


def test_chat_prompt_passes_enable_thinking():
    tok = _tokenizer(QWEN3_LIKE)
    msgs = [{"role": "user", "content": "Hi"}]
    assert th.template_supports_thinking(tok)
    on, off, auto = (th.chat_prompt(tok, msgs, m) for m in ("on", "off", "auto"))
    assert on == auto == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert off == on + "<think>\n\n</think>\n\n"
    assert th.chat_template_kwargs("off") == {"enable_thinking": False} and th.chat_template_kwargs("auto") == {}
    with pytest.raises(ValueError):
        th.chat_template_kwargs("maybe")
    plain = _tokenizer(None)
    assert th.chat_prompt(plain, msgs + [{"role": "user", "content": "Q2"}], "on") == "Hi\n\nQ2"
    assert not th.template_supports_thinking(plain)
    count = th.token_counter(tok)
    assert count("The capital of France") == len(tok.encode("The capital of France", add_special_tokens=False)) > 0


class Scripted:
    """A fake model: emits `script` tokens one per step from wherever the text so far is;
    after a forced </think> it emits `after_force`."""

    def __init__(self, prompt, script, after_force=("B",)):
        self.prompt, self.script, self.after_force = prompt, list(script), list(after_force)
        self.calls = []

    def __call__(self, prompt, max_tokens, stop):
        self.calls.append((max_tokens, stop))
        done = prompt[len(self.prompt):]
        if done.endswith(th.FORCE_CLOSE):
            rest = self.after_force + ["<eos>"]
        else:
            pos, acc = 0, ""
            while acc != done:
                acc += self.script[pos]
                pos += 1
            rest = self.script[pos:]
        text, n = "", 0
        for tok in rest:
            if tok == "<eos>":
                return th.Generation(text, n, False)
            if n == max_tokens:
                return th.Generation(text, n, True)
            text, n = text + tok, n + 1
            if any(s in text for s in stop):
                return th.Generation(text, n, False)
        return th.Generation(text, n, n == max_tokens)


def test_two_phase_thinking_closes_within_budget():
    gen = Scripted("P", ["<think>", " a", " b", " c", "</think>", "\n\n", "C", "<eos>"])
    text, s = th.generate_two_phase(gen, "P", th.BudgetPlan(thinking=10, answer=5))
    assert text == "<think> a b c</think>\n\nC" and s.answer == "C" and s.thinking == "a b c"
    assert (s.thinking_tokens, s.answer_tokens) == (5, 2)
    assert not s.budget_hit
    assert gen.calls == [(5, ("<think>",)), (10, ("</think>",)), (5, ())]


def test_two_phase_thinking_budget_forces_close_and_answer_gets_its_budget():
    gen = Scripted("P", ["<think>"] + [" hmm"] * 50 + ["</think>", "A", "<eos>"], after_force=["D"])
    text, s = th.generate_two_phase(gen, "P", th.BudgetPlan(thinking=8, answer=4))
    assert s.thinking_budget_hit and not s.answer_budget_hit and s.answer == "D"
    assert text.endswith(th.FORCE_CLOSE + "D")
    assert (s.thinking_tokens, s.answer_tokens) == (1 + 8, 1)


def test_two_phase_direct_answer_and_answer_budget():
    gen = Scripted("P", ["B", ".", " ok", "<eos>"])
    _, s = th.generate_two_phase(gen, "P", th.BudgetPlan(thinking=100, answer=5))
    assert (s.answer, s.thinking_tokens, s.answer_tokens, s.has_thinking) == ("B. ok", 0, 3, False)
    gen = Scripted("P", ["<think>", "x", "</think>"] + [" A"] * 20)
    _, s = th.generate_two_phase(gen, "P", th.BudgetPlan(thinking=100, answer=5))
    assert s.answer_budget_hit and not s.thinking_budget_hit and s.answer_tokens == 5
    # template-opened prompt: thinking phase straight away
    gen = Scripted("P<think>\n", ["x", " y", "</think>", "C", "<eos>"])
    _, s = th.generate_two_phase(gen, "P<think>\n", th.BudgetPlan(thinking=100, answer=5))
    assert s.answer == "C" and s.thinking == "x y" and gen.calls[0] == (100, ("</think>",))
    # thinking off: one phase on the answer budget
    gen = Scripted("P", ["A"] * 9)
    _, s = th.generate_two_phase(gen, "P", th.BudgetPlan(thinking=100, answer=3), thinking=False)
    assert s.answer == "AAA" and s.answer_budget_hit and gen.calls == [(3, ())]


def test_mlx_generate_fn_on_synthetic_model():
    from mlx_lm.tokenizer_utils import TokenizerWrapper

    from harness.sources.synthetic import build_model

    model, _ = build_model("llama", seed=0)
    tok = TokenizerWrapper(_tokenizer(None))
    gen = th.mlx_generate_fn(model, tok)
    g = gen("The capital of France is", 6, ())
    assert g.n_tokens == 6 and g.hit_limit and isinstance(g.text, str)
    text, s = th.generate_two_phase(gen, "The capital of France is", th.BudgetPlan(thinking=4, answer=3))
    assert s.answer_tokens <= 3
