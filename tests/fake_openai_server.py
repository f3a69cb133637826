"""A real OpenAI-compatible HTTP server on 127.0.0.1 for teacher tests.

It speaks ``POST /v1/chat/completions`` and ``GET /v1/models`` with bearer-key
checks and proper ``chat.completion`` JSON with usage, and plays a script of
behaviours, one per request, so tests can inject the failures real servers
produce. Everything it received is kept in ``requests``.

Behaviours: ``"ok"``, ``("429", retry_after)`` (seconds, or an HTTP-date
string), ``"500"``, ``"hang"`` (sleeps ``hang_s``, past the client timeout),
``"malformed"`` (content is not JSON), ``"wrong_schema"`` (JSON without the
asked-for keys), ``"absurd"`` (negative count, size far past the field),
``"unknown_family"``, ``"invented"`` (a caption stating a number the image context does not hold),
``"misplaced"`` (a caption stating the context's pixel size as the field's width).
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import re
import socket
import threading
import time
from collections import deque
from typing import Any, Callable

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


def good_answer(body: dict) -> dict:
    """A valid teacher answer: echoes the asked questions and copies the particles of the image context."""
    text = next(p["text"] for p in body["messages"][1]["content"] if p["type"] == "text")
    questions, context = [], ""
    for line in text.splitlines():
        if line.startswith("[{"):
            questions = json.loads(line)
        if line.startswith("Measured:"):
            context = line
    found = re.search(r"(\d+) particles?, mean ([\d.]+) nm", context)
    field = re.search(r"field ([\d.]+) nm wide", context)
    count, size = (int(found[1]), float(found[2])) if found else (None, None)
    return {
        "caption": f"Round particles scattered on a flat substrate, in a field {field[1] if field else 'of unknown'} nm wide.",
        "qa": [{**q, "answer": f"An answer about {q['family']}."} for q in questions],
        "classification": {"label": "particles"},
        "measurements": {"feature": "particles", "count": count, "mean_size_nm": size},
    }


def _bad_content(kind: str, body: dict) -> str:
    if kind == "malformed":
        return 'Sure! Here is the JSON: {"caption": "particles", "qa": ['
    if kind == "wrong_schema":
        return json.dumps({"description": "some particles", "questions": []})
    answer = good_answer(body)
    if kind == "absurd":
        answer["measurements"] = {"feature": "particles", "count": -4, "mean_size_nm": 1e12}
    elif kind == "invented":
        answer["caption"] = "Round particles, about 7777 nm across."
    elif kind == "misplaced":
        pixel = re.search(r"Measured: pixel ([\d.]+) nm", next(p["text"] for p in body["messages"][1]["content"]
                                                             if p["type"] == "text"))
        answer["caption"] = f"Round particles; the image spans {pixel[1]} nm."
    elif kind == "unknown_family":
        answer["qa"] = [{"family": "astrology", "question": "What sign?", "answer": "Leo."}]
    return json.dumps(answer)


class FakeOpenAIServer:
    """The server, run by uvicorn in a thread on a free port; use as a context manager."""

    def __init__(
        self,
        api_key: str = "sk-test",
        model: str = "fake-vlm",
        answer: Callable[[dict], dict] = good_answer,
        delay_s: float = 0.0,
        hang_s: float = 3.0,
        tokens_per_response: int = 100,
    ):
        self.api_key = api_key
        self.model = model
        self.answer = answer
        self.delay_s = delay_s
        self.hang_s = hang_s
        self.tokens_per_response = tokens_per_response
        self.script: deque = deque()
        self.requests: list[dict] = []
        self.arrivals: list[float] = []
        self.unauthorised = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        config = uvicorn.Config(self._app(), log_level="warning", timeout_graceful_shutdown=1, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def push(self, *behaviours: Any) -> None:
        """Queue behaviours for the next requests (then ``"ok"`` again)."""
        with self._lock:
            self.script.extend(behaviours)

    def images(self) -> list[str]:
        """The image data URLs of every chat request received, in order."""
        return [
            part["image_url"]["url"]
            for body in self.requests
            for msg in body["messages"]
            if isinstance(msg["content"], list)
            for part in msg["content"]
            if part["type"] == "image_url"
        ]

    def image_sizes(self) -> list[tuple[int, int]]:
        """(width, height) of each image received (first user turn of each request)."""
        from PIL import Image

        sizes = []
        for url in self.images():
            assert url.startswith("data:image/png;base64,"), url[:40]
            sizes.append(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size)
        return sizes

    def __enter__(self) -> "FakeOpenAIServer":
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake OpenAI server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    def _completion(self, content: str) -> dict:
        n = self.tokens_per_response
        return {
            "id": f"chatcmpl-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {"prompt_tokens": n - n // 4, "completion_tokens": n // 4, "total_tokens": n},
        }

    def _app(self) -> FastAPI:
        app = FastAPI()

        def authorised(request: Request) -> bool:
            ok = request.headers.get("authorization") == f"Bearer {self.api_key}"
            if not ok:
                with self._lock:
                    self.unauthorised += 1
            return ok

        def refused() -> JSONResponse:
            error = {"message": "Incorrect API key", "type": "invalid_request_error", "code": "invalid_api_key"}
            return JSONResponse({"error": error}, status_code=401)

        @app.get("/v1/models")
        async def models(request: Request):
            if not authorised(request):
                return refused()
            return {"object": "list", "data": [{"id": self.model, "object": "model", "created": 0, "owned_by": "fake"}]}

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            if not authorised(request):
                return refused()
            body = await request.json()
            with self._lock:
                self.requests.append(body)
                self.arrivals.append(time.monotonic())
                behaviour = self.script.popleft() if self.script else "ok"
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                return await self._respond(behaviour, body)
            finally:
                with self._lock:
                    self.in_flight -= 1

        return app

    async def _respond(self, behaviour: Any, body: dict) -> Any:
        kind, arg = behaviour if isinstance(behaviour, tuple) else (behaviour, None)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if kind == "429":
            error = {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}
            return JSONResponse({"error": error}, status_code=429, headers={"Retry-After": str(arg)})
        if kind == "500":
            return JSONResponse({"error": {"message": "internal error", "type": "server_error"}}, status_code=500)
        if kind == "hang":
            # Sleep in steps so stopping the server does not wait for (or cancel) a hang.
            until = time.monotonic() + self.hang_s
            while time.monotonic() < until and not self._server.should_exit:
                await asyncio.sleep(0.05)
        if kind in ("ok", "hang"):
            return self._completion(json.dumps(self.answer(body)))
        return self._completion(_bad_content(kind, body))
