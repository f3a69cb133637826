"""`slava adapt`: a trained run tuned to a folder of labelled images it never saw, as a new run."""

import json
import shutil

import pytest
import torch

from slava.assistant import Assistant
from slava.data.run_head import HEAD_FILE, load_head
from slava.train.adapt import ADAPT_C, AdaptError, adapt

NEW_CLASSES = ("powders", "tips")


@pytest.fixture(scope="module")
def lab_folder(tmp_path_factory):
    """A lab's folder: one sub-folder per class, classes the tiny run was never trained on."""
    from slava.synth import write_dataset

    root = tmp_path_factory.mktemp("lab") / "images"
    write_dataset(root, 24, size=64, seed=11, classes=NEW_CLASSES, workers=1, overwrite=True)
    for extra in ("ground_truth.jsonl", "summary.json", "contact_sheet.png"):
        (root / extra).unlink(missing_ok=True)  # as a lab's plain folder would be
    return root


def test_adapt_writes_a_new_run_that_classifies_the_labs_classes(tiny_run, lab_folder, tmp_path):
    before = sorted(p.name for p in tiny_run.iterdir())
    result = adapt(tiny_run, lab_folder, tmp_path / "adapted", augment=2, log=lambda *_: None, progress=False)
    out = tmp_path / "adapted"
    assert sorted(p.name for p in tiny_run.iterdir()) == before  # the old run is untouched
    assert result["labels"] == sorted(NEW_CLASSES) and result["degraded_copies"] == 2
    assert result["c"] in ADAPT_C
    assert load_head(out / HEAD_FILE).labels == sorted(NEW_CLASSES)
    records = [json.loads(line) for line in (out / "records.jsonl").open()]
    assert {r["meta"]["class"] for r in records} == set(NEW_CLASSES)
    assert {r["task"] for r in records} == {"caption", "classify"}
    assert result["split_images"]["train"] + result["split_images"]["val"] + result["split_images"]["test"] == 24
    held = result["held_out"]["test"]
    assert held["images"] == result["split_images"]["test"] > 0 and 0.0 <= held["macro_f1"] <= 1.0

    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["adapted"]["from_run"] == str(tiny_run)
    assert set(summary["labels"]["meta_classes"]) == set(NEW_CLASSES)
    assistant = Assistant.load(out, device="cpu")
    image = next((lab_folder / "tips").glob("*.png"))
    got = assistant.classify(image)
    assert got.method == "head" and got.label in NEW_CLASSES


def test_the_head_is_fitted_on_every_view_and_degraded_copy_of_a_training_image(tiny_run, lab_folder):
    from slava.io import load_micrograph
    from slava.model.pixels import to_model_pixels
    from slava.model.vlm import SlavaModel
    from slava.train.adapt import _features

    model = SlavaModel.load(tiny_run).eval()
    images = [str(p) for p in sorted((lab_folder / "tips").glob("*.png"))[:2]]
    feats = _features(model, images, 2, seed=0, progress=False, turned=True)
    assert len(feats) == 8 + 2 and all(f.shape == feats[0].shape for f in feats)
    px = torch.stack([to_model_pixels(load_micrograph(p).pixels, model.image_size) for p in images])
    with torch.no_grad():
        mirrored = model.image_embedding(torch.flip(px, dims=(-1,))).float()
        quarter = model.image_embedding(torch.rot90(px, 1, dims=(-2, -1))).float()
    assert torch.allclose(feats[1], mirrored, atol=1e-4) and torch.allclose(feats[2], quarter, atol=1e-4)
    assert not torch.allclose(feats[1], feats[0], atol=1e-3)
    assert not torch.allclose(feats[8], feats[0], atol=1e-3) and not torch.allclose(feats[8], feats[9], atol=1e-3)
    assert len(_features(model, images, 2, seed=0, progress=False)) == 3  # held-out images: one view


def test_adapt_refuses_what_it_cannot_use(tiny_run, lab_folder, tmp_path):
    one = tmp_path / "one"
    shutil.copytree(lab_folder / "tips", one / "tips")
    with pytest.raises(AdaptError, match="at least two class folders"):
        adapt(tiny_run, one, tmp_path / "a", log=lambda *_: None, progress=False)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(AdaptError, match="not empty"):
        adapt(tiny_run, lab_folder, busy, log=lambda *_: None, progress=False)
    assert (busy / "keep.txt").read_text() == "mine"
    with pytest.raises(AdaptError, match="not a trained run"):
        adapt(tmp_path, lab_folder, tmp_path / "b", log=lambda *_: None, progress=False)
