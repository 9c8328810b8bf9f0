"""Generation for the code suites (humaneval, mbpp), and their omlx-protocol run.

Split from codegen.py (the shared code-suite base re-exports these names): prompts
through harness.runtime.prompt, greedy generation through harness.runtime.generate
(`generate_completions`), thinking budgets and health flags through
harness.runtime.thinking / health (`generate_checked`), and `run_omlx_items`, the
omlx protocol's generate-then-grade loop (suites/omlx.py has its prompts and grader).
"""

import os
from typing import Callable, Iterator, List, Optional

from harness.errors import HarnessError


def wants_chat_template(option: str, tokenizer) -> bool:
    """option auto|on|off -> whether prompts go through the chat template."""
    has = bool(getattr(tokenizer, "has_chat_template", False) or getattr(tokenizer, "chat_template", None))
    if option == "on" and not has:
        raise HarnessError("chat_template=on but this tokenizer has no chat template; use chat_template=off")
    return option == "on" or (option == "auto" and has)


def encode_prompt(tokenizer, prompt, chat: bool, thinking: str = "auto") -> List[int]:
    """Token ids of a prompt (text, or chat messages) through harness.runtime.prompt;
    thinking on/off passes enable_thinking to the chat template (auto: its default)."""
    from harness.runtime.prompt import encode_prompt as encode

    if not chat and not isinstance(prompt, str):  # messages without a template: the plain user text
        prompt = "\n\n".join(m["content"] for m in prompt)
    enable = None if thinking == "auto" else thinking == "on"
    return encode(tokenizer, prompt, chat=chat, enable_thinking=enable if chat else None)


def generate_completions(
    model,
    tokenizer,
    prompts: List[str],
    max_tokens: int = 512,
    use_chat_template: bool = False,
    stop: Optional[Callable[[int, str], bool]] = None,
    batch_size: int = 8,
    progress: bool = False,
) -> List[str]:
    """Greedy completions through harness.runtime.generate (continuous batching, up
    to batch_size sequences at once; batch_size=1 is exactly mlx_lm.generate's greedy output).

    stop(i, text) is checked after every token of prompt i; once True the
    sequence ends (the text keeps what triggered it: extraction trims). EOS is
    never part of the text. Texts are `tokenizer.decode` of the tokens (what the
    code suites always graded)."""
    from harness.runtime.generate import generate_iter

    if not prompts:
        return []
    ids = [encode_prompt(tokenizer, p, use_chat_template) for p in prompts]
    callback = None if stop is None else (lambda i, tokens, _text: bool(stop(i, tokenizer.decode(tokens))))
    out = {g.index: tokenizer.decode(g.tokens)
           for g in generate_iter(model, tokenizer, ids, max_tokens=max_tokens, batch_size=batch_size,
                                  stop=callback, progress=progress)}
    return [out[i] for i in range(len(prompts))]


def generate_checked(ctx, opts, prompts: list, users: list, chat: bool,
                     stop: Optional[Callable[[int, str], bool]] = None) -> list:
    """[(BudgetedGeneration, per-item fields)] for a chunk: prompts (text or chat messages)
    through the chat template with opts.thinking, a thinking then an answer budget
    (harness.runtime.thinking.generate_budgeted), thinking split off, health flagged
    (harness.runtime.health) against the user text `users[i]`."""
    from harness.runtime import health, thinking

    ids = [encode_prompt(ctx.tokenizer, p, chat, opts.thinking) for p in prompts]
    gens = thinking.generate_budgeted(ctx.model, ctx.tokenizer, ids, plan=opts.plan, thinking=opts.thinking != "off",
                                      stop=stop, batch_size=opts.batch_size, decode=ctx.tokenizer.decode)
    out = []
    for g, user in zip(gens, users):
        flags = health.health_flags(g.split.answer, prompt=user, tokens=g.tokens, budget_hit=g.split.budget_hit)
        out.append((g, {**g.split.record(), "stop": g.stop, **flags}))
    return out


def omlx_runner(opts, levels: list):
    """omlx's Runner (script -> (passed, error)) over the sandbox with this run's limits;
    appends each run's isolation level to `levels`. omlx runs the tests in the program's
    own process (its protocol); the sandbox still isolates it from the machine."""
    from harness.runtime.sandbox import level_of, run_python

    def run(script: str) -> tuple:
        r = run_python(script, timeout=opts.timeout, memory_mb=opts.memory_mb)
        levels.append(level_of(r.isolation))
        if r.status == "timeout":
            return False, "Execution timed out"
        return r.passed, "" if r.passed else r.stderr_tail[-500:]

    return run


def run_omlx_items(ctx, items: list, opts, messages: Callable, evaluate: Callable,
                   strict_script: Callable, suite_name: str) -> Iterator[dict]:
    """The omlx protocol: omlx's chat prompt (`messages(item)`), greedy up to opts.max_tokens
    answer tokens with no early stop (as omlx), its grader `evaluate(answer, item, run)`
    (first passing candidate wins, lenient repairs included: "correct" is omlx's pass).
    "strict_correct": the program omlx calls strict passes (`strict_script(answer, item)`
    run when omlx passed only through a repair or before trying the strict one)."""
    from concurrent.futures import ThreadPoolExecutor

    from harness.runtime.thinking import raw_answer

    from tqdm import tqdm

    chat = wants_chat_template(opts.chat_template, ctx.tokenizer)
    workers = opts.workers or os.cpu_count() or 1
    bar = tqdm(total=len(items), desc=suite_name, unit="item", disable=not ctx.progress)
    for start in range(0, len(items), opts.batch_size):
        chunk = items[start : start + opts.batch_size]
        msgs = [messages(it) for it in chunk]
        users = ["\n".join(m["content"] for m in ms if m["role"] == "user") for ms in msgs]
        generated = generate_checked(ctx, opts, msgs, users, chat)

        def grade(pair):
            it, (g, _) = pair
            levels: list = []
            run = omlx_runner(opts, levels)
            answer = raw_answer(g.text, g.split)  # as omlx's server returns it (indentation kept)
            res = evaluate(answer, it, run)
            strict = bool(res["passed"] and not res["lenient"])
            if res["passed"] and res["lenient"] and strict_script is not None:
                strict, _ = run(strict_script(answer, it))
            return res, bool(strict), levels

        with ThreadPoolExecutor(max_workers=workers) as pool:
            graded = list(pool.map(grade, zip(chunk, generated)))
        for it, (g, fields), (res, strict, levels) in zip(chunk, generated, graded):
            level = sorted(set(levels))
            record = {
                "id": it["id"],
                "completion": g.text,
                "code": res["code"],
                "protocol": "omlx",
                "pass_mode": res["pass_mode"],
                "lenient": bool(res["passed"] and res["lenient"]),
                "failure_type": res["failure_type"],
                "prompt_format": "chat" if chat else "raw",
                "status": "passed" if res["passed"] else ("timeout" if res["failure_type"] == "timeout" else "failed"),
                "correct": bool(res["passed"]),
                "strict_correct": strict,
                "isolation": level[0] if len(level) == 1 else "mixed:" + ",".join(level) if level else "unknown",
                **fields,
            }
            if not res["passed"]:
                record["error"] = (res["error"] or res["failure_type"])[-300:]
            bar.update(1)
            yield record
    bar.close()
