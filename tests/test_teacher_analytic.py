"""The analytic teacher: valid records, numbers only from the image context, no label leaks, fixed answers."""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace

import pytest

from slava.data.chat import split_human
from slava.data.manifest import ManifestEntry
from slava.data.numbers import invented_numbers, misplaced_numbers
from slava.data.records import validate_record
from slava.io import micrograph_from_array
from slava.measure import measure
from slava.measure.context import image_context
from slava.measure.record import Measurements, ParticleStats, TextureStats
from slava.synth import CLASS_NAMES, CLASSES, generate
from slava.teacher.analytic import AnalyticTeacher
from slava.teacher.phrasing import format_number
from slava.teacher.prompts import (
    CAPTION_PROMPTS,
    MEASURE_QUESTIONS,
    QUESTIONS,
    classify_answer,
    classify_prompt,
    measure_kind,
)

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _entry(relpath, label, image_bytes, meta=None, split="train"):
    return ManifestEntry(path=f"/data/{relpath}", relpath=relpath, label=label, split=split,
                         sha256=hashlib.sha256(image_bytes).hexdigest(), meta=meta or {})


@pytest.fixture(scope="module")
def synth_images():
    """(entry with ground truth, micrograph, measurements) for two images of every class."""
    out = []
    for cls in CLASSES:
        for seed in (1, 2):
            image, truth = generate(cls, seed, size=192)
            mg = micrograph_from_array(image, pixel_size_nm=truth["pixel_size_nm"])
            out.append((_entry(f"{cls}/{cls}_{seed}.png", cls, image.tobytes(), truth), mg, measure(mg)))
    return out


@pytest.fixture(scope="module")
def measured_only(synth_images):
    """The same images as a real data set would give them: label, measurements, no ground truth."""
    return [(replace(e, meta={}), mg, m) for e, mg, m in synth_images]


def _uncalibrated():
    m = Measurements(
        width_px=200, height_px=180, pixel_size_nm=None, unit="px",
        particles=ParticleStats(count=17, diameters_px=[8.0, 9.5, 12.25, 10.0], diameters_nm=None,
                                mean_diameter=9.94, median_diameter=9.7, std_diameter=1.5, coverage=0.1234),
        texture=TextureStats(0.4, 0.15, 3.0, 0.5, 0.1, 0.7, 2.5),
    )
    return _entry("x/img.tif", "particles", b"uncalibrated"), None, m


def _answers(records, skip_classify=True):
    for r in records:
        if skip_classify and r["task"] == "classify":
            continue
        yield r, r["conversations"][1]["value"]


def test_every_record_is_valid_and_well_formed(synth_images, measured_only):
    teacher = AnalyticTeacher(per_image=4)
    for entry, mg, m in synth_images + measured_only + [_uncalibrated()]:
        records = teacher.records_for(entry, mg, m)
        assert [p for r in records for p in validate_record(r)] == []
        assert {r["task"] for r in records} == {"caption", "vqa", "classify", "measure"}
        assert sum(r["task"] == "vqa" for r in records) == 4
        assert len({r["meta"]["family"] for r in records if r["task"] == "vqa"}) == 4
        assert len({r["id"] for r in records}) == len(records)
        for r in records:
            assert r["image"] == entry.relpath
            meta = r["meta"]
            assert meta["source"] == "analytic" and meta["prompt_version"] == teacher.prompt_version
            assert meta["class"] == entry.label and meta["split"] == entry.split
            assert meta["number_source"] == (None if not meta["numbers"] else "context")
            context, question = split_human(r["conversations"][0]["value"])
            assert r["conversations"][0]["value"].startswith("<image>\n")
            # Every record but classification carries the image's context line, as image_context writes it.
            source = getattr(mg, "pixel_size_source", None)
            assert context == (None if r["task"] == "classify" else image_context(m, calibration_source=source).text)
            if r["task"] == "vqa":
                assert question in QUESTIONS[meta["family"]]
            elif r["task"] == "caption":
                assert question in CAPTION_PROMPTS
            elif r["task"] == "measure":
                assert measure_kind(question) == meta["measure_kind"]


@pytest.mark.parametrize("no_label_leak", [False, True])
def test_every_number_in_an_answer_is_a_stated_number(synth_images, measured_only, no_label_leak):
    teacher = AnalyticTeacher(per_image=10, no_label_leak=no_label_leak)
    stated = 0
    for entry, mg, m in synth_images + measured_only + [_uncalibrated()]:
        for r, answer in _answers(teacher.records_for(entry, mg, m)):
            allowed = {format_number(v) for v in r["meta"]["numbers"].values()}
            tokens = NUMBER.findall(answer)
            assert set(tokens) <= allowed, (answer, r["meta"]["numbers"])
            # Every recorded number is also stated: meta.numbers is not a dump of the inputs.
            assert allowed <= set(tokens), (answer, r["meta"]["numbers"])
            # And every stated number is in the context line or the question the student is given.
            context, question = split_human(r["conversations"][0]["value"])
            assert invented_numbers(answer, context, question) == [], (answer, context)
            assert misplaced_numbers(answer, context, question) == [], (answer, context)
            stated += len(tokens)
    assert stated > 100


def _close(stated, source):
    return format_number(stated) == format_number(source)


def test_ground_truth_is_never_stated_only_kept_for_evaluation(synth_images, measured_only):
    """With and without ground truth the answers are the same: the student can only know the context."""
    teacher = AnalyticTeacher(per_image=10)
    kept = 0
    for (entry, mg, m), (bare, _, _) in zip(synth_images, measured_only):
        with_truth = teacher.records_for(entry, mg, m)
        without = teacher.records_for(bare, mg, m)
        assert [r["conversations"] for r in with_truth] == [r["conversations"] for r in without]
        q = entry.meta["quantities"]
        for r in with_truth:
            if r["task"] == "measure":
                truth = r["meta"].get("truth", {})
                assert all(truth[k] == q[k] for k in truth)
                kept += bool(truth)
            else:
                assert "truth" not in r["meta"]
        assert all("truth" not in r["meta"] for r in without)
    assert kept > 10


def test_measured_numbers_come_from_the_measurements(measured_only):
    teacher = AnalyticTeacher(per_image=10)
    checked = set()
    for entry, mg, m in measured_only:
        sources = {"pixel_size_nm": m.pixel_size_nm, "field_width_nm": m.field_width}
        if m.particles:
            sources.update(particle_count=m.particles.count, mean_diameter_nm=m.particles.mean_diameter,
                           coverage_pct=100 * m.particles.coverage)
        if m.fibres:
            sources.update(fibre_count=m.fibres.count, mean_width_nm=m.fibres.mean_width)
        if m.pores:
            sources.update(pore_fraction_pct=100 * m.pores.pore_fraction, mean_pore_size_nm=m.pores.mean_pore_size)
        if m.periodicity:
            sources.update(pitch_nm=m.periodicity.pitch)
        for r in teacher.records_for(entry, mg, m):
            for name, value in r["meta"]["numbers"].items():
                assert _close(value, sources[name]), (name, value, sources[name])
                checked.add(name)
    assert {"particle_count", "mean_diameter_nm", "fibre_count", "pixel_size_nm"} <= checked


def _class_word_pattern():
    """Every word of every class name, singular or plural, alone or after nano-/micro- (independent of the teacher's stemmer)."""
    forms = set()
    for name in CLASS_NAMES.values():
        for word in re.findall(r"[a-z]+", name.lower()):
            if word == "and":
                continue
            forms.add(word)
            for suffix in ("es", "s"):
                if word.endswith(suffix):
                    forms.add(word[: -len(suffix)])
            if word.endswith("s"):
                forms.add(word[:-1])
    return re.compile(r"\b(?:nano|micro)?(?:" + "|".join(sorted(forms)) + r")s?\b", re.IGNORECASE)


def test_no_label_leak_keeps_every_class_word_out_of_non_classification_answers(synth_images, measured_only):
    pattern = _class_word_pattern()
    assert pattern.search("discrete nanoparticles") and pattern.search("MEMS") and pattern.search("a Surface")
    teacher = AnalyticTeacher(per_image=10, no_label_leak=True)
    classify = 0
    for entry, mg, m in synth_images + measured_only + [_uncalibrated()]:
        records = teacher.records_for(entry, mg, m)
        for r, answer in _answers(records):
            assert not pattern.search(answer), answer
            assert answer.strip()
        classify += sum(r["task"] == "classify" for r in records)
    assert classify == len(synth_images) * 2 + 1


def test_with_leak_allowed_every_class_is_named(synth_images):
    teacher = AnalyticTeacher(per_image=10)
    for entry, mg, m in synth_images:
        name = CLASS_NAMES[entry.label]
        named = [a for r, a in _answers(teacher.records_for(entry, mg, m))
                 if r["meta"]["family"] in ("caption", "material") and name in a]
        assert len(named) == 2, entry.label


def test_answers_are_fixed_by_class_and_context_questions_vary_by_seed(synth_images):
    entry, mg, m = synth_images[0]
    assert AnalyticTeacher(seed=3).records_for(entry, mg, m) == AnalyticTeacher(seed=3).records_for(entry, mg, m)
    answers: dict[str, set] = {}
    questions, families = set(), set()
    for seed in range(12):
        for r in AnalyticTeacher(seed=seed, per_image=4).records_for(entry, mg, m):
            answers.setdefault(r["meta"]["family"] + r["meta"].get("measure_kind", ""), set()).add(
                r["conversations"][1]["value"])
            if r["task"] == "vqa":
                families.add(r["meta"]["family"])
                questions.add(r["conversations"][0]["value"])
    # Seeds change which questions are asked and how, never the answer a family gets.
    assert len(questions) >= 8 and len(families) >= 8
    assert all(len(v) == 1 for v in answers.values()), {k: v for k, v in answers.items() if len(v) > 1}
    # Another image of the same class with the same measurements gets the same answers.
    other = replace(entry, sha256="0" * 64, relpath="elsewhere.png")
    by_family = lambda records: {r["meta"]["family"]: r["conversations"][1]["value"] for r in records
                                 if r["task"] in ("caption", "vqa")}
    teacher = AnalyticTeacher(per_image=10)
    assert by_family(teacher.records_for(entry, mg, m)) == by_family(teacher.records_for(other, mg, m))
    # Other classes say other things.
    entry2, mg2, m2 = synth_images[-1]
    assert by_family(teacher.records_for(entry2, mg2, m2))["caption"] != by_family(teacher.records_for(entry, mg, m))["caption"]


def test_without_pixel_size_sizes_are_in_pixels_never_nm():
    entry, mg, m = _uncalibrated()
    for seed in range(8):
        records = AnalyticTeacher(per_image=10, seed=seed).records_for(entry, mg, m)
        for r, answer in _answers(records):
            assert not re.search(r"\bnm\b", answer), answer
            assert not any(name.endswith("_nm") for name in r["meta"]["numbers"])
        measured = {r["meta"]["measure_kind"]: r for r in records if r["task"] == "measure"}
        assert set(measured) == {"particle_count", "mean_diameter", "coverage"}
        assert measured["mean_diameter"]["meta"]["numbers"] == {"mean_diameter_px": 9.94}
        assert "px" in measured["mean_diameter"]["conversations"][1]["value"]
        assert all(not re.search(r"\bnm\b", r["conversations"][0]["value"]) for r in measured.values())


def test_classification_record_uses_the_one_prompt_and_answer(synth_images):
    teacher = AnalyticTeacher(seed=5)
    orders = set()
    for entry, mg, m in synth_images:
        (rec,) = [r for r in teacher.records_for(entry, mg, m) if r["task"] == "classify"]
        context, question = split_human(rec["conversations"][0]["value"])
        assert context is None
        listed = question.split(": ", 1)[1].split("? ")[0].split(", ")
        labels = [next(c for c in CLASSES if CLASS_NAMES[c] == n) for n in listed]
        assert sorted(labels) == sorted(CLASSES)
        assert question == classify_prompt(labels)
        assert rec["conversations"][1]["value"] == classify_answer(entry.label) == CLASS_NAMES[entry.label]
        assert rec["meta"]["family"] == "classification" and rec["meta"]["numbers"] == {}
        orders.add(tuple(labels))
    assert len(orders) > 1  # candidates shuffled per image


def test_dataset_labels_are_the_candidates_and_unlabelled_images_get_no_classification():
    entry, mg, m = _uncalibrated()
    teacher = AnalyticTeacher(labels={"particles": "particles", "scratch_marks": "scratch marks"}, no_label_leak=True)
    (rec,) = [r for r in teacher.records_for(entry, mg, m) if r["task"] == "classify"]
    assert sorted(rec["conversations"][0]["value"].split(": ", 1)[1].split("? ")[0].split(", ")) == [
        "particles", "scratch marks"]
    unlabelled = replace(entry, label=None)
    tasks = {r["task"] for r in teacher.records_for(unlabelled, mg, m)}
    assert tasks == {"caption", "vqa", "measure"}


def test_tasks_and_per_image_select_what_is_written(synth_images):
    entry, mg, m = synth_images[4]
    records = AnalyticTeacher(tasks=("vqa",), per_image=2).records_for(entry, mg, m)
    assert [r["task"] for r in records] == ["vqa", "vqa"]
    with pytest.raises(ValueError):
        AnalyticTeacher(tasks=("poetry",))


def test_measure_questions_are_tagged_and_format_number_is_consistent():
    assert all(len(qs) >= 2 for qs in MEASURE_QUESTIONS.values())
    assert measure_kind("How many particles are visible?") == "particle_count"
    assert measure_kind("Describe this micrograph in detail.") is None
    assert all(len(qs) >= 3 for qs in QUESTIONS.values()) and len(QUESTIONS) == 10
    assert [format_number(v) for v in (42, 0.012345, 12.0, 9.996, 25012.0, -3.456)] == [
        "42", "0.0123", "12", "10", "25000", "-3.46"]
