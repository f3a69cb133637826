"""Quantized bases and DyA-MoPEs, timed side by side in one run.

1. Training step (forward + backward + AdamW on the adapters, bf16 autocast)
   of a LLaMA-shaped stack of linears (hidden 512, MLP 1408, 4 layers of
   q,k,v,o,gate,up,down; batch 8 x 128 tokens) on a frozen int8 base:
   frozen only, one LoRA of rank 16, DyA-MoPE (E=8, k=2, r_max=8) at full
   rank and at a sampled rank. "Same rank budget" means the same *active*
   rank per token: k * r_max = 16 = the LoRA's rank; a LoRA of rank
   E * r_max = 64 has the experts' parameter count and matmul sizes. The same
   again for one layer of hidden 2048 shows the overhead shrink as the base
   grows. Variants are interleaved
   step by step so a busy neighbour slows them alike; medians are printed.
2. Bytes of the stack's linear weights in fp32, int8, int4 and NF4.
3. One 2048 x 2048 layer over 1024 tokens under bf16 autocast, forward and
   forward + backward: dense bf16 (what caching a dequantized weight would
   give) vs each format, and each format's relative output error on
   Gaussian weights.

Run: .venv/bin/python bench/bench_mope.py
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from slava.model.mope import MoPEConfig, adapter_parameters, attach_mopes, router_losses, sample_rank, set_rank
from slava.model.quant import QuantizedLinear, quantize_linears

HIDDEN, MLP, LAYERS, BATCH, TOKENS = 512, 1408, 4, 8, 128
WARMUP, STEPS = 3, 12
FORMATS = {
    "int8": dict(bits=8),
    "int4 sym": dict(bits=4, fmt="int4"),
    "int4 asym": dict(bits=4, fmt="int4", symmetric=False),
    "nf4": dict(bits=4, fmt="nf4"),
}


class Layer(nn.Module):
    def __init__(self, hidden: int, mlp: int) -> None:
        super().__init__()
        self.hidden = hidden
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            setattr(self, name, nn.Linear(hidden, hidden, bias=False))
        self.gate_proj = nn.Linear(hidden, mlp, bias=False)
        self.up_proj = nn.Linear(hidden, mlp, bias=False)
        self.down_proj = nn.Linear(mlp, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Attention's matmuls are the same for every variant, so a cheap mixer stands in.
        h = F.rms_norm(x, (self.hidden,))
        x = x + self.o_proj(torch.sigmoid(self.q_proj(h)) * self.k_proj(h) + self.v_proj(h))
        h = F.rms_norm(x, (self.hidden,))
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


def stack(hidden: int = HIDDEN, mlp: int = MLP, layers: int = LAYERS) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(*[Layer(hidden, mlp) for _ in range(layers)])
    for p in model.parameters():
        nn.init.normal_(p, std=0.02)
    return model


def median_ms(fn, n: int = 10) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def bench_training(hidden: int, mlp: int, layers: int) -> None:
    base = stack(hidden, mlp, layers).requires_grad_(False)
    quantize_linears(base, bits=8)
    mope_cfg = MoPEConfig(num_experts=8, top_k=2, r_max=8, alpha=16.0, min_rank=2)
    variants: dict[str, tuple[nn.Module, MoPEConfig | None]] = {"frozen int8 only": (base, None)}
    for name, cfg in [
        ("LoRA r16", MoPEConfig.plain_lora(rank=16, alpha=32.0)),
        ("LoRA r64 (same params)", MoPEConfig.plain_lora(rank=64, alpha=128.0)),
        ("DyA-MoPE E8 k2 r8", mope_cfg),
        ("DyA-MoPE sampled rank", mope_cfg),
    ]:
        model = copy.deepcopy(base)
        attach_mopes(model, cfg)
        variants[name] = (model, cfg)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, TOKENS, hidden)

    def make_step(name, model, cfg):
        params = [p for group in adapter_parameters(model).values() for p in group]
        opt = torch.optim.AdamW(params, lr=1e-4) if params else None
        model.train()

        def step():
            if name.endswith("sampled rank"):
                set_rank(model, sample_rank(cfg, gen))
            inp = x.clone().requires_grad_()  # gradients flow back to a projector upstream
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(inp).float().square().mean()
                if cfg is not None:
                    balance, z = router_losses(model)
                    loss = loss + cfg.balance_weight * balance + cfg.z_weight * z
            loss.backward()
            if opt is not None:
                opt.step()
                opt.zero_grad(set_to_none=True)

        return step

    steps = {name: make_step(name, model, cfg) for name, (model, cfg) in variants.items()}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(WARMUP + STEPS):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            if i >= WARMUP:
                times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    lora = med["LoRA r16"]
    print(f"## Training step, {layers} layers hidden {hidden}/{mlp}, batch {BATCH}x{TOKENS}, bf16 autocast, int8 base")
    print(f"{'variant':26s} {'ms':>8s} {'x LoRA':>7s} {'x frozen':>8s} {'trainable':>10s}")
    for name, ms in med.items():
        n = sum(p.numel() for g in adapter_parameters(variants[name][0]).values() for p in g)
        print(f"{name:26s} {ms:8.1f} {ms / lora:7.2f} {ms / med['frozen int8 only']:8.2f} {n:10,d}")


def bench_bytes() -> None:
    fp32 = sum(p.numel() * 4 for p in stack().parameters())
    print(f"\n## Bytes of the {LAYERS * 7} linear weights (group 64 for 4-bit)")
    print(f"{'fp32':10s} {fp32 / 2**20:8.2f} MiB  1.00")
    print(f"{'bf16':10s} {fp32 / 2 / 2**20:8.2f} MiB  {0.5:.2f}")
    for name, kw in FORMATS.items():
        model = stack()
        quantize_linears(model, group_size=64, **kw)
        size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        print(f"{name:10s} {size / 2**20:8.2f} MiB  {size / fp32:.3f}")


def bench_layer() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(2048, 2048, bias=False)
    nn.init.normal_(lin.weight, std=0.02)
    x = torch.randn(1024, 2048)
    reference = lin(x)
    dense = lin.weight.detach().to(torch.bfloat16)

    def fwd_bwd(layer):
        def run():
            inp = x.clone().requires_grad_()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = layer(inp)
            y.float().sum().backward()

        return run

    def fwd(layer):
        def run():
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                layer(x)

        return run

    def dense_layer(inp):
        return F.linear(inp, dense)

    dense_fwd, dense_fb = median_ms(fwd(dense_layer)), median_ms(fwd_bwd(dense_layer))
    print("\n## One 2048x2048 layer, 1024 tokens, bf16 autocast (group 64)")
    print("dense bf16 = a cached dequantized weight; x = ratio to it")
    print(f"{'format':10s} {'fwd ms':>7s} {'x':>5s} {'fwd+bwd':>8s} {'x':>5s} {'dequant ms':>10s} {'rel. error':>10s}")
    print(f"{'bf16 dense':10s} {dense_fwd:7.1f} {1:5.2f} {dense_fb:8.1f} {1:5.2f} {'-':>10s} {'-':>10s}")
    for name, kw in FORMATS.items():
        q = QuantizedLinear(lin, group_size=64, **kw)
        f, fb = median_ms(fwd(q)), median_ms(fwd_bwd(q))
        deq = median_ms(lambda: q.dequantize(torch.bfloat16))
        with torch.no_grad():
            err = ((q(x) - reference).norm() / reference.norm()).item()
        print(f"{name:10s} {f:7.1f} {f / dense_fwd:5.2f} {fb:8.1f} {fb / dense_fb:5.2f} {deq:10.2f} {err:10.4f}")


if __name__ == "__main__":
    torch.set_num_threads(2)
    bench_training(HIDDEN, MLP, LAYERS)
    bench_training(2048, 5632, 1)
    bench_bytes()
    bench_layer()
