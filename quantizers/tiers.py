"""Declarative tier recipes: ordered pattern -> bits/group/mode rules, first match wins.

A tier file (TOML or YAML) looks like quantizers/tiers/tiers-3.7.toml:

    name = "my-tiers"
    description = "one line"
    [defaults]            # group_size / mode for rules that do not set them; optional bits
    group_size = 64
    mode = "affine"
    [[rules]]
    pattern = '\\.self_attn\\.'   # regex searched in the module path
    layers = ["first", "last", 7] # optional: decoder layer indices (negative ok)
    bits = 8                      # or "float"

A module no rule matches takes `defaults.bits`; without one, the file is rejected
when planning, naming the module, so nothing is quantized by accident.
"""

import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from harness.errors import HarnessError
from harness.recipe import PlanContext, Recipe, default_group, plan_from_rule

TIERS_DIR = Path(__file__).parent / "tiers"


@dataclass
class TierRule:
    pattern: re.Pattern
    bits: Optional[int]  # None = float
    group_size: Optional[int]
    mode: str
    layers: Optional[list] = None
    name: str = ""

    def matches(self, path: str, layer: Optional[int], num_layers: int) -> bool:
        if not self.pattern.search(path):
            return False
        if self.layers is None:
            return True
        if layer is None:
            return False
        wanted = set()
        for x in self.layers:
            wanted.add({"first": 0, "last": num_layers - 1}.get(x, x) if isinstance(x, str) else x % num_layers)
        return layer in wanted


@dataclass
class TierRecipe(Recipe):
    name: str
    description: str
    rules: list
    default_bits: Optional[object] = None
    source: str = ""
    spec: dict = field(default_factory=dict, repr=False)

    @property
    def params(self) -> dict:
        # the spec's hash stands for the rules (it changes whenever they do)
        spec_json = json.dumps(self.spec, sort_keys=True, default=str).encode()
        return {"tiers": self.name, "spec_sha256": hashlib.sha256(spec_json).hexdigest()[:16]}

    @classmethod
    def from_file(cls, path: Path, **options) -> "TierRecipe":
        text = Path(path).read_text(encoding="utf-8")
        try:
            if path.suffix == ".toml":
                spec = tomllib.loads(text)
            else:
                import yaml

                spec = yaml.safe_load(text)
        except Exception as e:
            raise HarnessError(f"tier file {path} does not parse ({e}); fix its syntax")
        return cls.from_spec(spec, source=str(path), **options)

    @classmethod
    def from_spec(cls, spec: dict, source: str = "", group_size=None, mode=None) -> "TierRecipe":
        if not isinstance(spec, dict) or not isinstance(spec.get("rules"), list) or not spec["rules"]:
            raise HarnessError(f"tier file {source} needs a non-empty [[rules]] list")
        defaults = dict(spec.get("defaults") or {})
        if group_size:
            defaults["group_size"] = group_size
        if mode:
            defaults["mode"] = mode
        rules = []
        for i, r in enumerate(spec["rules"]):
            where = f"tier file {source} rule {i + 1}"
            if not isinstance(r, dict) or "pattern" not in r or "bits" not in r:
                raise HarnessError(f"{where} needs `pattern` and `bits`")
            try:
                pattern = re.compile(r["pattern"])
            except re.error as e:
                raise HarnessError(f"{where}: bad regex {r['pattern']!r} ({e})")
            bits = _bits(r["bits"], where)
            rule_mode = r.get("mode", defaults.get("mode", "affine"))
            layers = r.get("layers")
            if layers is not None and (not isinstance(layers, list) or any(
                    not (isinstance(x, int) or x in ("first", "last")) for x in layers)):
                raise HarnessError(f"{where}: `layers` must be a list of integers, 'first' or 'last'")
            rules.append(TierRule(
                pattern=pattern, bits=bits,
                group_size=None if bits is None else default_group(rule_mode, r.get("group_size", defaults.get("group_size"))),
                mode=rule_mode, layers=layers, name=r.get("name", r["pattern"]),
            ))
        default_bits = defaults.get("bits")
        if default_bits is not None:
            default_bits = (_bits(default_bits, f"tier file {source} defaults"),
                            default_group(defaults.get("mode", "affine"), defaults.get("group_size")),
                            defaults.get("mode", "affine"))
        return cls(name=spec.get("name", Path(source).stem or "tiers"),
                   description=spec.get("description", "declarative tiers"),
                   rules=rules, default_bits=default_bits, source=source, spec=spec)

    def plan(self, ctx: PlanContext):
        num_layers = _num_layers(ctx)

        def rule(t):
            for r in self.rules:
                if r.matches(t.path, t.layer, num_layers):
                    return r.bits, r.group_size, r.mode, f"tier: {r.name}"
            if self.default_bits is None:
                raise HarnessError(
                    f"no rule of {self.name} matches {t.path}; add a catch-all rule or `defaults.bits`"
                )
            bits, gs, mode = self.default_bits
            return bits, gs, mode, "tier: default"

        # routers only get bits from a rule that names them explicitly
        router_rules = [r for r in self.rules if r.bits is not None and "gate" in r.pattern.pattern]
        return plan_from_rule(ctx, self.name, self.params, rule, quantize_router=bool(router_rules))


def _bits(value, where):
    if value == "float":
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 2 <= value <= 8:
        return value
    raise HarnessError(f"{where}: bits must be an integer 2-8 or \"float\", got {value!r}")


def _num_layers(ctx: PlanContext) -> int:
    layers = getattr(ctx.model, "layers", None)
    if layers is None:
        layers = getattr(getattr(ctx.model, "model", None), "layers", [])
    return max(len(layers), 1)


def builtin_tier_recipes() -> dict:
    out = {}
    for f in sorted(TIERS_DIR.glob("*.toml")):
        spec = tomllib.loads(f.read_text(encoding="utf-8"))

        def make(_f=f, **options):
            return TierRecipe.from_file(_f, **options)

        make.description = spec.get("description", "")
        out[spec.get("name", f.stem)] = make
    return out
