"""Recipe plugins: registry, lookup and the shared plan-building helper.

A recipe is any object with

    name: str
    description: str          # one line, shown by `harness recipes`
    params: dict              # everything that changes the plan (hashed into the artifact key)
    def plan(self, ctx: PlanContext) -> Plan

Recipes come from the `harness.recipes` entry-point group (the entry point's object
is either a factory `f(**options) -> recipe` registered under the entry point's
name, or a dict {name: factory} for families like uniform2..uniform8), from a
declarative tier file (`--recipe my-tiers.toml`) or from a Python file
(`--recipe path/to/file.py:Name`).
"""

import difflib
import importlib.util
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Optional

from .errors import HarnessError
from .plan import MODE_DEFAULT_GROUP, Plan, Tensor, describe_model, is_router


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
            t.reason = "router: protected, kept float"
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


# --- registry ------------------------------------------------------------------

def _builtin() -> dict:
    # Imported lazily so `harness --help` stays fast; also the fallback when the
    # package metadata (entry points) is missing, e.g. running from a source tree.
    from quantizers import BUILTIN_RECIPES

    return dict(BUILTIN_RECIPES)


def available() -> dict:
    """{name: factory} of every installed recipe."""
    recipes = _builtin()
    for ep in entry_points(group="harness.recipes"):
        try:
            obj = ep.load()
        except Exception as e:  # a broken third-party plugin must not break the tool
            print(f"harness: warning: recipe plugin {ep.name!r} failed to load: {e}")
            continue
        if isinstance(obj, dict):
            recipes.update(obj)
        else:
            recipes[ep.name] = obj
    return recipes


def get_recipe(name: str, **options):
    """Instantiate a recipe by name, tier file, or `file.py:Name`."""
    if ":" in name and name.split(":", 1)[0].endswith(".py"):
        factory = _load_from_file(*name.split(":", 1))
    elif name.endswith((".toml", ".yaml", ".yml")):
        from quantizers.tiers import TierRecipe

        if not Path(name).is_file():
            raise HarnessError(f"tier file {name} not found; check the path")
        factory = lambda **o: TierRecipe.from_file(Path(name), **o)  # noqa: E731
    else:
        recipes = available()
        if name not in recipes:
            close = difflib.get_close_matches(name, list(recipes), n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise HarnessError(
                f"unknown recipe {name!r}; {hint}`harness recipes` lists the installed ones"
            )
        factory = recipes[name]
    options = {k: v for k, v in options.items() if v is not None}
    try:
        return factory(**options)
    except TypeError as e:
        raise HarnessError(f"recipe {name!r} does not take these options ({e}); see `harness recipes`")


def _load_from_file(path: str, attr: str):
    file = Path(path)
    if not file.is_file():
        raise HarnessError(f"recipe file {path} not found; use --recipe path/to/file.py:ClassName")
    spec = importlib.util.spec_from_file_location(f"harness_user_recipe_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise HarnessError(f"recipe file {path} failed to import: {type(e).__name__}: {e}")
    if not hasattr(module, attr):
        raise HarnessError(f"{path} has no {attr!r}; name a class or factory defined in it")
    return getattr(module, attr)


def describe(factory) -> str:
    doc = getattr(factory, "description", None) or (factory.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def default_group(mode: str, group_size: Optional[int]) -> int:
    if mode not in MODE_DEFAULT_GROUP:
        raise HarnessError(f"unknown quantization mode {mode!r}; use one of {', '.join(MODE_DEFAULT_GROUP)}")
    return group_size or MODE_DEFAULT_GROUP[mode]
