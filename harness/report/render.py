"""Rendering the report document: markdown (the source of truth), HTML (that
markdown through markdown-it, as GitHub would show it) and JSON (the blocks plus
every result's numbers, for tools).

A report is a `Doc`: a list of blocks (headings, paragraphs, tables, bullets,
folded suite tables, images) built by harness.report.card / tables.
"""

import html
import json
import re
from dataclasses import dataclass, field

from markdown_it import MarkdownIt
from tabulate import tabulate

from harness.report.metrics import _is_ci, scalar_metrics

@dataclass
class Table:
    headers: list
    rows: list
    caption: str = ""  # legend shown under the table


@dataclass
class Doc:
    blocks: list = field(default_factory=list)  # (kind, payload); kind: h, p, table, bullets, details, img

    def h(self, level: int, text: str):
        self.blocks.append(("h", (level, text)))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def table(self, t: Table):
        self.blocks.append(("table", t))

    def bullets(self, lines: list):
        if lines:
            self.blocks.append(("bullets", lines))

    def raw(self, title: str, text: str):
        """A suite's own table (e.g. summary["table"]), folded away; plain text goes in a code block."""
        is_markdown = any(line.lstrip().startswith("|") for line in text.splitlines())
        self.blocks.append(("details", (title, text if is_markdown else f"```text\n{text}\n```")))

    def img(self, path: str, alt: str):
        self.blocks.append(("img", (path, alt)))


def _md_cell(x) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def _align(t: Table) -> list:
    """Numbers right, text left: a column is numeric when every filled cell starts like a number."""
    out = []
    for j in range(len(t.headers)):
        cells = [str(row[j]) for row in t.rows if j < len(row) and str(row[j]) not in ("", "-")]
        numeric = j > 0 and cells and all(re.match(r"[-+×]?\d", c) for c in cells)
        out.append("right" if numeric else "left")
    return out


def _md_table(t: Table) -> str:
    align = _align(t)
    rows = [[_md_cell(c) for c in row] for row in t.rows]
    text = tabulate(rows, headers=[_md_cell(h) for h in t.headers], tablefmt="pipe",
                    disable_numparse=True, colalign=align)
    return text + (f"\n\n<sub>{t.caption}</sub>" if t.caption else "")


def render_markdown(doc: Doc) -> str:
    out = []
    for kind, x in doc.blocks:
        if kind == "h":
            out.append("#" * x[0] + " " + x[1])
        elif kind == "p":
            out.append(x)
        elif kind == "table":
            out.append(_md_table(x))
        elif kind == "bullets":
            out.append("\n".join(f"- {line}" for line in x))
        elif kind == "details":
            out.append(f"<details><summary>{html.escape(x[0])}</summary>\n\n{x[1]}\n\n</details>")
        elif kind == "img":
            out.append(f"![{x[1]}]({x[0]})")
    return "\n\n".join(out) + "\n"

_CSS = """body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1f2328;line-height:1.45}table{border-collapse:collapse;margin:.6em 0;display:block;overflow-x:auto}
th,td{border:1px solid #d0d7de;padding:4px 10px;font-variant-numeric:tabular-nums}th{background:#f6f8fa}
tr:nth-child(even) td{background:#fbfbfc}
img{max-width:100%;border:1px solid #eee;margin:.4em 0}code{background:#f6f8fa;padding:0 .3em}
sub{font-size:.85em;color:#57606a}h1,h2{border-bottom:1px solid #d8dee4;padding-bottom:.2em}"""


def render_html(doc: Doc, title: str = "harness report") -> str:
    """The markdown rendering through markdown-it (CommonMark + tables), in a styled page."""
    body = MarkdownIt("commonmark").enable("table").render(render_markdown(doc))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n{body}</body></html>\n")


def render_json(doc: Doc, results: list) -> str:
    blocks = []
    for kind, x in doc.blocks:
        if kind == "table":
            blocks.append({"kind": "table", "headers": x.headers, "rows": x.rows, "caption": x.caption})
        elif kind == "h":
            blocks.append({"kind": "heading", "level": x[0], "text": x[1]})
        elif kind == "details":
            blocks.append({"kind": "suite_markdown", "title": x[0], "markdown": x[1]})
        elif kind == "img":
            blocks.append({"kind": "image", "path": x[0], "alt": x[1]})
        else:
            blocks.append({"kind": {"p": "paragraph"}.get(kind, kind), "content": x})
    data = {
        "schema": "harness.report/1",
        "results": [{"model": r.model, "recipe": r.recipe, "suite": r.suite, "path": str(r.path),
                     "bpw": r.bpw, "bpw_mlx": r.artifact.get("bpw_mlx"), "n_items": r.n_items,
                     "complete": r.complete, "exec_mode": r.provenance.get("exec_mode"),
                     "metrics": scalar_metrics(r.summary),
                     "ci95": {k[:-5]: v for k, v in r.summary.items() if k.endswith("_ci95") and _is_ci(v)},
                     "paired_vs_float": r.paired}
                    for r in results],
        "blocks": blocks,
    }
    return json.dumps(data, indent=1, ensure_ascii=False, default=str)
