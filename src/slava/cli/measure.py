"""``slava measure``: count and size the features of one micrograph (no trained model needed)."""

from __future__ import annotations

import argparse

from slava.cli.ask import add_page_arg, read_image
from slava.measure.particles import PARTICLE_METHODS


def register(subparsers) -> None:
    p = subparsers.add_parser("measure", help="measure particles, fibres, pores, texture of a micrograph",
                              description="Classical image analysis of one micrograph: counts and sizes in nm "
                              "(px when the image carries no calibration and --pixel-size is not given).")
    p.add_argument("image", help="image file (TIFF, PNG, JPEG)")
    p.add_argument("--pixel-size", type=float, default=None, metavar="NM", help="pixel size in nm (overrides metadata)")
    p.add_argument("--particles", choices=PARTICLE_METHODS, default="auto", dest="particle_method",
                   help="how particles are found: auto (default); threshold (bright phase, split at necks); "
                   "contrast (local contrast: particles on a support, as in HAADF-STEM of catalysts)")
    p.add_argument("--json", action="store_true", help="print the full measurements as JSON")
    p.add_argument("--overlay", metavar="PNG", help="write a PNG of what was counted, the data-bar box and the scale bar")
    add_page_arg(p)
    p.set_defaults(func=run)


def _fmt(value, unit: str = "") -> str:
    if value is None:
        return "—"
    return f"{value:.3g}{unit}" if isinstance(value, float) else f"{value}{unit}"


def run(args: argparse.Namespace) -> int:
    import json

    from slava.measure import measure

    from pathlib import Path

    from slava.io import read_instrument
    from slava.measure.overlay import render_overlay

    micrograph = read_image(args, args.image, args.pixel_size)
    read_instrument(micrograph)
    m = measure(micrograph, particle_method=args.particle_method)
    if args.overlay:
        Path(args.overlay).write_bytes(render_overlay(micrograph, args.particle_method))
    if args.json:
        print(json.dumps({"path": args.image, **m.to_dict()}))
        return 0
    u = f" {m.unit}"
    cal = f"{m.pixel_size_nm:.3g} nm/px ({micrograph.pixel_size_source})" if m.pixel_size_nm else "none (sizes in px)"
    lines = [f"{args.image}: {m.width_px}×{m.height_px} px, calibration {cal}"]
    if m.particles:
        p = m.particles
        lines.append(f"  particles   {p.count} (+{p.border_count} at the edge), mean diameter {_fmt(p.mean_diameter, u)}, "
                     f"coverage {p.coverage:.1%}")
    if m.fibres:
        f = m.fibres
        lines.append(f"  fibres      {f.count}, mean width {_fmt(f.mean_width, u)}, orientation {_fmt(f.orientation_deg, '°')}")
    if m.pores:
        o = m.pores
        lines.append(f"  pores       {o.count}, fraction {o.pore_fraction:.1%}, mean size {_fmt(o.mean_pore_size, u)}")
    if m.periodicity and m.periodicity.pitch is not None and m.periodicity.strength >= 0.2:
        lines.append(f"  pattern     pitch {_fmt(m.periodicity.pitch, u)} (strength {m.periodicity.strength:.2f})")
    if m.texture:
        t = m.texture
        lines.append(f"  texture     mean {t.mean_intensity:.2f}, std {t.std_intensity:.2f}, GLCM contrast {t.glcm_contrast:.3g}")
    if micrograph.instrument is not None and micrograph.instrument.summary():
        lines.append(f"  instrument  {micrograph.instrument.summary()}")
    lines += [f"  note: {n}" for n in m.notes]
    if args.overlay:
        lines.append(f"  overlay     {args.overlay}")
    print("\n".join(lines))
    return 0
