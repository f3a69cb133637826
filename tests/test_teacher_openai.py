"""The OpenAI-compatible teacher client against a real fake server on 127.0.0.1."""

import asyncio
import base64
import email.utils
import io
import json
import re
import types

import numpy as np
import pytest
from fake_openai_server import FakeOpenAIServer, good_answer
from PIL import Image

from slava.data.chat import split_human
from slava.data.numbers import invented_numbers
from slava.data.records import validate_record
from slava.io.micrograph import Micrograph
from slava.teacher.openai_client import (
    OpenAITeacher,
    OpenAITeacherConfig,
    TeacherError,
    encode_image,
    parse_retry_after,
    resolve_endpoint,
    validate_answer,
)

KEY = "sk-test"


def _entry(i=0, label="particles"):
    return types.SimpleNamespace(sha256=f"{i:064x}", label=label, relpath=f"{label}/{i}.png", path=f"/d/{i}.png")


def _micrograph(width=80, height=60, pixel_size_nm=2.0):
    """Bright round particles on a noisy dark support, so the image context has particles to copy."""
    rng = np.random.default_rng(width)
    pixels = 0.15 + 0.05 * rng.random((height, width))
    yy, xx = np.mgrid[:height, :width]
    for cx, cy in rng.uniform(8, (width - 8, height - 8), size=(max(3, width * height // 600), 2)):
        pixels[(xx - cx) ** 2 + (yy - cy) ** 2 < 9] = 0.9
    return Micrograph(pixels=pixels.astype(np.float32), pixel_size_nm=pixel_size_nm, pixel_size_source="caller")


def _teacher(server, **config):
    config = {"base_url": server.url, "model": "fake-vlm", "timeout_s": 2.0, "backoff_base_s": 0.01, **config}
    return OpenAITeacher(OpenAITeacherConfig(**config), environ={"SLAVA_TEACHER_API_KEY": KEY})


def _teach(teacher, entry=None, micrograph=None):
    async def go():
        async with teacher:
            return await teacher.teach(entry or _entry(), micrograph or _micrograph(), "k" * 32)

    return asyncio.run(go())


@pytest.fixture
def server():
    with FakeOpenAIServer(api_key=KEY) as srv:
        yield srv


def test_fake_server_speaks_the_openai_protocol(server):
    # The official client is the reference for what "OpenAI-compatible" means.
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url, api_key=KEY, max_retries=0)
    assert [m.id for m in client.models.list()] == ["fake-vlm"]
    url = encode_image(np.zeros((8, 8), np.float32))
    text = "Describe.\nMeasured: field 16 nm wide; 12 particles, mean 3 nm, cover 5 %"
    content = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]
    reply = client.chat.completions.create(
        model="fake-vlm", messages=[{"role": "system", "content": "s"}, {"role": "user", "content": content}]
    )
    assert json.loads(reply.choices[0].message.content)["measurements"]["count"] == 12
    assert reply.usage.total_tokens == 100
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url, api_key="wrong", max_retries=0).models.list()


def test_endpoint_comes_from_config_then_environment():
    env = {"OPENAI_BASE_URL": "http://a/v1/", "OPENAI_API_KEY": "o", "SLAVA_TEACHER_MODEL": "m"}
    assert resolve_endpoint(OpenAITeacherConfig(), env) == resolve_endpoint(
        OpenAITeacherConfig(base_url="http://a/v1", model="m"), {"OPENAI_API_KEY": "o"}
    )
    env = {**env, "SLAVA_TEACHER_BASE_URL": "http://b/v1", "SLAVA_TEACHER_API_KEY": "s"}
    ep = resolve_endpoint(OpenAITeacherConfig(), env)
    assert (ep.url, ep.model, ep.api_key) == ("http://b/v1/chat/completions", "m", "s")
    ep = resolve_endpoint(OpenAITeacherConfig(model="x", api_key_env="MY_KEY"), {"MY_KEY": "k", "OPENAI_API_KEY": "o"})
    assert (ep.url, ep.api_key) == ("https://api.openai.com/v1/chat/completions", "k")
    assert resolve_endpoint(OpenAITeacherConfig(model="x"), {}).api_key is None
    with pytest.raises(TeacherError, match="SLAVA_TEACHER_MODEL"):
        resolve_endpoint(OpenAITeacherConfig(), {})


def test_retry_after_reads_seconds_and_http_dates():
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    date = email.utils.formatdate(1000.0 + 30, usegmt=True)
    assert parse_retry_after(date, now=1000.0) == pytest.approx(30.0)


@pytest.mark.parametrize(
    "change, error",
    [
        ({"caption": "  "}, "caption"),
        ({"qa": [{"family": "astrology", "question": "q", "answer": "a"}]}, "unknown family"),
        ({"qa": [{"family": "size", "question": "q", "answer": ""}]}, "answer"),
        ({"measurements": {"feature": "particles", "count": -1, "mean_size_nm": 3}}, "below zero"),
        ({"measurements": {"feature": "particles", "count": 2.5, "mean_size_nm": 3}}, "not an integer"),
        ({"measurements": {"feature": "particles", "count": 10**30, "mean_size_nm": 3}}, "exceeds the pixels"),
        ({"measurements": {"feature": "particles", "count": float("inf"), "mean_size_nm": 3}}, "not an integer"),
        ({"measurements": {"feature": "particles", "count": 3, "mean_size_nm": 0}}, "not positive"),
        ({"measurements": {"feature": "particles", "count": 3, "mean_size_nm": 500}}, "field width"),
        ({"measurements": {"feature": "blobs", "count": 3, "mean_size_nm": 5}}, "feature"),
        ({"classification": {"label": "unicorns"}}, "classification"),
    ],
)
def test_absurd_or_incomplete_answers_are_invalid(change, error):
    good = {**good_answer({"messages": [{}, {"content": [{"type": "text", "text": ""}]}]})}
    good["qa"] = [{"family": "size", "question": "How big?", "answer": "About 3 nm."}]
    want = ["caption", "qa", "classification", "measurements"]
    kw = {"labels": ["particles", "fibres"], "field_width_nm": 160.0, "max_count": 4800}
    assert validate_answer(json.dumps(good), want, **kw)[1] is None
    answer, problem = validate_answer(json.dumps({**good, **change}), want, **kw)
    assert answer is None and error in problem


def test_fenced_json_and_unknown_keys_are_accepted():
    content = '```json\n{"caption": "Pores.", "extra": 1}\n```'
    assert validate_answer(content, ["caption"]) == ({"caption": "Pores."}, None)
    assert "not valid JSON" in validate_answer("Sure: {", ["caption"])[1]


def test_a_good_answer_becomes_valid_llava_records(server):
    result = _teach(_teacher(server))
    assert result.reject is None and result.tokens == 100
    tasks = [r["task"] for r in result.records]
    assert tasks == ["caption", "vqa", "vqa", "vqa", "measure", "measure"]
    for rec in result.records:
        assert validate_record(rec) == []
        assert rec["image"] == "particles/0.png"
        assert rec["meta"]["source"] == "openai:fake-vlm" and rec["meta"]["class"] == "particles"
    sent = server.requests[0]["messages"][1]["content"][0]["text"]
    context = next(line for line in sent.splitlines() if line.startswith("Measured:"))
    measured = [r["meta"]["numbers"] for r in result.records if r["task"] == "measure"]
    particles = re.search(r"(\d+) particles, mean ([\d.]+) nm", context)
    count, size = int(particles[1]), float(particles[2])
    assert measured == [{"particle_count": count}, {"mean_diameter": size}]
    for rec in result.records:
        # The context sent is the context the student is trained with, and the answer quotes only it.
        got, question = split_human(rec["conversations"][0]["value"])
        assert got == context
        assert invented_numbers(rec["conversations"][1]["value"], got, question) == []
    # The questions asked are the ones answered.
    for rec in result.records[1:4]:
        assert split_human(rec["conversations"][0]["value"])[1] in sent
    assert server.requests[0]["response_format"] == {"type": "json_object"}


def test_classification_is_asked_only_without_a_known_label(server):
    teacher = _teacher(server)
    teacher.labels = ["particles", "fibres"]
    result = _teach(teacher, entry=_entry(label=None))
    assert '"classification"' in server.requests[0]["messages"][1]["content"][0]["text"]
    classify = [r for r in result.records if r["task"] == "classify"]
    assert len(classify) == 1 and classify[0]["meta"]["family"] == "classification"
    _teach(teacher, entry=_entry(label="fibres"))
    assert '"classification"' not in server.requests[1]["messages"][1]["content"][0]["text"]


def test_the_sample_label_is_withheld_with_no_label_leak(server):
    teacher = _teacher(server)
    _teach(teacher)
    teacher.no_label_leak = True
    _teach(teacher)
    texts = [r["messages"][1]["content"][0]["text"] for r in server.requests]
    # The context line names what image analysis measures on every image, whatever its class: not the label.
    texts = ["\n".join(line for line in t.splitlines() if not line.startswith("Measured:")) for t in texts]
    assert "known to be: particles" in texts[0] and "particles" not in texts[1].split("measurements")[0]


def test_429_waits_as_long_as_retry_after_says(server):
    server.push(("429", 1))
    result = _teach(_teacher(server))
    assert result.reject is None
    assert len(server.arrivals) == 2
    # Backoff alone would have waited about 0.01 s.
    assert server.arrivals[1] - server.arrivals[0] >= 0.9


def test_500_and_a_hang_past_the_timeout_are_retried(server):
    server.hang_s = 2.0
    server.push("500", "hang")
    result = _teach(_teacher(server, timeout_s=0.4))
    assert result.reject is None and len(server.requests) == 3


def test_persistent_failures_become_a_retryable_reject(server):
    server.push("500", "500", "500")
    result = _teach(_teacher(server, max_retries=2))
    assert result.records == [] and result.retryable
    assert "gave up after 3 attempts" in result.reject and "HTTP 500" in result.reject


def test_repair_prompt_fixes_a_bad_first_answer(server):
    server.push("malformed")
    result = _teach(_teacher(server))
    assert result.reject is None and result.records and result.tokens == 200
    repair = server.requests[1]["messages"]
    assert repair[2]["role"] == "assistant" and repair[2]["content"].startswith("Sure!")
    assert "not valid JSON" in repair[3]["content"]


def test_a_reply_stating_a_number_not_in_the_context_is_rejected_with_the_number(server):
    server.push("invented", "invented")
    result = _teach(_teacher(server))
    assert result.records == [] and not result.retryable
    assert "numbers not in the image context: caption states 7777" in result.reject
    assert "numbers not in the image context" in server.requests[1]["messages"][3]["content"]


def test_a_reply_stating_a_context_number_as_another_quantity_is_rejected(server):
    server.push("misplaced", "misplaced")
    result = _teach(_teacher(server))
    assert result.records == [] and not result.retryable
    assert "numbers the image context gives as another quantity: caption states 2" in result.reject


@pytest.mark.parametrize("bad", ["wrong_schema", "absurd", "unknown_family", "invented", "misplaced"])
def test_an_answer_still_bad_after_repair_is_rejected_with_its_reason(server, bad):
    server.push(bad, bad)
    result = _teach(_teacher(server))
    assert result.records == [] and not result.retryable
    assert result.reject.startswith("invalid answer after repair") and result.raw
    assert len(server.requests) == 2


def test_a_refused_key_stops_everything(server):
    teacher = OpenAITeacher(
        OpenAITeacherConfig(base_url=server.url, model="fake-vlm"), environ={"SLAVA_TEACHER_API_KEY": "wrong"}
    )
    with pytest.raises(TeacherError, match="401"):
        _teach(teacher)


def test_large_micrographs_are_sent_downscaled_to_1024_px(server):
    _teach(_teacher(server), micrograph=_micrograph(width=1300, height=200))
    assert server.image_sizes() == [(1024, 158)]
    url = server.images()[0]
    grey = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert grey.mode == "L"


def test_token_budget_is_tracked(server):
    teacher = _teacher(server, max_tokens_budget=150)
    assert not teacher.budget_exhausted
    _teach(teacher)
    assert not teacher.budget_exhausted
    _teach(teacher)
    assert teacher.budget_exhausted and teacher.tokens_used == 200


def test_cache_key_changes_with_image_model_and_settings(server):
    teacher = _teacher(server)
    key = teacher.cache_key(_entry(0))
    assert key == _teacher(server).cache_key(_entry(0))
    assert key != teacher.cache_key(_entry(1))
    assert key != _teacher(server, model="other").cache_key(_entry(0))
    teacher.per_image = 5
    assert key != teacher.cache_key(_entry(0))
