"""``adapt``: a trained run tuned to a lab's own labelled micrographs, in minutes on CPU.

The folder holds one sub-folder per class, as ``slava teach`` reads it. The
analytic teacher makes its images into records (captions and classification,
``records.jsonl`` in the new run, ready for a longer ``slava train``), and the
run's classification head is fitted again on the records' classes: on the
run's frozen tower, from each training image in its eight turned and
mirrored views (a micrograph's class does not turn with the stage, an
ImageNet tower's features do) and from degraded copies of it
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
from slava.train.class_head import HeadConfig, fit_head_choosing_c, head_macro_f1

RUN_FILES_LEFT_BEHIND = ("checkpoints", "stages", "*.png", HEAD_FILE, "metrics.jsonl")
"""What a new run does not copy from the old: training state, plots, and the head it replaces."""
ADAPT_C = (0.03, 0.1, 0.3, 1.0)
"""Inverse L2 strengths the head is chosen from on the folder's val split (ties go to the strongest).

A lab's folder is small beside the features' width, and eight views and
degraded copies of one image are far from independent samples: on NEU-DET
(AMD EPYC, 2026-12-02) val macro-F1 was 1.000 from 0.03 to 0.3 and 0.981 at
1.0, ``HeadConfig``'s default."""


class AdaptError(SlavaError):
    """A folder or run that cannot be adapted to (too few classes, no training images, an --out in use)."""


def _features(model, images: list[str], copies: int, seed: int, progress: bool, turned: bool = False,
              batch: int = 32) -> list[torch.Tensor]:
    """Head features [N, D] of each image's clean copy, then (``turned``) of its seven other turned and
    mirrored views (``towers.dihedral_view``), then of each of ``copies`` degraded copies."""
    from tqdm import tqdm

    from slava.io import load_micrograph
    from slava.model.class_head import head_features
    from slava.model.pixels import to_model_pixels
    from slava.model.towers import DIHEDRAL, dihedral_view
    from slava.train.augment import degrade, variant_seed

    clean = [to_model_pixels(load_micrograph(p).pixels, model.image_size) for p in images]
    turns = DIHEDRAL if turned else 1

    def view(k: int, px: torch.Tensor, path: str) -> torch.Tensor:
        # Made a batch at a time: eight views of a lab's folder held at once would be gigabytes.
        return dihedral_view(px, k) if k < turns else degrade(px, variant_seed(seed, path, k - turns + 1))

    out = []
    bar = tqdm(total=len(images) * (turns + copies), unit="img", desc="head features", disable=not progress,
               dynamic_ncols=True)
    for k in range(turns + copies):
        chunks = []
        for i in range(0, len(images), batch):
            pixels = torch.stack([view(k, px, p) for px, p in zip(clean[i : i + batch], images[i : i + batch])])
            with torch.no_grad():
                chunks.append(head_features(model, pixels, "multi_depth").float())
            bar.update(len(chunks[-1]))
        out.append(torch.cat(chunks))
    bar.close()
    return out


def adapt(run: str | Path, images: str | Path, out: str | Path, augment: int = 3, seed: int = 0,
          log: Callable[[str], None] = print, progress: bool = True) -> dict:
    """Write a run at ``out``: ``run`` with a head fitted on the labelled folder ``images``; returns its summary.

    ``augment`` degraded copies of each training image join its eight turned and mirrored views.
    """
    from slava.data.manifest import read_manifest
    from slava.data.records import read_records
    from slava.model.towers import DIHEDRAL
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
    # Only the head is refitted: the tower's faster inference copy gives the same features.
    model.fuse_for_inference()
    train = by_split["train"]
    old = run / HEAD_FILE
    cfg = HeadConfig(augment=augment, tags=load_head(old).tags if old.is_file() else False, turns=True)
    log(f"adapt: head on {len(train)} training images, each turned and mirrored ({DIHEDRAL} views) and {augment} "
        "degraded copies")
    feats = _features(model, list(train), augment, seed, progress, turned=True)
    # Screening reads one view: held-out images are scored as they come.
    held = {s: {p: c for p, c in by_split[s].items() if c in labels} for s in ("val", "test")}
    held_feats = {s: _features(model, list(h), 0, seed, progress)[0] for s, h in held.items() if h}
    val = (held_feats["val"], list(held["val"].values())) if "val" in held_feats else None
    head, c = fit_head_choosing_c(torch.cat(feats), list(train.values()) * len(feats), cfg, ADAPT_C, val, seed)
    save_head(head, out / HEAD_FILE)
    scores = {s: {"images": len(held[s]), "macro_f1": round(head_macro_f1(head, f, list(held[s].values())), 4)}
              for s, f in held_feats.items()}

    summary = json.loads((run / SUMMARY_FILE).read_text()) if (run / SUMMARY_FILE).is_file() else {}
    before = summary.get("labels") or {}
    vocab = label_vocabulary(records)
    # The old run's answers still name its classes: zero-shot refusal must keep knowing them.
    seen = {**before.get("class_names_in_answers", {}), **vocab["class_names_in_answers"]}
    summary["labels"] = {"meta_classes": vocab["meta_classes"], "class_names_in_answers": dict(sorted(seen.items()))}
    result = {"from_run": str(run), "images": str(Path(images).resolve()), "labels": head.labels,
              "split_images": {s: len(v) for s, v in by_split.items()}, "records": len(records),
              "teacher": teach.line(), "degraded_copies": augment, "c": c, "held_out": scores,
              "time_s": round(time.perf_counter() - start, 1)}
    summary["classifier"] = {"file": HEAD_FILE, "kind": head.kind, "features": head.features, "labels": head.labels,
                             "train_images": len(train), "views": DIHEDRAL, "degraded_copies": augment,
                             "c": c, "tags": head.tags,
                             **({"val_images": scores["val"]["images"], "val_macro_f1": scores["val"]["macro_f1"]}
                                if "val" in scores else {})}
    summary["adapted"] = result
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=1) + "\n")
    return result
