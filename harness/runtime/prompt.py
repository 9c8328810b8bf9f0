"""The one prompt encoder every generative suite uses: text (or chat messages) -> token ids.

Rules, in one place so suites cannot drift apart:

* Chat: when the suite asks for chat and the tokenizer has a chat template, the
  messages are rendered with `add_generation_prompt=True` and the rendered text is
  encoded WITHOUT special tokens (the template writes its own BOS if it wants one).
  `enable_thinking` is passed through to the template only when given (None keeps
  mlx-lm's default: on for tokenizers with thinking tokens).
* Raw text: encoded with the tokenizer's special tokens (BOS) unless the text already
  starts with the BOS string (mlx-lm's stream_generate rule).
* BOS is never doubled: a leading [BOS, BOS] (a template that writes BOS into a
  tokenizer that also adds it) loses one.
"""

from typing import Optional, Union

from harness.errors import HarnessError

CHAT_CHOICES = ("auto", "on", "off")


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "has_chat_template", False) or getattr(tokenizer, "chat_template", None))


def wants_chat(option: Union[str, bool, None], tokenizer) -> bool:
    """A suite's chat option (auto|on|off, or a bool) -> whether prompts use the chat template.

    auto: the template when the tokenizer has one; on: required (an error without one)."""
    if isinstance(option, bool):
        option = "on" if option else "off"
    option = "auto" if option is None else str(option).lower()
    if option not in CHAT_CHOICES:
        raise HarnessError(f"chat option {option!r} is not one of {', '.join(CHAT_CHOICES)}")
    has = has_chat_template(tokenizer)
    if option == "on" and not has:
        raise HarnessError("chat template requested (on) but this tokenizer has none; use auto or off")
    return option == "on" or (option == "auto" and has)


def _bos_id(tokenizer) -> Optional[int]:
    bos = getattr(tokenizer, "bos_token_id", None)
    return bos if isinstance(bos, int) else None


def _dedupe_bos(tokenizer, ids: list) -> list:
    bos = _bos_id(tokenizer)
    if bos is not None and len(ids) >= 2 and ids[0] == bos and ids[1] == bos:
        return ids[1:]
    return ids


def encode_prompt(tokenizer, prompt: Union[str, list], *, chat: bool = False, system: Optional[str] = None,
                  enable_thinking: Optional[bool] = None) -> list:
    """Token ids for one prompt.

    prompt: the user text, or a full list of chat messages ({"role", "content"}).
    chat: render through the chat template (callers decide with `wants_chat`); a
      message list needs chat=True.
    system: an optional system message put first (chat only).
    enable_thinking: passed to the chat template when not None (thinking models).
    """
    if chat:
        if isinstance(prompt, str):
            messages = [{"role": "user", "content": prompt}]
        else:
            messages = list(prompt)
        if system is not None:
            messages = [{"role": "system", "content": system}, *messages]
        kwargs = {} if enable_thinking is None else {"enable_thinking": bool(enable_thinking)}
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **kwargs)
        ids = list(tokenizer.encode(text, add_special_tokens=False))
    else:
        if not isinstance(prompt, str):
            raise HarnessError("a list of chat messages needs chat=True (the tokenizer's chat template)")
        bos = getattr(tokenizer, "bos_token", None)
        ids = list(tokenizer.encode(prompt, add_special_tokens=bos is None or not prompt.startswith(bos)))
    return _dedupe_bos(tokenizer, ids)
