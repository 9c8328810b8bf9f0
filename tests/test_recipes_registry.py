"""harness.recipes: lookup by name, tier file, file.py:Name; the recipe contract."""

import textwrap

import pytest

from harness.errors import HarnessError
from harness.recipe import Recipe
from harness.recipes import available, describe, get_recipe


def test_builtin_names_and_descriptions():
    names = available()
    for name in ("float", "uniform4", "uniform8", "oq4", "oq2.5", "tiers-3.7", "mlx-mixed-3-6", "dynamic"):
        assert name in names
        assert describe(names[name]), f"{name} has no one-line description"


def test_every_builtin_is_a_recipe():
    for name in ("float", "uniform4", "oq4", "tiers-3.7", "mlx-mixed-3-6", "dynamic"):
        recipe = get_recipe(name)
        assert isinstance(recipe, Recipe)
        assert recipe.name and isinstance(recipe.params, dict)


def test_unknown_recipe_suggests_close_names():
    with pytest.raises(HarnessError, match="did you mean uniform4"):
        get_recipe("unifrom4")


def test_options_a_recipe_does_not_take_are_an_error():
    with pytest.raises(HarnessError, match="does not take these options"):
        get_recipe("float", group_size=64)


def test_recipe_file_with_future_annotations_and_dataclass(tmp_path):
    f = tmp_path / "myrecipe.py"
    f.write_text(textwrap.dedent('''
        from __future__ import annotations
        from dataclasses import dataclass
        from harness.recipe import Recipe, plan_from_rule

        @dataclass
        class Eight(Recipe):
            group_size: int = 64
            name: str = "eight"
            description: str = "every tensor at 8 bits"

            @property
            def params(self) -> dict:
                return {"group_size": self.group_size}

            def plan(self, ctx):
                return plan_from_rule(ctx, self.name, self.params, lambda t: (8, self.group_size, "affine", "8"))
    '''))
    recipe = get_recipe(f"{f}:Eight")
    assert recipe.name == "eight" and recipe.params == {"group_size": 64}


def test_recipe_file_errors_are_one_line(tmp_path):
    with pytest.raises(HarnessError, match="not found"):
        get_recipe(f"{tmp_path}/missing.py:X")
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(HarnessError, match="failed to import: RuntimeError: boom"):
        get_recipe(f"{bad}:X")
    ok = tmp_path / "ok.py"
    ok.write_text("class NotARecipe:\n    pass\n")
    with pytest.raises(HarnessError, match="has no 'Y'"):
        get_recipe(f"{ok}:Y")
    with pytest.raises(HarnessError, match="lacks"):
        get_recipe(f"{ok}:NotARecipe")


def test_broken_entry_point_plugin_warns_on_stderr_not_stdout(monkeypatch, capsys):
    import harness.recipes as recipes

    class BrokenEP:
        name = "broken"

        def load(self):
            raise ImportError("no such module")

    monkeypatch.setattr(recipes, "entry_points", lambda group: [BrokenEP()])
    names = recipes.available()
    out, err = capsys.readouterr()
    assert "uniform4" in names and "broken" not in names
    assert out == "" and "recipe plugin 'broken' failed to load" in err


def test_tier_file_not_found():
    with pytest.raises(HarnessError, match="tier file .* not found"):
        get_recipe("nope/tiers.toml")
