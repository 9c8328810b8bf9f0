"""Generation health: per-output flags that catch degenerate free text, and their rates.

A broken quant can keep its multiple-choice score while its free text degenerates. Every
generative suite flags each output (`health_flags`) and stores the flags on the record as
`health_<flag>` booleans; `summarize_health` turns them into rates with Wilson CIs and
`paired_health` compares them with the reference run item by item (exact McNemar on the
discordant items, as for "correct"). Flags (each a precise rule):

* `budget_hit`: generation stopped on its token limit (thinking or answer budget), given by
  the caller (`Generation.hit_limit` / `ThinkingSplit.budget_hit`).
* `loop`: the output ends in a repetition loop. With tokens t[0..n) (the model's token ids
  when given, else `text_units(text)`: words, punctuation marks and single CJK characters),
  the periodic tail for period p is the longest suffix in which t[i] == t[i - p] for every
  position after its first p; it is a loop when, for some p <= max_period, that suffix spans
  at least max(min_repeats * p, min_span) units, i.e. a unit of p tokens repeated at least
  min_repeats times and covering at least min_span tokens (defaults 3 and 16, p <= 64).
  "A A A ... A" (p=1), "I think so. I think so. ..." and a repeated code line all fire;
  ordinary prose, whose tails are not periodic beyond a few tokens, does not.
* `empty`: the answer (thinking removed) has no non-whitespace character.
* `bad_unicode`: U+FFFD (what detokenizers print for invalid UTF-8 bytes) or a lone surrogate in
  the answer, or `raw` bytes that are not valid UTF-8; not when the prompt itself has U+FFFD.
* `language_switch`: the answer's dominant script (`dominant_script`, letters only, Han and
  kana counted together as "CJK") differs from the expected one (the caller's, else the
  prompt's dominant script), with at least min_letters letters in the answer.
* `any`: at least one of the above ("unhealthy").
"""

import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

from harness.stats import mcnemar_exact, wilson_ci

FLAGS = ("budget_hit", "loop", "empty", "bad_unicode", "language_switch")
ALL_FLAGS = FLAGS + ("any",)
PREFIX = "health_"

# Declarations for the suites' MetricSpec (harness.suite is a later stage than runtime, so the
# suite builds them: `[MetricSpec(**d) for d in health.METRIC_DECLS]`). Rates: lower is better;
# max_drop 0.05 = the gate fails a recipe whose rate rises by more than 5 points (significantly).
METRIC_DECLS = tuple(
    {"name": f"{PREFIX}{flag}_rate", "higher_is_better": False, "kind": "proportion",
     "max_drop": 0.05 if flag != "language_switch" else None, "item_key": f"{PREFIX}{flag}",
     "description": desc}
    for flag, desc in (
        ("budget_hit", "outputs that ran into the token budget"),
        ("loop", "outputs ending in a repetition loop (a repeated n-gram tail)"),
        ("empty", "empty answers (after removing thinking)"),
        ("bad_unicode", "answers with U+FFFD / invalid UTF-8"),
        ("language_switch", "answers in another script than expected"),
        ("any", "outputs with at least one health flag"),
    )
)


# Everything `generation_summary` adds to a summary (the rates above plus bookkeeping).
GENERATION_DECLS = METRIC_DECLS + (
    {"name": PREFIX + "n", "higher_is_better": None, "kind": "count", "description": "outputs health-checked"},
    {"name": "thinking_tokens_mean", "higher_is_better": None, "kind": "info",
     "description": "tokens spent thinking per item (mean)"},
    {"name": "answer_tokens_mean", "higher_is_better": None, "kind": "info",
     "description": "answer tokens per item (mean, thinking excluded)"},
    {"name": "thinking_items", "higher_is_better": None, "kind": "count",
     "description": "items where the model thought (a think block)"},
)


@dataclass(frozen=True)
class HealthConfig:
    min_repeats: int = 3  # a loop unit repeated at least this many times ...
    min_span: int = 16  # ... covering at least this many tokens
    max_period: int = 64  # longest loop unit looked for (tokens)
    min_letters: int = 8  # language_switch needs at least this many letters in the answer


DEFAULT = HealthConfig()

_UNIT = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]|\w+|[^\w\s]")


def text_units(text: str) -> list:
    """Words, single punctuation marks, and single CJK/Hangul characters (they have no spaces)."""
    return _UNIT.findall(text)


@dataclass(frozen=True)
class Loop:
    period: int  # tokens in the repeated unit
    span: int  # tokens of the periodic tail

    @property
    def repeats(self) -> float:
        return self.span / self.period


def find_loop(tokens: Sequence, cfg: HealthConfig = DEFAULT) -> Optional[Loop]:
    """The repetition loop the sequence ends in (smallest qualifying period), or None."""
    n = len(tokens)
    for p in range(1, min(cfg.max_period, n // cfg.min_repeats) + 1):
        run = 0  # positions i (from the end) with tokens[i] == tokens[i - p]
        i = n - 1
        while i >= p and tokens[i] == tokens[i - p]:
            run += 1
            i -= 1
        span = run + p
        if span >= max(cfg.min_repeats * p, cfg.min_span):
            return Loop(p, span)
    return None


def has_bad_unicode(text: str, raw: Optional[bytes] = None) -> bool:
    if "\ufffd" in text or any(0xD800 <= ord(ch) <= 0xDFFF for ch in text):
        return True
    if raw is not None:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return True
    return False


def char_script(ch: str) -> Optional[str]:
    """The script of a letter from its Unicode name ("LATIN SMALL LETTER A" -> "LATIN");
    Han, hiragana and katakana -> "CJK"; None for non-letters."""
    if not unicodedata.category(ch).startswith("L"):
        return None
    name = unicodedata.name(ch, "")
    if not name:
        return None
    word = name.split()[0]
    if word in ("CJK", "HIRAGANA", "KATAKANA", "IDEOGRAPHIC") or "KATAKANA" in name:
        return "CJK"
    if word == "HALFWIDTH" or word == "FULLWIDTH":
        return "LATIN" if "LATIN" in name else word
    return word


def script_counts(text: str) -> dict:
    counts: dict = {}
    for ch in text:
        s = char_script(ch)
        if s:
            counts[s] = counts.get(s, 0) + 1
    return counts


def dominant_script(text: str) -> Optional[str]:
    counts = script_counts(text)
    return max(sorted(counts), key=counts.get) if counts else None


def health_flags(answer: str, *, prompt: Optional[str] = None, tokens: Optional[Sequence] = None,
                 budget_hit: bool = False, expected_script: Optional[str] = None,
                 raw: Optional[bytes] = None, cfg: HealthConfig = DEFAULT) -> dict:
    """{"health_<flag>": bool for every flag, "health_any": bool, "health_loop_period": int|None}.

    answer: the text graded (thinking removed); tokens: the generated token ids to look for a
    loop in (default: text_units(answer); pass the whole generation's ids to catch a loop that
    ran inside the thinking too); expected_script: e.g. "LATIN", "CJK", "CYRILLIC" (default:
    the prompt's dominant script)."""
    loop = find_loop(list(tokens) if tokens is not None else text_units(answer), cfg)
    flags = {"budget_hit": bool(budget_hit), "loop": loop is not None, "empty": not answer.strip()}
    flags["bad_unicode"] = has_bad_unicode(answer, raw) and not (prompt and "\ufffd" in prompt)
    expected = expected_script or (dominant_script(prompt) if prompt else None)
    counts = script_counts(answer)
    letters = sum(counts.values())
    flags["language_switch"] = bool(expected and letters >= cfg.min_letters
                                    and counts.get(expected, 0) * 2 < letters
                                    and dominant_script(answer) != expected)
    out = {PREFIX + k: v for k, v in flags.items()}
    out[PREFIX + "any"] = any(flags.values())
    out[PREFIX + "loop_period"] = loop.period if loop else None
    return out


# ---------------------------------------------------------------- summaries


def _flag(record: dict, flag: str) -> Optional[bool]:
    value = record.get(PREFIX + flag)
    return None if value is None else bool(value)


def summarize_health(records: Iterable[dict]) -> dict:
    """{"health_<flag>_rate": rate, "health_<flag>_rate_ci95": [lo, hi], "health_n": n} over
    records that carry health flags (Wilson 95 % intervals)."""
    records = [r for r in records if PREFIX + "any" in r]
    n = len(records)
    out = {PREFIX + "n": n}
    for flag in ALL_FLAGS:
        k = sum(bool(_flag(r, flag)) for r in records)
        out[f"{PREFIX}{flag}_rate"] = k / n if n else 0.0
        out[f"{PREFIX}{flag}_rate_ci95"] = list(wilson_ci(k, n))
    return out


def generation_summary(records: Iterable[dict]) -> dict:
    """summarize_health plus mean thinking / answer tokens and the items that thought, over
    the records that carry health flags ({} when none do: results of older versions)."""
    flagged = [r for r in records if PREFIX + "any" in r]
    if not flagged:
        return {}
    out = summarize_health(flagged)
    for key in ("thinking_tokens", "answer_tokens"):
        values = [r.get(key) or 0 for r in flagged]
        out[f"{key}_mean"] = sum(values) / len(values)
    out["thinking_items"] = sum(bool(r.get("has_thinking")) for r in flagged)
    return out


def paired_health(reference: Iterable[dict], candidate: Iterable[dict], alpha: float = 0.05) -> dict:
    """Per flag, on the items both runs flagged-or-not (paired on "id"): rates, the discordant
    counts (new = flagged only in the candidate, gone = only in the reference), the exact
    McNemar p-value, and "worse": the candidate's rate is higher with p < alpha."""
    ref = {r["id"]: r for r in reference if "id" in r and PREFIX + "any" in r}
    cand = {r["id"]: r for r in candidate if "id" in r and PREFIX + "any" in r}
    ids = sorted(set(ref) & set(cand))
    out = {"n_paired": len(ids)}
    for flag in ALL_FLAGS:
        a = [bool(_flag(ref[i], flag)) for i in ids]
        b = [bool(_flag(cand[i], flag)) for i in ids]
        new = sum(1 for x, y in zip(a, b) if y and not x)
        gone = sum(1 for x, y in zip(a, b) if x and not y)
        p = mcnemar_exact(new, gone)
        n = len(ids)
        out[flag] = {"reference_rate": sum(a) / n if n else 0.0, "rate": sum(b) / n if n else 0.0,
                     "new": new, "gone": gone, "p": p, "worse": bool(new > gone and p < alpha)}
    return out


def format_health(summary: dict, paired: Optional[dict] = None) -> str:
    """One line: "health: loop 12.0% [8.1, 17.3] (ref 1.0%, p=0.0001) · budget_hit ..."."""
    parts = []
    for flag in ALL_FLAGS:
        rate = summary.get(f"{PREFIX}{flag}_rate")
        if rate is None:
            continue
        lo, hi = summary.get(f"{PREFIX}{flag}_rate_ci95", [math.nan, math.nan])
        s = f"{flag} {100 * rate:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"
        if paired and flag in paired:
            d = paired[flag]
            s += f" (ref {100 * d['reference_rate']:.1f}%, p={d['p']:.2g}{', WORSE' if d['worse'] else ''})"
        parts.append(s)
    return "health: " + " · ".join(parts)


# ---------------------------------------------------------------- one call for generative suites


def checked_generation(generate, tokenizer, messages: list, *, thinking_mode: str = "auto", plan=None,
                       expected_script: Optional[str] = None, cfg: HealthConfig = DEFAULT, **template_kwargs) -> dict:
    """Chat-template `messages`, generate under a thinking then an answer budget, split the
    thinking off, flag health. Returns {"prompt", "text" (all generated), "answer" (to grade),
    "thinking", "record" (per-item fields: thinking/answer tokens, budget flags, health_*)}.

    generate: a harness.runtime.thinking GenerateFn (e.g. mlx_generate_fn(model, tokenizer));
    plan: a BudgetPlan (default thinking.DEFAULT_PLAN)."""
    from harness.runtime import thinking as th

    prompt = th.chat_prompt(tokenizer, messages, thinking_mode, **template_kwargs)
    text, split = th.generate_two_phase(generate, prompt, plan or th.DEFAULT_PLAN, thinking=thinking_mode != "off")
    user = "\n".join(m["content"] for m in messages if m.get("role") == "user")
    flags = health_flags(split.answer, prompt=user, tokens=th.encode_plain(tokenizer, text),
                         budget_hit=split.budget_hit, expected_script=expected_script, cfg=cfg)
    return {"prompt": prompt, "text": text, "answer": split.answer, "thinking": split.thinking,
            "record": {**split.record(), **flags}}
