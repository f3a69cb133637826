"""``slava inspect FILE``: what sLAVA reads from one micrograph file."""

from __future__ import annotations

import argparse
import json

from slava.cli.ask import add_page_arg, read_image


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``inspect`` command."""
    p = subparsers.add_parser(
        "inspect",
        help="show size, bit depth, pixel size, data bar and scale bar of an image",
        description="Read one micrograph and show what sLAVA found in it.",
    )
    p.add_argument("file", help="image file (TIFF, PNG, JPEG, BMP)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--pixel-size", type=float, metavar="NM", help="pixel size in nm (overrides metadata)")
    p.add_argument("--scale-bar-nm", type=float, metavar="NM", help="length the scale bar stands for, in nm")
    add_page_arg(p)
    p.set_defaults(func=inspect)


def inspect(args: argparse.Namespace) -> int:
    """Load ``args.file`` and print its summary."""
    m = read_image(args, args.file, args.pixel_size, scale_bar_nm=args.scale_bar_nm, read_bar=True)
    inst = m.instrument
    height, width = m.original_shape
    summary = {
        "path": m.path,
        "sha256": m.sha256,
        "format": m.metadata.get("format"),
        "size": m.metadata.get("file_size") or [width, height],
        "image_size": [m.width, m.height],
        "dtype": m.dtype,
        "bit_depth": m.bit_depth,
        "pixel_size_nm": m.pixel_size_nm,
        "pixel_size_source": m.pixel_size_source,
        "pixel_size_candidates": m.metadata.get("pixel_size_candidates", {}),
        "data_bar": list(m.data_bar) if m.data_bar else None,
        "scale_bar_px": m.scale_bar_px,
        "scale_bar_box": list(m.scale_bar_box) if m.scale_bar_box else None,
        "scale_bar_nm": m.scale_bar_nm,
        "field_width_nm": m.to_nm(m.width),
        "masked": list(m.masked) if m.masked else None,
        "instrument": inst.to_dict() if inst else None,
        "pages": int(m.metadata.get("pages") or 1),
        "page": int(m.metadata.get("page") or 0) + 1,
        "downscale": m.metadata.get("downscale", 1.0),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    pixel = "unknown (give --pixel-size or --scale-bar-nm)"
    if m.pixel_size_nm is not None:
        pixel = f"{m.pixel_size_nm:.4g} nm/px (from {m.pixel_size_source}); field width {m.to_nm(m.width):.4g} nm"
    bar = "none found"
    if m.data_bar:
        kept = "masked in place" if m.masked else f"cropped to {m.width}x{m.height}"
        bar = f"box {tuple(m.data_bar)}, {kept}"
    scale = "none found"
    if m.scale_bar_px is not None:
        scale = f"{m.scale_bar_px:.1f} px, box {tuple(m.scale_bar_box)}"
        if m.scale_bar_nm is not None:
            scale += f" = {m.scale_bar_nm:g} nm"
        elif m.pixel_size_nm is not None:
            scale += f" ≈ {m.scale_bar_px * m.pixel_size_nm:.4g} nm at that pixel size"
    for key, value in (
        ("file", m.path),
        ("format", f"{summary['format']}, {summary['size'][0]}x{summary['size'][1]}, {m.dtype} ({m.bit_depth}-bit)"
                   + (f", page {summary['page']} of {summary['pages']}" if summary["pages"] > 1 else "")
                   + (f", read reduced {summary['downscale']:g}x" if summary["downscale"] != 1.0 else "")),
        ("pixel size", pixel),
        ("data bar", bar),
        ("scale bar", scale),
        *_instrument_lines(inst),
        ("sha256", m.sha256),
    ):
        print(f"{key:<11} {value}")
    return 0


_LABELS = {"scale_bar_label": "bar label", "magnification": "mag", "hv_kv": "HV", "wd_mm": "WD",
           "detector": "detector", "hfw_um": "field", "pixel_size_nm": "bar px", "date": "date"}


def _instrument_lines(inst) -> list[tuple[str, str]]:
    """One (key, value) line per field the data bar gave, with its source."""
    if inst is None:
        return []
    if inst.problem:
        return [("bar text", inst.problem)]
    lines = []
    for name, label in _LABELS.items():
        value = getattr(inst, name)
        if value is None:
            continue
        units = {"magnification": "{:g} x", "hv_kv": "{:g} kV", "wd_mm": "{:g} mm", "hfw_um": "{:g} µm",
                 "pixel_size_nm": "{:.4g} nm/px"}
        shown = units[name].format(value) if name in units else str(value)
        lines.append((label, f"{shown}  ({inst.sources.get(name, '')})"))
    return lines
