"""Measurement at low dose: the pixel noise is read from electron counts, and real images counted under it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from slava import artefacts as A
from slava.io import load_micrograph
from slava.measure import measure
from slava.measure.prepare import noise_level

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real-sem"
needs_data = pytest.mark.skipif(not REAL.exists(), reason="shared/data/real-sem not present")


def test_noise_of_a_few_electrons_a_pixel_is_read_from_the_counts():
    # A dark field at 0.3 electrons a pixel with brighter discs at 3: most
    # neighbours hold the same count, which a median-based spread reads as 0.
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:256, :256]
    mean = np.where(((yy % 32 - 16) ** 2 + (xx % 32 - 16) ** 2) < 64, 3.0, 0.3)
    counts = rng.poisson(mean).astype(np.float32) / 4.0
    true_noise = float(np.std(counts - mean / 4.0))
    assert abs(noise_level(counts) / true_noise - 1) < 0.25
    clean = rng.normal(0.5, 0.05, (256, 256)).astype(np.float32)
    assert abs(noise_level(clean) / 0.05 - 1) < 0.1  # Gaussian noise reads as before


@needs_data
def test_nanowires_counted_at_one_electron_a_pixel_as_when_clean():
    tiles = [t for line in (REAL / "deepsem-nanowires" / "truth.jsonl").open()
             for t in json.loads(line).get("labelled_tiles", [])][::6]
    clean, dosed, truth = [], [], []
    for i, tile in enumerate(tiles):
        m = load_micrograph(REAL / "deepsem-nanowires" / tile["image"], read_bar=False)
        clean.append(measure(m, kinds=("fibres",)).fibres.count)
        noisy = replace(m, pixels=A.shifted(m.pixels, "noise", "strong", seed=i))
        dosed.append(measure(noisy, kinds=("fibres",)).fibres.count)
        truth.append(tile["count"])
    clean_err = np.mean(np.abs(np.subtract(clean, truth)) / truth)
    dosed_err = np.mean(np.abs(np.subtract(dosed, truth)) / truth)
    # Read as nearly clean, the noise was hardly smoothed and wires broke into specks (22× the clean error).
    assert dosed_err < max(1.5 * clean_err, 0.2), (clean, dosed, truth)


@needs_data
def test_superalloy_precipitates_counted_at_one_electron_a_pixel_as_when_clean():
    rows = [json.loads(line) for line in (REAL / "nasa-superalloy" / "truth.jsonl").open()][::4]
    errors = []
    for i, row in enumerate(rows):
        m = load_micrograph(REAL / "nasa-superalloy" / row["image"], read_bar=False)
        noisy = replace(m, pixels=A.shifted(m.pixels, "noise", "strong", seed=i))
        errors.append(abs(measure(noisy, kinds=("pores",)).pores.count - row["count"]) / row["count"])
    assert float(np.median(errors)) < 0.3, errors


@needs_data
def test_a_very_noisy_image_is_flagged_and_a_clean_one_is_not():
    path = REAL / "stem-nanoparticles" / "images" / "Ru2.jpg"
    m = load_micrograph(path, read_bar=False)
    noisy = replace(m, pixels=A.shifted(m.pixels, "noise", "strong", seed=0))
    flagged = lambda mg: any("very noisy" in n for n in measure(mg, kinds=("particles",)).notes)
    assert flagged(noisy) and not flagged(m)
    assert not any("very noisy" in n for n in measure(noisy, kinds=("texture",)).notes)
