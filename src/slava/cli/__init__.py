"""The ``slava`` command line: a map from command names to one function each.

``COMMANDS`` names every command's module; each defines ``register(subparsers)``
that adds its command and sets ``func``. The functions only parse arguments
and call into the library.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from slava.errors import SlavaError


COMMANDS: dict[str, str] = {
    "env": "slava.cli.env",
    "inspect": "slava.cli.inspect",
    "synth": "slava.cli.synth",
    "teach": "slava.cli.teach",
    "train": "slava.cli.train",
    "adapt": "slava.cli.adapt",
    "plot": "slava.cli.plot",
    "ask": "slava.cli.ask",
    "caption": "slava.cli.caption",
    "classify": "slava.cli.classify",
    "measure": "slava.cli.measure",
    "screen": "slava.cli.screen",
    "serve": "slava.cli.serve",
    "eval": "slava.cli.eval",
}
"""Command name → the module that registers it, in the order of the data flow."""


def build_parser() -> argparse.ArgumentParser:
    """Parser with every command of ``COMMANDS``."""
    parser = argparse.ArgumentParser(prog="slava", description="sLAVA: language-and-vision assistant for electron micrographs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS.values():
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``slava`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except SlavaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # Output piped into `head` and friends: not an error worth a traceback.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
