"""Our MMLU scoring vs `mlx_lm.evaluate` (lm-eval) on the same artifact and the same questions.

    python benchmarks/mmlu_vs_lmeval.py --model PATH_OR_SPEC --limit 200 [--shots 0]

Both sides get the same rows: our suite picks the stratified subset, and lm-eval's
installed `mmlu_<subject>` task configs are run unchanged except that their
dataset comes from the same Arrow files (no hub) and `samples=` selects the same
row indices. lm-eval runs through mlx-lm's own adapter (`mlx_lm.evaluate.MLXLM`,
the model exactly as `mlx_lm.load` gives it: native kernels), without the chat
template so both sides score the plain lm-eval prompt.

Ours runs as the harness runs it: `harness.runtime.execution.load_artifact` with
--exec-mode (auto = simulated on CPU: quantized layers dequantized to fp32 and
run on BLAS; same weights, same numbers up to summation order).

Printed side by side: accuracy each, items whose prediction differs, max
|log-prob difference|, wall time each, speed ratio, and our achieved GFLOP/s
against this machine's measured fp32 GEMM peak (the FLOP roofline: every
prompt token through the decoder, the vocabulary projection only at the last
position). --peer-limit N runs lm-eval on an N-question stratified subset of the
same questions (nested: a subset of ours) and extrapolates its time; use it for
native quantized artifacts, where lm-eval takes ~10 s per question on CPU.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.runtime.blas import ensure_openblas  # noqa: E402
from harness.sources import resolve_model  # noqa: E402




# ---------------------------------------------------------------- FLOPs


def model_shape(model, config: dict) -> dict:
    """Multiply-adds per token in the decoder's linear layers (active experts only),
    attention width, and the head size, read from the loaded model's modules."""
    import mlx.nn as nn
    from mlx_lm.models.switch_layers import QuantizedSwitchLinear, SwitchLinear

    top_k = config.get("num_experts_per_tok") or 1
    dense = switch = 0
    for layer in model.model.layers:
        for _, m in layer.named_modules():
            if isinstance(m, nn.QuantizedLinear):
                dense += m.weight.shape[0] * m.weight.shape[1] * 32 // m.bits
            elif isinstance(m, nn.Linear):
                dense += m.weight.size
            elif isinstance(m, QuantizedSwitchLinear):
                switch += m.weight.shape[1] * m.weight.shape[2] * 32 // m.bits * top_k
            elif isinstance(m, SwitchLinear):
                switch += m.weight.shape[1] * m.weight.shape[2] * top_k
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    return {
        "linear_macs": dense + switch,
        "attn_width": heads * head_dim,  # QK^T and AV: 2 * width MACs per (query, key) pair
        "layers": config["num_hidden_layers"],
        "head_macs": config["hidden_size"] * config["vocab_size"],
    }


def forward_flops(shape: dict, tokens: int, offset: int = 0) -> float:
    """FLOPs to run `tokens` new tokens after `offset` cached ones (causal attention)."""
    keys = tokens * offset + tokens * (tokens + 1) / 2  # keys each new query attends to
    macs = shape["linear_macs"] * tokens + shape["layers"] * 2 * shape["attn_width"] * keys
    return 2.0 * macs


def needed_flops(shape: dict, plan: list, n_questions: int) -> float:
    """What our method must compute: every prefix once, every row's suffix, one head
    projection per question (padding excluded)."""
    total = 0.0
    for prefix_len, lengths in plan:
        total += forward_flops(shape, prefix_len)
        total += sum(forward_flops(shape, n - prefix_len, prefix_len) for n in lengths)
    return total + 2.0 * shape["head_macs"] * n_questions


def transcendentals(config: dict, plan: list, chunk: int) -> float:
    """exp/sigmoid evaluations the forward passes need: the SwiGLU sigmoid of every
    token (active experts only) and the softmax exponentials of causal attention
    computed chunk by chunk (padding excluded). MLX's CPU backend evaluates these
    with scalar code, so on x86 they cost about as much time as the matmuls."""
    layers, heads = config["num_hidden_layers"], config["num_attention_heads"]
    if config.get("num_experts_per_tok"):
        ffn = config["num_experts_per_tok"] * (config.get("moe_intermediate_size") or config["intermediate_size"])
    else:
        ffn = config["intermediate_size"]

    def attention_exps(n: int, offset: int) -> float:
        step = chunk or n
        return sum(min(step, n - s) * (offset + min(s + step, n)) for s in range(0, n, step))

    total = 0.0
    for prefix_len, lengths in plan:
        total += layers * (ffn * prefix_len + heads * attention_exps(prefix_len, 0))
        for n in lengths:
            total += layers * (ffn * (n - prefix_len) + heads * attention_exps(n - prefix_len, prefix_len))
    return total


def exp_rate() -> float:
    """Measured mx.exp throughput on this machine (elements / s)."""
    import mlx.core as mx

    x = mx.random.normal((4096, 1024))
    mx.eval(mx.exp(x))
    t = time.perf_counter()
    for _ in range(3):
        mx.eval(mx.exp(x))
    return 3 * x.size / (time.perf_counter() - t)


def gemm_rates(hidden: int, ffn: int) -> dict:
    """Measured fp32 GEMM GFLOP/s on the model's own projection shapes and a square one."""
    import mlx.core as mx

    rates = {}
    for m, k, n in ((2048, hidden, ffn), (2048, ffn, hidden), (2048, hidden, hidden), (1024, 1024, 1024)):
        a, b = mx.random.normal((m, k)), mx.random.normal((k, n))
        mx.eval(a @ b)
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            mx.eval(a @ b)
            best = min(best, time.perf_counter() - t)
        rates[f"{m}x{k}x{n}"] = 2 * m * k * n / best / 1e9
    return rates


# ---------------------------------------------------------------- lm-eval side


def lm_eval_run(model_path: Path, items: list, shots: int, split: str, batch_size: int,
                float32: bool = False) -> tuple:
    """Run lm-eval's mmlu tasks through mlx-lm's adapter on exactly `items`.

    Returns ({item id: [loglik A..D]}, wall seconds, CPU seconds of simple_evaluate)."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import lm_eval
    from datasets import DatasetDict, load_from_disk
    from lm_eval.tasks._yaml_loader import load_yaml
    from mlx_lm.evaluate import MLXLM

    from harness.suites.mmlu import offline_root

    yaml_dir = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default"
    subjects = sorted({it["subject"] for it in items})
    tasks, samples = [], {}
    for subject in subjects:
        cfg = load_yaml(yaml_dir / f"mmlu_{subject}.yaml")
        cfg.pop("tag", None)  # a plain task, not part of the mmlu group aggregation
        cfg["test_split"] = split
        root = offline_root() / subject
        cfg["custom_dataset"] = lambda root=root, **kw: DatasetDict(
            {s: load_from_disk(str(root / s)) for s in ("dev", split)}
        )
        tasks.append(cfg)
        samples[cfg["task"]] = sorted(it["index"] for it in items if it["subject"] == subject)

    lm = MLXLM(str(model_path), batch_size=batch_size, use_chat_template=False)  # as mlx_lm.evaluate
    if float32:  # same numerics as ours on CPU (a bf16 artifact otherwise runs bf16 activations)
        import mlx.core as mx

        lm._model.set_dtype(mx.float32)
    t, cpu = time.perf_counter(), time.process_time()
    out = lm_eval.simple_evaluate(
        model=lm, tasks=tasks, num_fewshot=shots, samples=samples, log_samples=True,
        apply_chat_template=False, verbosity="ERROR",
    )
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    logliks = {}
    for subject in subjects:
        for s in out["samples"][f"mmlu_{subject}"]:
            logliks[f"{subject}/{split}/{s['doc_id']}"] = [float(r[0]) for r in s["filtered_resps"]]
    return logliks, wall, cpu


# ---------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="artifact / model dir, or a harness model spec")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--shots", type=int, default=0)
    ap.add_argument("--split", default="test")
    ap.add_argument("--subjects", default=None, help="comma-separated subjects (default: all 57)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8, help="ours: questions per forward pass")
    ap.add_argument("--batch-tokens", type=int, default=4096, help="ours: rows x padded length per pass")
    ap.add_argument("--chunk-size", type=int, default=128, help="ours: long inputs run in chunks of this size")
    ap.add_argument("--exec-mode", default="auto", choices=("auto", "native", "simulated"), help="ours")
    ap.add_argument("--peer-limit", type=int, default=None,
                    help="run lm-eval on a nested N-question subset only (time extrapolated)")
    ap.add_argument("--peer-dtype", default="stock", choices=("stock", "float32"),
                    help="stock: the artifact as mlx_lm.load gives it; float32: upcast like the harness does on CPU")
    ap.add_argument("--skip-peer", action="store_true", help="only time our side")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args(argv)
    ensure_openblas()

    import mlx.core as mx
    from tabulate import tabulate

    from harness.runtime.blas import openblas_loaded
    from harness.runtime.execution import load_artifact
    from harness.suite import SuiteContext
    from harness.suites.mmlu import LETTERS, LetterScorer, MMLUSuite, load_data, score_items, stratified_subset

    path = resolve_model(args.model)
    config = json.loads((path / "config.json").read_text())
    options = {"shots": args.shots, "split": args.split, "batch_size": args.batch_size,
               "batch_tokens": args.batch_tokens, "chunk_size": args.chunk_size}
    if args.subjects:
        options["subjects"] = args.subjects
    ctx = SuiteContext(model=None, tokenizer=None, artifact=path, exec_mode=args.exec_mode,
                       reference=lambda: None, limit=args.limit, seed=args.seed, options=options)
    suite = MMLUSuite()
    items = suite.items(ctx)
    opts = suite.opts(ctx)
    data = load_data(opts.subjects, opts.split, opts.shots, opts.source)
    print(f"model {path}\n{len(items)} questions, {args.shots}-shot, {len(set(i['subject'] for i in items))} "
          f"subjects, data {data.source}, OpenBLAS {'on' if openblas_loaded() else 'OFF'}", file=sys.stderr)

    # ours
    model, tokenizer, mode = load_artifact(path, args.exec_mode)
    scorer = LetterScorer(model, opts.batch_size, opts.batch_tokens, opts.prefix_cache, opts.chunk_size)
    t, cpu = time.perf_counter(), time.process_time()
    ours = {r["id"]: r for r in score_items(model, tokenizer, items, data, opts, progress=True, scorer=scorer)}
    our_wall, our_cpu = time.perf_counter() - t, time.process_time() - cpu
    shape = model_shape(model, config)
    flops = needed_flops(shape, scorer.plan, len(items))
    rates = gemm_rates(config["hidden_size"], config.get("intermediate_size") or 4 * config["hidden_size"])
    peak = max(rates.values())
    n_exp, exp_per_s = transcendentals(config, scorer.plan, opts.chunk_size), exp_rate()
    floor = flops / peak / 1e9 + n_exp / exp_per_s  # matmuls at peak + exp/sigmoid at the measured rate
    del model
    mx.clear_cache()

    # lm-eval
    peer, peer_wall, peer_cpu, peer_items = {}, None, None, items
    if not args.skip_peer:
        if args.peer_limit and args.peer_limit < len(items):
            peer_items = stratified_subset(items, args.peer_limit, args.seed)  # nested in ours
        peer, peer_wall, peer_cpu = lm_eval_run(path, peer_items, args.shots, args.split, 8, args.peer_dtype == "float32")

    answer = {it["id"]: it["answer"] for it in items}
    our_pred = {i: LETTERS.index(r["pred"]) for i, r in ours.items()}
    rows = [["questions", len(items), len(peer_items) if peer else "-"]]
    our_acc = sum(our_pred[i] == answer[i] for i in ours) / len(ours)
    result = {"model": str(path), "n": len(items), "shots": args.shots, "exec_mode_ours": mode,
              "acc_ours": our_acc, "wall_ours_s": our_wall, "cpu_ours_s": our_cpu, "gflop_needed": flops / 1e9,
              "gflops_ours": flops / our_wall / 1e9, "gemm_peak_gflops": peak,
              "roofline_ratio": our_wall / (flops / peak / 1e9), "scorer_stats": scorer.stats,
              "gemm_rates": rates, "transcendentals": n_exp, "exp_per_s": exp_per_s, "floor_s": floor,
              "openblas": openblas_loaded()}
    if peer:
        import numpy as np

        ids = [it["id"] for it in peer_items]
        peer_pred = {i: int(np.argmax(peer[i])) for i in ids}
        disagree = [i for i in ids if peer_pred[i] != our_pred[i]]
        max_diff = max(float(np.max(np.abs(np.array(ours[i]["logprobs"]) - np.array(peer[i])))) for i in ids)
        peer_acc = sum(peer_pred[i] == answer[i] for i in ids) / len(ids)
        our_acc_same = sum(our_pred[i] == answer[i] for i in ids) / len(ids)
        per_q_peer = peer_wall / len(ids)
        peer_full = per_q_peer * len(items)
        result.update({"acc_peer": peer_acc, "acc_ours_on_peer_items": our_acc_same, "n_peer": len(ids),
                       "disagreements": disagree, "max_abs_logprob_diff": max_diff,
                       "wall_peer_s": peer_wall, "cpu_peer_s": peer_cpu, "wall_peer_extrapolated_s": peer_full,
                       "speed_ratio": peer_full / our_wall})
        rows += [
            ["accuracy (same questions)", f"{our_acc_same:.4f}", f"{peer_acc:.4f}"],
            ["items predicted differently", len(disagree),
             "agree (<= 1 item)" if abs(our_acc_same - peer_acc) * len(ids) <= 1 else "DIFFER: see notes above"],
            ["max |log-prob diff|", f"{max_diff:.2e}", ""],
            ["wall (s)", f"{our_wall:.1f}",
             f"{peer_wall:.1f}" + (f" (x{len(items)}/{len(ids)} = {peer_full:.0f})" if len(ids) < len(items) else "")],
            ["CPU time (s, both threads)", f"{our_cpu:.1f}", f"{peer_cpu:.1f}"],
            ["s / question", f"{our_wall / len(items):.3f}", f"{per_q_peer:.3f}"],
            ["speed ratio (lm-eval / ours)", f"{peer_full / our_wall:.1f}x", ""],
        ]
        for i in disagree:
            gap = sorted(ours[i]["logprobs"])[-1] - sorted(ours[i]["logprobs"])[-2]
            print(f"  differs: {i} ours {LETTERS[our_pred[i]]} lm-eval {LETTERS[peer_pred[i]]} "
                  f"(our top-2 margin {gap:.2e})", file=sys.stderr)
    else:
        rows += [["wall (s)", f"{our_wall:.1f}", "-"]]
    if len(peer_items) < len(items) or not peer:
        rows.insert(1, ["accuracy (all questions)", f"{our_acc:.4f}", "-"])
    rows += [
        ["exec mode", mode, f"native (mlx_lm.load, {args.peer_dtype} dtype)"],
        ["needed GFLOP (last-position head)", f"{flops / 1e9:.1f}", ""],
        ["achieved GFLOP/s", f"{flops / our_wall / 1e9:.1f}", ""],
        ["fp32 GEMM GFLOP/s (M x K x N)", ", ".join(f"{k}: {r:.0f}" for k, r in rates.items()), ""],
        ["wall / FLOP-roofline time", f"{result['roofline_ratio']:.2f}", ""],
        ["exp+sigmoid evaluations (M) / measured rate (M/s)", f"{n_exp / 1e6:.0f} / {exp_per_s / 1e6:.0f}", ""],
        ["floor: matmuls at peak + exps at rate (s)", f"{floor:.1f}", ""],
        ["wall / floor", f"{our_wall / floor:.2f}", ""],
        ["padding overhead (padded / real tokens)",
         f"{scorer.stats['padded_tokens'] / max(scorer.stats['tokens'], 1):.2f}", ""],
    ]
    print(tabulate(rows, headers=["", "ours (harness mmlu)", "lm-eval (mlx_lm.evaluate)"], tablefmt="github"))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
