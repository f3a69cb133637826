"""Are the synthetic categories distinct but not trivial? HOG + texture features + logistic regression.

Prints test accuracy and the per-class confusion matrix; aim: well above
chance (0.10) but below 1.0. `python bench/bench_synth_classifier.py [N] [SIZE]`.
"""

from __future__ import annotations

import sys
import time

import numpy as np
from skimage.feature import graycomatrix, graycoprops, hog, local_binary_pattern
from skimage.transform import resize
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, confusion_matrix
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from slava.synth import CLASSES, generate
from slava.synth.params import image_seed


def features(img: np.ndarray, bar_y0: int) -> np.ndarray:
    """Translation-invariant texture features of the image region.

    HOG orientation histograms pooled over the image, multi-scale uniform LBP
    histograms, GLCM statistics, the radial power spectrum and the grey
    histogram: the classic texture descriptors, none tied to a position.
    """
    region = img[:bar_y0].astype(np.float32) / 255
    sq = resize(region, (128, 128), anti_aliasing=True)
    sq = (sq - sq.mean()) / (sq.std() + 1e-6)
    u8 = np.clip(sq * 40 + 128, 0, 255).astype(np.uint8)
    parts = []
    for scale in (1, 2):
        im = u8 if scale == 1 else (resize(u8, (64, 64), anti_aliasing=True) * 255).astype(np.uint8)
        hb = hog(im, orientations=12, pixels_per_cell=(8, 8), cells_per_block=(2, 2), feature_vector=False)
        parts.append(hb.mean(axis=(0, 1)).ravel())
        parts.append(hb.std(axis=(0, 1)).ravel())
        for p_, r in ((8, 1), (16, 3)):
            lbp = local_binary_pattern(im, p_, r, method="uniform")
            parts.append(np.bincount(lbp.astype(int).ravel(), minlength=p_ + 2)[: p_ + 2] / lbp.size)
    glcm = graycomatrix(u8 // 8, [1, 2, 4, 8, 16], [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4], levels=32, symmetric=True, normed=True)
    parts += [graycoprops(glcm, p).mean(axis=1) for p in ("contrast", "homogeneity", "energy", "correlation")]
    power = np.abs(np.fft.fftshift(np.fft.fft2(sq))) ** 2
    yy, xx = np.indices(power.shape) - 64
    rad = np.hypot(yy, xx).astype(int)
    radial = np.bincount(rad.ravel(), power.ravel())[:64] / np.maximum(np.bincount(rad.ravel())[:64], 1)
    parts.append(np.log1p(radial[1:64].reshape(-1, 7).mean(axis=1)))
    parts.append(np.histogram(region, bins=16, range=(0, 1))[0] / region.size)
    parts.append([region.mean(), region.std()])
    return np.concatenate([np.ravel(p) for p in parts])


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 256
    t = time.perf_counter()
    X, y = [], []
    for i in range(n):
        cls = CLASSES[i % len(CLASSES)]
        img, truth = generate(cls, image_seed(0, i), size=size)
        X.append(features(img, truth["data_bar"][1]))
        y.append(i % len(CLASSES))
    X, y = np.array(X), np.array(y)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.5))
    clf.fit(Xtr, ytr)
    pred = clf.predict(Xte)
    print(f"{n} images at {size} px, {X.shape[1]} features, train {len(ytr)} / test {len(yte)}, {time.perf_counter() - t:.0f} s")
    print(f"accuracy {accuracy_score(yte, pred):.3f} (chance {1 / len(CLASSES):.2f})")
    cm = confusion_matrix(yte, pred, labels=range(len(CLASSES)))
    short = [c[:6] for c in CLASSES]
    print("true \\ pred   " + " ".join(f"{s:>6s}" for s in short) + "  recall")
    for i, c in enumerate(CLASSES):
        print(f"{c[:12]:12s}  " + " ".join(f"{v:6d}" for v in cm[i]) + f"  {cm[i, i] / max(cm[i].sum(), 1):.2f}")


if __name__ == "__main__":
    main()
