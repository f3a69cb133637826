"""``slava adapt``: tune a trained run to a folder of your own labelled micrographs."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    """Add the ``adapt`` command."""
    p = subparsers.add_parser(
        "adapt",
        help="tune a run to your own labelled images (one folder per class) in minutes on CPU",
        description="Make the folder's images into records with the analytic teacher and fit the run's "
        "classification head again on their classes, from each training image turned and mirrored (eight views) "
        "and from degraded copies of it, with its L2 strength chosen on the folder's val images. "
        "Writes a new run to --out and scores it on the folder's held-out test images.",
    )
    p.add_argument("--run", default=None, help="run to start from (default $SLAVA_RUN or runs/smol-cpu)")
    p.add_argument("--images", required=True, help="folder with one sub-folder of images per class")
    p.add_argument("--out", required=True, help="new run directory (must be new or empty)")
    p.add_argument("--augment", type=int, default=3, help="degraded copies of each training image (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Adapt the run and print what the new one scores."""
    from slava.assistant import default_run
    from slava.train.adapt import AdaptError, adapt

    if args.augment < 0:
        raise AdaptError("--augment must be at least 0")
    result = adapt(args.run or default_run(), args.images, args.out, augment=args.augment, seed=args.seed,
                   progress=not args.no_progress)
    held = result["held_out"]
    scores = ", ".join(f"{s} macro-F1 {v['macro_f1']:.3f} on {v['images']} images" for s, v in held.items())
    print(f"adapted {result['from_run']} to {len(result['labels'])} classes ({', '.join(result['labels'])}) "
          f"in {result['time_s']:.0f} s: {scores or 'no held-out images'}")
    print(f"run: {args.out}  (slava classify --run {args.out} IMAGE)")
    return 0
