"""``slava plot``: redraw a training run's PNG plots from its metrics.jsonl."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("plot", help="plot a training run's loss and expert load")
    p.add_argument("run", help="run directory (holds metrics.jsonl)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from slava.train.plots import plot_run

    for path in plot_run(args.run):
        print(path)
    return 0
