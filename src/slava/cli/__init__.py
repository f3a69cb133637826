"""The ``slava`` command line: a map from command names to one function each.

Each module in this package defines ``register(subparsers)`` that adds its
command and sets ``func``; the functions only parse arguments and call into
the library.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from slava.errors import SlavaError


def build_parser() -> argparse.ArgumentParser:
    """Parser with every command found in this package."""
    parser = argparse.ArgumentParser(prog="slava", description="sLAVA: language-and-vision assistant for electron micrographs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.register(sub)
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
