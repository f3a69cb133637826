"""The image context line, its place in the human turn, and the invented-number check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slava.data.chat import ChatFormatError, question_of, split_human, user_turn
from slava.data.numbers import format_number, invented_numbers, misplaced_numbers, numbers_in
from slava.io.micrograph import Micrograph
from slava.measure.context import image_context, micrograph_context, needs_bar
from slava.measure.record import FibreStats, Measurements, ParticleStats, PeriodicityStats, PoreStats
from slava.synth import generate

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-sem"


def _measurements(pixel_size_nm=2.44, notes=(), instrument=None):
    unit = "nm" if pixel_size_nm else "px"
    return Measurements(
        width_px=512, height_px=384, pixel_size_nm=pixel_size_nm, unit=unit,
        particles=ParticleStats(count=37, diameters_px=[10.0] * 37, diameters_nm=None, mean_diameter=41.2731,
                                median_diameter=40.0, std_diameter=6.1, coverage=0.23149),
        fibres=FibreStats(count=4, widths_px=[3.0] * 4, widths_nm=None, mean_width=12.04, orientation_deg=10.0,
                          orientation_spread_deg=5.0, total_length=900.0),
        pores=PoreStats(pore_fraction=0.71, count=3, mean_pore_size=50.0, median_pore_size=50.0),
        periodicity=PeriodicityStats(pitch=80.0, pitch_px=32.8, strength=0.1),
        notes=list(notes), instrument=instrument,
    )


def test_context_states_calibration_counts_sizes_and_bar_fields_compactly():
    inst = {"magnification": 50000.0, "hv_kv": 5.0, "wd_mm": None, "detector": "InLens", "problem": None}
    ctx = image_context(_measurements(instrument=inst), calibration_source="fei")
    assert ctx.text == ("Measured: pixel 2.44 nm (file); field 1250 nm wide; 37 particles, mean 41.3 nm, cover 23.1 %; "
                        "4 fibres, width 12 nm; Mag 50000x, 5 kV, InLens (bar)")
    # Pores over half the field are the majority phase and a weak pitch is no pattern: neither is stated.
    assert "pores" not in ctx.text and "pitch" not in ctx.text
    assert ctx.numbers == {"pixel_size": 2.44, "field_width": 1250, "particle_count": 37,
                           "mean_diameter": 41.3, "coverage": 23.1, "fibre_count": 4, "mean_width": 12,
                           "magnification": 50000, "hv_kv": 5}
    # Each number is written once, by the answers' formatter, so an answer can quote it verbatim.
    assert all(ctx.say(k) in numbers_in(ctx.text) for k in ctx.numbers)
    assert ctx.say("mean_diameter") == format_number(41.2731)
    assert len(ctx.text.split()) <= 32


def test_uncalibrated_context_is_in_pixels_and_unreliable_kinds_are_left_out():
    notes = ["particles: unreliable: one object fills 88% of the field"]
    ctx = image_context(_measurements(pixel_size_nm=None, notes=notes))
    assert ctx.unit == "px" and "nm" not in ctx.text
    assert ctx.text == "Measured: uncalibrated; field 512 px wide; 4 fibres, width 12 px"
    assert image_context(_measurements(pixel_size_nm=None, notes=notes)) == ctx  # pure


def test_the_human_turn_holds_image_context_and_question_in_one_layout():
    ctx = image_context(_measurements()).text
    turn = user_turn("How many particles?", ctx)
    assert turn == {"from": "human", "value": f"<image>\n{ctx}\nHow many particles?"}
    assert split_human(turn["value"]) == (ctx, "How many particles?")
    assert question_of(user_turn("Describe it.")["value"]) == "Describe it."
    assert user_turn("Describe it.") == {"from": "human", "value": "<image>\nDescribe it."}
    with pytest.raises(ChatFormatError):
        user_turn("Q?", "pixel 2 nm")


def test_invented_numbers_catches_a_planted_number_and_passes_context_numbers():
    ctx = image_context(_measurements(instrument={"magnification": 50000.0})).text
    question = "What is the mean diameter of the 37 particles?"
    assert invented_numbers("The mean diameter is 41.3 nm over 37 particles; coverage 23.1 %.", ctx, question) == []
    assert invented_numbers("The mean diameter is 41.3 nm and the film is 85 nm thick.", ctx, question) == ["85"]
    # Formatting is normalised; a number written as a word is not a number; names with digits are not numbers.
    assert invented_numbers("A field 1,250 nm wide at 50,000x, 37.0 particles.", ctx, question) == []
    assert invented_numbers("The field is 937 nm high.", ctx, question) == ["937"]
    assert invented_numbers("Three particles, seen with the SE2 detector.", ctx, question) == []
    assert invented_numbers("It spans 1250.5 nm.", ctx, question) == ["1250.5"]
    assert invented_numbers("Imaged at 10 kV.", ctx, "Was it 10 kV?") == []


def test_misplaced_numbers_catches_a_context_number_on_the_wrong_quantity():
    ctx = image_context(_measurements(instrument={"magnification": 50000.0})).text
    assert "pixel 2.44 nm" in ctx and "field 1250 nm wide" in ctx and "cover 23.1 %" in ctx
    fine = "The image spans 1250 nm at a pixel size of 2.44 nm: 37 particles, mean 41.3 nm, cover 23.1 % at 50000x."
    assert misplaced_numbers(fine, ctx) == [] and invented_numbers(fine, ctx) == []
    assert misplaced_numbers("The particles cover 41.3 % of the field.", ctx) == ["41.3"]  # the mean size as a share
    assert misplaced_numbers("The image spans 2.44 nm.", ctx) == ["2.44"]  # the pixel size as the field
    assert misplaced_numbers("At a pixel size of 23.1 %.", ctx) == ["23.1"]  # right unit, wrong quantity
    assert misplaced_numbers("A high aspect ratio of 41.3 nm.", ctx) == ["41.3"]  # the context gives no aspect ratio
    assert misplaced_numbers("The image contains 41.3 nm at a pixel size of 2.44 nm.", ctx) == ["41.3"]  # a size as a count
    assert misplaced_numbers("The image contains 37 particles; I count 37.", ctx) == []
    assert misplaced_numbers("The image is 1024 x 768 px.", "Measured: uncalibrated; field 1024 px wide") == []
    assert misplaced_numbers("It spans 1024 pixels, at a pixel size of 12 px.", "Measured: uncalibrated; field 1024 px wide; "
                             "pitch 12 px") == ["12"]  # no pixel size without calibration
    # A number only the question gives may be answered in the question's unit; one neither holds is not judged here.
    assert misplaced_numbers("Yes, about 5 nm.", ctx, "Is the pixel size 5 nm?") == []
    assert misplaced_numbers("It is 85 %.", ctx) == [] and invented_numbers("It is 85 %.", ctx) == ["85"]


def test_micrograph_context_ocrs_only_an_image_its_file_does_not_calibrate():
    image, truth = generate("particles", 3, size=128)
    pixels = image.astype(np.float32) / 255.0
    bar = np.zeros((20, 128), np.float32)
    calibrated = Micrograph(pixels=pixels, pixel_size_nm=truth["pixel_size_nm"], pixel_size_source="png-phys",
                            data_bar=(0, 128, 128, 148), bar_pixels=bar)
    ctx = micrograph_context(calibrated)
    assert not needs_bar(calibrated) and calibrated.instrument is None  # never OCR'd
    assert ctx.text.startswith(f"Measured: pixel {format_number(truth['pixel_size_nm'])} nm (file); ")
    assert ctx.measurements is not None and ctx.measurements.particles is not None
    uncalibrated = Micrograph(pixels=pixels, data_bar=(0, 128, 128, 148), bar_pixels=bar)
    assert needs_bar(uncalibrated)
    micrograph_context(uncalibrated)
    assert uncalibrated.instrument is not None  # the bar was read: the only calibration it could have
    # The same image gives the same bytes every time.
    assert micrograph_context(calibrated).text == ctx.text


@pytest.mark.skipif(not REAL.is_dir(), reason="../shared/data/real-sem is absent")
def test_a_real_file_calibrated_by_its_tags_gets_file_context_without_ocr():
    from slava.io import load_micrograph

    path = next((REAL / "gift-fibres" / "images").glob("*.tif"))
    micrograph = load_micrograph(path)
    ctx = micrograph_context(micrograph)
    assert micrograph.instrument is None
    assert ctx.text.startswith("Measured: pixel ") and "(file)" in ctx.text
    assert micrograph_context(load_micrograph(path)).text == ctx.text
