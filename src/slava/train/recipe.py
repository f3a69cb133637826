"""Training recipes: one YAML file → typed dataclasses, strictly checked.

A recipe names the student model (``slava.model.config.ModelConfig``) and the
stages to run in order. Unknown keys and wrong types are refused with the key
named (``slava.config``), so a typo never silently falls back to a default.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from slava.config import ConfigError, from_dict, to_dict
from slava.hardware import PrecisionSetting, ThreadSetting
from slava.model.config import STAGES, ModelConfig
from slava.train.augment import AugmentConfig

RENAMED = {"bf16": "precision: auto | fp32 | bf16 | fp16"}
"""Recipe keys that were replaced, and what replaced them."""


@dataclass
class StageConfig:
    """One training stage."""

    name: Literal[STAGES]  # type: ignore[valid-type]
    """`base`: the tiny LM on the corpus text (tokenizer trained first), all LM
    parameters (and the projector when `images` is on); `align`: the projector on captions, LM frozen; `instruct`:
    experts, routers, projector (and top tower blocks if configured) on all tasks."""
    epochs: int = 1
    """Passes over the stage's examples."""
    max_steps: int | None = None
    """Stop after this many optimizer steps even if epochs remain."""
    batch_size: int = 8
    """Examples per micro-step over all processes together (split evenly under
    torchrun), so the same recipe gives the same run on 1 or N processes."""
    grad_accum: int = 1
    """Micro-steps per optimizer step."""
    lr: dict[str, float] = field(default_factory=dict)
    """Learning rate per parameter group (`lm`, `projector`, `experts`,
    `routers`, `tower`); `default` applies to groups not named."""
    warmup_ratio: float = 0.05
    """Fraction of the stage's steps with linear warm-up, then cosine decay to zero."""
    weight_decay: float = 0.0
    """AdamW weight decay on matrices (biases and norms get none)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 disables."""
    tasks: list[str] | None = None
    """Record tasks trained on (`caption`, `vqa`, `classify`, `measure`); None = all."""
    repeat: dict[str, int] = field(default_factory=dict)
    """Times each record of a task appears per epoch (`{classify: 3}`): a one-word
    answer is a sliver of a batch's answer tokens, so without repeats the
    per-token loss barely teaches the image → class mapping."""
    images: bool | None = None
    """Feed the records' images; None = every stage but `base`. A `base` stage
    with images also trains the projector, so the tiny LM learns to read image
    tokens while it learns the language (text-only pretraining left a frozen LM
    that the later adapters never taught to look at the image)."""


@dataclass
class Recipe:
    """A whole training run: model, stages, and how to run them."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The student model."""
    stages: list[StageConfig] = field(default_factory=list)
    """Stages run in order."""
    seed: int = 0
    """Seeds model init, data order and rank sampling."""
    precision: PrecisionSetting = "auto"
    """Compute precision: `auto` (bf16 where the hardware runs it natively, else
    fp32; see `slava.hardware`), or `fp32`, `bf16`, `fp16` forced. Autocast
    only: weights and optimizer state stay fp32."""
    checkpoint_every: int = 100
    """Optimizer steps between checkpoints (one is also written at each stage end)."""
    keep_checkpoints: int = 2
    """Checkpoints kept on disk; older ones are deleted once a newer one is complete."""
    num_workers: int = 2
    """Threads decoding images into the in-memory cache."""
    max_len: int = 512
    """Longest training sequence in tokens (image tokens included); longer records are skipped."""
    cache_images: bool = True
    """Keep decoded, resized images in memory (decoded once); off = decode on every use."""
    cache_features: bool = True
    """While the vision tower is frozen, encode each image once and train on the
    stored tower output (bf16 under bf16 precision: 80 KB per image for EfficientNet-Lite0
    at 160 px); off = run the tower on every step."""
    val_fraction: float = 0.05
    """Held-out fraction (by image hash) when no record has `meta.split == "val"`."""
    threads: ThreadSetting = "auto"
    """torch CPU threads per process; `auto` = the cores this process may use
    (its affinity mask), shared among the processes torchrun starts on the node."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    """Degraded copies of the training images (noise, defocus, contrast, charging, scale); see `slava.train.augment`."""


def _set_path(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        if key.isdigit() and isinstance(node, list):
            node = node[int(key)]
        else:
            node = node.setdefault(key, {})
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"--set {dotted}: {key} is not a mapping")
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> Recipe:
    """Load a recipe, applying ``overrides`` (``{"model.lm.path": "/x", "stages.0.epochs": 2}``) first."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read recipe: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    data = copy.deepcopy(data)
    for key, value in (overrides or {}).items():
        _set_path(data, key, value)
    try:
        return recipe_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
    """A checked ``Recipe`` from a plain dict; a replaced key is refused with its successor named."""
    for old, new in RENAMED.items():
        if old in data:
            raise ConfigError(f"{old}: this key was replaced; use `{new}` (auto picks bf16 only where it is native)")
    recipe = from_dict(Recipe, data)
    validate_recipe(recipe)
    return recipe


def validate_recipe(recipe: Recipe) -> None:
    """Checks a type cannot express: stage order, positive sizes."""
    if not recipe.stages:
        raise ConfigError("stages: at least one stage is needed")
    names = [s.name for s in recipe.stages]
    if names != sorted(names, key=STAGES.index) or len(set(names)) != len(names):
        raise ConfigError(f"stages: {names} must be a subsequence of {list(STAGES)}")
    if "base" in names and recipe.model.lm.kind != "tiny_llama":
        raise ConfigError("stages: the base stage pretrains the tiny LM only (model.lm.kind: tiny_llama)")
    for i, stage in enumerate(recipe.stages):
        for key in ("epochs", "batch_size", "grad_accum"):
            if getattr(stage, key) < 1:
                raise ConfigError(f"stages[{i}].{key}: must be at least 1")
        if not 0 <= stage.warmup_ratio < 1:
            raise ConfigError(f"stages[{i}].warmup_ratio: must be in [0, 1)")
        if any(n < 1 for n in stage.repeat.values()):
            raise ConfigError(f"stages[{i}].repeat: counts must be at least 1")
        if stage.images is False and stage.name != "base":
            raise ConfigError(f"stages[{i}].images: only the base stage can train without images")
        if not stage.lr:
            raise ConfigError(f"stages[{i}].lr: give a learning rate per parameter group (or `default`)")
    if recipe.augment.variants < 1:
        raise ConfigError("augment.variants: must be at least 1 (the clean image)")
    if not 0 <= recipe.augment.probability <= 1:
        raise ConfigError("augment.probability: must be in [0, 1]")
    if recipe.threads != "auto" and recipe.threads < 1:
        raise ConfigError("threads: must be at least 1 (or auto)")
    if recipe.checkpoint_every < 1 or recipe.keep_checkpoints < 1:
        raise ConfigError("checkpoint_every and keep_checkpoints must be at least 1")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["model.lm.path=/m", "seed=3"]`` → dict; values are parsed as YAML scalars."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        out[key.strip()] = yaml.safe_load(raw)
    return out


def recipe_to_yaml(recipe: Recipe) -> str:
    """The resolved recipe as YAML (every default written out)."""
    return yaml.safe_dump(to_dict(recipe), sort_keys=False)
