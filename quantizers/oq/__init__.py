"""oQ levels (oq2 ... oq8): sensitivity-measured mixed precision under a bpw budget.

After omlx's oQ ("oMLX universal dynamic quantization", Apache-2.0). Two variants,
so they can be evaluated side by side:

`oqN` (default) follows the public omlx code:
* role floors before any pricing: shared experts 8-bit, shared_expert_gate 8-bit
  g64, linear-attention conv1d 8-bit and out_proj >= 5-bit, SSM parameters and the
  router float; the predicate's floors use group size 128 when the model has
  >= 150 experts (base widths and boosts stay g64, as in published oQ checkpoints);
* sensitivity (`oq.sensitivity`) measured with those same widths (the level's own
  predicate), on the float model, or on a quantized proxy (`--sensitivity-model`);
* budget (`oq.budget.allocate_faithful`): embeddings/lm_head 8-bit when the cap
  allows, oq3.5's routed down_proj +1, the full-protection floors (lm_head 6, dense
  o_proj 5, down_proj 5 or 6, v/q/k_proj raised in the top quarter of layers by
  sensitivity), then every non-routed decoder tensor, most sensitive layer first,
  raised to the highest width its tier allows (r >= 0.5: 8, >= 0.2: +2, else +1)
  that keeps bpw <= cap: the budget is spent up to the cap, not stopped at the target;
* oq8: every quantizable tensor mxfp8 g32, router float (the published oQ8).

`oqN-pure` is the pure-sensitivity variant: no role or protection floors (only the
model's own quant_predicate and a float router), lm_head/embed_tokens 8-bit when the
cap allows, boosts tensor by tensor (v, down, o, q, k, gate, up) in the most
sensitive blocks, stopping at the target; oq8-pure is affine 8-bit g64.

Deviations of the default from the public code, and why:
* role-fixed tensors (shared experts, conv1d ...) are priced from the start; omlx
  prices them at base bits and writes them wider, so its reported bpw is low.
* mxfp8 scales are priced at 8 bits per 32 weights (what mlx stores); omlx counts 16.
* an 8-bit boost is affine g64 (the published checkpoints); newer omlx code writes mxfp8.
* a floor's g128 falls back to g64/g32 when it does not divide the input dimension.
* on CPU-only machines the default calibration is 16 x 256 (CPU_CALIBRATION).
"""

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from harness.cache import sha256_bytes, sha256_file
from harness.data.calibration import calibration_size, file_sha256, load_calibration
from harness.errors import HarnessError
from harness.plan import Plan, is_router
from harness.recipe import PlanContext, Recipe, plan_from_rule
from harness.quantizers.oq.budget import (GROUP_SIZE, LEVELS, WIDTHS, Budget, ModelFacts, allocate,  # noqa: F401
                                          allocate_faithful, fit_group, role_floor)
from harness.quantizers.oq.sensitivity import (decoder_layers, load_sensitivity, measure_proxy_sensitivity,  # noqa: F401
                                               measure_sensitivity, save_sensitivity)

OQ_VERSION = 3  # bump when the allocation or the measurement changes (invalidates cached plans)
VARIANTS = ("faithful", "pure")


@dataclass
class OQRecipe(Recipe):
    level: str
    group_size: int = GROUP_SIZE
    target_bpw: Optional[float] = None  # default: the level's target
    calibration: Optional[str] = None  # .jsonl/.txt; default: the shipped set
    calib_samples: Optional[int] = None
    calib_seq_len: Optional[int] = None
    sensitivity: Optional[str] = None  # reuse a sensitivity.json instead of measuring
    variant: str = "faithful"  # or "pure"
    sensitivity_model: Optional[str] = None  # quantized proxy to measure on (omlx's --sensitivity-model)
    description = "oQ: measured per-block sensitivity, mixed 2-8 bit widths under the level's bpw target/cap"

    def __post_init__(self):
        if self.level not in LEVELS:
            raise HarnessError(f"unknown oQ level {self.level!r}; use one of {', '.join('oq' + k for k in LEVELS)}")
        if self.variant not in VARIANTS:
            raise HarnessError(f"unknown oQ variant {self.variant!r}; use {' or '.join(VARIANTS)}")
        base, target, cap = LEVELS[self.level]
        if self.target_bpw is not None:
            if cap is None:
                raise HarnessError("oq8 has no bpw budget; drop --target-bpw (or use oq6 / dynamic)")
            if not math.isfinite(self.target_bpw) or self.target_bpw > cap:
                raise HarnessError(f"--target-bpw {self.target_bpw} is above oq{self.level}'s {cap} cap; "
                                   f"pick a target <= {cap} or a higher level")
            # every tensor at base bits (plus group overhead) already costs more than `base`:
            # a target at or below it cannot be met by raising widths
            if self.target_bpw <= base:
                raise HarnessError(f"--target-bpw {self.target_bpw} is not above oq{self.level}'s base of {base} "
                                   f"bits; pick a target in ({base}, {cap}] or a lower level")
        self.target = self.target_bpw if self.target_bpw is not None else target
        self.cap = cap
        if self.sensitivity is not None and not Path(self.sensitivity).is_file():
            raise HarnessError(f"sensitivity file {self.sensitivity} not found; check the path")
        if self.sensitivity is not None and self.sensitivity_model is not None:
            raise HarnessError("--sensitivity and --sensitivity-model both give the sensitivities; pass one")
        self.calib_samples, self.calib_seq_len = calibration_size(self.calib_samples, self.calib_seq_len)

    @property
    def name(self) -> str:
        return f"oq{self.level}" + ("-pure" if self.variant == "pure" else "")

    @property
    def params(self) -> dict:
        p = {"level": self.level, "group_size": self.group_size, "oq_version": OQ_VERSION, "variant": self.variant}
        if self.cap is None:
            return p
        p.update(target_bpw=self.target, cap_bpw=self.cap)
        if self.sensitivity is not None:
            p["sensitivity_sha256"] = sha256_file(Path(self.sensitivity))
        else:
            p.update(calibration_sha256=file_sha256(self.calibration), calib_samples=self.calib_samples,
                     calib_seq_len=self.calib_seq_len)
            if self.sensitivity_model is not None:
                from harness.sources import fingerprint, resolve_model

                p["sensitivity_model"] = fingerprint(resolve_model(self.sensitivity_model))
        return p

    # -- planning --
    def _base_rule(self, facts: ModelFacts):
        base, gs, level, faithful = LEVELS[self.level][0], self.group_size, self.level, self.variant == "faithful"

        def rule(t):
            if faithful and level == "8":  # the published oQ8
                return 8, 32, "mxfp8", "oq8: mxfp8 g32"
            if faithful:
                role = role_floor(t.path, base, facts)
                if role is False:
                    return None, None, None, "role: kept float"
                if role is not None:
                    bits, g, mode = role
                    return bits, fit_group(t.shape[-1], g), mode, f"role floor: {bits}-bit"
            return base, fit_group(t.shape[-1], gs), "affine", f"oq{level}: base {base}-bit"

        return rule

    def plan(self, ctx: PlanContext) -> Plan:
        base = LEVELS[self.level][0]
        facts = ModelFacts.from_config(ctx.config or {})
        plan = plan_from_rule(ctx, self.name, self.params, self._base_rule(facts))
        if self.cap is None:  # oq8: nothing to measure
            setting = "mxfp8 g32" if self.variant == "faithful" else f"affine g{self.group_size}"
            plan.summary = {"level": self.name, "base_bits": 8, "group_size": plan_group(plan),
                            "budget": f"none (all 8-bit {setting})"}
            return plan
        scores, calib = self._sensitivity(ctx, base, plan)
        adjustable = {t.path for t in plan.tensors if t.reason.startswith(f"oq{self.level}: base")}
        if self.variant == "faithful":
            budget = allocate_faithful(plan, scores, self.level, adjustable, module_order(ctx.model), facts,
                                       self.target)
        else:
            budget = allocate(plan, scores, self.level, adjustable, self.target)
        decided = {t.path: (t.bits, t.group_size, t.mode, budget.boosts.get(t.path, t.reason)) for t in plan.tensors}
        final = plan_from_rule(ctx, self.name, self.params, lambda t: decided[t.path])
        final.summary = self._summary(final, scores, calib, base, facts)
        return final

    def _sensitivity(self, ctx: PlanContext, base: int, base_plan: Plan) -> tuple:
        layers, _ = decoder_layers(ctx.model)
        if self.sensitivity is not None:
            scores, meta = load_sensitivity(self.sensitivity, len(layers))
            return scores, dict(meta.get("calibration") or {}, reused=Path(self.sensitivity).name)
        from harness.sources import fingerprint, load_float, resolve_model

        widths = {t.path: (t.bits, t.group_size, t.mode) for t in base_plan.tensors if t.quantized}
        proxy = resolve_model(self.sensitivity_model) if self.sensitivity_model else None
        file = self.calibration
        key_src = [fingerprint(Path(ctx.model_path)), sorted(widths.items()), file_sha256(file), self.calib_samples,
                   self.calib_seq_len, ctx.seed, OQ_VERSION, _mlx_version(), fingerprint(proxy) if proxy else None]
        key = sha256_bytes(json.dumps(key_src).encode())[:16]
        saved = (Path(ctx.out_dir) / f"sensitivity-{Path(ctx.model_path).name}-{key}.json") if ctx.out_dir else None
        if saved is not None and saved.is_file():
            try:
                scores, meta = load_sensitivity(saved, len(layers))
                _note(ctx, f"oQ: reusing sensitivities from {saved}")
                return scores, dict(meta.get("calibration") or {})
            except HarnessError:
                pass  # corrupt cache entry: measure again
        calib = load_calibration(ctx.load_tokenizer(), file, self.calib_samples, self.calib_seq_len, ctx.seed)
        t0 = time.time()
        if proxy is not None:
            proxy_model, _ = load_float(proxy, lazy=True)
            if len(decoder_layers(proxy_model)[0]) != len(layers):
                raise HarnessError(f"--sensitivity-model {self.sensitivity_model} has "
                                   f"{len(decoder_layers(proxy_model)[0])} layers, the model {len(layers)}; "
                                   "pass a quantized copy of this model")
            scores = measure_proxy_sensitivity(proxy_model, calib.tokens, progress=ctx.progress)
            metric = "proxy: each quantized layer re-quantized at bits-1, relative MSE of the block output"
        else:
            def lookup(path, module):
                return widths.get(path)

            scores = measure_sensitivity(ctx.model, calib.tokens, base, self.group_size,
                                         weights_dir=Path(ctx.model_path), progress=ctx.progress, widths=lookup,
                                         partial=saved.with_suffix(".partial.json") if saved else None,
                                         partial_key=key)
            metric = "mean((out_f - out_q)^2) / mean(out_f^2) per decoder block, teacher-forced"
        seconds = time.time() - t0
        if saved is not None:
            save_sensitivity(saved, scores, {
                "model": Path(ctx.model_path).name, "base_bits": base, "group_size": self.group_size,
                "calibration": calib.describe(), "seconds": round(seconds, 1), "metric": metric,
                "proxy": self.sensitivity_model})
            _note(ctx, f"oQ: sensitivities measured in {seconds:.1f} s, saved to {saved} (reuse: --sensitivity)")
        return scores, calib.describe()

    def _summary(self, plan: Plan, scores: dict, calib: dict, base: int, facts: ModelFacts) -> dict:
        boosted = [t for t in plan.tensors if t.quantized and t.bits > base]
        promoted = [t.path.rsplit(".", 1)[-1] for t in boosted if t.layer is None and t.bits == 8]
        promoted += [f"L{i}" for i in sorted({t.layer for t in boosted if t.layer is not None and t.bits == 8})]
        summary = {
            "level": self.name,
            "variant": "omlx-faithful" if self.variant == "faithful" else "pure sensitivity",
            "base_bits": base,
            "group_size": self.group_size,
            "target_bpw": self.target,
            "cap_bpw": self.cap,
            "effective_bpw": round(plan.bpw, 4),
            "boosts": len(boosted),
            "promoted_to_8bit": promoted,
            "boosted_layers": [f"L{i}" for i in sorted({t.layer for t in boosted if t.layer is not None})],
            "sensitivity": {str(k): v for k, v in sorted(scores.items())},
        }
        if facts.num_experts >= 150 and self.variant == "faithful":
            summary["floor_group_size"] = facts.floor_group
        if self.sensitivity_model:
            summary["sensitivity_model"] = self.sensitivity_model
        if "reused" in calib:
            summary["sensitivity_file"] = calib["reused"]
        if calib.get("sha256"):
            summary["calibration"] = calib.get("source")
            summary["calibration_sha256"] = calib["sha256"]
            summary["calibration_samples"] = (f"{calib.get('samples')} x {calib.get('seq_len')} tokens, "
                                              f"seed {calib.get('seed')}")
            summary["calibration_categories"] = calib.get("categories", {})
        return summary


    def view(self, plan: Plan) -> str:
        """The card-style summary and the per-layer sensitivity ranking."""
        from tabulate import tabulate

        s = plan.summary
        if "sensitivity" not in s:
            return f"{plan.recipe}: no budget, {s.get('budget', 'every quantizable tensor 8-bit')}"
        lines = [f"{plan.recipe} ({s.get('variant', 'pure sensitivity')}): base {s['base_bits']}-bit g{s['group_size']}, target {s['target_bpw']} / cap "
                 f"{s['cap_bpw']} bpw -> effective {s['effective_bpw']:.3f} bpw, {s['boosts']} boosts",
                 "Key layers promoted to 8-bit: " + (", ".join(s["promoted_to_8bit"]) or "none")]
        if s.get("calibration"):
            lines.append(f"calibration: {s['calibration']} (sha256 {s['calibration_sha256'][:12]}), "
                         f"{s['calibration_samples']}")
        scores = {int(k): v for k, v in s["sensitivity"].items()}
        top = max(scores.values(), default=0.0) or 1.0
        per_layer = {}
        for t in sorted(plan.tensors, key=lambda t: (_display_rank(t.path), t.path)):
            if t.layer is not None:
                per_layer.setdefault(t.layer, []).append(f"{_short(t.path)}{t.bits if t.quantized else 'f'}")
        rows = []
        for rank, i in enumerate(sorted(scores, key=lambda i: (-scores[i], i)), 1):
            r = scores[i] / top
            tier = "8-bit" if r >= 0.5 else "+2" if r >= 0.2 else "+1"
            rows.append((rank, f"L{i}", f"{scores[i]:.3e}", f"{r:.2f}", tier, " ".join(per_layer.get(i, []))))
        lines.append(tabulate(rows, headers=["rank", "layer", "sensitivity", "r", "tier", "widths (bits)"]))
        return "\n".join(lines)


def _display_rank(path: str) -> int:
    order = ("q_proj", "k_proj", "v_proj", "o_proj", "gate", "gate_proj", "up_proj", "down_proj")
    name = path.rsplit(".", 1)[-1]
    return order.index(name) if name in order else len(order)


def _short(path: str) -> str:
    """'model.layers.3.self_attn.q_proj' -> 'q', '...switch_mlp.up_proj' -> 'x.up', router -> 'router'."""
    if is_router(path):
        return "router:"
    name = path.rsplit(".", 1)[-1].removesuffix("_proj")
    return f"x.{name}:" if ("switch_mlp" in path or ".experts." in path) else f"{name}:"


def _mlx_version() -> str:
    from harness.provenance import package_versions

    v = package_versions()
    return f"{v.get('mlx')}/{v.get('mlx-lm')}"


def _note(ctx: PlanContext, message: str) -> None:
    if ctx.progress:
        print(message, file=sys.stderr)


def plan_group(plan: Plan) -> int:
    groups = [t.group_size for t in plan.tensors if t.quantized]
    return max(set(groups), key=groups.count) if groups else GROUP_SIZE


def module_order(model) -> list:
    """Quantizable module paths in the model's own order (omlx walks leaf modules this way;
    the faithful allocation breaks ties by it)."""
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    return [p for p, m in tree_flatten(model.leaf_modules(), is_leaf=nn.Module.is_module)
            if hasattr(m, "to_quantized")]


def _factory(level: str, variant: str):
    def make(group_size=None, mode=None, target_bpw=None, calibration=None, calib_samples=None,
             calib_seq_len=None, sensitivity=None, sensitivity_model=None):
        if mode not in (None, "affine"):
            raise HarnessError(f"oQ quantizes in affine mode only (got --mode {mode}); drop --mode")
        return OQRecipe(level=level, group_size=group_size or GROUP_SIZE, target_bpw=target_bpw,
                        calibration=calibration, calib_samples=calib_samples, calib_seq_len=calib_seq_len,
                        sensitivity=sensitivity, variant=variant, sensitivity_model=sensitivity_model)

    base, target, cap = LEVELS[level]
    if variant == "faithful":
        make.description = (f"oQ{level} as omlx publishes it: base {base}-bit g64, role/protection floors, "
                            f"sensitivity boosts up to the {cap} cap (target {target})"
                            if cap else "oQ8 as published: every quantizable tensor mxfp8 g32, router float")
    else:
        make.description = (f"oQ{level} pure sensitivity: base {base}-bit g64, measured boosts only, "
                            f"stops at the {target} target (cap {cap})"
                            if cap else "oQ8 pure: every quantizable tensor affine 8-bit g64")
    return make


RECIPES = {f"oq{level}{suffix}": _factory(level, variant)
           for level in LEVELS for variant, suffix in (("faithful", ""), ("pure", "-pure"))}
