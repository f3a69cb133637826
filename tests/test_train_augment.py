"""Degraded copies of training images: seeded per (image, copy), drawn per epoch, each artefact visible."""

import os
import subprocess

import numpy as np
import pytest
import torch

from slava.train.augment import AugmentConfig, choose_variants, degrade, variant_seed
from slava.model.pixels import to_model_pixels

from test_train_fixtures import RECIPES, cli, draw, steps


@pytest.fixture(scope="module")
def clean():
    return to_model_pixels(draw("particles", 3, size=96) / 255.0, 64)


def test_copies_are_seeded_by_image_and_variant(clean):
    seeds = [variant_seed(0, "a.png", v) for v in range(1, 9)]
    assert seeds == [variant_seed(0, "a.png", v) for v in range(1, 9)]
    assert len(set(seeds)) == 8 and variant_seed(0, "b.png", 1) != seeds[0] and variant_seed(1, "a.png", 1) != seeds[0]
    copies = [degrade(clean, s) for s in seeds]
    for s, c in zip(seeds, copies):
        assert c.shape == clean.shape and c.dtype == torch.float32
        assert float(c.min()) >= 0 and float(c.max()) <= 1
        assert torch.equal(c, degrade(clean, s))
        assert not torch.equal(c, clean)
    assert not torch.equal(copies[0], copies[1])
    assert torch.equal(clean, to_model_pixels(draw("particles", 3, size=96) / 255.0, 64)), "the clean image was modified"


def test_degradations_cover_noise_blur_and_contrast(clean):
    """Over many copies, some are much noisier, some much smoother and some much lower in contrast than the clean image."""
    def roughness(x):
        return float((x[0, 1:] - x[0, :-1]).abs().mean())

    copies = [degrade(clean, variant_seed(0, "a.png", v)) for v in range(1, 61)]
    rough, spread = roughness(clean), float(clean.std())
    assert any(roughness(c) > 2 * rough for c in copies)
    assert any(roughness(c) < 0.5 * rough for c in copies)
    assert any(float(c.std()) < 0.5 * spread for c in copies)


def test_variant_choice_follows_the_order_seed():
    on = AugmentConfig(enabled=True, variants=5, probability=0.4)
    a = choose_variants(on, 123, 4000)
    assert a == choose_variants(on, 123, 4000) and a != choose_variants(on, 124, 4000)
    assert set(a) == set(range(5))
    assert np.mean([v > 0 for v in a]) == pytest.approx(0.4, abs=0.03)
    assert choose_variants(AugmentConfig(), 123, 50) == [0] * 50
    assert choose_variants(AugmentConfig(enabled=True, variants=1), 123, 50) == [0] * 50


def test_feature_cache_trains_on_the_same_copies_as_the_tower(tmp_path, tiny_data):
    """Cached tower output per (image, copy) gives the run that encodes the chosen copy on every step."""

    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    runs = {}
    for cache in ("true", "false"):
        out = tmp_path / cache
        subprocess.run(cli("train", "--recipe", str(RECIPES / "tiny.yaml"), "--data", str(tiny_data), "--out", str(out),
                           "--set", "precision=fp32", "--set", "augment.enabled=true", "--set", "augment.probability=0.8",
                           "--set", f"cache_features={cache}", "--max-steps", "3", "--no-progress"),
                       env=env, check=True, capture_output=True)
        runs[cache] = steps(out / "metrics.jsonl")
    image_steps = [(a, b) for a, b in zip(runs["true"], runs["false"]) if a["stage"] != "base"]
    assert len(image_steps) == 6
    for a, b in image_steps:
        assert abs(a["ce"] - b["ce"]) < 1e-4, (a, b)
