"""Reading micrographs: formats, calibration sources, data bar, scale bar, bad input, CLI."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageDraw

from slava.io import (
    MicrographError,
    load_micrograph,
    load_micrograph_bytes,
    micrograph_from_array,
)
from slava.io.scalebar import parse_scale_label
from slava.io.tiff_meta import fei_pixel_size_nm, zeiss_pixel_size_nm

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ZEISS = DATA / "sem-samples" / "zeiss-nanoporous-gold.tif"
NEU = DATA / "neu-det" / "images"


def texture(h: int, w: int, seed: int = 0, lo: int = 40, hi: int = 210) -> np.ndarray:
    """A noisy uint8 texture with no data bar."""
    rng = np.random.default_rng(seed)
    return rng.integers(lo, hi, size=(h, w), dtype=np.uint8)


def with_bar(
    image: np.ndarray,
    band_h: int,
    bar_x: int,
    bar_len: int,
    thick: int = 4,
    dark: bool = True,
    ticks: bool = False,
    line: bool = False,
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """``image`` with an instrument-style data bar drawn over its bottom ``band_h`` rows,
    optionally under a 2-px separator line in the text colour (as Zeiss draws it).

    Returns the new array and the box of the scale bar's horizontal stroke.
    """
    h, w = image.shape
    bg, fg = (0, 255) if dark else (255, 0)
    im = Image.fromarray(image)
    draw = ImageDraw.Draw(im)
    y0 = h - band_h
    draw.rectangle([0, y0, w - 1, h - 1], fill=bg)
    if line:
        draw.rectangle([0, y0, w - 1, y0 + 1], fill=fg)
    bar_y = y0 + band_h // 2
    draw.rectangle([bar_x, bar_y, bar_x + bar_len - 1, bar_y + thick - 1], fill=fg)
    if ticks:
        for x in (bar_x, bar_x + bar_len - 2):
            draw.rectangle([x, bar_y - 8, x + 1, bar_y + thick + 7], fill=fg)
    draw.text((bar_x, y0 + 3), "500 nm", fill=fg)
    draw.text((bar_x + bar_len + 20, y0 + 6), "Mag = 50.00 K X   WD = 6 mm", fill=fg)
    return np.asarray(im), (bar_x, bar_y, bar_x + bar_len, bar_y + thick)


# ---------------------------------------------------------------- formats


def _save_pil(path: Path, array: np.ndarray, **kw) -> None:
    Image.fromarray(array).save(path, **kw)


def test_png_8_bit(tmp_path):
    a = texture(48, 64)
    _save_pil(tmp_path / "a.png", a)
    m = load_micrograph(tmp_path / "a.png")
    assert m.pixels.dtype == np.float32 and (m.dtype, m.bit_depth) == ("uint8", 8)
    np.testing.assert_array_equal(m.pixels, (a / 255).astype(np.float32))
    assert m.data_bar is None and m.original_shape == (48, 64)
    assert m.metadata["format"] == "PNG"


def test_png_16_bit(tmp_path):
    a = np.random.default_rng(1).integers(0, 65536, size=(40, 50), dtype=np.uint16)
    _save_pil(tmp_path / "a.png", a)
    m = load_micrograph(tmp_path / "a.png")
    assert (m.dtype, m.bit_depth) == ("uint16", 16)
    np.testing.assert_array_equal(m.pixels, (a / 65535).astype(np.float32))


def test_jpeg_and_bmp(tmp_path):
    a = np.tile(np.linspace(30, 220, 64).astype(np.uint8), (48, 1))
    _save_pil(tmp_path / "a.jpg", a, quality=95)
    _save_pil(tmp_path / "a.bmp", a)
    jpg = load_micrograph(tmp_path / "a.jpg")
    bmp = load_micrograph(tmp_path / "a.bmp")
    assert jpg.metadata["format"] == "JPEG" and bmp.metadata["format"] == "BMP"
    np.testing.assert_allclose(jpg.pixels, a / 255, atol=0.03)
    np.testing.assert_array_equal(bmp.pixels, (a / 255).astype(np.float32))


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32"])
def test_tiff_integers_divided_by_dtype_max(tmp_path, dtype):
    info = np.iinfo(dtype)
    a = np.random.default_rng(2).integers(0, info.max, size=(40, 50), dtype=dtype, endpoint=True)
    tifffile.imwrite(tmp_path / "a.tif", a)
    m = load_micrograph(tmp_path / "a.tif")
    assert (m.dtype, m.bit_depth) == (dtype, info.bits)
    np.testing.assert_array_equal(m.pixels, (a.astype(np.float64) / info.max).astype(np.float32))


def test_tiff_16_bit_round_trip_exact(tmp_path):
    a = np.arange(0, 65536, 16, dtype=np.uint16).reshape(64, 64)
    tifffile.imwrite(tmp_path / "a.tif", a)
    m = load_micrograph(tmp_path / "a.tif", crop_data_bar=False)
    assert np.array_equal(m.pixels, (a / 65535).astype(np.float32))
    assert np.array_equal(np.round(m.pixels.astype(np.float64) * 65535).astype(np.uint16), a)


def test_tiff_float_kept_in_range_and_scaled_outside(tmp_path):
    inside = np.random.default_rng(3).random((40, 50)).astype(np.float32)
    outside = inside * 1000 - 200
    tifffile.imwrite(tmp_path / "in.tif", inside)
    tifffile.imwrite(tmp_path / "out.tif", outside)
    m_in = load_micrograph(tmp_path / "in.tif")
    m_out = load_micrograph(tmp_path / "out.tif")
    assert (m_in.dtype, m_in.bit_depth) == ("float32", 32)
    np.testing.assert_array_equal(m_in.pixels, inside)
    assert m_out.pixels.min() == 0.0 and m_out.pixels.max() == 1.0
    np.testing.assert_allclose(m_out.pixels, (outside - outside.min()) / np.ptp(outside), atol=1e-6)


def test_palette_png_and_tiff_use_the_colour_map(tmp_path):
    index = texture(40, 50, lo=0, hi=256)
    im = Image.fromarray(index, mode="L").convert("P")
    im.putpalette([v for i in range(256) for v in (255 - i,) * 3])  # inverted grey ramp
    im.save(tmp_path / "p.png")
    colormap = np.tile((255 - np.arange(256)) * 257, (3, 1)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "p.tif", index, photometric="palette", colormap=colormap)
    for name in ("p.png", "p.tif"):
        m = load_micrograph(tmp_path / name)
        np.testing.assert_allclose(m.pixels, (255 - index) / 255, atol=1e-6, err_msg=name)
        assert m.bit_depth == 8


def test_multipage_tiff_reads_first_page(tmp_path):
    pages = np.stack([np.full((40, 50), 1000, np.uint16), np.full((40, 50), 60000, np.uint16)])
    with tifffile.TiffWriter(tmp_path / "stack.tif") as tw:
        for page in pages:
            tw.write(page)
    m = load_micrograph(tmp_path / "stack.tif")
    assert m.metadata["pages"] == 2
    np.testing.assert_array_equal(m.pixels, np.float32(1000 / 65535))


def test_rgb_becomes_luma(tmp_path):
    rgb = np.zeros((40, 50, 3), np.uint8)
    rgb[..., 0] = 255  # pure red
    _save_pil(tmp_path / "red.png", rgb)
    tifffile.imwrite(tmp_path / "red.tif", rgb, photometric="rgb")
    for name in ("red.png", "red.tif"):
        m = load_micrograph(tmp_path / name)
        assert m.pixels.shape == (40, 50)
        np.testing.assert_allclose(m.pixels, 0.299, atol=1e-6, err_msg=name)


def test_lzw_tiff_falls_back_to_pillow(tmp_path):
    a = texture(40, 50)
    Image.fromarray(a).save(tmp_path / "lzw.tif", compression="tiff_lzw")
    m = load_micrograph(tmp_path / "lzw.tif")
    np.testing.assert_array_equal(m.pixels, (a / 255).astype(np.float32))


def test_sha256_is_of_the_file_bytes(tmp_path):
    _save_pil(tmp_path / "a.png", texture(40, 50))
    m = load_micrograph(tmp_path / "a.png")
    assert m.sha256 == hashlib.sha256((tmp_path / "a.png").read_bytes()).hexdigest()
    assert m.path == str((tmp_path / "a.png").resolve())


# ---------------------------------------------------------------- pixel size sources


def test_zeiss_real_file():
    if not ZEISS.exists():
        pytest.skip("shared/data not present")
    m = load_micrograph(ZEISS, scale_bar_nm=20)
    assert m.pixel_size_source == "zeiss-cz-sem"
    assert m.pixel_size_nm == pytest.approx(0.5429688, abs=0.001)
    x0, y0, x1, y1 = m.data_bar
    assert (x0, x1, y1) == (0, 1024, 768) and 600 < y0 < 768
    assert m.pixels.shape == (y0, 1024) and m.original_shape == (768, 1024)
    # The "20 nm" I-beam spans 20 / 0.543 = 36.8 px between its end ticks.
    assert m.scale_bar_px == pytest.approx(36.8, abs=2)
    assert m.metadata["pixel_size_candidates"]["scale-bar"] == pytest.approx(0.543, rel=0.05)
    assert load_micrograph(ZEISS, crop_data_bar=False).pixels.shape == (768, 1024)


def test_zeiss_and_fei_text_forms():
    assert zeiss_pixel_size_nm("AP_IMAGE_PIXEL_SIZE\r\nImage Pixel Size = 2.5 nm\r\n") == pytest.approx(2.5)
    assert zeiss_pixel_size_nm({"ap_image_pixel_size": ("Image Pixel Size", 1.2, "µm")}) == pytest.approx(1200)
    assert zeiss_pixel_size_nm("nothing here") is None
    assert fei_pixel_size_nm("[User]\nPixelWidth=9\n[Scan]\nPixelWidth=1.5e-09\n") == pytest.approx(1.5)
    assert fei_pixel_size_nm("[Scan]\nPixelWidth=0\n") is None
    assert parse_scale_label("Mag 5 KX  200 nm") == pytest.approx(200)
    assert parse_scale_label("1,5 µm") == pytest.approx(1500)


def test_fei_tag(tmp_path):
    text = "[User]\nDate=01/01/2024\n[Scan]\nPixelWidth=2.5e-09\n"
    tifffile.imwrite(tmp_path / "fei.tif", texture(40, 50), extratags=[(34682, "s", 0, text, True)])
    m = load_micrograph(tmp_path / "fei.tif")
    assert m.pixel_size_source == "fei"
    assert m.pixel_size_nm == pytest.approx(2.5)


def test_imagej_resolution_used_and_print_dpi_ignored(tmp_path):
    tifffile.imwrite(tmp_path / "ij.tif", texture(40, 50), imagej=True, resolution=(100, 100), metadata={"unit": "um"})
    tifffile.imwrite(tmp_path / "dpi.tif", texture(40, 50), resolution=(72, 72), resolutionunit="INCH")
    ij = load_micrograph(tmp_path / "ij.tif")
    assert ij.pixel_size_source == "tifffile" and ij.pixel_size_nm == pytest.approx(10.0)
    dpi = load_micrograph(tmp_path / "dpi.tif")
    assert dpi.pixel_size_nm is None and dpi.pixel_size_source is None


@pytest.mark.parametrize("sidecar", ["a.png.json", "a.json"])
def test_sidecar_and_caller(tmp_path, sidecar):
    _save_pil(tmp_path / "a.png", texture(40, 50))
    (tmp_path / sidecar).write_text(json.dumps({"pixel_size_nm": 3.5}))
    m = load_micrograph(tmp_path / "a.png")
    assert (m.pixel_size_nm, m.pixel_size_source) == (3.5, "sidecar")
    m = load_micrograph(tmp_path / "a.png", pixel_size_nm=7.0)
    assert (m.pixel_size_nm, m.pixel_size_source) == (7.0, "caller")
    assert m.metadata["pixel_size_candidates"]["sidecar"] == 3.5


def test_broken_sidecar_is_reported_not_fatal(tmp_path):
    _save_pil(tmp_path / "a.png", texture(40, 50))
    (tmp_path / "a.json").write_text("{not json")
    m = load_micrograph(tmp_path / "a.png")
    assert m.pixel_size_nm is None and "a.json" in m.metadata["sidecar_problem"]


# ---------------------------------------------------------------- data bar and scale bar


@pytest.mark.parametrize("dark", [True, False])
def test_rendered_bar_is_found_and_cropped(tmp_path, dark):
    image, bar_box = with_bar(texture(256, 320, seed=5), band_h=30, bar_x=20, bar_len=80, dark=dark)
    _save_pil(tmp_path / "bar.png", image)
    m = load_micrograph(tmp_path / "bar.png", scale_bar_nm=500)
    x0, y0, x1, y1 = m.data_bar
    assert (x0, x1, y1) == (0, 320, 256) and abs(y0 - 226) <= 2
    assert m.pixels.shape == (y0, 320)
    assert m.scale_bar_px == pytest.approx(80, abs=2)
    assert all(abs(a - b) <= 2 for a, b in zip(m.scale_bar_box, bar_box))
    assert m.pixel_size_source == "scale-bar" and m.pixel_size_nm == pytest.approx(500 / 80, rel=0.03)


@pytest.mark.parametrize("line", [False, True])
def test_bar_under_smooth_image_cropped_exactly(line):
    from scipy.ndimage import gaussian_filter

    smooth = gaussian_filter(texture(256, 320, seed=4, lo=0, hi=80).astype(float), 4).astype(np.uint8)
    image, _ = with_bar(smooth, band_h=30, bar_x=20, bar_len=80, line=line)
    assert micrograph_from_array(image).data_bar == (0, 226, 320, 256)


def test_bar_with_end_ticks_measured_between_ticks():
    image, _ = with_bar(texture(256, 320, seed=6), band_h=40, bar_x=30, bar_len=100, thick=2, dark=False, ticks=True)
    m = micrograph_from_array(image)
    # Tick centres sit at bar_x + 0.5 and bar_x + 98.5.
    assert m.scale_bar_px == pytest.approx(98, abs=2)


def test_array_bytes_and_file_share_one_path(tmp_path):
    image, _ = with_bar(texture(200, 240, seed=7), band_h=24, bar_x=10, bar_len=60)
    _save_pil(tmp_path / "x.png", image)
    from_file = load_micrograph(tmp_path / "x.png")
    from_bytes = load_micrograph_bytes((tmp_path / "x.png").read_bytes(), name="x.png")
    from_array = micrograph_from_array(image)
    from_pil = micrograph_from_array(Image.fromarray(image))
    for m in (from_bytes, from_array, from_pil):
        np.testing.assert_array_equal(m.pixels, from_file.pixels)
        assert (m.data_bar, m.scale_bar_px) == (from_file.data_bar, from_file.scale_bar_px)
    assert from_bytes.sha256 == from_file.sha256 and from_bytes.metadata["name"] == "x.png"
    assert from_array.sha256 == from_pil.sha256


def test_images_without_bar_are_not_cropped(tmp_path):
    # A flat, saturated background with particles down to the bottom edge has
    # bar-like rows, but they run into the image: no drawn band.
    im = Image.new("L", (200, 160), 255)
    draw = ImageDraw.Draw(im)
    rng = np.random.default_rng(8)
    for x, y in rng.integers(0, 200, size=(40, 2)):
        draw.ellipse([x, y % 160, x + 12, y % 160 + 12], fill=40)
    for array in (np.asarray(im), texture(200, 200, seed=9)):
        m = micrograph_from_array(array)
        assert m.data_bar is None and m.pixels.shape == array.shape


def test_neu_images_are_not_cropped():
    if not NEU.exists():
        pytest.skip("shared/data not present")
    files = [f for d in sorted(NEU.iterdir()) for f in sorted(d.glob("*.jpg"))[:5]]
    assert len(files) == 30
    for f in files:
        m = load_micrograph(f)
        assert m.data_bar is None and m.pixels.shape == (200, 200), f


def test_row_statistics_of_the_bar_search_match_their_plain_forms():
    from slava.io.databar import dominant_value, dominant_values
    from slava.io.scalebar import _row_runs

    def plain_dominant(values):
        counts, edges = np.histogram(values, bins=64, range=(0.0, 1.0))
        k = int(np.argmax(counts))
        inside = values[(values >= edges[k]) & (values <= edges[k + 1])]
        return float(np.median(inside)) if inside.size else float(edges[k])

    rng = np.random.default_rng(3)
    rows = rng.random((40, 97)).astype(np.float32)
    rows[:10] = np.round(rows[:10] * 255) / 255  # 8-bit levels
    rows[10:20, :60] = 0.5  # a band's flat background, on a bin edge
    rows[20:25] = 1.0  # saturated
    rows[25, :50] = -0.2  # out of range: not counted
    expected = [plain_dominant(r) for r in rows]
    assert dominant_values(rows).tolist() == expected
    assert [dominant_value(r) for r in rows] == expected

    fg = rng.random((30, 120)) < 0.6
    fg[5, 10:90] = True  # a long stroke
    fg[6, :] = True  # a frame line touching both edges
    for min_len in (1, 8, 20):
        for r, runs in enumerate(_row_runs(fg, min_len)):
            padded = np.concatenate(([False], fg[r], [False])).astype(np.int8)
            edges = np.flatnonzero(np.diff(padded))
            plain = [(a, b) for a, b in zip(edges[::2].tolist(), edges[1::2].tolist())
                     if min_len <= b - a < 0.7 * 120 and a > 0 and b < 120]
            assert runs == plain, (r, min_len)


# ---------------------------------------------------------------- bad input


def _png_header(width: int, height: int) -> bytes:
    """A PNG with only a header (and an empty image stream) declaring ``width`` x ``height``."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    good_png = io.BytesIO()
    Image.fromarray(texture(64, 64)).save(good_png, format="PNG")
    good_tif = io.BytesIO()
    tifffile.imwrite(good_tif, texture(64, 64))
    files = {
        "corrupt": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
        "truncated-png": good_png.getvalue()[: len(good_png.getvalue()) // 2],
        "truncated-tif": good_tif.getvalue()[:2000],
        "non-image": b"hello, this is text\n" * 10,
        "empty": b"",
        "zero-size": _png_header(0, 10),
        "bomb": _png_header(12_000, 9_000),  # over our default limit, under Pillow's
        "huge-bomb": _png_header(100_000, 100_000),  # refused by Pillow itself
    }
    out = {}
    for name, data in files.items():
        path = tmp_path / f"{name}.{'tif' if 'tif' in name else 'png'}"
        path.write_bytes(data)
        out[name] = path
    return out


def test_bad_files_raise_micrograph_error_naming_the_file(tmp_path):
    for kind, path in _bad_files(tmp_path).items():
        with pytest.raises(MicrographError) as err:
            load_micrograph(path)
        assert str(path) in str(err.value) and err.value.cause, kind
        with pytest.raises(MicrographError) as err:
            load_micrograph_bytes(path.read_bytes(), name=f"upload-{kind}")
        assert f"upload-{kind}" in str(err.value), kind
    with pytest.raises(MicrographError, match="over the limit of 100,000,000 pixels"):
        load_micrograph(tmp_path / "bomb.png")
    with pytest.raises(MicrographError, match="over the limit of .* pixels that Pillow decodes"):
        load_micrograph(tmp_path / "huge-bomb.png")


def test_pixel_limit_checked_from_header(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", texture(64, 64))
    _save_pil(tmp_path / "a.png", texture(64, 64))
    for name in ("a.tif", "a.png"):
        with pytest.raises(MicrographError, match="over the limit of 4,000 pixels"):
            load_micrograph(tmp_path / name, max_pixels=4000)
        assert load_micrograph(tmp_path / name, max_pixels=4096).pixels.shape == (64, 64)


def test_missing_path_directory_and_bad_arrays(tmp_path):
    with pytest.raises(MicrographError, match="no such file") as err:
        load_micrograph(tmp_path / "nope.tif")
    assert "nope.tif" in str(err.value)
    with pytest.raises(MicrographError, match="directory"):
        load_micrograph(tmp_path)
    with pytest.raises(MicrographError):
        micrograph_from_array(np.zeros((0, 5)))
    with pytest.raises(MicrographError):
        micrograph_from_array(np.zeros((2, 3, 4, 5)))
    with pytest.raises(MicrographError, match="positive"):
        micrograph_from_array(texture(40, 40), pixel_size_nm=-1.0)


# ---------------------------------------------------------------- CLI


def test_cli_inspect_json_on_zeiss():
    if not ZEISS.exists():
        pytest.skip("shared/data not present")
    out = subprocess.run(
        [sys.executable, "-m", "slava.cli", "inspect", str(ZEISS), "--json", "--scale-bar-nm", "20"],
        capture_output=True,
        text=True,
        check=True,
    )
    summary = json.loads(out.stdout)
    assert summary["size"] == [1024, 768] and summary["image_size"][1] < 768
    assert summary["pixel_size_source"] == "zeiss-cz-sem"
    assert summary["pixel_size_nm"] == pytest.approx(0.543, abs=0.001)
    assert summary["data_bar"][3] == 768 and summary["scale_bar_nm"] == 20


def test_cli_inspect_reports_bad_file_in_one_line(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    out = subprocess.run(
        [sys.executable, "-m", "slava.cli", "inspect", str(tmp_path / "bad.png")], capture_output=True, text=True
    )
    assert out.returncode == 1
    assert out.stderr.strip().count("\n") == 0 and "bad.png" in out.stderr


def _jpeg_copy(image: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="module")
def synth_set():
    """40 synthetic images (4 per class) with their truth and bar polarity (True: light band)."""
    synth = pytest.importorskip("slava.synth")
    out = []
    for cls in synth.CLASSES:
        for seed in (1, 3, 5, 7):
            image, truth = synth.generate(cls, seed, size=256)
            out.append((image, truth, bool(np.median(image[truth["data_bar"][1] :]) > 128)))
    assert {light for *_, light in out} == {True, False}
    return out


def test_synthetic_generator_bars_found(synth_set):
    for image, truth, light in synth_set:
        m = micrograph_from_array(image, read_bar=False)
        assert m.data_bar is not None and abs(m.data_bar[1] - truth["data_bar"][1]) <= 2, (truth["class"], light)
        assert m.scale_bar_px == pytest.approx(truth["scale_bar_px"], abs=2), (truth["class"], light)


def test_synthetic_bars_found_in_jpeg_copies(synth_set):
    found = {True: [], False: []}
    for image, truth, light in synth_set:
        m = load_micrograph_bytes(_jpeg_copy(image, 85), name="copy.jpg", read_bar=False)
        found[light].append(m.data_bar is not None and abs(m.data_bar[1] - truth["data_bar"][1]) <= 2)
    rate = sum(map(sum, found.values())) / sum(map(len, found.values()))
    print(f"JPEG q85 data-bar rate {rate:.3f} (light {sum(found[True])}/{len(found[True])}, "
          f"dark {sum(found[False])}/{len(found[False])})")
    assert rate >= 0.95
    assert all(sum(v) >= 0.9 * len(v) for v in found.values())


@pytest.mark.parametrize("dark", [True, False])
@pytest.mark.parametrize("quality", [75, 95])
def test_rendered_bar_found_in_jpeg(dark, quality):
    image, _ = with_bar(texture(256, 320, seed=5), band_h=30, bar_x=20, bar_len=80, dark=dark, line=not dark)
    m = load_micrograph_bytes(_jpeg_copy(image, quality), name="bar.jpg")
    assert m.data_bar is not None and abs(m.data_bar[1] - 226) <= 2
    assert m.scale_bar_px == pytest.approx(80, abs=2)


def test_png_phys_chunk_gives_pixel_size_and_72_dpi_is_ignored(tmp_path):
    from slava.io.readers import png_dpi_for

    img = Image.fromarray(np.full((40, 50), 128, np.uint8))
    calibrated, screen = tmp_path / "cal.png", tmp_path / "screen.png"
    img.save(calibrated, dpi=png_dpi_for(2.5))
    img.save(screen, dpi=(72, 72))
    m = load_micrograph(calibrated)
    assert m.pixel_size_source == "png-phys" and abs(m.pixel_size_nm - 2.5) < 1e-6
    assert load_micrograph(calibrated, pixel_size_nm=4.0).pixel_size_nm == 4.0
    assert load_micrograph(screen).pixel_size_nm is None
