"""Classification under instrument artefacts, per recipe variant, side by side in one run.

    .venv/bin/python bench/bench_robustness.py [--data SYNTH] [--neu DIR] [--lung DIR] [--train-tower] [--json OUT]
                                               [--parts synthetic,neu,lung]

Every variant classifies with the run's head: logistic regression on
EfficientNet-Lite0's multi-depth embedding at 160 px, as recipes/smol-cpu.yaml
does, fitted on the synthetic train split (700 images, seed 0, the demo's set,
written here unless --data names a set). Variants:
- plain: the head on clean images only;
- stretch: ``vision.stretch`` (robust contrast stretch before the tower);
- stretch+denoise: and ``vision.denoise``;
- stretch+aug1: and the head fitted on one degraded copy of each training image too
  (``head.augment: 1, c: 0.1``);
- stretch+turns: the head on each clean training image's eight turned and mirrored
  views (``head.turns``), no degraded copy, ``c: 0.1``;
- stretch+aug1+turns: and on one degraded copy too (what smol-cpu ships);
- stretch+aug4: four copies, ``c: 0.03``;
- tower+aug (--train-tower): the top 3 tower blocks first trained for 4 epochs on
  the classes with degraded copies (a tower that learns), then as stretch+aug1.
Sets: a separate synthetic selection set (200 images, seed 1, every image),
on which the shipped variant was chosen, and the demo set's test split, each
clean and under each ``slava.artefacts`` artefact at moderate and strong
severity, the test images' twins rendered under the generator's own shifts,
and every image of the real sets (the share whose class names its objects,
``REAL_CLASSES``, averaged over the sets); NEU-DET 5-shot
prototypes (support from its train split, no NEU training) on up to 20 test
images per class, clean and under the same artefacts; fei-lung-cells
leave-one-out 1-shot prototypes of the exposure class and of the cell group.
Prototypes are scored on one view of each image and on the mean over its
rotations and mirror images (" 8 views", what sLAVA's few-shot uses).
``--parts neu,lung`` runs the few-shot parts alone.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from slava import artefacts as A
from slava.assistant.fewshot import prototype_probs, prototypes
from slava.eval.data import load_eval_data
from slava.hardware import cpu_info
from slava.io import load_micrograph, micrograph_from_array
from slava.model.config import VisionConfig
from slava.model.pixels import to_model_pixels
from slava.model.towers import DIHEDRAL, build_tower, dihedral_view, few_shot_embedding, multi_depth_embedding
from slava.train.augment import degrade, variant_seed
from slava.train.class_head import HeadConfig, fit_head, head_macro_f1

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SIZE = 160
VARIANTS = {
    "plain": dict(stretch=False, denoise=False, augment=0, c=1.0),
    "stretch": dict(stretch=True, denoise=False, augment=0, c=1.0),
    "stretch+denoise": dict(stretch=True, denoise=True, augment=0, c=1.0),
    "stretch+aug1": dict(stretch=True, denoise=False, augment=1, c=0.1),
    "stretch+turns": dict(stretch=True, denoise=False, augment=0, c=0.1, turns=True),
    "stretch+aug1+turns (shipped)": dict(stretch=True, denoise=False, augment=1, c=0.1, turns=True),
    "stretch+aug4": dict(stretch=True, denoise=False, augment=4, c=0.03),
}
REAL_CLASSES = {"stem-nanoparticles": {"particles", "powders"}, "nasa-superalloy": {"particles", "powders"},
                "deepsem-nanowires": {"nanowires"}, "gift-fibres": {"fibres"}, "fei-lung-cells": {"biological"}}
"""The synthetic classes whose name and caption describe each real set's objects."""


def embed(tower, pixels: list[torch.Tensor], embedding=multi_depth_embedding) -> torch.Tensor:
    return torch.cat([embedding(tower, torch.stack(pixels[i : i + 32])) for i in range(0, len(pixels), 32)])


VIEWS = {"": multi_depth_embedding, " 8 views": few_shot_embedding}
"""Prototype embeddings compared: one view, and the mean over rotations and mirror images that sLAVA uses."""


def shifted_sets(images: list[np.ndarray], seed: int) -> dict[str, list[np.ndarray]]:
    """Each image under each artefact at each severity, keyed "artefact/severity"."""
    out = {"clean": images}
    for name in A.ARTEFACTS:
        for severity in A.SEVERITIES:
            out[f"{name}/{severity}"] = [A.shifted(x, name, severity, seed + i) for i, x in enumerate(images)]
    return out


def rendered_twins(items, summary: dict) -> dict[str, list[np.ndarray]]:
    """The test images re-rendered under the generator's shifts (as ``slava eval --shifts`` does)."""
    from slava.synth import SHIFTS, generate
    from slava.synth.params import image_seed

    out = {}
    for shift in SHIFTS:
        out[f"rendered {shift}"] = []
        for it in items:
            index = int(Path(it.image).stem.rsplit("-", 1)[1])
            image, _ = generate(it.label, image_seed(summary["seed"], index), size=summary["size"], shift=shift)
            out[f"rendered {shift}"].append(micrograph_from_array(image, read_bar=False).pixels)
    return out


def train_tower(tower, pixels: list[torch.Tensor], labels: list[str], seed: int, epochs: int = 4) -> None:
    """Train the top 3 blocks with a linear layer on the classes, each example clean or degraded (p 0.6)."""
    classes = sorted(set(labels))
    y = torch.tensor([classes.index(c) for c in labels])
    tower.set_trainable(3)
    linear = torch.nn.Linear(tower.dim, len(classes))
    opt = torch.optim.AdamW([{"params": [p for p in tower.parameters() if p.requires_grad], "lr": 3e-4},
                             {"params": linear.parameters(), "lr": 3e-3}], weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        order = torch.randperm(len(pixels), generator=gen).tolist()
        for i in range(0, len(order), 16):
            idx = order[i : i + 16]
            batch = [degrade(pixels[j], variant_seed(seed + 100 + epoch, str(j), 1))
                     if torch.rand(1, generator=gen).item() < 0.6 else pixels[j] for j in idx]
            loss = F.cross_entropy(linear(tower(torch.stack(batch)).mean(dim=1)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    tower.requires_grad_(False)


def synthetic(data: Path, selection: Path, real: Path | None, variants: dict, tower_variant: bool, seed: int) -> dict:
    from slava.eval.real_sem import real_sets

    ds, sel = load_eval_data(data), load_eval_data(selection)
    train, test, chosen = ds.split("train"), ds.split("test"), sel.items
    y_train = [it.label for it in train]
    truth = {"selection": [it.label for it in chosen], "test": [it.label for it in test]}
    load = lambda items: [load_micrograph(it.image, read_bar=False).pixels for it in items]  # noqa: E731
    train_px = [to_model_pixels(x, SIZE) for x in load(train)]
    sets = {"selection": shifted_sets(load(chosen), 5000), "test": shifted_sets(load(test), 1000)}
    sets["test"].update(rendered_twins(test, ds.synth))
    sets_px = {s: {k: [to_model_pixels(x, SIZE) for x in v] for k, v in d.items()} for s, d in sets.items()}
    real_px = {name: [to_model_pixels(load_micrograph(p, read_bar=False).pixels, SIZE) for p in paths]
               for name, paths in (real_sets(real).items() if real else ()) if name in REAL_CLASSES}
    results = {}
    todo = dict(variants)
    if tower_variant:
        todo["tower+aug1"] = dict(stretch=True, denoise=False, augment=1, c=0.1, train_tower=True)
    for name, v in todo.items():
        start = time.perf_counter()
        tower = build_tower(VisionConfig(image_size=SIZE, stretch=v["stretch"], denoise=v["denoise"])).eval()
        if v.get("train_tower"):
            train_tower(tower, train_px, y_train, seed)
        tower = tower.for_inference()
        views = [[dihedral_view(p, k) for p in train_px] for k in range(DIHEDRAL if v.get("turns") else 1)]
        copies = views + [[degrade(p, variant_seed(seed, it.image, k)) for it, p in zip(train, train_px)]
                          for k in range(1, v["augment"] + 1)]
        head = fit_head(torch.cat([embed(tower, c) for c in copies]), y_train * len(copies), HeadConfig(c=v["c"]))
        results[name] = {s: {k: head_macro_f1(head, embed(tower, px), truth[s]) for k, px in d.items()}
                         for s, d in sets_px.items()}
        results[name]["real"] = {}
        for set_name, px in real_px.items():
            picked = [head.labels[i] for i in head(embed(tower, px)).argmax(dim=1).tolist()]
            results[name]["real"][set_name] = float(np.mean([p in REAL_CLASSES[set_name] for p in picked]))
        results[name]["seconds"] = time.perf_counter() - start
        print(f"  {name}: {results[name]['seconds']:.0f} s", flush=True)
    return results


def neu(folder: Path, variants: dict, per_class: int, shots: int = 5) -> dict:
    ds = load_eval_data(folder)
    test = [it for c in ds.labels for it in [x for x in ds.split("test") if x.label == c][:per_class]]
    support = {c: [it for it in ds.split("train") if it.label == c][:shots] for c in ds.labels}
    sets = shifted_sets([load_micrograph(it.image, read_bar=False).pixels for it in test], 9000)
    truth = [it.label for it in test]
    out = {}
    for name, v in variants.items():
        if v["augment"] or v.get("turns"):
            continue  # prototypes have no head to augment
        tower = build_tower(VisionConfig(image_size=SIZE, stretch=v["stretch"], denoise=v["denoise"])).for_inference()
        support_pixels = {c: [to_model_pixels(load_micrograph(it.image, read_bar=False).pixels, SIZE) for it in s]
                          for c, s in support.items()}
        for suffix, embedding in VIEWS.items():
            labels, protos, centre = prototypes({c: embed(tower, p, embedding) for c, p in support_pixels.items()})
            out[name + suffix] = {}
            for key, images in sets.items():
                probs = prototype_probs(embed(tower, [to_model_pixels(x, SIZE) for x in images], embedding), protos, centre)
                pred = [labels[k] for k in probs.argmax(dim=1).tolist()]
                out[name + suffix][key] = float(np.mean([p == t for p, t in zip(pred, truth)]))
    return out


def lung_cells(folder: Path, variants: dict) -> dict:
    rows = [json.loads(line) for line in (folder / "truth.jsonl").open()]
    out = {}
    for name, v in variants.items():
        if v["augment"] or v.get("turns"):
            continue
        tower = build_tower(VisionConfig(image_size=SIZE, stretch=v["stretch"], denoise=v["denoise"])).for_inference()
        pixels = [to_model_pixels(load_micrograph(folder / r["image"], read_bar=False).pixels, SIZE) for r in rows]
        for suffix, embedding in VIEWS.items():
            emb = embed(tower, pixels, embedding)
            out[name + suffix] = {}
            for key in ("class", "group"):
                hits = []
                for i, r in enumerate(rows):
                    # Leave-one-out: one support image per class, none of them the query.
                    support: dict[str, torch.Tensor] = {}
                    for j, s in enumerate(rows):
                        if j != i and s[key] not in support:
                            support[s[key]] = emb[j : j + 1]
                    labels, protos, centre = prototypes(support)
                    hits.append(labels[int(prototype_probs(emb[i : i + 1], protos, centre).argmax())] == r[key])
                out[name + suffix][key] = float(np.mean(hits))
    return out


def _table(results: dict, split: str) -> None:
    keys = list(next(iter(results.values()))[split])
    names = list(results)
    print(f"  {'set':<22}" + "".join(f"{n:>24}" for n in names))
    for k in keys:
        print(f"  {k:<22}" + "".join(f"{results[n][split][k]:>24.3f}" for n in names))
    for sev in A.SEVERITIES if any(k.endswith("/" + s) for k in keys for s in A.SEVERITIES) else ():
        worst = {n: min(v for k, v in results[n][split].items() if k.endswith("/" + sev)) for n in names}
        print(f"  {'worst ' + sev:<22}" + "".join(f"{worst[n]:>24.3f}" for n in names))
    mean = {n: float(np.mean(list(results[n][split].values()))) for n in names}
    print(f"  {'mean of the rows':<22}" + "".join(f"{mean[n]:>24.3f}" for n in names))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="synthetic set (default: 700 images written here, as the demo)")
    parser.add_argument("--real", type=Path, default=SHARED / "real-sem")
    parser.add_argument("--neu", type=Path, default=SHARED / "neu-det" / "images")
    parser.add_argument("--lung", type=Path, default=SHARED / "real-sem" / "fei-lung-cells")
    parser.add_argument("--neu-per-class", type=int, default=20)
    parser.add_argument("--train-tower", action="store_true", help="also the variant whose tower learns")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parts", default="synthetic,neu,lung", help="which parts to run (comma-separated)")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if parts - {"synthetic", "neu", "lung"}:
        parser.error(f"unknown parts {sorted(parts - {'synthetic', 'neu', 'lung'})}; known: synthetic, neu, lung")
    torch.manual_seed(args.seed)
    cpu = cpu_info()
    print(f"robustness bench, {time.strftime('%Y-%m-%d')}, {cpu.model} ({cpu.capability}), fp32, "
          f"{torch.get_num_threads()} threads")
    results: dict = {}
    if "synthetic" in parts:
        with tempfile.TemporaryDirectory() as tmp:
            from slava.synth import write_dataset

            data = args.data or write_dataset(Path(tmp) / "synth", 700, size=256, seed=0, overwrite=True)
            selection = write_dataset(Path(tmp) / "selection", 200, size=256, seed=1, overwrite=True)
            print("\nsynthetic sets: macro-F1 of the head")
            results["synthetic"] = synthetic(data, selection, args.real if args.real.is_dir() else None, VARIANTS,
                                             args.train_tower, args.seed)
        for split in ("selection", "test"):
            print(f"\n {split} set")
            _table(results["synthetic"], split)
        if args.real.is_dir():
            print("\nreal sets: share of images whose head class names their objects (REAL_CLASSES)")
            _table({n: {"real": r["real"]} for n, r in results["synthetic"].items()}, "real")
    if "neu" in parts and args.neu.is_dir():
        results["neu_5shot"] = neu(args.neu, VARIANTS, args.neu_per_class)
        print(f"\nNEU-DET 5-shot prototypes, top-1 on {args.neu_per_class} test images per class")
        _table({k: {"neu": v} for k, v in results["neu_5shot"].items()}, "neu")
    if "lung" in parts and args.lung.is_dir():
        results["lung_cells"] = lung_cells(args.lung, VARIANTS)
        print("\nfei-lung-cells, leave-one-out 1-shot prototypes (10 images; chance 0.2 for class, 0.5 for group)")
        for name, row in results["lung_cells"].items():
            print(f"  {name:<26} exposure class {row['class']:.2f}   cell group {row['group']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
