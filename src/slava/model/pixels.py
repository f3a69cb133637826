"""Micrograph pixels → the model's input tensor (the one resize training and inference share)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def to_model_pixels(pixels: np.ndarray, size: int) -> torch.Tensor:
    """A grey micrograph [H, W] in [0, 1] as the model input [1, size, size] (antialiased resize)."""
    t = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))[None, None]
    if t.shape[-2:] != (size, size):
        t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return t[0].clamp_(0.0, 1.0)
