"""The server under misuse (issue 14): huge-header uploads, abandoned clients, cross-site requests to a
keyless server, deeply nested JSON, and a bounded soak of 200 mixed concurrent requests. One real
`slava serve --insecure-local` subprocess on 127.0.0.1 serves the tiny trained run."""

from __future__ import annotations

import io
import json
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from test_serve import data_url, image_message, start_server, stop_server, synthetic_png

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="peak RSS is read from Linux /proc")

PEAK_RSS_BOUND_MB = 1500
"""Stated bound on the server's peak RSS through every test here. Before issue 14, one /v1/measure of
the 9,500² PNG peaked at 2.2 GB and four at once at 7.1 GB."""
PIXEL_BUDGET_MP = 100


def huge_png(side: int = 9500) -> bytes:
    """An 88 KB PNG whose header claims side² pixels (under the 100 M pixel limit)."""
    a = np.zeros((side, side), np.uint8)
    a[::50] = 255
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


@pytest.fixture(scope="module")
def served(tiny_run, tmp_path_factory):
    run = tiny_run
    log = tmp_path_factory.mktemp("serve_limits") / "server.log"
    proc, base = start_server(run, None, "--insecure-local", "--max-megapixels-in-flight", str(PIXEL_BUDGET_MP),
                              log=log)
    try:
        yield proc, base
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def big() -> bytes:
    return huge_png()


def discs_png(seed: int, side: int = 128) -> bytes:
    """A small grainy PNG with bright discs and no data bar (cheap to decode: no scale bar to read)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side]
    img = rng.normal(60, 8, (side, side))
    for _ in range(4 + 3 * seed):
        cy, cx = rng.integers(8, side - 8, 2)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < rng.integers(9, 40)] = 200
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def small() -> dict[str, bytes]:
    return {"particles": synthetic_png("particles", 3), "fibres": discs_png(1), "dots": discs_png(2)}


def health(base: str) -> dict:
    return httpx.get(f"{base}/healthz", timeout=30).json()


def wait_for(predicate, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def raw_post(base: str, path: str, body: dict) -> socket.socket:
    """Send a whole JSON POST on a bare socket and return it unread (the caller abandons it)."""
    host, port = base.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)))
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    return sock


def test_huge_header_uploads_are_measured_within_bounded_memory(served, big):
    proc, base = served
    assert len(big) < 200_000
    url = data_url(big)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: httpx.post(f"{base}/v1/measure", json={"image": url}, timeout=300), range(4)))
    assert [r.status_code for r in answers] == [200] * 4
    m = answers[0].json()["measurements"]
    assert m["width_px"] == m["height_px"] == -(-9500 // 3)  # read reduced 3x
    state = health(base)
    # Each claims 90 M pixels of a 100 M budget, so they ran one at a time.
    assert state["peak_pixels_in_flight"] <= PIXEL_BUDGET_MP * 1_000_000 and state["pixels_in_flight"] == 0
    assert peak_rss_mb(proc.pid) < PEAK_RSS_BOUND_MB


def test_deeply_nested_json_is_400(served):
    _, base = served
    for path in ("/v1/chat/completions", "/v1/measure"):
        r = httpx.post(f"{base}{path}", content=b"[" * 100_000, headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and "nested too deeply" in r.json()["error"]["message"]


def test_keyless_server_refuses_cross_site_requests(served, small):
    _, base = served
    port = base.rsplit(":", 1)[1]
    body = json.dumps({"image": data_url(small["particles"])})
    cases = [
        ({"Host": f"evil.example:{port}", "Content-Type": "application/json"}, 403, "forbidden_host"),
        ({"Host": f"127.0.0.1:{int(port) + 1}", "Content-Type": "application/json"}, 403, "forbidden_host"),
        ({"Origin": "http://evil.example", "Content-Type": "application/json"}, 403, "forbidden_origin"),
        ({"Origin": "null", "Content-Type": "application/json"}, 403, "forbidden_origin"),
        ({"Content-Type": "text/plain"}, 415, "unsupported_content_type"),
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "unsupported_content_type"),
    ]
    for headers, status, code in cases:
        r = httpx.post(f"{base}/v1/classify", content=body, headers=headers)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), headers
    # Its own page's requests (same origin, JSON) and the other loopback names are served.
    for headers in ({"Origin": base}, {"Host": f"localhost:{port}"}, {}):
        r = httpx.post(f"{base}/v1/classify", content=body, headers={"Content-Type": "application/json", **headers})
        assert r.status_code == 200, headers
    assert httpx.get(f"{base}/", headers={"Host": f"evil.example:{port}"}).status_code == 403


def noise_png(seed: int, side: int = 1024) -> bytes:
    """A grainy 1024² PNG: a measurement that keeps the model worker busy for a while."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray((rng.random((side, side)) * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_abandoned_requests_are_dropped_not_computed(served, small):
    _, base = served
    before = health(base)
    # A backlog of measurements keeps the model worker busy while the abandoned chats queue behind it.
    backlog = [data_url(noise_png(i)) for i in range(10)]
    with ThreadPoolExecutor(10) as pool:
        busy = [pool.submit(httpx.post, f"{base}/v1/measure", json={"image": url}, timeout=300) for url in backlog]
        wait_for(lambda: health(base)["submitted"] - before["submitted"] >= 10, "the backlog to reach the worker")
        chat = {"messages": image_message(data_url(small["fibres"]), "Describe this micrograph."), "max_tokens": 400}
        socks = [raw_post(base, "/v1/chat/completions", chat) for _ in range(20)]
        wait_for(lambda: health(base)["submitted"] - before["submitted"] >= 30, "the 20 chats to be queued")
        queued = health(base)
        for sock in socks:
            sock.close()
        assert all(f.result().status_code == 200 for f in busy)
    state = wait_for(lambda: (s := health(base))["waiting"] == 0 and s, "the queue to drain")
    # Every chat was still queued when its client left (the backlog was not done), and none was computed.
    assert queued["batches"] - before["batches"] < 10 and state["dropped"] - before["dropped"] == 20
    r = httpx.post(f"{base}/v1/chat/completions", timeout=60,
                   json={"messages": image_message(data_url(small["fibres"]), "Describe this micrograph."),
                         "max_tokens": 8})
    assert r.status_code == 200


def test_soak_200_mixed_concurrent_requests(served, big, small):
    """200 concurrent requests: chats, classify, measure and previews of three images, four previews and
    measures of the huge-header image, and 20 clients that send a chat and leave. Every answer that has a
    client must come back right (equal to the same request made alone); then the server is idle again."""
    proc, base = served
    urls = {name: data_url(data) for name, data in small.items() if name != "particles"}
    big_url = data_url(big)

    def call(http: httpx.Client, kind: str, name: str):
        url = big_url if name == "big" else urls[name]
        if kind == "chat":
            r = http.post("/v1/chat/completions", json={"messages": image_message(url, "Describe this micrograph."),
                                                        "max_tokens": 8})
            r.raise_for_status()
            return r.json()["choices"][0]["message"]["content"]
        if kind == "classify":
            r = http.post("/v1/classify", json={"image": url})
            r.raise_for_status()
            return tuple((x["label"], round(x["probability"], 4)) for x in r.json()["ranked"])
        r = http.post(f"/v1/{kind}", json={"image": url})
        r.raise_for_status()
        body = r.json()
        return body["sha256"] if kind == "preview" else json.dumps(body["measurements"], sort_keys=True)

    kinds = [(kind, name) for kind in ("chat", "classify", "measure", "preview") for name in urls]
    with httpx.Client(base_url=base, timeout=300, limits=httpx.Limits(max_connections=200)) as http:
        expected = {job: call(http, *job) for job in kinds + [("measure", "big"), ("preview", "big")]}
        jobs = [kinds[i % len(kinds)] for i in range(176)] + [("measure", "big"), ("preview", "big")] * 2
        abandoned_chat = {"messages": image_message(urls["dots"], "Describe this micrograph."), "max_tokens": 400}
        failures: list = []

        def one(job):
            try:
                return job, call(http, *job)
            except Exception as exc:  # noqa: BLE001 - counted, and shown if any
                failures.append((job, repr(exc)))
                return job, None

        with ThreadPoolExecutor(180) as pool:
            futures = [pool.submit(one, job) for job in jobs]
            socks = [raw_post(base, "/v1/chat/completions", abandoned_chat) for _ in range(20)]
            for sock in socks:
                sock.close()
            results = [f.result(timeout=300) for f in futures]
    assert len(jobs) + len(socks) == 200
    assert failures == []
    lost = [job for job, got in results if got != expected[job]]
    assert lost == []
    state = wait_for(lambda: (s := health(base))["waiting"] == 0 and s["pixels_in_flight"] == 0 and s,
                     "the queue to drain")
    assert state["waiting"] == 0 and state["pixels_in_flight"] == 0
    peak = peak_rss_mb(proc.pid)
    print(f"soak: peak server RSS {peak:.0f} MB (bound {PEAK_RSS_BOUND_MB}), dropped {state['dropped']}, "
          f"largest batch {state['largest_batch']}")
    assert peak < PEAK_RSS_BOUND_MB
