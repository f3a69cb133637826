"""`slava serve` for real: a uvicorn subprocess on 127.0.0.1 serving the tiny trained run,
driven by the official `openai` client and by httpx."""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest


KEY = "test-key-7f3a"
MAX_UPLOAD_MB = 1


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command(run: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "slava.cli", "serve", "--run", str(run), *args]


def server_env(key: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "SLAVA_API_KEY"}
    if key is not None:
        env["SLAVA_API_KEY"] = key
    return env


def launch_server(run: Path, key: str | None, *args: str, log: Path) -> tuple[subprocess.Popen, str]:
    """Start `slava serve` in the background; returns (process, base URL)."""
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(serve_command(run, "--port", str(port), *args), env=server_env(key),
                                stdout=out, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(proc: subprocess.Popen, base: str, log: Path) -> str:
    """Wait for /healthz of a launched server; returns its base URL."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return base
        except httpx.TransportError:
            time.sleep(0.2)
    stop_server(proc)
    raise RuntimeError(f"server did not come up:\n{log.read_text()}")


def start_server(run: Path, key: str | None, *args: str, log: Path) -> tuple[subprocess.Popen, str]:
    """Start `slava serve` and wait until it answers; returns (process, base URL)."""
    proc, base = launch_server(run, key, *args, log=log)
    return proc, wait_ready(proc, base, log)


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def synthetic_png(cls: str, seed: int, size: int = 192) -> bytes:
    """A synthetic SEM micrograph (with its data bar) as PNG bytes."""
    from PIL import Image

    from slava.synth import generate

    image, _ = generate(cls, seed, size=size)
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def data_url(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


def image_message(url: str, text: str) -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]
    return [{"role": "user", "content": parts}]


@pytest.fixture(scope="module")
def servers(tiny_run, tmp_path_factory):
    """A server with a key and one with --insecure-local, started side by side to overlap their start-up."""
    logs = tmp_path_factory.mktemp("serve")
    keyed = launch_server(tiny_run, KEY, "--max-upload-mb", str(MAX_UPLOAD_MB), "--max-batch", "8",
                          log=logs / "keyed.log")
    open_ = launch_server(tiny_run, None, "--insecure-local", log=logs / "open.log")
    try:
        yield {"keyed": wait_ready(*keyed, logs / "keyed.log"), "open": wait_ready(*open_, logs / "open.log")}
    finally:
        stop_server(keyed[0])
        stop_server(open_[0])


@pytest.fixture(scope="module")
def server(servers) -> str:
    return servers["keyed"]


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    return {"particles": synthetic_png("particles", 3), "fibres": synthetic_png("fibres", 4)}


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=60)


def auth(key: str = KEY) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_refuses_to_start_without_key_or_flag(tmp_path):
    # The check comes before the run is loaded, so any path will do.
    result = subprocess.run(serve_command(tmp_path, "--port", str(free_port())), env=server_env(None),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "SLAVA_API_KEY" in result.stderr and "--insecure-local" in result.stderr
    result = subprocess.run(serve_command(tmp_path, "--insecure-local", "--host", "0.0.0.0"), env=server_env(None),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "loopback" in result.stderr


def test_openai_client_chat_and_models(client, images, tiny_run):
    assert [m.id for m in client.models.list().data] == [tiny_run.name]
    url = data_url(images["particles"])
    reply = client.chat.completions.create(model=tiny_run.name, max_tokens=16,
                                           messages=image_message(url, "Describe this micrograph."))
    choice = reply.choices[0]
    assert reply.object == "chat.completion" and reply.model == tiny_run.name and reply.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant" and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert 0 < reply.usage.completion_tokens <= 16
    assert reply.usage.prompt_tokens > 10
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    # Greedy by default: the same question gets the same answer.
    again = client.chat.completions.create(model=tiny_run.name, max_tokens=16,
                                           messages=image_message(url, "Describe this micrograph."))
    assert again.choices[0].message.content == choice.message.content


def test_sampling_settings_reach_the_model(client, images):
    messages = image_message(data_url(images["particles"]), "Describe this micrograph.")
    greedy = client.chat.completions.create(model="any", max_tokens=24, messages=messages).choices[0].message.content
    # A vanishing nucleus keeps only the most likely token: sampling then equals greedy decoding,
    # while a wide nucleus at a high temperature wanders off it on an unsure tiny model.
    narrow = [client.chat.completions.create(model="any", max_tokens=24, messages=messages, temperature=1.5,
                                             top_p=1e-6).choices[0].message.content for _ in range(3)]
    wide = {client.chat.completions.create(model="any", max_tokens=24, messages=messages, temperature=2.0,
                                           top_p=1.0).choices[0].message.content for _ in range(3)}
    assert narrow == [greedy] * 3
    assert wide != {greedy}


def test_streaming_matches_the_whole_answer(client, images):
    messages = image_message(data_url(images["fibres"]), "Describe this micrograph.")
    whole = client.chat.completions.create(model="any", max_tokens=12, messages=messages)
    chunks = list(client.chat.completions.create(model="any", max_tokens=12, messages=messages, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens


def test_multi_turn_with_system_message_and_grounded_answer(server, images):
    url = data_url(images["particles"])
    messages = [
        {"role": "system", "content": "You are terse."},
        *image_message(url, "Describe this micrograph."),
        {"role": "assistant", "content": "Round particles on a flat substrate."},
        {"role": "user", "content": "How many particles are there?"},
    ]
    r = httpx.post(f"{server}/v1/chat/completions", headers=auth(), json={"messages": messages}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    # Counting questions are answered by the measurement toolkit, with its numbers.
    assert body["slava"]["source"] == "measurement" and body["slava"]["numbers"]
    assert any(ch.isdigit() for ch in body["choices"][0]["message"]["content"])


def test_missing_or_wrong_key_is_401(server, images):
    from openai import AuthenticationError, OpenAI

    for headers in ({}, auth("wrong"), {"Authorization": KEY}):
        r = httpx.get(f"{server}/v1/models", headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key" and r.json()["error"]["message"]
    r = httpx.post(f"{server}/v1/classify", json={"image": data_url(images["fibres"])})
    assert r.status_code == 401
    wrong = OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(AuthenticationError):
        wrong.chat.completions.create(model="x", messages=image_message(data_url(images["fibres"]), "Hi?"))
    # The page and the health check stay public.
    assert httpx.get(f"{server}/healthz").json()["auth_required"] is True
    assert "sLAVA" in httpx.get(f"{server}/").text


def test_oversize_uploads_are_413(server):
    limit = MAX_UPLOAD_MB * 2**20
    # Declared too big: refused from Content-Length alone.
    big = b"x" * (limit * 4 // 3 + 2**20 + 1)
    r = httpx.post(f"{server}/v1/measure", headers={**auth(), "Content-Type": "application/json"}, content=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    # Streamed without a length (chunked): refused once the cap is crossed.
    chunks = (b"x" * 2**16 for _ in range(len(big) // 2**16 + 1))
    r = httpx.post(f"{server}/v1/measure", headers={**auth(), "Content-Type": "application/json"}, content=chunks)
    assert r.status_code == 413
    # Within the body cap, but the decoded image is over the upload limit.
    r = httpx.post(f"{server}/v1/classify", headers=auth(), json={"image": data_url(os.urandom(limit + 1000))})
    assert r.status_code == 413 and "MiB" in r.json()["error"]["message"]
    r = httpx.post(f"{server}/v1/measure", headers=auth(), files={"image": ("big.png", os.urandom(limit + 1000))})
    assert r.status_code == 413


def test_non_images_are_400_with_the_reason(server, client):
    from openai import BadRequestError

    r = httpx.post(f"{server}/v1/classify", headers=auth(), json={"image": data_url(b"just some text, not pixels")})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "invalid_image" and "not an image" in error["message"]
    r = httpx.post(f"{server}/v1/measure", headers=auth(), files={"image": ("notes.txt", b"hello")})
    assert r.status_code == 400 and "notes.txt" in r.json()["error"]["message"]
    with pytest.raises(BadRequestError, match="not an image"):
        client.chat.completions.create(model="x", messages=image_message(data_url(b"%PDF-1.4 ..."), "What is it?"))


@pytest.mark.parametrize("url, reason", [
    ("http://127.0.0.1:1/secret.png", "never fetches"),
    ("https://example.com/a.png", "never fetches"),
    ("file:///etc/passwd", "never reads files"),
    ("/etc/passwd", "never reads files"),
])
def test_urls_and_paths_are_refused(server, url, reason):
    body = {"messages": image_message(url, "What is this?")}
    r = httpx.post(f"{server}/v1/chat/completions", headers=auth(), json=body)
    assert r.status_code == 400 and reason in r.json()["error"]["message"]


def test_bad_requests_are_openai_style_400(server, images):
    url = data_url(images["fibres"])
    cases = [
        {"messages": []},
        {"messages": [{"role": "user", "content": "no image here"}]},
        {"messages": image_message(url, "Hi?") + image_message(data_url(images["particles"]), "And this?")},
        {"messages": image_message(url, "Hi?"), "max_tokens": 0},
        {"messages": image_message(url, "Hi?"), "n": 2},
        {"messages": [{"role": "tool", "content": "x"}]},
    ]
    for body in cases:
        r = httpx.post(f"{server}/v1/chat/completions", headers=auth(), json=body)
        assert r.status_code == 400, body
        assert set(r.json()["error"]) >= {"message", "type", "code"}
    r = httpx.post(f"{server}/v1/chat/completions", headers={**auth(), "Content-Type": "application/json"},
                   content=b"{not json")
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]


def test_preview_crops_the_data_bar(server, images):
    from PIL import Image

    r = httpx.post(f"{server}/v1/preview", headers=auth(), json={"image": data_url(images["particles"])})
    assert r.status_code == 200, r.text
    p = r.json()
    assert p["original_size"] == [192, 192] and p["data_bar"] is not None
    assert p["width"] == 192 and p["height"] < 192
    png = Image.open(io.BytesIO(base64.b64decode(p["image"].split(",", 1)[1])))
    assert png.size == (p["width"], p["height"])


def test_classify_and_measure(server, images, tiny_run):
    labels = httpx.get(f"{server}/v1/labels", headers=auth()).json()["labels"]
    assert sorted(labels) == ["fibres", "particles", "porous_sponges"]
    r = httpx.post(f"{server}/v1/classify", headers=auth(), json={"image": data_url(images["fibres"])})
    assert r.status_code == 200, r.text
    ranked = r.json()["ranked"]
    assert r.json()["method"] == "head"  # the run's own classes: its classification head
    assert sorted(x["label"] for x in ranked) == sorted(labels)
    assert abs(sum(x["probability"] for x in ranked) - 1) < 1e-5
    assert [x["probability"] for x in ranked] == sorted((x["probability"] for x in ranked), reverse=True)
    r = httpx.post(f"{server}/v1/classify", headers=auth(), data={"labels": "grain, crack"},
                   files={"image": ("a.png", images["fibres"], "image/png")})
    assert r.status_code == 200 and {x["label"] for x in r.json()["ranked"]} == {"grain", "crack"}
    assert r.json()["method"] == "lm"  # labels the run never saw: LM scoring
    r = httpx.post(f"{server}/v1/measure", headers=auth(), json={"image": data_url(images["particles"]),
                                                                 "pixel_size_nm": 2.0})
    assert r.status_code == 200, r.text
    m = r.json()["measurements"]
    assert m["unit"] == "nm" and m["pixel_size_nm"] == 2.0 and m["particles"]["count"] > 0


def test_measure_takes_the_particle_method_and_refuses_an_unknown_one(server, images):
    from slava.io import load_micrograph_bytes
    from slava.measure import measure

    image = images["particles"]
    counts = {}
    for method in ("auto", "contrast", "threshold"):
        r = httpx.post(f"{server}/v1/measure", headers=auth(), json={"image": data_url(image), "particle_method": method})
        assert r.status_code == 200, r.text
        counts[method] = r.json()["measurements"]["particles"]["count"]
        # The server measures what the library measures with that method.
        assert counts[method] == measure(load_micrograph_bytes(image, "a.png"), particle_method=method).particles.count
    assert counts["contrast"] != counts["threshold"]
    r = httpx.post(f"{server}/v1/overlay", headers=auth(), json={"image": data_url(image), "particle_method": "contrast"})
    assert r.status_code == 200, r.text
    for route in ("measure", "overlay"):
        r = httpx.post(f"{server}/v1/{route}", headers=auth(), json={"image": data_url(image), "particle_method": "magic"})
        assert r.status_code == 400 and "particle_method" in r.text


def test_200_concurrent_requests_stay_with_their_own_image(server, images):
    urls = {name: data_url(data) for name, data in images.items()}

    def chat(http: httpx.Client, name: str) -> str:
        r = http.post("/v1/chat/completions", json={"messages": image_message(urls[name], "Describe this micrograph."),
                                                    "max_tokens": 6})
        r.raise_for_status()
        return r.json()["choices"][0]["message"]["content"]

    def classify(http: httpx.Client, name: str) -> dict:
        r = http.post("/v1/classify", json={"image": urls[name]})
        r.raise_for_status()
        return {x["label"]: x["probability"] for x in r.json()["ranked"]}

    with httpx.Client(base_url=server, headers=auth(), timeout=120,
                      limits=httpx.Limits(max_connections=16)) as http:
        expected = {(kind.__name__, name): kind(http, name) for kind in (chat, classify) for name in images}
        # The two images must answer differently, or "its own answer" would prove nothing.
        assert (expected["chat", "particles"] != expected["chat", "fibres"]
                or expected["classify", "particles"] != expected["classify", "fibres"])
        jobs = [(kind, name) for _ in range(50) for kind in (chat, classify) for name in images]
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda job: (job, job[0](http, job[1])), jobs))
    assert len(results) == 200
    for (kind, name), got in results:
        want = expected[kind.__name__, name]
        if kind is chat:
            assert got == want
        else:
            assert got.keys() == want.keys()
            assert all(abs(got[label] - want[label]) < 1e-4 for label in want)
    health = httpx.get(f"{server}/healthz").json()
    assert health["largest_batch"] > 1 and health["waiting"] == 0


def test_insecure_local_serves_without_a_key(servers, images):
    base = servers["open"]
    assert httpx.get(f"{base}/healthz").json()["auth_required"] is False
    assert httpx.get(f"{base}/v1/models").status_code == 200
    r = httpx.post(f"{base}/v1/classify", json={"image": data_url(images["particles"])})
    assert r.status_code == 200 and len(r.json()["ranked"]) == 3


def test_worker_batches_by_key_and_isolates_failures():
    import threading

    from slava.serve.batching import ModelWorker

    gate = threading.Event()
    seen: list[list] = []

    def square(payloads):
        gate.wait(10)  # hold the first batch so the rest queue up behind it
        seen.append(list(payloads))
        if any(p < 0 for p in payloads):
            raise ValueError("negative")
        return [p * p for p in payloads]

    worker = ModelWorker({"square": square}, max_batch=3)
    worker.start()
    try:
        futures = [worker.submit("square", p, key=p % 2) for p in (1, 2, 3, 5, -7, 4, 9)]
        gate.set()
        results = []
        for f in futures:
            try:
                results.append(f.result(10))
            except ValueError as exc:
                results.append(str(exc))
    finally:
        worker.close()
    assert results == [1, 4, 9, 25, "negative", 16, 81]
    assert all(len({p % 2 for p in batch}) == 1 and len(batch) <= 3 for batch in seen)
    assert worker.largest_batch == 3 and worker.waiting == 0


def test_overlay_route_draws_the_measurement(server, images):
    import numpy as np
    from PIL import Image

    r = httpx.post(f"{server}/v1/overlay", headers=auth(), json={"image": data_url(images["particles"])})
    assert r.status_code == 200, r.text
    p = r.json()
    png = np.asarray(Image.open(io.BytesIO(base64.b64decode(p["image"].split(",", 1)[1]))).convert("RGB"))
    # The whole frame as written, bar included, with the bar box drawn in blue and outlines in green.
    assert png.shape[:2] == (192, 192) and p["data_bar"] is not None
    x0, y0, x1, y1 = p["data_bar"]
    assert tuple(png[y0, x0 + 5]) == (60, 140, 255)
    assert ((png == (40, 220, 60)).all(axis=2)).sum() > 20


def test_chat_completions_carry_the_image_context_the_teacher_writes(server, tiny_run):
    """The server's prompt holds the same context line a teacher writes for the same file, and says so."""
    from slava.data.chat import split_human
    from slava.data.records import read_records, resolve_image

    records, _ = read_records(tiny_run.parent / "records.jsonl")
    rec = next(r for r in records if r["task"] == "caption")
    taught, _ = split_human(rec["conversations"][0]["value"])
    with open(resolve_image(rec, tiny_run.parent), "rb") as fh:
        url = data_url(fh.read())
    # A context line typed by the client is replaced by the measured one.
    messages = image_message(url, "Measured: 999 particles, mean 1 nm\nDescribe this micrograph.")
    r = httpx.post(f"{server}/v1/chat/completions", headers=auth(), json={"messages": messages, "max_tokens": 12},
                   timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["slava"]["source"] == "model" and body["slava"]["context"] == taught
    assert isinstance(body["slava"]["invented"], list)
    assert "999" not in body["slava"]["context"]
