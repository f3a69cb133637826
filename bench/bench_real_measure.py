"""Score slava.measure on the real sets beside a plain Otsu + distance-transform watershed, in one run.

    .venv/bin/python bench/bench_real_measure.py [--data ../shared/data/real-sem] [--limit N]

Per real set the table gives, for sLAVA and the baseline side by side:
- stem-nanoparticles: count MAPE over images (all objects, edge-cut ones
  included, as the boxes are) and mean-size MAPE (sLAVA's mean equivalent
  diameter against the boxes' mean equivalent diameter √(w·h)), for the
  default particle method and for ``--particles contrast`` (particles on a
  support), with each figure also over the even- and the odd-numbered
  images: the contrast limits were chosen on the even ones;
- nasa-superalloy: count MAPE (the truth counts connected components
  ≥ 10 px, 8-connected; sLAVA's dark-phase kind ``pores`` counts components
  too, the baseline its components ≥ 10 px) and area-fraction error (mean
  |measured − true|, in points, and MAPE). γ′ images dark here, so both
  methods are told the objects are the dark phase;
- deepsem-nanowires: count MAPE on the labelled tiles (all box classes),
  counted as wires (the ``fibres`` kind, which sLAVA uses for nanowire
  images) and as particles;
- gift-fibres, fei-lung-cells and the Zeiss sample: the OCR'd scale bar's
  pixel size against the file tag (largest relative difference).
No parameter is set per image; both methods see the images as read.
With ``--shifts`` (default noise,jpeg) the count and size figures are also given
with every image under each of those ``slava.artefacts`` at moderate and strong
severity, beside the clean figure and their ratio to it.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import threshold_otsu
from skimage.segmentation import watershed

from slava import artefacts as A
from slava.hardware import cpu_info
from slava.io import load_micrograph, read_instrument
from slava.measure import measure

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "real-sem"
ZEISS = ROOT.parent / "shared" / "data" / "sem-samples" / "zeiss-nanoporous-gold.tif"


def baseline(pixels: np.ndarray, dark: bool | None = None) -> tuple[np.ndarray, int]:
    """The plain method: Otsu on a lightly smoothed image, distance-transform peaks, watershed.

    Objects are the dark phase when ``dark``, the bright phase when not, and
    the minority phase when None; specks under 10 px are dropped.
    """
    smooth = ndi.gaussian_filter(pixels.astype(np.float32), 1.0)
    fg = smooth > threshold_otsu(smooth)
    if (dark is None and fg.mean() > 0.5) or dark:
        fg = ~fg
    labels, n = ndi.label(fg)
    fg = (np.bincount(labels.ravel()) >= 10)[labels] & fg  # specks under 10 px are noise
    distance = ndi.distance_transform_edt(fg)
    peaks = peak_local_max(distance, min_distance=3, labels=ndi.label(fg)[0], exclude_border=False)
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = watershed(-distance, markers, mask=fg)
    return labels, int(labels.max())


def _load(path: Path, shift: tuple[str, str] | None, seed: int):
    """The micrograph as read, or with its image area under one artefact at one severity."""
    m = load_micrograph(path, read_bar=False)
    return m if shift is None else replace(m, pixels=A.shifted(m.pixels, *shift, seed=seed))


def _mape(pairs: list[tuple[float, float]]) -> float:
    return 100.0 * float(np.mean([abs(m - t) / t for m, t in pairs if t]))


def stem(data: Path, limit: int | None, shift: tuple[str, str] | None = None) -> dict:
    rows = [json.loads(line) for line in (data / "stem-nanoparticles" / "truth.jsonl").open()][:limit]
    out = {"slava": ([], []), "contrast": ([], []), "otsu": ([], [])}
    for i, row in enumerate(rows):
        m = _load(data / "stem-nanoparticles" / row["image"], shift, i)
        boxes = np.loadtxt(data / "stem-nanoparticles" / row["annotation"], ndmin=2)
        true_d = float(np.mean(np.sqrt(boxes[:, 3] * row["width"] * boxes[:, 4] * row["height"])))
        for key, method in (("slava", "auto"), ("contrast", "contrast")):
            p = measure(m, kinds=("particles",), particle_method=method).particles
            out[key][0].append((p.count + p.border_count, row["count"]))
            if p.mean_diameter:
                out[key][1].append((p.mean_diameter, true_d))
        labels, n = baseline(m.pixels)
        areas = np.bincount(labels.ravel())[1:]
        out["otsu"][0].append((n, row["count"]))
        if n:
            out["otsu"][1].append((float(np.mean(2 * np.sqrt(areas / np.pi))), true_d))
    return {k: {"count MAPE %": _mape(c), "mean-size MAPE %": _mape(s),
                "count MAPE % (even / odd)": (_mape(c[::2]), _mape(c[1::2])),
                "mean-size MAPE % (even / odd)": (_mape(s[::2]), _mape(s[1::2]))} for k, (c, s) in out.items()}


def _components(mask: np.ndarray) -> int:
    labels, n = ndi.label(mask, structure=np.ones((3, 3)))
    return int((np.bincount(labels.ravel())[1:] >= 10).sum()) if n else 0


def superalloy(data: Path, limit: int | None, shift: tuple[str, str] | None = None) -> dict:
    rows = [json.loads(line) for line in (data / "nasa-superalloy" / "truth.jsonl").open()][:limit]
    out = {"slava": ([], []), "otsu": ([], [])}
    for i, row in enumerate(rows):
        m = _load(data / "nasa-superalloy" / row["image"], shift, i)
        fraction = sum(row["area_fraction"].values())
        # γ′ precipitates image dark in a bright γ matrix: sLAVA's dark-phase kind measures them.
        dark = measure(m, kinds=("pores",)).pores
        out["slava"][0].append((dark.count, row["count"]))
        out["slava"][1].append((dark.pore_fraction, fraction))
        labels, _ = baseline(m.pixels, dark=True)
        out["otsu"][0].append((_components(labels > 0), row["count"]))
        out["otsu"][1].append((float((labels > 0).mean()), fraction))
    return {k: {"count MAPE %": _mape(c), "area-fraction error (points)": 100 * float(np.mean([abs(a - b) for a, b in f])),
                "area-fraction MAPE %": _mape(f)} for k, (c, f) in out.items()}


def nanowires(data: Path, limit: int | None, shift: tuple[str, str] | None = None) -> dict:
    tiles = [t for line in (data / "deepsem-nanowires" / "truth.jsonl").open()
             for t in json.loads(line).get("labelled_tiles", [])][:limit]
    out = {"slava": ([], []), "otsu": ([], [])}
    for i, tile in enumerate(tiles):
        m = _load(data / "deepsem-nanowires" / tile["image"], shift, i)
        found = measure(m, kinds=("fibres", "particles"))
        out["slava"][0].append((found.fibres.count, tile["count"]))
        out["slava"][1].append((found.particles.count + found.particles.border_count, tile["count"]))
        n = baseline(m.pixels)[1]
        out["otsu"][0].append((n, tile["count"]))
        out["otsu"][1].append((n, tile["count"]))
    return {k: {"count MAPE % (as wires)": _mape(w), "count MAPE % (as particles)": _mape(p)} for k, (w, p) in out.items()}


def calibration(data: Path) -> dict:
    files = [(data / d / json.loads(line)["image"], json.loads(line)["pixel_size_nm"])
             for d in ("gift-fibres", "fei-lung-cells") for line in (data / d / "truth.jsonl").open()]
    if ZEISS.exists():
        files.append((ZEISS, None))
    worst, read, seconds = 0.0, 0, 0.0
    for path, tag in files:
        start = time.perf_counter()
        m = load_micrograph(path, read_bar=False)
        inst = read_instrument(m)
        seconds += time.perf_counter() - start
        tag = tag or m.pixel_size_nm
        if inst and inst.pixel_size_nm:
            read += 1
            worst = max(worst, abs(inst.pixel_size_nm / tag - 1))
    return {"ocr": {"images with a bar": len(files), "scale bar read": read, "worst |OCR / tag - 1| %": 100 * worst,
                    "OCR s per image": seconds / len(files)}}


COLUMNS = {"slava": "sLAVA", "contrast": "sLAVA contrast", "otsu": "Otsu+WS"}
"""The methods a set's table can have, in column order."""


def _cell(value: float | tuple[float, float]) -> str:
    return " / ".join(f"{v:.1f}" for v in value) if isinstance(value, tuple) else f"{value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--limit", type=int, default=None, help="first N images of each set (for a quick look)")
    parser.add_argument("--shifts", default="noise,jpeg", help="artefacts to measure under as well (none: clean only)")
    args = parser.parse_args()
    shifts = [] if args.shifts == "none" else [(a, sev) for a in args.shifts.split(",") for sev in A.SEVERITIES]
    if not args.data.exists():
        raise SystemExit(f"{args.data}: real-sem data not present")
    cpu = cpu_info()
    print(f"real-set measurement bench, {time.strftime('%Y-%m-%d')}, {cpu.model} ({cpu.capability})")
    for name, run in (("stem-nanoparticles", stem), ("nasa-superalloy", superalloy), ("deepsem-nanowires", nanowires)):
        start = time.perf_counter()
        result = run(args.data, args.limit)
        print(f"\n{name} ({time.perf_counter() - start:.0f} s)")
        keys = list(result["slava"])
        methods = [k for k in COLUMNS if k in result]
        print(f"  {'':<32}" + "".join(f"{COLUMNS[k]:>16}" for k in methods))
        for key in keys:
            print(f"  {key:<32}" + "".join(f"{_cell(result[k][key]):>16}" for k in methods))
        for shift in shifts:
            moved = run(args.data, args.limit, shift)
            label = "/".join(shift)
            for key in keys:
                if isinstance(result["slava"][key], tuple):
                    continue
                ratio = moved["slava"][key] / result["slava"][key] if result["slava"][key] else float("nan")
                print(f"  {key + ' ' + label:<32}" + "".join(f"{_cell(moved[k][key]):>16}" for k in methods)
                      + f"   sLAVA {ratio:.2f}x clean")
    print("\ncalibration from the data bar")
    for key, value in calibration(args.data)["ocr"].items():
        print(f"  {key:<30}{value:>10.3g}")


if __name__ == "__main__":
    main()
