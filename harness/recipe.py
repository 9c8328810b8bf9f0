"""The recipe contract: what a quantization recipe is and the helper most recipes use.

A recipe turns a float model into a `Plan` (per-tensor bits / group size / mode, or
kept float). Recipes live in `harness.quantizers` (built-ins, one module per family),
in third-party packages (the `harness.recipes` entry-point group), in tier files, or
in a user's `file.py:Name`; `harness.recipes` finds them by name.
"""

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from harness.errors import HarnessError
from harness.plan import MODE_DEFAULT_GROUP, Plan, Tensor, describe_model, is_router


@dataclass
class PlanContext:
    """What a recipe may look at when it plans."""

    model: Any  # float mlx model (lazily loaded: weights are read only if touched)
    model_path: Path
    config: dict
    tokenizer: Any = None  # loaded on demand by `load_tokenizer`
    seed: int = 0
    progress: bool = True
    out_dir: Optional[Path] = None  # where side files (sensitivity.json) may be written
    _modules: Optional[tuple] = field(default=None, repr=False)

    def describe(self) -> tuple:
        if self._modules is None:
            self._modules = describe_model(self.model)
        return self._modules

    def load_tokenizer(self):
        if self.tokenizer is None:
            from mlx_lm.utils import load_tokenizer

            self.tokenizer = load_tokenizer(self.model_path)
        return self.tokenizer


# A rule maps one module to (bits, group_size, mode, reason) or (None, ..., reason) for float.
Rule = Callable[[Tensor], tuple]


def plan_from_rule(ctx: PlanContext, recipe: str, params: dict, rule: Rule,
                   quantize_router: bool = False, summary: Optional[dict] = None) -> Plan:
    """Build a Plan by applying `rule` to every quantizable module.

    Composition with the model's own `quant_predicate` (mlx-lm models such as
    MiniMax define one): a module the model refuses (False) stays float; the
    router is protected (kept float) unless `quantize_router`, in which case the
    recipe's rule decides it. Other settings the model asks for (a dict) are
    honoured. A recipe's rule never silently replaces the model's predicate.
    """
    modules, other_params, dtype_bytes = ctx.describe()
    model_predicate = getattr(ctx.model, "quant_predicate", None)
    named = dict(ctx.model.named_modules()) if model_predicate else {}
    tensors = []
    for path, info in modules.items():
        t = Tensor(path=info.path, kind=info.kind, shape=list(info.shape))
        own = model_predicate(path, named[path]) if model_predicate else True
        if own is False:
            t.reason = "model's quant_predicate keeps it float"
        elif is_router(path) and not quantize_router:
            # float is at least as precise as any setting the model asks for (mlx-lm's
            # MiniMax asks for an 8-bit router): say so instead of dropping it silently
            t.reason = "router: protected, kept float" + (
                f" (overrides the model's quant_predicate {_setting(own)}: float is more precise)"
                if isinstance(own, dict) else "")
        elif isinstance(own, dict) and not is_router(path):
            # the architecture asks for specific settings here: honour them
            t.bits, t.group_size = own["bits"], own.get("group_size", 64)
            t.mode = own.get("mode", "affine")
            t.reason = "model's own quant_predicate"
        else:
            t.bits, t.group_size, t.mode, t.reason = rule(t)
            if t.bits is None:
                t.group_size = t.mode = None
        tensors.append(t)
    return Plan(recipe=recipe, params=dict(params), tensors=tensors, other_params=other_params,
                dtype_bytes=dtype_bytes, summary=summary or {})


def _setting(own: dict) -> str:
    return f"{own.get('bits', '?')}-bit {own.get('mode', 'affine')} g{own.get('group_size', 64)}"


class Recipe(abc.ABC):
    """What `harness build` needs from a recipe.

    Subclass it (or provide the same attributes: the registry checks them). `params`
    is everything that changes the plan; it is hashed into the artifact's cache key,
    so two recipes with equal name and params must make equal plans.
    """

    # Declared by every recipe (class attribute, dataclass field or property); no
    # defaults here, so dataclass recipes may declare them as plain fields:
    name: str  # what the user types (--recipe NAME); also the results directory name
    description: str  # one line, shown by `harness recipes`

    @property
    @abc.abstractmethod
    def params(self) -> dict:
        """JSON-serialisable settings that determine the plan."""

    @abc.abstractmethod
    def plan(self, ctx: PlanContext) -> Plan:
        """The per-tensor plan for the model in `ctx` (no weights are written)."""

    def view(self, plan: Plan) -> Optional[str]:
        """Optional recipe-specific detail printed by `harness plan` (e.g. oQ's ranking)."""
        return None


REQUIRED_ATTRIBUTES = ("name", "description", "params", "plan")


def check_recipe(obj, origin: str):
    """A recipe object from a plugin or a user file must have the contract's attributes."""
    missing = [a for a in REQUIRED_ATTRIBUTES if not hasattr(obj, a)]
    if missing:
        raise HarnessError(f"recipe from {origin} lacks {', '.join(missing)}; subclass harness.recipe.Recipe")
    return obj


def default_group(mode: str, group_size: Optional[int]) -> int:
    if mode not in MODE_DEFAULT_GROUP:
        raise HarnessError(f"unknown quantization mode {mode!r}; use one of {', '.join(MODE_DEFAULT_GROUP)}")
    return group_size or MODE_DEFAULT_GROUP[mode]
