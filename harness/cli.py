"""Command line: `harness recipes|plan|build|suites|run|report|compare|gate`.

Every user-fixable problem is a HarnessError: printed as one line, exit code 2.
"""

import argparse
import json
import os
import sys
from pathlib import Path

from harness.errors import HarnessError

EPILOG = "Default model: smollm2-135m (embedded, offline). Docs: README.md"


def _recipe_options(args) -> dict:
    opts = {}
    for key in ("group_size", "mode", "target_bpw", "calibration", "calib_samples", "calib_seq_len",
                "sensitivity"):
        value = getattr(args, key, None)
        if value is not None:
            opts[key] = value
    return opts


def _add_recipe_args(p, multiple=False):
    if multiple:
        p.add_argument("--recipe", action="append", required=True,
                       help="recipe name, tier file (.toml/.yaml) or file.py:Name; repeat for several")
    p.add_argument("--model", default="smollm2-135m",
                   help="smollm2-135m (default), smollm2-moe, synthetic:ARCH (tiny: llama, minimax, qwen3_moe), synthetic:minimax-m2.5[@SEED][:layers=N,experts=N,top_k=N] (real per-layer shapes; also qwen3-moe-30b), a .gguf, a local dir or a hub id")
    p.add_argument("--group-size", type=int, help="quantization group size (default per mode: 64/32/16)")
    p.add_argument("--mode", choices=["affine", "mxfp4", "nvfp4", "mxfp8"], help="quantization mode")
    p.add_argument("--target-bpw", type=float, help="bits-per-weight target (dynamic; for oQ it overrides the level's target, the cap stays)")
    p.add_argument("--calibration", help="calibration text (.jsonl or .txt) for data-driven recipes")
    p.add_argument("--calib-samples", type=int, help="calibration samples (default 128 x 256 on a GPU, 16 x 256 on CPU)")
    p.add_argument("--calib-seq-len", type=int, help="calibration sequence length (default 256)")
    p.add_argument("--sensitivity", help="reuse a sensitivity.json instead of measuring (oQ)")
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
                   help="suite option, e.g. --opt shots=5 --opt max_tokens=256")
    p.add_argument("--judge", help="OpenAI-compatible endpoint used as an extra grader (reasoning)")
    p.add_argument("--fresh", action="store_true", help="discard stored items and start over")
    p.add_argument("--memory-budget", type=float, metavar="GB",
                   help="memory for model weights (default 0.6 x RAM); a model that does not fit runs "
                        "layer-streamed where the suite supports it (fidelity: reference and model)")

    p = sub.add_parser("report", help="comparison tables and plots from stored results")
    p.add_argument("--results", default="results")
    p.add_argument("--format", choices=["md", "html", "json"], default="md")
    p.add_argument("--out", help="write here (default: stdout)")
    p.add_argument("--model-card", action="store_true", help="write a ready model-card section")
    p.add_argument("--plots", help="directory for PNG/SVG plots")

    p = sub.add_parser("compare", help="compare two stored results (files or dirs)")
    p.add_argument("a")
    p.add_argument("b")

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
    print("\nAlso: --recipe path/to/tiers.toml (declarative tiers) or --recipe path/to/file.py:Name")
    return 0


def cmd_suites(args) -> int:
    from tabulate import tabulate

    from harness.suites_registry import available_suites

    rows = [(name, getattr(cls, "description", "")) for name, cls in sorted(available_suites().items())]
    print(tabulate(rows, headers=["suite", "what it measures"]))
    return 0


def _build_options(args, recipe, **kw):
    from harness.build import BuildOptions

    return BuildOptions(model=args.model, recipe=recipe, recipe_options=_recipe_options(args), seed=args.seed,
                        progress=not args.no_progress, **kw)


def cmd_plan(args) -> int:
    from harness.build import make_plan
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
    if hasattr(recipe, "view"):  # recipe-specific detail, e.g. oQ's sensitivity ranking
        print()
        print(recipe.view(plan))
    if args.out:
        atomic_write_text(Path(args.out), plan.to_json())
        print(f"plan written to {args.out}")
    return 0


def cmd_build(args) -> int:
    from harness.build import build
    from harness.report.plan_view import plan_summary

    res = build(_build_options(args, args.recipe, out=Path(args.out) if args.out else None,
                               plan_file=args.plan, force=args.force),
                log=lambda m: print(m, file=sys.stderr))
    from harness.build import read_provenance

    print(plan_summary(res.plan), file=sys.stderr)
    measured = read_provenance(res.path).get("bpw_mlx")
    if measured is not None:
        print(f"measured on the artifact: {measured:.3f} bpw (mlx-lm compute_bits_per_weight)", file=sys.stderr)
    print("cache hit" if res.cache_hit else "built", file=sys.stderr)
    print(res.path)  # last line: the artifact path (scripts rely on it)
    return 0


def cmd_run(args) -> int:
    from harness.run import RunOptions, run_cli

    return run_cli(RunOptions.from_args(args, _recipe_options(args)))


def cmd_report(args) -> int:
    from harness.report.core import report_cli

    return report_cli(args)


def cmd_compare(args) -> int:
    from harness.report.gate import compare_cli

    return compare_cli(args)


def cmd_gate(args) -> int:
    from harness.report.gate import gate_cli

    return gate_cli(args)


COMMANDS = {"recipes": cmd_recipes, "suites": cmd_suites, "plan": cmd_plan, "build": cmd_build,
            "run": cmd_run, "report": cmd_report, "compare": cmd_compare, "gate": cmd_gate}


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
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
