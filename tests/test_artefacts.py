"""Instrument artefacts (`slava.artefacts`): seeded, shape-keeping, each visible, and a rescale keeps the ground truth."""

import numpy as np
import pytest

from slava import artefacts as A
from slava.io import micrograph_from_array
from slava.measure import measure
from slava.synth import generate


@pytest.fixture(scope="module")
def particles():
    """A synthetic particle field (image region only, [0, 1]) with its pixel size and truth."""
    image, truth = generate("particles", 5, size=256)
    region = image[: truth["data_bar"][1]].astype(np.float32) / 255.0
    return region, truth


def roughness(x: np.ndarray) -> float:
    return float(np.abs(np.diff(x, axis=1)).mean())


@pytest.mark.parametrize("name", list(A.ARTEFACTS))
def test_each_artefact_is_seeded_keeps_the_shape_and_changes_the_image(particles, name):
    img, _ = particles
    a = A.apply(img, name, 0.8, seed=11)
    assert a.shape == img.shape and a.dtype == np.float32
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert np.array_equal(a, A.apply(img, name, 0.8, seed=11))
    assert not np.array_equal(a, A.apply(img, name, 0.8, seed=12))
    assert np.abs(a - img).mean() > 1e-3


def test_each_artefact_does_what_the_instrument_does(particles):
    img, _ = particles
    strong = {name: A.apply(img, name, 1.0, seed=3) for name in A.ARTEFACTS}
    assert roughness(strong["noise"]) > 3 * roughness(img)
    assert roughness(strong["defocus"]) < 0.6 * roughness(img)
    # A 16-bit detector filling at most 13 bits, read by its type's range, is flat: an eighth of the contrast.
    assert strong["bit_depth"].std() < 0.13 * img.std()
    # Charging adds bright signal, never removes it.
    assert strong["charging"].mean() > img.mean() + 0.02
    # Scan jitter and drift displace whole lines: a straight vertical edge comes out ragged and slanted.
    edge = np.where(np.arange(256) < 128, 0.2, 0.8)[None].repeat(256, 0)
    crossing = (A.apply(edge, "scan", 1.0, seed=3) < 0.5).sum(axis=1)
    assert np.abs(np.diff(crossing)).mean() > 0.5 and np.ptp(crossing) > 3
    # A JPEG re-save changes the pixels a little, not the picture.
    assert 0.001 < np.abs(strong["jpeg"] - img).mean() < 0.05


def test_bad_artefact_strength_and_severity_are_refused(particles):
    img, _ = particles
    with pytest.raises(A.ArtefactError, match="unknown artefact 'smudge'"):
        A.apply(img, "smudge", 0.5, 0)
    with pytest.raises(A.ArtefactError, match="strength must be in"):
        A.apply(img, "noise", 1.5, 0)
    with pytest.raises(A.ArtefactError, match="unknown severity 'mild'"):
        A.shifted(img, "noise", "mild", 0)
    assert np.array_equal(A.shifted(img, "noise", "strong", 4), A.apply(img, "noise", 1.0, 4))


@pytest.mark.parametrize("zoom", [0.6, 1.7])
def test_a_rescale_keeps_every_object_and_its_size_in_nm(zoom):
    image, truth, scene = generate("particles", 5, size=256, return_masks=True)
    labels, pixel = scene["labels"], truth["pixel_size_nm"]
    ids = [i for i in np.unique(labels) if i > 0]
    # The generator's own objects, each rescaled as the image is: all stay, each the same size in nm.
    for i in ids:
        out, new_pixel = A.rescale((labels == i).astype(np.float32), pixel, zoom)
        assert new_pixel == pytest.approx(pixel / zoom, rel=0.01)
        d_before = 2 * np.sqrt((labels == i).sum() / np.pi) * pixel
        d_after = 2 * np.sqrt(out.sum() / np.pi) * new_pixel
        assert d_after == pytest.approx(d_before, rel=0.05, abs=2 * pixel), i
    # The image measured before and after agrees, with the pixel size the rescale returned.
    img = image[: truth["data_bar"][1]].astype(np.float32) / 255.0
    before = measure(micrograph_from_array(img, pixel_size_nm=pixel, crop_data_bar=False)).particles
    out, new_pixel = A.rescale(img, pixel, zoom)
    assert out.shape == (round(img.shape[0] * zoom), round(img.shape[1] * zoom))
    after = measure(micrograph_from_array(out, pixel_size_nm=new_pixel, crop_data_bar=False)).particles
    assert after.mean_diameter == pytest.approx(before.mean_diameter, rel=0.15)
    assert abs(after.count - before.count) <= 0.25 * len(ids)
