"""Data bars, scale bars and their OCR'd text on the real micrographs in ../shared/data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from slava.io import load_micrograph, micrograph_from_array, read_instrument
from slava.io import ocr

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REAL = DATA / "real-sem"
ZEISS = DATA / "sem-samples" / "zeiss-nanoporous-gold.tif"
GIFT = REAL / "gift-fibres" / "images" / "10_gelatin_fibers.tif"
BOXES = json.loads((Path(__file__).parent / "data" / "real_bar_boxes.json").read_text())
HAS_TESSERACT = ocr.tesseract_problem() is None

needs_data = pytest.mark.skipif(not REAL.exists(), reason="shared/data/real-sem not present")
needs_ocr = pytest.mark.skipif(not HAS_TESSERACT, reason="tesseract not installed (make ocr)")


def _truth(folder: str) -> dict[str, dict]:
    return {row["image"]: row for row in map(json.loads, (REAL / folder / "truth.jsonl").open())}


@needs_data
def test_bar_boxes_of_the_real_sets_match_the_fixture():
    for name, want in BOXES.items():
        m = load_micrograph(REAL / name, read_bar=False)
        assert (list(m.data_bar) if m.data_bar else None) == want["data_bar"], name
        if want["data_bar"] is None:
            assert m.pixels.shape == m.original_shape, name
        else:
            # The bar is cropped whole, and nothing above it.
            assert m.pixels.shape == (want["data_bar"][1], m.original_shape[1]), name


@needs_data
@pytest.mark.parametrize("folder", ["gift-fibres", "fei-lung-cells"])
def test_fei_bar_box_is_the_tagged_databar_height(folder):
    # The FEI tag states the data bar's height: the box leaves no bar row and takes no image row.
    for image, row in _truth(folder).items():
        m = load_micrograph(REAL / folder / image, read_bar=False)
        assert m.data_bar == (0, row["height"] - row["meta"]["databar_rows"], row["width"], row["height"]), image
        bar = m.bar_pixels
        # Its first row is the bar's frame line, drawn across the whole width.
        assert np.ptp(bar[0]) < 0.05


def _real_band_and_image() -> tuple[np.ndarray, np.ndarray]:
    m = load_micrograph(GIFT, read_bar=False)
    return m.bar_pixels, m.pixels


@needs_data
@pytest.mark.parametrize("light", [False, True])
def test_band_above_the_bottom_edge_is_masked_not_cropped(light):
    band, image = _real_band_and_image()
    band = 1.0 - band if light else band
    # A Zeiss/JEOL screen capture: the band with 120 image rows under it.
    top = image[:600]
    composed = np.concatenate([top, band, image[600:720]])
    m = micrograph_from_array((composed * 255).astype(np.uint8), read_bar=False)
    y0, y1 = 600, 600 + band.shape[0]
    assert m.data_bar == (0, y0, composed.shape[1], y1)
    assert m.masked == m.data_bar and m.pixels.shape == composed.shape
    valid = m.valid
    assert valid[:y0].all() and valid[y1:].all() and not valid[y0:y1].any()
    np.testing.assert_allclose(m.pixels[y1:], composed[y1:], atol=1 / 255)


@needs_data
@pytest.mark.parametrize("where", ["top", "right", "left"])
def test_bar_on_other_edges_is_cropped_exactly(where):
    band, image = _real_band_and_image()
    image = image[:500, :500]
    if where == "top":
        composed, box = np.concatenate([band[:, :500], image]), (0, 0, 500, band.shape[0] + 0)
        kept = image
    else:
        # A side panel: the band turned upright.
        panel = np.rot90(band[:, :500]) if where == "right" else np.rot90(band[:, :500], -1)
        panel = panel[:500]
        composed = np.concatenate([image, panel] if where == "right" else [panel, image], axis=1)
        w = panel.shape[1]
        box = (500, 0, 500 + w, 500) if where == "right" else (0, 0, w, 500)
        kept = image
    m = micrograph_from_array((composed * 255).astype(np.uint8), read_bar=False)
    assert m.data_bar == box
    np.testing.assert_allclose(m.pixels, kept, atol=1 / 255)


@needs_data
@needs_ocr
def test_fei_bar_fields_are_read():
    row = _truth("gift-fibres")["images/10_gelatin_fibers.tif"]
    m = load_micrograph(GIFT, read_bar=True)
    inst = m.instrument
    assert inst.problem is None
    assert inst.magnification == 4000 and inst.hv_kv == pytest.approx(row["meta"]["hv_kv"])
    assert inst.wd_mm == pytest.approx(row["meta"]["wd_mm"], abs=0.06)
    assert inst.detector == row["meta"]["detector"]
    assert inst.hfw_um == pytest.approx(row["meta"]["hfw_um"], abs=0.06)
    assert inst.scale_bar_label == "10 µm" and "ocr" in inst.sources["scale_bar_label"]
    # The file tag ranks first; the scale bar's own reading is within 2 % of it.
    assert m.pixel_size_source == "fei"
    assert m.metadata["pixel_size_candidates"]["scale-bar"] == pytest.approx(row["pixel_size_nm"], rel=0.02)


@needs_data
@needs_ocr
def test_every_real_bar_gives_the_tagged_pixel_size():
    files = [(REAL / d / image, row["pixel_size_nm"]) for d in ("gift-fibres", "fei-lung-cells")
             for image, row in _truth(d).items()][::3]
    files.append((ZEISS, 0.5429688))
    for path, tag in files:
        inst = read_instrument(load_micrograph(path, read_bar=False))
        assert inst.pixel_size_nm == pytest.approx(tag, rel=0.02), path.name


@pytest.mark.skipif(not ZEISS.exists(), reason="shared/data not present")
@needs_ocr
def test_zeiss_bar_fields_are_read():
    inst = load_micrograph(ZEISS, read_bar=True).instrument
    assert (inst.scale_bar_label, inst.magnification, inst.hv_kv, inst.wd_mm, inst.detector) == (
        "20 nm", 500000, 20, 6.2, "InLens")
    assert inst.hfw_um == pytest.approx(0.556) and "Jul 2016" in inst.date


@needs_data
def test_missing_tesseract_degrades_with_one_message(monkeypatch):
    pytesseract = pytest.importorskip("pytesseract")
    monkeypatch.setattr(pytesseract.pytesseract, "tesseract_cmd", "/nonexistent/tesseract")
    monkeypatch.setattr(ocr, "_warned", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = load_micrograph(GIFT, read_bar=True)
        second = load_micrograph(ZEISS if ZEISS.exists() else GIFT, read_bar=True)
    messages = [str(w.message) for w in caught if "Tesseract" in str(w.message)]
    assert messages == [ocr.MISSING]
    for m in (first, second):
        assert m.instrument.problem == ocr.MISSING and m.instrument.magnification is None
        assert m.pixel_size_source in ("fei", "zeiss-cz-sem") and m.data_bar is not None


@needs_data
def test_cli_inspect_without_tesseract_says_so_once(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path), "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    out = subprocess.run([sys.executable, "-W", "ignore", "-m", "slava.cli", "inspect", str(GIFT)],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    lines = [line for line in (out.stdout + out.stderr).splitlines() if "Tesseract" in line]
    assert len(lines) == 1 and "not installed" in lines[0]
    assert "31.01 nm/px (from fei)" in out.stdout


@needs_data
def test_cli_measure_writes_the_overlay(tmp_path):
    from PIL import Image

    out = tmp_path / "overlay.png"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    run = subprocess.run([sys.executable, "-m", "slava.cli", "measure", str(GIFT), "--overlay", str(out)],
                         capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    image = np.asarray(Image.open(out).convert("RGB"))
    assert image.shape[:2] == (943, 1024)
    # The bar box (blue) at the bar's top edge, the scale bar (red) around its stroke.
    assert tuple(image[884, 10]) == (60, 140, 255)
    assert (image[890:910, 690:1025] == (255, 40, 40)).all(axis=2).any()
    assert f"overlay     {out}" in run.stdout


@needs_data
def test_particles_touching_a_masked_band_are_not_counted():
    from slava.measure import measure

    band, image = _real_band_and_image()
    composed = np.concatenate([image[:600], band, image[600:720]])
    m = micrograph_from_array((composed * 255).astype(np.uint8), read_bar=False)
    result = measure(m, kinds=("particles",))
    assert any("masked" in note for note in result.notes)
    from scipy import ndimage as ndi

    from slava.measure.overlay import particle_outlines

    counted, cut = particle_outlines(m)
    # No counted particle reaches into the band; the ones it cuts are drawn as edge-cut.
    assert not (counted & ndi.binary_dilation(~m.valid, iterations=2)).any()
    assert cut[590:600].any() or cut[m.data_bar[3] : m.data_bar[3] + 10].any()


@needs_data
@needs_ocr
def test_assistant_grounds_instrument_questions_in_the_bar():
    from slava.assistant.grounding import grounded_answer, grounded_kind
    from slava.measure import measure

    m = measure(load_micrograph(GIFT, read_bar=True), kinds=("texture",))
    kind = grounded_kind("What magnification and accelerating voltage were used?")
    assert kind == "instrument"
    text, numbers = grounded_answer(kind, m)
    assert numbers["magnification"] == 4000 and numbers["hv_kv"] == 10 and "ETD" in text
    bare = measure(load_micrograph(GIFT, read_bar=False), kinds=("texture",))
    assert "not known" in grounded_answer(kind, bare)[0]


@needs_data
def test_superalloy_precipitates_counted_near_the_truth():
    from slava.measure import measure

    rows = _truth("nasa-superalloy")
    errors, fractions = [], []
    for image, row in list(rows.items())[::2]:
        pores = measure(load_micrograph(REAL / "nasa-superalloy" / image, read_bar=False), kinds=("pores",)).pores
        errors.append(abs(pores.count - row["count"]) / row["count"])
        fractions.append(abs(pores.pore_fraction - sum(row["area_fraction"].values())))
    # γ′ images dark: the dark-phase count and fraction (bench/bench_real_measure.py has the full set).
    assert float(np.median(errors)) < 0.25 and float(np.median(fractions)) < 0.07


@needs_data
@needs_ocr
def test_a_bar_read_again_is_not_ocrd_again(monkeypatch):
    import pytesseract

    first = load_micrograph(GIFT, read_bar=True).instrument
    calls = []
    real = pytesseract.image_to_data
    monkeypatch.setattr(pytesseract, "image_to_data", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = load_micrograph(GIFT, read_bar=True).instrument
    assert calls == [] and again == first and again is not first
    # Different pixels are read.
    m = load_micrograph(GIFT, read_bar=False)
    m.bar_pixels = m.bar_pixels[:, ::-1].copy()
    read_instrument(m)
    assert calls
