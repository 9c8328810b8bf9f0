"""Thinking models: split `<think>...</think>` from the answer, thinking on/off, two budgets.

Thinking models (Qwen3, MiniMax-M2, DeepSeek-R1 ...) write their reasoning between
`<think>` and `</think>` and the answer after it. A grader must see only the answer: a
draft inside the thinking ("maybe B ... no, C") would otherwise be extracted instead of
the final one. Shapes handled by `split_thinking`:

* `<think>reasoning</think>answer` (the model opens the tag itself);
* `reasoning</think>answer` (the chat template already opened `<think>` at the end of the
  prompt: DeepSeek-R1, MiniMax-M2, Qwen3 with some templates): a close tag without an open
  tag, or `opened=True` from `template_opens_thinking(prompt)`;
* no close tag: generation ended inside the thinking (the thinking budget ran out); the
  answer is empty and, when the run stopped on its token limit, `thinking_budget_hit`;
* several blocks (interleaved thinking): every block is thinking, the rest is the answer
  (as omlx's `_strip_think_tags` regex, omlx/eval/base.py, removes every block);
* `<think>\\n\\n</think>` with nothing inside (thinking switched off by the template).

`chat_prompt(tokenizer, messages, thinking)` passes `enable_thinking` to the chat template
(on: True, off: False, auto: not passed, so the template's default applies; Jinja ignores
the keyword in templates that do not use it). `generate_two_phase` runs a thinking budget
then an answer budget: when the thinking budget runs out the thinking is closed with
"\\n</think>\\n\\n" and the answer still gets its own budget (so a 512-token cap no longer
truncates MiniMax's thinking into an empty answer; budgets in the thousands suit thinking
models: `DEFAULT_PLAN`).
"""

from dataclasses import asdict, dataclass
from typing import Callable, Optional

OPEN, CLOSE = "<think>", "</think>"
THINKING_MODES = ("auto", "on", "off")
FORCE_CLOSE = "\n" + CLOSE + "\n\n"  # appended when the thinking budget runs out


@dataclass(frozen=True)
class BudgetPlan:
    """Token budgets: the thinking phase, then the answer phase (each its own limit)."""

    thinking: int = 4096
    answer: int = 1024

    def __post_init__(self):
        if self.thinking < 0 or self.answer < 1:
            raise ValueError(f"budgets must be thinking >= 0 and answer >= 1, got {self}")

    @property
    def total(self) -> int:
        return self.thinking + self.answer


# omlx uses 8k-32k for thinking (base.THINKING_MIN/MAX_TOKENS); 4k + 1k keeps CPU runs bounded
# while leaving MiniMax-style thinking room to close. Non-thinking runs use the answer budget only.
DEFAULT_PLAN = BudgetPlan(thinking=4096, answer=1024)


@dataclass
class ThinkingSplit:
    thinking: str  # text inside the think block(s), tags removed, stripped
    answer: str  # what the grader sees: text outside the think blocks, stripped
    has_thinking: bool  # a think block was opened (by the model or the template)
    closed: bool  # every opened think block was closed (True when there was none)
    thinking_tokens: Optional[int] = None  # tokens spent inside thinking (tags included)
    answer_tokens: Optional[int] = None
    thinking_budget_hit: bool = False  # generation ended inside the thinking on a token limit
    answer_budget_hit: bool = False  # the answer phase ended on its token limit

    @property
    def budget_hit(self) -> bool:
        return self.thinking_budget_hit or self.answer_budget_hit

    def record(self) -> dict:
        """The per-item fields suites store (no texts: those are stored by the suite if wanted)."""
        d = asdict(self)
        for key in ("thinking", "answer"):
            d.pop(key)
        d["budget_hit"] = self.budget_hit
        return d


def template_opens_thinking(prompt: str) -> bool:
    """The chat-templated prompt ends inside an open think block (the model continues thinking)."""
    tail = prompt.rstrip()
    last_open, last_close = tail.rfind(OPEN), tail.rfind(CLOSE)
    return last_open >= 0 and last_open > last_close and not tail[last_open + len(OPEN):].strip()


def split_thinking(text: str, *, opened: Optional[bool] = None, count: Optional[Callable[[str], int]] = None,
                   n_tokens: Optional[int] = None, hit_limit: bool = False) -> ThinkingSplit:
    """Split one generated text into thinking and answer.

    opened: the template already opened <think> (None: inferred, a </think> before any <think>
    means it was). count(text) -> tokens (e.g. `token_counter(tokenizer)`); n_tokens: the number
    of tokens generated (then answer_tokens = n_tokens - thinking_tokens, exact at the total).
    hit_limit: generation stopped on its token limit (not EOS/stop): the budget of the phase it
    stopped in was hit."""
    first_open, first_close = text.find(OPEN), text.find(CLOSE)
    if opened is None:
        opened = first_close >= 0 and (first_open < 0 or first_close < first_open)
    # spans of the text: thinking spans include their tags, answer spans are the rest
    think_spans, answer_spans, thinking_parts = [], [], []
    pos, inside, has_thinking, block_start = 0, bool(opened), bool(opened), 0
    while True:
        if inside:
            end = text.find(CLOSE, pos)
            stop = len(text) if end < 0 else end + len(CLOSE)
            thinking_parts.append(text[pos:len(text) if end < 0 else end])
            think_spans.append((block_start, stop))
            if end < 0:
                break
            pos, inside = stop, False
        else:
            start = text.find(OPEN, pos)
            answer_spans.append((pos, len(text) if start < 0 else start))
            if start < 0:
                break
            block_start, pos, inside, has_thinking = start, start + len(OPEN), True, True
    closed = not inside
    # a stray </think> in the answer (a template-opened block already closed) is not answer text
    pieces = [text[a:b].replace(CLOSE, "").strip() for a, b in answer_spans]
    answer = "\n".join(p for p in pieces if p)
    thinking = "\n".join(p.strip() for p in thinking_parts if p.strip())
    t_tokens = a_tokens = None
    if count is not None:
        t_tokens = sum(count(text[a:b]) for a, b in think_spans if b > a)
        if n_tokens is not None:
            t_tokens = min(t_tokens, n_tokens)
            a_tokens = n_tokens - t_tokens
        else:
            a_tokens = sum(count(text[a:b]) for a, b in answer_spans if b > a)
    elif n_tokens is not None and not has_thinking:
        t_tokens, a_tokens = 0, n_tokens
    return ThinkingSplit(thinking, answer, has_thinking, closed, t_tokens, a_tokens,
                         thinking_budget_hit=bool(hit_limit and not closed),
                         answer_budget_hit=bool(hit_limit and closed))


def encode_plain(tokenizer, text: str) -> list:
    """Token ids of `text` without special tokens (generated text has none of its own)."""
    hf = getattr(tokenizer, "_tokenizer", tokenizer)
    try:
        return list(hf.encode(text, add_special_tokens=False))
    except TypeError:
        return list(tokenizer.encode(text))


def token_counter(tokenizer) -> Callable[[str], int]:
    """count(text) -> number of tokens, without special tokens (a BOS would add one per call)."""
    return lambda text: len(encode_plain(tokenizer, text)) if text else 0


# ---------------------------------------------------------------- chat template


def chat_template_kwargs(thinking: str) -> dict:
    """The keyword to pass to apply_chat_template for thinking=auto|on|off."""
    if thinking not in THINKING_MODES:
        raise ValueError(f"thinking must be one of {THINKING_MODES}, got {thinking!r}")
    return {} if thinking == "auto" else {"enable_thinking": thinking == "on"}


def template_supports_thinking(tokenizer) -> bool:
    """The chat template reacts to enable_thinking or writes think tags."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if not isinstance(template, str):  # named templates: {name: source}
        template = " ".join(map(str, dict(template).values()))
    return "enable_thinking" in template or OPEN in template


def chat_prompt(tokenizer, messages: list, thinking: str = "auto", **kwargs) -> str:
    """The chat-templated prompt text (generation prompt added), `enable_thinking` per `thinking`.

    A tokenizer without a chat template gets the user turns joined by blank lines (the plain
    prompt), so a base model still runs; suites record whether a template was used."""
    extra = chat_template_kwargs(thinking)
    if not getattr(tokenizer, "chat_template", None):
        return "\n\n".join(m["content"] for m in messages)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **extra, **kwargs)


# ---------------------------------------------------------------- two-phase generation


@dataclass
class Generation:
    """What a generate callable returns: the text, tokens generated, and whether it stopped
    on max_tokens (False: EOS or a stop string)."""

    text: str
    n_tokens: int
    hit_limit: bool


# generate(prompt_text, max_tokens, stop_strings) -> Generation; it must stop right after a
# stop string (the string included in the text).
GenerateFn = Callable[[str, int, tuple], Generation]


def generate_two_phase(generate: GenerateFn, prompt: str, plan: BudgetPlan = DEFAULT_PLAN,
                       thinking: bool = True) -> tuple:
    """(generated text, ThinkingSplit) under a thinking budget, then an answer budget.

    Unless the template already opened a think block, the model first gets the answer budget
    with <think> as a stop string: a model that answers directly is done (its answer capped at
    plan.answer, exactly as without thinking). Once thinking is open it gets plan.thinking
    tokens, stopping at </think>; if that budget runs out inside the thinking, FORCE_CLOSE is
    appended (thinking_budget_hit). The answer then gets plan.answer tokens of its own.
    thinking=False: one phase of plan.answer tokens (a think block opened anyway is split out).
    Token counts come from the phases (the forced close tag is not counted)."""
    opened = template_opens_thinking(prompt)
    if not thinking or plan.thinking == 0:
        g = generate(prompt, plan.answer, ())
        split = split_thinking(g.text, opened=opened)
        split.thinking_tokens, split.answer_tokens = (g.n_tokens, 0) if split.has_thinking else (0, g.n_tokens)
        split.answer_budget_hit, split.thinking_budget_hit = g.hit_limit and split.closed, g.hit_limit and not split.closed
        return g.text, split
    text, spent = "", 0
    if not opened:
        g0 = generate(prompt, plan.answer, (OPEN,))
        text = g0.text
        if OPEN not in g0.text:  # answered without thinking
            split = split_thinking(text, opened=False)
            split.thinking_tokens, split.answer_tokens, split.answer_budget_hit = 0, g0.n_tokens, g0.hit_limit
            return text, split
        spent = g0.n_tokens  # the tokens up to and including <think>
    g1 = generate(prompt + text, plan.thinking, (CLOSE,))
    text += g1.text
    thinking_hit = g1.hit_limit and CLOSE not in g1.text
    if not thinking_hit and CLOSE not in g1.text:  # EOS inside the thinking: no answer
        split = split_thinking(text, opened=opened)
        split.thinking_tokens, split.answer_tokens = spent + g1.n_tokens, 0
        return text, split
    if thinking_hit:
        text += FORCE_CLOSE
    g2 = generate(prompt + text, plan.answer, ())
    text += g2.text
    split = split_thinking(text, opened=opened)
    split.thinking_tokens, split.answer_tokens = spent + g1.n_tokens, g2.n_tokens
    split.thinking_budget_hit, split.answer_budget_hit = thinking_hit, g2.hit_limit
    return text, split


def mlx_generate_fn(model, tokenizer) -> GenerateFn:
    """A greedy GenerateFn over harness.runtime.generate (one prompt at a time: exactly
    mlx_lm.stream_generate's tokens); stops right after a stop string, at EOS or max_tokens."""
    from harness.runtime.generate import generate as run_generate

    def generate(prompt: str, max_tokens: int, stop: tuple) -> Generation:
        ids = encode_plain(tokenizer, prompt)  # a templated prompt already holds its special tokens

        def on_token(_i, _tokens, text):
            return "stop_string" if stop and any(s in text for s in stop) else None

        (g,) = run_generate(model, tokenizer, [ids], max_tokens=max_tokens, batch_size=1, stop=on_token)
        if g.stop == "stop_string":
            cut = min(g.text.find(s) + len(s) for s in stop if s in g.text)
            return Generation(g.text[:cut], len(g.tokens), False)
        return Generation(g.text, len(g.tokens), g.stop == "length")

    return generate


# ---------------------------------------------------------------- batched budgets (the suites' path)


def raw_answer(text: str, split: ThinkingSplit) -> str:
    """The answer as generated (not stripped): the whole text without thinking, else the text
    after the last </think>. Code graders need it: stripping would eat a body's indentation."""
    if not split.has_thinking:
        return text
    if not split.closed:
        return ""
    return text[text.rfind(CLOSE) + len(CLOSE):].lstrip("\n")


@dataclass
class BudgetedGeneration:
    """One prompt's output under a BudgetPlan (generate_budgeted)."""

    index: int
    text: str  # everything generated (FORCE_CLOSE inserted where the thinking budget ran out)
    tokens: list  # every generated id (FORCE_CLOSE's ids included)
    split: ThinkingSplit  # thinking / answer, token counts, budget flags
    stop: str  # why generation ended: eos | length | answer_budget | the caller's stop label


def generate_budgeted(model, tokenizer, prompts: list, **kwargs) -> list:
    """`generate_budgeted_iter`, collected in prompt order."""
    out = {g.index: g for g in generate_budgeted_iter(model, tokenizer, prompts, **kwargs)}
    return [out[i] for i in range(len(out))]


def generate_budgeted_iter(model, tokenizer, prompts: list, *, plan: BudgetPlan = DEFAULT_PLAN,
                           thinking: bool = True, stop: Optional[Callable[[int, str], object]] = None,
                           batch_size: int = 8, decode: Optional[Callable[[list], str]] = None,
                           progress: bool = False, loop_stop: Optional[Callable[[list], bool]] = None):
    """Batched greedy generation under a thinking budget and an answer budget, through
    harness.runtime.generate (the one generation loop): the same budgets as
    `generate_two_phase`, without giving up batching.

    prompts: token-id lists (harness.runtime.prompt.encode_prompt). Phase 1 runs every prompt
    with a stop rule that tracks where each sequence is: inside a think block (opened by the
    model, or by the template at the end of the prompt) it may spend plan.thinking tokens;
    once outside (closed, or never opened) the answer may spend plan.answer tokens counted
    from the (last) close tag; thinking_tokens = tokens up to it. Sequences that ran out of thinking get FORCE_CLOSE appended and a
    second batched phase of plan.answer tokens. thinking=False: the answer budget only (a
    block opened anyway is still split off). stop(i, answer) -> a truthy label (answer:
    `raw_answer`) ends a sequence once its answer is complete (e.g. a closed code block); it
    never sees thinking.
    decode(tokens) -> text replaces the streaming text (code suites keep tokenizer.decode).
    loop_stop(tokens) -> True ends a sequence stuck in a loop, thinking or not ("repetition").
    Yields a BudgetedGeneration per prompt as each finishes (any order: suites append
    records as they go, so a killed run resumes)."""
    from harness.runtime.generate import generate_iter

    prompts = [list(p) for p in prompts]
    if not prompts:
        return
    think = thinking and plan.thinking > 0
    opened = [think and template_opens_thinking(tokenizer.decode(p[-16:])) for p in prompts]
    close_at: dict = {}  # index -> tokens generated when the (last) think block closed
    closes_seen: dict = {}

    def text_of(tokens, streamed):
        return decode(tokens) if decode is not None else streamed

    def phase1_stop(i, tokens, streamed):
        if loop_stop is not None and loop_stop(tokens):
            return "repetition"
        text = text_of(tokens, streamed)
        split = split_thinking(text, opened=opened[i] or None)
        if split.has_thinking and not split.closed:
            return "thinking_budget" if think and len(tokens) >= plan.thinking else None
        if split.has_thinking:
            closes = text.count(CLOSE)  # interleaved blocks: the answer budget restarts at the last close
            if closes_seen.get(i) != closes:
                closes_seen[i], close_at[i] = closes, len(tokens)
        start = close_at.get(i, 0)
        if len(tokens) - start >= plan.answer:
            return "answer_budget"
        answer = raw_answer(text, split)
        return stop(i, answer) if stop is not None and answer.strip() else None

    total = plan.thinking + plan.answer if think else plan.answer
    first, resume = {}, []
    for g in generate_iter(model, tokenizer, prompts, max_tokens=total, batch_size=batch_size,
                           stop=phase1_stop, progress=progress, desc="generate"):
        i = g.index
        first[i] = g
        text = text_of(g.tokens, g.text)
        if g.stop == "thinking_budget":
            resume.append(i)
            continue
        split = split_thinking(text, opened=opened[i] or None)
        inside = split.has_thinking and not split.closed
        t = close_at.get(i, len(g.tokens)) if split.has_thinking else 0
        split.thinking_tokens, split.answer_tokens = t, len(g.tokens) - t
        split.thinking_budget_hit = g.stop == "length" and inside
        split.answer_budget_hit = g.stop in ("answer_budget", "length") and not inside
        yield BudgetedGeneration(i, text, list(g.tokens), split, g.stop)
    if resume:
        close_ids = encode_plain(tokenizer, FORCE_CLOSE)
        heads = {i: list(first[i].tokens) + close_ids for i in resume}

        def phase2_stop(j, tokens, streamed):
            if loop_stop is not None and loop_stop(tokens):
                return "repetition"
            answer = text_of(tokens, streamed)
            return stop(resume[j], answer) if stop is not None and answer.strip() else None

        second = generate_iter(model, tokenizer, [prompts[i] + heads[i] for i in resume], max_tokens=plan.answer,
                               batch_size=batch_size, stop=phase2_stop, desc="answer")
        for g in second:
            i = resume[g.index]
            text = text_of(first[i].tokens, first[i].text) + FORCE_CLOSE + text_of(g.tokens, g.text)
            split = split_thinking(text, opened=opened[i] or None)
            split.thinking_tokens, split.answer_tokens = len(first[i].tokens), len(g.tokens)
            split.thinking_budget_hit, split.answer_budget_hit = True, g.stop == "length"
            yield BudgetedGeneration(i, text, heads[i] + list(g.tokens), split, g.stop)


def text_generate_fn(model, tokenizer):
    """A `GenerateFn` (prompt text, max_tokens, stop strings) ->
    Generation over `harness.runtime.generate.generate` (batch 1: exactly mlx-lm's greedy tokens).

    The prompt text is what `chat_prompt` returns: a chat-templated text already holds
    its special tokens (encoded without), a plain text gets the tokenizer's BOS (prompt.py's
    rule). Generation stops right after a stop string (the string kept in the text)."""
    from harness.runtime.generate import generate
    from harness.runtime.prompt import encode_prompt, has_chat_template

    templated = has_chat_template(tokenizer)

    def run(prompt: str, max_tokens: int, stop: tuple) -> "Generation":
        ids = encode_plain(tokenizer, prompt) if templated else encode_prompt(tokenizer, prompt)

        def hit(_i, _tokens, text):
            return "stop_string" if stop and any(s in text for s in stop) else None

        g = generate(model, tokenizer, [ids], max_tokens=max_tokens, batch_size=1, stop=hit if stop else None)[0]
        text = g.text
        if g.stop == "stop_string":
            text = text[:min(text.find(s) + len(s) for s in stop if s in text)]
        return Generation(text, len(g.tokens), g.finish_reason == "length")

    return run
