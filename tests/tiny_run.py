"""A tiny but real trained run for the assistant, server and eval tests.

``make_tiny_run(root)`` writes a small synthetic set (three classes), teaches
it with the analytic teacher, and trains a tiny student through the real
``slava.train`` API, so the result is a run directory like any other. The
run is memoised in ``root`` (a marker file is written last), so a session
fixture builds it once.
"""

from __future__ import annotations

import json
from pathlib import Path

TINY_CLASSES = ("particles", "fibres", "porous_sponges")
"""The synthetic classes the tiny run is trained on."""

TINY_RECIPE = {
    "seed": 0,
    "precision": "fp32",
    "checkpoint_every": 1000,
    "keep_checkpoints": 1,
    "threads": 1,
    "num_workers": 1,
    "max_len": 512,
    "val_fraction": 0.0,
    "model": {
        "vision": {"kind": "efficientnet_lite0", "image_size": 64},
        "lm": {"hidden": 64, "layers": 2, "heads": 2, "kv_heads": 1, "intermediate": 128, "vocab_size": 400, "max_len": 512},
        "quant": {"bits": 8},
        "mope": {"num_experts": 2, "top_k": 1, "r_max": 4, "min_rank": 2, "router_noise": 0.0},
    },
    "stages": [
        {"name": "base", "epochs": 4, "batch_size": 16, "lr": {"lm": 5.0e-3}},
        {"name": "align", "epochs": 1, "batch_size": 16, "tasks": ["caption"], "lr": {"projector": 2.0e-3}},
        {"name": "instruct", "epochs": 4, "batch_size": 16, "lr": {"default": 3.0e-3}},
    ],
}
"""Recipe of the tiny run: EfficientNet-Lite0 (ImageNet weights) at 64 px → 4 image tokens, Llama of width 64 × 2 layers.

A pretrained tower, because a from-scratch one this small gives features that few-shot
prototypes cannot separate; at 64 px it costs ~10 ms per image on one core."""


def make_tiny_data(root: Path, n: int = 45, size: int = 64) -> tuple[Path, Path]:
    """A synthetic set of ``n`` images and its analytic-teacher records; returns (set dir, records.jsonl)."""
    from slava.synth import write_dataset
    from slava.teacher.analytic import AnalyticTeacher
    from slava.teacher.runner import run_teacher

    images = root / "images"
    records = root / "records.jsonl"
    if not (images / "ground_truth.jsonl").is_file():
        write_dataset(images, n, size=size, seed=0, classes=TINY_CLASSES, workers=1, overwrite=True)
    if not records.is_file():
        teacher = AnalyticTeacher(tasks=("caption", "classify", "measure"), per_image=0, labels=TINY_CLASSES)
        run_teacher(images, records, teacher, workers=1, progress=False)
    return images, records


def make_tiny_run(root: str | Path) -> Path:
    """Build (or reuse) the tiny run under ``root``; returns the run directory."""
    from slava.train.recipe import recipe_from_dict
    from slava.train.trainer import train

    root = Path(root)
    run = root / "run"
    done = root / "tiny_run.done"
    if done.is_file():
        return run
    root.mkdir(parents=True, exist_ok=True)
    _, records = make_tiny_data(root)
    recipe = recipe_from_dict(json.loads(json.dumps(TINY_RECIPE)))
    if run.exists():
        import shutil

        shutil.rmtree(run)
    train(recipe, records, run, progress=False)
    done.write_text("ok\n")
    return run


def tiny_images(run: Path) -> dict[str, list[Path]]:
    """The tiny run's synthetic images by class (sorted)."""
    images = run.parent / "images"
    return {c: sorted((images / c).glob("*.png")) for c in TINY_CLASSES}
