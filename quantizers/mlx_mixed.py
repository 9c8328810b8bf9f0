"""mlx-mixed-L-H: mlx-lm's own mixed recipes (llama.cpp Q4_K_M-like), as baselines.

Reuses mlx-lm's `mixed_quant_predicate_builder`: v_proj/down_proj of the first and
last eighth of the layers (and every third in between) and lm_head get the high
width, everything else the low width.
"""

from dataclasses import dataclass

from harness.errors import HarnessError
from harness.recipe import PlanContext, Recipe, plan_from_rule


@dataclass
class MlxMixedRecipe(Recipe):
    low: int
    high: int
    group_size: int = 64

    @property
    def name(self) -> str:
        return f"mlx-mixed-{self.low}-{self.high}"

    description = "mlx-lm's mixed_L_H recipe (Q4_K_M-like layer choice) as a baseline"

    @property
    def params(self) -> dict:
        return {"recipe": f"mixed_{self.low}_{self.high}", "group_size": self.group_size}

    def plan(self, ctx: PlanContext):
        from mlx_lm.convert import mixed_quant_predicate_builder

        try:
            predicate = mixed_quant_predicate_builder(
                f"mixed_{self.low}_{self.high}", ctx.model, self.group_size
            )
        except ValueError as e:
            raise HarnessError(f"{self.name} does not fit this model ({e}); use uniformN or a tier file")

        def rule(t):
            d = predicate(t.path, None)
            return d["bits"], d["group_size"], d.get("mode", "affine"), f"mlx-lm mixed_{self.low}_{self.high}"

        return plan_from_rule(ctx, self.name, self.params, rule)


def _factory(low, high):
    def make(group_size=64):
        return MlxMixedRecipe(low, high, group_size)

    make.description = f"mlx-lm's mixed_{low}_{high} (Q4_K_M-like: {high}-bit for v/down_proj of key layers, lm_head)"
    return make


RECIPES = {f"mlx-mixed-{lo}-{hi}": _factory(lo, hi) for lo, hi in ((2, 6), (3, 4), (3, 6), (4, 6))}
