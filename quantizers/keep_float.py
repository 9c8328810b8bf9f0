"""float: the unquantized reference model, evaluated as a recipe like any other."""

from dataclasses import dataclass

from harness.recipe import PlanContext, Recipe, plan_from_rule


@dataclass
class FloatRecipe(Recipe):
    name = "float"
    description = "the float reference: nothing quantized (computed once, cached)"

    @property
    def params(self) -> dict:
        return {}

    def plan(self, ctx: PlanContext):
        return plan_from_rule(ctx, self.name, {}, lambda t: (None, None, None, "float reference"))


RECIPES = {"float": FloatRecipe}
