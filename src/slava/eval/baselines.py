"""Classification baselines trained on the same train split the student saw.

- ``TextureBaseline``: GLCM, LBP and HOG features (scikit-image) with a
  standardised logistic regression (scikit-learn). Seconds on 2 cores.
- ``EfficientNetBaseline``: the project's EfficientNet-Lite0 tower
  (ImageNet weights) with a linear head, fine-tuned on the labels. Only the
  top ``tune_blocks`` blocks and the head train; the frozen trunk below them
  runs once per image and its output is cached, so each epoch costs the top
  blocks alone (full fine-tuning took 5–9 s per batch of 32 on 2 busy cores).

Both take grey float images (data bar cropped, values in [0, 1]) and answer
``rank(images) -> [[label, ...] best first]``.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

_TEXTURE_SIDE = 128
_GLCM_LEVELS = 32
_GLCM_DISTANCES = (1, 2, 4, 8)
_GLCM_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
_GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation")
_LBP = ((8, 1), (16, 2), (16, 4))


def texture_features(image: np.ndarray) -> np.ndarray:
    """One feature vector: grey-level statistics, GLCM properties, LBP histograms and pooled HOG."""
    from skimage.feature import graycomatrix, graycoprops, hog, local_binary_pattern
    from skimage.transform import resize

    img = resize(np.asarray(image, np.float32), (_TEXTURE_SIDE, _TEXTURE_SIDE), anti_aliasing=True)
    img = np.clip(img, 0.0, 1.0)
    stats = [img.mean(), img.std(), *np.percentile(img, (5, 25, 50, 75, 95))]
    # Contrast is stretched before quantising so GLCM sees structure, not exposure.
    lo, hi = np.percentile(img, (1, 99))
    stretched = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
    q = np.minimum((stretched * _GLCM_LEVELS).astype(np.uint8), _GLCM_LEVELS - 1)
    glcm = graycomatrix(q, _GLCM_DISTANCES, _GLCM_ANGLES, levels=_GLCM_LEVELS, symmetric=True, normed=True)
    # Mean and range over angles: the first is rotation-invariant, the second measures anisotropy.
    props = []
    for name in _GLCM_PROPS:
        values = graycoprops(glcm, name)
        props += [*values.mean(axis=1), *np.ptp(values, axis=1)]
    lbps = []
    u8 = (stretched * 255).astype(np.uint8)
    for points, radius in _LBP:
        codes = local_binary_pattern(u8, points, radius, method="uniform")
        hist, _ = np.histogram(codes, bins=points + 2, range=(0, points + 2), density=True)
        lbps += list(hist)
    h = hog(stretched, orientations=9, pixels_per_cell=(16, 16), cells_per_block=(2, 2), feature_vector=False)
    # Pooled over positions: texture direction without position.
    hog_pooled = h.mean(axis=(0, 1)).ravel()
    return np.concatenate([stats, props, lbps, hog_pooled]).astype(np.float64)


class TextureBaseline:
    """GLCM + LBP + HOG features and logistic regression."""

    name = "texture_logreg"

    def __init__(self, c: float = 1.0, seed: int = 0):
        self.c, self.seed = c, seed
        self.train_s: float | None = None

    def fit(self, images: Sequence[np.ndarray], labels: Sequence[str]) -> "TextureBaseline":
        """Fit on grey images and their labels; records ``train_s``."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        start = time.perf_counter()
        x = np.stack([texture_features(im) for im in images])
        self.model = make_pipeline(StandardScaler(), LogisticRegression(C=self.c, max_iter=3000, random_state=self.seed))
        self.model.fit(x, list(labels))
        self.train_s = time.perf_counter() - start
        return self

    def rank(self, images: Sequence[np.ndarray]) -> list[list[str]]:
        """Labels of each image ordered by predicted probability, best first."""
        probs = self.model.predict_proba(np.stack([texture_features(im) for im in images]))
        classes = list(self.model.classes_)
        return [[classes[j] for j in np.argsort(-p, kind="stable")] for p in probs]


class EfficientNetBaseline:
    """EfficientNet-Lite0 (ImageNet weights) + linear head, top blocks fine-tuned on the labels.

    Runs under the same ``precision`` rule as the student (``slava.hardware``):
    bf16 autocast where it is native, fp32 elsewhere.
    """

    name = "efficientnet_lite0"

    def __init__(self, image_size: int = 128, tune_blocks: int = 2, epochs: int = 15, batch_size: int = 32,
                 lr: float = 1e-3, seed: int = 0, precision: str = "auto"):
        from slava.hardware import choose_precision

        self.image_size, self.tune_blocks, self.epochs = image_size, tune_blocks, epochs
        self.batch_size, self.lr, self.seed = batch_size, lr, seed
        self.precision = choose_precision(precision, "cpu")
        self.train_s: float | None = None

    def _build(self) -> None:
        import torch

        from slava.model.config import VisionConfig
        from slava.model.towers import build_tower

        self.tower = build_tower(VisionConfig(kind="efficientnet_lite0", image_size=self.image_size))
        self.tower.eval()
        net = self.tower.net
        # The tower's last "block" is the conv head + its norm; the ones before it are MBConv blocks.
        self._trunk_blocks = list(net._blocks)[: len(net._blocks) - (self.tune_blocks - 1)]
        self._top_blocks = list(net._blocks)[len(self._trunk_blocks):]
        for block in self._top_blocks:
            block.requires_grad_(True)
        net._conv_head.requires_grad_(True)
        net._bn1.requires_grad_(True)
        torch.manual_seed(self.seed)
        self.head = torch.nn.Linear(self.tower.dim, len(self.classes))

    def _pixels(self, images: Sequence[np.ndarray]):
        import torch
        import torch.nn.functional as F

        batch = [torch.from_numpy(np.ascontiguousarray(im, dtype=np.float32))[None, None] for im in images]
        return torch.cat([F.interpolate(b, size=(self.image_size, self.image_size), mode="bilinear",
                                        antialias=True, align_corners=False) for b in batch])

    def _trunk(self, images: Sequence[np.ndarray]):
        """Frozen trunk output for ``images`` (computed once, batched)."""
        import torch

        net = self.tower.net
        out = []
        with torch.no_grad(), self.precision.autocast("cpu"):
            for i in range(0, len(images), self.batch_size):
                x = self.tower.preprocess(self._pixels(images[i : i + self.batch_size]))
                x = net._swish(net._bn0(net._conv_stem(x)))
                for block in self._trunk_blocks:
                    x = block(x)
                out.append(x.float())
        return torch.cat(out)

    def _top(self, x):
        net = self.tower.net
        for block in self._top_blocks:
            x = block(x)
        x = net._swish(net._bn1(net._conv_head(x)))
        return self.head(x.mean(dim=(2, 3)).float())

    def fit(self, images: Sequence[np.ndarray], labels: Sequence[str]) -> "EfficientNetBaseline":
        """Fine-tune the top blocks and the head on grey images and their labels; records ``train_s``."""
        import torch
        import torch.nn.functional as F

        start = time.perf_counter()
        self.classes = sorted(set(labels))
        self._build()
        feats = self._trunk(images)
        target = torch.tensor([self.classes.index(label) for label in labels])
        params = [p for b in self._top_blocks for p in b.parameters()] + list(self.tower.net._conv_head.parameters())
        params += list(self.tower.net._bn1.parameters()) + list(self.head.parameters())
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=0.01)
        steps = self.epochs * -(-len(images) // self.batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr, total_steps=max(steps, 1), pct_start=0.1)
        gen = torch.Generator().manual_seed(self.seed)
        for _ in range(self.epochs):
            order = torch.randperm(len(images), generator=gen)
            for i in range(0, len(images), self.batch_size):
                idx = order[i : i + self.batch_size]
                with self.precision.autocast("cpu"):
                    loss = F.cross_entropy(self._top(feats[idx]), target[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        self.train_s = time.perf_counter() - start
        return self

    def rank(self, images: Sequence[np.ndarray]) -> list[list[str]]:
        """Labels of each image ordered by predicted probability, best first."""
        import torch

        with torch.no_grad(), self.precision.autocast("cpu"):
            logits = self._top(self._trunk(images)).float()
        return [[self.classes[j] for j in row] for row in torch.argsort(logits, dim=1, descending=True).tolist()]


BASELINES = {"texture": TextureBaseline, "efficientnet": EfficientNetBaseline}
"""The cheap baselines by the name ``slava eval --baselines`` takes."""


def make_baseline(name: str, seed: int = 0, precision: str = "auto"):
    """The baseline ``name``, seeded; the network baseline computes in ``precision`` (the texture one is numpy)."""
    if name == "efficientnet":
        return EfficientNetBaseline(seed=seed, precision=precision)
    return BASELINES[name](seed=seed)
