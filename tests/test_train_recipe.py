"""Recipes load strictly: unknown keys and wrong types are refused with the key named."""

from pathlib import Path

import pytest

from slava.cli import main
from slava.config import ConfigError
from slava.train.recipe import load_recipe, parse_overrides

from test_train_fixtures import RECIPES, ROOT


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["tiny-cpu.yaml", "smol-cpu.yaml", "llama7b-gpu.yaml"])
def test_shipped_recipes_load(name):
    recipe = load_recipe(ROOT / "recipes" / name)
    assert recipe.stages and all(stage.lr for stage in recipe.stages)


@pytest.mark.parametrize(
    "text, key",
    [
        ("stages: [{name: base, epoch: 2, lr: {lm: 1.0e-3}}]", "stages[0].epoch"),
        ("seed: abc\nstages: [{name: base, lr: {lm: 1.0e-3}}]", "seed"),
        ("model: {lm: {hidden: wide}}\nstages: [{name: base, lr: {lm: 1.0e-3}}]", "model.lm.hidden"),
        ("model: {mope: {top_kk: 1}}\nstages: [{name: base, lr: {lm: 1.0e-3}}]", "model.mope.top_kk"),
        ("stages: [{name: base, lr: {lm: fast}}]", "stages[0].lr.lm"),
        ("stages: [{name: pretrain, lr: {lm: 1.0e-3}}]", "stages[0].name"),
        ("precision: half\nstages: [{name: base, lr: {lm: 1.0e-3}}]", "precision"),
        ("threads: 0\nstages: [{name: base, lr: {lm: 1.0e-3}}]", "threads"),
        ("augment: {copies: 4}\nstages: [{name: base, lr: {lm: 1.0e-3}}]", "augment.copies"),
        ("augment: {probability: 1.5}\nstages: [{name: base, lr: {lm: 1.0e-3}}]", "augment.probability"),
        ("augment: {variants: 0}\nstages: [{name: base, lr: {lm: 1.0e-3}}]", "augment.variants"),
        ("stages: [{name: instruct, freeze: [projektor], lr: {default: 1.0e-3}}]", "stages[0].freeze"),
    ],
)
def test_bad_recipe_names_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load_recipe(write(tmp_path, text))


def test_stage_order_and_base_needs_tiny_lm(tmp_path):
    with pytest.raises(ConfigError, match="subsequence"):
        load_recipe(write(tmp_path, "stages: [{name: instruct, lr: {default: 1.0}}, {name: align, lr: {default: 1.0}}]"))
    with pytest.raises(ConfigError, match="base stage"):
        load_recipe(write(tmp_path, "model: {lm: {kind: hf, path: /m}}\nstages: [{name: base, lr: {lm: 1.0}}]"))


def test_overrides_apply_before_checking():
    recipe = load_recipe(RECIPES / "tiny.yaml", parse_overrides(["seed=7", "stages.2.batch_size=2", "model.lm.path=/x"]))
    assert recipe.seed == 7 and recipe.stages[2].batch_size == 2 and recipe.model.lm.path == "/x"
    with pytest.raises(ConfigError, match="stages\\[1\\].epochs"):
        load_recipe(RECIPES / "tiny.yaml", {"stages.1.epochs": "many"})


def test_cli_reports_recipe_error_in_one_line(tmp_path, capsys):
    bad = write(tmp_path, "stages: [{name: base, lr: {lm: 1.0e-3}, warmup: 3}]")
    assert main(["train", "--recipe", str(bad), "--data", "x.jsonl", "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip()
    assert "stages[0].warmup" in err and len(err.splitlines()) == 1
