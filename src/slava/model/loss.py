"""The next-token loss every caller shares: the model's forward, training steps, validation, benches."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from slava.data.chat import IGNORE_INDEX


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of ``logits`` [B, T, V] predicting ``labels`` [B, T] shifted by one, in fp32.

    Positions labelled ``IGNORE_INDEX`` (prompt, image and padding tokens) are
    left out; ``reduction="sum"`` lets a caller divide by its own token count
    (the global one, under gradient accumulation and DDP).
    """
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX,
                           reduction=reduction)
