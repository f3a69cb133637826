"""The OpenAI-compatible teacher: one chat-completions request per micrograph.

Works with any server speaking ``POST {base_url}/chat/completions`` with image
inputs (cloud GPT-4-class models, vLLM, Ollama, LM Studio). The micrograph,
data bar already cropped, goes as a PNG data URL; the answer comes back as one
JSON object holding a caption, question answers, a class and a count/size,
which is validated, repaired once when invalid, and turned into LLaVA records.

The request carries the image context (``slava.measure.context``) with the
instruction to state no other number, and the records carry it in their
human turn, as the analytic teacher's do. A reply stating a number that is in
neither the context nor its question is invalid like any other garbage: it
gets the repair round, then goes to the rejects file with the numbers named.

Transport failures (429, 5xx, timeouts) are retried with exponential backoff
and jitter, honouring ``Retry-After``; a token budget stops new work cleanly.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import io
import json
import math
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import httpx
import numpy as np

from slava.data.chat import user_turn
from slava.data.numbers import format_number, invented_numbers, misplaced_numbers
from slava.data.records import FAMILIES, TASKS, validate_record
from slava.errors import SlavaError
from slava.measure import MeasureError
from slava.measure.context import Context, micrograph_context
from slava.teacher import prompts
from slava.teacher.phrasing import Numbers
from slava.teacher.runner import TeachResult, make_cache_key

DEFAULT_BASE_URL = "https://api.openai.com/v1"
# Which shared measuring questions a count and a mean size answer, per kind of feature.
FEATURE_KINDS = {
    "particles": ("particle_count", "mean_diameter", "particles", "mean particle diameter"),
    "fibres": ("fibre_count", "mean_width", "fibres", "mean fibre width"),
    "pores": (None, "mean_pore_size", "pores", "mean pore size"),
}
# Families with their own task; the rest are what a VQA question may be about.
_TASK_FAMILIES = {"caption", "classification", "measurement"}
_MAX_RAW_CHARS = 2000

SYSTEM_TEXT = (
    "You are an expert electron microscopist writing training data for a small "
    "assistant that reads SEM and TEM micrographs of materials. Describe only what "
    "is visible; give lengths in nm. State no number that is not in the image context "
    "or in the question. Reply with one JSON object and nothing else."
)


class TeacherError(SlavaError):
    """The teacher server cannot be used at all (no model set, key refused, model unknown)."""


class TransportError(Exception):
    """A request failed for good; ``retryable`` says whether a later run may try again."""

    def __init__(self, reason: str, retryable: bool):
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


@dataclass
class OpenAITeacherConfig:
    """Where the teacher lives and how hard to push it."""

    base_url: str | None = None
    """Server root ending in ``/v1``; default ``$SLAVA_TEACHER_BASE_URL``, ``$OPENAI_BASE_URL``, then OpenAI's."""
    model: str | None = None
    """Model name; default ``$SLAVA_TEACHER_MODEL``."""
    api_key_env: str | None = None
    """Environment variable holding the key; default ``SLAVA_TEACHER_API_KEY`` then ``OPENAI_API_KEY``.
    No key at all is fine for local servers (no Authorization header is sent)."""
    timeout_s: float = 120.0
    """Per-request timeout; a request past it counts as a retryable failure."""
    max_retries: int = 5
    """Retries of one request after 429, 5xx, timeouts and connection errors."""
    concurrency: int = 4
    """Requests in flight at once."""
    max_tokens_budget: int | None = None
    """Stop starting new images once the summed ``usage.total_tokens`` reaches this."""
    temperature: float = 0.2
    backoff_base_s: float = 1.0
    """First retry waits about this long; each further retry doubles it (with jitter)."""
    backoff_max_s: float = 60.0
    """Cap on one wait, ``Retry-After`` included."""
    max_answer_tokens: int = 1024
    """``max_tokens`` of each completion."""
    image_max_side: int = 1024
    """Longer image side sent, in pixels; larger micrographs are downscaled."""
    json_mode: bool = True
    """Send ``response_format: {"type": "json_object"}``; turn off for servers that refuse it."""


@dataclass(frozen=True)
class Endpoint:
    """A resolved server: URL of the chat-completions route, model, key (or None)."""

    url: str
    model: str
    api_key: str | None


def resolve_endpoint(config: OpenAITeacherConfig, environ: Mapping[str, str] | None = None) -> Endpoint:
    """The server, model and key from ``config``, falling back to the environment."""
    env = os.environ if environ is None else environ
    base = config.base_url or env.get("SLAVA_TEACHER_BASE_URL") or env.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
    model = config.model or env.get("SLAVA_TEACHER_MODEL")
    if not model:
        raise TeacherError("no teacher model: set SLAVA_TEACHER_MODEL (or pass --model)")
    if config.api_key_env:
        key = env.get(config.api_key_env)
    else:
        key = env.get("SLAVA_TEACHER_API_KEY") or env.get("OPENAI_API_KEY")
    return Endpoint(url=base.rstrip("/") + "/chat/completions", model=model, api_key=key or None)


def encode_image(pixels: np.ndarray, max_side: int = 1024) -> str:
    """A grey image in [0, 1] as a PNG data URL, its longer side at most ``max_side``."""
    from PIL import Image

    grey = np.clip(np.asarray(pixels, dtype=np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    image = Image.fromarray(grey, mode="L")
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _strip_fences(text: str) -> str:
    # Local models often wrap JSON in a markdown fence despite json mode.
    text = text.strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
        if text.rstrip().endswith("```"):
            text = text.rstrip()[:-3]
    return text.strip()


def _nonempty(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) or math.isfinite(value)


def validate_answer(
    content: str | None,
    want: Sequence[str],
    labels: Sequence[str] = (),
    field_width_nm: float | None = None,
    max_count: int | None = None,
) -> tuple[dict | None, str | None]:
    """The teacher's answer as a checked dict, or None and what is wrong with it.

    ``want`` names the parts asked for: "caption", "qa", "classification",
    "measurements". Absurd values (negative counts, sizes ≤ 0 or wider than
    the field, unknown families or labels, empty strings) make it invalid.
    """
    if not _nonempty(content):
        return None, "empty answer"
    try:
        answer = json.loads(_strip_fences(content))
    except json.JSONDecodeError as exc:
        return None, f"answer is not valid JSON ({exc.msg} at char {exc.pos})"
    if not isinstance(answer, dict):
        return None, "answer is not a JSON object"
    out: dict = {}
    if "caption" in want:
        if not _nonempty(answer.get("caption")):
            return None, "'caption' missing or empty"
        out["caption"] = answer["caption"].strip()
    if "qa" in want:
        qa = answer.get("qa")
        if not isinstance(qa, list) or not qa:
            return None, "'qa' missing or not a non-empty list"
        items = []
        for i, item in enumerate(qa):
            if not isinstance(item, dict):
                return None, f"qa[{i}] is not an object"
            if item.get("family") not in FAMILIES:
                return None, f"qa[{i}] has unknown family {item.get('family')!r}"
            for key in ("question", "answer"):
                if not _nonempty(item.get(key)):
                    return None, f"qa[{i}].{key} missing or empty"
            items.append({k: item[k].strip() for k in ("family", "question", "answer")})
        out["qa"] = items
    if "classification" in want:
        cls = answer.get("classification")
        label = cls.get("label") if isinstance(cls, dict) else None
        said = label.strip().lower() if isinstance(label, str) else None
        # Models answer with the id or the human name the prompt listed; both count.
        matches = [l for l in labels if said in (l.lower(), prompts.label_name(l).lower())]
        if not matches:
            return None, f"classification label {label!r} is not one of {list(labels)}"
        out["classification"] = {"label": matches[0]}
    if "measurements" in want:
        m = answer.get("measurements")
        if not isinstance(m, dict):
            return None, "'measurements' missing or not an object"
        feature, count, size = m.get("feature"), m.get("count"), m.get("mean_size_nm")
        if feature not in (*FEATURE_KINDS, "none"):
            return None, f"measurements.feature {feature!r} is not one of {[*FEATURE_KINDS, 'none']}"
        if count is not None:
            if not _number(count) or (isinstance(count, float) and not count.is_integer()):
                return None, f"measurements.count {count!r} is not an integer"
            count = int(count)
            if count < 0:
                return None, f"measurements.count {count} is below zero"
            if max_count is not None and count > max_count:
                return None, f"measurements.count {count} exceeds the pixels in the image"
        if size is not None:
            if not _number(size):
                return None, f"measurements.mean_size_nm {size!r} is not a number"
            if size <= 0:
                return None, f"measurements.mean_size_nm {size} is not positive"
            if field_width_nm is not None and size > field_width_nm:
                return None, f"measurements.mean_size_nm {size} exceeds the field width {field_width_nm:.4g} nm"
        size = None if size is None else float(size)
        out["measurements"] = {"feature": feature, "count": count, "mean_size_nm": size}
    return out, None


def ungrounded(answer: dict, context: Context) -> str | None:
    """Why a validated answer states numbers the image context and its question do not hold, or holds as
    another quantity (None when it does neither)."""
    stated = []
    if "caption" in answer:
        stated.append(("caption", answer["caption"], prompts.CAPTION_PROMPT))
    for item in answer.get("qa", []):
        stated.append((f"the {item['family']} answer", item["answer"], item["question"]))
    m = answer.get("measurements") or {}
    for name in ("count", "mean_size_nm"):
        if m.get(name) is not None:
            stated.append((f"measurements.{name}", format_number(m[name]), ""))
    problems = [f"{where} states {', '.join(found)}" for where, text, question in stated
                if (found := invented_numbers(text, context.text, question))]
    if problems:
        return "numbers not in the image context: " + "; ".join(problems)
    problems = [f"{where} states {', '.join(found)}" for where, text, question in stated
                if (found := misplaced_numbers(text, context.text, question))]
    return "numbers the image context gives as another quantity: " + "; ".join(problems) if problems else None


def _measure_pairs(m: dict, rng: random.Random) -> list[tuple[str, str, dict]]:
    """(question, answer, numbers) for each measurement stated, in the shared wordings."""
    if m["feature"] not in FEATURE_KINDS:
        return []
    count_kind, size_kind, noun, size_name = FEATURE_KINDS[m["feature"]]
    pairs = []
    if count_kind and m["count"] is not None:
        numbers = Numbers()
        text = f"{numbers.say(count_kind, m['count'])} {noun} are visible."
        pairs.append((rng.choice(prompts.MEASURE_QUESTIONS[count_kind]), text, numbers.values))
    if m["mean_size_nm"] is not None:
        numbers = Numbers()
        text = f"The {size_name} is about {numbers.say(size_kind, m['mean_size_nm'])} nm."
        pairs.append((rng.choice(prompts.MEASURE_QUESTIONS[size_kind]), text, numbers.values))
    return pairs


class OpenAITeacher:
    """Writes instruction records by asking an OpenAI-compatible vision model.

    Use as an async context manager (it owns the HTTP connection pool) and
    call :meth:`teach` per image; :func:`slava.teacher.runner.run_teacher`
    does both.
    """

    def __init__(
        self,
        config: OpenAITeacherConfig | None = None,
        tasks: Sequence[str] | None = None,
        per_image: int = 3,
        labels: Sequence[str] | None = None,
        no_label_leak: bool = False,
        seed: int = 0,
        environ: Mapping[str, str] | None = None,
    ):
        self.config = config or OpenAITeacherConfig()
        self.endpoint = resolve_endpoint(self.config, environ)
        self.tasks = tuple(tasks or TASKS)
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise TeacherError(f"unknown task(s) {unknown} (known: {', '.join(TASKS)})")
        self.per_image = per_image
        self.labels = list(labels) if labels else None
        self.no_label_leak = no_label_leak
        self.seed = seed
        self.source = f"openai:{self.endpoint.model}"
        self.concurrency = max(1, self.config.concurrency)
        self.tokens_used = 0
        self._client: httpx.AsyncClient | None = None
        self._vqa_families = [f for f in FAMILIES if f not in _TASK_FAMILIES and prompts.QUESTIONS.get(f)]
        digest = hashlib.sha256(
            json.dumps(
                [SYSTEM_TEXT, prompts.CAPTION_PROMPTS, prompts.QUESTIONS, prompts.MEASURE_QUESTIONS, FEATURE_KINDS],
                sort_keys=True,
            ).encode()
        )
        self.prompt_version = "openai-v2-" + digest.hexdigest()[:8]

    def prepare(self, entries: Sequence[Any]) -> None:
        """Take the class labels from the data when none were given."""
        if self.labels is None:
            self.labels = sorted({e.label for e in entries if e.label}) or None

    def cache_key(self, entry: Any) -> str:
        """Identifies this image's work: image bytes, prompts, model and task settings."""
        settings = {
            "tasks": self.tasks,
            "per_image": self.per_image,
            "labels": self.labels,
            "no_label_leak": self.no_label_leak,
            "seed": self.seed,
        }
        return make_cache_key(entry.sha256, self.prompt_version, self.source, settings)

    @property
    def budget_exhausted(self) -> bool:
        """True once the token budget is spent: start no new images."""
        budget = self.config.max_tokens_budget
        return budget is not None and self.tokens_used >= budget

    async def __aenter__(self) -> "OpenAITeacher":
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.config.timeout_s), limits=limits)
        return self

    async def __aexit__(self, *exc) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _plan(self, entry: Any, rng: random.Random) -> tuple[list[str], list[dict]]:
        """What to ask about this image: answer parts wanted, and the VQA questions."""
        want = []
        if "caption" in self.tasks:
            want.append("caption")
        questions: list[dict] = []
        if "vqa" in self.tasks and self.per_image > 0 and self._vqa_families:
            families = rng.sample(self._vqa_families, min(self.per_image, len(self._vqa_families)))
            questions = [{"family": f, "question": rng.choice(prompts.QUESTIONS[f])} for f in families]
            want.append("qa")
        if "classify" in self.tasks and self.labels and not self._truth(entry):
            want.append("classification")
        if "measure" in self.tasks:
            want.append("measurements")
        return want, questions

    def _truth(self, entry: Any) -> str | None:
        return entry.label if self.labels and entry.label in self.labels else None

    def _prompt(self, entry: Any, context: Context, want: list[str], questions: list[dict]) -> str:
        schema: dict[str, Any] = {}
        lines = [
            "The image is an electron micrograph. Image context, measured by image analysis and read from the "
            "data bar (lengths in nm where calibrated, else px):",
            context.text,
            "Every number you state must be one of the image context's numbers, written as it is written there, "
            "or a number of the question.",
        ]
        if entry.label and not self.no_label_leak:
            lines.append(f"The sample is known to be: {entry.label}.")
        if "caption" in want:
            schema["caption"] = "string"
            lines.append(f'"caption": {prompts.CAPTION_PROMPT}')
        if "qa" in want:
            schema["qa"] = [{"family": "string, copied from the question", "question": "string", "answer": "string"}]
            lines.append('"qa": answer each question below; keep its "family" and "question" as given.')
            lines.append(json.dumps(questions, ensure_ascii=False))
        if "classification" in want:
            schema["classification"] = {"label": f"one of {json.dumps(self.labels)}"}
            lines.append(f'"classification": {prompts.CLASSIFY_PROMPT(self.labels)}')
        if "measurements" in want:
            schema["measurements"] = {
                "feature": f"one of {json.dumps([*FEATURE_KINDS, 'none'])}",
                "count": "integer or null",
                "mean_size_nm": "number or null",
            }
            lines.append(
                '"measurements": name the main kind of feature and copy its count and mean size (diameter, width '
                "or pore size) in nm from the image context; use null for what the context does not give."
            )
        lines.append("Reply with only a JSON object of this shape: " + json.dumps(schema, ensure_ascii=False))
        return "\n".join(lines)

    async def teach(self, entry: Any, micrograph: Any, key: str) -> TeachResult:
        """Records for one image, or a reject with its reason.

        Raises :class:`TeacherError` when the server refuses the key or the
        model, since no other image can succeed either.
        """
        # Seeded by the image so a rerun asks exactly the same questions.
        rng = random.Random(f"{self.seed}:{entry.sha256}")
        want, questions = self._plan(entry, rng)
        if not want:
            return TeachResult(records=[], reject="no task applies to this image", retryable=False)
        image_url = await asyncio.to_thread(encode_image, micrograph.pixels, self.config.image_max_side)
        try:
            context = await asyncio.to_thread(micrograph_context, micrograph)
        except MeasureError as exc:
            return TeachResult(records=[], reject=f"unusable image: {exc}", retryable=False)
        messages: list[dict] = [
            {"role": "system", "content": SYSTEM_TEXT},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": self._prompt(entry, context, want, questions)},
                    {"type": "image_url", "image_url": {"url": image_url}},
                ],
            },
        ]
        field_width = micrograph.pixels.shape[1] * micrograph.pixel_size_nm if micrograph.pixel_size_nm else None
        max_count = int(micrograph.pixels.size)
        reason = ""
        content: str | None = None
        spent = 0
        for attempt in range(2):
            try:
                content, tokens = await self._complete(messages)
            except TransportError as exc:
                return TeachResult(records=[], reject=exc.reason, retryable=exc.retryable, tokens=spent)
            self.tokens_used += tokens
            spent += tokens
            answer, reason = validate_answer(content, want, self.labels or (), field_width, max_count)
            if answer is not None:
                reason = ungrounded(answer, context)
                answer = None if reason else answer
            if answer is not None:
                records, problem = self._records(entry, key, answer, rng, context)
                if problem is None:
                    return TeachResult(records=records, tokens=spent)
                reason = problem
            if attempt == 0:
                # One repair round: show the model its answer and what was wrong with it.
                messages = messages + [
                    {"role": "assistant", "content": content or ""},
                    {
                        "role": "user",
                        "content": f"That answer is invalid: {reason}. "
                        "Reply again with only the corrected JSON object.",
                    },
                ]
        raw = (content or "")[:_MAX_RAW_CHARS]
        return TeachResult(
            records=[], reject=f"invalid answer after repair: {reason}", retryable=False, tokens=spent, raw=raw
        )

    def _records(self, entry: Any, key: str, answer: dict, rng: random.Random,
                 context: Context) -> tuple[list[dict], str | None]:
        meta = {"class": entry.label, "source": self.source, "prompt_version": self.prompt_version}
        pairs: list[tuple[str, str, str, str, dict]] = []
        if "caption" in answer:
            pairs.append(("caption", "caption", rng.choice(prompts.CAPTION_PROMPTS), answer["caption"], {}))
        for item in answer.get("qa", []):
            pairs.append(("vqa", item["family"], item["question"], item["answer"], {}))
        label = self._truth(entry) or answer.get("classification", {}).get("label")
        if "classify" in self.tasks and label:
            question = prompts.CLASSIFY_PROMPT(self.labels)
            pairs.append(("classify", "classification", question, prompts.classify_answer(label), {}))
        for question, text, numbers in _measure_pairs(answer.get("measurements") or {"feature": "none"}, rng):
            pairs.append(("measure", "measurement", question, text, {"numbers": numbers}))
        records = []
        for i, (task, family, question, text, extra) in enumerate(pairs):
            rec = {
                "id": f"{key[:16]}-{i:02d}",
                "image": entry.relpath,
                "task": task,
                "conversations": [user_turn(question, None if task == "classify" else context.text),
                                  {"from": "gpt", "value": text}],
                "meta": {"family": family, **meta, **extra},
            }
            problems = validate_record(rec)
            if problems:
                return [], f"{task} record invalid: {'; '.join(problems)}"
            records.append(rec)
        if not records:
            return [], "answer held nothing to write"
        return records, None

    def _body(self, messages: list[dict]) -> dict:
        body = {
            "model": self.endpoint.model,
            "messages": messages,
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_answer_tokens,
        }
        if self.config.json_mode:
            body["response_format"] = {"type": "json_object"}
        return body

    def _backoff(self, attempt: int) -> float:
        cap = min(self.config.backoff_max_s, self.config.backoff_base_s * 2**attempt)
        return cap * random.uniform(0.5, 1.0)

    async def _complete(self, messages: list[dict]) -> tuple[str | None, int]:
        """The completion's message content and its total tokens, retrying transient failures."""
        if self._client is None:
            raise RuntimeError("OpenAITeacher used outside 'async with'")
        headers = {"Authorization": f"Bearer {self.endpoint.api_key}"} if self.endpoint.api_key else {}
        body = self._body(messages)
        reason = ""
        for attempt in range(self.config.max_retries + 1):
            wait = None
            try:
                resp = await self._client.post(self.endpoint.url, json=body, headers=headers)
            except httpx.TimeoutException:
                reason = f"timed out after {self.config.timeout_s:g} s"
            except httpx.TransportError as exc:
                reason = f"connection failed: {exc!r}"
            else:
                if resp.status_code == 200:
                    return self._parse_completion(resp)
                detail = resp.text[:300].strip()
                if resp.status_code in (401, 403):
                    raise TeacherError(f"teacher server refused the API key (HTTP {resp.status_code}): {detail}")
                if resp.status_code == 404:
                    raise TeacherError(f"teacher server has no route or model {self.endpoint.model!r}: {detail}")
                if resp.status_code != 429 and resp.status_code < 500:
                    raise TransportError(f"HTTP {resp.status_code}: {detail}", retryable=False)
                reason = f"HTTP {resp.status_code}: {detail}"
                wait = parse_retry_after(resp.headers.get("retry-after"))
            if attempt == self.config.max_retries:
                break
            wait = self._backoff(attempt) if wait is None else min(wait, self.config.backoff_max_s)
            await asyncio.sleep(wait)
        raise TransportError(f"gave up after {self.config.max_retries + 1} attempts: {reason}", retryable=True)

    @staticmethod
    def _parse_completion(resp: httpx.Response) -> tuple[str | None, int]:
        try:
            data = resp.json()
            content = data["choices"][0]["message"].get("content")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise TransportError(f"server sent no chat completion ({exc!r})", retryable=True) from exc
        usage = data.get("usage") or {}
        tokens = usage.get("total_tokens")
        return (content if isinstance(content, str) else None), int(tokens) if _number(tokens) else 0
