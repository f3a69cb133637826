"""Particles found by local contrast: synthetic blobs, dark particles, and the real STEM/TEM set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from skimage.draw import disk

from slava.io import load_micrograph, micrograph_from_array
from slava.measure import MeasureError, measure
from slava.measure.blobs import blob_labels, find_blobs
from slava.measure.prepare import equivalent_diameters, noise_level

STEM = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real-sem" / "stem-nanoparticles"
needs_stem = pytest.mark.skipif(not STEM.exists(), reason="shared/data/real-sem not present")


def _field(centres, value: float, background: float, size: int = 256, seed: int = 0) -> np.ndarray:
    img = np.full((size, size), background, np.float32)
    for r, c, radius in centres:
        img[disk((r, c), radius, shape=img.shape)] = value
    return np.clip(img + np.random.default_rng(seed).normal(0, 0.04, img.shape), 0, 1).astype(np.float32)


def test_round_blobs_are_found_once_each_at_their_size():
    centres = [(r, c, radius) for r, radius in ((50, 3), (128, 5), (200, 8)) for c in (50, 128, 200)]
    img = _field(centres, 0.8, 0.3)
    blobs = find_blobs(img, noise_level(img))
    assert len(blobs.radii) == 9 and blobs.polarity == 1
    found = sorted(map(tuple, blobs.centres))
    assert np.abs(np.array(found) - np.array(sorted((r, c) for r, c, _ in centres))).max() <= 2
    labels, n = blob_labels(img, blobs)
    diameters = equivalent_diameters(labels, n)
    truth = np.array([2 * radius for _, _, radius in centres], float)
    # Strongest first: match each label to its drawn disc by its centre.
    order = [next(k for k, (r, c, _) in enumerate(centres) if abs(r - br) <= 2 and abs(c - bc) <= 2) for br, bc in blobs.centres]
    assert np.allclose(diameters, truth[order], rtol=0.2)


def test_noise_edges_and_ridges_are_not_blobs():
    rng = np.random.default_rng(1)
    noise = np.clip(0.5 + rng.normal(0, 0.05, (256, 256)), 0, 1).astype(np.float32)
    assert len(find_blobs(noise, noise_level(noise)).radii) == 0
    shapes = np.full((256, 256), 0.3, np.float32)
    shapes[:, 150:] = 0.7  # a step edge
    shapes[60:64, 10:120] = 0.9  # a ridge: a bright line 4 px wide
    shapes = np.clip(shapes + rng.normal(0, 0.02, shapes.shape), 0, 1).astype(np.float32)
    assert len(find_blobs(shapes, noise_level(shapes)).radii) <= 2  # at most the ridge's two ends


def test_dark_particles_on_a_bright_field_are_counted_by_default():
    # Bright-field TEM: dark particles in a bright film; the bright phase is the film, not particles.
    rng = np.random.default_rng(3)
    grid = [(r, c) for r in range(24, 240, 30) for c in range(24, 240, 30)]
    centres = [(r + rng.integers(-4, 5), c + rng.integers(-4, 5), 5) for r, c in grid[:40]]
    m = micrograph_from_array(_field(centres, 0.25, 0.75), read_bar=False)
    result = measure(m, kinds=("particles",))
    auto = result.particles
    assert any("local contrast" in note for note in result.notes)  # the reader is told how they were found
    threshold = measure(m, kinds=("particles",), particle_method="threshold").particles
    assert abs(auto.count + auto.border_count - 40) <= 2
    assert abs(auto.median_diameter - 10) <= 2
    assert threshold.count + threshold.border_count <= 5  # it sees the film as a few objects


def test_an_unknown_particle_method_is_refused():
    with pytest.raises(MeasureError, match="particle method"):
        measure(np.zeros((64, 64), np.float32), particle_method="magic")


def _stem_rows() -> list[dict]:
    return [json.loads(line) for line in (STEM / "truth.jsonl").open()]


def _truth(row: dict) -> tuple[int, float]:
    boxes = np.loadtxt(STEM / row["annotation"], ndmin=2)
    return row["count"], float(np.mean(np.sqrt(boxes[:, 3] * row["width"] * boxes[:, 4] * row["height"])))


@needs_stem
def test_contrast_counts_and_sizes_real_stem_particles_better_than_the_threshold():
    # Every fourth image of the set (HAADF and bright-field); the bench scores them all.
    errors = {"auto": ([], []), "threshold": ([], []), "contrast": ([], [])}
    for row in _stem_rows()[::4]:
        m = load_micrograph(STEM / row["image"], read_bar=False)
        count, size = _truth(row)
        for method, (counts, sizes) in errors.items():
            p = measure(m, kinds=("particles",), particle_method=method).particles
            counts.append(abs(p.count + p.border_count - count) / count)
            sizes.append(abs((p.mean_diameter or 0.0) - size) / size)
    mape = {method: (np.mean(c), np.mean(s)) for method, (c, s) in errors.items()}
    assert mape["contrast"][0] < 0.6 and mape["contrast"][1] < 0.5, mape
    assert mape["contrast"][0] < mape["threshold"][0] and mape["contrast"][1] < mape["threshold"][1], mape
    assert mape["auto"][0] < mape["threshold"][0], mape


@needs_stem
@pytest.mark.parametrize("image", ["images/PtC1.jpg", "images/Pt_carbon1.jpg"])
def test_bright_field_tem_particles_are_found_by_default(image):
    # Dark particles on a light carbon film: the old threshold counted the film as one object.
    row = next(r for r in _stem_rows() if r["image"] == image)
    count, _ = _truth(row)
    p = measure(load_micrograph(STEM / image, read_bar=False), kinds=("particles",)).particles
    assert abs(p.count + p.border_count - count) / count < 0.35, (p.count, p.border_count, count)
