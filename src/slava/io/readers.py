"""Reading micrographs from files, bytes, arrays and PIL images into ``Micrograph``.

All entry points share one path: decode (TIFF with tifffile, everything else
with Pillow) → grey float32 in [0, 1] → pixel size → data bar → scale bar.
Image sizes are checked against ``max_pixels`` from the header, before any
pixel is decoded, and every decoder failure becomes one ``MicrographError``.
Images over ``max_work_pixels`` are reduced on read by a whole factor (JPEG
already in the decoder, through ``Image.draft``), before any float copy is
made, so a small file with a huge header costs its decoded samples once and
never gigabytes of float intermediates; the pixel size is scaled to match.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from slava.io.databar import find_data_bar, image_box
from slava.io.micrograph import Micrograph, MicrographError
from slava.io.readbar import read_instrument
from slava.io.scalebar import find_scale_bar
from slava.io.tiff_meta import MAX_CALIBRATION_NM, tiff_pixel_sizes

DEFAULT_MAX_PIXELS = 100_000_000
"""Largest image (width × height) decoded by default; larger ones are refused as decompression bombs."""
MAX_WORK_PIXELS = 4096 * 4096
"""Images with more pixels are reduced on read (box average by a whole factor) to at most this many.

Every later stage works at far less: the model at its input size, the
measurements at ``slava.measure.prepare.MAX_SIDE``."""

IMAGE_EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_LUMA = np.array([0.299, 0.587, 0.114])
# Metadata wins over the sidecar and the sidecar over the scale bar: that is
# the order of their precision. An explicit caller value overrides them all.
_SOURCE_ORDER = ("caller", "zeiss-cz-sem", "fei", "tifffile", "png-phys", "sidecar", "scale-bar")


@dataclass
class _Decoded:
    raw: np.ndarray  # grey samples as stored (palette already looked up)
    dtype: str
    bit_depth: int
    fmt: str
    pixel_sizes: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    scaled: bool = False  # raw is already in [0, 1] (a TIFF colour map's 16-bit entries)
    downscale: float = 1.0  # file pixels per pixel of raw (> 1 when reduced on read)


def is_tiff_header(head: bytes) -> bool:
    """Whether ``head`` (the first 4 bytes or more) starts a TIFF or BigTIFF file."""
    return head[:4] in _TIFF_MAGIC


def _check_size(name: str, width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise MicrographError(name, f"zero-size image ({width}x{height})")
    if width * height > max_pixels:
        raise MicrographError(
            name, f"image of {width}x{height} pixels is over the limit of {max_pixels:,} pixels (possible decompression bomb)"
        )


def reduce_factor(width: int, height: int, max_work_pixels: int) -> int:
    """The smallest whole factor that brings a ``width`` × ``height`` image to ≤ ``max_work_pixels``."""
    factor = 1
    while (width // factor) * (height // factor) > max_work_pixels:
        factor += 1
    return factor


def _reduce_array(samples: np.ndarray, factor: int) -> np.ndarray:
    """Box-average ``samples`` [H, W] or [H, W, C] by ``factor`` into float32, a strip at a time
    (a whole-image float copy is what this avoids); edge rows and columns short of a block are dropped."""
    h, w = samples.shape[0] // factor, samples.shape[1] // factor
    rest = samples.shape[2:]
    out = np.empty((h, w, *rest), np.float32)
    rows = max(1, (1 << 22) // max(1, w * factor * factor))  # ~16 MB of float32 per strip
    for y in range(0, h, rows):
        n = min(rows, h - y)
        block = samples[y * factor : (y + n) * factor, : w * factor].astype(np.float32)
        out[y : y + n] = block.reshape(n, factor, w, factor, *rest).mean(axis=(1, 3))
    return out


def _pillow_bomb_cause() -> str:
    from PIL import Image

    # Pillow refuses such images inside Image.open, before its size can be read.
    return f"image is over the limit of {2 * Image.MAX_IMAGE_PIXELS:,} pixels that Pillow decodes (possible decompression bomb)"


def _grey(samples: np.ndarray) -> np.ndarray:
    """Colour samples [H, W, C] to luma (ITU-R 601); alpha and extra channels are dropped."""
    if samples.shape[-1] < 3:
        return samples[..., 0]
    return samples[..., :3].astype(np.float64) @ _LUMA


def _to_unit(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Samples to float32 in [0, 1]: integers by their type's range, floats min-max scaled
    only when they fall outside [0, 1]."""
    kind = np.dtype(dtype).kind
    if kind == "b":
        out = raw.astype(np.float64)
    elif kind == "u" and np.dtype(dtype).itemsize <= 2:
        # float32 holds 8- and 16-bit samples exactly and halves the largest copy of a big image.
        out = raw.astype(np.float32)
        out /= np.float32(np.iinfo(dtype).max)
        return np.clip(out, 0.0, 1.0, out=out)
    elif kind == "u":
        out = raw.astype(np.float64) / np.iinfo(dtype).max
    elif kind == "i":
        info = np.iinfo(dtype)
        out = (raw.astype(np.float64) - info.min) / (float(info.max) - info.min)
    else:
        out = raw.astype(np.float64)
        finite = np.isfinite(out)
        if not finite.any():
            return np.zeros(out.shape, np.float32)
        lo, hi = out[finite].min(), out[finite].max()
        if lo < 0 or hi > 1:
            out = (out - lo) / (hi - lo) if hi > lo else np.zeros_like(out)
        out[~finite] = 0.0
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _check_page(name: str, page: int, pages: int) -> None:
    if not 0 <= page < pages:
        raise MicrographError(name, f"has {pages} page(s); page {page + 1} does not exist (pages count from 1)")


def _decode_tiff(source: str | BinaryIO, name: str, max_pixels: int, max_work_pixels: int, page_index: int = 0) -> _Decoded:
    import tifffile

    with tifffile.TiffFile(source) as tif:
        if not tif.pages:
            raise MicrographError(name, "TIFF file holds no image")
        _check_page(name, page_index, len(tif.pages))
        page = tif.pages[page_index]
        shape = dict(zip(page.axes, page.shape))
        _check_size(name, shape.get("X", 0), shape.get("Y", 0), max_pixels)
        pixel_sizes = tiff_pixel_sizes(tif)
        info = {"pages": len(tif.pages), "page": page_index, "photometric": page.photometric.name.lower(),
                "file_size": [int(shape.get("X", 0)), int(shape.get("Y", 0))]}
        try:
            samples = page.asarray()
        except (KeyError, ValueError) as exc:
            if "imagecodecs" not in str(exc):
                raise
            # LZW and other codecs need the optional imagecodecs package; Pillow
            # decodes the common ones itself.
            if not isinstance(source, str):
                source.seek(0)
            decoded = _decode_pil(source, name, max_pixels, max_work_pixels, page_index)
            decoded.fmt, decoded.pixel_sizes, decoded.info = "TIFF", pixel_sizes, info
            return decoded
        axes = page.axes
        if "S" in axes and axes.index("S") != len(axes) - 1:
            samples = np.moveaxis(samples, axes.index("S"), -1)
        # Only the image plane is kept; any other axis (Z, T, C) is cut at index 0.
        while samples.ndim > (3 if "S" in axes else 2):
            samples = samples[0]
        dtype = samples.dtype.name
        factor = reduce_factor(samples.shape[1], samples.shape[0], max_work_pixels)
        palette = page.photometric == tifffile.PHOTOMETRIC.PALETTE and page.colormap is not None
        if factor > 1:
            # Colour-map indices cannot be averaged: every factor-th one is kept instead.
            samples = samples[::factor, ::factor] if palette else _reduce_array(samples, factor)
        if palette:
            colours = page.colormap[:, samples].transpose(1, 2, 0)
            same = np.array_equal(colours[..., 0], colours[..., 1]) and np.array_equal(colours[..., 0], colours[..., 2])
            grey = colours[..., 0] if same else _grey(colours)
            raw = grey.astype(np.float64) / 65535.0
            return _Decoded(raw, dtype, int(page.bitspersample), "TIFF", pixel_sizes, info, scaled=True,
                            downscale=float(factor))
        if samples.ndim == 3:
            samples = _grey(samples)
        if page.photometric == tifffile.PHOTOMETRIC.MINISWHITE:
            samples = np.iinfo(dtype).max - samples if np.dtype(dtype).kind in "ui" else np.nanmax(samples) - samples
        return _Decoded(samples, dtype, int(page.bitspersample), "TIFF", pixel_sizes, info, downscale=float(factor))


def _from_pil_image(im: Any, fmt: str) -> _Decoded:
    mode = im.mode
    if mode == "P" or mode == "PA":
        im = im.convert("RGB")
        arr = _grey(np.asarray(im))
        return _Decoded(arr, "uint8", 8, fmt, info={"mode": mode})
    if mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa"):
        arr = _grey(np.asarray(im.convert("RGB")))
        return _Decoded(arr, "uint8", 8, fmt, info={"mode": mode})
    if mode == "LA" or mode == "La":
        im = im.getchannel("L")
    elif mode.startswith("I;16"):
        arr = np.asarray(im).astype(np.uint16)
        return _Decoded(arr, "uint16", 16, fmt, info={"mode": mode})
    arr = np.asarray(im)
    if mode == "I" and arr.size and arr.min() >= 0 and arr.max() <= 65535 and fmt == "PNG":
        # Older Pillow opens 16-bit grey PNGs as 32-bit "I".
        arr = arr.astype(np.uint16)
    bits = {"1": 1, "L": 8, "I": 32, "F": 32}.get(im.mode, arr.dtype.itemsize * 8)
    if arr.dtype == np.uint16:
        bits = 16
    return _Decoded(arr, arr.dtype.name, bits, fmt, info={"mode": mode})


def _reduce_pil(im: Any, factor: int) -> Any:
    """``im`` box-averaged by ``factor`` in its own mode where Pillow can (no float copy of the whole image)."""
    from PIL import Image

    if im.mode in ("1", "P", "PA"):
        # Palette indices cannot be averaged; their grey (the same luma weights as ``_grey``) can.
        im = im.convert("LA" if im.mode == "PA" else "L")
    if im.mode.startswith("I;16"):
        arr = _reduce_array(np.asarray(im), factor)
        return Image.fromarray(arr, mode="F"), "uint16"
    small = im.reduce(factor)
    if small.mode in ("RGB", "RGBA", "CMYK", "YCbCr"):
        # Pillow's grey has ``_grey``'s weights, without its float64 copy of every channel.
        small = small.convert("L")
    return small, None


def _decode_pil(source: str | BinaryIO, name: str, max_pixels: int, max_work_pixels: int = MAX_WORK_PIXELS,
                page: int = 0) -> _Decoded:
    from PIL import Image

    with warnings.catch_warnings():
        # Our own limit, checked below from the header, replaces Pillow's warning.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(source) as im:
            _check_size(name, im.width, im.height, max_pixels)
            fmt = im.format or "image"
            pages = getattr(im, "n_frames", 1)
            _check_page(name, page, pages)
            im.seek(page)
            width, height = im.width, im.height
            if fmt == "JPEG" and reduce_factor(im.width, im.height, max_work_pixels) > 1:
                # The JPEG decoder itself scales by 1/2, 1/4 or 1/8: the full image is never decoded.
                factor = reduce_factor(im.width, im.height, max_work_pixels)
                im.draft(im.mode, (-(-im.width // factor), -(-im.height // factor)))
            im.load()
            downscale = width / im.width
            factor = reduce_factor(im.width, im.height, max_work_pixels)
            sixteen = None
            work = im
            if factor > 1:
                work, sixteen = _reduce_pil(im, factor)
                downscale *= factor
            decoded = _from_pil_image(work, fmt)
            if sixteen:
                # Averaged 16-bit samples, still on the 16-bit scale.
                decoded.dtype, decoded.bit_depth = sixteen, 16
                decoded.raw = np.asarray(work, dtype=np.float32)
            decoded.downscale = downscale
            physical = png_pixel_size_nm(im.info.get("dpi")) if fmt == "PNG" else None
    decoded.info["pages"] = pages
    decoded.info["page"] = page
    decoded.info["file_size"] = [int(width), int(height)]
    if physical is not None:
        decoded.pixel_sizes["png-phys"] = physical
    return decoded


def png_pixel_size_nm(dpi: Any) -> float | None:
    """Pixel size in nm from a PNG pHYs chunk (Pillow reports it as dpi), or None.

    Screen and print resolutions (anything coarser than 10 µm per pixel, such as
    the common 72 dpi) say nothing about the specimen and are ignored.
    """
    if not dpi or not dpi[0] or dpi[0] <= 0:
        return None
    nm = 25.4e6 / float(dpi[0])
    return nm if nm < MAX_CALIBRATION_NM else None


def png_dpi_for(pixel_size_nm: float) -> tuple[float, float]:
    """The ``dpi`` to hand Pillow so a PNG's pHYs chunk records ``pixel_size_nm``."""
    dpi = 25.4e6 / pixel_size_nm
    return dpi, dpi


def _decode(source: str | BinaryIO, head: bytes, name: str, max_pixels: int,
            max_work_pixels: int = MAX_WORK_PIXELS, page: int = 0) -> _Decoded:
    from PIL import Image, UnidentifiedImageError

    try:
        if is_tiff_header(head):
            return _decode_tiff(source, name, max_pixels, max_work_pixels, page)
        return _decode_pil(source, name, max_pixels, max_work_pixels, page)
    except MicrographError:
        raise
    except UnidentifiedImageError:
        raise MicrographError(name, "not an image file (format not recognised)") from None
    except Image.DecompressionBombError:
        raise MicrographError(name, _pillow_bomb_cause()) from None
    except MemoryError:
        raise MicrographError(name, "not enough memory to decode the image") from None
    # Decoders raise many unrelated types (OSError, ValueError, SyntaxError,
    # struct.error, TiffFileError, IndexError...) for corrupt or truncated
    # data; all of them mean the same to the caller.
    except Exception as exc:  # noqa: BLE001
        raise MicrographError(name, f"corrupt or truncated image ({type(exc).__name__}: {exc})") from None


def probe_image(data: bytes, name: str) -> tuple[int, int]:
    """(width, height) of an image from its header only, without decoding the pixels.

    Raises ``MicrographError`` when the bytes are not a recognisable image or
    the header states a zero size. A truncated body is not detected here.
    """
    if not data:
        raise MicrographError(name, "empty file (0 bytes)")
    from PIL import Image, UnidentifiedImageError

    try:
        if is_tiff_header(data):
            import tifffile

            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                if not tif.pages:
                    raise MicrographError(name, "TIFF file holds no image")
                shape = dict(zip(tif.pages[0].axes, tif.pages[0].shape))
                width, height = shape.get("X", 0), shape.get("Y", 0)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as im:
                    width, height = im.size
    except MicrographError:
        raise
    except UnidentifiedImageError:
        raise MicrographError(name, "not an image file (format not recognised)") from None
    except Image.DecompressionBombError:
        raise MicrographError(name, _pillow_bomb_cause()) from None
    except Exception as exc:  # noqa: BLE001 - as in _decode: any decoder failure means a corrupt header
        raise MicrographError(name, f"corrupt image header ({type(exc).__name__}: {exc})") from None
    if width <= 0 or height <= 0:
        raise MicrographError(name, f"zero-size image ({width}x{height})")
    return int(width), int(height)


def _sidecar_pixel_size(path: Path) -> tuple[float | None, str | None]:
    """``pixel_size_nm`` from ``<file>.json`` or ``<stem>.json`` beside ``path``, and any problem with it."""
    for candidate in (path.with_name(path.name + ".json"), path.with_suffix(".json")):
        if candidate == path or not candidate.is_file():
            continue
        try:
            value = json.loads(candidate.read_text(encoding="utf-8")).get("pixel_size_nm")
        except (OSError, ValueError, AttributeError) as exc:
            return None, f"{candidate.name}: unreadable sidecar ({exc})"
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return float(value), None
        return None, f"{candidate.name}: no positive number under 'pixel_size_nm'"
    return None, None


def _build(
    decoded: _Decoded,
    *,
    path: str | None,
    sha256: str,
    pixel_size_nm: float | None,
    scale_bar_nm: float | None,
    crop_data_bar: bool,
    extra: dict[str, Any],
    sidecar_nm: float | None = None,
    read_bar: bool | None = None,
) -> Micrograph:
    raw = decoded.raw
    name = path or extra.get("name", "array")
    if raw.ndim != 2 or raw.size == 0:
        raise MicrographError(name, f"zero-size or non-2D image (shape {raw.shape})")
    for label, value in (("pixel size", pixel_size_nm), ("scale bar length", scale_bar_nm)):
        if value is not None and not (isinstance(value, (int, float)) and 0 < value < float("inf")):
            raise MicrographError(name, f"{label} must be a positive number of nm, got {value!r}")
    if raw.dtype.kind == "f" and not np.isfinite(raw).any():
        raise MicrographError(name, "not an image: every sample is NaN or infinite")
    full = np.clip(raw, 0.0, 1.0).astype(np.float32) if decoded.scaled else _to_unit(raw, decoded.dtype)

    bar_box = find_data_bar(full)
    scale = find_scale_bar(full, bar_box) if bar_box is not None else None
    # Calibrations given for the file's pixels; a reduced image's pixels are ``downscale`` times larger.
    k = decoded.downscale
    candidates = {source: size * k for source, size in decoded.pixel_sizes.items()}
    if pixel_size_nm is not None:
        candidates["caller"] = float(pixel_size_nm) * k
    if sidecar_nm is not None:
        candidates["sidecar"] = sidecar_nm * k
    if k != 1.0:
        extra["downscale"] = k
    pages = int(decoded.info.get("pages") or 1)
    if pages > 1:
        extra["page_note"] = (f"{name}: the file holds {pages} pages; page {int(decoded.info.get('page', 0)) + 1} "
                              "was read (choose another with --page)")
    if scale is not None and scale.length_px > 0 and scale_bar_nm is not None:
        candidates["scale-bar"] = float(scale_bar_nm) / scale.length_px
    source = next((s for s in _SOURCE_ORDER if s in candidates), None)

    origin, masked = (0, 0), None
    if crop_data_bar and bar_box is not None:
        x0, y0, x1, y1 = image_box(full.shape, bar_box)
        pixels = full[y0:y1, x0:x1]
        origin = (x0, y0)
        if (x1 - x0, y1 - y0) == (full.shape[1], full.shape[0]):
            # A band with image above and below: kept in place, blanked to the image's median grey.
            pixels = pixels.copy()
            bx0, by0, bx1, by1 = bar_box
            outside = np.ones(full.shape, dtype=bool)
            outside[by0:by1, bx0:bx1] = False
            pixels[by0:by1, bx0:bx1] = float(np.median(full[outside]))
            masked = bar_box
    else:
        pixels = full
    bar_pixels = None
    if bar_box is not None:
        bar_pixels = full[bar_box[1] : bar_box[3], bar_box[0] : bar_box[2]].copy()
    micrograph = Micrograph(
        pixels=np.ascontiguousarray(pixels),
        path=path,
        sha256=sha256,
        dtype=decoded.dtype,
        bit_depth=decoded.bit_depth,
        original_shape=(int(full.shape[0]), int(full.shape[1])),
        pixel_size_nm=candidates.get(source) if source else None,
        pixel_size_source=source,
        data_bar=bar_box,
        scale_bar_px=scale.length_px if scale else None,
        scale_bar_box=scale.box if scale else None,
        scale_bar_nm=float(scale_bar_nm) if scale_bar_nm is not None else None,
        metadata={"format": decoded.fmt, "pixel_size_candidates": candidates, **decoded.info, **extra},
        origin=origin,
        masked=masked,
        bar_pixels=bar_pixels,
    )
    # Without a pixel size from the caller or the file, the bar's label is the only one left:
    # read it now. Otherwise it is read when asked for (``read_instrument``), as OCR costs ~0.5 s.
    if read_bar is True or (read_bar is None and source is None and scale is not None):
        read_instrument(micrograph)
    return micrograph


def load_micrograph(
    path: str | Path,
    pixel_size_nm: float | None = None,
    scale_bar_nm: float | None = None,
    crop_data_bar: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    read_bar: bool | None = None,
    page: int = 0,
    max_work_pixels: int = MAX_WORK_PIXELS,
) -> Micrograph:
    """Read an image file (TIFF, PNG, JPEG, BMP…) as a grey ``Micrograph``.

    Pixel size comes from ``pixel_size_nm`` when given, else from Zeiss or FEI
    metadata, tifffile's resolution tags, a sidecar ``<file>.json`` /
    ``<stem>.json`` with ``pixel_size_nm``, or the scale bar when
    ``scale_bar_nm`` is given or OCR reads the bar's label;
    ``pixel_size_source`` names the one used. ``read_bar`` True reads the
    data bar's text with Tesseract now (``Micrograph.instrument``), False
    never, None (default) only when no other pixel size is known. Any
    problem with the file raises ``MicrographError`` naming it. Images over
    ``max_pixels`` are refused from their header; Pillow also refuses non-TIFF
    images over twice ``PIL.Image.MAX_IMAGE_PIXELS`` whatever ``max_pixels`` says.
    Images over ``max_work_pixels`` are reduced on read (``metadata["downscale"]``
    file pixels per pixel; the pixel size is scaled to match). ``page`` picks the
    page (frame) of a multi-page file, counting from 0; ``metadata["page_note"]``
    says which page was read when there are several.
    """
    p = Path(path)
    name = str(p)
    if not p.exists():
        raise MicrographError(name, "no such file")
    if p.is_dir():
        raise MicrographError(name, "is a directory, not an image file")
    try:
        with open(p, "rb") as fh:
            head = fh.read(8)
        if not head:
            raise MicrographError(name, "empty file (0 bytes)")
        # Decoded before hashing so that an oversized file is refused from its header alone.
        decoded = _decode(name, head, name, max_pixels, max_work_pixels, page)
        with open(p, "rb") as fh:
            sha = hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError as exc:
        raise MicrographError(name, f"cannot be read ({exc.strerror or exc})") from None
    sidecar, problem = _sidecar_pixel_size(p)
    return _build(
        decoded,
        path=str(p.resolve()),
        sha256=sha,
        pixel_size_nm=pixel_size_nm,
        scale_bar_nm=scale_bar_nm,
        crop_data_bar=crop_data_bar,
        extra={"sidecar_problem": problem} if problem else {},
        sidecar_nm=sidecar,
        read_bar=read_bar,
    )


def load_micrograph_bytes(
    data: bytes,
    name: str = "upload",
    pixel_size_nm: float | None = None,
    scale_bar_nm: float | None = None,
    crop_data_bar: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    read_bar: bool | None = None,
    page: int = 0,
    max_work_pixels: int = MAX_WORK_PIXELS,
) -> Micrograph:
    """Like ``load_micrograph`` for an image held in memory (an upload); ``name`` appears in errors
    and in ``metadata["name"]``. The format is recognised from the bytes, not from the name."""
    if not data:
        raise MicrographError(name, "empty file (0 bytes)")
    decoded = _decode(io.BytesIO(data), bytes(data[:8]), name, max_pixels, max_work_pixels, page)
    return _build(
        decoded,
        path=None,
        sha256=hashlib.sha256(data).hexdigest(),
        pixel_size_nm=pixel_size_nm,
        scale_bar_nm=scale_bar_nm,
        crop_data_bar=crop_data_bar,
        extra={"name": name},
        read_bar=read_bar,
    )


def micrograph_from_array(
    array: Any,
    pixel_size_nm: float | None = None,
    crop_data_bar: bool = True,
    path: str | None = None,
    scale_bar_nm: float | None = None,
    read_bar: bool | None = None,
) -> Micrograph:
    """A ``Micrograph`` from a numpy array ([H, W] grey or [H, W, C] colour) or a PIL image,
    normalised and cropped exactly as files are. ``sha256`` hashes the pixel samples."""
    name = path or "array"
    if hasattr(array, "mode") and hasattr(array, "getdata"):
        fmt = getattr(array, "format", None) or "PIL"
        if array.width <= 0 or array.height <= 0:
            raise MicrographError(name, f"zero-size image ({array.width}x{array.height})")
        decoded = _from_pil_image(array, fmt)
        stored = np.asarray(array)
    else:
        stored = np.asarray(array)
        if stored.ndim == 3 and stored.shape[-1] in (1, 2, 3, 4):
            raw = _grey(stored)
        elif stored.ndim == 2:
            raw = stored
        else:
            raise MicrographError(name, f"expected an [H, W] or [H, W, C] array, got shape {stored.shape}")
        if stored.dtype.kind not in "buif":
            raise MicrographError(name, f"unsupported array type {stored.dtype}")
        decoded = _Decoded(raw, stored.dtype.name, stored.dtype.itemsize * 8 if stored.dtype.kind != "b" else 1, "array")
    digest = hashlib.sha256()
    digest.update(f"{stored.dtype.str}{stored.shape}".encode())
    digest.update(np.ascontiguousarray(stored).tobytes())
    return _build(
        decoded,
        path=path,
        sha256=digest.hexdigest(),
        pixel_size_nm=pixel_size_nm,
        scale_bar_nm=scale_bar_nm,
        crop_data_bar=crop_data_bar,
        extra={},
        read_bar=read_bar,
    )
