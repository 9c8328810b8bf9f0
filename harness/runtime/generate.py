"""The one greedy generation helper every generative suite uses.

    from harness.runtime.prompt import encode_prompt, wants_chat
    from harness.runtime.generate import generate

    ids = [encode_prompt(tok, p, chat=wants_chat("auto", tok)) for p in prompts]
    for g in generate(model, tok, ids, max_tokens=256, batch_size=8):
        g.tokens, g.text, g.finish_reason   # per prompt, in prompt order

* Greedy (argmax), stops at the tokenizer's EOS ids (EOS is never part of tokens or
  text), at max_tokens, or when the caller's `stop(index, tokens, text)` returns a
  truthy label (e.g. "final_answer"); finish_reason is "stop" or "length", `stop`
  says which: "eos", "length" or the callback's label.
* batch_size 1 runs mlx_lm.stream_generate one prompt at a time: exactly
  mlx_lm.generate's greedy tokens. Larger sizes keep that many sequences in flight
  with mlx-lm's continuous BatchGenerator (left-padded KV caches). Padding changes
  float summation order, so in rare near-ties a batched token can differ.
* text is the tokenizer's *streaming* detokenizer over the generated ids (what a
  user of mlx_lm.generate sees): bytes that are not valid UTF-8 show up as U+FFFD
  instead of being silently repaired, and a character cut off by max_tokens is
  flushed as U+FFFD by `finalize()` too (see `suites/unicode.py` for telling the two apart).
* `generate_iter` yields each Generation as soon as it finishes (for suites that
  append records as they go, so a killed run resumes).
"""

from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence, Union

StopFn = Callable[[int, list, str], Union[str, bool, None]]


@dataclass
class Generation:
    index: int  # position of the prompt in the call
    tokens: list  # generated token ids (EOS excluded)
    text: str  # streaming-detokenized text of `tokens`
    finish_reason: str  # "stop" | "length"
    stop: str  # "eos" | "length" | the label the stop callback returned
    prompt_tokens: int


def _wrapped(tokenizer):
    from mlx_lm.tokenizer_utils import TokenizerWrapper

    return tokenizer if isinstance(tokenizer, TokenizerWrapper) else TokenizerWrapper(tokenizer)


class _Stream:
    """One sequence's tokens and streaming detokenizer."""

    def __init__(self, tokenizer):
        self.tokens: list = []
        self.detok = tokenizer.detokenizer  # a fresh copy per sequence

    def add(self, token: int):
        self.tokens.append(token)
        self.detok.add_token(token)

    def text(self) -> str:
        return self.detok.text

    def finish(self, index: int, finish_reason: str, stop: str, prompt_tokens: int) -> Generation:
        self.detok.finalize()
        return Generation(index, self.tokens, self.detok.text, finish_reason, stop, prompt_tokens)


def _label(result) -> Optional[str]:
    if not result:
        return None
    return result if isinstance(result, str) else "stop"


def _max_tokens(max_tokens, n: int) -> list:
    values = list(max_tokens) if isinstance(max_tokens, (list, tuple)) else [max_tokens] * n
    if len(values) != n or any(int(m) < 1 for m in values):
        raise ValueError("max_tokens must be >= 1, one value or one per prompt")
    return [int(m) for m in values]


def _one_at_a_time(model, tokenizer, prompts, limits, stop) -> Iterator[Generation]:
    import mlx.core as mx
    from mlx_lm.generate import stream_generate

    for i, prompt in enumerate(prompts):
        s = _Stream(tokenizer)
        finish, label = "length", "length"
        for r in stream_generate(model, tokenizer, mx.array(prompt), max_tokens=limits[i]):
            if r.finish_reason == "stop":  # EOS: its token is not part of the answer
                finish, label = "stop", "eos"
                break
            s.add(r.token)
            reason = _label(stop(i, s.tokens, s.text())) if stop is not None else None
            if reason:
                finish, label = "stop", reason
                break
            if r.finish_reason == "length":
                break
        yield s.finish(i, finish, label, len(prompt))


def _batched(model, tokenizer, prompts, limits, stop, batch_size) -> Iterator[Generation]:
    from mlx_lm.generate import BatchGenerator

    gen = BatchGenerator(model, stop_tokens=[[t] for t in tokenizer.eos_token_ids],
                         completion_batch_size=batch_size, prefill_batch_size=min(batch_size, 8))
    try:
        uids = gen.insert([list(p) for p in prompts], limits)
        index = {uid: i for i, uid in enumerate(uids)}
        streams = {uid: _Stream(tokenizer) for uid in uids}
        while streams and (responses := gen.next_generated()):
            for r in responses:
                s = streams.get(r.uid)
                if s is None:
                    continue  # removed by us this step
                i = index[r.uid]
                if r.finish_reason == "stop":  # EOS
                    yield streams.pop(r.uid).finish(i, "stop", "eos", len(prompts[i]))
                    continue
                s.add(r.token)
                reason = _label(stop(i, s.tokens, s.text())) if stop is not None else None
                if reason:
                    if r.finish_reason is None:
                        gen.remove([r.uid])
                    yield streams.pop(r.uid).finish(i, "stop", reason, len(prompts[i]))
                elif r.finish_reason is not None:  # "length"
                    yield streams.pop(r.uid).finish(i, "length", "length", len(prompts[i]))
    finally:
        gen.close()


def generate_iter(model, tokenizer, prompts: Sequence[List[int]], *, max_tokens: Union[int, Sequence[int]] = 256,
                  batch_size: int = 8, stop: Optional[StopFn] = None, progress: bool = False,
                  desc: str = "generate") -> Iterator[Generation]:
    """Greedy generations for token-id prompts, yielded as each finishes (any order)."""
    from tqdm import tqdm

    prompts = [list(p) for p in prompts]
    if not prompts:
        return
    if any(not p for p in prompts):
        raise ValueError("every prompt needs at least one token")
    limits = _max_tokens(max_tokens, len(prompts))
    tokenizer = _wrapped(tokenizer)
    if batch_size <= 1:
        it = _one_at_a_time(model, tokenizer, prompts, limits, stop)
    else:
        it = _batched(model, tokenizer, prompts, limits, stop, batch_size)
    with tqdm(total=len(prompts), desc=desc, disable=not progress) as bar:
        for g in it:
            bar.update(1)
            yield g


def generate(model, tokenizer, prompts: Sequence[List[int]], **kwargs) -> List[Generation]:
    """Like `generate_iter`, collected in prompt order."""
    out = {g.index: g for g in generate_iter(model, tokenizer, prompts, **kwargs)}
    return [out[i] for i in range(len(out))]
