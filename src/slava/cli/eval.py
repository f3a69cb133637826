"""``slava eval``: evaluate a trained run (metrics.json + report.html), or train and score recipe ablations."""

from __future__ import annotations

import argparse

from slava.hardware import PRECISIONS


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _ints(text: str) -> list[int]:
    return [int(part) for part in _csv(text) if int(part) > 0]


def _artefacts(text: str) -> list[str]:
    from slava.artefacts import ARTEFACTS

    return list(ARTEFACTS) if text.strip() == "all" else _csv(text)


def _threads(text: str) -> int | str:
    return text if text == "auto" else int(text)


def register(subparsers) -> None:
    """Add the ``eval`` command."""
    p = subparsers.add_parser(
        "eval",
        help="evaluate a run: captions/VQA, classification, few-shot, counting, shifts, baselines → report.html",
        description="Evaluate a trained run on the test split of a data set folder or records file and write "
        "metrics.json and a self-contained report.html into --out. With --ablations RECIPE, instead train "
        "variants of the recipe with a reduced step budget and write an ablation table.",
    )
    p.add_argument("--run", default=None, help="run directory (default $SLAVA_RUN or runs/smol-cpu)")
    p.add_argument("--data", required=True, help="synthetic set / image folder, or instruction records (.jsonl)")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--tasks", type=_csv, default=["caption", "vqa", "classify", "count"],
                   help="comma list of caption,vqa,classify,count (default all)")
    p.add_argument("--shots", type=_ints, default=[1, 5, 10], help="few-shot support sizes (default 1,5,10; 0 = none)")
    p.add_argument("--shifts", type=_csv, default=[], help="comma list of noise,blur,contrast,charging,scale")
    p.add_argument("--artefacts", type=_artefacts, default=[],
                   help="instrument artefacts applied to the test images (any data): comma list of "
                        "magnification,defocus,contrast,charging,scan,noise,bit_depth,jpeg, or all")
    p.add_argument("--severities", type=_csv, default=["moderate", "strong"],
                   help="severities of --artefacts (default moderate,strong)")
    p.add_argument("--baselines", type=_csv, nargs="?", const=["texture", "efficientnet"], default=[],
                   help="baselines trained on the train split: texture,efficientnet (flag alone: both)")
    p.add_argument("--limit", type=int, default=None, help="at most N test images per task (class-balanced)")
    p.add_argument("--text-limit", type=int, default=None, help="at most N test images for captions and VQA (default --limit)")
    p.add_argument("--zero-shot", type=_csv, default=None,
                   help="held-out classes for zero-shot classification (refused if the run's data named them)")
    p.add_argument("--neu", default=None, help="NEU-DET folder: also report 5-shot top-1 on its test split")
    p.add_argument("--real", default=None,
                   help="folder of real sets (each with truth.jsonl, as shared/data/real-sem): caption 2 images per set")
    p.add_argument("--ablations", default=None, metavar="RECIPE",
                   help="train each ablation variant of RECIPE on --data (records) and score it")
    p.add_argument("--ablation-steps", type=int, default=40, help="optimizer steps per stage for each ablation variant")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="compute precision of the student and the network baseline (default auto: bf16 only where native)")
    p.add_argument("--threads", type=_threads, default="auto", help="torch CPU threads (default auto: this process's cores)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the evaluation (or the ablations) and print where the results are."""
    if args.ablations:
        from slava.ablations import ablation_table, run_ablations

        rows = run_ablations(args.ablations, args.data, args.out, steps=args.ablation_steps, limit=args.limit or 40)
        print(ablation_table(rows, args.ablation_steps))
        return 0
    from slava.assistant import default_run
    from slava.eval.runner import evaluate

    metrics = evaluate(
        args.run or default_run(), args.data, args.out, tasks=args.tasks, shots=args.shots, shifts=args.shifts,
        artefacts=args.artefacts, severities=args.severities,
        baselines=args.baselines, limit=args.limit, text_limit=args.text_limit, zero_shot=args.zero_shot,
        neu=args.neu, real=args.real, seed=args.seed, precision=args.precision, threads=args.threads,
    )
    for goal in metrics["goals"]:
        print(f"{goal['goal']}: {goal['value']:.3f} (target {goal['target']}: {'met' if goal['met'] else 'MISSED'})")
    print(f"ran in {metrics['precision']} with {metrics['threads']} threads ({metrics['precision_reason']})")
    print(f"report: {args.out}/report.html  metrics: {args.out}/metrics.json  ({metrics['elapsed_s']:.0f} s)")
    return 0
