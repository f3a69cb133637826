"""``POST /v1/chat/completions`` and ``GET /v1/models`` in the OpenAI wire format.

OpenAI messages map onto the chat template's turns: ``user`` → human,
``assistant`` → gpt, consecutive messages of one role joined; ``system`` and
``developer`` messages are accepted and ignored, because the model was trained
under the one system prompt of ``slava.data.chat``. The conversation carries
exactly one micrograph, as an ``image_url`` data URL in any user message; it
goes in front of the first user turn, where training put it.

Omitting ``temperature`` (or 0) decodes greedily, so answers are repeatable;
``temperature`` > 0 samples from the top-p nucleus. The answer is computed
whole and then streamed as chunks when ``stream`` is true.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Sequence

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from slava.data.chat import IMAGE_TOKEN, encode
from slava.io import Micrograph
from slava.serve.inputs import ApiError, decode_base64_image, finite, header_pixels, read_json, to_micrograph
from slava.serve.limits import run_while_connected

router = APIRouter()

DEFAULT_MAX_TOKENS = 128
MAX_MAX_TOKENS = 4096
MAX_STOP_SEQUENCES = 4
ROLES = {"user": "human", "assistant": "gpt"}
IGNORED_ROLES = ("system", "developer")


@dataclass
class ChatCall:
    """One chat request as the worker runs it."""

    image: Micrograph
    turns: list[dict]
    max_tokens: int
    strategy: str
    top_p: float
    temperature: float
    cancel: threading.Event = field(default_factory=threading.Event)
    """Set when the client disconnected: generation stops at the next token."""


@dataclass
class ChatResult:
    """The Assistant's answer with the token counts usage reports."""

    answer: Any
    prompt_tokens: int
    completion_tokens: int
    max_tokens: int


def answer_chat(assistant, call: ChatCall) -> ChatResult:
    """Run one chat call on the worker thread: count the prompt, fit the context, generate."""
    from slava.model.generate import GenerationConfig

    from slava.assistant.assistant import with_context

    tokenizer, model = assistant.tokenizer, assistant.model
    # The prompt the model will see: the image's context line in its turn, as in training.
    micrograph = assistant.prepare(call.image)
    image_context = assistant.context(micrograph)
    tag = assistant.tag(micrograph)
    turns = with_context(call.turns, image_context, tag)
    prompt, _ = encode(turns, tokenizer, model.num_image_tokens, add_generation_prompt=True)
    context = int(model.cfg.lm.max_len)
    if len(prompt) >= context:
        raise ApiError(400, f"the conversation is {len(prompt)} tokens with the image; this model's context is "
                       f"{context} tokens: shorten the history", code="context_length_exceeded", param="messages")
    # As with OpenAI, max_tokens is an upper bound: the reply stops where the context ends.
    max_tokens = min(call.max_tokens, context - len(prompt))
    config = GenerationConfig(max_new_tokens=max_tokens, strategy=call.strategy, top_p=call.top_p,
                              temperature=call.temperature)
    answer = assistant.chat(micrograph, call.turns, config, should_stop=call.cancel.is_set, context=image_context,
                            tag=tag)
    completion = answer.tokens if answer.source == "model" else len(tokenizer.encode(answer.text))
    return ChatResult(answer, len(prompt), completion, max_tokens)


def _text_of(content: Any, role: str, index: int, images: list[str]) -> str:
    """The text of one message's content; image parts are appended to ``images``."""
    where = f"messages[{index}]"
    if isinstance(content, str):
        return content
    if content is None:
        raise ApiError(400, f"{where} ({role}) has no content", param="messages")
    if not isinstance(content, list):
        raise ApiError(400, f"{where}.content must be a string or a list of parts", param="messages")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url" and role == "user":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str):
                raise ApiError(400, f"{where}.content[{j}].image_url needs a 'url' string", param="messages")
            images.append(url)
        else:
            raise ApiError(400, f"{where}.content[{j}] of type {kind!r} is not supported here (text parts, and "
                           "image_url parts in user messages)", param="messages")
    return "\n".join(texts)


def messages_to_turns(messages: Any) -> tuple[list[dict], list[str]]:
    """Template turns (the image placeholder on the first) and the image URLs of OpenAI ``messages``."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", param="messages")
    turns: list[dict] = []
    images: list[str] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ApiError(400, f"messages[{i}] must be an object", param="messages")
        role = message.get("role")
        if role in IGNORED_ROLES:
            _text_of(message.get("content"), role, i, [])
            continue
        if role not in ROLES:
            raise ApiError(400, f"messages[{i}] has role {role!r}; supported: user, assistant, system",
                           param="messages")
        # A client's literal placeholder would claim image slots the request has no image for.
        text = _text_of(message.get("content"), role, i, images).replace(IMAGE_TOKEN, " ").strip()
        speaker = ROLES[role]
        if turns and turns[-1]["from"] == speaker:
            turns[-1]["value"] = f"{turns[-1]['value']}\n{text}".strip()
        else:
            turns.append({"from": speaker, "value": text})
    if not turns or turns[0]["from"] != "human":
        raise ApiError(400, "the conversation must start with a user message (after any system messages)",
                       param="messages")
    if turns[-1]["from"] != "human":
        raise ApiError(400, "the last message must be from the user", param="messages")
    if not turns[-1]["value"]:
        raise ApiError(400, "the last user message has no text: ask a question", param="messages")
    turns[0]["value"] = f"{IMAGE_TOKEN}\n{turns[0]['value']}"
    return turns, images


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ApiError(400, f"{name} must be a number in [{low}, {high}]", param=name)
    return float(value)


def _options(body: dict) -> tuple[int, str, float, float, list[str], bool, bool]:
    """(max_tokens, strategy, top_p, temperature, stop sequences, stream, include_usage) of a request body."""
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_MAX_TOKENS:
        raise ApiError(400, f"max_tokens must be an integer in [1, {MAX_MAX_TOKENS}]", param="max_tokens")
    temperature = _number(body, "temperature", 0.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if body.get("n", 1) != 1:
        raise ApiError(400, "only n=1 is supported", param="n")
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else (stop or [])
    if not isinstance(stop, list) or len(stop) > MAX_STOP_SEQUENCES or not all(isinstance(s, str) and s for s in stop):
        raise ApiError(400, f"stop must be a string or a list of at most {MAX_STOP_SEQUENCES} strings", param="stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be a boolean", param="stream")
    stream_options = body.get("stream_options") or {}
    include_usage = bool(isinstance(stream_options, dict) and stream_options.get("include_usage"))
    strategy = "top_p" if temperature > 0 and top_p > 0 else "greedy"
    return max_tokens, strategy, top_p, temperature, stop, stream, include_usage


def _apply_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` cut before the first stop sequence; whether one was found."""
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


def _chunk(base: dict, delta: dict, finish_reason: str | None = None) -> str:
    body = {**base, "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
    return f"data: {json.dumps(body)}\n\n"


def _stream(base: dict, text: str, finish_reason: str, usage: dict | None):
    yield _chunk(base, {"role": "assistant", "content": ""})
    # The answer is already whole; word-sized chunks let clients render it as it "arrives".
    for piece in re.findall(r"\s*\S+", text) or [text]:
        yield _chunk(base, {"content": piece})
    yield _chunk(base, {}, finish_reason)
    if usage is not None:
        yield f"data: {json.dumps({**base, 'object': 'chat.completion.chunk', 'choices': [], 'usage': usage})}\n\n"
    yield "data: [DONE]\n\n"


@router.post("/v1/chat/completions")
async def chat_completions(request: Request):
    """Answer the last user message about the conversation's micrograph."""
    state = request.app.state
    body = await read_json(request)
    turns, urls = messages_to_turns(body.get("messages"))
    max_tokens, strategy, top_p, temperature, stop, stream, include_usage = _options(body)
    if not urls:
        raise ApiError(400, "no image: add the micrograph as an image_url part (a data URL) to a user message",
                       code="missing_image", param="messages")
    if len(set(urls)) > 1:
        raise ApiError(400, f"{len(set(urls))} different images: the model reads one micrograph per conversation",
                       code="too_many_images", param="messages")
    data = decode_base64_image(urls[0], state.max_upload_bytes, param="image_url", allow_bare=False)
    async with state.pixel_budget.hold(header_pixels(data)):
        micrograph = await to_micrograph(data)
        call = ChatCall(micrograph, turns, max_tokens, strategy, top_p, temperature)
        result = await run_while_connected(request.receive, state.worker, "chat", call, cancel=call.cancel)
    answer = result.answer
    text, stopped = _apply_stop(answer.text, stop)
    finish_reason = "stop" if stopped else answer.finish_reason
    usage = {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
             "total_tokens": result.prompt_tokens + result.completion_tokens}
    base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": state.model_name,
            "system_fingerprint": None}
    if stream:
        return StreamingResponse(_stream(base, text, finish_reason, usage if include_usage else None),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return {
        **base,
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                     "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage,
        # Extra, ignored by OpenAI clients: whether the toolkit measured the answer, and its numbers.
        "slava": finite({"source": answer.source, "numbers": answer.numbers, "latency_s": answer.latency_s,
                         "invented": list(answer.invented), "misplaced": list(answer.misplaced),
                         "context": answer.context}),
    }


@router.get("/v1/models")
async def list_models(request: Request):
    """The one model this server serves: the run."""
    state = request.app.state
    return {"object": "list", "data": [{"id": state.model_name, "object": "model", "created": state.created,
                                        "owned_by": "slava"}]}
