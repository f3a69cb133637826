"""slava eval on a tiny real run: leakage refusal, few-shot path, shifted twins, baselines, report."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from tiny_run import TINY_CLASSES

from slava.eval import tasks as T
from slava.eval.data import load_eval_data


@pytest.fixture(scope="module")
def tiny(tiny_run):
    torch.set_num_threads(1)
    return tiny_run, tiny_run.parent / "images"


def test_leaked_classes_reads_train_summary(tmp_path):
    labels = {"meta_classes": {"particles": 3}, "class_names_in_answers": {"porous sponges": 2}}
    (tmp_path / "train_summary.json").write_text(json.dumps({"labels": labels}))
    leaked = T.leaked_classes(tmp_path, ["particles", "porous_sponges", "tips"])
    assert set(leaked) == {"particles", "porous_sponges"}
    with pytest.raises(T.LeakageError, match="porous_sponges"):
        T.refuse_leaks(tmp_path, ["tips", "porous_sponges"])
    T.refuse_leaks(tmp_path, ["tips", "biological"])
    with pytest.raises(T.LeakageError, match="missing"):
        T.leaked_classes(tmp_path / "nowhere", ["tips"])


def test_zero_shot_on_a_trained_class_is_refused(tiny, tmp_path, capsys):
    from slava.cli import main

    run, images = tiny
    code = main(["eval", "--run", str(run), "--data", str(images), "--out", str(tmp_path / "r"),
                 "--zero-shot", "particles,fibres"])
    err = capsys.readouterr().err
    assert code == 1 and "zero-shot evaluation refused" in err and "particles" in err
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_batched_prototypes_match_assistant_classify(tiny):
    from slava.assistant import Assistant

    run, images = tiny
    assistant = Assistant.load(run)
    data = load_eval_data(images)
    query = data.split("test")[:2]
    support = data.split("train")
    res = T.few_shot_task(assistant, query, support, list(TINY_CLASSES), [3], in_context_limit=0)
    pool = {c: [it.image for it in support if it.label == c][:3] for c in TINY_CLASSES}
    direct = [assistant.classify(it.image, list(TINY_CLASSES), support=pool, mode="prototype").label for it in query]
    truth = [it.label for it in query]
    assert res["prototype_3"]["top1"] == pytest.approx(np.mean([d == t for d, t in zip(direct, truth)]))


def test_shifted_twin_without_shift_is_the_original_image(tiny, tmp_path):
    from PIL import Image

    _, images = tiny
    data = load_eval_data(images)
    item = data.split("test")[0]
    twin = T.shifted_items([item], data.synth, None, tmp_path)[0]
    assert np.array_equal(np.asarray(Image.open(twin.image)), np.asarray(Image.open(item.image)))
    noisy = T.shifted_items([item], data.synth, "noise", tmp_path / "noise")[0]
    assert not np.array_equal(np.asarray(Image.open(noisy.image)), np.asarray(Image.open(item.image)))
    assert twin.label == item.label and twin.truth == item.truth


def test_shifted_twins_carry_their_calibration_even_finer_than_phys(tiny, tmp_path):
    """A zoomed twin's pixel can be finer than pHYs holds; its sidecar keeps reading it off the bar's OCR."""
    from PIL import Image

    from slava.io import load_micrograph

    _, images = tiny
    data = load_eval_data(images)
    twins = T.shifted_items(data.split("test"), data.synth, "scale", tmp_path)
    for twin in twins:
        sidecar = json.loads(Path(twin.image).with_suffix(".json").read_text())["pixel_size_nm"]
        Image.open(twin.image).save(twin.image)  # re-saved without pHYs, as a pixel too fine for it would be
        m = load_micrograph(twin.image, read_bar=False)
        assert m.pixel_size_source == "sidecar" and m.pixel_size_nm == pytest.approx(sidecar)


def test_baselines_learn_the_tiny_classes(tiny):
    from slava.eval.baselines import EfficientNetBaseline, TextureBaseline
    from slava.hardware import choose_precision
    from slava.eval.metrics import topk_accuracy
    from slava.io import load_micrograph

    _, images = tiny
    data = load_eval_data(images)
    train, test = data.split("train"), data.split("test")
    px = lambda items: [load_micrograph(it.image).pixels for it in items]  # noqa: E731
    truth = [it.label for it in test]
    texture = TextureBaseline().fit(px(train), [it.label for it in train]).rank(px(test))
    assert topk_accuracy(truth, texture, 1) > 0.6
    net = EfficientNetBaseline(image_size=64, epochs=3).fit(px(train), [it.label for it in train])
    assert net.precision == choose_precision("auto", "cpu")
    ranked = net.rank(px(test))
    assert all(sorted(r) == sorted(TINY_CLASSES) for r in ranked)
    assert net.train_s > 0


def test_small_end_to_end_eval_writes_report_and_metrics(tiny, tmp_path):
    from slava.eval.runner import evaluate

    run, images = tiny
    out = tmp_path / "report"
    m = evaluate(run, images, out, shots=[1], shifts=["noise"], baselines=["texture"], limit=6, text_limit=1,
                 precision="fp32", threads=1, log=lambda *_: None)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["precision"] == "fp32" and saved["threads"] == 1 and saved["precision_reason"].startswith("set explicitly")
    for key in ("classification", "few_shot", "text", "counting", "baselines", "robustness", "expert_load", "goals"):
        assert key in saved, key
    closed = m["classification"]["closed_set"]
    assert closed["n"] == 6 and sum(map(sum, closed["confusion"])) == 6
    assert 0 <= closed["macro_f1"] <= 1
    assert closed["top1"] == pytest.approx(sum(closed["confusion"][i][i] for i in range(3)) / 6)
    abl = m["classification"]["image_ablation"]
    assert abl["chance"] == pytest.approx(1 / 3) and 0 <= abl["blank"]["top1"] <= 1
    assert m["text"]["n"] >= 2 and set(m["text"]["per_task"]) == {"caption", "vqa"}
    assert 0 <= m["text"]["overall"]["meteor"] <= 1 and 0 <= m["text"]["overall"]["bleu4"] <= 100
    assert m["counting"]["particle_count"]["n"] + m["counting"]["particle_count"]["unanswered"] >= 1
    assert set(m["robustness"]["macro_f1"]) == {"clean", "noise"}
    html = (out / "report.html").read_text()
    for section in ("Precision <b>fp32</b> with 1 threads", "Captions and VQA", "Classification", "Image ablation", "Robustness", "Expert load", "data:image/png;base64"):
        assert section in html
    assert Path(out / "plots" / "confusion_student.png").is_file()


def test_artefact_copies_keep_calibration_and_truth_except_a_new_field(tiny):
    from slava.io import load_micrograph

    run, images = tiny
    items = load_eval_data(images).split("test")[:3]
    noisy = T.artefact_items(items, "noise", "strong", seed=0)
    again = T.artefact_items(items, "noise", "strong", seed=0)
    zoomed = T.artefact_items(items, "magnification", "moderate", seed=0)
    for it, n, a, z in zip(items, noisy, again, zoomed):
        clean = load_micrograph(it.image)
        assert n.image.pixel_size_nm == clean.pixel_size_nm and n.image.pixels.shape == clean.pixels.shape
        assert np.array_equal(n.image.pixels, a.image.pixels) and not np.array_equal(n.image.pixels, clean.pixels)
        assert n.truth == it.truth and n.label == it.label and z.truth == {}
    assert not np.array_equal(noisy[0].image.pixels, noisy[1].image.pixels[: noisy[0].image.pixels.shape[0]])


def test_eval_scores_each_artefact_at_each_severity_on_any_data(tiny, tmp_path):
    from slava.eval.runner import evaluate

    run, images = tiny
    out = tmp_path / "report"
    m = evaluate(run, images, out, tasks=["classify", "count"], shots=[], artefacts=["noise", "bit_depth"],
                 baselines=["texture"], limit=6, precision="fp32", threads=1, log=lambda *_: None)
    arte = m["artefacts"]
    assert arte["severities"] == ["moderate", "strong"] and set(arte["macro_f1"]) == {"noise", "bit_depth"}
    for name in arte["macro_f1"]:
        for severity in arte["severities"]:
            row = arte["macro_f1"][name][severity]
            assert set(row) == {"student", "texture"} and all(0 <= v <= 1 for v in row.values())
    assert arte["worst_strong"] == min(arte["macro_f1"][n]["strong"]["student"] for n in arte["macro_f1"])
    assert "moderate" in arte["count_mae"]["noise"]
    goals = {g["goal"]: g for g in m["goals"]}
    assert goals["macro-F1 under artefacts, strong (worst)"]["target"] == ">= 0.75"
    html = (out / "report.html").read_text()
    assert "Instrument artefacts" in html and (out / "plots" / "artefacts.png").is_file()
    with pytest.raises(Exception, match="unknown artefact"):
        evaluate(run, images, tmp_path / "bad", tasks=["classify"], artefacts=["smudge"], log=lambda *_: None)


def test_image_ablation_falls_to_chance(tiny):
    """Blank images carry no class, and a derangement of the images breaks even a perfect image reader.

    The clean rankings are those of a reader that is always right (top-1 = 1),
    so the shuffled score can only reach chance if the images really were
    moved to other items; the blank score comes from the tiny run itself.
    """
    from slava.assistant import Assistant
    from slava.eval import tasks as T

    run, images = tiny
    data = load_eval_data(images)
    items = data.split("train")
    labels = sorted({it.label for it in items})
    perfect = [[it.label] + [c for c in labels if c != it.label] for it in items]
    out = T.image_ablation(Assistant.load(run, device="cpu"), items, labels, perfect, seed=3)
    assert out["n"] == len(items) and out["chance"] == pytest.approx(max(
        sum(it.label == c for it in items) for c in labels) / len(items))
    assert out["blank"]["at_chance"] and out["shuffled"]["at_chance"]
    assert out["shuffled"]["top1"] < 1.0 - 1 / len(items)


REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-sem"


@pytest.mark.skipif(not REAL.is_dir(), reason="../shared/data/real-sem is absent")
def test_real_set_captions_are_checked_and_shown_beside_their_images(tiny, tmp_path):
    from slava.data.numbers import invented_numbers, misplaced_numbers
    from slava.eval.runner import evaluate

    run, images = tiny
    out = tmp_path / "report"
    m = evaluate(run, images, out, tasks=["caption"], limit=3, text_limit=1, real=REAL / "gift-fibres",
                 precision="fp32", threads=1, log=lambda *_: None)
    real = m["real_captions"]
    assert real["n"] == 2 and {r["set"] for r in real["rows"]} == {"gift-fibres"}
    assert [Path(r["image"]).name for r in real["rows"]] == ["10_gelatin_fibers.tif", "20_gelatin_fibers.tif"]
    for r in real["rows"]:
        assert Path(r["thumbnail"]).is_file() and r["context"].startswith("Measured: pixel 31")  # the FEI tag
        assert r["invented"] == invented_numbers(r["answer"], r["context"], "")
        assert misplaced_numbers(r["answer"], r["context"], "") == []  # any the model wrote were cut (r["misplaced"])
        assert r["names_object"] == bool(re.search(r"fib(re|er)s?\b", r["answer"], re.I))
    assert real["hygiene"]["invented_numbers"] == sum(len(r["invented"]) for r in real["rows"])
    assert real["hygiene"]["misplaced_numbers"] == sum(len(r["misplaced"]) for r in real["rows"])
    assert {"real captions: invented numbers", "real captions: misplaced numbers written, cut"} <= {g["goal"] for g in m["goals"]}
    html = (out / "report.html").read_text()
    assert "Captions of real micrographs (2)" in html and html.count("<b>gift-fibres</b>") == 2


def test_real_sets_are_read_from_truth_files_with_clear_errors(tmp_path):
    from slava.eval.real_sem import RealSetError, names_object, real_sets, spread

    assert spread(list(range(10)), 3) == [0, 4, 9] and spread([1, 2], 5) == [1, 2]
    assert names_object("Rounded cells on a support.", ["cell"]) and not names_object("An excellent image.", ["cell"])
    assert names_object("Cu nanoparticles", ["particle"]) and not names_object("a mat of cellulose", ["cell"])
    with pytest.raises(RealSetError, match="no real set"):
        real_sets(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "truth.jsonl").write_text('{"image": "x.png"}\n[1, 2]\n')
    with pytest.raises(RealSetError, match="line 2"):
        real_sets(tmp_path)
    (tmp_path / "a" / "truth.jsonl").write_text('{"image": "x.png"}\n\n{"image": "y.png"}\n')
    assert real_sets(tmp_path) == {"a": [tmp_path / "a" / "x.png", tmp_path / "a" / "y.png"]}
