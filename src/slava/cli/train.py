"""``slava train``: run a training recipe on instruction records."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train the student model from a recipe",
        description="Run the stages of a recipe (base → align → instruct) on instruction records. "
        "Works alone or under `torchrun --nproc_per_node N`.",
    )
    p.add_argument("--recipe", required=True, help="YAML recipe, e.g. recipes/tiny-cpu.yaml")
    p.add_argument("--data", required=True, help="instruction records (JSONL)")
    p.add_argument("--out", required=True, help="run directory (checkpoints, metrics, final model)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the run directory's latest checkpoint (an error when it has none)")
    p.add_argument("--resume-or-start", action="store_true",
                   help="resume when the run directory holds a checkpoint, else start a new run there")
    p.add_argument("--max-steps", type=int, default=None, help="cap every stage at N optimizer steps (smoke tests)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set model.lm.path=/models/llama (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    import os

    from slava.train.recipe import load_recipe, parse_overrides
    from slava.train.trainer import train

    recipe = load_recipe(args.recipe, parse_overrides(args.set))
    summary = train(recipe, args.data, args.out, resume=args.resume, max_steps=args.max_steps,
                    progress=not args.no_progress, resume_or_start=args.resume_or_start)
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps({k: summary[k] for k in ("global_steps", "time_s", "peak_rss_mb")}))
    return 0
