"""Bad records are skipped and counted, never a crash; batches pad right with masked labels."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from slava.data.chat import IGNORE_INDEX
from slava.model.tokenizer import train_tokenizer
from slava.model.pixels import to_model_pixels
from slava.train.dataset import ImageStore, build_examples, collate, pack_by_image, split_records

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


def test_packing_puts_an_images_answers_in_one_conversation_with_the_image_once(tokenizer):
    ctx = "Measured: pixel 2 nm (file); 12 particles"
    recs = [record(f"a-{k}", "a.png", "particles", "vqa", f"{ctx}\nQuestion {k}?", f"Answer {k}.") for k in range(5)]
    recs.append(record("b-0", "b.png", "fibres", "caption", f"{ctx}\nDescribe it.", "Fibres."))
    assert pack_by_image(recs, 1) == recs
    packed = pack_by_image(recs, 4)
    assert [len(p["conversations"]) for p in packed] == [8, 2, 2]
    first = packed[0]["conversations"]
    humans, answers = first[0::2], first[1::2]
    assert humans[0]["value"].startswith("<image>\n" + ctx) and [a["from"] for a in answers] == ["gpt"] * 4
    assert all("<image>" not in h["value"] and "Measured:" not in h["value"] for h in humans[1:])
    # Every record's question and answer lands in exactly one conversation, still paired.
    pairs = [(h["value"].split("\n")[-1], a["value"]) for p in packed for h, a in
             zip(p["conversations"][0::2], p["conversations"][1::2])]
    assert sorted(pairs) == sorted((r["conversations"][0]["value"].split("\n")[-1], r["conversations"][1]["value"])
                                   for r in recs)
    # Order inside an image comes from the record ids, not from the file's order.
    assert {p["id"] for p in pack_by_image(list(reversed(recs)), 4)} == {p["id"] for p in packed}
    assert packed[0]["id"].count("+") == 3
    examples, _ = build_examples(packed[:1], Path("."), tokenizer, num_image_tokens=3, max_len=10_000, images=None)
    assert examples[0].ids.count(tokenizer.image_id) == 3
    assert sum(1 for label in examples[0].labels if label == tokenizer.eos_id) == 4  # four answers, each closed


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
