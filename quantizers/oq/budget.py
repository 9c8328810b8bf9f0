"""oQ's bit allocation under a level's bpw budget: the omlx-faithful default and the
pure-sensitivity variant. Plain functions over `Plan` tensors; no model needed.

Prices are in the oQ definition (`Plan.bpw`: bits + per-group scale/bias overhead
over the quantizable weights, float-kept ones at 16 bits), exact integer bits.
"""

import re
from dataclasses import dataclass, field
from typing import Optional

from harness.errors import HarnessError
from harness.plan import Plan, Tensor, is_router

# level: (base bits, target bpw, hard cap bpw); oq8 has no budget.
LEVELS = {
    "2": (2, 2.8, 3.0),
    "2.5": (2, 3.1, 3.3),
    "2.7": (2, 3.25, 3.35),
    "3": (3, 3.5, 3.7),
    "3.5": (3, 3.8, 4.0),
    "4": (4, 4.6, 4.7),
    "5": (5, 5.5, 5.7),
    "6": (6, 6.5, 6.7),
    "8": (8, None, None),
}
WIDTHS = (2, 3, 4, 5, 6, 8)
GROUP_SIZE = 64
MANY_EXPERTS = 150  # omlx: group size 128 for the predicate's floors at >= 150 experts
PROTECTED = ("lm_head", "embed_tokens")  # pure variant: 8-bit when the cap allows, in this order
MANDATORY = ("lm_head", "embeddings", "embed_tokens", "wte")  # faithful: omlx's mandatory 8-bit patterns
ROLE_ORDER = ("v_proj", "down_proj", "o_proj", "q_proj", "k_proj", "gate_proj", "up_proj")
_LAYER_RE = re.compile(r"layers\.(\d+)\.")


@dataclass
class ModelFacts:
    """What omlx's predicate reads from config.json."""

    num_layers: int = 0
    num_experts: int = 0
    hidden_size: int = 0

    @classmethod
    def from_config(cls, config: dict) -> "ModelFacts":
        tc = config.get("text_config") or {}

        def get(*keys):
            for k in keys:
                v = config.get(k) or tc.get(k)
                if v:
                    return int(v)
            return 0

        return cls(get("num_hidden_layers"), get("num_local_experts", "num_experts", "n_routed_experts"),
                   get("hidden_size"))

    @property
    def floor_group(self) -> int:
        return 128 if self.num_experts >= MANY_EXPERTS else GROUP_SIZE


def is_routed_expert(t: Tensor) -> bool:
    p = t.path
    return t.kind.endswith("SwitchLinear") or "switch_mlp" in p or (".experts." in p and "shared_expert" not in p)


def layer_index(path: str) -> int:
    m = _LAYER_RE.search(path)
    return int(m.group(1)) if m else -1


def fit_group(in_dim: int, group: int) -> int:
    """`group` if it divides the input dimension, else the largest of 64/32 that does."""
    for g in (group, 64, 32):
        if g <= group and in_dim % g == 0:
            return g
    return group  # the plan's validation names the tensor


@dataclass
class Budget:
    """Running price of a plan (exact integer bits)."""

    tensors: list
    target: Optional[float]
    cap: float
    total: int = 0
    numel: int = 0
    boosts: dict = field(default_factory=dict)  # path -> reason

    def __post_init__(self):
        self.numel = sum(t.numel for t in self.tensors)
        self.total = sum(int(t.stored_bits()) for t in self.tensors)

    @property
    def bpw(self) -> float:
        return self.total / max(self.numel, 1)

    @property
    def reached(self) -> bool:
        return self.target is not None and self.bpw >= self.target

    def _delta(self, t: Tensor, bits: int, group: int, mode: str) -> int:
        new = Tensor(t.path, t.kind, t.shape, bits, fit_group(t.shape[-1], group), mode)
        return int(new.stored_bits()) - int(t.stored_bits())

    def set(self, t: Tensor, bits: int, group: int, mode: str, reason: str, capped: bool = True) -> bool:
        """Give `t` this setting if it keeps bpw <= cap (or unconditionally when not `capped`)."""
        delta = self._delta(t, bits, group, mode)
        if capped and (self.total + delta) / self.numel > self.cap:
            return False
        t.bits, t.group_size, t.mode = bits, fit_group(t.shape[-1], group), mode
        self.total += delta
        self.boosts[t.path] = reason
        return True

    def raise_to(self, t: Tensor, widths, reason: str, group: Optional[int] = None) -> bool:
        """Give `t` the first width in `widths` (above its own) that keeps bpw <= cap."""
        for bits in widths:
            if bits > t.bits and self.set(t, bits, group or t.group_size, "affine", reason):
                return True
        return False


def _role_rank(path: str) -> int:
    name = path.rsplit(".", 1)[-1]
    return ROLE_ORDER.index(name) if name in ROLE_ORDER else len(ROLE_ORDER)


def _tier_max(r: float, cur: int) -> int:
    if r >= 0.5:
        return 8
    return min(cur + (2 if r >= 0.2 else 1), 8)


def _start(plan: Plan, level: str, target: Optional[float]) -> tuple:
    base, level_target, cap = LEVELS[level]
    budget = Budget(plan.tensors, level_target if target is None else target, cap)
    if budget.bpw > cap:
        raise HarnessError(
            f"oq{level} costs {budget.bpw:.3f} bpw before any boost, above its {cap} cap; "
            "use --group-size 64 (the oQ default) or 128"
        )
    return base, budget


# --- the omlx-faithful allocation (default `oqN`) ----------------------------------------

def role_floor(path: str, base: int, facts: ModelFacts):
    """omlx's fixed role settings, decided before any pricing: (bits, group, mode), False
    for float, None when the path has no fixed role."""
    low = path.lower()
    g = facts.floor_group
    if is_router(path) and not path.endswith("shared_expert_gate"):
        return False
    if "shared_expert_gate" in path and "gate_proj" not in path:
        return 8, 64, "affine"
    if "shared_expert" in path:
        return max(8, base), g, "affine"
    if any(p in low for p in ("ssm_alpha", "ssm_beta", "a_log", "time_decay", "time_faaaa")) \
            or path.endswith(".D") or low.endswith("dt_bias"):
        return False  # SSM parameters stay float
    if "conv1d" in low and "linear_attn" in low:
        return max(8, base), g, "affine"
    if "linear_attn.out_proj" in low:
        return max(5, base), g, "affine"
    if any(p in path for p in ("ssm_output", "ssm_out", "lora.2")):
        return max(8, base), g, "affine"
    return None


def protection_floor(path: str, base: int, sensitive: bool, facts: ModelFacts) -> Optional[int]:
    """omlx's full-protection predicate as a minimum width for a non-routed tensor."""
    is_moe = facts.num_experts > 0
    big = facts.num_experts >= 512 and facts.hidden_size >= 4096
    n = None
    if any(p in path for p in ("lm_head", "output.weight", "classifier")):
        n = 6
    elif "cross_attn" in path and "o_proj" in path:
        n = 6
    elif any(p in path for p in ("kv_a_proj_with_mqa", "kv_b_proj", "q_a_proj", "q_b_proj")):
        n = 6
    elif "o_proj" in path and "shared_expert" not in path and not is_moe:
        n = 5
    elif big and "gate_proj" in path:
        n = 4
    elif big and "down_proj" in path:
        n = 3
    elif any(p in path for p in ("v_proj", "v_a_proj", "v_b_proj")):
        n = 6 if sensitive else None
    elif any(p in path for p in ("down_proj", "w2", "mlp.fc2", "wo")):
        n = 6 if sensitive else 5
    elif any(p in path for p in ("q_proj", "k_proj", "qkv_proj", "in_proj_qkv", "attn_qkv")):
        n = 5 if sensitive else None
    elif any(p in path for p in ("in_proj_z", "in_proj_a", "in_proj_b", "delta_net",
                                 "mixer.in_proj", "mixer.out_proj", "x_proj", "dt_proj")):
        n = 5
    return None if n is None else max(n, base)


def sensitive_layers(scores: dict, num_layers: int) -> set:
    """omlx: the top quarter of layers by measured sensitivity (position-based without scores)."""
    if scores:
        ranked = sorted(scores.values(), reverse=True)
        threshold = ranked[max(0, len(ranked) // 4 - 1)]
        return {i for i, s in scores.items() if s >= threshold}
    return {i for i in range(num_layers) if i < num_layers // 8 or i >= 7 * num_layers // 8}


def allocate_faithful(plan: Plan, scores: dict, level: str, adjustable: set, order: list,
                      facts: ModelFacts, target: Optional[float] = None) -> Budget:
    """omlx's `_build_quant_plan`: mandatory 8-bit embeddings/lm_head, the oq3.5 routed
    down_proj floor, the full-protection floors (cap-checked, model order), then every
    non-routed tensor of the decoder, most sensitive layer first, raised to the highest
    width its tier allows that keeps bpw <= cap: the budget is spent up to the cap.
    Below the target after that, boosted tensors go toward 8 bits; oq2.5/2.7 then raise
    routed projections layer by layer."""
    base, budget = _start(plan, level, target)
    rank = {p: i for i, p in enumerate(order)}
    movable = sorted((t for t in plan.tensors if t.path in adjustable), key=lambda t: (rank.get(t.path, 1 << 30), t.path))
    score = {i: float(v) for i, v in scores.items()}
    top = max(score.values(), default=0.0)
    sensitive = sensitive_layers(score, facts.num_layers)

    for t in movable:  # 1. mandatory
        if any(p in t.path for p in MANDATORY):
            budget.set(t, 8, 64, "affine", "mandatory: 8-bit")
    if level == "3.5":  # 2. routed down_proj +1 (omlx adds it without a cap check)
        for t in movable:
            if is_routed_expert(t) and t.path.endswith(("down_proj", "w2")) and t.path not in budget.boosts:
                budget.set(t, base + 1, GROUP_SIZE, "affine", "oq3.5 floor: routed down_proj +1", capped=False)
    for t in movable:  # 3. protection floors
        if t.path in budget.boosts or is_routed_expert(t):
            continue
        floor = protection_floor(t.path, base, layer_index(t.path) in sensitive, facts)
        if floor is not None and floor > t.bits:
            budget.set(t, floor, facts.floor_group, "affine", f"floor: {floor}-bit")
    # 4. sensitivity tiers up to the cap (no stop at the target)
    candidates = [t for t in movable if not is_routed_expert(t) and layer_index(t.path) >= 0]
    for t in sorted(candidates, key=lambda t: -score.get(layer_index(t.path), 0.0)):  # stable: model order
        i = layer_index(t.path)
        r = score.get(i, 0.0) / top if top > 0 else 0.0
        budget.raise_to(t, [w for w in reversed(WIDTHS) if t.bits < w <= _tier_max(r, t.bits)],
                        f"sensitivity: L{i} r={r:.2f}", group=GROUP_SIZE)
    if not budget.reached:  # 5. fallback toward 8 bits, boosted tensors only
        boosted = [t for t in movable if t.path in budget.boosts and not is_routed_expert(t) and t.bits < 8]
        for t in sorted(boosted, key=lambda t: -score.get(layer_index(t.path), 0.0)):
            budget.raise_to(t, (8, 6, 5, 4, 3), f"fill: L{layer_index(t.path)}", group=GROUP_SIZE)
            if budget.reached:
                break
    if level in ("2.5", "2.7") and not budget.reached:  # 6. routed layer boosts
        _routed_layer_boosts(budget, movable, score)
    return budget


def _routed_layer_boosts(budget: Budget, movable: list, score: dict) -> None:
    """oq2.5/2.7: whole routed projections of a layer to 3 bits (down first, then gate+up
    together), most sensitive layer first, each group only if all of it fits the cap."""
    for names in (("down_proj", "w2"), ("gate_proj", "up_proj", "w1", "w3")):
        groups = {}
        for t in movable:
            if is_routed_expert(t) and t.path.rsplit(".", 1)[-1] in names and t.bits < 3:
                groups.setdefault(layer_index(t.path), []).append(t)
        for i in sorted(groups, key=lambda i: (-score.get(i, 0.0), i)):
            if budget.reached:
                return
            delta = sum(budget._delta(t, 3, GROUP_SIZE, "affine") for t in groups[i])
            if (budget.total + delta) / budget.numel <= budget.cap:
                for t in groups[i]:
                    budget.set(t, 3, GROUP_SIZE, "affine", f"routed layer boost: L{i}", capped=False)


# --- the pure-sensitivity variant (`oqN-pure`) ----------------------------------------------

def allocate(plan: Plan, scores: dict, level: str, adjustable: set, target: Optional[float] = None) -> Budget:
    """Raise widths of `plan` (all `adjustable` paths at base bits) within the level's budget,
    driven by the measured sensitivity only, stopping at the target (`target` overrides the
    level's target; the cap always stays)."""
    base, budget = _start(plan, level, target)
    movable = [t for t in plan.tensors if t.path in adjustable]
    top = max(scores.values(), default=0.0)
    ratio = {k: (v / top if top > 0 else 0.0) for k, v in scores.items()}
    by_layer = sorted(scores, key=lambda i: (-scores[i], i))

    # 1. protected: lm_head, embed_tokens -> 8-bit whenever the cap allows (not a boost: no target check)
    for name in PROTECTED:
        for t in movable:
            if t.path.rsplit(".", 1)[-1] == name:
                budget.raise_to(t, (8,), "protected: 8-bit")

    layer_tensors = {i: sorted((t for t in movable if t.layer == i), key=lambda t: (_role_rank(t.path), t.path))
                     for i in by_layer}
    routed = {i: [t for t in ts if is_routed_expert(t)] for i, ts in layer_tensors.items()}
    dense = {i: [t for t in ts if not is_routed_expert(t)] for i, ts in layer_tensors.items()}

    # 2. oq3.5: routed experts' down_proj +1 (oQ's "super weights" floor), most sensitive layers first
    if level == "3.5":
        for i in by_layer:
            for t in routed[i]:
                if t.path.endswith("down_proj"):
                    budget.raise_to(t, (base + 1,), "oq3.5 floor: routed down_proj +1")

    # 3. sensitivity tiers, most sensitive block first, tensor by tensor
    for i in by_layer:
        for t in dense[i]:
            if budget.reached:
                return budget
            top_bits = _tier_max(ratio[i], t.bits)
            budget.raise_to(t, [w for w in reversed(WIDTHS) if w <= top_bits],
                            f"sensitivity: L{i} r={ratio[i]:.2f}")
    # 4. tiers exhausted below the target: same order, toward 8 bits
    for i in by_layer:
        for t in dense[i]:
            if budget.reached:
                return budget
            budget.raise_to(t, tuple(reversed(WIDTHS)), f"sensitivity (fill): L{i} r={ratio[i]:.2f}")
    # 5. oq2.5/oq2.7: routed experts to 3 bits by layer, down_proj first, then gate+up
    if level in ("2.5", "2.7"):
        for names in (("down_proj",), ("gate_proj", "up_proj")):
            for i in by_layer:
                for t in routed[i]:
                    if t.path.rsplit(".", 1)[-1] in names and not budget.reached:
                        budget.raise_to(t, (3,), f"routed layer boost: L{i}")
    return budget
