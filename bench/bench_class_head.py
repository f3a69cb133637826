"""Which classification head screening should use: held-out macro-F1 of head variants beside LM scoring.

    python bench/bench_class_head.py --run runs/tiny-cpu --records demo/records.jsonl \
        [--neu ../shared/data/neu-det/images]

Each set also scores ``head.turns``: the head fitted on every training image's
eight turned and mirrored views, on upright and on quarter-turned test images.

Synthetic: the head variants are fitted on the run's training images
(``meta.split`` "train") and scored on its test images, as is LM scoring of
the same labels by the run itself. NEU-DET (6 classes, folders of images,
never seen by the run): the head is fitted on 70 % of each class (by file
hash) through the run's frozen tower and scored on the rest; LM scoring there
is zero-shot, so it is the floor a head must beat, not a like-for-like rival.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = [("logistic", "pooled"), ("logistic", "multi_depth"), ("prototype", "pooled"), ("prototype", "multi_depth")]


def pixels_of(paths: list[Path], size: int) -> torch.Tensor:
    """Model inputs of image files, decoded as screening decodes them."""
    from slava.assistant.screen import decode_one

    rows = [decode_one((str(p.parent), p.name, size, False)) for p in paths]
    bad = [r for r in rows if "pixels" not in r]
    if bad:
        raise SystemExit(f"unreadable: {bad[0]}")
    return torch.stack([torch.from_numpy(r["pixels"]) for r in rows])


def features(model, pixels: torch.Tensor, kind: str) -> torch.Tensor:
    from slava.model.class_head import head_features

    with torch.inference_mode():
        return torch.cat([head_features(model, pixels[i : i + 32], kind) for i in range(0, len(pixels), 32)])


def synthetic(records: Path) -> tuple[list[Path], list[str], list[Path], list[str]]:
    """Unique (image, class) of the train and test splits of a records file."""
    seen: dict[str, dict[Path, str]] = {"train": {}, "test": {}}
    for line in records.open():
        rec = json.loads(line)
        meta = rec.get("meta") or {}
        if meta.get("split") in seen and meta.get("class"):
            seen[meta["split"]][records.parent / rec["image"]] = meta["class"]
    tr, te = seen["train"], seen["test"]
    return list(tr), list(tr.values()), list(te), list(te.values())


def folder_split(root: Path) -> tuple[list[Path], list[str], list[Path], list[str]]:
    """70 / 30 split of an ImageFolder by a hash of each file name."""
    out: tuple[list, list, list, list] = ([], [], [], [])
    for cls in sorted(p.name for p in root.iterdir() if p.is_dir()):
        for path in sorted((root / cls).iterdir()):
            test = int(hashlib.sha256(path.name.encode()).hexdigest()[:8], 16) / 16**8 >= 0.7
            out[2 * test].append(path)
            out[2 * test + 1].append(cls)
    return out


def turned(model, upright: tuple[torch.Tensor, torch.Tensor], train_px: torch.Tensor, train_y: list[str],
           test_px: torch.Tensor, test_y: list[str], labels: list[str]) -> None:
    """``head.turns``: the logistic head fitted on the upright training images, then on their eight turned and
    mirrored views, each scored on the upright and on the quarter-turned test images."""
    from slava.eval.metrics import macro_f1
    from slava.model.towers import dihedral_views
    from slava.train.class_head import HeadConfig, fit_head

    views = torch.cat([upright[0]] + [features(model, v, "multi_depth") for v in dihedral_views(train_px)[1:]])
    quarter = features(model, torch.rot90(test_px, 1, dims=(-2, -1)), "multi_depth")
    for name, x in (("upright training images", upright[0]), ("8 views of each (head.turns)", views)):
        head = fit_head(x, train_y * (len(x) // len(train_y)), HeadConfig(features="multi_depth"))
        f1 = [macro_f1(test_y, [head.labels[i] for i in head(t).argmax(dim=1).tolist()], labels)
              for t in (upright[1], quarter)]
        print(f"  head logistic on multi_depth, {name}: macro-F1 {f1[0]:.3f} upright, {f1[1]:.3f} quarter-turned test")


def bench(name: str, assistant, split, lm_limit: int) -> None:
    from slava.eval.metrics import macro_f1
    from slava.train.class_head import HeadConfig, fit_head

    model = assistant.model
    train_paths, train_y, test_paths, test_y = split
    labels = sorted(set(train_y))
    start = time.perf_counter()
    train_px, test_px = pixels_of(train_paths, model.image_size), pixels_of(test_paths, model.image_size)
    print(f"{name}: {len(train_paths)} train / {len(test_paths)} test images, {len(labels)} classes, "
          f"decoded in {time.perf_counter() - start:.0f} s")
    cache = {}
    for kind, feats in VARIANTS:
        if feats not in cache:
            cache[feats] = features(model, train_px, feats), features(model, test_px, feats)
        head = fit_head(cache[feats][0], train_y, HeadConfig(kind=kind, features=feats))
        pred = [head.labels[i] for i in head(cache[feats][1]).argmax(dim=1).tolist()]
        print(f"  head {kind:9s} on {feats:11s}: macro-F1 {macro_f1(test_y, pred, labels):.3f}")
    turned(model, cache["multi_depth"], train_px, train_y, test_px, test_y, labels)
    n = min(lm_limit, len(test_paths))
    step = max(1, len(test_paths) // n)
    idx = list(range(0, len(test_paths), step))[:n]
    results = []
    for i in range(0, len(idx), 16):
        results += assistant.classify_pixels(test_px[idx[i : i + 16]], labels, method="lm")
    f1 = macro_f1([test_y[i] for i in idx], [r.label for r in results], labels)
    print(f"  LM scoring ({len(labels)} labels, {n} of the test images): macro-F1 {f1:.3f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--records", required=True, help="the run's records.jsonl (with meta.split and meta.class)")
    p.add_argument("--neu", default=str(ROOT.parent / "shared" / "data" / "neu-det" / "images"))
    p.add_argument("--lm-images", type=int, default=400, help="test images LM scoring is run on (it is slow)")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from slava.assistant import Assistant
    from slava.hardware import describe_run

    assistant = Assistant.load(args.run, device="cpu")
    info = describe_run(assistant.precision, torch.get_num_threads())
    print(f"run {args.run} (tower at {assistant.model.image_size} px); {info.get('cpu')}, {info.get('cpu_capability')}, "
          f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')}")
    bench("synthetic held-out", assistant, synthetic(Path(args.records)), args.lm_images)
    neu = Path(args.neu)
    if neu.is_dir():
        bench("NEU-DET (zero-shot for the LM)", assistant, folder_split(neu), args.lm_images)
    else:
        print(f"{neu}: not found, NEU-DET skipped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
