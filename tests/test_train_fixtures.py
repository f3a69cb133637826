"""Tiny micrographs and records for the training tests (imported by the other test_train* files)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
RECIPES = Path(__file__).parent / "recipes"
CLASSES = ("particles", "fibres", "porous sponges")


def draw(cls: str, seed: int, size: int = 48) -> np.ndarray:
    """A grey uint8 image whose texture depends on the class: dots, stripes or holes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size]
    img = np.full((size, size), 60.0)
    if cls == "particles":
        for cx, cy in rng.uniform(4, size - 4, (6, 2)):
            img[(x - cx) ** 2 + (y - cy) ** 2 < 9] = 220
    elif cls == "fibres":
        img += 120 * (np.sin((x + rng.uniform(0, 6)) / 2.0) > 0.3)
    else:
        img[:] = 200
        for cx, cy in rng.uniform(4, size - 4, (5, 2)):
            img[(x - cx) ** 2 + (y - cy) ** 2 < 16] = 30
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def record(rid: str, image: str, cls: str, task: str, question: str, answer: str, split: str | None = None) -> dict:
    meta = {"class": cls.replace(" ", "_"), "source": "test"}
    if split:
        meta["split"] = split
    return {
        "id": rid, "image": image, "task": task, "meta": meta,
        "conversations": [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}],
    }


def make_dataset(root: Path, n_images: int = 12, val_every: int = 6) -> Path:
    """``n_images`` PNGs and 3 records per image (caption, vqa, classify); every ``val_every``-th image is val."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    lines = []
    for i in range(n_images):
        cls = CLASSES[i % len(CLASSES)]
        rel = f"images/{i:03d}.png"
        Image.fromarray(draw(cls, i)).save(root / rel)
        split = "val" if val_every and i % val_every == val_every - 1 else "train"
        lines += [
            record(f"{i}-cap", rel, cls, "caption", "Describe this micrograph.", f"An SEM image of {cls} on a dark substrate.", split),
            record(f"{i}-vqa", rel, cls, "vqa", "Is the contrast high?", "Yes, bright features on a dark background." if cls != "porous sponges" else "Yes, dark holes in a bright matrix.", split),
            record(f"{i}-cls", rel, cls, "classify", "Which class is this?", f"{cls}", split),
        ]
    path = root / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def cli(*args: str) -> list[str]:
    """The command line that runs ``slava`` in a subprocess with this interpreter."""
    return [sys.executable, "-m", "slava.cli", *args]


def steps(metrics: Path) -> list[dict]:
    """Training-step rows of a metrics.jsonl."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return [r for r in rows if "loss" in r]


def test_fixture_records_are_valid(tiny_data):
    from slava.data.records import read_records

    records, bad = read_records(tiny_data)
    assert len(records) == 36 and not bad
