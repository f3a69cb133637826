"""DyA-MoPEs: a Dynamic Adaptation Mixture of Parameter-efficient Experts.

Each targeted linear keeps its frozen (usually quantized) base and gains E
LoRA experts, a per-token router that picks the top-k of them, and nested
(DyLoRA-style) ranks: the first ``b`` rank slots of every expert form a
working adapter of rank ``b``, so one trained adapter can run at any rank up
to ``r_max``.

All experts' ``A`` matrices are stacked into one ``[E * r_max, in]`` parameter
and all ``B`` into one ``[out, E * r_max]`` parameter. A step costs two
matmuls and a gate mask over the rank slots; the base output is computed once
and shared. A training step with E=8, k=2, r_max=8 on an int8 base took
1.14x a rank-16 LoRA step at hidden 2048 and 1.52x at hidden 512, where the
64 dense rank slots weigh more against the base (``bench/bench_mope.py``);
a Python loop over experts cost 2–6x (FINDINGS).

Training protocol (the trainer's side): once per step call
``set_rank(model, sample_rank(cfg, generator))`` so every layer uses the same
rank, add ``cfg.balance_weight * balance + cfg.z_weight * z`` from
:func:`router_losses` to the task loss, and call ``set_rank(model, None)``
(full rank) or any fixed rank before evaluation.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from slava.model.quant import QuantizedLinear, compute_dtype

#: Short target names and the module-name suffixes (Llama/Qwen/Gemma naming) they match.
TARGETS = {
    "q": "q_proj",
    "k": "k_proj",
    "v": "v_proj",
    "o": "o_proj",
    "gate": "gate_proj",
    "up": "up_proj",
    "down": "down_proj",
}


@dataclass
class MoPEConfig:
    """Experts, router and ranks attached to every targeted linear."""

    num_experts: int = 4
    """E, the number of LoRA experts per layer; 1 gives plain LoRA (no router)."""
    top_k: int = 2
    """k, the experts each token is routed to."""
    r_max: int = 8
    """Largest rank of each expert; dynamic training samples ranks up to it."""
    alpha: float = 16.0
    """LoRA scaling numerator: an adapter running at rank b is scaled by alpha / b."""
    dropout: float = 0.0
    """Dropout on the experts' input (as LoRA dropout); the router sees the clean input."""
    router_noise: float = 0.1
    """Std of the Gaussian noise added to the router logits while training (noisy top-k)."""
    dynamic_rank: bool = True
    """Sample a rank in [min_rank, r_max] per training step (see ``sample_rank``)."""
    min_rank: int = 2
    """Smallest rank sampled when ``dynamic_rank`` is on."""
    shared_expert: bool = False
    """Add an always-on LoRA of the same rank for every token, beside the routed ones."""
    target_modules: list[str] = field(default_factory=lambda: list(TARGETS))
    """Layers to adapt: q, k, v, o, gate, up, down, or literal module names (e.g. fc1)."""
    top_layers: int | None = None
    """Adapt only the targets in the last ``top_layers`` decoder blocks (``...layers.<i>...``); None = all.
    Backward then stops below the lowest adapted block unless something under it trains."""
    balance_weight: float = 0.01
    """Weight of the Switch/GShard load-balancing loss in the training loss."""
    z_weight: float = 0.001
    """Weight of the router z-loss (mean squared logsumexp of the logits)."""

    @classmethod
    def plain_lora(cls, rank: int = 8, alpha: float = 16.0, target_modules: list[str] | None = None) -> MoPEConfig:
        """A config that is exactly LoRA of ``rank`` (one expert, no router, fixed rank)."""
        return cls(
            num_experts=1,
            top_k=1,
            r_max=rank,
            alpha=alpha,
            router_noise=0.0,
            dynamic_rank=False,
            min_rank=rank,
            target_modules=list(TARGETS) if target_modules is None else list(target_modules),
            balance_weight=0.0,
            z_weight=0.0,
        )


def _device_of(module: nn.Module) -> torch.device:
    for t in [*module.parameters(), *module.buffers()]:
        return t.device
    return torch.device("cpu")


def load_balance_loss(probs: torch.Tensor, chosen: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Switch/GShard balance loss ``E * sum_e f_e * P_e``.

    ``probs`` ``[N, E]`` are the router probabilities, ``chosen`` ``[N, k]`` the
    experts picked per token; ``f_e`` is the fraction of the N*k picks that went
    to expert e and ``P_e`` the mean probability of e. It is 1 when routing is
    balanced (or the router uniform) and up to E when every token goes to one
    expert with certainty. Gradient flows through ``P`` only.
    """
    counts = torch.bincount(chosen.reshape(-1), minlength=num_experts).to(probs.dtype)
    return num_experts * (counts / chosen.numel() * probs.mean(dim=0)).sum()


class MoPELinear(nn.Module):
    """A frozen linear plus routed, nested-rank LoRA experts.

    ``y = base(x) + ((drop(x) @ A^T) * m) @ B^T`` where ``m`` ``[tokens, slots*b]``
    holds each token's gate for each expert repeated over that expert's first
    ``b`` rank slots, times ``alpha / b``. Gates are the softmax router
    probabilities of the top-k experts, renormalised over the k when k > 1;
    with k = 1 the chosen probability is kept as is, so the task loss still
    reaches the router. After each training forward ``balance_loss`` and
    ``z_loss`` hold this layer's auxiliary losses (``None`` in eval); ``usage``
    counts the tokens routed to each expert (buffer, not saved).
    """

    def __init__(self, base: nn.Module, cfg: MoPEConfig) -> None:
        super().__init__()
        if not 1 <= cfg.top_k <= cfg.num_experts:
            raise ValueError(f"top_k must be in 1..num_experts={cfg.num_experts}, got {cfg.top_k}")
        if not 1 <= cfg.min_rank <= cfg.r_max:
            raise ValueError(f"need 1 <= min_rank <= r_max, got {cfg.min_rank}, {cfg.r_max}")
        self.base = base
        base.requires_grad_(False)
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.num_experts = cfg.num_experts
        self.top_k = cfg.top_k
        self.r_max = cfg.r_max
        self.alpha = cfg.alpha
        self.router_noise = cfg.router_noise
        self.shared_expert = cfg.shared_expert
        self.rank: int | None = None
        slots = cfg.num_experts + int(cfg.shared_expert)
        device = _device_of(base)
        # The shared expert is the last block of rank slots, with a gate of 1.
        self.lora_A = nn.Parameter(torch.empty(slots * cfg.r_max, self.in_features, device=device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, slots * cfg.r_max, device=device))
        # fan_in is in_features for the stack as for each expert: same init as peft's LoRA A.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.router = nn.Linear(self.in_features, cfg.num_experts, bias=False, device=device) if cfg.num_experts > 1 else None
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.register_buffer("usage", torch.zeros(cfg.num_experts, dtype=torch.int64, device=device), persistent=False)
        self.balance_loss: torch.Tensor | None = None
        self.z_loss: torch.Tensor | None = None

    def _route(self, h: torch.Tensor) -> torch.Tensor:
        """Dense gates ``[N, E]``: zero except each token's top-k experts."""
        logits = clean = self.router(h).float()
        if self.training and self.router_noise > 0:
            logits = logits + torch.randn_like(logits) * self.router_noise
        probs = logits.softmax(dim=-1)
        top, chosen = probs.topk(self.top_k, dim=-1)
        if self.top_k > 1:
            top = top / top.sum(dim=-1, keepdim=True)
        if self.training:
            self.balance_loss = load_balance_loss(probs, chosen, self.num_experts)
            self.z_loss = torch.logsumexp(clean, dim=-1).square().mean()
        else:
            self.balance_loss = self.z_loss = None
        with torch.no_grad():
            self.usage += torch.bincount(chosen.reshape(-1), minlength=self.num_experts)
        return torch.zeros_like(probs).scatter(1, chosen, top)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Frozen base output plus the routed experts' low-rank deltas."""
        y = self.base(x)
        h = x.reshape(-1, self.in_features)
        b = self.r_max if self.rank is None else self.rank
        scaling = self.alpha / b
        A, B = self.lora_A, self.lora_B
        slots = A.shape[0] // self.r_max
        if b < self.r_max:
            # Nested ranks: the first b slots of every expert.
            A = A.view(slots, self.r_max, -1)[:, :b].reshape(slots * b, -1)
            B = B.view(self.out_features, slots, self.r_max)[:, :, :b].reshape(self.out_features, slots * b)
        dtype = compute_dtype(x)
        z = F.linear(self.dropout(h), A.to(dtype))
        if self.router is None:
            z = z * scaling
        else:
            gates = self._route(h)
            if self.shared_expert:
                gates = torch.cat((gates, gates.new_ones(gates.shape[0], 1)), dim=1)
            z = z * (gates * scaling).repeat_interleave(b, dim=1).to(z.dtype)
        delta = F.linear(z, B.to(dtype))
        return y + delta.view(*x.shape[:-1], self.out_features).to(y.dtype)

    def extra_repr(self) -> str:
        return (
            f"experts={self.num_experts}, top_k={self.top_k}, r_max={self.r_max}, rank={self.rank}, "
            f"alpha={self.alpha}, shared_expert={self.shared_expert}"
        )


def _mopes(module: nn.Module):
    return [(name, m) for name, m in module.named_modules() if isinstance(m, MoPELinear)]


_BLOCK = re.compile(r"\blayers\.(\d+)\.")


def attach_mopes(module: nn.Module, cfg: MoPEConfig) -> list[str]:
    """Wrap every target linear of ``module`` in a :class:`MoPELinear`; returns the names wrapped.

    A layer is a target when the last part of its name is one of
    ``cfg.target_modules`` (short names mapped through :data:`TARGETS`) and it
    is an ``nn.Linear`` or :class:`QuantizedLinear` (in the top ``cfg.top_layers``
    blocks, when set). Quantize first, so the
    wrapped base is the quantized layer. Raises ``ValueError`` when nothing matches.
    """
    suffixes = {TARGETS.get(t, t) for t in cfg.target_modules}
    targets = [
        (name, child)
        for name, child in module.named_modules()
        if name.rpartition(".")[2] in suffixes and isinstance(child, (nn.Linear, QuantizedLinear))
    ]
    if cfg.top_layers is not None:
        if cfg.top_layers < 1:
            raise ValueError(f"top_layers must be >= 1 (got {cfg.top_layers})")
        blocks = {name: int(m.group(1)) for name, _ in targets if (m := _BLOCK.search(name))}
        if blocks:
            lowest = max(blocks.values()) + 1 - cfg.top_layers
            targets = [(name, child) for name, child in targets if blocks.get(name, -1) >= lowest]
    if not targets:
        raise ValueError(f"no linear named {sorted(suffixes)} found to attach experts to")
    for name, child in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attr, MoPELinear(child, cfg))
    return [name for name, _ in targets]


def adapter_parameters(module: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The trainable adapter parameters of ``module``: ``{"experts": [A, B, ...], "routers": [...]}``."""
    groups: dict[str, list[nn.Parameter]] = {"experts": [], "routers": []}
    for _, m in _mopes(module):
        groups["experts"] += [m.lora_A, m.lora_B]
        if m.router is not None:
            groups["routers"].append(m.router.weight)
    return groups


def router_losses(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(balance, z)`` of the last training forward, each averaged over the routed layers.

    Averaging keeps the loss weights independent of depth. Both are 0 when no
    layer is routed (plain LoRA) or the last forward ran in eval mode.
    """
    layers = [m for _, m in _mopes(module) if m.balance_loss is not None]
    if not layers:
        zero = torch.zeros((), device=_device_of(module))
        return zero, zero
    balance = torch.stack([m.balance_loss for m in layers]).mean()
    z = torch.stack([m.z_loss for m in layers]).mean()
    return balance, z


def set_rank(module: nn.Module, rank: int | None) -> None:
    """Run every MoPE layer in ``module`` at ``rank`` (``None``: each layer's ``r_max``)."""
    for name, m in _mopes(module):
        if rank is not None and not 1 <= rank <= m.r_max:
            raise ValueError(f"rank {rank} is outside 1..{m.r_max} for {name}")
        m.rank = rank


def sample_rank(cfg: MoPEConfig, generator: torch.Generator | None = None) -> int:
    """The rank for one training step: uniform in [min_rank, r_max], or r_max when not dynamic."""
    if not cfg.dynamic_rank:
        return cfg.r_max
    return int(torch.randint(cfg.min_rank, cfg.r_max + 1, (1,), generator=generator).item())


def expert_usage(module: nn.Module) -> dict[str, list[int]]:
    """Tokens routed to each expert since the last reset, per routed layer name."""
    return {name: m.usage.tolist() for name, m in _mopes(module) if m.router is not None}


def reset_expert_usage(module: nn.Module) -> None:
    """Zero every layer's usage counters."""
    for _, m in _mopes(module):
        m.usage.zero_()
