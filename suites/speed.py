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
prefill_step_size (2048), depths ("" = none), pp (512).

Two sweeps, two questions:
* contexts (omlx's pp1024 ... pp131072, the REAP card's "Context | PP | TG"): a prompt of
  N tokens from an empty cache; PP = N / time to first token, TG = generation after it.
  A long-context sweep: `--opt contexts=1024,4096,16384,32768`.
* depths (llama-bench's `-d`, "pp512 @ d4096"): the KV cache first holds d tokens (prefilled,
  untimed), then a prompt of `pp` tokens is timed (PP at depth d) and `gen_tokens` generated
  after it (TG at depth d + pp). Off by default (CPU runs stay short):
  `--opt depths=0,4096,16384,32768`. Summary keys `pp512_tps_d4096`, `tg_tps_d4096`,
  `peak_memory_gb_d4096`; its table is "Depth | Prefill (pp512) | Generation (TG)".
"""

import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import mlx.core as mx
from tabulate import tabulate
from tqdm import tqdm

from harness.errors import HarnessError
from harness.options import option
from harness.provenance import cpu_name
from harness.runtime.blas import openblas_loaded
from harness.suite import MetricSpec, Suite

PROMPT_KINDS = ("random", "text")


@dataclass(frozen=True)
class SpeedOptions:
    """--opt keys of the speed suite (parsed by harness.options)."""

    contexts: tuple[int, ...] = option((1024, 4096), help="comma list of prompt lengths in tokens")
    gen_tokens: int = option(128, help="tokens generated per trial", min=1)
    trials: int = option(3, help="timed runs per context", min=1)
    warmup: int = option(1, help="untimed runs first", min=0)
    prompt: tuple[str, ...] = option(("random",), help="random tokens, BoolQ text, or both", choices=PROMPT_KINDS)
    prefill_step_size: int = option(2048, help="prompt tokens per prefill step (mlx-lm's)", min=1)
    depths: tuple[int, ...] = option((), help="llama-bench -d: comma list of cached tokens before a pp-token "
                                     "prompt (empty: no depth sweep)")
    pp: int = option(512, help="prompt tokens timed at each depth (llama-bench -p)", min=1)

    def validate(self):
        if self.depths and min(self.depths) < 0:
            raise HarnessError(f"speed option depths={','.join(map(str, self.depths))!r} must be a comma list "
                               "of integers >= 0, e.g. depths=0,4096,16384")
        if len(set(self.depths)) != len(self.depths):
            raise HarnessError(f"speed option depths={','.join(map(str, self.depths))!r} repeats a depth; "
                               "list each once")
        if not self.contexts or min(self.contexts) < 1:
            raise HarnessError(f"speed option contexts={','.join(map(str, self.contexts))!r} must be a comma list "
                               "of positive integers, e.g. contexts=1024,4096")
        if not self.prompt:
            raise HarnessError("speed option prompt is empty; use random, text or random,text")


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


def depth_trial(model, tokenizer, prompt: list, depth: int, gen_tokens: int, prefill_step_size: int) -> dict:
    """llama-bench's pp@d: prompt[:depth] prefilled into the KV cache (untimed), then one_trial's
    measurement of prompt[depth:] (PP at depth) and gen_tokens after it."""
    from mlx_lm.generate import stream_generate
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    for start in range(0, depth, prefill_step_size):
        model(mx.array([prompt[start:min(start + prefill_step_size, depth)]]), cache=cache)
        mx.eval([c.state for c in cache])
    mx.reset_peak_memory()
    tic = time.perf_counter()
    response = None
    for response in stream_generate(model, tokenizer, prompt[depth:], max_tokens=gen_tokens,
                                    prefill_step_size=prefill_step_size, prompt_cache=cache):
        pass
    return {
        "depth": depth,
        "prompt_tokens": response.prompt_tokens,
        "prompt_tps": response.prompt_tps,
        "generation_tokens": response.generation_tokens,
        "generation_tps": response.generation_tps,
        "peak_memory_gb": response.peak_memory,
        "total_time": time.perf_counter() - tic,
    }


def _median_spread(values: list) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


class SpeedSuite(Suite):
    name = "speed"
    description = "prefill (PP) and generation (TG) tok/s at 1k/4k context, mlx_lm.benchmark's method"
    version = "1"
    needs_reference = False
    exec_mode = "native"
    Options = SpeedOptions
    # Speeds are hardware-dependent: declared with a direction but never gated by default.
    metrics = (
        MetricSpec("n", None, "count"),
        MetricSpec("trials", None, "count"),
        MetricSpec("gen_tokens", None, "count"),
    )

    def metric_specs(self, ctx) -> tuple:
        """One pp/tg/peak-memory metric per (prompt kind, context) this run measures."""
        out = []
        for it in self.items(ctx):
            kind, n = it["prompt"], it["context"]
            prefix = "" if kind == "random" else f"{kind}_"
            if "depth" in it:
                d, pp = it["depth"], it["pp"]
                out += [
                    MetricSpec(f"{prefix}pp{pp}_tps_d{d}", True, "speed",
                               description=f"prefill tok/s of {pp} tokens at depth {d} ({kind} prompt)"),
                    MetricSpec(f"{prefix}tg_tps_d{d}", True, "speed",
                               description=f"generation tok/s after {d}+{pp} tokens"),
                    MetricSpec(f"{prefix}peak_memory_gb_d{d}", False, "mean", description="peak memory (GB)"),
                ]
                continue
            out += [
                MetricSpec(f"{prefix}pp_tps_{n}", True, "speed", description=f"prefill tok/s, {n}-token {kind} prompt"),
                MetricSpec(f"{prefix}tg_tps_{n}", True, "speed", description=f"generation tok/s after {n} tokens"),
                MetricSpec(f"{prefix}peak_memory_gb_{n}", False, "mean", description="peak memory (GB)"),
            ]
        return tuple(out) + self.metrics

    def render(self, summary: dict) -> str:
        return table_from_summary(summary)

    def items(self, ctx) -> list:
        opts = self.opts(ctx)
        items = [{"id": f"{kind}-{n}", "context": n, "prompt": kind}
                 for kind in opts.prompt for n in opts.contexts]
        items += [{"id": f"{kind}-pp{opts.pp}@d{d}", "context": d + opts.pp, "depth": d, "pp": opts.pp, "prompt": kind}
                  for kind in opts.prompt for d in opts.depths]
        return items[: ctx.limit] if ctx.limit else items

    def data_info(self, ctx) -> dict:
        opts = self.opts(ctx)
        return {"source": "random tokens (mlx_lm.benchmark, seed 0)" +
                (" and BoolQ passages" if "text" in opts.prompt else ""),
                "hardware": hardware_info()}

    def run(self, ctx, items: list) -> Iterator[dict]:
        opts = self.opts(ctx)
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
                if "depth" in it:
                    def trial():
                        return depth_trial(ctx.model, tokenizer, prompt, int(it["depth"]), opts.gen_tokens,
                                           opts.prefill_step_size)
                else:
                    def trial():
                        return one_trial(ctx.model, tokenizer, prompt, opts.gen_tokens, opts.prefill_step_size)
                for _ in range(opts.warmup):
                    trial()
                trials = [trial() for _ in range(opts.trials)]
                pp = _median_spread([t["prompt_tps"] for t in trials])
                tg = _median_spread([t["generation_tps"] for t in trials])
                yield {
                    "id": it["id"],
                    "context": n,
                    **({"depth": it["depth"], "pp": it["pp"]} if "depth" in it else {}),
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
    """Flat metrics per (prompt kind, context); the REAP-card table is rendered from them (render)."""
    records = sorted(records, key=lambda r: (PROMPT_KINDS.index(r["prompt"]), r["context"]))
    depth_records = [r for r in records if "depth" in r]
    records = [r for r in records if "depth" not in r]
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
    for r in sorted(depth_records, key=lambda r: (PROMPT_KINDS.index(r["prompt"]), r["depth"])):
        prefix = "" if r["prompt"] == "random" else f"{r['prompt']}_"
        d, pp = r["depth"], r["pp"]
        out[f"{prefix}pp{pp}_tps_d{d}"] = r["prompt_tps"]
        out[f"{prefix}tg_tps_d{d}"] = r["generation_tps"]
        out[f"{prefix}pp{pp}_tps_d{d}_range"] = [r["prompt_tps_min"], r["prompt_tps_max"]]
        out[f"{prefix}tg_tps_d{d}_range"] = [r["generation_tps_min"], r["generation_tps_max"]]
        out[f"{prefix}peak_memory_gb_d{d}"] = r["peak_memory_gb"]
    everything = records + depth_records
    out["n"] = len(everything)
    if everything:
        out["trials"] = len(everything[0]["trials"])
        out["gen_tokens"] = everything[0]["gen_tokens"]
        out["hardware"] = everything[0].get("hardware")
    return out


def records_from_summary(summary: dict) -> list:
    """The per-context rows format_table needs, read back from a stored summary."""
    import re

    rows = []
    for key, value in summary.items():
        m = re.fullmatch(r"(?:(\w+?)_)?pp_tps_(\d+)", key)
        if not m or not isinstance(value, (int, float)):
            continue
        kind, n = m.group(1) or "random", int(m.group(2))
        prefix = "" if kind == "random" else f"{kind}_"
        pp_range = summary.get(f"{prefix}pp_tps_{n}_range") or [value, value]
        tg = summary.get(f"{prefix}tg_tps_{n}")
        tg_range = summary.get(f"{prefix}tg_tps_{n}_range") or [tg, tg]
        rows.append({"prompt": kind, "context": n, "prompt_tps": value, "prompt_tps_min": pp_range[0],
                     "prompt_tps_max": pp_range[1], "generation_tps": tg, "generation_tps_min": tg_range[0],
                     "generation_tps_max": tg_range[1]})
    order = {k: i for i, k in enumerate(PROMPT_KINDS)}
    return sorted(rows, key=lambda r: (order.get(r["prompt"], len(order)), r["context"]))


def depth_records_from_summary(summary: dict) -> list:
    """The per-depth rows format_depth_table needs, read back from a stored summary."""
    import re

    rows = []
    for key, value in summary.items():
        m = re.fullmatch(r"(?:(\w+?)_)?pp(\d+)_tps_d(\d+)", key)
        if not m or not isinstance(value, (int, float)):
            continue
        kind, pp, d = m.group(1) or "random", int(m.group(2)), int(m.group(3))
        prefix = "" if kind == "random" else f"{kind}_"
        pp_range = summary.get(f"{prefix}pp{pp}_tps_d{d}_range") or [value, value]
        tg = summary.get(f"{prefix}tg_tps_d{d}")
        tg_range = summary.get(f"{prefix}tg_tps_d{d}_range") or [tg, tg]
        rows.append({"prompt": kind, "depth": d, "pp": pp, "prompt_tps": value, "prompt_tps_min": pp_range[0],
                     "prompt_tps_max": pp_range[1], "generation_tps": tg, "generation_tps_min": tg_range[0],
                     "generation_tps_max": tg_range[1]})
    order = {k: i for i, k in enumerate(PROMPT_KINDS)}
    return sorted(rows, key=lambda r: (order.get(r["prompt"], len(order)), r["depth"]))


def table_from_summary(summary: dict) -> str:
    rows, depth_rows = records_from_summary(summary), depth_records_from_summary(summary)
    tables = ([format_table(rows)] if rows else []) + ([format_depth_table(depth_rows)] if depth_rows else [])
    return "\n\n".join(tables)


def format_depth_table(records: list) -> str:
    """'Depth | Prefill (pp512) | Generation (TG)' like llama-bench's pp512 @ d4096 rows."""
    kinds = {r["prompt"] for r in records}
    pps = sorted({r["pp"] for r in records})
    rows = []
    for r in records:
        label = f"d{context_label(r['depth'])}" if r["depth"] else "d0"
        if len(kinds) > 1:
            label += f" ({r['prompt']})"
        rows.append([
            label + ("" if len(pps) == 1 else f" pp{r['pp']}"),
            f"{r['prompt_tps']:,.1f} tok/s [{r['prompt_tps_min']:,.1f}-{r['prompt_tps_max']:,.1f}]",
            f"{r['generation_tps']:,.1f} tok/s [{r['generation_tps_min']:,.1f}-{r['generation_tps_max']:,.1f}]",
        ])
    pp_head = f"Prefill (pp{pps[0]})" if len(pps) == 1 else "Prefill (PP)"
    return tabulate(rows, headers=["Depth", pp_head, "Generation (TG)"], tablefmt="github", disable_numparse=True)


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
