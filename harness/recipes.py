"""Recipe registry: find a recipe by name, tier file, `file.py:Name`, entry point, or an
existing quantized model (`--recipe path/to/quant-dir` or `--recipe hub:org/name`).

Recipes come from `harness.quantizers` (built-ins), the `harness.recipes` entry-point
group (the entry point's object is either a factory `f(**options) -> Recipe` registered
under the entry point's name, or a dict {name: factory} for families like
uniform2..uniform8), a declarative tier file (`--recipe my-tiers.toml`) or a Python file
(`--recipe path/to/file.py:Name`). The contract itself is `harness.recipe.Recipe`.
"""

import difflib
import importlib.util
import sys
from importlib.metadata import entry_points
from pathlib import Path

from harness.errors import HarnessError
from harness.recipe import check_recipe


def warn(message: str) -> None:
    """The one warning channel: stderr, so machine-read stdout stays clean."""
    print(f"harness: warning: {message}", file=sys.stderr)


def _builtin() -> dict:
    # Imported lazily so `harness --help` stays fast; also the fallback when the
    # package metadata (entry points) is missing, e.g. running from a source tree.
    from harness.quantizers import BUILTIN_RECIPES

    return dict(BUILTIN_RECIPES)


def available() -> dict:
    """{name: factory} of every installed recipe."""
    recipes = _builtin()
    for ep in entry_points(group="harness.recipes"):
        try:
            obj = ep.load()
        except Exception as e:  # a broken third-party plugin must not break the tool
            warn(f"recipe plugin {ep.name!r} failed to load: {e}")
            continue
        if isinstance(obj, dict):
            recipes.update(obj)
        else:
            recipes[ep.name] = obj
    return recipes


def get_recipe(name: str, **options):
    """Instantiate a recipe by name, tier file, or `file.py:Name`."""
    from harness.quantizers.existing import ExistingQuant, is_existing_spec

    if is_existing_spec(name):  # a quant somebody already made: read back, never requantized
        # recipe options (--group-size, --calib-samples ...) belong to the other recipes of a run
        return check_recipe(ExistingQuant.from_spec(name, taken=set(available())), name)
    if ":" in name and name.split(":", 1)[0].endswith(".py"):
        factory = _load_from_file(*name.split(":", 1))
    elif name.endswith((".toml", ".yaml", ".yml")):
        from harness.quantizers.tiers import TierRecipe

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
        recipe = factory(**options)
    except TypeError as e:
        raise HarnessError(f"recipe {name!r} does not take these options ({e}); see `harness recipes`")
    return check_recipe(recipe, name)


def _load_from_file(path: str, attr: str):
    file = Path(path)
    if not file.is_file():
        raise HarnessError(f"recipe file {path} not found; use --recipe path/to/file.py:ClassName")
    module_name = f"harness_user_recipe_{file.stem}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    module = importlib.util.module_from_spec(spec)
    # registered before it runs, as a normal import does: dataclasses under
    # `from __future__ import annotations` look their module up in sys.modules
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(module_name, None)
        raise HarnessError(f"recipe file {path} failed to import: {type(e).__name__}: {e}")
    if not hasattr(module, attr):
        raise HarnessError(f"{path} has no {attr!r}; name a class or factory defined in it")
    return getattr(module, attr)


def describe(factory) -> str:
    doc = getattr(factory, "description", None) or (factory.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""
