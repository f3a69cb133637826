"""Bad records are skipped and counted, never a crash; batches pad right with masked labels."""

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from slava.data.chat import IGNORE_INDEX
from slava.model.tokenizer import train_tokenizer
from slava.model.pixels import to_model_pixels
from slava.train.dataset import ImageStore, build_examples, collate, split_records

from test_train_fixtures import draw, record


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(["An SEM image of particles on a dark substrate. Which class is this?"] * 20, 300)


def test_bad_records_are_counted_and_logged_once(tmp_path, tokenizer, caplog):
    Image.fromarray(draw("particles", 0)).save(tmp_path / "good.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    records = [
        record("ok", "good.png", "particles", "caption", "Describe it.", "Particles."),
        record("missing", "nowhere.png", "particles", "caption", "Describe it.", "Particles."),
        record("corrupt", "corrupt.png", "particles", "caption", "Describe it.", "Particles."),
        record("empty", "good.png", "particles", "caption", "Describe it.", "   "),
        record("long", "good.png", "particles", "caption", "Describe it.", "particles " * 400),
    ]
    store = ImageStore(32)
    store.preload([str(tmp_path / r["image"]) for r in records], workers=2)
    with caplog.at_level(logging.WARNING, logger="slava.train"):
        examples, skipped = build_examples(records, tmp_path, tokenizer, 4, max_len=300, images=store)
    assert [e.record_id for e in examples] == ["ok"]
    assert skipped.counts == {
        "missing image": 1, "unreadable image": 1, "empty answer": 1, "longer than max_len 300": 1,
    }
    warnings = [r for r in caplog.records if "skipped" in r.message]
    assert len(warnings) == 1 and "4 records" in warnings[0].message and "long" in warnings[0].message
    assert store.get(examples[0].image).shape == (1, 32, 32)


def test_training_survives_bad_lines_and_reports_them(tmp_path):
    from slava.train.recipe import load_recipe
    from slava.train.trainer import train

    from test_train_fixtures import RECIPES, make_dataset

    data = make_dataset(tmp_path / "d", n_images=6, val_every=0)
    lines = data.read_text().splitlines()
    extra = record("gone", "images/missing.png", "fibres", "caption", "Describe it.", "Fibres.")
    empty = record("blank", "images/000.png", "fibres", "vqa", "Anything?", "")
    data.write_text("\n".join(lines + [json.dumps(extra), json.dumps(empty), "{not json"]) + "\n")
    recipe = load_recipe(RECIPES / "tiny.yaml", {"stages": [{"name": "base", "lr": {"lm": 1e-3}}, {"name": "align", "tasks": ["caption"], "batch_size": 2, "lr": {"projector": 1e-3}}]})
    summary = train(recipe, data, tmp_path / "run", max_steps=1, progress=False)
    assert summary["records"]["invalid_lines"] == 2  # the empty answer and the broken line
    assert summary["stages"]["align"]["skipped"] == {"missing image": 1}
    assert summary["stages"]["align"]["examples"] == 6


def test_collate_pads_right_and_masks_labels(tokenizer):
    from slava.train.dataset import Example

    a = Example("a", None, [1, 5, 6, 7], [IGNORE_INDEX, IGNORE_INDEX, 6, 7])
    b = Example("b", None, [1, 5], [IGNORE_INDEX, 5])
    batch = collate([a, b], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 5, 6, 7], [1, 5, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"][1].tolist() == [IGNORE_INDEX, 5, IGNORE_INDEX, IGNORE_INDEX]
    assert set(batch) == {"input_ids", "attention_mask", "labels"}


def test_split_uses_meta_split_else_image_hash():
    recs = [record(str(i), f"{i % 5}.png", "particles", "caption", "q", "a", split) for i, split in
            enumerate(["train", "val", "test", "train", None])]
    train, val, n_test = split_records(recs, 0.5)
    assert [r["id"] for r in val] == ["1"] and n_test == 1 and len(train) == 3
    plain = [record(str(i), f"{i % 7}.png", "particles", "caption", "q", "a") for i in range(70)]
    train, val, _ = split_records(plain, 0.3)
    assert 0 < len(val) < 70 and not {r["image"] for r in train} & {r["image"] for r in val}


def test_resize_keeps_range():
    img = to_model_pixels(np.linspace(0, 1, 48 * 40, dtype=np.float32).reshape(40, 48), 32)
    assert img.shape == (1, 32, 32) and float(img.min()) >= 0 and float(img.max()) <= 1
    assert torch.all(img[:, -1] >= img[:, 0])


def test_tagging_rewrites_only_image_prompts_that_carry_a_context(tmp_path):
    from slava.train.dataset import tag_records

    ctx = "Measured: pixel 2 nm (file)"
    described = record("a-0", "a.png", "particles", "caption", f"{ctx}\nDescribe it.", "Round particles.")
    classified = record("a-1", "a.png", "particles", "classify", "Which class? particles, fibres", "particles")
    untagged = record("b-0", "b.png", "fibres", "caption", f"{ctx}\nDescribe it.", "Fibres.")
    out = tag_records([described, classified, untagged], {str((tmp_path / "a.png").resolve()): "particles"}, tmp_path)
    assert out[0]["conversations"][0]["value"] == f"<image>\nLooks like: particles\n{ctx}\nDescribe it."
    assert out[0]["conversations"][1:] == described["conversations"][1:]
    assert out[1] == classified and out[2] == untagged
