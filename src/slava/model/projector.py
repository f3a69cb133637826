"""Modality projector: optional average pooling of the token grid, then a GELU MLP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Projector(nn.Module):
    """Tower tokens [B, g², D_v] → LM embeddings [B, ceil(g/pool)², D_lm]."""

    def __init__(self, in_dim: int, out_dim: int, grid: int, hidden: int | None = None, pool: int = 1):
        super().__init__()
        self.grid, self.pool = grid, pool
        hidden = hidden or out_dim
        self.fc1 = nn.Linear(in_dim, hidden)
        self.fc2 = nn.Linear(hidden, out_dim)

    @property
    def num_tokens(self) -> int:
        """Image tokens per image after pooling."""
        side = -(-self.grid // self.pool)
        return side * side

    def pool_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Average-pool a [B, g², D] token grid by `pool` (edge windows average what they cover)."""
        if self.pool == 1:
            return tokens
        b, n, d = tokens.shape
        grid = tokens.transpose(1, 2).reshape(b, d, self.grid, self.grid)
        grid = F.avg_pool2d(grid, self.pool, ceil_mode=True)
        return grid.flatten(2).transpose(1, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Project (pooled) tower tokens into the LM's embedding space."""
        return self.fc2(F.gelu(self.fc1(self.pool_tokens(tokens))))
