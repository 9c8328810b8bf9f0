"""Built-in quantization recipes (one module per recipe family).

`harness.recipes` reads BUILTIN_RECIPES; third parties register their own through
the `harness.recipes` entry-point group.
"""

from . import dynamic, keep_float, mlx_mixed, oq, uniform
from .tiers import builtin_tier_recipes

BUILTIN_RECIPES = {
    **keep_float.RECIPES,
    **uniform.RECIPES,
    **mlx_mixed.RECIPES,
    **builtin_tier_recipes(),
    **oq.RECIPES,
    **dynamic.RECIPES,
}
