"""``slava ask``: answer a question about one micrograph."""

from __future__ import annotations

import argparse


def add_page_arg(p: argparse.ArgumentParser) -> None:
    """``--page``, for the commands that read one image file."""
    p.add_argument("--page", type=int, default=1, help="page of a multi-page TIFF or GIF to read (default 1)")


def read_image(args: argparse.Namespace, path: str, pixel_size_nm: float | None = None, **kwargs):
    """The micrograph ``path`` names, read before any model loads so a bad file fails at once;
    says on stderr which page of a multi-page file was read."""
    import sys

    from slava.errors import SlavaError
    from slava.io import load_micrograph

    if args.page < 1:
        raise SlavaError(f"--page counts from 1, got {args.page}")
    micrograph = load_micrograph(path, pixel_size_nm=pixel_size_nm, page=args.page - 1, **kwargs)
    if micrograph.metadata.get("page_note"):
        print(f"note: {micrograph.metadata['page_note']}", file=sys.stderr)
    return micrograph


def add_run_args(p: argparse.ArgumentParser) -> None:
    """``--run`` and ``--json``, shared by the assistant commands."""
    p.add_argument("--run", default=None, help="trained run directory (default: $SLAVA_RUN or runs/smol-cpu)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def register(subparsers) -> None:
    p = subparsers.add_parser("ask", help="answer a question about a micrograph",
                              description="Answer a question about one micrograph. Counting and size questions are "
                              "answered by the measurement toolkit (numbers in nm, or px without calibration).")
    p.add_argument("image", help="image file (TIFF, PNG, JPEG)")
    p.add_argument("question", help='e.g. "How many particles are visible?"')
    p.add_argument("--max-new-tokens", type=int, default=128, help="longest answer in tokens")
    p.add_argument("--strategy", choices=("greedy", "beam", "top_p"), default="greedy", help="decoding strategy")
    add_page_arg(p)
    add_run_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    # The image first: a bad file must fail at once, not after the model's import and load.
    image = read_image(args, args.image)
    from slava.assistant import Assistant, default_run

    answer = Assistant.load(args.run or default_run()).ask(image, args.question, args.max_new_tokens, args.strategy)
    if args.json:
        print(json.dumps(answer.to_dict()))
    else:
        print(answer.text)
        how = "measured" if answer.source == "measurement" else f"{answer.tokens} tokens"
        print(f"  ({how}, {answer.latency_s * 1000:.0f} ms)")
        if answer.invented:
            print(f"  warning: numbers in neither the image context nor the question: {', '.join(answer.invented)}")
    return 0
