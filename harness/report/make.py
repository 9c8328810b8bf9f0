"""`harness report`: read results, write plots, build the document, render it."""

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from harness.cache import atomic_write_text
from harness.errors import HarnessError
from harness.report.card import build_doc
from harness.report.compare import latest_by_key, load_results
from harness.report.render import render_html, render_json, render_markdown


@dataclass
class ReportOptions:
    results: Path = Path("results")
    format: str = "md"  # md | html | json
    out: Optional[Path] = None
    model_card: bool = False
    plots: Optional[Path] = None  # default when `out` is given: <out dir>/plots


def make_report(opts: ReportOptions) -> str:
    if opts.format not in ("md", "html", "json"):
        raise HarnessError(f"--format {opts.format!r} is not one of md, html, json")
    results = latest_by_key(load_results(opts.results), warn=lambda m: print(f"harness: note: {m}", file=sys.stderr))
    plots_dir = opts.plots or (Path(opts.out).parent / "plots" if opts.out else None)
    plot_files = {}
    if plots_dir is not None:
        from harness.report.plots import write_plots

        for model in sorted({r.model for r in results}):
            rs = [r for r in results if r.model == model]
            sub = Path(plots_dir) / _slug(model) if len({r.model for r in results}) > 1 else Path(plots_dir)
            plot_files[model] = [(p, alt) for p, alt in write_plots(rs, sub) if p.suffix == ".png"]
    base = Path(opts.out).parent if opts.out else Path.cwd()
    doc = build_doc(results, model_card=opts.model_card, plot_files=plot_files, link_base=base)
    if opts.format == "html":
        return render_html(doc)
    if opts.format == "json":
        return render_json(doc, results)
    return render_markdown(doc)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "model"


def report_cli(args) -> int:
    opts = ReportOptions(results=Path(args.results), format=args.format,
                         out=Path(args.out) if args.out else None, model_card=args.model_card,
                         plots=Path(args.plots) if args.plots else None)
    text = make_report(opts)
    if opts.out:
        atomic_write_text(opts.out, text)
        print(f"report written to {opts.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
