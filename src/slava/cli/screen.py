"""``slava screen``: classify and measure every image of a folder into a table and a summary page."""

from __future__ import annotations

import argparse

from slava.hardware import PRECISIONS


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "screen", help="screen a folder of micrographs into a CSV/Parquet table",
        description="One row per image: top label and probability, top-3, measurements, optional caption, error. "
        "Resumable: rerunning skips rows already written. Writes <out>.html with class counts, confidences "
        "and the least certain images.",
    )
    p.add_argument("folder", help="folder of images (searched recursively)")
    p.add_argument("--out", required=True, help="results.csv or results.parquet")
    p.add_argument("--run", default=None, help="trained run directory (default: $SLAVA_RUN or runs/smol-cpu)")
    p.add_argument("--labels", default=None, help="comma-separated labels (default: the classes the run was trained on)")
    p.add_argument("--workers", type=int, default=2, help="decoding/measuring processes (0: in the main process)")
    p.add_argument("--batch-size", type=int, default=32, help="images per model batch (and per journal flush)")
    p.add_argument("--caption", action="store_true", help="also write a caption per image (slower)")
    p.add_argument("--no-measure", action="store_true", help="skip the measurements (several times faster)")
    p.add_argument("--ray", default=None, metavar="ADDRESS", help="run shards on a Ray cluster ('local' starts one here)")
    p.add_argument("--max-images", type=int, default=None, help="stop after N new images (resume later)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="compute precision (default auto: bf16 only where the hardware runs it natively)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from slava.assistant import default_run
    from slava.assistant.screen import screen

    labels = [s.strip() for s in args.labels.split(",") if s.strip()] if args.labels else None
    s = screen(args.folder, args.run or default_run(), args.out, labels=labels, workers=args.workers, caption=args.caption,
               ray_address=args.ray, batch_size=args.batch_size, max_images=args.max_images,
               with_measure=not args.no_measure, progress=not args.no_progress, precision=args.precision)
    summary = {"total": s.total, "processed": s.processed, "skipped": s.skipped, "errors": s.errors,
               "seconds": round(s.seconds, 2), "images_per_s": round(s.images_per_s, 1),
               "rows_per_s": round(s.rows_per_s, 1), "out": s.out, "html": s.html,
               "labels": s.labels, "precision": s.precision, "method": s.method}
    if args.json:
        print(json.dumps(summary))
    else:
        done = "finished" if s.html or s.processed + s.skipped >= s.total else "unfinished (rerun to resume)"
        print(f"{s.processed} screened, {s.skipped} already done, {s.errors} unreadable of {s.total} images "
              f"({s.images_per_s:.1f} img/s; {s.rows_per_s:.1f} img/s once the run was loaded); {done}")
        print(f"  table: {s.out}" + (f"\n  summary: {s.html}" if s.html else ""))
        print(f"  labels: {', '.join(s.labels)}  precision: {s.precision}  method: {s.method or '-'}")
    return 0
