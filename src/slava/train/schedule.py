"""Learning-rate schedule: linear warm-up, then cosine decay to zero."""

from __future__ import annotations

import math
from typing import Callable

import torch


def warmup_cosine(total_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    """Multiplier of the base learning rate before optimizer step ``s`` (0-based)."""
    warmup = math.ceil(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR whose state_dict holds only numbers (loads with ``weights_only=True``)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, warmup_ratio))
