"""``slava synth``: write a synthetic SEM data set with exact ground truth."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    """Add the ``synth`` command."""
    p = subparsers.add_parser(
        "synth",
        help="write synthetic SEM micrographs of the 10 nanomaterial classes with ground truth",
        description="Write N synthetic SEM micrographs (balanced over classes) with ground truth, "
        "splits, a contact sheet and a summary.",
    )
    p.add_argument("--n", type=int, required=True, help="number of images")
    p.add_argument("--out", required=True, help="output folder (new or empty)")
    p.add_argument("--size", type=int, default=256, help="image side in px incl. data bar (>= 64; default 256)")
    p.add_argument("--seed", type=int, default=0, help="seed; same seed gives the same bytes (default 0)")
    p.add_argument("--classes", default=None, help="comma-separated class ids (default: all ten)")
    p.add_argument("--shift", default=None, help="stronger degradation: noise|blur|contrast|charging|scale")
    p.add_argument("--workers", type=int, default=None, help="processes (default: CPU count, at most 4)")
    p.add_argument("--overwrite", action="store_true", help="replace a previous synthetic set in --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Generate the set and print where its contact sheet and summary are."""
    from slava.synth import write_dataset

    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    out = write_dataset(
        args.out,
        args.n,
        size=args.size,
        seed=args.seed,
        classes=classes,
        shift=args.shift,
        workers=args.workers,
        progress=True,
        overwrite=args.overwrite,
    )
    print(f"wrote {args.n} images to {out}; contact sheet: {out / 'contact_sheet.png'}; summary: {out / 'summary.json'}")
    return 0
