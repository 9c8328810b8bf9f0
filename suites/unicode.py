"""unicode: can the quantized model still reproduce emoji, CJK, RTL and math text?

Each item asks the model to repeat a target string (ZWJ emoji, skin tones,
flags, keycaps, CJK, Korean, kana, combining marks in NFC and NFD, RTL text,
math symbols) and measures three things, so a failure can be blamed on the
right component:

1. Greedy generation (harness.runtime.generate, one prompt at a time: exactly
   mlx-lm's `stream_generate`): U+FFFD characters in
   the streamed text, invalid UTF-8 sequences in the raw bytes the model
   emitted, and whether the target appears verbatim (exact echo). Failures get
   a before/after excerpt of the first region that differs.
2. Detokenizer check on the target alone (no model): encode -> decode gives the
   target back, and mlx-lm's streaming detokenizer over the same tokens gives
   exactly the full decode. A failure here is the tokenizer's fault.
3. Teacher-forced log-probability of the target tokens after the prompt, under
   the model and under the float reference (same token ids, so only the weights
   differ): drop in nats per character = (ref_lp - model_lp) / len(target).
   It is exactly 0 when the model is the reference.

Generation health (harness.runtime.health) on every output: budget hit, repetition loop
(over the generated token ids), empty answer, U+FFFD / invalid UTF-8 (the raw bytes, a tail
cut by the budget excepted), and language switch against the item's expected script (the
target's dominant script: CJK for cjk/kana, HANGUL, ARABIC/HEBREW for rtl; none for emoji and
math); stored per item as `health_*` and summarized as `health_*_rate` with Wilson CIs.

Thinking models: `--opt thinking=auto|on|off` (enable_thinking for the chat template; auto:
mlx-lm's default). A model that opens `<think>` (or whose template opens it) gets
`thinking_budget` tokens to think (default 2048; the block is closed for it when they run
out), then its own echo budget for the answer; only the answer is graded. Per item:
thinking/answer tokens and whether either budget was hit.
"""

import difflib
import json
import statistics
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import mlx.core as mx
from mlx_lm.tokenizer_utils import (
    BPEStreamingDetokenizer,
    SPMStreamingDetokenizer,
    _byte_decoder,  # GPT-2 byte<->char table, the one the BPE detokenizer uses
)
from tqdm import tqdm

from harness.cache import atomic_write_text, sha256_bytes, sha256_file
from harness.errors import HarnessError
from harness.options import option
from harness.runtime import health, thinking
from harness.runtime.generate import generate
from harness.runtime.prompt import encode_prompt, wants_chat
from harness.stats import wilson_ci
from harness.suite import MetricSpec, Suite

DATA_FILE = Path(__file__).parent / "data" / "unicode_v1.json"
CATEGORIES = (
    "emoji_zwj",
    "skin_tone",
    "flags",
    "keycaps",
    "cjk",
    "korean",
    "kana",
    "combining",
    "rtl",
    "math",
)
SLACK_TOKENS = 8  # generation budget = 2 x target tokens + slack (room for "Sure: ")
EXCERPT_CONTEXT = 6  # characters of agreement shown around a difference
EXCERPT_WIDTH = 40  # longest excerpt kept in a record
REF_CACHE_VERSION = 1  # reference log-probs on disk: bump only when the prompts or targets change


def load_items(path: Path = DATA_FILE) -> tuple[str, list[dict]]:
    """(prompt_template, items) from the data file, validated."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise HarnessError(f"cannot read unicode data {path} ({e}); reinstall the harness package")
    template = doc.get("prompt_template", "")
    if "{target}" not in template:
        raise HarnessError(f"{path}: prompt_template must contain {{target}}; fix the data file")
    items, seen = doc.get("items", []), set()
    for it in items:
        if not {"id", "category", "target"} <= it.keys() or it["category"] not in CATEGORIES:
            raise HarnessError(f"{path}: bad item {it!r}; each needs id, category in {CATEGORIES}, target")
        if it["id"] in seen:
            raise HarnessError(f"{path}: duplicate item id {it['id']!r}; make ids unique")
        seen.add(it["id"])
    return template, items


# --- counting and excerpts -------------------------------------------------


def count_fffd(text: str) -> int:
    """U+FFFD REPLACEMENT CHARACTERs: what a user sees where bytes were broken."""
    return text.count("\ufffd")


def count_invalid_utf8(raw: bytes) -> int:
    """Number of invalid UTF-8 sequences, counted the way errors="replace" would."""
    count, pos = 0, 0
    while pos < len(raw):
        try:
            raw[pos:].decode("utf-8")
            break
        except UnicodeDecodeError as e:
            count += 1
            pos += e.end
    return count


def incomplete_tail(raw: bytes) -> int:
    """Length of an unfinished (but so far valid) multi-byte character at the end.

    Generation cut off by the token budget can stop mid-character; that is not
    the model corrupting text, so callers drop these bytes.
    """
    for n in range(1, min(3, len(raw)) + 1):
        if raw[-n] & 0xC0 != 0x80:  # the last byte that is not a continuation byte
            try:
                raw[-n:].decode("utf-8")
            except UnicodeDecodeError as e:
                if e.start == 0 and e.reason == "unexpected end of data":
                    return n
            return 0
    return 0


def token_bytes(tokenizer, ids: list[int]) -> Optional[bytes]:
    """The raw bytes the tokens stand for, before any UTF-8 decoding.

    Known for byte-level BPE (GPT-2 byte table) and SentencePiece byte-fallback
    tokenizers, read from mlx-lm's own detokenizer token map; None otherwise.
    """
    detok = tokenizer.detokenizer
    if isinstance(detok, BPEStreamingDetokenizer):
        table = _byte_decoder()
        out = bytearray()
        for t in ids:
            piece = detok.tokenmap[t] if t < len(detok.tokenmap) else ""
            for c in piece:
                b = table.get(c)
                out += bytes([b]) if b is not None else c.encode("utf-8")
        return bytes(out)
    if isinstance(detok, SPMStreamingDetokenizer):
        return b"".join(detok.tokenmap[t] for t in ids).replace(detok._sep, b" ")
    return None


def escape_invisible(text: str) -> str:
    """Show zero-width and combining characters as \\u{XXXX} so excerpts are readable."""
    hidden = ("Mn", "Me", "Cf", "Cc", "Co", "Cs", "Cn", "Zl", "Zp")
    return "".join(
        f"\\u{{{ord(c):04X}}}" if unicodedata.category(c) in hidden else c for c in text
    )


def diff_excerpt(
    before: str, after: str, context: int = EXCERPT_CONTEXT, width: int = EXCERPT_WIDTH
) -> Optional[dict]:
    """The first region where `after` fails to reproduce `before`, with context.

    None when `before` occurs verbatim in `after`. Text the model adds around
    the echo ("Sure! ...") is not a difference; text inside it is.
    """
    if before in after:
        return None
    matcher = difflib.SequenceMatcher(None, before, after, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal" or (tag == "insert" and i1 in (0, len(before))):
            continue
        break
    else:  # unreachable when before is not in after; keep a sane answer anyway
        i1, i2, j1, j2 = 0, len(before), 0, len(after)
    b = before[max(i1 - context, 0) : i2 + context][:width]
    a = after[max(j1 - context, 0) : j2 + context][:width]
    return {"at": i1, "before": b, "after": a}


# --- the three measurements ------------------------------------------------


def build_prompt_ids(tokenizer, template: str, target: str, use_chat: bool,
                     enable_thinking: Optional[bool] = None) -> list[int]:
    """Token ids of the echo prompt; the target follows them directly.
    use_chat: the chat template when the tokenizer has one (else raw text and a newline).
    enable_thinking: passed to the chat template when not None (thinking=on|off)."""
    text = template.replace("{target}", target)
    if wants_chat("auto" if use_chat else "off", tokenizer):
        return encode_prompt(tokenizer, text, chat=True, enable_thinking=enable_thinking)
    return encode_prompt(tokenizer, text + "\n", chat=False)


def detokenizer_check(tokenizer, text: str) -> dict:
    """encode -> decode round trip, and streaming decode == full decode."""
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    decoded = tokenizer.decode(ids)
    detok = tokenizer.detokenizer
    detok.reset()
    segments = []
    for t in ids:
        detok.add_token(t)
        segments.append(detok.last_segment)
    detok.finalize()
    segments.append(detok.last_segment)
    streamed = "".join(segments)
    return {
        "ids": ids,
        "roundtrip": decoded == text,
        "streaming": streamed == decoded,
        "decoded": decoded,
        "streamed": streamed,
    }


def target_logprob(model, prompt_ids: list[int], target_ids: list[int]) -> float:
    """Teacher-forced log P(target tokens | prompt) in nats, computed in fp32."""
    ids = mx.array([prompt_ids + target_ids])
    logits = model(ids[:, :-1])[0, len(prompt_ids) - 1 :].astype(mx.float32)
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    picked = mx.take_along_axis(logprobs, mx.array(target_ids)[:, None], axis=-1)
    return picked.sum().item()


def generate_echo(model, tokenizer, prompt_ids: list[int], max_tokens: int, stop=None) -> dict:
    """Greedy generation; the streamed text plus the raw bytes behind it (stop: generate's callback)."""
    gen = generate(model, tokenizer, [prompt_ids], max_tokens=max_tokens, batch_size=1, stop=stop)[0]
    output, tokens, finish = gen.text, gen.tokens, gen.finish_reason
    raw = token_bytes(tokenizer, tokens)
    truncated = 0
    if finish == "length" and raw is not None:
        truncated = incomplete_tail(raw)
        if truncated:
            raw = raw[:-truncated]
            # The detokenizer flushed the cut character as one U+FFFD; it is not corruption.
            output = output[:-1] if output.endswith("\ufffd") else output
    return {"output": output, "tokens": tokens, "finish_reason": finish, "stop": gen.stop, "raw": raw,
            "truncated": truncated}


def _stop_at(tag: str):
    return lambda _i, _tokens, text: "tag" if tag in text else None


def generate_thinking_echo(model, tokenizer, prompt_ids: list[int], max_tokens: int, thinking_budget: int,
                           allow_thinking: bool = True) -> dict:
    """generate_echo for thinking models: the answer budget first (stopping if the model opens
    <think>); once thinking, `thinking_budget` tokens up to </think> (closed for the model when
    they run out), then `max_tokens` for the answer. Returns generate_echo's fields for the
    answer phase plus "split" (thinking.ThinkingSplit with token counts and budget flags),
    "all_tokens" (every generated id, for the loop check) and "answer" (the text graded).
    A model that never opens <think> gets exactly generate_echo's single generation."""
    opened = thinking.template_opens_thinking(tokenizer.decode(prompt_ids[-16:]))
    think_ids: list = []
    if not opened:
        stop = _stop_at(thinking.OPEN) if allow_thinking and thinking_budget > 0 else None
        echo = generate_echo(model, tokenizer, prompt_ids, max_tokens, stop=stop)
        if echo["stop"] != "tag":  # answered directly (or thinking off): one phase, as before
            split = thinking.split_thinking(echo["output"], opened=False)
            n, limit = len(echo["tokens"]), echo["finish_reason"] == "length"
            split.thinking_tokens, split.answer_tokens = (n, 0) if split.has_thinking else (0, n)
            split.thinking_budget_hit, split.answer_budget_hit = limit and not split.closed, limit and split.closed
            return {**echo, "split": split, "all_tokens": echo["tokens"],
                    "answer": split.answer if split.has_thinking else echo["output"]}
        think_ids = list(echo["tokens"])  # up to and including <think>
    g = generate(model, tokenizer, [list(prompt_ids) + think_ids], max_tokens=max(thinking_budget, 1),
                 batch_size=1, stop=_stop_at(thinking.CLOSE))[0]
    think_ids += g.tokens
    generated = list(think_ids)
    thinking_hit = g.stop == "length"
    if g.stop == "eos":  # ended inside the thinking: no answer
        echo = {"output": "", "tokens": [], "finish_reason": "stop", "stop": "eos", "raw": b"", "truncated": 0}
    else:
        if thinking_hit:  # close the block for the model; these tokens are not counted
            think_ids += thinking.encode_plain(tokenizer, thinking.FORCE_CLOSE)
        echo = generate_echo(model, tokenizer, list(prompt_ids) + think_ids, max_tokens)
    split = thinking.ThinkingSplit(
        thinking=tokenizer.decode(generated).replace(thinking.OPEN, "").replace(thinking.CLOSE, "").strip(),
        answer=echo["output"].strip(), has_thinking=True, closed=g.stop != "eos",
        thinking_tokens=len(generated), answer_tokens=len(echo["tokens"]), thinking_budget_hit=thinking_hit,
        answer_budget_hit=echo["finish_reason"] == "length")
    return {**echo, "split": split, "all_tokens": generated + echo["tokens"], "answer": echo["output"]}


def expected_script(target: str) -> Optional[str]:
    """The script an echo of the target is in (None for emoji, math: no letters)."""
    return health.dominant_script(target)


def score_output(target: str, output: str, raw: Optional[bytes]) -> dict:
    """Corruption counts, echo checks and the excerpt for one generated output."""
    fffd = count_fffd(output)
    invalid = count_invalid_utf8(raw) if raw is not None else None
    stripped = output.strip()
    exact = target in stripped
    normalized = unicodedata.normalize("NFC", target) in unicodedata.normalize("NFC", stripped)
    excerpt = diff_excerpt(target, stripped)
    if excerpt is None and fffd:
        at = stripped.find("\ufffd")
        excerpt = {"at": None, "before": "", "after": stripped[max(at - EXCERPT_CONTEXT, 0) : at + EXCERPT_CONTEXT]}
    return {
        "fffd_count": fffd,
        "invalid_utf8_count": invalid,
        "exact_echo": exact,
        "normalized_echo": normalized,
        "corrupted": (not exact) or fffd > 0 or bool(invalid),
        "excerpt": excerpt,
    }


# --- the suite -------------------------------------------------------------


@dataclass(frozen=True)
class UnicodeOptions:
    """--opt keys of the unicode suite (parsed by harness.options)."""

    chat: str = option("auto", help="echo prompt through the chat template when the tokenizer has one "
                       "(auto/1/true) or raw (0/false)", choices=("auto", "1", "0", "true", "false"))
    slack: int = option(SLACK_TOKENS, help="generation budget = 2 x target tokens + slack", min=0)
    thinking: str = option("auto", choices=thinking.THINKING_MODES,
                           help="enable_thinking for the chat template (auto: mlx-lm's default)")
    thinking_budget: int = option(2048, min=0, help="max thinking tokens before the answer (thinking models)")

    @property
    def use_chat(self) -> bool:
        return self.chat in ("auto", "1", "true")


class UnicodeSuite(Suite):
    name = "unicode"
    description = "echo emoji/CJK/kana/RTL/math text: U+FFFD, invalid UTF-8, detokenizer, log-prob drop"
    version = "2"  # 2: health flags and thinking handling in every record
    needs_reference = True
    exec_mode = None
    Options = UnicodeOptions
    metrics = (
        MetricSpec("exact_echo_rate", True, "proportion", max_drop=0.02, description="target echoed verbatim"),
        MetricSpec("normalized_echo_rate", True, "proportion", max_drop=0.02, description="echoed after NFC"),
        MetricSpec("fffd_rate", False, "proportion", max_drop=0.02, description="outputs with U+FFFD"),
        MetricSpec("invalid_utf8_rate", False, "proportion", max_drop=0.02,
                   description="outputs whose raw bytes are invalid UTF-8"),
        MetricSpec("fffd_chars", False, "count"),
        MetricSpec("invalid_utf8_sequences", False, "count"),
        MetricSpec("detok_roundtrip_passed", None, "count", description="targets the tokenizer round-trips"),
        MetricSpec("logprob_drop_nats_per_char_mean", False, "mean",
                   description="teacher-forced log-prob drop vs the reference, nats per character"),
        MetricSpec("logprob_drop_nats_per_char_median", False, "mean"),
        MetricSpec("n", None, "count"),
        MetricSpec("thinking_tokens_mean", None, "mean", description="mean thinking tokens per item"),
    ) + tuple(MetricSpec(**d) for d in health.METRIC_DECLS)

    def __init__(self):
        super().__init__()
        # (reference key, item key) -> reference log-prob, so repeated runs in
        # one process (several recipes) load the reference model once.
        self._ref_memo: dict = {}

    def items(self, ctx) -> list[dict]:
        _, items = load_items()
        # Round-robin over categories so a small --limit still covers them all.
        seen_in_category: dict = {}
        keyed = []
        for it in items:
            position = seen_in_category.get(it["category"], 0)
            seen_in_category[it["category"]] = position + 1
            keyed.append(((position, CATEGORIES.index(it["category"])), it))
        ordered = [it for _, it in sorted(keyed, key=lambda k: k[0])]
        return ordered[: ctx.limit] if ctx.limit else ordered

    def data_info(self, ctx) -> dict:
        return {"source": f"suites/data/{DATA_FILE.name}", "sha256": sha256_file(DATA_FILE)}

    def _prepare(self, ctx, items: list[dict]) -> list[dict]:
        template, _ = load_items()
        opts = self.opts(ctx)
        enable = None if opts.thinking == "auto" else opts.thinking == "on"
        prepared = []
        for it in items:
            prompt_ids = build_prompt_ids(ctx.tokenizer, template, it["target"], opts.use_chat, enable)
            target_ids = list(ctx.tokenizer.encode(it["target"], add_special_tokens=False))
            key = sha256_bytes(json.dumps([prompt_ids, target_ids]).encode())[:20]
            prepared.append({**it, "prompt_ids": prompt_ids, "target_ids": target_ids, "key": key})
        return prepared

    def _reference_logprobs(self, ctx, prepared: list[dict]) -> dict:
        """key -> reference log-prob, from memory, then disk, then the reference model."""
        ref_id = str(ctx.reference_path) if ctx.reference_path else "unknown"
        memo = self._ref_memo.setdefault(ref_id, {})
        cache_file = None
        if ctx.cache_dir is not None and ctx.reference_path is not None:
            ref_tag = sha256_bytes(ref_id.encode())[:12]
            cache_file = Path(ctx.cache_dir) / f"unicode_v{REF_CACHE_VERSION}_ref_logprobs_{ref_tag}.json"
            if cache_file.is_file():
                try:
                    memo.update(json.loads(cache_file.read_text(encoding="utf-8")))
                except json.JSONDecodeError:
                    pass  # a corrupt cache is recomputed, never trusted
        missing = [p for p in prepared if p["key"] not in memo]
        if missing:
            ref_model, _ = ctx.reference()
            for p in tqdm(missing, desc="unicode: reference log-probs", disable=not ctx.progress):
                memo[p["key"]] = target_logprob(ref_model, p["prompt_ids"], p["target_ids"])
            if cache_file is not None:
                atomic_write_text(cache_file, json.dumps(memo, sort_keys=True))
        return memo

    def run(self, ctx, items: list[dict]):
        opts = self.opts(ctx)
        slack = opts.slack
        prepared = self._prepare(ctx, items)
        is_reference = ctx.is_reference
        ref_lps = None if is_reference else self._reference_logprobs(ctx, prepared)
        for p in tqdm(prepared, desc="unicode", disable=not ctx.progress):
            target = p["target"]
            model_lp = target_logprob(ctx.model, p["prompt_ids"], p["target_ids"])
            # The reference scored by itself: the same number, so the drop is exactly 0.
            ref_lp = model_lp if is_reference else ref_lps[p["key"]]
            detok = detokenizer_check(ctx.tokenizer, target)
            gen = generate_thinking_echo(ctx.model, ctx.tokenizer, p["prompt_ids"], 2 * len(p["target_ids"]) + slack,
                                         opts.thinking_budget, allow_thinking=opts.thinking != "off")
            split = gen["split"]
            score = score_output(target, gen["answer"], gen["raw"])
            flags = health.health_flags(gen["answer"], tokens=gen["all_tokens"], budget_hit=split.budget_hit,
                                        expected_script=expected_script(target), raw=gen["raw"])
            record = {
                "id": p["id"],
                "category": p["category"],
                "target": target,
                "output": gen["output"],
                "finish_reason": gen["finish_reason"],
                "generated_tokens": len(gen["tokens"]),
                "truncated_tail_bytes": gen["truncated"],
                **score,
                "correct": score["exact_echo"],
                "target_chars": len(target),
                "target_tokens": len(p["target_ids"]),
                "detok_roundtrip": detok["roundtrip"],
                "detok_streaming": detok["streaming"],
                "detok_pass": detok["roundtrip"] and detok["streaming"],
                "model_logprob": model_lp,
                "ref_logprob": ref_lp,
                "logprob_drop_nats_per_char": (ref_lp - model_lp) / len(target),
                **split.record(),
                **flags,
            }
            if split.has_thinking:
                record["thinking"] = split.thinking[-2000:]
            if not record["detok_pass"]:
                record["detok_decoded"] = detok["decoded"]
                record["detok_streamed"] = detok["streamed"]
            yield record

    def summarize(self, ctx, records: list[dict]) -> dict:
        n = len(records)
        if n == 0:
            return {"n": 0}
        summary = {"n": n}

        def rate(name, flags):
            k = sum(bool(f) for f in flags)
            summary[name] = k / len(flags) if flags else None
            summary[f"{name}_ci95"] = list(wilson_ci(k, len(flags)))

        rate("exact_echo_rate", [r["exact_echo"] for r in records])
        rate("normalized_echo_rate", [r["normalized_echo"] for r in records])
        rate("fffd_rate", [r["fffd_count"] > 0 for r in records])
        measured = [r["invalid_utf8_count"] for r in records if r["invalid_utf8_count"] is not None]
        rate("invalid_utf8_rate", [c > 0 for c in measured])
        summary["fffd_chars"] = sum(r["fffd_count"] for r in records)
        summary["invalid_utf8_sequences"] = sum(measured) if measured else None

        passed = sum(r["detok_pass"] for r in records)
        summary["detok_roundtrip_pass"] = passed == n
        summary["detok_roundtrip_passed"] = passed
        summary["detok_failures"] = sorted(r["id"] for r in records if not r["detok_pass"])

        drops = [r["logprob_drop_nats_per_char"] for r in records]
        summary["logprob_drop_nats_per_char_mean"] = statistics.fmean(drops)
        summary["logprob_drop_nats_per_char_median"] = statistics.median(drops)

        per_category = {}
        for cat in CATEGORIES:
            rs = [r for r in records if r["category"] == cat]
            if rs:
                cat_drops = [r["logprob_drop_nats_per_char"] for r in rs]
                per_category[cat] = {
                    "n": len(rs),
                    "exact_echo_rate": sum(r["exact_echo"] for r in rs) / len(rs),
                    "fffd_rate": sum(r["fffd_count"] > 0 for r in rs) / len(rs),
                    "logprob_drop_nats_per_char_mean": statistics.fmean(cat_drops),
                    "logprob_drop_nats_per_char_median": statistics.median(cat_drops),
                }
        summary["per_category"] = per_category
        summary.update(health.summarize_health(records))
        summary["thinking_tokens_mean"] = statistics.fmean([r.get("thinking_tokens") or 0 for r in records])
        summary["corrupted"] = [_corrupted_entry(r) for r in sorted(records, key=lambda r: r["id"]) if r["corrupted"]]
        return summary


def _corrupted_entry(record: dict) -> dict:
    excerpt = record["excerpt"] or {"before": "", "after": record["output"][:EXCERPT_WIDTH]}
    return {
        "id": record["id"],
        "category": record["category"],
        "before": excerpt["before"],
        "after": excerpt["after"],
        # The same with zero-width/combining characters spelled out, for reports.
        "before_escaped": escape_invisible(excerpt["before"]),
        "after_escaped": escape_invisible(excerpt["after"]),
    }
