"""How many labelled images the classification head needs: macro-F1 as more synthetic images join its fit.

    python bench/bench_head_images.py --run runs/smol-cpu --records demo/records.jsonl [--extra 200,500,1000]

The head is fitted as training fits it (logistic regression on the run's
frozen tower's multi-depth embedding, c 0.1, every training image in its
eight turned and mirrored views; without the degraded copy the recipe adds)
on the run's training images, then on them
plus the first N images (shuffled across classes) of a further synthetic set
(seed 7), upright only and in eight views. Each head is scored on the run's
test images and on the separate 200-image selection set (seed 1) that model
choices are made on. This decided the demo's size (``N`` in scripts/demo.sh).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def views_of(assistant, paths: list[Path], views: int) -> list[torch.Tensor]:
    """Head features [N, D] of each of the first ``views`` dihedral views of the images."""
    from bench_class_head import pixels_of

    from slava.model.class_head import head_features
    from slava.model.towers import dihedral_view

    pixels = pixels_of(paths, assistant.model.image_size)
    with assistant.inference():
        return [torch.cat([head_features(assistant.model, dihedral_view(pixels[i : i + 64], k), "multi_depth").float()
                           for i in range(0, len(pixels), 64)]) for k in range(views)]


def folder_images(root: Path) -> tuple[list[Path], list[str]]:
    pairs = [(p, p.parent.name) for p in sorted(root.glob("*/*.png"))]
    return [p for p, _ in pairs], [c for _, c in pairs]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--records", required=True, help="the run's records.jsonl (with meta.split and meta.class)")
    p.add_argument("--extra", default="200,500,1000", help="numbers of further images to try")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_class_head import synthetic

    from slava.assistant import Assistant
    from slava.hardware import describe_run
    from slava.model.towers import DIHEDRAL
    from slava.synth import write_dataset
    from slava.train.class_head import HeadConfig, fit_head, head_macro_f1

    sizes = [int(n) for n in args.extra.split(",")]
    assistant = Assistant.load(args.run, device="cpu")
    info = describe_run(assistant.precision, torch.get_num_threads())
    print(f"run {args.run}; {info.get('cpu')}, {info.get('cpu_capability')}, {assistant.precision.name}, "
          f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')}")
    train_paths, train_y, test_paths, test_y = synthetic(Path(args.records))
    with tempfile.TemporaryDirectory() as tmp:
        selection = write_dataset(Path(tmp) / "selection", 200, size=256, seed=1, workers=2)
        extra = write_dataset(Path(tmp) / "extra", max(sizes), size=256, seed=7, workers=2)
        sel_paths, sel_y = folder_images(selection)
        extra_paths, extra_y = folder_images(extra)
        order = list(range(len(extra_paths)))
        random.Random(0).shuffle(order)
        extra_paths, extra_y = [extra_paths[i] for i in order], [extra_y[i] for i in order]
        start = time.perf_counter()
        train_f, extra_f = views_of(assistant, train_paths, DIHEDRAL), views_of(assistant, extra_paths, DIHEDRAL)
        test_f, sel_f = views_of(assistant, test_paths, 1)[0], views_of(assistant, sel_paths, 1)[0]
    print(f"{len(train_paths)} training, {len(test_paths)} test, {len(sel_paths)} selection images; features in "
          f"{time.perf_counter() - start:.0f} s")

    def score(name: str, n: int, extra_views: int) -> None:
        feats = [torch.cat([train_f[k]] + ([extra_f[k][:n]] if k < extra_views else [])) for k in range(DIHEDRAL)]
        labels = [train_y + (extra_y[:n] if k < extra_views else []) for k in range(DIHEDRAL)]
        head = fit_head(torch.cat(feats), sum(labels, []), HeadConfig(c=0.1, turns=True))
        print(f"  {name:40s} test {head_macro_f1(head, test_f, test_y):.3f}   "
              f"selection {head_macro_f1(head, sel_f, sel_y):.3f}", flush=True)

    score("the run's training images", 0, 0)
    for n in sizes:
        for views in (1, DIHEDRAL):
            score(f"+ {n} images, {views} view{'s' * (views > 1)}", n, views)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
