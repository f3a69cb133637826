"""Writing a synthetic set to disk: PNGs, ground truth, splits, contact sheet and summary."""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from slava.io.readers import png_dpi_for
from slava.synth.generate import MIN_SIZE, generate
from slava.data.taxonomy import CLASS_NAMES, CLASSES
from slava.synth.params import SynthError, check_class, check_shift, image_seed

SPLIT_FRACTIONS = (("train", 0.7), ("val", 0.1), ("test", 0.2))
_META_FILES = ("ground_truth.jsonl", "splits.json", "contact_sheet.png", "summary.json")


# A pHYs chunk counts pixels per metre in 32 bits: finer than this it cannot be written.
_FINEST_PHYS_NM = 1e9 / (2**32 - 1)


def png_bytes(image: np.ndarray, pixel_size_nm: float | None = None) -> bytes:
    """8-bit grey PNG with fixed options, so equal pixels give equal bytes.

    The pixel size goes into the standard pHYs chunk, as a calibrated
    instrument export would carry it, so `slava.io` reads it back.
    """
    buf = io.BytesIO()
    extra = {}
    if pixel_size_nm is not None and pixel_size_nm > _FINEST_PHYS_NM:
        extra["dpi"] = png_dpi_for(pixel_size_nm)
    Image.fromarray(image, mode="L").save(buf, format="PNG", compress_level=6, optimize=False, **extra)
    return buf.getvalue()


def _job(args):
    index, cls, seed, size, shift, n_classes = args
    s = image_seed(seed, index)
    image, truth = generate(cls, s, size=size, shift=shift)
    ident = f"{cls}-{index:06d}"
    truth = {"id": ident, "path": f"{cls}/{ident}.png", **truth}
    # Only the first images of each class travel back for the contact sheet.
    return truth, png_bytes(image, truth["pixel_size_nm"]), image if index < 4 * n_classes else None


def make_splits(truths: list[dict], seed: int) -> dict[str, list[str]]:
    """Stratified, disjoint train/val/test ids (≈70/10/20 within every class)."""
    rng = np.random.default_rng([int(seed), 7919])
    out: dict[str, list[str]] = {name: [] for name, _ in SPLIT_FRACTIONS}
    by_class: dict[str, list[str]] = {}
    for t in truths:
        by_class.setdefault(t["class"], []).append(t["id"])
    for cls in sorted(by_class):
        ids = list(by_class[cls])
        rng.shuffle(ids)
        n = len(ids)
        n_test = int(round(n * 0.2))
        n_val = int(round(n * 0.1))
        out["test"] += ids[:n_test]
        out["val"] += ids[n_test : n_test + n_val]
        out["train"] += ids[n_test + n_val :]
    return {k: sorted(v) for k, v in out.items()}


def contact_sheet(samples: dict[str, list[np.ndarray]], thumb: int = 128) -> Image.Image:
    """A grid with one row per class (label on the left) and a few thumbnails per row."""
    cols = max((len(v) for v in samples.values()), default=1)
    label_w = 240
    font = ImageFont.load_default(size=14)
    sheet = Image.new("L", (label_w + cols * (thumb + 4), len(samples) * (thumb + 4) + 4), 255)
    draw = ImageDraw.Draw(sheet)
    for r, (cls, images) in enumerate(samples.items()):
        y = 4 + r * (thumb + 4)
        draw.text((6, y + thumb // 2), CLASS_NAMES[cls], fill=0, font=font, anchor="lm")
        for c, im in enumerate(images):
            sheet.paste(Image.fromarray(im).resize((thumb, thumb), Image.Resampling.BILINEAR), (label_w + c * (thumb + 4), y))
    return sheet


def _ranges(truths: list[dict]) -> dict:
    out: dict[str, dict] = {}
    for t in truths:
        rec = out.setdefault(t["class"], {})
        values = {"pixel_size_nm": t["pixel_size_nm"], "magnification": t["magnification"]}
        values.update({k: v for k, v in t["quantities"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        for k, v in values.items():
            lo, hi = rec.get(k, (v, v))
            rec[k] = (min(lo, v), max(hi, v))
    return {c: {k: [lo, hi] for k, (lo, hi) in sorted(r.items())} for c, r in out.items()}


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        gt = out / "ground_truth.jsonl"
        if not overwrite:
            raise SynthError(f"{out} is not empty; choose a new folder or overwrite a previous synthetic set")
        if not gt.exists():
            raise SynthError(f"{out} is not empty and holds no synthetic set; refusing to overwrite it")
        # Only files this generator wrote before are removed.
        for line in gt.read_text().splitlines():
            if line.strip():
                (out / json.loads(line)["path"]).unlink(missing_ok=True)
        for name in _META_FILES:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def write_dataset(
    out: str | os.PathLike,
    n: int,
    size: int = 256,
    seed: int = 0,
    classes: list[str] | tuple[str, ...] | None = None,
    shift: str | None = None,
    workers: int | None = None,
    progress: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write ``n`` images balanced over ``classes`` (default: all ten) to ``out`` and return it.

    Layout: ``<class>/<id>.png``, ``ground_truth.jsonl``, ``splits.json``,
    ``contact_sheet.png``, ``summary.json``. Image ``i`` gets the seed
    ``image_seed(seed, i)``, so the bytes do not depend on ``workers``.
    ``overwrite`` allows replacing a previous synthetic set in ``out``.
    """
    classes = tuple(classes) if classes else CLASSES
    for c in classes:
        check_class(c)
    check_shift(shift)
    if int(n) < 1:
        raise SynthError(f"n must be at least 1, got {n}")
    if int(size) < MIN_SIZE:
        raise SynthError(f"size must be at least {MIN_SIZE} px, got {size}")
    out = Path(out)
    _prepare_out(out, overwrite)
    for c in classes:
        (out / c).mkdir(exist_ok=True)
    jobs = [(i, classes[i % len(classes)], int(seed), int(size), shift, len(classes)) for i in range(int(n))]
    workers = workers if workers is not None else min(os.cpu_count() or 1, 4)
    samples: dict[str, list[np.ndarray]] = {c: [] for c in classes}
    truths = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), unit="img", desc="synth")
    pool = mp.get_context("spawn").Pool(workers) if workers > 1 and len(jobs) > 8 else None
    try:
        results = pool.imap(_job, jobs, chunksize=4) if pool else map(_job, jobs)
        with open(out / "ground_truth.jsonl", "w", encoding="utf-8") as gt:
            for truth, data, image in results:
                (out / truth["path"]).write_bytes(data)
                gt.write(json.dumps(truth, ensure_ascii=False) + "\n")
                truths.append(truth)
                if image is not None and len(samples[truth["class"]]) < 4:
                    samples[truth["class"]].append(image)
                if bar is not None:
                    bar.update(1)
    finally:
        if pool:
            pool.close()
            pool.join()
        if bar is not None:
            bar.close()
    splits = make_splits(truths, seed)
    (out / "splits.json").write_text(json.dumps(splits, indent=1) + "\n")
    sheet = contact_sheet({c: v for c, v in samples.items() if v})
    sheet.save(out / "contact_sheet.png", format="PNG", compress_level=6, optimize=False)
    split_of = {i: s for s, ids in splits.items() for i in ids}
    per_class_split: dict[str, dict[str, int]] = {c: {s: 0 for s in splits} for c in classes}
    for t in truths:
        per_class_split[t["class"]][split_of[t["id"]]] += 1
    summary = {
        "n": len(truths),
        "size": int(size),
        "seed": int(seed),
        "shift": shift,
        "classes": list(classes),
        "per_class": {c: sum(v.values()) for c, v in per_class_split.items()},
        "per_split": {s: len(ids) for s, ids in splits.items()},
        "per_class_split": per_class_split,
        "ranges": _ranges(truths),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    return out
