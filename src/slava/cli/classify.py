"""``slava classify``: rank candidate labels for one micrograph, zero- or few-shot."""

from __future__ import annotations

import argparse

from slava.cli.ask import add_page_arg, add_run_args, read_image


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "classify", help="classify a micrograph (zero-shot or few-shot)",
        description="Rank candidate labels for one micrograph. The run's own classes are ranked by its "
        "classification head; labels it never saw are scored as the answer to the classification prompt (LM "
        "scoring); with --support, k labelled images per class classify by prototypes or in context.",
    )
    p.add_argument("image", help="image file (TIFF, PNG, JPEG)")
    p.add_argument("--labels", default=None, help="comma-separated candidate labels (default: the run's classes, "
                   "or the support set's)")
    p.add_argument("--support", default=None, help="few-shot support folder: <dir>/<label>/<images>")
    p.add_argument("--shots", type=int, default=None, help="support images per class (default: all)")
    p.add_argument("--mode", choices=("prototype", "in_context"), default="prototype", help="few-shot method")
    p.add_argument("--method", choices=("auto", "head", "lm"), default="auto",
                   help="without --support: the run's head where it knows every label (auto), or always head / LM scoring")
    add_page_arg(p)
    add_run_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from pathlib import Path

    from slava.errors import SlavaError

    # Inputs first: a missing file must not cost the seconds the model takes to import and load.
    image = read_image(args, args.image)
    if args.support and not Path(args.support).is_dir():
        raise SlavaError(f"--support {args.support}: no such folder")
    from slava.assistant import Assistant, default_run

    labels = [s.strip() for s in args.labels.split(",") if s.strip()] if args.labels else None
    result = Assistant.load(args.run or default_run()).classify(image, labels, args.support, args.shots, args.mode,
                                                                 args.method)
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    width = max(len(label) for label, _ in result.ranked)
    for label, prob in result.ranked:
        print(f"{label:<{width}}  {prob:6.1%}  {'█' * round(prob * 30)}")
    print(f"  ({result.mode.replace('_', '-')}, {result.method}, {result.latency_s * 1000:.0f} ms)")
    return 0
