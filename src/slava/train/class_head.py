"""Fitting a run's classification head (``slava.model.class_head``) on frozen image features.

Training fits the head once at the end of a run on the clean training images
of the classes it saw, checks it on the held-out ones, and writes it with
``slava.data.run_head.save_head``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, Sequence

import torch
import torch.nn.functional as F

from slava.errors import SlavaError
from slava.model.class_head import ClassHead

PROTOTYPE_TEMPERATURE = 0.1
"""Softmax temperature over centred cosine similarities (as few-shot prototypes use)."""


class HeadFitError(SlavaError):
    """A classification head that cannot be fitted (fewer than two classes)."""


@dataclass
class HeadConfig:
    """The head fitted at the end of training, or before it with ``tags`` (``Recipe.head``)."""

    enabled: bool = True
    """Fit a head when the training records name at least two classes (``meta.class``)."""
    kind: Literal["logistic", "prototype"] = "logistic"
    """Standardised logistic regression, or centred-cosine class prototypes."""
    features: Literal["pooled", "multi_depth"] = "multi_depth"
    """The multi-depth few-shot embedding (``SlavaModel.image_embedding``), or the tower's top tokens
    mean-pooled (cached during training). Held-out macro-F1 of logistic regression on the demo set,
    AMD EPYC, AVX2, 2 cores, 2026-12-01 (``bench/bench_class_head.py``): 0.975 multi-depth, 0.937 pooled."""
    c: float = 1.0
    """Inverse L2 strength of the logistic regression."""
    augment: int = 0
    """Degraded copies of each training image (``slava.train.augment.degrade``, the copies training
    itself would see) the head is fitted on besides the clean one: what keeps it standing when a
    real instrument's noise, focus or contrast differ from the training set's (``bench/bench_robustness.py``)."""
    turns: bool = False
    """Fit the head on each clean training image's eight turned and mirrored views
    (``towers.dihedral_view``), not the upright one alone: a micrograph's class does not turn with
    the stage, an ImageNet tower's features do. The head still reads one view, so screening costs
    the same. ``bench/bench_robustness.py`` with one degraded copy at c 0.1 (AMD EPYC, AVX2,
    2026-12-02): selection set clean 0.939 → 0.950, worst moderate artefact 0.794 → 0.825, mean
    0.853 → 0.863, but strong noise 0.481 → 0.435; demo test clean 0.950 → 0.961. On NEU-DET
    through ``slava adapt``, which always turns, test 0.970 → 1.000, and quarter-turned test
    images 0.56 → 1.00."""
    tags: bool = False
    """Fit the head before the first stage and put its top class into every image prompt as a tag line
    ("Looks like: particles", ``slava.data.chat.user_turn``), in training and at inference alike, as
    Tag2Text guides its captioner with recognised tags. A projector aligned in a few CPU-minutes
    barely tells classes apart, while the head reads them from the tower's features at 0.97
    macro-F1; the tag hands that to the LM as words it already reads. Needs a tower no stage trains."""


def fit_head(feats: torch.Tensor, labels: Sequence[str], cfg: HeadConfig, seed: int = 0) -> ClassHead:
    """A head fitted on features [N, D] with one label each; classes are the sorted distinct labels."""
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise HeadFitError(f"a classification head needs at least two classes, got {classes}")
    x = feats.detach().float().cpu()
    y = torch.tensor([classes.index(label) for label in labels])
    if cfg.kind == "prototype":
        centre = x.mean(dim=0)
        z = F.normalize(x - centre, dim=-1)
        protos = torch.stack([F.normalize(z[y == k].mean(dim=0), dim=0) for k in range(len(classes))])
        return ClassHead(classes, cfg.features, centre, torch.ones_like(centre), protos / PROTOTYPE_TEMPERATURE,
                         torch.zeros(len(classes)), normalize=True, kind="prototype", tags=cfg.tags)
    from sklearn.linear_model import LogisticRegression

    shift = x.mean(dim=0)
    # Constant features (a dead channel) would divide by zero; they carry nothing, so any scale does.
    scale = x.std(dim=0, unbiased=False).clamp_min(1e-6)
    fitted = LogisticRegression(C=cfg.c, max_iter=2000, random_state=seed).fit(((x - shift) / scale).numpy(), y.numpy())
    weight = torch.from_numpy(fitted.coef_).float()
    bias = torch.from_numpy(fitted.intercept_).float()
    if len(classes) == 2:
        # sklearn's binary form is one logit for class 1; class 0's logit is then 0.
        weight, bias = torch.cat([torch.zeros_like(weight), weight]), torch.cat([torch.zeros_like(bias), bias])
    return ClassHead(classes, cfg.features, shift, scale, weight, bias, normalize=False, kind="logistic", tags=cfg.tags)


def fit_head_choosing_c(feats: torch.Tensor, labels: Sequence[str], cfg: HeadConfig, grid: Sequence[float],
                        val: tuple[torch.Tensor, Sequence[str]] | None, seed: int = 0) -> tuple[ClassHead, float]:
    """A logistic head fitted at each inverse L2 strength of ``grid`` and the one best on ``val`` (features and
    labels), with that strength; ties, and no ``val``, go to the smallest (strongest L2)."""
    best: tuple[float, ClassHead, float] | None = None
    for c in sorted(grid) if val is not None else [min(grid)]:
        head = fit_head(feats, labels, replace(cfg, kind="logistic", c=c), seed)
        score = head_macro_f1(head, *val) if val is not None else 0.0
        if best is None or score > best[0]:
            best = (score, head, c)
    return best[1], best[2]


def head_macro_f1(head: ClassHead, feats: torch.Tensor, labels: Sequence[str]) -> float:
    """Unweighted mean per-class F1 of the head's top-1 on features [N, D] with true ``labels``, over its classes."""
    from sklearn.metrics import f1_score

    pred = [head.labels[k] for k in head(feats).argmax(dim=1).tolist()]
    return float(f1_score(list(labels), pred, labels=head.labels, average="macro", zero_division=0))
