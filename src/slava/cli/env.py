"""``slava env``: the CPU, the precision and threads sLAVA will use here, and how fast each precision is."""

from __future__ import annotations

import argparse

from slava.hardware import PRECISIONS


def register(subparsers) -> None:
    """Add the ``env`` command."""
    p = subparsers.add_parser(
        "env",
        help="show the CPU, the precision and thread count chosen for it, and fp32/bf16 matmul speed",
        description="What `precision: auto` and `threads: auto` resolve to on this machine and why, with fp32 and "
        "bf16 matmul GFLOP/s measured in a fraction of a second.",
    )
    p.add_argument("--precision", default="auto", choices=PRECISIONS, help="the setting to resolve (default auto)")
    p.add_argument("--no-bench", action="store_true", help="skip the matmul measurement")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the environment report."""
    import json

    from slava.hardware import environment

    env = environment(args.precision, measure=not args.no_bench)
    if args.json:
        print(json.dumps(env, indent=1))
        return 0
    cpu, threads = env["cpu"], env["threads"]
    features = [name for name, on in (("AMX", cpu["amx"]), ("AVX512-BF16", cpu["avx512_bf16"])) if on]
    print(f"cpu         {cpu['model']}; torch capability {cpu['capability']}; "
          f"{', '.join(features) if features else 'no AMX, no AVX512-BF16'}")
    print(f"torch       {env['torch']}" + (f"; CUDA {env['cuda']}" if env["cuda"] else "; no CUDA device"))
    print(f"precision   {env['precision']['name']} ({env['precision']['reason']})")
    print(f"threads     {threads['chosen']} (cores this process may use: {threads['available_cores']} "
          f"of {threads['machine_cores']})")
    if "matmul_gflops" in env:
        g = env["matmul_gflops"]
        print(f"matmul      fp32 {g['fp32']:.1f} GFLOP/s, bf16 {g['bf16']:.1f} GFLOP/s (bf16/fp32 = {g['bf16_vs_fp32']:.2f})")
    return 0
