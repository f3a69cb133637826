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


def supervised_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where a next-token target exists: a mask [B, T-1] over positions 0..T-2, and those targets [N].

    The LM head need run only there: on a 49k-token vocabulary it is a fifth
    of a 135 M LM's forward, and answers are a minority of a prompt's tokens.
    """
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    return keep, targets[keep]


def answer_cross_entropy(hidden: torch.Tensor, head, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """``token_cross_entropy`` of ``head(hidden)`` [B, T, D], computing the head only on supervised positions.

    Equal to ``token_cross_entropy(head(hidden), labels)`` (the head is a
    per-position map), at a fraction of its cost.
    """
    keep, targets = supervised_positions(labels)
    logits = head(hidden[:, :-1][keep])
    return F.cross_entropy(logits.float(), targets, reduction=reduction)
