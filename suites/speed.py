"""speed: prefill (PP) and generation (TG) tokens/s at several context lengths.

The method is mlx_lm.benchmark's, so the numbers compare one to one: the prompt
is `mx.random.seed(0); mx.random.randint(0, vocab_size, (1, context))` (or,
with prompt=text, the first `context` tokens of the BoolQ corpus), EOS ids are
cleared so generation never stops early, one untimed warm-up run, then N timed
runs of `stream_generate(..., max_tokens=gen_tokens, prefill_step_size=2048)`;
prompt_tps = prompt tokens / time to the first token, generation_tps = tokens
generated / time after it. Unlike mlx_lm.benchmark, peak memory is reset
before every trial (each trial reports its own peak) and we report median
and min/max over trials instead of the mean.

Always runs native kernels (exec_mode = "native"): that is what users run.
Records carry the hardware: CPU model, cores, memory, MLX device (and Metal
device name), and whether OpenBLAS is mapped into the process.

Options (--opt key=value): contexts ("1024,4096"), gen_tokens (128),
trials (3), warmup (1), prompt (random|text|"random,text"),
prefill_step_size (2048).
"""

import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterator, Optional

import mlx.core as mx
from tabulate import tabulate
from tqdm import tqdm

from harness.runtime.blas import openblas_loaded
from harness.errors import HarnessError
from harness.provenance import cpu_name

PROMPT_KINDS = ("random", "text")


@dataclass(frozen=True)
class SpeedOptions:
    contexts: tuple = (1024, 4096)
    gen_tokens: int = 128
    trials: int = 3
    warmup: int = 1
    prompt: tuple = ("random",)
    prefill_step_size: int = 2048


def _int_list(key: str, value) -> tuple:
    try:
        out = tuple(int(v) for v in str(value).replace(" ", "").split(",") if v)
    except ValueError:
        out = ()
    if not out or min(out) < 1:
        raise HarnessError(f"--opt {key}={value!r} must be a comma list of positive integers, e.g. {key}=1024,4096")
    return out


def parse_options(options: Optional[dict]) -> SpeedOptions:
    """SpeedOptions from --opt pairs; keys other suites use are ignored (options are shared)."""
    options = options or {}
    values = {}
    if "contexts" in options:
        values["contexts"] = _int_list("contexts", options["contexts"])
    for key in ("gen_tokens", "trials", "warmup", "prefill_step_size"):
        if key in options:
            try:
                values[key] = int(options[key])
            except (TypeError, ValueError):
                raise HarnessError(f"--opt {key}={options[key]!r} must be an integer")
    if "prompt" in options:
        kinds = tuple(k for k in str(options["prompt"]).replace(" ", "").split(",") if k)
        if not kinds or any(k not in PROMPT_KINDS for k in kinds):
            raise HarnessError(f"--opt prompt={options['prompt']!r}: use random, text or random,text")
        values["prompt"] = kinds
    opts = SpeedOptions(**values)
    if opts.gen_tokens < 1 or opts.trials < 1 or opts.warmup < 0 or opts.prefill_step_size < 1:
        raise HarnessError("--opt gen_tokens, trials and prefill_step_size must be >= 1, warmup >= 0")
    return opts


# ---------------------------------------------------------------- hardware


def _memory_bytes() -> Optional[int]:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def hardware_info() -> dict:
    import mlx_lm

    mem = _memory_bytes()
    info = {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "memory_gb": round(mem / 1e9, 1) if mem else None,
        "platform": platform.platform(),
        "device": str(mx.default_device()),
        "openblas": openblas_loaded(),
        "mlx": mx.__version__,
        "mlx_lm": mlx_lm.__version__,
    }
    try:
        if mx.metal.is_available():
            dev = mx.metal.device_info()
            info["metal_device"] = dev.get("device_name")
            info["metal_memory_gb"] = round(dev.get("memory_size", 0) / 1e9, 1)
    except Exception:  # no Metal backend in this build
        pass
    return info


# ---------------------------------------------------------------- prompts and one trial


def vocab_size(ctx) -> int:
    """vocab_size as mlx_lm.benchmark reads it (config.json, or text_config's)."""
    try:
        config = json.loads((Path(ctx.artifact) / "config.json").read_text())
        return int(config.get("vocab_size") or config["text_config"]["vocab_size"])
    except (OSError, KeyError, TypeError, ValueError, json.JSONDecodeError):
        pass
    args = getattr(ctx.model, "args", None)
    if args is not None and getattr(args, "vocab_size", None):
        return int(args.vocab_size)
    raise HarnessError(f"cannot find vocab_size in {ctx.artifact}/config.json; fix the artifact's config")


def random_prompt(vocab: int, length: int) -> list:
    """mlx_lm.benchmark's prompt: seed 0, uniform token ids."""
    mx.random.seed(0)
    return mx.random.randint(0, vocab, (1, length)).tolist()[0]


def text_prompt(tokenizer, length: int) -> list:
    """The first `length` tokens of the BoolQ passages (concatenated in file order)."""
    from harness.data.corpus import CorpusSpec, load_windows

    return load_windows(tokenizer, CorpusSpec(seq_len=length, num_windows=1)).tokens[0].tolist()


def one_trial(model, tokenizer, prompt: list, gen_tokens: int, prefill_step_size: int) -> dict:
    from mlx_lm.generate import stream_generate

    mx.reset_peak_memory()
    tic = time.perf_counter()
    response = None
    for response in stream_generate(model, tokenizer, prompt, max_tokens=gen_tokens,
                                    prefill_step_size=prefill_step_size):
        pass
    total = time.perf_counter() - tic
    return {
        "prompt_tokens": response.prompt_tokens,
        "prompt_tps": response.prompt_tps,
        "generation_tokens": response.generation_tokens,
        "generation_tps": response.generation_tps,
        "peak_memory_gb": response.peak_memory,
        "total_time": total,
    }


def _median_spread(values: list) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


class SpeedSuite:
    name = "speed"
    description = "prefill (PP) and generation (TG) tok/s at 1k/4k context, mlx_lm.benchmark's method"
    version = "1"
    needs_reference = False
    exec_mode = "native"

    def items(self, ctx) -> list:
        opts = parse_options(ctx.options)
        items = [{"id": f"{kind}-{n}", "context": n, "prompt": kind}
                 for kind in opts.prompt for n in opts.contexts]
        return items[: ctx.limit] if ctx.limit else items

    def data_info(self, ctx) -> dict:
        opts = parse_options(ctx.options)
        return {"source": "random tokens (mlx_lm.benchmark, seed 0)" +
                (" and BoolQ passages" if "text" in opts.prompt else ""),
                "hardware": hardware_info()}

    def run(self, ctx, items: list) -> Iterator[dict]:
        opts = parse_options(ctx.options)
        hardware = hardware_info()
        tokenizer = ctx.tokenizer
        saved_eos = set(tokenizer.eos_token_ids)
        tokenizer.eos_token_ids = set()  # as mlx_lm.benchmark: never stop early
        try:
            bar = tqdm(items, desc="speed", unit="ctx", disable=not ctx.progress)
            for it in bar:
                n = int(it["context"])
                if it["prompt"] == "random":
                    prompt = random_prompt(vocab_size(ctx), n)
                else:
                    prompt = text_prompt(tokenizer, n)
                for _ in range(opts.warmup):
                    one_trial(ctx.model, tokenizer, prompt, opts.gen_tokens, opts.prefill_step_size)
                trials = []
                for _ in range(opts.trials):
                    trials.append(one_trial(ctx.model, tokenizer, prompt, opts.gen_tokens,
                                            opts.prefill_step_size))
                pp = _median_spread([t["prompt_tps"] for t in trials])
                tg = _median_spread([t["generation_tps"] for t in trials])
                yield {
                    "id": it["id"],
                    "context": n,
                    "prompt": it["prompt"],
                    "gen_tokens": opts.gen_tokens,
                    "prompt_tps": pp["median"],
                    "prompt_tps_min": pp["min"],
                    "prompt_tps_max": pp["max"],
                    "generation_tps": tg["median"],
                    "generation_tps_min": tg["min"],
                    "generation_tps_max": tg["max"],
                    "peak_memory_gb": max(t["peak_memory_gb"] for t in trials),
                    "trials": trials,
                    "warmup": opts.warmup,
                    "prefill_step_size": opts.prefill_step_size,
                    "exec_mode": ctx.exec_mode,
                    "hardware": hardware,
                }
        finally:
            tokenizer.eos_token_ids = saved_eos

    def summarize(self, ctx, records: list) -> dict:
        return summarize_records(records)


def context_label(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def summarize_records(records: list) -> dict:
    """Flat metrics per (prompt kind, context) plus the REAP-card table."""
    records = sorted(records, key=lambda r: (PROMPT_KINDS.index(r["prompt"]), r["context"]))
    out: dict = {}
    for r in records:
        prefix = "" if r["prompt"] == "random" else f"{r['prompt']}_"
        n = r["context"]
        out[f"{prefix}pp_tps_{n}"] = r["prompt_tps"]
        out[f"{prefix}tg_tps_{n}"] = r["generation_tps"]
    for r in records:
        prefix = "" if r["prompt"] == "random" else f"{r['prompt']}_"
        n = r["context"]
        out[f"{prefix}pp_tps_{n}_range"] = [r["prompt_tps_min"], r["prompt_tps_max"]]
        out[f"{prefix}tg_tps_{n}_range"] = [r["generation_tps_min"], r["generation_tps_max"]]
        out[f"{prefix}peak_memory_gb_{n}"] = r["peak_memory_gb"]
    out["n"] = len(records)
    if records:
        out["trials"] = len(records[0]["trials"])
        out["gen_tokens"] = records[0]["gen_tokens"]
        out["hardware"] = records[0].get("hardware")
    out["table"] = format_table(records)
    return out


def format_table(records: list) -> str:
    """'Context | Prefill (PP) | Generation (TG)' like the REAP model card
    (median tok/s, min-max over trials in brackets)."""
    kinds = {r["prompt"] for r in records}
    rows = []
    for r in records:
        label = context_label(r["context"])
        if len(kinds) > 1:
            label += f" ({r['prompt']})"
        rows.append([
            label,
            f"{r['prompt_tps']:,.1f} tok/s [{r['prompt_tps_min']:,.1f}-{r['prompt_tps_max']:,.1f}]",
            f"{r['generation_tps']:,.1f} tok/s [{r['generation_tps_min']:,.1f}-{r['generation_tps_max']:,.1f}]",
        ])
    return tabulate(rows, headers=["Context", "Prefill (PP)", "Generation (TG)"], tablefmt="github",
                    disable_numparse=True)
