"""A classification head on frozen image features: the fast path for the classes a run was trained on.

Ranking every label through the language model costs one LM forward per
image and label; a linear map on the tower's features costs nothing beside
the tower forward itself. The head is one form for both fitted kinds:
``z = (x - shift) / scale``, optionally made unit-length, then
``logits = z @ weight.T + bias``. Logistic regression uses standardisation
without normalising; class prototypes (SimpleShot's centred cosine) use the
mean as ``shift``, normalise, and take the prototypes / temperature as
``weight``. Fitting and files live in ``slava.train.class_head``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

FEATURES = ("pooled", "multi_depth")
"""What a head reads: the tower's top tokens mean-pooled, or ``SlavaModel.image_embedding`` (several depths)."""


def pooled_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """The ``pooled`` feature [B, D] of tower tokens [B, N, D] (the tokens training caches)."""
    return tokens.float().mean(dim=1)


def head_features(model, pixels: torch.Tensor, features: str) -> torch.Tensor:
    """The feature [B, D] a head of kind ``features`` reads, for model inputs [B,1,S,S] (one tower forward)."""
    return tower_head_features(model.tower, pixels, features)


def tower_head_features(tower, pixels: torch.Tensor, features: str) -> torch.Tensor:
    """``head_features`` from a vision tower itself (such as its inference copy, ``VisionTower.for_inference``)."""
    from slava.model.towers import multi_depth_embedding

    if features == "pooled":
        return pooled_tokens(tower(pixels))
    if features == "multi_depth":
        return multi_depth_embedding(tower, pixels).float()
    raise ValueError(f"unknown head features {features!r} (one of {', '.join(FEATURES)})")


class ClassHead(nn.Module):
    """Logits over ``labels`` from image features; see the module docstring for the form."""

    def __init__(self, labels: Sequence[str], features: str, shift: torch.Tensor, scale: torch.Tensor,
                 weight: torch.Tensor, bias: torch.Tensor, normalize: bool, kind: str, tags: bool = False):
        super().__init__()
        self.tags = tags
        """Whether the run's image prompts carry this head's top class as their tag line (``HeadConfig.tags``)."""
        if features not in FEATURES:
            raise ValueError(f"unknown head features {features!r} (one of {', '.join(FEATURES)})")
        dim = weight.shape[1]
        if weight.shape[0] != len(labels) or bias.shape != (len(labels),) or shift.shape != (dim,) or scale.shape != (dim,):
            raise ValueError(f"head tensors do not fit {len(labels)} labels × {dim} features")
        self.labels, self.features, self.normalize, self.kind = list(labels), features, normalize, kind
        for name, t in (("shift", shift), ("scale", scale), ("weight", weight), ("bias", bias)):
            self.register_buffer(name, t.detach().float().contiguous())

    @property
    def dim(self) -> int:
        """Feature width the head reads."""
        return self.weight.shape[1]

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """Logits [B, C] of features [B, D]."""
        z = (feats.float() - self.shift) / self.scale
        if self.normalize:
            z = F.normalize(z, dim=-1)
        return z @ self.weight.T + self.bias

    def probs(self, feats: torch.Tensor, labels: Sequence[str] | None = None) -> torch.Tensor:
        """Probabilities [B, len(labels)] over ``labels`` (a subset of the head's, in that order; all when None).

        A subset's probabilities are the head's renormalised over it: the
        softmax of the logits of just those classes.
        """
        logits = self(feats)
        if labels is not None:
            logits = logits[:, [self.labels.index(label) for label in labels]]
        return F.softmax(logits, dim=-1)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The head's tensors by name (what its file holds)."""
        return {"shift": self.shift, "scale": self.scale, "weight": self.weight, "bias": self.bias}


def image_tags(head: ClassHead, feats: torch.Tensor) -> list[str]:
    """The tag line text of each image: the readable name of the head's top class for features [B, D]."""
    from slava.data.taxonomy import class_name

    return [class_name(head.labels[k]) for k in head(feats).argmax(dim=1).tolist()]
