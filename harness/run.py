"""`harness run`: build or reuse artifacts, run suites, store results, print a summary."""

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from tabulate import tabulate

from harness.build import BuildOptions, build, read_provenance
from harness.cache import cache_root, sha256_bytes
from harness.errors import HarnessError
from harness.runtime.execution import is_quantized, load_artifact, on_gpu, resolve_exec_mode
from harness.results import ItemLog, read_items, result_dir, write_result
from harness.sources import model_slug
from harness.suite import SuiteContext
from harness.suites_registry import get_suite


@dataclass
class RunOptions:
    recipes: list
    suites: list
    model: str = "smollm2-135m"
    limit: Optional[int] = None
    seed: int = 0
    exec_mode: str = "auto"
    out: Path = Path("results")
    options: dict = field(default_factory=dict)
    recipe_options: dict = field(default_factory=dict)
    progress: bool = True
    fresh: bool = False
    memory_budget: Optional[float] = None  # GB for weights; None: 0.6 x RAM (harness.runtime.streamed)

    @classmethod
    def from_args(cls, args, recipe_options: dict) -> "RunOptions":
        options = parse_suite_options(args.opt)
        if args.judge:
            options["judge"] = args.judge
        if args.limit is not None and args.limit <= 0:
            raise HarnessError("--limit must be a positive number of items")
        budget = getattr(args, "memory_budget", None)
        if budget is not None and not budget > 0:
            raise HarnessError("--memory-budget must be a positive number of GB (e.g. --memory-budget 64)")
        return cls(recipes=args.recipe, suites=args.suite, model=args.model, limit=args.limit, seed=args.seed,
                   exec_mode=args.exec_mode, out=Path(args.out), options=options,
                   recipe_options=recipe_options, progress=not args.no_progress, fresh=args.fresh,
                   memory_budget=budget)


def parse_suite_options(pairs) -> dict:
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise HarnessError(f"--opt {pair!r} is not KEY=VALUE (e.g. --opt shots=5)")
        key, value = pair.split("=", 1)
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                pass
        else:
            value = {"true": True, "false": False}.get(value.lower(), value)
        out[key.strip()] = value
    return out


class _Reference:
    """Lazily loaded float reference, shared by every suite of a run."""

    def __init__(self, opts: RunOptions):
        self.opts = opts
        self._built = None
        self._loaded = None

    def path(self) -> Path:
        if self._built is None:
            self._built = build(BuildOptions(model=self.opts.model, recipe="float", seed=self.opts.seed,
                                             progress=self.opts.progress), log=lambda m: None)
        return self._built.path

    def __call__(self):
        if self._loaded is None:
            model, tokenizer, _ = load_artifact(self.path(), "native")  # float: modes coincide
            self._loaded = (model, tokenizer)
        return self._loaded


def run(opts: RunOptions, log=print) -> list:
    """Run every (recipe, suite) pair; returns the list of result dicts written."""
    suites = [get_suite(name) for name in opts.suites]  # fail fast on unknown suites
    reference = _Reference(opts)
    slug = model_slug(opts.model)
    written = []
    for recipe in opts.recipes:
        built = build(BuildOptions(model=opts.model, recipe=recipe, seed=opts.seed, progress=opts.progress,
                                   recipe_options=opts.recipe_options), log=log)
        recipe_name = built.plan.recipe
        loaded = {}
        for suite in suites:
            mode = resolve_exec_mode(getattr(suite, "exec_mode", None) or opts.exec_mode)
            placement = _placement(suite, built.path, mode, opts.memory_budget)
            if (mode, placement) not in loaded:
                loaded.clear()  # one model in memory at a time
                loaded[(mode, placement)] = (_streamed_handle(built.path) if placement == "streamed"
                                             else load_artifact(built.path, mode)[:2])
            model, tokenizer = loaded[(mode, placement)]
            ctx = SuiteContext(model=model, tokenizer=tokenizer, artifact=built.path, exec_mode=mode,
                               reference=reference, reference_path=None, limit=opts.limit, seed=opts.seed,
                               options=dict(opts.options), cache_dir=cache_root() / "suite-cache" / slug,
                               progress=opts.progress, memory_budget_gb=opts.memory_budget)
            if getattr(suite, "needs_reference", False):
                ctx.reference_path = reference.path()
            log(f"[{recipe_name} / {suite.name}] exec={mode}")
            if mode == "native" and not on_gpu() and is_quantized(model):
                log("  note: MLX's CPU quantized matmul does not use BLAS (a few GFLOP/s): expect minutes per "
                    "4k-token prefill, and CPU speeds that say nothing about Metal")
            result = run_suite(suite, ctx, built, opts, recipe_name, slug)
            written.append(result)
    return written


def _placement(suite, path: Path, mode: str, budget) -> str:
    """resident, or streamed for a suite that can stream a model larger than the budget."""
    if not getattr(suite, "streamable", False):
        return "resident"
    from harness.runtime.streamed import choose_placement

    return choose_placement(path, budget, mode, on_gpu=on_gpu()).mode


def _streamed_handle(path: Path):
    """(None, tokenizer): the suite streams the model from ctx.artifact itself."""
    from mlx_lm.utils import load_tokenizer

    return None, load_tokenizer(Path(path))


def run_suite(suite, ctx: SuiteContext, built, opts: RunOptions, recipe_name: str, slug: str) -> dict:
    out_dir = result_dir(opts.out, slug, recipe_name)
    prov = read_provenance(built.path)
    version = str(getattr(suite, "version", "1"))
    run_key = sha256_bytes(json.dumps(
        [prov.get("artifact_key"), suite.name, version, ctx.exec_mode, opts.seed, ctx.options],
        sort_keys=True, default=str).encode())[:16]
    items_path = out_dir / f"{suite.name}.items.jsonl"
    if opts.fresh and items_path.exists():
        items_path.unlink()
    log_ = ItemLog(items_path, run_key)
    items = suite.items(ctx)
    ids = [it["id"] for it in items]
    if len(set(ids)) != len(ids):
        raise HarnessError(f"suite {suite.name} produced duplicate item ids; report this bug")
    pending = [it for it in items if it["id"] not in log_.records]
    if len(pending) < len(items):
        print(f"  resuming: {len(items) - len(pending)} of {len(items)} items already done", file=sys.stderr)
    t0 = time.time()
    if pending:
        for record in suite.run(ctx, pending):
            log_.append(record)
    wanted = set(ids)
    records = [r for i, r in log_.records.items() if i in wanted]
    summary = suite.summarize(ctx, records)
    data_info = suite.data_info(ctx) if hasattr(suite, "data_info") else {}
    from harness.provenance import provenance

    result = {
        "model": opts.model,
        "recipe": recipe_name,
        "suite": suite.name,
        "run_key": run_key,
        "complete": len(records) == len(items),
        "n_items": len(records),
        "summary": summary,
        "artifact": {
            "path": str(built.path),
            "key": prov.get("artifact_key"),
            "recipe_params": prov.get("recipe_params"),
            "plan_sha256": prov.get("plan_sha256"),
            "bpw": prov.get("bpw"),
            "bpw_mlx": prov.get("bpw_mlx"),
            "dtype": prov.get("dtype"),
            "source_fingerprint": prov.get("source_fingerprint"),
            "plan_summary": {k: v for k, v in built.plan.summary.items() if not isinstance(v, dict)},
            "group_sizes": sorted({t.group_size for t in built.plan.tensors if t.quantized}),
            "modes": sorted({t.mode for t in built.plan.tensors if t.quantized}),
        },
        "provenance": provenance(kind="result", exec_mode=ctx.exec_mode, seed=opts.seed, limit=opts.limit,
                                 memory_budget_gb=_budget_gb(opts.memory_budget),
                                 placement="streamed" if ctx.model is None else "resident",
                                 options=ctx.options, suite_version=version, data=data_info,
                                 seconds=round(time.time() - t0, 2)),
        "items_file": items_path.name,
    }
    paired = _paired_vs_float(records, opts, slug, suite.name, recipe_name)
    if paired:
        result["paired"] = paired
    write_result(out_dir / f"{suite.name}.json", result)
    return result


def _budget_gb(budget) -> float:
    from harness.runtime.streamed import default_budget_gb

    return float(budget) if budget is not None else default_budget_gb()


def _paired_vs_float(records, opts, slug, suite_name, recipe_name) -> Optional[dict]:
    """Flips and a paired test against the float reference, when both have per-item correctness."""
    if recipe_name == "float" or not records or "correct" not in records[0]:
        return None
    ref_path = result_dir(opts.out, slug, "float") / f"{suite_name}.json"
    if not ref_path.is_file():
        return None
    try:
        from harness.stats import compare_paired
    except ImportError:
        return None
    ref = read_items(ref_path)
    out = compare_paired(ref, records)
    return {"vs": "float", **out} if out else None


def summary_rows(results: list) -> list:
    rows = []
    for r in results:
        metrics = []
        for key, value in r["summary"].items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if key.endswith("_ci95"):
                continue
            ci = r["summary"].get(f"{key}_ci95")
            text = f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
            if ci:
                text += f" [{ci[0]:.3g}, {ci[1]:.3g}]"
            metrics.append(text)
        rows.append((r["recipe"], r["suite"], r["provenance"]["exec_mode"], r["n_items"],
                     f"{r['artifact']['bpw']:.3f}" if r["artifact"].get("bpw") is not None else "-",
                     "\n".join(metrics[:8])))
    return rows


def run_cli(opts: RunOptions) -> int:
    results = run(opts, log=lambda m: print(m, file=sys.stderr))
    print(tabulate(summary_rows(results), headers=["recipe", "suite", "exec", "items", "bpw", "metrics"],
                   tablefmt="simple"))
    for r in results:
        for key in ("table", "issues_table"):
            text = r["summary"].get(key)
            if isinstance(text, str) and text:
                print(f"\n{r['recipe']} / {r['suite']}:\n{text}")
    print(f"\nresults written to {opts.out}/{model_slug(opts.model)}/")
    return 0
