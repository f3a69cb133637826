"""The inference API and its commands on a tiny run trained through the real training API."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from slava.assistant import Assistant, AssistantError
from slava.assistant.grounding import grounded_kind
from slava.cli import main
from slava.data.chat import user_turn
from slava.measure import measure
from slava.teacher.prompts import MEASURE_QUESTIONS, classify_answer, classify_prompt

from reference_scoring import plain_scores
from tiny_run import TINY_CLASSES, tiny_images


@pytest.fixture(scope="module")
def images(tiny_run):
    return tiny_images(tiny_run)


def slava(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slava.cli", *args], capture_output=True, text=True, timeout=120, env=env)


def test_labels_come_from_the_run(assistant):
    assert assistant.labels == sorted(TINY_CLASSES)


def test_ask_stops_at_end_of_sequence(assistant, images):
    answer = assistant.ask(images["fibres"][0], classify_prompt(assistant.labels), max_new_tokens=40)
    assert answer.source == "model" and answer.text.strip()
    assert 0 < answer.tokens < 40 and answer.finish_reason == "stop"


def test_caption_is_generated_text(assistant, images, tiny_run):
    """The caption is the model's greedy text in the teacher's vocabulary: words of the training captions appear."""
    import re

    from slava.data.records import read_records

    records, _ = read_records(tiny_run.parent / "records.jsonl")
    taught = {w.lower() for r in records if r["task"] == "caption"
              for w in re.findall(r"[A-Za-z]{4,}", r["conversations"][1]["value"])}
    answer = assistant.caption(images["particles"][0], max_new_tokens=24)
    assert answer.source == "model" and 0 < answer.tokens <= 24
    words = {w.lower() for w in re.findall(r"[A-Za-z]{4,}", answer.text)}
    assert words & taught, answer.text
    assert assistant.caption(images["particles"][0], max_new_tokens=24).text == answer.text  # greedy: deterministic


def test_zero_shot_probabilities_are_the_models_label_scores(assistant, images):
    image = images["particles"][1]
    result = assistant.classify(image, method="lm")
    probs = [p for _, p in result.ranked]
    assert result.mode == "zero_shot" and result.method == "lm" and sorted(label for label, _ in result.ranked) == assistant.labels
    assert sum(probs) == pytest.approx(1.0, abs=1e-5) and probs == sorted(probs, reverse=True)
    # The cached, batched scoring must equal a plain full-sequence forward's.
    tok, model = assistant.tokenizer, assistant.model
    prompt = assistant._prompt([user_turn(classify_prompt(assistant.labels))])
    answers = [tok.encode(f" {classify_answer(label)}") + [tok.eos_id] for label in assistant.labels]
    with torch.no_grad():
        embeds = model.encode_images(assistant.pixels([assistant.prepare(image)]))
    reference = torch.softmax(plain_scores(model, embeds, prompt, answers)[0], 0)
    assert dict(result.ranked) == pytest.approx(dict(zip(assistant.labels, reference.tolist())), abs=1e-5)


def test_classify_batch_equals_one_at_a_time(assistant, images):
    batch = [images[c][i] for c in TINY_CLASSES for i in range(2)]
    together = assistant.classify_batch(batch, labels=list(TINY_CLASSES))
    for image, result in zip(batch, together):
        alone = assistant.classify(image, labels=list(TINY_CLASSES))
        assert dict(result.ranked) == pytest.approx(dict(alone.ranked), abs=1e-5)


def test_answer_many_batches_what_ask_and_caption_answer_one_by_one(assistant, images):
    from slava.teacher.prompts import CAPTION_PROMPT

    requests = [(images[c][0], q) for c in TINY_CLASSES
                for q in (CAPTION_PROMPT, "What applications could this material have?", "How many particles are visible?")]
    together = assistant.answer_many(requests, max_new_tokens=20, batch_size=4)
    assert len(together) == len(requests)
    for (image, question), answer in zip(requests, together):
        alone = (assistant.caption(image, max_new_tokens=20) if question == CAPTION_PROMPT
                 else assistant.ask(image, question, max_new_tokens=20))
        assert (answer.text, answer.source, answer.context) == (alone.text, alone.source, alone.context)
    assert {a.source for a in together} == {"model", "measurement"}
    with pytest.raises(AssistantError, match="batch_size"):
        assistant.answer_many(requests, batch_size=0)


def test_every_image_input_gives_the_same_answers(assistant, images):
    path = images["porous_sponges"][0]
    data = path.read_bytes()
    pil = Image.open(io.BytesIO(data))
    inputs = {"path": path, "str": str(path), "bytes": data, "array": np.asarray(pil), "pil": pil,
              "micrograph": assistant.prepare(path)}
    results = {k: assistant.classify(v).ranked for k, v in inputs.items()}
    texts = {k: assistant.ask(v, classify_prompt(assistant.labels), max_new_tokens=16).text for k, v in inputs.items()}
    assert all(r == results["path"] for r in results.values())
    assert len(set(texts.values())) == 1


def test_prototype_few_shot_recognises_its_own_support_images(assistant, images):
    support = {c: images[c][:3] for c in TINY_CLASSES}
    for cls, paths in support.items():
        for path in paths:
            result = assistant.classify(path, support=support, mode="prototype")
            assert result.mode == "prototype" and result.label == cls
            assert sum(p for _, p in result.ranked) == pytest.approx(1.0, abs=1e-5)


def test_in_context_few_shot_puts_support_images_in_the_prompt(assistant, images, tiny_run):
    support = {c: images[c][:1] for c in TINY_CLASSES}
    query = images["fibres"][5]
    in_context = assistant.classify(query, support=support, mode="in_context")
    zero = assistant.classify(query, labels=list(TINY_CLASSES))
    assert in_context.mode == "in_context" and {label for label, _ in in_context.ranked} == set(TINY_CLASSES)
    assert sum(p for _, p in in_context.ranked) == pytest.approx(1.0, abs=1e-5)
    # The support turns change the model's view: the probabilities move.
    assert dict(in_context.ranked) != pytest.approx(dict(zero.ranked), abs=1e-4)
    folder = assistant.classify(query, support=tiny_run.parent / "images", shots=1, mode="in_context")
    assert dict(folder.ranked) == pytest.approx(dict(in_context.ranked), abs=1e-5)
    with pytest.raises(AssistantError):
        assistant.classify(query, support=support, mode="nearest")


def disks(n: int = 6, radius: int = 6, side: int = 128) -> np.ndarray:
    """Bright, well separated disks on a dark field: a picture every measurement agrees on."""
    y, x = np.mgrid[:side, :side]
    image = np.full((side, side), 40, np.uint8)
    for i in range(n):
        cx, cy = 24 + 40 * (i % 3), 34 + 52 * (i // 3)
        image[(x - cx) ** 2 + (y - cy) ** 2 <= radius**2] = 220
    return image


def test_count_question_states_the_measured_number(assistant):
    answer = assistant.ask(disks(), "How many particles are visible?")
    assert answer.source == "measurement" and answer.tokens == 0
    assert answer.numbers["particle_count"] == 6 and "I count 6 particles" in answer.text
    assert answer.measurements["particles"]["count"] == 6


def test_size_answer_is_in_nm_when_calibrated(assistant):
    m = assistant.prepare(disks(), pixel_size_nm=2.5)
    answer = assistant.ask(m, "What is the mean particle diameter in nm?")
    expected = measure(m).particles.mean_diameter
    assert answer.source == "measurement" and " nm" in answer.text
    assert answer.numbers["mean_diameter_nm"] == pytest.approx(expected, rel=1e-2) == pytest.approx(30, rel=0.15)
    uncalibrated = assistant.ask(disks(), "How large are the particles on average?")
    assert uncalibrated.numbers["mean_diameter_px"] == pytest.approx(12, rel=0.15) and " px" in uncalibrated.text


@pytest.mark.parametrize("question,kind", [
    ("How many fibres are visible?", "fibre_count"),
    ("how many wires cross the field?", "fibre_count"),
    ("Count the dots please", "particle_count"),
    ("What is the porosity of this sponge?", "pore_fraction"),
    ("How wide are the fibres on average?", "mean_width"),
    ("What is the pitch of the pattern?", "pitch"),
    ("What is the apex radius of the tip?", None),
    ("Describe the surface texture.", None),
])
def test_grounding_routes_questions(question, kind):
    assert grounded_kind(question) == kind


def test_every_measure_question_is_grounded_or_left_to_the_model():
    for kind, questions in MEASURE_QUESTIONS.items():
        for q in questions:
            assert grounded_kind(q) in (kind, None)


def test_ask_command_prints_json(tiny_run, images):
    done = slava("ask", str(images["particles"][0]), "How many particles are visible?", "--run", str(tiny_run), "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["source"] == "measurement" and "particle_count" in answer["numbers"]


def cli_json(capsys, *args: str) -> dict:
    assert main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_commands_print_json(tiny_run, images, capsys):
    image = str(images["particles"][0])
    cap = cli_json(capsys, "caption", image, "--run", str(tiny_run), "--max-new-tokens", "8")
    assert cap["text"] and cap["tokens"] <= 8
    cls = cli_json(capsys, "classify", image, "--run", str(tiny_run))
    assert cls["ranked"][0]["label"] == cls["label"] and len(cls["ranked"]) == 3 and cls["method"] == "head"
    assert cli_json(capsys, "classify", image, "--run", str(tiny_run), "--method", "lm")["method"] == "lm"
    few = cli_json(capsys, "classify", image, "--run", str(tiny_run), "--support", str(tiny_run.parent / "images"), "--shots", "2")
    assert few["mode"] == "prototype" and few["method"] == "prototype"
    meas = cli_json(capsys, "measure", image, "--pixel-size", "2")
    assert meas["unit"] == "nm" and meas["pixel_size_nm"] == 2.0


def test_human_output_and_errors(tiny_run, images, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SLAVA_RUN", str(tiny_run))
    assert main(["classify", str(images["fibres"][0])]) == 0
    out = capsys.readouterr().out
    assert "zero-shot" in out and "%" in out
    assert main(["measure", str(images["fibres"][0])]) == 0
    assert "particles" in capsys.readouterr().out
    assert main(["ask", str(images["fibres"][0]), "What is this?", "--run", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "not a trained run" in err


def test_the_prompt_carries_the_teachers_context_for_the_same_file(assistant, tiny_run):
    """Teach time and inference time see byte-identical context: the records' line is the assistant's."""
    from slava.data.chat import split_human
    from slava.data.records import read_records, resolve_image

    records, _ = read_records(tiny_run.parent / "records.jsonl")
    captions = [r for r in records if r["task"] == "caption"][:3]
    assert captions
    for rec in captions:
        taught, _ = split_human(rec["conversations"][0]["value"])
        path = resolve_image(rec, tiny_run.parent)
        assert taught and taught.startswith("Measured: ")
        assert assistant.context(path).text == taught
        answer = assistant.caption(path, max_new_tokens=32)
        assert answer.context == taught


def test_an_images_context_is_measured_once_and_again_when_it_changes(tiny_run, images, monkeypatch):
    from dataclasses import replace

    import slava.assistant.assistant as A
    from slava.io import load_micrograph

    fresh = Assistant.load(tiny_run, device="cpu")
    calls = []
    real = A.micrograph_context
    monkeypatch.setattr(A, "micrograph_context", lambda m: calls.append(m) or real(m))
    path = images["particles"][0]
    first = fresh.context(path)
    assert fresh.context(path) == first and len(calls) == 1
    m = load_micrograph(path)
    flipped = replace(m, pixels=np.ascontiguousarray(m.pixels[::-1]))
    fresh.context(flipped)
    recalibrated = replace(m, pixel_size_nm=(m.pixel_size_nm or 1.0) * 2, pixel_size_source="caller")
    assert fresh.context(recalibrated).text != first.text
    assert len(calls) == 3


def test_generated_answers_are_clean_and_flag_invented_numbers(assistant, images):
    """Hygiene on a real tiny run: no role marker, no 4-gram three times, max_new_tokens kept, numbers checked."""
    from slava.data.chat import role_markers
    from slava.data.numbers import invented_numbers, misplaced_numbers
    from slava.eval.metrics import has_loop, marker_count
    from slava.teacher.prompts import QUESTIONS

    assert assistant.markers == role_markers("plain")
    questions = [QUESTIONS["morphology"][0], QUESTIONS["surface"][0], "Tell me everything about this sample."]
    for cls in TINY_CLASSES:
        for question in questions:
            answer = assistant.ask(images[cls][0], question, max_new_tokens=40)
            assert answer.source == "model" and answer.tokens <= 40
            assert marker_count(answer.text, assistant.markers) == 0, answer.text
            assert not has_loop(answer.text), answer.text
            assert answer.invented == tuple(invented_numbers(answer.text, answer.context, question))
            assert misplaced_numbers(answer.text, answer.context, question) == []  # cut, listed in answer.misplaced
            assert answer.context and answer.context.startswith("Measured: ")


def test_prompts_about_one_image_share_their_prefix_and_decode_the_same(assistant, images):
    """The fast decoder runs a shared prefix once; greedy tokens equal those of decoding every prompt whole."""
    from slava.model.fast_llama import decoder_for
    from slava.model.generate import GenerationConfig
    from slava.teacher.prompts import CAPTION_PROMPT

    assert decoder_for(assistant.model.lm) is not None  # the path under test is the fast decoder's
    picks = [images["fibres"][0], images["particles"][1]]
    questions = [CAPTION_PROMPT, "What applications could this material have?", "Describe the boundaries."]
    pairs = [(m, q) for m in (assistant.prepare(p) for p in picks) for q in questions]
    prompts = [assistant._prompt([user_turn(q, assistant.context(m).text)]) for m, q in pairs]
    pixels = assistant.pixels([m for m, _ in pairs])
    shared = assistant.model._shared_prompts(pixels, prompts, assistant.model.encode_images(pixels))
    assert shared is not None and shared.prefix.shape[0] == 2 and shared.rows.tolist() == [0, 0, 0, 1, 1, 1]
    config = GenerationConfig(max_new_tokens=12)
    with assistant.inference():
        together = assistant.model.generate(pixels, prompts, config)
        whole = assistant.model.generate(pixels, prompts, config, share_prefixes=False)
    assert together == whole and all(together)
