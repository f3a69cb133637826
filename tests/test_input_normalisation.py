"""Input normalisation before the tower (`vision.stretch`, `vision.denoise`): what it undoes, and what it leaves alone."""

import numpy as np
import pytest
import torch

from slava import artefacts as A
from slava.model.config import VisionConfig
from slava.model.pixels import NOISE_THRESHOLD, denoise_noisy, noise_sigma, robust_stretch, tail_quantile, to_model_pixels
from slava.synth import generate


@pytest.fixture(scope="module")
def image():
    img, truth = generate("powders", 2, size=192)
    return img[: truth["data_bar"][1]].astype(np.float32) / 255.0


def batch(*images: np.ndarray) -> torch.Tensor:
    return torch.stack([to_model_pixels(x, 96) for x in images])


def test_stretch_gives_a_narrow_16_bit_frame_the_look_of_its_8_bit_export(image):
    narrow = A.apply(image, "bit_depth", 1.0, seed=5)
    before = (batch(narrow) - batch(image)).abs().mean()
    after = (robust_stretch(batch(narrow)) - robust_stretch(batch(image))).abs().mean()
    assert before > 0.1 and after < 0.02
    out = robust_stretch(batch(image, narrow))
    assert out.shape == (2, 1, 96, 96) and float(out.min()) == 0.0 and float(out.max()) == 1.0
    # A flat image is not blown up into noise.
    flat = torch.full((1, 1, 8, 8), 0.4)
    assert torch.all(robust_stretch(flat) == 0.0)


def test_denoise_smooths_only_images_noisier_than_training_ones(image):
    noisy = A.apply(image, "noise", 1.0, seed=2)
    px = batch(image, noisy)
    sigma = noise_sigma(px)
    assert sigma[0] < NOISE_THRESHOLD < sigma[1]
    out = denoise_noisy(px)
    assert torch.equal(out[0], px[0])
    assert noise_sigma(out[1:])[0] < 0.5 * sigma[1]


def test_the_tower_applies_what_its_config_asks(image):
    from slava.model.towers import build_tower

    plain = build_tower(VisionConfig(image_size=64))
    stretched = build_tower(VisionConfig(image_size=64, stretch=True))
    narrow = batch(A.apply(image, "bit_depth", 1.0, seed=5))
    with torch.no_grad():
        assert torch.equal(stretched.preprocess(narrow), plain.preprocess(robust_stretch(
            torch.nn.functional.interpolate(narrow, size=(64, 64), mode="bilinear", antialias=True, align_corners=False))))
        assert not torch.allclose(stretched(narrow), plain(narrow))


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 25600])
def test_tail_quantile_is_torch_quantile(n):
    rows = torch.rand(3, n)
    rows[0, : n // 2] = 0.25  # ties, as in flat regions and saturated pixels
    for q in (0.0, 0.005, 0.3, 0.5, 0.9, 0.995, 1.0):
        assert torch.allclose(tail_quantile(rows, q), torch.quantile(rows, q, dim=1), atol=1e-6), (n, q)
