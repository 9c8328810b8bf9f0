"""What a model card says about the artifact itself: the per-module quantization
table ("Bits | Modules | % Params | Description", computed from the artifact's
plan.json) and where the model came from (hub id and licence of the source).
Used by harness.report.hf_card (`harness card`).
"""

import json
import re
import sys
from pathlib import Path
from typing import Optional

from harness.errors import HarnessError
from harness.plan import Plan, is_router

# Models the harness ships (harness.sources): their hub id and licence, known without a download.
KNOWN_SOURCES = {
    "smollm2-135m": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"),
    # upcycled from SmolLM2 by harness.sources.upcycle: a derived model with no hub id of its own
    "smollm2-moe": (None, "apache-2.0"),
}
_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_ATTN = ("self_attn", "attention", "attn")
# display order of families and of members inside one (q/k/v/o, gate/up/down)
_FAMILY_ORDER = ("embeddings", "attention", "MLP", "shared experts", "experts", "router", "lm_head")
_MEMBER_ORDER = ("q", "k", "v", "o", "qkv", "gate", "up", "down")


# ----------------------------------------------------------------------------
# Quantization details from the plan


def module_role(path: str) -> tuple:
    """(family, member) of a quantizable module: ('attention', 'q'), ('MLP', 'down'),
    ('experts', 'gate'), ('router', ''), ('embeddings', ''), ('lm_head', '')."""
    parts = [p for p in _LAYER_RE.sub(".", path).split(".") if p]
    last = parts[-1] if parts else path
    member = re.sub(r"_proj$", "", last)
    if is_router(path):
        return "router", ""
    if "embed" in last or last in ("wte", "tok_embeddings"):
        return "embeddings", ""
    if last in ("lm_head", "output"):
        return "lm_head", ""
    if any(p in _ATTN or p.endswith("attn") for p in parts[:-1]):
        return "attention", member
    if any("shared_expert" in p for p in parts[:-1]):
        return "shared experts", member
    if any(p in ("switch_mlp", "experts", "block_sparse_moe") for p in parts[:-1]):
        return "experts", member
    if any(p in ("mlp", "feed_forward", "ffn") for p in parts[:-1]):
        return "MLP", member
    return ".".join(parts), ""


def _setting(t) -> tuple:
    return (t.bits, t.mode, t.group_size) if t.quantized else (None, None, None)


def _percentages(counts: list, total: int) -> list:
    """Shares in % to one decimal that add up to exactly 100.0 (largest remainder)."""
    if total <= 0:
        return [0.0] * len(counts)
    tenths = [1000 * c / total for c in counts]
    floors = [int(x) for x in tenths]
    short = 1000 - sum(floors)
    for i in sorted(range(len(counts)), key=lambda i: tenths[i] - floors[i], reverse=True)[:short]:
        floors[i] += 1
    return [f / 10 for f in floors]


def _layer_text(layers: set) -> str:
    nums = sorted(layers)
    spans, start = [], nums[0]
    for a, b in zip(nums, nums[1:] + [None]):
        if b != a + 1:
            spans.append(f"{start}" if start == a else f"{start}-{a}")
            start = b
    return ("L" if len(nums) == 1 else "layers ") + ", ".join(spans)


def quantization_rows(plan: Plan) -> list:
    """[bits, modules, % params, description] per setting (bits, mode, group),
    widest first, float first; % of the quantizable parameters, summing to 100."""
    everywhere = {}  # (family, member) -> layers it occurs in, over the whole plan
    for t in plan.tensors:
        everywhere.setdefault(module_role(t.path), set()).add(t.layer)
    groups = {}
    for t in plan.tensors:
        g = groups.setdefault(_setting(t), {"numel": 0, "roles": {}, "reasons": {}})
        g["numel"] += t.numel
        g["roles"].setdefault(module_role(t.path), set()).add(t.layer)
        if t.reason:
            g["reasons"][t.reason] = g["reasons"].get(t.reason, 0) + t.numel
    order = sorted(groups, key=lambda s: (-(s[0] or 99), s[1] or "", s[2] or 0))
    pct = _percentages([groups[s]["numel"] for s in order], sum(t.numel for t in plan.tensors))
    rows = []
    for setting, share in zip(order, pct):
        g = groups[setting]
        rows.append([_bits_label(setting), _modules_text(g["roles"], everywhere), f"{share:.1f}",
                     _description(setting, g["reasons"])])
    return rows


def _bits_label(setting: tuple) -> str:
    bits, mode, _ = setting
    if bits is None:
        return "float"
    return str(bits) if mode == "affine" else f"{bits} ({mode})"


def _modules_text(roles: dict, everywhere: dict) -> str:
    """'embeddings; attention q/k/v/o; MLP gate/up/down (L29)': members of a family
    that cover the same layers are joined; a layer list only when not all layers."""
    by_family = {}
    for (family, member), layers in roles.items():
        full = layers == everywhere[(family, member)]
        where = "" if full or None in layers else _layer_text(layers)
        by_family.setdefault((family, where), []).append(member)
    def rank(name, order):
        return (order.index(name) if name in order else len(order), name)

    parts = []
    for (family, where), members in sorted(by_family.items(),
                                           key=lambda kv: (kv[0][1] != "", rank(kv[0][0], _FAMILY_ORDER), kv[0][1])):
        names = "/".join(sorted((m for m in members if m), key=lambda m: rank(m, _MEMBER_ORDER)))
        text = f"{family} {names}".strip()
        parts.append(f"{text} ({where})" if where else text)
    return "; ".join(parts)


def _description(setting: tuple, reasons: dict) -> str:
    bits, mode, group = setting
    head = "float, kept unquantized (bf16)" if bits is None else f"{mode} {bits}-bit, group size {group}"
    top = sorted(reasons, key=reasons.get, reverse=True)
    if not top:
        return head
    shown = "; ".join(top[:3]) + (f"; … ({len(top) - 3} more)" if len(top) > 3 else "")
    return f"{head} ({shown})"


def load_plan(result, plan_file: Optional[Path] = None) -> Optional[Plan]:
    """The artifact's plan.json: --plan, else beside the artifact the result names,
    else the same artifact in this machine's cache (same key = same plan)."""
    if plan_file is not None:
        try:
            return Plan.from_json(Path(plan_file).read_text(encoding="utf-8"))
        except OSError as e:
            raise HarnessError(f"cannot read --plan {plan_file} ({e}); give the artifact's plan.json")
    candidates = []
    if result.artifact.get("path"):
        candidates.append(Path(result.artifact.get("path")) / "plan.json")
    key = result.artifact.get("key")
    if key:
        from harness.cache import cache_root
        from harness.sources import model_slug

        artifacts = cache_root() / "artifacts" / model_slug(result.model)
        candidates.append(artifacts / f"{result.recipe}-{key}" / "plan.json")
    for path in candidates:
        if path.is_file():
            try:
                return Plan.from_json(path.read_text(encoding="utf-8"))
            except (HarnessError, OSError, UnicodeDecodeError) as e:  # the card is still useful without it
                print(f"harness: warning: {path}: {e}", file=sys.stderr)
    return None


# ----------------------------------------------------------------------------
# Source: hub id and licence


def _front_matter(readme: Path) -> dict:
    try:
        text = readme.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    m = re.match(r"---\s*\n(.*?)\n---\s*\n", text, re.S)
    if not m:
        return {}
    import yaml

    try:
        data = yaml.safe_load(m.group(1))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def source_info(model: str, source_path: Optional[str]) -> tuple:
    """(hub id or None, licence or None) of the model the artifact was built from."""
    if model in KNOWN_SOURCES:
        return KNOWN_SOURCES[model]
    hub_id, licence = None, None
    if re.fullmatch(r"[\w.-]+/[\w.-]+", model) and not Path(model).exists():
        hub_id = model
    for folder in filter(None, (source_path, model)):
        folder = Path(folder)
        if not folder.is_dir():
            continue
        meta = _front_matter(folder / "README.md")
        licence = licence or meta.get("license")
        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            config = {}
        licence = licence or (config.get("license") if isinstance(config, dict) else None)
        # a hub snapshot: .../models--ORG--NAME/snapshots/<rev>
        m = re.search(r"models--([^/]+?)--([^/]+)/snapshots/", str(folder.resolve()))
        if m and hub_id is None:
            hub_id = f"{m.group(1)}/{m.group(2)}"
    return hub_id, (str(licence).lower() if licence else None)
