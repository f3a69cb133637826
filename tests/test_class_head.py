"""The classification head: fitted by training, used for trained labels, LM scoring for the rest, files checked."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from slava.assistant import Assistant, AssistantError
from slava.assistant.screen import screen
from slava.data.run_head import HEAD_FILE, HeadError, load_head, save_head
from slava.train.class_head import HeadConfig, HeadFitError, fit_head, fit_head_choosing_c, head_macro_f1

from tiny_run import TINY_CLASSES, tiny_images


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """Fresh synthetic images of the tiny run's classes (another seed): images the run never trained on."""
    from slava.synth import write_dataset

    root = write_dataset(tmp_path_factory.mktemp("held_out"), 12, size=64, seed=7, classes=TINY_CLASSES, workers=1,
                         overwrite=True)
    return {c: sorted((root / c).glob("*.png")) for c in TINY_CLASSES}


def copy_run(run, dest):
    """The files a run directory needs for inference, without its head."""
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("checkpoints", "stages", "*.png", HEAD_FILE))
    return dest


def test_training_writes_a_head_for_the_trained_classes(tiny_run):
    summary = json.loads((tiny_run / "train_summary.json").read_text())["classifier"]
    assert summary["labels"] == sorted(TINY_CLASSES) and summary["file"] == HEAD_FILE
    records = [json.loads(line) for line in (tiny_run.parent / "records.jsonl").open()]
    train = {r["image"] for r in records if r["meta"].get("split") not in ("val", "test")}
    assert summary["train_images"] == len(train) > 0
    head = load_head(tiny_run / HEAD_FILE)
    assert head.labels == sorted(TINY_CLASSES) and (head.kind, head.features) == (summary["kind"], summary["features"])


def test_head_keeps_what_lm_scoring_gets_right_on_held_out_images(assistant, held_out):
    """The fast path must rank like the LM it replaces where the LM is right, and be no worse against the truth.

    The tiny run's LM is too weak to agree with (it ranks one class first for
    almost every image), so full top-1 agreement is checked on the demo run below.
    """
    images = [p for c in TINY_CLASSES for p in held_out[c]]
    truth = [c for c in TINY_CLASSES for _ in held_out[c]]
    head = assistant.classify_batch(images, method="head")
    lm = assistant.classify_batch(images, method="lm")
    assert {r.method for r in head} == {"head"} and {r.method for r in lm} == {"lm"}
    lm_right = [i for i, (r, t) in enumerate(zip(lm, truth)) if r.label == t]
    head_right = sum(r.label == t for r, t in zip(head, truth))
    assert sum(head[i].label == truth[i] for i in lm_right) >= len(lm_right) - 1
    assert head_right >= len(lm_right) and head_right >= 0.75 * len(images)
    for r in head:
        assert sum(p for _, p in r.ranked) == pytest.approx(1.0, abs=1e-5) and sorted(x for x, _ in r.ranked) == sorted(TINY_CLASSES)


def test_auto_uses_the_head_only_when_it_knows_every_label(assistant, held_out):
    image = held_out["fibres"][0]
    default = assistant.classify(image)
    assert default.method == "head" and default.to_dict()["method"] == "head" and default.mode == "zero_shot"
    subset = assistant.classify(image, labels=["particles", "fibres"])
    full = dict(default.ranked)
    # A subset is the head's probabilities renormalised over it.
    norm = full["particles"] + full["fibres"]
    assert subset.method == "head"
    assert dict(subset.ranked) == pytest.approx({"particles": full["particles"] / norm, "fibres": full["fibres"] / norm},
                                                abs=1e-5)
    # One label the run never saw: the whole set is LM-scored, on one scale.
    mixed = assistant.classify(image, labels=["particles", "nanowires"])
    unseen = assistant.classify(image, labels=["grain", "crack"])
    assert mixed.method == "lm" and unseen.method == "lm"
    with pytest.raises(AssistantError, match="not trained on nanowires"):
        assistant.classify(image, labels=["particles", "nanowires"], method="head")
    with pytest.raises(AssistantError, match="unknown classification method"):
        assistant.classify(image, method="fast")


def test_a_run_without_a_head_falls_back_to_lm_scoring(tiny_run, assistant, held_out, tmp_path):
    old = Assistant.load(copy_run(tiny_run, tmp_path / "old_run"), device="cpu", precision="fp32")  # as the fixture
    assert old.head is None
    image = held_out["particles"][0]
    result = old.classify(image)
    assert result.method == "lm"
    assert dict(result.ranked) == pytest.approx(dict(assistant.classify(image, method="lm").ranked), abs=1e-5)
    with pytest.raises(AssistantError, match="no classification head"):
        old.classify(image, method="head")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_shape"])
def test_a_corrupt_head_file_is_a_clear_error(tiny_run, tmp_path, damage):
    run = copy_run(tiny_run, tmp_path / "run")
    good = (tiny_run / HEAD_FILE).read_bytes()
    if damage == "garbage":
        (run / HEAD_FILE).write_bytes(b"not a safetensors file at all")
    elif damage == "truncated":
        (run / HEAD_FILE).write_bytes(good[: len(good) // 2])
    else:
        head = load_head(tiny_run / HEAD_FILE)
        head.labels = head.labels[:2]  # the tensors now claim three classes for two labels
        from safetensors.torch import save_file

        save_file(head.tensors(), str(run / HEAD_FILE), metadata={"format": "1", "labels": json.dumps(head.labels),
                                                                  "features": head.features, "normalize": "false"})
    with pytest.raises(HeadError, match=rf"{HEAD_FILE}: .*delete {HEAD_FILE} to classify by LM scoring") as err:
        Assistant.load(run, device="cpu")
    assert "\n" not in str(err.value)


def test_screen_rows_and_summary_name_the_method(tiny_run, held_out, tmp_path):
    folder = tmp_path / "in"
    for c in TINY_CLASSES:
        (folder / c).mkdir(parents=True)
        for p in held_out[c][:2]:
            shutil.copy(p, folder / c / p.name)
    import pandas as pd

    s = screen(folder, tiny_run, tmp_path / "head.csv", workers=0, with_measure=False, progress=False, html=False)
    assert s.method == "head" and set(pd.read_csv(tmp_path / "head.csv")["method"]) == {"head"}
    s = screen(folder, tiny_run, tmp_path / "lm.csv", labels=["grain", "crack"], workers=0, with_measure=False,
               progress=False, html=False)
    assert s.method == "lm" and set(pd.read_csv(tmp_path / "lm.csv")["method"]) == {"lm"}


def test_fit_save_load_round_trip(tmp_path):
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=gen) * 3
    y = [k for k in range(3) for _ in range(20)]
    x = centres[y] + torch.randn(60, 16, generator=gen)
    labels = [["a", "b", "c"][k] for k in y]
    for kind in ("logistic", "prototype"):
        head = fit_head(x, labels, HeadConfig(kind=kind))
        assert head.labels == ["a", "b", "c"] and head_macro_f1(head, x, labels) > 0.95
        save_head(head, tmp_path / f"{kind}.safetensors")
        back = load_head(tmp_path / f"{kind}.safetensors")
        assert (back.kind, back.normalize) == (kind, kind == "prototype")
        assert torch.allclose(back(x), head(x))
    # Two classes: sklearn's one-logit form must still give both columns.
    two = fit_head(x[:40], labels[:40], HeadConfig())
    assert two(x[:40]).shape == (40, 2) and head_macro_f1(two, x[:40], labels[:40]) > 0.95
    with pytest.raises(HeadFitError, match="at least two classes"):
        fit_head(x[:20], labels[:20], HeadConfig())


def _classes_along(signal_noise: float, n: int, gen: torch.Generator):
    """Three classes apart along x0 - x1 only, under a nuisance that moves x0 and x1 together."""
    y = [k for k in range(3) for _ in range(n)]
    shared = signal_noise * torch.randn(len(y), 1, generator=gen)
    x = torch.cat([torch.tensor([k - 1.0 for k in y])[:, None] + shared, shared], 1)
    return x + 0.1 * torch.randn(len(y), 2, generator=gen), [["a", "b", "c"][k] for k in y]


def test_the_l2_strength_is_the_one_best_on_the_val_split():
    grid = (1e-4, 0.01, 1.0, 100.0)
    # Under a correlated nuisance strong L2 keeps the class means' direction, which the nuisance
    # swamps, so the weakest L2 is best; with none, c 1 ties with it, and the tie goes to the stronger.
    for nuisance, best in ((3.0, 100.0), (0.0, 1.0)):
        gen = torch.Generator().manual_seed(1)
        (x, labels), val = _classes_along(nuisance, 20, gen), _classes_along(nuisance, 30, gen)
        scores = {c: head_macro_f1(fit_head(x, labels, HeadConfig(c=c)), *val) for c in grid}
        head, c = fit_head_choosing_c(x, labels, HeadConfig(kind="prototype"), grid, val)
        assert head.kind == "logistic" and c == best and scores[c] == max(scores.values())
        assert head_macro_f1(head, *val) == scores[c]
    assert scores[1.0] == scores[100.0]  # the tie the second case tests
    assert fit_head_choosing_c(x, labels, HeadConfig(), grid, None)[1] == min(grid)


def test_held_out_images_exist(held_out, tiny_run):
    """The held-out set really is new: none of its images is one the run trained on."""
    trained = {p.read_bytes() for ps in tiny_images(tiny_run).values() for p in ps}
    assert not any(p.read_bytes() in trained for ps in held_out.values() for p in ps)


def test_a_run_trained_with_tags_puts_its_heads_class_into_every_image_prompt(tiny_run, tmp_path):
    """head.tags: fitted before the first stage, saved as tagging, and its class written into the prompt at inference."""
    from slava.data.records import read_records
    from slava.train.recipe import recipe_from_dict
    from slava.train.trainer import train

    from tiny_run import TINY_RECIPE

    spec = json.loads(json.dumps(TINY_RECIPE))
    spec["head"] = {"tags": True}
    spec["stages"] = [{"name": "align", "max_steps": 1, "batch_size": 8, "tasks": ["caption"], "lr": {"projector": 1e-3}}]
    run = tmp_path / "tagged"
    summary = train(recipe_from_dict(spec), tiny_run.parent / "records.jsonl", run, progress=False)
    assert summary["classifier"]["tags"] is True and load_head(run / HEAD_FILE).tags

    assistant = Assistant.load(run, device="cpu")
    image = tiny_images(tiny_run)["fibres"][0]
    tag = assistant.tag(image)
    assert tag in {"particles", "fibres", "porous sponges"}
    prompts = []
    generate = assistant.model.generate
    assistant.model.generate = lambda pixels, ids, *a, **k: prompts.extend(ids) or generate(pixels, ids, *a, **k)
    assistant.caption(image, max_new_tokens=2)
    assistant.answer_many([(image, "What applications could this material have?")], max_new_tokens=2)
    assistant.ask(image, classify_question(), max_new_tokens=2)
    texts = [assistant.tokenizer.decode([t for t in p if t != assistant.tokenizer.image_id]) for p in prompts]
    assert all(f"Looks like: {tag}\nMeasured:" in t for t in texts[:2]), texts
    assert "Looks like" not in texts[2]  # a classification prompt is never answered by its tag
    records, _ = read_records(tiny_run.parent / "records.jsonl")
    assert not any("Looks like" in r["conversations"][0]["value"] for r in records)  # the data on disk is untouched


def classify_question() -> str:
    from slava.teacher.prompts import classify_prompt

    return classify_prompt(list(TINY_CLASSES))


@pytest.mark.parametrize("head, copies", [({"augment": 2}, {"degraded_copies": 2, "views": 1}),
                                          ({"turns": True}, {"degraded_copies": 0, "views": 8})])
def test_head_augment_and_turns_fit_the_head_on_more_copies_of_each_image(tiny_run, tmp_path, head, copies):
    """head.augment and head.turns: the head sees each training image's degraded copies, or its turned and
    mirrored views, besides the clean upright one."""
    from slava.train.recipe import recipe_from_dict
    from slava.train.trainer import train

    from tiny_run import TINY_RECIPE

    spec = json.loads(json.dumps(TINY_RECIPE))
    spec["head"] = head
    spec["stages"] = [{"name": "align", "max_steps": 1, "batch_size": 8, "tasks": ["caption"], "lr": {"projector": 1e-3}}]
    summary = train(recipe_from_dict(spec), tiny_run.parent / "records.jsonl", tmp_path / "run", progress=False)
    assert {k: summary["classifier"][k] for k in copies} == copies
    # The tower is frozen in both runs, so only the extra copies can make the heads differ.
    clean, augmented = load_head(tiny_run / HEAD_FILE), load_head(tmp_path / "run" / HEAD_FILE)
    assert clean.labels == augmented.labels and clean.weight.shape == augmented.weight.shape
    assert not torch.allclose(clean.weight, augmented.weight, atol=1e-3)
    with pytest.raises(Exception, match="head.augment: must be at least 0"):
        recipe_from_dict({**spec, "head": {"augment": -1}})
