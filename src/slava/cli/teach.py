"""``slava teach``: write instruction records for a folder of micrographs."""

from __future__ import annotations

import argparse

from slava.errors import SlavaError


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``teach`` command."""
    p = subparsers.add_parser(
        "teach",
        help="write instruction records (JSONL) about micrographs with a teacher",
        description="Write LLaVA-format instruction records about every image of a folder or manifest. "
        "Reruns skip finished images; unusable images go to rejects.jsonl beside --out.",
    )
    p.add_argument("--data", required=True, help="image folder (<root>/<label>/*), synth set, or .jsonl manifest")
    p.add_argument("--out", required=True, help="records file to append to (JSONL)")
    p.add_argument("--teacher", choices=("analytic", "openai"), default="analytic")
    p.add_argument("--tasks", type=_csv, default=None, help="comma list of caption,vqa,classify,measure (default all)")
    p.add_argument("--per-image", type=int, default=3, help="questions per image (default 3)")
    p.add_argument("--no-label-leak", action="store_true", help="never reveal the class outside classify records")
    p.add_argument(
        "--labels",
        type=_csv,
        default=None,
        help="class labels for classify (openai default: from the data; analytic: the synthetic classes)",
    )
    p.add_argument("--concurrency", type=int, default=4, help="openai: requests in flight (default 4)")
    p.add_argument("--max-tokens", type=int, default=None, help="openai: stop after this many tokens in total")
    p.add_argument("--model", default=None, help="openai: model (default $SLAVA_TEACHER_MODEL)")
    p.add_argument("--base-url", default=None, help="openai: server root ending in /v1 (default: environment)")
    p.add_argument("--timeout", type=float, default=120.0, help="openai: seconds per request (default 120)")
    p.add_argument("--workers", type=int, default=None, help="analytic: processes (default: auto)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=teach)


def teach(args: argparse.Namespace) -> int:
    """Run the chosen teacher over ``--data`` into ``--out`` and print the summary line."""
    from slava.data.records import TASKS
    from slava.teacher.runner import run_teacher

    unknown = [t for t in args.tasks or () if t not in TASKS]
    if unknown:
        raise SlavaError(f"unknown task(s) {', '.join(unknown)} (known: {', '.join(TASKS)})")
    if args.teacher == "openai":
        from slava.teacher.openai_client import OpenAITeacher, OpenAITeacherConfig

        config = OpenAITeacherConfig(
            base_url=args.base_url,
            model=args.model,
            timeout_s=args.timeout,
            concurrency=args.concurrency,
            max_tokens_budget=args.max_tokens,
        )
        backend = OpenAITeacher(
            config,
            tasks=args.tasks,
            per_image=args.per_image,
            labels=args.labels,
            no_label_leak=args.no_label_leak,
            seed=args.seed,
        )
    else:
        from slava.teacher.analytic import AnalyticTeacher

        backend = AnalyticTeacher(
            tasks=args.tasks,
            per_image=args.per_image,
            no_label_leak=args.no_label_leak,
            seed=args.seed,
            labels=args.labels,
        )
    summary = run_teacher(args.data, args.out, backend, workers=args.workers, progress=not args.no_progress)
    print(summary.line())
    return 0
