"""uniformN: every quantizable tensor at N bits (router and norms stay float)."""

from dataclasses import dataclass
from typing import Optional

from harness.errors import HarnessError
from harness.plan import MODES
from harness.recipe import PlanContext, Recipe, default_group, plan_from_rule


@dataclass
class UniformRecipe(Recipe):
    bits: int
    group_size: Optional[int] = None
    mode: str = "affine"
    description = "every quantizable tensor at N bits (--group-size, --mode affine|mxfp4|nvfp4|mxfp8)"

    def __post_init__(self):
        self.group_size = default_group(self.mode, self.group_size)
        allowed = MODES[self.mode][0]
        if self.bits not in allowed:
            raise HarnessError(
                f"uniform{self.bits} is not possible with mode {self.mode} "
                f"(it stores {'/'.join(map(str, sorted(allowed)))}-bit only); pick another width or mode"
            )

    @property
    def name(self) -> str:
        return f"uniform{self.bits}"

    @property
    def params(self) -> dict:
        return {"bits": self.bits, "group_size": self.group_size, "mode": self.mode}

    def plan(self, ctx: PlanContext):
        def rule(t):
            return self.bits, self.group_size, self.mode, "uniform"

        return plan_from_rule(ctx, self.name, self.params, rule)


def _factory(bits):
    def make(group_size=None, mode="affine"):
        return UniformRecipe(bits=bits, group_size=group_size, mode=mode)

    make.description = f"every quantizable tensor at {bits} bits (router, norms float); --group-size, --mode"
    return make


RECIPES = {f"uniform{b}": _factory(b) for b in (2, 3, 4, 5, 6, 8)}
