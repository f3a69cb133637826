"""Training throughput and peak memory of the tiny-cpu student: DyA-MoPEs vs one LoRA vs full fine-tune.

Each variant runs in its own subprocess (peak RSS is per process) on the same
synthetic batches: the tiny-cpu model at 160 px, batch 16, ~200-token
sequences, bf16 autocast, AdamW. Prints tokens/s, step time and peak memory
per variant and their ratios to the single LoRA.

    .venv/bin/python bench/bench_train.py [--steps 8] [--threads 2]
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


def measure(variant: str, steps: int, threads: int) -> dict:
    import torch
    import torch.nn.functional as F

    from slava.data.chat import IGNORE_INDEX
    from slava.model.mope import MoPEConfig, sample_rank, set_rank
    from slava.model.tokenizer import train_tokenizer
    from slava.model.vlm import SlavaModel
    from slava.train.recipe import load_recipe

    torch.set_num_threads(threads)
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
    for step in range(steps + 2):
        t0 = time.perf_counter()
        if model.adapted:
            set_rank(model, sample_rank(cfg.mope, g))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(pixels, ids, mask)
        loss = F.cross_entropy(out.logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)
        if model.adapted and cfg.mope.num_experts > 1:
            loss = loss + cfg.mope.balance_weight * out.balance_loss + cfg.mope.z_weight * out.z_loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= 2:  # the first steps allocate optimizer state and warm the kernels
            times.append(time.perf_counter() - t0)
    step_s = sorted(times)[len(times) // 2]
    return {
        "variant": variant,
        "trainable_params": sum(p.numel() for p in params),
        "step_s": step_s,
        "tokens_per_s": batch * length / step_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(measure(args.variant, args.steps, args.threads)))
        return
    results = {}
    for variant in VARIANTS:
        done = subprocess.run([sys.executable, __file__, "--variant", variant, "--steps", str(args.steps),
                               "--threads", str(args.threads)], capture_output=True, text=True, check=True)
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    ref = results["lora"]
    print(f"{'variant':8} {'trainable':>10} {'step s':>8} {'tok/s':>8} {'peak MB':>8} {'tok/s vs LoRA':>14} {'mem vs LoRA':>12}")
    for name, r in results.items():
        print(f"{name:8} {r['trainable_params']:>10,} {r['step_s']:>8.3f} {r['tokens_per_s']:>8.0f} {r['peak_rss_mb']:>8.0f} "
              f"{r['tokens_per_s'] / ref['tokens_per_s']:>14.2f} {r['peak_rss_mb'] / ref['peak_rss_mb']:>12.2f}")


if __name__ == "__main__":
    main()
