"""Synthetic SEM generator: determinism, truth that agrees with the pixels, splits, shifts, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from slava.synth import CLASSES, CLASS_NAMES, SHIFTS, SynthError, generate, write_dataset
from slava.synth.dataset import make_splits
from slava.synth.params import PIXEL_SIZE_NM

TRUTH_KEYS = {
    "class", "seed", "size", "pixel_size_nm", "data_bar", "scale_bar_px", "scale_bar_nm",
    "scale_bar_box", "magnification", "field_width_nm", "shift", "quantities",
}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_class_ids_follow_the_interface():
    assert CLASSES[0] == "biological" and CLASSES[-1] == "tips" and len(CLASSES) == 10
    assert CLASS_NAMES["films_coated_surfaces"] == "films and coated surfaces"


def test_same_seed_same_bytes_different_seed_different(tmp_path):
    a = write_dataset(tmp_path / "a", 10, size=96, seed=3, workers=1)
    b = write_dataset(tmp_path / "b", 10, size=96, seed=3, workers=2)
    c = write_dataset(tmp_path / "c", 10, size=96, seed=4, workers=1)
    fa, fb, fc = _files(a), _files(b), _files(c)
    assert fa == fb  # worker count must not change a byte
    pngs = [k for k in fa if k.endswith(".png") and "/" in k]
    assert len(pngs) == 10
    assert all(fa[k] != fc[k] for k in pngs)


@pytest.mark.parametrize("size", [128, 256])
@pytest.mark.parametrize("cls", CLASSES)
def test_every_class_renders_with_consistent_truth(cls, size):
    img, t = generate(cls, 11, size=size)
    assert img.shape == (size, size) and img.dtype == np.uint8
    assert TRUTH_KEYS <= set(t) and t["class"] == cls and t["size"] == [size, size]
    x0, y0, x1, y1 = t["data_bar"]
    assert (x0, x1, y1) == (0, size, size) and 0.07 * size <= y1 - y0 <= 0.13 * size or y1 - y0 == 12
    # The bar and the calibration agree exactly: the pixel size was snapped to the bar.
    assert t["scale_bar_nm"] / t["scale_bar_px"] == pytest.approx(t["pixel_size_nm"], rel=1e-5)
    assert t["field_width_nm"] == pytest.approx(size * t["pixel_size_nm"], rel=1e-5)
    assert t["magnification"] == pytest.approx(127e6 / t["field_width_nm"], rel=1e-4)
    lo, hi = PIXEL_SIZE_NM[cls]
    assert lo * 0.999 <= t["pixel_size_nm"] <= hi * 1.001 or t["scale_bar_px"] in (int(0.1 * size), int(0.3 * size))
    assert img[:y0].std() > 3  # the image region holds a specimen, not a blank
    assert t["quantities"] and json.loads(json.dumps(t)) == t


@pytest.mark.parametrize("seed", range(6))
def test_scale_bar_and_data_bar_pixels_match_truth(seed):
    img, t = generate(CLASSES[seed % len(CLASSES)], seed, size=256)
    bx0, by0, bx1, by1 = t["data_bar"]
    band = img[by0:by1].astype(int)
    fill = np.bincount(band.ravel()).argmax()
    x0, y0, x1, y1 = t["scale_bar_box"]
    # The bar is drawn in the ink colour, far from the fill whatever the polarity.
    assert np.abs(band[y0 - by0 : y1 - by0, x0:x1] - fill).min() >= 150
    row = np.abs(img[(y0 + y1) // 2].astype(int) - fill) >= 100
    # The run of ink pixels through the bar has the recorded length.
    left = x0
    while left > 0 and row[left - 1]:
        left -= 1
    right = x1
    while right < img.shape[1] and row[right]:
        right += 1
    assert abs((right - left) - t["scale_bar_px"]) <= 1
    assert (np.abs(band - fill) > 100).mean() < 0.3
    # Every row of the band is mostly its one flat value (dark or light), text
    # and bar aside, except a separator line of at most 2 rows at its top.
    flat = (band == fill).mean(axis=1) > 0.5
    separator = int(np.argmax(flat))
    assert separator <= 2 and flat[separator:].all()
    assert all(len(np.unique(r)) == 1 for r in band[:separator])


def test_data_bar_styles_vary_by_seed():
    """Both polarities, separator lines and bar placements occur, so detectors see every style."""
    light, separated, bar_right = set(), set(), set()
    for seed in range(40):
        img, t = generate(CLASSES[seed % len(CLASSES)], seed, size=128)
        band = img[t["data_bar"][1] :]
        fill = np.bincount(band.ravel()).argmax()
        light.add(bool(fill > 128))
        separated.add(bool((band[0] != fill).mean() > 0.9))
        bar_right.add(t["scale_bar_box"][0] > 128 // 2)
    assert light == separated == bar_right == {True, False}


def test_particle_count_and_diameters_match_rendered_instances():
    checked_separated = 0
    for seed in range(8):
        _, t, masks = generate("particles", seed, size=192, return_masks=True)
        q, labels = t["quantities"], masks["labels"]
        h, w = labels.shape
        ids = np.unique(labels[labels > 0])
        edge_ids = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        inside = np.setdiff1d(ids, edge_ids)
        assert len(inside) == q["particle_count"] == len(q["particle_diameters_nm"])
        assert len(ids) == q["particle_count"] + q["border_particle_count"]
        areas = ndi.sum_labels(np.ones_like(labels), labels, inside)
        measured = np.sort(2 * np.sqrt(areas / np.pi) * t["pixel_size_nm"])
        assert np.allclose(measured, np.sort(q["particle_diameters_nm"]), rtol=0.2, atol=1.5 * t["pixel_size_nm"])
        assert q["coverage"] == pytest.approx(masks["mask"].mean(), abs=1e-4)
        if q["arrangement"] == "separated":
            # Separated spheres are also separate blobs in a plain foreground mask.
            n_blobs = ndi.label(masks["mask"])[1]
            assert n_blobs == q["particle_count"] + q["border_particle_count"]
            checked_separated += 1
    assert checked_separated >= 1


@pytest.mark.parametrize("cls", ["fibres", "nanowires"])
def test_fibre_count_is_the_number_of_visible_fibres(cls):
    for seed in range(3):
        _, t, masks = generate(cls, seed, size=160, return_masks=True)
        visible = np.unique(masks["labels"][masks["labels"] > 0])
        assert t["quantities"]["fibre_count"] == len(visible) == len(t["quantities"]["fibre_widths_nm"])
        assert 0 <= t["quantities"]["orientation_deg"] < 180


def test_pore_fraction_and_pitch_are_measured_on_the_render():
    _, t, m = generate("porous_sponges", 5, size=160, return_masks=True)
    assert t["quantities"]["pore_fraction"] == pytest.approx(1 - m["mask"].mean(), abs=1e-4)
    assert 0.15 < t["quantities"]["pore_fraction"] < 0.9
    for seed in range(6):
        _, t, m = generate("patterned_surfaces", seed, size=256, return_masks=True)
        q = t["quantities"]
        if q["pattern"] == "lines" or abs(q["orientation_deg"] - 90) < 80:
            continue
        # Nearly horizontal lattice: the row profile repeats with the pitch.
        prof = m["mask"][:, :].mean(axis=0) - m["mask"].mean()
        ac = np.correlate(prof, prof, mode="full")[len(prof) - 1 :]
        pitch_px = q["pitch_nm"] / t["pixel_size_nm"]
        assert ac[int(round(pitch_px))] > ac[int(round(pitch_px / 2))]


def test_splits_are_stratified_disjoint_and_complete():
    truths = [{"id": f"{c}-{i}", "class": c} for c in CLASSES for i in range(20)]
    s = make_splits(truths, seed=1)
    ids = [i for part in s.values() for i in part]
    assert sorted(ids) == sorted(t["id"] for t in truths) and len(ids) == len(set(ids))
    for c in CLASSES:
        counts = {k: sum(i.startswith(c + "-") for i in v) for k, v in s.items()}
        assert counts == {"train": 14, "val": 2, "test": 4}
    assert make_splits(truths, seed=1) == s and make_splits(truths, seed=2) != s


@pytest.mark.parametrize("shift", SHIFTS)
def test_shift_changes_the_image_and_is_recorded(shift):
    base, tb = generate("particles", 21, size=128)
    img, t = generate("particles", 21, size=128, shift=shift)
    assert t["shift"] == shift and tb["shift"] is None
    assert not np.array_equal(base, img)
    if shift == "noise":
        assert t["imaging"]["dose"] < 2.5 < tb["imaging"]["dose"]
    if shift == "blur":
        assert t["imaging"]["blur_sigma_px"] >= 2.5 > tb["imaging"]["blur_sigma_px"]
    if shift == "charging":
        assert t["imaging"]["charging"] >= 0.7
    if shift == "scale":
        lo, hi = PIXEL_SIZE_NM["particles"]
        assert not lo <= t["pixel_size_nm"] <= hi


def test_bad_arguments_raise_clear_errors(tmp_path):
    with pytest.raises(SynthError, match="unknown class"):
        generate("bananas", 0)
    with pytest.raises(SynthError, match="at least 64"):
        generate("tips", 0, size=32)
    with pytest.raises(SynthError, match="n must be"):
        write_dataset(tmp_path / "x", 0)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(SynthError, match="not empty"):
        write_dataset(tmp_path / "full", 2, overwrite=True)
    assert (tmp_path / "full" / "keep.txt").exists()


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "slava.cli", "synth", *args], capture_output=True, text=True, timeout=120)


def test_cli_writes_the_layout(tmp_path):
    out = tmp_path / "set"
    r = _cli("--n", "12", "--out", str(out), "--size", "64", "--seed", "2", "--classes", "tips,particles,fibres")
    assert r.returncode == 0, r.stderr
    assert "contact_sheet.png" in r.stdout and "summary.json" in r.stdout
    lines = [json.loads(x) for x in (out / "ground_truth.jsonl").read_text().splitlines()]
    assert len(lines) == 12 and {x["class"] for x in lines} == {"tips", "particles", "fibres"}
    assert all((out / x["path"]).is_file() and x["path"].startswith(x["class"] + "/") for x in lines)
    splits = json.loads((out / "splits.json").read_text())
    assert sorted(sum(splits.values(), [])) == sorted(x["id"] for x in lines)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["per_class"] == {"tips": 4, "particles": 4, "fibres": 4}
    assert summary["ranges"]["particles"]["pixel_size_nm"][0] > 0
    assert (out / "contact_sheet.png").stat().st_size > 1000
    from slava.io import load_micrograph

    for x in lines:
        m = load_micrograph(out / x["path"])
        assert m.pixel_size_source == "png-phys"
        assert abs(m.pixel_size_nm - x["pixel_size_nm"]) < 1e-6 * x["pixel_size_nm"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--classes", "particles,bananas"], "unknown class"),
        (["--n", "0"], "n must be at least 1"),
        (["--size", "32"], "size must be at least 64"),
        (["--shift", "fog"], "unknown shift"),
    ],
)
def test_cli_bad_arguments_exit_1_with_one_line(tmp_path, args, message):
    base = {"--n": "3", "--out": str(tmp_path / "o")}
    for k, v in zip(args[::2], args[1::2]):
        base[k] = v
    r = _cli(*[x for kv in base.items() for x in kv])
    assert r.returncode == 1
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
