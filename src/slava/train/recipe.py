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
from slava.model.config import PARAM_GROUPS, STAGES, ModelConfig
from slava.train.augment import AugmentConfig
from slava.train.class_head import HeadConfig

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
    freeze: list[str] = field(default_factory=list)
    """Parameter groups the stage would train but keeps frozen (`projector`, `tower`, ...). Freezing the
    projector in `instruct` with experts on the top blocks only (`mope.top_layers`) stops backward at the
    lowest adapted block: on SmolLM2 that made a step about 2x cheaper (see recipes/README.md)."""
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
    val_max: int | None = None
    """Validation examples per stage at most, spread evenly over them; None = all. Each costs a forward
    pass: on smol-cpu the demo set's 160 took over a minute of a ten-minute run."""
    threads: ThreadSetting = "auto"
    """torch CPU threads per process; `auto` = the cores this process may use
    (its affinity mask), shared among the processes torchrun starts on the node."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    """Degraded copies of the training images (noise, defocus, contrast, charging, scale); see `slava.train.augment`."""
    head: HeadConfig = field(default_factory=HeadConfig)
    """The classification head fitted on the frozen tower's features at the end of the run
    (`classifier.safetensors`): screening's fast path for the trained classes; see `slava.train.class_head`."""


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


def _at_least(value: int | float | None, low: int | float, key: str) -> None:
    if value is not None and value < low:
        raise ConfigError(f"{key}: must be at least {low}, got {value}")


def validate_model(model: ModelConfig) -> None:
    """Cross-field checks of the student model that a type cannot express, made before any work starts."""
    v, lm, mope, q = model.vision, model.lm, model.mope, model.quant
    _at_least(v.image_size, 8, "model.vision.image_size")
    _at_least(v.trainable_blocks, 0, "model.vision.trainable_blocks")
    for key in ("vit_patch", "vit_dim", "vit_layers", "vit_heads"):
        _at_least(getattr(v, key), 1, f"model.vision.{key}")
    if v.kind == "vit" and v.vit_dim % v.vit_heads:
        raise ConfigError(f"model.vision.vit_dim ({v.vit_dim}) must be a multiple of vit_heads ({v.vit_heads})")
    _at_least(model.projector.hidden, 1, "model.projector.hidden")
    _at_least(model.projector.pool, 1, "model.projector.pool")
    for key in ("hidden", "layers", "heads", "kv_heads", "intermediate", "vocab_size", "max_len"):
        _at_least(getattr(lm, key), 1, f"model.lm.{key}")
    if lm.kind == "tiny_llama":
        if lm.hidden % lm.heads:
            raise ConfigError(f"model.lm.hidden ({lm.hidden}) must be a multiple of heads ({lm.heads})")
        if lm.heads % lm.kv_heads:
            raise ConfigError(f"model.lm.heads ({lm.heads}) must be a multiple of kv_heads ({lm.kv_heads})")
    _at_least(mope.num_experts, 1, "model.mope.num_experts")
    if not 1 <= mope.top_k <= mope.num_experts:
        raise ConfigError(f"model.mope.top_k ({mope.top_k}) must be between 1 and num_experts ({mope.num_experts})")
    _at_least(mope.r_max, 1, "model.mope.r_max")
    if not 1 <= mope.min_rank <= mope.r_max:
        raise ConfigError(f"model.mope.min_rank ({mope.min_rank}) must be between 1 and r_max ({mope.r_max})")
    if not mope.alpha > 0:
        raise ConfigError(f"model.mope.alpha: must be positive, got {mope.alpha}")
    if not 0 <= mope.dropout < 1:
        raise ConfigError(f"model.mope.dropout: must be in [0, 1), got {mope.dropout}")
    for key in ("router_noise", "balance_weight", "z_weight"):
        _at_least(getattr(mope, key), 0, f"model.mope.{key}")
    if q.bits not in (0, 4, 8):
        raise ConfigError(f"model.quant.bits: must be 0, 4 or 8, got {q.bits}")
    _at_least(q.group_size, 1, "model.quant.group_size")


def validate_recipe(recipe: Recipe) -> None:
    """Checks a type cannot express: stage order, positive sizes, the model's cross-field constraints."""
    validate_model(recipe.model)
    if not recipe.stages:
        raise ConfigError("stages: at least one stage is needed")
    names = [s.name for s in recipe.stages]
    if names != sorted(names, key=STAGES.index) or len(set(names)) != len(names):
        raise ConfigError(f"stages: {names} must be a subsequence of {list(STAGES)}")
    if "base" in names and recipe.model.lm.kind != "tiny_llama":
        raise ConfigError("stages: the base stage pretrains the tiny LM only (model.lm.kind: tiny_llama)")
    if recipe.head.tags and recipe.model.vision.trainable_blocks > 0 and "instruct" in names:
        raise ConfigError("head.tags: the head is fitted before training on the tower's features, so no stage may "
                          "train the tower (model.vision.trainable_blocks must be 0)")
    for i, stage in enumerate(recipe.stages):
        for key in ("epochs", "batch_size", "grad_accum", "max_steps"):
            value = getattr(stage, key)
            if value is not None and value < 1:
                raise ConfigError(f"stages[{i}].{key}: must be at least 1")
        if any(not rate > 0 for rate in stage.lr.values()):
            raise ConfigError(f"stages[{i}].lr: learning rates must be positive")
        _at_least(stage.weight_decay, 0, f"stages[{i}].weight_decay")
        _at_least(stage.grad_clip, 0, f"stages[{i}].grad_clip")
        if not 0 <= stage.warmup_ratio < 1:
            raise ConfigError(f"stages[{i}].warmup_ratio: must be in [0, 1)")
        if any(n < 1 for n in stage.repeat.values()):
            raise ConfigError(f"stages[{i}].repeat: counts must be at least 1")
        if stage.images is False and stage.name != "base":
            raise ConfigError(f"stages[{i}].images: only the base stage can train without images")
        unknown = set(stage.freeze) - set(PARAM_GROUPS)
        if unknown:
            raise ConfigError(f"stages[{i}].freeze: unknown group(s) {sorted(unknown)}; known: {', '.join(PARAM_GROUPS)}")
        if not stage.lr:
            raise ConfigError(f"stages[{i}].lr: give a learning rate per parameter group (or `default`)")
    _at_least(recipe.head.augment, 0, "head.augment")
    if recipe.augment.variants < 1:
        raise ConfigError("augment.variants: must be at least 1 (the clean image)")
    if not 0 <= recipe.augment.probability <= 1:
        raise ConfigError("augment.probability: must be in [0, 1]")
    if recipe.threads != "auto" and recipe.threads < 1:
        raise ConfigError("threads: must be at least 1 (or auto)")
    if recipe.checkpoint_every < 1 or recipe.keep_checkpoints < 1:
        raise ConfigError("checkpoint_every and keep_checkpoints must be at least 1")
    _at_least(recipe.max_len, 1, "max_len")
    _at_least(recipe.num_workers, 0, "num_workers")
    if recipe.val_max is not None and recipe.val_max < 1:
        raise ConfigError(f"val_max: must be at least 1 (or null for all), got {recipe.val_max}")
    if not 0 <= recipe.val_fraction < 1:
        raise ConfigError(f"val_fraction: must be in [0, 1), got {recipe.val_fraction}")


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
