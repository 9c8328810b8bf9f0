"""`harness card`: a publishable Hugging Face model card (README.md) for one
quantized recipe, from a results directory.

The card follows the seed cards (the omlx oQ4 card, the REAP tier card):
YAML metadata the Hub reads (base_model, base_model_relation: quantized,
library_name: mlx, tags, pipeline_tag, license), then quantization details
("Bits | Modules | % Params | Description" computed from the artifact's
plan.json), a benchmark table against a chosen reference recipe and the other
recipes of the results dir (95 % CIs, flips, paired tests), reasoning "Model |
Score | Grade", speed "Context | PP | TG" with the hardware, fidelity (PPL, KLD,
top-1), a usage snippet and provenance.

Statistics, formatting and the shared sections come from harness.report
(compare_metric, fmt_ci, fidelity_section, provenance_section ...); only the
card's own layout lives here. The metadata goes through huggingface_hub's
ModelCardData, so what we write is what the Hub parses.
"""

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from harness.cache import atomic_write_text
from harness.errors import HarnessError
from harness.plan import Plan
from harness.report.card import _equal_size_notes, compared_metrics, provenance_section
from harness.report.compare import delta_text, latest_by_key, load_results, recipe_order
from harness.report.metrics import ci95, fmt_ci, fmt_value, info_of, metric_info, metric_label, p_eq
from harness.report.render import Doc, Table, render_markdown
from harness.report.tables import (DEDICATED, _vs_float_suffix, benchmark_metrics, depth_label, depth_rows,
                                   diffs_vs_float, fidelity_section, speed_groups, speed_rows, _ctx_label)
from harness.report.quant_details import load_plan, quantization_rows, source_info
from harness.report.floor import floor_effect



@dataclass
class CardOptions:
    results: Path
    recipe: str
    model: Optional[str] = None  # which model of the results dir (required when it holds several)
    reference: str = "float"
    out: Optional[Path] = None
    repo_id: Optional[str] = None  # ORG/NAME the card will be published under
    base_model: Optional[str] = None  # overrides the hub id found for the source
    license: Optional[str] = None  # overrides the licence found for the source
    plan: Optional[Path] = None  # plan.json to use when the artifact is not on this machine


# ----------------------------------------------------------------------------
# The card


def _select(opts: CardOptions) -> tuple:
    root = Path(opts.results)
    if root.is_dir() and not os.access(root, os.R_OK | os.X_OK):
        raise HarnessError(f"results directory {root} is not readable; fix its permissions")
    results = latest_by_key(load_results(root), warn=lambda m: print(f"harness: note: {m}", file=sys.stderr))
    models = sorted({r.model for r in results})
    if opts.model is not None:
        if opts.model not in models:
            raise HarnessError(f"no results for model {opts.model!r} under {root}; it holds {', '.join(models)}")
        model = opts.model
    elif len(models) > 1:
        raise HarnessError(f"{root} holds results of several models ({', '.join(models)}); choose one with --model")
    else:
        model = models[0]
    rs = [r for r in results if r.model == model]
    recipes = sorted({r.recipe for r in rs})
    if opts.recipe not in recipes:
        raise HarnessError(f"no results for recipe {opts.recipe!r} of {model} under {root}; it has "
                           f"{', '.join(recipes)} (run `harness run --recipe {opts.recipe} ... --out {root}`)")
    if opts.recipe == opts.reference:
        raise HarnessError(f"--recipe and --reference are both {opts.recipe!r}; the card compares a quantized "
                           "recipe with its reference (e.g. --reference float)")
    return model, rs


def _check_out(out: Path) -> None:
    out = Path(out)
    if out.is_dir():
        raise HarnessError(f"--out {out} is a directory; give a file name such as {out / 'README.md'}")
    probe = out.parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise HarnessError(f"--out {out}: {probe} is not a writable directory; choose another path")


def _metadata(opts: CardOptions, model: str, target, plan: Optional[Plan]) -> tuple:
    from huggingface_hub import ModelCardData

    hub_id, licence = source_info(model, _artifact_source(target))
    base = opts.base_model or hub_id
    licence = opts.license or licence
    bits = sorted({t.bits for t in plan.tensors if t.quantized}) if plan else []
    if not bits:
        bits = [b for b in ((target.artifact.get("plan_summary") or {}).get("base_bits"),) if b]
    tags = ["mlx", "quantized", opts.recipe] + [f"{b}-bit" for b in bits]
    tags += [m for m in (target.artifact.get("modes") or []) if m != "affine"]
    data = ModelCardData(
        base_model=base, base_model_relation="quantized" if base else None, library_name="mlx",
        license=licence or None, pipeline_tag="text-generation", tags=list(dict.fromkeys(tags)))
    return data, base, licence


def _artifact_source(result) -> Optional[str]:
    """The source directory the artifact was built from (its provenance.json)."""
    path = result.artifact.get("path")
    try:
        return json.loads((Path(path) / "provenance.json").read_text()).get("source_path") if path else None
    except (OSError, json.JSONDecodeError):
        return None


def _floor_note(suite: str, metric: str, ref) -> Optional[str]:
    """When the reference itself scores at chance or at the floor, the suite cannot rank recipes
    (the same rule and words as `harness run`, report and gate: harness.report.floor)."""
    return floor_effect(ref, metric, gated=False)


def _label(name: str, target: str, reference: str) -> str:
    if name == target:
        return f"**{name}** (this model)"
    return f"{name} (reference)" if name == reference else name


def _benchmark_section(doc: Doc, by_suite: dict, columns: list, target: str, reference: str, diffs: dict) -> None:
    rows, floors = [], []
    for suite, per_recipe in by_suite.items():
        if suite in DEDICATED:
            continue
        for metric in benchmark_metrics(per_recipe):
            info = info_of(next(iter(per_recipe.values())), metric)
            n = sorted({r.summary.get("n") for r in per_recipe.values() if isinstance(r.summary.get("n"), int)})
            cells = []
            for name in columns:
                r = per_recipe.get(name)
                if r is None or not isinstance(r.summary.get(metric), (int, float)):
                    cells.append("-")
                    continue
                cells.append(fmt_ci(r.summary[metric], ci95(r.summary, metric), info)
                             + _vs_float_suffix(diffs.get((suite, metric, name))))
            d = diffs.get((suite, metric, target))
            delta = "-" if d is None else ("other settings" if d.settings else
                                           f"{delta_text(d)} ({p_eq(d.p)})" if d.p is not None else delta_text(d))
            rows.append([f"{suite} {metric_label(metric, info)}", "/".join(map(str, n)) or "-", *cells, delta])
            ref = per_recipe.get(reference)
            note = _floor_note(suite, metric, ref) if ref is not None else None
            if note:
                floors.append(note)
    if not rows:
        return
    doc.h(2, "Benchmarks")
    doc.table(Table(["Benchmark", "n", *(_label(c, target, reference) for c in columns),
                     f"{target} − {reference}"], rows,
                    f"value ± half-width of the 95 % CI (Wilson for accuracies); a↓ b↑: items {reference} got "
                    f"right that this recipe gets wrong / the reverse; * = differs from {reference} at p < 0.05 "
                    "(paired test: McNemar exact on right/wrong items), n.s. = not significant."))
    for note in floors:  # under the table, where the reader sees the numbers
        doc.p(f"**Note:** {note}")


def _reasoning_section(doc: Doc, per_recipe: dict, columns: list, target: str, reference: str, diffs: dict) -> None:
    info = metric_info("score")
    rows = []
    for name in columns:
        r = per_recipe.get(name)
        if r is None:
            continue
        s = r.summary
        rows.append([_label(name, target, reference), fmt_ci(s.get("score"), s.get("score_ci95"), info) + "/100"
                     + _vs_float_suffix(diffs.get(("reasoning", "score", name))), s.get("grade", "-"),
                     fmt_value(s.get("n"), metric_info("n"))])
    if not rows:
        return
    doc.h(2, "Reasoning")
    doc.table(Table(["Model", "Score", "Grade", "Questions"], rows,
                    "Rubric points per question, scaled to 100, ± bootstrap 95 % CI; grades S ≥ 95, A+ ≥ 90, "
                    f"A ≥ 80, B ≥ 70, C ≥ 60, D below; * / n.s.: paired test vs {reference}."))
    ref = per_recipe.get(reference)
    note = _floor_note("reasoning", "score", ref) if ref is not None else None
    if note:
        doc.p(f"**Note:** {note}")


def _speed_section(doc: Doc, per_recipe: dict, target: str, reference: str) -> None:
    """'Context | PP | TG' (the REAP card's), then the depth sweep's rows (llama-bench's pp512 @ d4k:
    the prompt processed on top of d tokens already in the KV cache), with the reference beside them
    when it was measured on the same hardware and exec mode."""
    r = per_recipe.get(target)
    if r is None or not (speed_rows(r.summary) or depth_rows(r.summary)):
        return
    hardware = dict(speed_groups(per_recipe, [target, reference]))
    same = reference in per_recipe and reference != target and any(
        target in names and reference in names for names in hardware.values())
    shown = [target] + ([reference] if same else [])
    contexts = {n: [(_ctx_label(row[0]), row) for row in speed_rows(per_recipe[n].summary)] for n in shown}
    depths = {n: [(depth_label(row[0], row[4]) + " (depth)", row) for row in depth_rows(per_recipe[n].summary)]
              for n in shown}
    headers = ["Context", "Prefill (PP, tok/s)", "Generation (TG, tok/s)", "Peak memory (GB)"]
    if same:
        headers += [f"PP {reference}", f"TG {reference}"]
    rows = []
    for sweep in (contexts, depths):
        ref = dict(sweep.get(reference, []))
        for label, (_, pp, tg, mem, *_) in sweep[target]:
            row = [label, *("-" if v is None else f"{v:.{d}f}" for v, d in ((pp, 1), (tg, 1), (mem, 2)))]
            if same:
                _, rpp, rtg, *_ = ref.get(label, (None,) * 5)
                row += ["-" if v is None else f"{v:.1f}" for v in (rpp, rtg)]
            rows.append(row)
    label = next(h for h, names in hardware.items() if target in names)
    caption = f"Hardware: {label}. PP = prompt tokens / time to first token, TG = generated tokens / s " \
              "(mlx_lm.benchmark conventions)."
    if depths[target]:
        caption += (" Rows marked (depth), llama-bench's pp N @ d D: the KV cache already holds D tokens, "
                    "then a prompt of N tokens is timed (PP) and TG is measured after it.")
    if reference in per_recipe and reference != target and not same:
        caption += f" {reference} was measured on other hardware or in another exec mode, so it is not shown beside."
    doc.h(2, "Speed")
    doc.table(Table(headers, rows, caption))


def _details_section(doc: Doc, target, plan: Optional[Plan]) -> None:
    a = target.artifact
    summary = a.get("plan_summary") or {}
    doc.h(2, "Quantization details")
    if plan is not None:
        doc.table(Table(["Bits", "Modules", "% Params", "Description"], quantization_rows(plan),
                        "% Params: share of the quantizable weights (linear layers, embeddings, experts); norms "
                        "and biases stay in float and are not counted."))
    else:
        doc.p("The artifact's plan.json is not on this machine, so the per-module table is missing; "
              "re-run with `--plan PATH/plan.json` (written by `harness build` beside the weights).")

    def num(x, d=3):
        return f"{x:.{d}f}" if isinstance(x, (int, float)) else "-"

    rows = [["Recipe", f"`{target.recipe}`"],
            ["Effective bpw (quantized weights + scale/bias overhead; model-card definition)",
             num(plan.bpw if plan else a.get("bpw"))],
            ["bpw (mlx-lm `compute_bits_per_weight`, every stored array)",
             num(a.get("bpw_mlx")) + (" (measured)" if a.get("bpw_mlx") is not None else "")],
            ["Group size", ", ".join(map(str, a.get("group_sizes") or [])) or "-"],
            ["Mode", ", ".join(a.get("modes") or []) or "-"],
            ["Stored dtype (scales, float tensors)", str(a.get("dtype") or "-")]]
    for key, label in (("base_bits", "Base bits"), ("target_bpw", "Target bpw"), ("cap_bpw", "bpw cap"),
                       ("boosts", "Boosts (modules widened above base bits)"),
                       ("boosted_layers", "Boosted layers"), ("promoted_to_8bit", "Layers promoted to 8-bit"),
                       ("calibration", "Calibration data"), ("calibration_samples", "Calibration samples")):
        v = summary.get(key)
        if v is not None and v != []:
            rows.append([label, ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)])
    params = a.get("recipe_params") or {}
    shown = {k: v for k, v in params.items() if not str(k).endswith("sha256")} if isinstance(params, dict) else {}
    if shown:
        rows.append(["Recipe parameters", ", ".join(f"{k}={v}" for k, v in shown.items())])
    doc.table(Table(["Parameter", "Value"], rows))


def _usage(doc: Doc, repo: str) -> None:
    doc.h(2, "Use with mlx")
    doc.p("```bash\npip install mlx-lm\n```")
    doc.p("```python\nfrom mlx_lm import load, generate\n\n"
          f'model, tokenizer = load("{repo}")\n\n'
          'prompt = "Write a haiku about quantization."\n'
          "if tokenizer.chat_template is not None:\n"
          '    messages = [{"role": "user", "content": prompt}]\n'
          "    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)\n\n"
          "response = generate(model, tokenizer, prompt=prompt, max_tokens=256, verbose=True)\n```")
    doc.p(f'```bash\nmlx_lm.generate --model {repo} --prompt "Hello"\n```')


def build_card(opts: CardOptions) -> str:
    model, rs = _select(opts)
    target_rs = [r for r in rs if r.recipe == opts.recipe]
    target = next((r for r in target_rs if r.artifact.get("key")), target_rs[0])
    plan = load_plan(target, opts.plan)
    if plan is None:
        print(f"harness: warning: no plan.json for {opts.recipe} (artifact {target.artifact.get('key')}) on this "
              "machine; the card has no per-module table (give --plan)", file=sys.stderr)
    data, base, licence = _metadata(opts, model, target, plan)
    if licence is None:
        print("harness: warning: the source's licence is unknown; pass --license (e.g. apache-2.0)", file=sys.stderr)

    recipes = recipe_order(rs)
    by_suite = {}
    for r in sorted(rs, key=lambda r: r.suite):
        by_suite.setdefault(r.suite, {})[r.recipe] = r
    has_ref = any(opts.reference in per for per in by_suite.values())
    if not has_ref:
        print(f"harness: warning: no results for the reference {opts.reference!r}; the card shows no "
              "comparison against it", file=sys.stderr)
    # reference first, the other recipes by size, this model last
    columns = ([opts.reference] if has_ref else []) + [n for n in recipes if n not in (opts.reference, opts.recipe)]
    columns.append(opts.recipe)
    diffs = diffs_vs_float(by_suite, columns, lambda suite: compared_metrics(suite, by_suite[suite]), opts.reference)

    repo = opts.repo_id or f"ORG/{(base or model).split('/')[-1]}-{opts.recipe}-mlx"
    bpw = plan.bpw if plan else target.artifact.get("bpw")
    doc = Doc()
    doc.h(1, repo.split("/")[-1])
    source = f"[{base}](https://huggingface.co/{base})" if base else f"`{model}`"
    doc.p(f"{source} quantized for [MLX](https://github.com/ml-explore/mlx) with the `{opts.recipe}` recipe "
          f"of harness" + (f" ({bpw:.3f} bits per weight)" if isinstance(bpw, (int, float)) else "")
          + f", evaluated against `{opts.reference}`"
          + (f" and {', '.join(f'`{c}`' for c in columns[1:-1])}" if len(columns) > 2 else "") + ".")
    _details_section(doc, target, plan)

    _benchmark_section(doc, by_suite, columns, opts.recipe, opts.reference, diffs)
    if "reasoning" in by_suite:
        _reasoning_section(doc, by_suite["reasoning"], columns, opts.recipe, opts.reference, diffs)
    if "fidelity" in by_suite and opts.recipe in by_suite["fidelity"]:
        fid = {n: by_suite["fidelity"][n] for n in columns if n in by_suite["fidelity"]}
        if "float" in by_suite["fidelity"]:
            fid = {"float": by_suite["fidelity"]["float"], **fid}
        order = list(fid)
        fidelity_section(doc, fid, order, diffs_vs_float({"fidelity": fid}, order,
                                                          lambda s: compared_metrics(s, fid)), 2)
    if "speed" in by_suite:
        _speed_section(doc, by_suite["speed"], opts.recipe, opts.reference)
    _usage(doc, repo)

    lines = []
    metrics_of = lambda suite: compared_metrics(suite, by_suite[suite])  # noqa: E731
    lines += [n for n in _equal_size_notes(recipes, by_suite, metrics_of) if f"**{opts.recipe}**" in n]
    for suite, per_recipe in by_suite.items():
        limits = {r.provenance.get("limit") for r in per_recipe.values()} - {None}
        if limits:
            lines.append(f"{suite}: a subset was evaluated (--limit {', '.join(map(str, sorted(limits)))}); the "
                         "confidence intervals reflect that sample size.")
    if "simulated" in {r.provenance.get("exec_mode") for r in rs if r.suite != "speed"}:
        lines.append("Quality suites marked *simulated* ran each quantized layer dequantized to fp32 (the same "
                     "outputs as the quantized kernels up to float rounding); speed always uses native kernels.")
    if lines:
        doc.h(2, "Notes")
        doc.bullets(lines)

    provenance_section(doc, rs, 2, recipes)
    extra = [f"Reference: `{opts.reference}`" + ("" if has_ref else " (no results; nothing compared)"),
             f"Artifact: key `{target.artifact.get('key')}`, "
             f"plan sha256 `{str(target.artifact.get('plan_sha256'))[:12]}`"
             + (f", source fingerprint `{str(target.artifact.get('source_fingerprint'))[:12]}`"
                if target.artifact.get("source_fingerprint") else "")]
    if doc.blocks and doc.blocks[-1][0] == "bullets":  # one list with the shared provenance lines
        doc.blocks[-1][1].extend(extra)
    else:
        doc.bullets(extra)
    body = render_markdown(doc)
    return "---\n" + data.to_yaml() + "\n---\n\n" + body


def card_cli(args) -> int:
    opts = CardOptions(results=Path(args.results), recipe=args.recipe, model=args.model, reference=args.reference,
                       out=Path(args.out) if args.out else None, repo_id=args.repo_id, base_model=args.base_model,
                       license=args.license, plan=Path(args.plan) if args.plan else None)
    if opts.repo_id is not None and not re.fullmatch(r"[\w.-]+/[\w.-]+", opts.repo_id):
        raise HarnessError(f"--repo-id {opts.repo_id!r} is not a hub id; use ORG/NAME")
    if opts.out is not None:
        _check_out(opts.out)
    text = build_card(opts)
    if opts.out is not None:
        atomic_write_text(opts.out, text)
        print(f"model card written to {opts.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
