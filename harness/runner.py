"""`harness run`: build or reuse artifacts, run suites, store results, print a summary."""

import dataclasses
import contextlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from tabulate import tabulate

import harness.distributed as distributed
from harness.builder import BuildOptions, build, read_provenance
from harness.cache import cache_root, sha256_bytes
from harness.errors import HarnessError
from harness.options import NoOptions, parse_options, parse_pairs, route_options
from harness.runtime.execution import is_quantized, on_gpu, resolve_exec_mode
from harness.results import ItemLog, clean_leftovers, item_fields, read_items, result_dir, run_lock, write_result
from harness.sources import model_slug
from harness.suite import SuiteContext, result_name, split_result_name, with_chance
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
    options: dict = field(default_factory=dict)  # --opt pairs {"key" or "suite.key": value}; typed per suite by run()
    recipe_options: dict = field(default_factory=dict)
    progress: bool = True
    fresh: bool = False
    memory_budget: Optional[float] = None  # GB for weights; None: 0.6 x RAM (harness.runtime.streamed)
    # what every comparison, flip count and gate is against: a recipe (default float; `uniform8` when the
    # float model is too large to generate with) or "none"; it is evaluated on the scored suites too (cached)
    reference: str = "float"
    # several ranks (harness/distributed.py): --launch N, --shard tensor|pipeline, --distribute
    launch: Optional[int] = None
    shard: Optional[str] = None
    distribute: str = "auto"
    argv: Optional[list] = None  # the command's arguments (None: this process's own command line)

    @classmethod
    def from_args(cls, args, recipe_options: dict) -> "RunOptions":
        options = parse_pairs(args.opt)  # values stay strings: each suite's Options types them
        if args.judge:
            if "reasoning" not in args.suite:
                raise HarnessError("--judge grades the reasoning suite; add --suite reasoning or drop --judge")
            options["reasoning.judge"] = args.judge  # the flag is a shortcut for --opt reasoning.judge=URL
        if args.limit is not None and args.limit <= 0:
            raise HarnessError("--limit must be a positive number of items")
        budget = getattr(args, "memory_budget", None)
        if budget is not None and not budget > 0:
            raise HarnessError("--memory-budget must be a positive number of GB (e.g. --memory-budget 64)")
        return cls(recipes=args.recipe, suites=args.suite, model=args.model, limit=args.limit, seed=args.seed,
                   exec_mode=args.exec_mode, out=Path(args.out), options=options,
                   recipe_options=recipe_options, progress=not args.no_progress, fresh=args.fresh,
                   memory_budget=budget,
                   reference=getattr(args, "reference", None) or "float",
                   launch=getattr(args, "launch", None), shard=getattr(args, "shard", None),
                   distribute=getattr(args, "distribute", None) or "auto", argv=getattr(args, "argv", None))


def suite_options(suites: list, raw: dict) -> list:
    """Each suite's parsed options, from the run's --opt pairs (the one option rule:
    harness.options). Raises HarnessError before any work when a key is unknown,
    scoped to a suite not in the run, or a value fails its type/range/choice check.

    A suite that declares no `Options` (an older third-party suite) takes no keys and
    gets {} in ctx.options, so its `ctx.options.get(...)` calls keep working."""
    owners = {s.name: getattr(s, "Options", NoOptions) for s in suites}
    routed = route_options(raw, owners)
    out = []
    for s in suites:
        if hasattr(s, "Options"):
            out.append(parse_options(s.Options, routed[s.name], s.name))
        else:
            out.append({})
    return out


def options_dict(options) -> dict:
    """Options as JSON-able data (run key, provenance)."""
    if dataclasses.is_dataclass(options) and not isinstance(options, type):
        return dataclasses.asdict(options)
    return dict(options or {})


class _Reference:
    """Lazily built and loaded reference (the float model unless --reference says otherwise),
    shared by every suite of a run."""

    def __init__(self, opts: RunOptions):
        self.opts = opts
        self._built = None
        self._loaded = None

    def path(self) -> Path:
        if self._built is None:
            self._built = distributed.build_once(distributed.session(), lambda: build(BuildOptions(
                model=self.opts.model, recipe=reference_recipe(self.opts), seed=self.opts.seed,
                progress=self.opts.progress), log=lambda m: None))
        return self._built.path

    def __call__(self):
        if self._loaded is None:
            # float: modes coincide; a quantized reference (uniform8) runs like any artifact
            mode = "native" if reference_recipe(self.opts) == "float" else resolve_exec_mode(self.opts.exec_mode)
            model, tokenizer = distributed.load_artifact(distributed.session(), self.path(), mode)
            self._loaded = (model, tokenizer)
        return self._loaded


def reference_recipe(opts: RunOptions) -> str:
    """The recipe the reference model is built with (logit suites need one even with --reference none)."""
    return "float" if opts.reference in (None, "none") else opts.reference


def scored_against_reference(suite) -> bool:
    """Suites whose reference result is worth storing beside the recipes' (scores, flips): not the
    ones that measure against the reference model itself (fidelity, unicode) or time it (speed)."""
    return not getattr(suite, "needs_reference", False) and getattr(suite, "exec_mode", None) != "native"


def run_recipes(opts: RunOptions, suites: list) -> list:
    """[(recipe, suite)] jobs in order: the reference first (so recipes pair against it), then each recipe."""
    jobs = []
    if opts.reference not in (None, "none") and opts.reference not in opts.recipes:
        jobs += [(opts.reference, s) for s in suites if scored_against_reference(s)]
    return jobs + [(r, s) for r in opts.recipes for s in suites]


def run(opts: RunOptions, log=print) -> list:
    """Run every (recipe, suite) pair; returns the list of result dicts written."""
    suites = [get_suite(name) for name in opts.suites]  # fail fast on unknown suites
    parsed = suite_options(suites, opts.options)  # and on bad options, before anything is built
    dist = distributed.setup(opts.shard, opts.distribute)  # several ranks: harness/distributed.py
    distributed.check_suites(dist, suites)
    if not dist.writer:
        log = lambda m: None  # noqa: E731 - rank 0 speaks for the run
    else:
        clean_leftovers(opts.out)
    jobs = run_recipes(opts, suites)
    mine = distributed.plan_jobs(dist, [(r, s.name) for r, s in jobs], opts.distribute)
    reference = _Reference(opts)
    if dist.distribute == "jobs":
        distributed.check_shared_out(dist, opts.out)
        if any(getattr(s, "needs_reference", False) for s in suites):
            reference.path()  # built once, before the ranks go separate ways
    slug = model_slug(opts.model)
    written = []
    wanted = {(r, s.name) for r, s in jobs}
    for recipe in dict.fromkeys(r for r, _ in jobs):
        # recipe flags (--group-size, --target-bpw ...) are for the recipes under test, not an added reference
        recipe_options = opts.recipe_options if recipe in opts.recipes else {}
        built = distributed.build_once(dist, lambda: build(BuildOptions(
            model=opts.model, recipe=recipe, seed=opts.seed, progress=opts.progress,
            recipe_options=recipe_options), log=log))
        recipe_name = built.plan.recipe
        loaded = {}
        for suite, options in zip(suites, parsed):
            if (recipe, suite.name) not in wanted or (recipe, suite.name) not in mine:
                continue  # not a job of this run, or another rank's job
            mode = resolve_exec_mode(getattr(suite, "exec_mode", None) or opts.exec_mode)
            placement = _placement(suite, built.path, mode, opts.memory_budget)
            if (mode, placement) not in loaded:
                loaded.clear()  # one model in memory at a time
                loaded[(mode, placement)] = (_streamed_handle(built.path) if placement == "streamed"
                                             else distributed.load_artifact(dist, built.path, mode))
            model, tokenizer = loaded[(mode, placement)]
            ctx = SuiteContext(model=model, tokenizer=tokenizer, artifact=built.path, exec_mode=mode,
                               reference=reference, reference_path=None, limit=opts.limit, seed=opts.seed,
                               options=options, cache_dir=cache_root() / "suite-cache" / slug,
                               progress=opts.progress and dist.writer, memory_budget_gb=opts.memory_budget)
            if getattr(suite, "needs_reference", False):
                ctx.reference_path = reference.path()
            log(f"[{recipe_name} / {result_name(suite, ctx)}] exec={mode}")
            if mode == "native" and not on_gpu() and is_quantized(model):
                log("  note: MLX's CPU quantized matmul does not use BLAS (a few GFLOP/s): expect minutes per "
                    "4k-token prefill, and CPU speeds that say nothing about Metal")
            # one writer per results file; in an items-split run rank 0 is that writer
            writes = dist.writer or dist.distribute == "jobs"
            items_file = result_dir(opts.out, slug, recipe_name) / f"{result_name(suite, ctx)}.items.jsonl"
            lock = run_lock(items_file) if writes else contextlib.nullcontext()
            with lock:
                result = run_suite(suite, ctx, built, opts, recipe_name, slug)
            if result is not None:  # None: a rank other than 0 (rank 0 writes)
                written.append(result)
    written = distributed.collect_jobs(dist, written, opts.out)
    if dist.distribute == "jobs" and dist.writer:  # the float job may have finished after the others
        for result in written:
            _refresh_paired(result, opts, slug)
    return written


def _refresh_paired(result: dict, opts: RunOptions, slug: str) -> None:
    path = result_dir(opts.out, slug, result["recipe"]) / f"{result['suite']}.json"
    paired = _paired_vs_float(read_items(path), opts, slug, result["suite"], result["recipe"])
    if paired and paired != result.get("paired"):
        result["paired"] = paired
        write_result(path, result)


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
    # a non-default protocol is its own measurement: its own files (mmlu@omlx.json), rows and gate pairs
    name = result_name(suite, ctx)
    prov = read_provenance(built.path)
    version = str(getattr(suite, "version", "1"))
    options = options_dict(ctx.options)
    run_key = sha256_bytes(json.dumps(
        [prov.get("artifact_key"), suite.name, version, ctx.exec_mode, opts.seed, options],
        sort_keys=True, default=str).encode())[:16]
    items_path = out_dir / f"{name}.items.jsonl"
    items = suite.items(ctx)
    ids = [it["id"] for it in items]
    if len(set(ids)) != len(ids):
        raise HarnessError(f"suite {suite.name} produced duplicate item ids; report this bug")
    t0 = time.time()
    dist = distributed.session()
    if dist.active and dist.distribute == "items":  # items split over ranks, or a sharded model
        log_ = distributed.evaluate(dist, suite, ctx, items, items_path, run_key, opts.fresh)
        if not dist.writer:
            return None
    else:
        if opts.fresh and items_path.exists():
            items_path.unlink()
        log_ = ItemLog(items_path, run_key)
        merged = distributed.merge_parts(log_, set(ids), discard=opts.fresh)  # ranks of a stopped run
        pending = [it for it in items if it["id"] not in log_.records]
        if len(pending) < len(items):
            print(f"  resuming: {len(items) - len(pending)} of {len(items)} items already done", file=sys.stderr)
        if pending:
            for record in suite.run(ctx, pending):
                log_.append(record)
        for path in merged:
            path.unlink(missing_ok=True)
    # item order, whoever produced which record first (one process, several ranks, resumes)
    records = distributed.in_item_order(log_, ids)
    summary = suite.summarize(ctx, records)
    data_info = suite.data_info(ctx) if hasattr(suite, "data_info") else {}
    specs = suite.metric_specs(ctx) if hasattr(suite, "metric_specs") else getattr(suite, "metrics", ())
    specs = with_chance(specs, summary)  # data-dependent chance levels (summary["chance"]) stored with the specs
    from harness.provenance import provenance

    result = {
        "model": opts.model,
        "recipe": recipe_name,
        "suite": name,
        "run_key": run_key,
        "complete": len(records) == len(items),
        "n_items": len(records),
        "summary": summary,
        "metrics": [spec.to_json() for spec in specs],
        **item_fields(log_, records),
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
                                 options=options, suite_version=version, data=data_info,
                                 reference=opts.reference or "none", seconds=round(time.time() - t0, 2)),
        "items_file": items_path.name,
    }
    if dist.active:
        result["provenance"]["distributed"] = dist.describe(suite.name)
    paired = _paired_vs_float(records, opts, slug, name, recipe_name)
    if paired:
        result["paired"] = paired
    write_result(out_dir / f"{name}.json", result)
    return result


def _budget_gb(budget) -> float:
    from harness.runtime.streamed import default_budget_gb

    return float(budget) if budget is not None else default_budget_gb()


def _paired_vs_float(records, opts, slug, suite_name, recipe_name) -> Optional[dict]:
    """Flips and a paired test against the reference (--reference, default float), when both
    have per-item correctness."""
    ref_name = opts.reference if opts.reference not in (None, "none") else None
    if ref_name is None or recipe_name == ref_name or not records or "correct" not in records[0]:
        return None
    ref_path = result_dir(opts.out, slug, ref_name) / f"{suite_name}.json"
    if not ref_path.is_file():
        return None
    try:
        from harness.stats import compare_paired
    except ImportError:
        return None
    ref = read_items(ref_path)
    out = compare_paired(ref, records)
    return {"vs": ref_name, **out} if out else None


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


def run_cli(opts: RunOptions, epilogue=None) -> int:
    """`harness run`: run, print the summary table and each suite's tables; `epilogue(results)`
    (from the CLI: the comparison with the reference, rendered by the report stage) is printed last."""
    if opts.launch:  # the local shortcut: this command as N ranks through mlx.launch
        return distributed.launch(opts.launch, opts.argv)
    results = run(opts, log=lambda m: print(m, file=sys.stderr))
    if not distributed.session().writer:
        return 0  # rank 0 prints and writes
    print(tabulate(summary_rows(results), headers=["recipe", "suite", "exec", "items", "bpw", "metrics"],
                   tablefmt="simple"))
    for r in results:
        text = rendered_tables(r)
        if text:
            print(f"\n{r['recipe']} / {r['suite']}:\n{text}")
    extra = epilogue(results) if epilogue is not None else ""
    if extra:
        print(f"\n{extra}")
    print(f"\nresults written to {opts.out}/{model_slug(opts.model)}/")
    distributed.report_done(distributed.session())
    return 0


def rendered_tables(result: dict) -> str:
    """The suite's own tables for one result, rendered now from its summary data."""
    try:
        suite = get_suite(split_result_name(result["suite"])[0])  # mmlu@omlx: the mmlu suite
    except HarnessError:
        suite = None
    text = suite.render(result["summary"]) if suite is not None and hasattr(suite, "render") else ""
    if not text:  # suites not yet converted still store rendered text
        parts = [result["summary"].get(k) for k in ("table", "issues_table")]
        text = "\n\n".join(p for p in parts if isinstance(p, str) and p)
    return text
