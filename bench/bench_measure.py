"""Score slava.measure against synthetic ground truth and time it.

    .venv/bin/python bench/bench_measure.py [--n 20] [--size 256]

For each category the table gives the count error (mean absolute error over
the images), the mean-size error (median over images of |measured − true| /
true, %) and, where it applies, the pore fraction or pitch error. The cost
table then times, on the same images in this run, every kind alone, the
default (all kinds) and the screening pair particles + texture, as CPU time
per image (``time.process_time``, one core).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from slava.io import micrograph_from_array
from slava.measure import KINDS, measure


CATEGORIES = {
    "particles": dict(
        count=lambda m: m.particles.count, true_count=lambda q: q["particle_count"],
        size=lambda m: m.particles.mean_diameter, true_size=lambda q: q["mean_diameter_nm"]),
    "powders": dict(
        count=lambda m: m.particles.count + m.particles.border_count, true_count=lambda q: q["grain_count"],
        size=lambda m: m.particles.mean_diameter, true_size=lambda q: q["mean_grain_size_nm"]),
    "fibres": dict(
        count=lambda m: m.fibres.count, true_count=lambda q: q["fibre_count"],
        size=lambda m: m.fibres.mean_width, true_size=lambda q: q["mean_width_nm"],
        extra=("orientation err °", lambda m: m.fibres.orientation_deg, lambda q: q["orientation_deg"], "axial")),
    "nanowires": dict(
        count=lambda m: m.fibres.count, true_count=lambda q: q["fibre_count"],
        size=lambda m: m.fibres.mean_width, true_size=lambda q: q["mean_width_nm"],
        extra=("orientation err °", lambda m: m.fibres.orientation_deg, lambda q: q["orientation_deg"], "axial")),
    "porous_sponges": dict(
        size=lambda m: m.pores.mean_pore_size, true_size=lambda q: q["mean_pore_size_nm"],
        extra=("pore fraction err", lambda m: m.pores.pore_fraction, lambda q: q["pore_fraction"], "abs")),
    "patterned_surfaces": dict(
        size=lambda m: m.periodicity.pitch, true_size=lambda q: q["pitch_nm"],
        extra=("pitch found", lambda m: m.periodicity.pitch is not None, lambda q: True, "rate")),
}


def _error(kind: str, measured, true) -> float:
    if kind == "axial":
        return abs((measured - true + 90.0) % 180.0 - 90.0) if measured is not None else 90.0
    if kind == "rate":
        return float(bool(measured))
    return abs(measured - true)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="images per category")
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    from slava.synth import generate

    print(f"{'category':<20}{'n':>4}{'count MAE':>11}{'true count':>14}{'size err %':>12}  extra")
    all_micrographs = []
    for cls, spec in CATEGORIES.items():
        counts, sizes, extras = [], [], []
        true_counts = []
        for seed in range(args.n):
            image, truth = generate(cls, 1000 + seed, size=args.size)
            mg = micrograph_from_array(image, pixel_size_nm=truth["pixel_size_nm"])
            all_micrographs.append(mg)
            m, q = measure(mg), truth["quantities"]
            if "count" in spec:
                counts.append(abs(spec["count"](m) - spec["true_count"](q)))
                true_counts.append(spec["true_count"](q))
            size, true = spec["size"](m), spec["true_size"](q)
            sizes.append(100.0 * abs(size - true) / true if size is not None else 100.0)
            if "extra" in spec:
                name, got, want, kind = spec["extra"]
                extras.append(_error(kind, got(m), want(q)))
        count_txt = f"{np.mean(counts):>11.2f}{np.mean(true_counts):>14.1f}" if counts else f"{'—':>11}{'—':>14}"
        extra_txt = f"{spec['extra'][0]} {np.mean(extras):.3f}" if extras else ""
        print(f"{cls:<20}{args.n:>4}{count_txt}{np.median(sizes):>12.1f}  {extra_txt}")

    print(f"\n{'kinds':<22}{'CPU ms/image':>14}{'images/s':>10}")
    for kinds in [KINDS, ("particles", "texture"), *((kind,) for kind in KINDS)]:
        per_image = _cpu_per_image(all_micrographs, kinds)
        name = "default (all)" if kinds == KINDS else " + ".join(kinds)
        print(f"{name:<22}{1000 * per_image:>14.1f}{1.0 / per_image:>10.1f}")
    print(f"({len(all_micrographs)} images at {args.size} px, best of {REPEATS} passes, one core)")
    print("size err % is the median over images of |measured − true| / true of the image's mean size")


REPEATS = 2
"""Timing passes per kind set; the fastest counts (the others caught a busy machine)."""


def _cpu_per_image(micrographs: list, kinds: tuple[str, ...]) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        start = time.process_time()
        for mg in micrographs:
            measure(mg, kinds=kinds)
        best = min(best, (time.process_time() - start) / len(micrographs))
    return best


if __name__ == "__main__":
    main()
