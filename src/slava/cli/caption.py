"""``slava caption``: describe one micrograph."""

from __future__ import annotations

import argparse

from slava.cli.ask import add_page_arg, add_run_args, read_image


def register(subparsers) -> None:
    p = subparsers.add_parser("caption", help="describe a micrograph", description="Write a detailed caption for one micrograph.")
    p.add_argument("image", help="image file (TIFF, PNG, JPEG)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="longest caption in tokens")
    add_page_arg(p)
    add_run_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    # The image first: a bad file must fail at once, not after the model's import and load.
    image = read_image(args, args.image)
    from slava.assistant import Assistant, default_run

    answer = Assistant.load(args.run or default_run()).caption(image, args.max_new_tokens)
    if args.json:
        print(json.dumps(answer.to_dict()))
    else:
        print(answer.text)
        print(f"  ({answer.tokens} tokens, {answer.latency_s * 1000:.0f} ms)")
    return 0
