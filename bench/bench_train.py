"""Training throughput of the tiny-cpu student: fp32 vs bf16, 1 thread vs auto, and DyA-MoPEs vs LoRA vs full.

Each measurement runs in its own subprocess (peak RSS is per process) on the
same synthetic batches: the tiny-cpu model at 160 px, batch 16, ~200-token
sequences, AdamW. Three tables, each measured side by side in this one run:

1. precision: fp32 and bf16 autocast (DyA-MoPEs, auto threads), and what
   `precision: auto` picks here (``slava.hardware``);
2. threads: one thread against `threads: auto` (auto precision);
3. adapters: DyA-MoPEs, one LoRA, full LM fine-tune (auto precision and threads),
   as ratios to the single LoRA.

Where bf16 is emulated (AVX2 without AMX) a bf16 step takes tens of seconds,
so that row runs two steps after one warm-up.

    .venv/bin/python bench/bench_train.py [--steps 8]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("mope", "lora", "full")


def measure(variant: str, steps: int, threads: str, precision: str, warmup: int) -> dict:
    import torch

    from slava.data.chat import IGNORE_INDEX
    from slava.hardware import choose_precision, use_threads
    from slava.model.loss import token_cross_entropy
    from slava.model.mope import MoPEConfig
    from slava.model.tokenizer import train_tokenizer
    from slava.model.vlm import SlavaModel
    from slava.train.recipe import load_recipe

    n_threads = use_threads(threads if threads == "auto" else int(threads))
    chosen = choose_precision(precision, "cpu")
    torch.manual_seed(0)
    cfg = load_recipe(ROOT / "recipes" / "tiny-cpu.yaml").model
    if variant == "lora":
        cfg.mope = MoPEConfig.plain_lora(rank=cfg.mope.r_max)
    words = "particles fibres pores nanowires diameter spacing mean contrast bright dark film substrate nm".split()
    tok = train_tokenizer([" ".join(words[(i * 7 + j) % len(words)] for j in range(40)) for i in range(200)], cfg.lm.vocab_size)
    model = SlavaModel.build(cfg, tok)
    model.prepare_stage("base" if variant == "full" else "instruct")
    model.train()
    params = [p for group in model.param_groups().values() for p in group]
    opt = torch.optim.AdamW(params, lr=1e-4)
    batch, length = 16, 200
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, tok.vocab_size, (batch, length), generator=g)
    ids[:, 1 : 1 + model.num_image_tokens] = tok.image_id
    labels = ids.clone()
    labels[:, : length // 2] = IGNORE_INDEX
    mask = torch.ones_like(ids)
    pixels = torch.rand(batch, 1, model.image_size, model.image_size, generator=g)
    times = []
    for step in range(steps + warmup):
        t0 = time.perf_counter()
        if model.adapted:
            model.set_rank(model.sample_rank(g))
        with chosen.autocast("cpu"):
            out = model(pixels, ids, mask)
        loss = token_cross_entropy(out.logits, labels)
        if model.adapted and cfg.mope.num_experts > 1:
            loss = loss + cfg.mope.balance_weight * out.balance_loss + cfg.mope.z_weight * out.z_loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= warmup:  # the first steps allocate optimizer state and warm the kernels
            times.append(time.perf_counter() - t0)
    step_s = sorted(times)[len(times) // 2]
    return {
        "variant": variant,
        "precision": chosen.name,
        "threads": n_threads,
        "trainable_params": sum(p.numel() for p in params),
        "step_s": step_s,
        "tokens_per_s": batch * length / step_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _run(variant: str, steps: int, threads: str = "auto", precision: str = "auto", warmup: int = 2) -> dict:
    done = subprocess.run([sys.executable, __file__, "--variant", variant, "--steps", str(steps), "--threads", threads,
                           "--precision", precision, "--warmup", str(warmup)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _row(label: str, r: dict, ref: dict) -> str:
    return (f"{label:10} {r['precision']:>5} {r['threads']:>7} {r['step_s']:>8.3f} {r['tokens_per_s']:>8.0f} "
            f"{r['peak_rss_mb']:>8.0f} {r['tokens_per_s'] / ref['tokens_per_s']:>9.2f}")


def main() -> None:
    from slava.hardware import choose_precision, cpu_info, resolve_threads

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--threads", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(measure(args.variant, args.steps, args.threads, args.precision, args.warmup)))
        return
    cpu, auto = cpu_info(), choose_precision("auto", "cpu")
    print(f"{cpu.model}, torch capability {cpu.capability}, {resolve_threads('auto')} cores; "
          f"auto precision: {auto.name} ({auto.reason})")
    header = f"{'':10} {'prec':>5} {'threads':>7} {'step s':>8} {'tok/s':>8} {'peak MB':>8} {'tok/s x':>9}"

    fp32 = _run("mope", args.steps, precision="fp32")
    emulated = not cpu.native_bf16
    bf16 = _run("mope", 2 if emulated else args.steps, precision="bf16", warmup=1 if emulated else 2)
    print("\n## precision (DyA-MoPEs, auto threads; x = vs fp32)\n" + header)
    print(_row("fp32", fp32, fp32))
    print(_row("bf16", bf16, fp32))
    faster = "bf16" if bf16["tokens_per_s"] > fp32["tokens_per_s"] else "fp32"
    print(f"auto picks {auto.name}; the faster here is {faster}: {'agrees' if faster == auto.name else 'DISAGREES'}")

    one = _run("mope", args.steps, threads="1")
    both = _run("mope", args.steps)
    print("\n## threads (DyA-MoPEs, auto precision; x = vs 1 thread)\n" + header)
    print(_row("1 thread", one, one))
    print(_row("auto", both, one))

    results = {variant: _run(variant, args.steps) for variant in VARIANTS}
    ref = results["lora"]
    print("\n## adapters (auto precision and threads; x = vs one LoRA)")
    print(f"{'variant':8} {'trainable':>10} {'step s':>8} {'tok/s':>8} {'peak MB':>8} {'tok/s vs LoRA':>14} {'mem vs LoRA':>12}")
    for name, r in results.items():
        print(f"{name:8} {r['trainable_params']:>10,} {r['step_s']:>8.3f} {r['tokens_per_s']:>8.0f} {r['peak_rss_mb']:>8.0f} "
              f"{r['tokens_per_s'] / ref['tokens_per_s']:>14.2f} {r['peak_rss_mb'] / ref['peak_rss_mb']:>12.2f}")


if __name__ == "__main__":
    main()
