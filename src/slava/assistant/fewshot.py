"""Few-shot support sets: labelled example images, loaded and cut to k per class.

A support set is a folder in ImageFolder layout (``<dir>/<label>/*.png``) or
a mapping ``{label: [images]}``. Prototype classification compares a query's
pooled tower embedding with each class's mean embedding; in-context
classification shows the support images as earlier turns of the chat.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from slava.assistant.images import ImageInput, to_micrograph
from slava.errors import SlavaError
from slava.io import Micrograph

PROTOTYPE_TEMPERATURE = 0.1
"""Softmax temperature over centred cosine similarities."""


class SupportError(SlavaError):
    """A support set that cannot be used (missing folder, a class without images)."""


def load_support(
    support: str | os.PathLike | Mapping[str, Sequence[ImageInput]],
    labels: Sequence[str] | None = None,
    shots: int | None = None,
) -> dict[str, list[Micrograph]]:
    """``{label: [Micrograph]}`` with at most ``shots`` images per class (the first by file name).

    With ``labels`` only those classes are kept and each must have images;
    otherwise every class of the support set is used.
    """
    if shots is not None and shots < 1:
        raise SupportError(f"shots must be at least 1, got {shots}")
    if isinstance(support, Mapping):
        listed = {str(k): list(v) for k, v in support.items()}
    else:
        from slava.data.manifest import read_manifest

        root = Path(support)
        if not root.is_dir():
            raise SupportError(f"{root}: the support set must be a folder of <label>/<image> files")
        listed = {}
        for entry in read_manifest(root).entries:
            if entry.label is not None:
                listed.setdefault(entry.label, []).append(entry.path)
    wanted = list(labels) if labels else sorted(listed)
    missing = [label for label in wanted if not listed.get(label)]
    if missing:
        raise SupportError(f"the support set has no images for {', '.join(missing)} (it has {', '.join(sorted(listed)) or 'none'})")
    return {label: [to_micrograph(im) for im in listed[label][:shots]] for label in wanted}


def prototypes(embeddings: dict[str, torch.Tensor]) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Class order, unit-length class prototypes [C, D] and the support centre [1, D].

    Embeddings are centred on the mean of the whole support set before they are
    normalised ("CL2N", as in SimpleShot): what all micrographs share then no
    longer dominates the cosine.
    """
    labels = list(embeddings)
    centre = torch.cat([embeddings[label].float() for label in labels]).mean(dim=0, keepdim=True)
    protos = torch.stack([F.normalize(embeddings[label].float() - centre, dim=-1).mean(dim=0) for label in labels])
    return labels, F.normalize(protos, dim=-1), centre


def prototype_probs(
    query: torch.Tensor, protos: torch.Tensor, centre: torch.Tensor, temperature: float = PROTOTYPE_TEMPERATURE
) -> torch.Tensor:
    """Class probabilities [B, C] of query embeddings [B, D]: softmax of centred cosine similarity / temperature."""
    return F.softmax(F.normalize(query.float() - centre, dim=-1) @ protos.T / temperature, dim=-1)
