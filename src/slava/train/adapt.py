"""``adapt``: a trained run tuned to a lab's own labelled micrographs, in minutes on CPU.

The folder holds one sub-folder per class, as ``slava teach`` reads it. The
analytic teacher makes its images into records (captions and classification,
``records.jsonl`` in the new run, ready for a longer ``slava train``), and the
run's classification head is fitted again on the records' classes: on the
run's frozen tower, from each training image and its degraded copies
(``slava.train.augment``), so the head holds up when the lab's next session
images differ. The new run keeps the old one's student; its classify, screen
and (with tags) prompts now name the lab's classes. Splits are the folder's
(``slava.data.manifest``: 70/10/20 by path); the head is scored on the held-out
test images, which it never saw.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable

import torch

from slava.data.run_head import HEAD_FILE, load_head, save_head
from slava.data.run_labels import SUMMARY_FILE, label_vocabulary
from slava.errors import SlavaError
from slava.train.class_head import HeadConfig, fit_head, head_macro_f1

RUN_FILES_LEFT_BEHIND = ("checkpoints", "stages", "*.png", HEAD_FILE, "metrics.jsonl")
"""What a new run does not copy from the old: training state, plots, and the head it replaces."""


class AdaptError(SlavaError):
    """A folder or run that cannot be adapted to (too few classes, no training images, an --out in use)."""


def _features(model, images: list[str], copies: int, seed: int, progress: bool, batch: int = 32) -> list[torch.Tensor]:
    """Head features of each image's clean copy, then of each degraded copy: ``copies + 1`` tensors [N, D]."""
    from tqdm import tqdm

    from slava.io import load_micrograph
    from slava.model.class_head import head_features
    from slava.model.pixels import to_model_pixels
    from slava.train.augment import degrade, variant_seed

    clean = [to_model_pixels(load_micrograph(p).pixels, model.image_size) for p in images]
    out = []
    bar = tqdm(total=len(images) * (copies + 1), unit="img", desc="head features", disable=not progress,
               dynamic_ncols=True)
    for v in range(copies + 1):
        views = clean if v == 0 else [degrade(px, variant_seed(seed, p, v)) for px, p in zip(clean, images)]
        chunks = []
        for i in range(0, len(views), batch):
            with torch.no_grad():
                chunks.append(head_features(model, torch.stack(views[i : i + batch]), "multi_depth").float())
            bar.update(len(chunks[-1]))
        out.append(torch.cat(chunks))
    bar.close()
    return out


def adapt(run: str | Path, images: str | Path, out: str | Path, augment: int = 3, seed: int = 0,
          log: Callable[[str], None] = print, progress: bool = True) -> dict:
    """Write a run at ``out``: ``run`` with a head fitted on the labelled folder ``images``; returns its summary.

    ``augment`` degraded copies of each training image join the clean one.
    """
    from slava.data.manifest import read_manifest
    from slava.data.records import read_records
    from slava.model.vlm import SlavaModel
    from slava.teacher.analytic import AnalyticTeacher
    from slava.teacher.runner import run_teacher

    start = time.perf_counter()
    run, out = Path(run), Path(out)
    if not (run / "config.json").is_file():
        raise AdaptError(f"{run}: not a trained run (no config.json)")
    if out.exists() and any(out.iterdir()):
        raise AdaptError(f"{out} is not empty: choose a new --out for the adapted run")
    manifest = read_manifest(images)
    labels = manifest.labels
    if len(labels) < 2:
        raise AdaptError(f"{images}: adapting needs images in at least two class folders (<folder>/<class>/*), "
                         f"found {labels or 'none'}")
    bare = [c for c in labels if not any(e.label == c for e in manifest.split("train"))]
    if bare:
        raise AdaptError(f"{images}: class(es) {bare} have no image in the training split (70 % of a class's files "
                         "by a hash of their paths); add images")

    shutil.copytree(run, out, ignore=shutil.ignore_patterns(*RUN_FILES_LEFT_BEHIND))
    log(f"adapt: records for {len(manifest.entries)} images of {len(labels)} classes (analytic teacher)")
    teach = run_teacher(manifest, out / "records.jsonl", AnalyticTeacher(tasks=("caption", "classify"), labels=labels,
                                                                         seed=seed), workers=1, progress=False)
    records, _ = read_records(out / "records.jsonl")
    by_split: dict[str, dict[str, str]] = {"train": {}, "val": {}, "test": {}}
    for e in manifest.entries:
        by_split.setdefault(e.split, {})[e.path] = e.label

    model = SlavaModel.load(run).eval()
    train = by_split["train"]
    log(f"adapt: head on {len(train)} training images and {augment} degraded copies of each")
    feats = _features(model, list(train), augment, seed, progress)
    old = run / HEAD_FILE
    tags = load_head(old).tags if old.is_file() else False
    head = fit_head(torch.cat(feats), list(train.values()) * (augment + 1), HeadConfig(augment=augment, tags=tags),
                    seed)
    save_head(head, out / HEAD_FILE)
    scores = {}
    for split in ("val", "test"):
        held = {p: c for p, c in by_split[split].items() if c in head.labels}
        if held:
            f1 = head_macro_f1(head, _features(model, list(held), 0, seed, progress)[0], list(held.values()))
            scores[split] = {"images": len(held), "macro_f1": round(f1, 4)}

    summary = json.loads((run / SUMMARY_FILE).read_text()) if (run / SUMMARY_FILE).is_file() else {}
    before = summary.get("labels") or {}
    vocab = label_vocabulary(records)
    # The old run's answers still name its classes: zero-shot refusal must keep knowing them.
    seen = {**before.get("class_names_in_answers", {}), **vocab["class_names_in_answers"]}
    summary["labels"] = {"meta_classes": vocab["meta_classes"], "class_names_in_answers": dict(sorted(seen.items()))}
    result = {"from_run": str(run), "images": str(Path(images).resolve()), "labels": head.labels,
              "split_images": {s: len(v) for s, v in by_split.items()}, "records": len(records),
              "teacher": teach.line(), "degraded_copies": augment, "held_out": scores,
              "time_s": round(time.perf_counter() - start, 1)}
    summary["classifier"] = {"file": HEAD_FILE, "kind": head.kind, "features": head.features, "labels": head.labels,
                             "train_images": len(train), "degraded_copies": augment, "tags": head.tags,
                             **({"val_images": scores["val"]["images"], "val_macro_f1": scores["val"]["macro_f1"]}
                                if "val" in scores else {})}
    summary["adapted"] = result
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=1) + "\n")
    return result
