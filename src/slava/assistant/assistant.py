"""The inference API: ask, chat, caption, classify and measure one micrograph.

Every prompt goes through ``slava.data.chat`` with the generation cue, so the
model sees at inference the bytes it saw in training, image context
included (``slava.measure.context.micrograph_context``, the one way teachers
and the assistant get it), and for runs trained with tags (``HeadConfig.tags``)
the head's class as a ``Looks like:`` line. Generated answers stop at the end of turn, at
``max_new_tokens`` and before any role marker, never repeat a token 4-gram a
third time, and may write digits only as numbers the context or the question
holds (``NumberGuard``); ``Answer.invented`` lists any number that is in
neither all the same (with the guard, none can be). Zero-shot
classification scores each label's answer text as the continuation of the one
classification prompt, unless the run has a classification head
(``classifier.safetensors``) that knows every requested label: then a linear
map on the tower's features ranks them, with no LM forward at all; few-shot
uses support images as prototypes or as earlier turns of the chat. Counting and size questions are answered by the
measurement toolkit, not by the model (``grounding``).
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from slava.assistant.fewshot import SupportError, load_support, prototype_probs, prototypes
from slava.assistant.grounding import (KIND_NEEDS, grounded_answer, grounded_kind, whole_sentences,
                                      without_misplaced_numbers, without_stutters, without_unknown_lengths)
from slava.assistant.images import ImageInput, model_pixels, to_micrograph
from slava.data.chat import IMAGE_TOKEN, encode, question_of, role_markers, user_turn
from slava.data.numbers import invented_numbers, numbers_in
from slava.data.run_head import HEAD_FILE, load_head
from slava.data.run_labels import read_run_labels
from slava.errors import SlavaError
from slava.hardware import choose_precision
from slava.io import Micrograph, read_instrument
from slava.measure import KINDS, Measurements, measure
from slava.measure.context import Context, micrograph_context, needs_bar
from slava.model.class_head import ClassHead, head_features, image_tags
from slava.model.generate import GenerationConfig
from slava.teacher.prompts import CAPTION_PROMPT, classify_answer, classify_prompt, is_classify_prompt

MODES = ("prototype", "in_context")
"""Few-shot modes of ``Assistant.classify``."""
CONTEXT_CACHE = 64
"""Images whose context an ``Assistant`` remembers (``Assistant.context``)."""
GENERATION_BATCH = 64
"""Answers ``answer_many`` decodes together: a decoding step reads every weight once whatever the rows, and an
image's questions share one prompt pass. 96 demo answers, AMD EPYC, AVX2, 2 cores, fp32, 2026-12-03, the two
sizes alternated: 68 s a pass at 64 rows against 80 s at 32 (same tokens)."""
METHODS = ("auto", "head", "lm")
"""How zero-shot ``classify`` ranks labels: the run's head where it knows them all (auto), or always one way."""


class AssistantError(SlavaError):
    """A request the assistant cannot serve (no run, no labels, bad mode)."""


@dataclass
class Answer:
    """A reply: ``source`` "model" (generated) or "measurement" (stated by the toolkit)."""

    text: str
    tokens: int
    latency_s: float
    source: str = "model"
    numbers: dict = field(default_factory=dict)
    measurements: dict | None = None
    finish_reason: str = "stop"
    """"stop" (end of sequence, or a measurement) or "length" (``max_new_tokens`` reached)."""
    invented: tuple[str, ...] = ()
    """Numbers a generated answer states that are in neither the image context nor the question (a defect)."""
    misplaced: tuple[str, ...] = ()
    """Context numbers the model stated as another quantity (``misplaced_numbers``; a defect of the model):
    their sentences were cut from ``text``, which states none."""
    context: str | None = None
    """The image context line the model was given (None for measured answers)."""

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        return asdict(self)


@dataclass
class Classification:
    """Labels ranked by probability (summing to 1) and how they were obtained."""

    ranked: list[tuple[str, float]]
    mode: str
    latency_s: float
    method: str = "lm"
    """What ranked the labels: "head" (the run's classification head), "lm" (LM scoring of each label's
    answer) or "prototype" (few-shot prototypes of the support images)."""

    @property
    def label(self) -> str:
        """The most probable label."""
        return self.ranked[0][0]

    @property
    def probability(self) -> float:
        """Probability of the most probable label."""
        return self.ranked[0][1]

    def to_dict(self) -> dict:
        """Plain dict for JSON (``ranked`` as ``[{label, probability}]``)."""
        return {
            "label": self.label, "probability": self.probability, "mode": self.mode, "method": self.method,
            "latency_s": self.latency_s,
            "ranked": [{"label": lab, "probability": p} for lab, p in self.ranked],
        }


def with_context(turns: list[dict], context: Context, tag: str | None = None) -> list[dict]:
    """``turns`` with the image's human turn rebuilt by ``user_turn``: image, tag and context lines, question.

    A context or tag line a client typed is replaced by the measured one;
    without an image placeholder anywhere, the first turn is the image's. A
    classification prompt keeps neither (``is_classify_prompt``).
    """
    out = [dict(t) for t in turns]
    i = next((k for k, t in enumerate(out) if IMAGE_TOKEN in str(t.get("value", ""))), 0)
    question = question_of(out[i]["value"])
    plain = is_classify_prompt(question)
    out[i]["value"] = user_turn(question, None if plain else context.text, tag=None if plain else tag)["value"]
    return out


def held_numbers(context: Context, asked: str) -> list[str]:
    """The numbers a generated answer may state: those of the image's context line and of the question(s) asked."""
    return numbers_in(context.text) + numbers_in(asked)


def _ranked(labels: Sequence[str], probs: torch.Tensor, mode: str, latency: float, method: str) -> Classification:
    order = probs.argsort(descending=True).tolist()
    return Classification([(labels[i], float(probs[i])) for i in order], mode, latency, method)


def trained_labels(run_dir: str | Path) -> list[str]:
    """Class labels a run was trained on (``meta.class`` values of its records), sorted; [] if unknown."""
    return sorted((read_run_labels(run_dir) or {}).get("meta_classes") or {})


class Assistant:
    """A trained student ready to answer; build it with ``Assistant.load(run_dir)``."""

    def __init__(self, model, labels: Sequence[str] = (), device: str = "cpu", run_dir: str | None = None,
                 precision: str = "auto", head: ClassHead | None = None):
        self.model = model.eval()
        self.head = None if head is None else head.to(device)
        """The run's classification head (``slava.train.class_head``), None for runs trained without one."""
        self.tokenizer = model.tokenizer
        self.labels = list(labels)
        self.device = torch.device(device)
        self.run_dir = run_dir
        self.precision = choose_precision(precision, self.device)
        self.markers = role_markers(getattr(self.tokenizer, "chat_format", "plain"))
        # A marker that is one token of its own (chatml's specials) is banned outright; the rest are cut as text.
        pieces = [self.tokenizer.encode(m) for m in self.markers]
        self.marker_ids = sorted({p[0] for p in pieces if len(p) == 1 and p[0] != self.tokenizer.eos_id})
        # A conversation sends its image with every turn, and eval asks several questions of one image:
        # measuring it once (0.2-0.5 s) serves them all. Keyed by content, so a changed image re-measures.
        self._contexts: OrderedDict[tuple, Context] = OrderedDict()
        self._contexts_lock = threading.Lock()

    @classmethod
    def load(cls, run_dir: str | Path, device: str | None = None, rank: int | None = None,
             precision: str = "auto") -> "Assistant":
        """Load a run directory (the ``--out`` of a training run); ``rank`` runs the experts at that rank (r_max when None).

        ``precision`` is resolved by ``slava.hardware.choose_precision`` for the device.
        A run's ``classifier.safetensors`` is loaded as its head; a corrupt one
        is a ``HeadError`` naming the file (older runs have none and use LM scoring).
        """
        from slava.model.mope import set_rank
        from slava.model.vlm import SlavaModel

        run_dir = Path(run_dir)
        if not (run_dir / "config.json").is_file():
            raise AssistantError(f"{run_dir}: not a trained run (no config.json); train one first with the `train` command, or pass --run")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = SlavaModel.load(run_dir).to(device)
        # Nothing trains here: the faster tower changes no answer beyond float rounding.
        model.fuse_for_inference()
        try:
            set_rank(model.lm, rank)
        except ValueError as exc:
            raise AssistantError(str(exc)) from exc
        head_file = run_dir / HEAD_FILE
        head = load_head(head_file) if head_file.is_file() else None
        return cls(model, trained_labels(run_dir), device, str(run_dir), precision, head)

    @contextlib.contextmanager
    def inference(self):
        """No autograd, and autocast to the assistant's precision: every model call runs inside this."""
        with torch.inference_mode(), self.precision.autocast(self.device.type):
            yield

    # -- images -----------------------------------------------------------------

    def prepare(self, image: ImageInput, pixel_size_nm: float | None = None) -> Micrograph:
        """The ``Micrograph`` the assistant sees for ``image`` (data bar cropped, its text not yet read).

        OCR of the bar costs 0.5-2 s an image, so it runs only where a stated
        number depends on it: instrument questions, and measurements of an
        image that has no calibration from the caller or its file (``needs_bar``).
        """
        return to_micrograph(image, pixel_size_nm)

    def pixels(self, micrographs: Sequence[Micrograph]) -> torch.Tensor:
        """Model input [B,1,S,S] for micrographs, on the assistant's device."""
        return model_pixels(list(micrographs), self.model.image_size).to(self.device)

    def _prompt(self, turns: Sequence[dict]) -> list[int]:
        ids, _ = encode(turns, self.tokenizer, self.model.num_image_tokens, add_generation_prompt=True)
        return ids

    # -- answers ----------------------------------------------------------------

    def ask(self, image: ImageInput, question: str, max_new_tokens: int = 128, strategy: str = "greedy") -> Answer:
        """Answer one question about ``image``; counting and size questions are measured."""
        return self.chat(image, [user_turn(question)], GenerationConfig(max_new_tokens=max_new_tokens, strategy=strategy))

    def chat(self, image: ImageInput, turns: Sequence[dict], config: GenerationConfig | None = None,
             should_stop: Callable[[], bool] | None = None, context: Context | None = None,
             tag: str | None = None) -> Answer:
        """Answer the last human turn of a conversation (``[{"from": "human"|"gpt", "value"}]``) about ``image``.

        ``config`` says how to decode; None is ``GenerationConfig(max_new_tokens=128)``.
        ``should_stop`` is asked between generated tokens (the server's "client
        gone"); True ends the answer there with ``finish_reason`` "cancelled".
        ``context`` is the image's ``micrograph_context`` when the caller already
        has it (the server counts prompt tokens with it), and ``tag`` its
        ``tag``; None computes them.
        On an image with no calibration, sentences stating a length in nm (which
        the model can only invent) are replaced by a note saying so. An answer
        the decoder cut mid-sentence (a loop about to start, the token budget
        spent) ends at its last whole sentence.
        """
        if config is None:
            config = GenerationConfig(max_new_tokens=128)
        start = time.perf_counter()
        turns = [dict(t) for t in turns]
        if not turns or turns[-1].get("from") != "human":
            raise AssistantError("the conversation must end with a human turn")
        if not any(IMAGE_TOKEN in str(t.get("value", "")) for t in turns):
            turns[0]["value"] = f"{IMAGE_TOKEN}\n{turns[0]['value']}"
        micrograph = self.prepare(image)
        question = question_of(turns[-1]["value"])
        kind = grounded_kind(question)
        if kind is not None:
            if kind == "instrument" or needs_bar(micrograph):
                read_instrument(micrograph)
            return self._grounded(micrograph, kind, start)
        context = context or self._context_of(micrograph)
        turns = with_context(turns, context, tag or self._tags([micrograph])[0])
        asked = " ".join(question_of(t["value"]) for t in turns if t.get("from") == "human")
        return self._generate(micrograph, turns, config, context, asked, start, should_stop)

    def answer_many(self, requests: Sequence[tuple[ImageInput, str]], max_new_tokens: int = 128,
                    batch_size: int = GENERATION_BATCH, progress: Callable[[int], None] | None = None) -> list[Answer]:
        """Greedy answers to ``(image, question)`` pairs, as ``ask`` gives them, decoded ``batch_size`` at a time.

        Counting and size questions are measured, as in ``ask``; the others
        are generated together, so evaluating hundreds of answers costs a
        fraction of asking one by one. ``latency_s`` of a generated answer is
        its share of its batch's time. ``progress``, when given, is called
        with the number of answers each finished step added.
        """
        if batch_size < 1:
            raise AssistantError(f"batch_size must be at least 1, got {batch_size}")
        answers: list[Answer | None] = [None] * len(requests)
        pending = []
        for i, (image, question) in enumerate(requests):
            start = time.perf_counter()
            micrograph = self.prepare(image)
            kind = grounded_kind(question)
            if kind is not None:
                if kind == "instrument" or needs_bar(micrograph):
                    read_instrument(micrograph)
                answers[i] = self._grounded(micrograph, kind, start)
                if progress is not None:
                    progress(1)
            else:
                pending.append((i, micrograph, question, self._context_of(micrograph)))
        tags = [t for b in range(0, len(pending), batch_size) for t in self._tags([p[1] for p in pending[b : b + batch_size]])]
        pending = [(i, m, with_context([user_turn(q)], c, tag), c, q) for (i, m, q, c), tag in zip(pending, tags)]
        config = GenerationConfig(max_new_tokens=max_new_tokens)
        # An image's questions batched together share their prompt up to the question (SlavaModel.generate).
        pending.sort(key=lambda p: self._image_key(p[1])[0])
        for b in range(0, len(pending), batch_size):
            chunk = pending[b : b + batch_size]
            start = time.perf_counter()
            with self.inference():
                outs = self.model.generate(self.pixels([c[1] for c in chunk]), [self._prompt(c[2]) for c in chunk],
                                           config, stop_strings=self.markers, banned_ids=self.marker_ids,
                                           allowed_numbers=[held_numbers(c[3], c[4]) for c in chunk])
            share = (time.perf_counter() - start) / len(chunk)
            for (i, micrograph, _, context, question), out in zip(chunk, outs):
                answers[i] = self._answer(micrograph, out, config, context, question, share)
            if progress is not None:
                progress(len(chunk))
        return answers

    def _generate(self, micrograph: Micrograph, turns: list[dict], config: GenerationConfig, context: Context,
                  asked: str, start: float, should_stop: Callable[[], bool] | None = None) -> Answer:
        """A generated answer to ``turns`` (context already in place), with its hygiene and invented-number check."""
        with self.inference():
            out = self.model.generate(self.pixels([micrograph]), [self._prompt(turns)], config, should_stop=should_stop,
                                      stop_strings=self.markers, banned_ids=self.marker_ids,
                                      allowed_numbers=[held_numbers(context, asked)])[0]
        cancelled = should_stop is not None and should_stop()
        return self._answer(micrograph, out, config, context, asked, time.perf_counter() - start, cancelled)

    def _answer(self, micrograph: Micrograph, out: list[int], config: GenerationConfig, context: Context, asked: str,
                latency: float, cancelled: bool = False) -> Answer:
        """The ``Answer`` for tokens ``out``: text before any marker, no stutters, whole sentences, calibrated,
        numbers checked (sentences with a misplaced one cut)."""
        finish = "cancelled" if cancelled else "length" if len(out) >= config.max_new_tokens else "stop"
        text = whole_sentences(without_stutters(self._before_markers(self.tokenizer.decode(out)).strip()))
        text, misplaced = without_misplaced_numbers(self._calibrated_text(micrograph, text, context), context.text, asked)
        return Answer(
            text=text, tokens=len(out), latency_s=latency, finish_reason=finish,
            invented=tuple(invented_numbers(text, context.text, asked)), misplaced=tuple(misplaced),
            context=context.text,
        )

    def _before_markers(self, text: str) -> str:
        """``text`` up to the first role marker (decoding already stops there; this keeps the promise for any tokenizer)."""
        cut = min((i for i in (text.find(m) for m in self.markers) if i >= 0), default=len(text))
        return text[:cut]

    @staticmethod
    def _calibrated_text(micrograph: Micrograph, text: str, context: Context) -> str:
        return without_unknown_lengths(text, context.text)[0] if micrograph.pixel_size_nm is None else text

    def _grounded(self, micrograph: Micrograph, kind: str, start: float) -> Answer:
        needs = KIND_NEEDS[kind]
        m = measure(micrograph, kinds=(needs,) if needs else ())
        text, numbers = grounded_answer(kind, m)
        return Answer(text, 0, time.perf_counter() - start, "measurement", numbers, m.to_dict())

    def caption(self, image: ImageInput, max_new_tokens: int = 128, strategy: str = "greedy") -> Answer:
        """A detailed description of ``image`` (always from the model)."""
        start = time.perf_counter()
        micrograph = self.prepare(image)
        context = self._context_of(micrograph)
        return self._generate(micrograph, [user_turn(CAPTION_PROMPT, context.text, tag=self._tags([micrograph])[0])],
                              GenerationConfig(max_new_tokens=max_new_tokens, strategy=strategy), context,
                              CAPTION_PROMPT, start)

    def tag(self, image: ImageInput) -> str | None:
        """The tag line text the run's prompts carry for ``image`` (its head's top class), None for runs without tags."""
        return self._tags([self.prepare(image)])[0]

    def _tags(self, micrographs: Sequence[Micrograph]) -> list[str | None]:
        if self.head is None or not self.head.tags or not micrographs:
            return [None] * len(micrographs)
        with self.inference():
            return image_tags(self.head, head_features(self.model, self.pixels(micrographs), self.head.features))

    def context(self, image: ImageInput) -> Context:
        """The image context the model is given for ``image`` (``micrograph_context``)."""
        return self._context_of(self.prepare(image))

    @staticmethod
    def _image_key(micrograph: Micrograph) -> tuple:
        """What makes two micrographs the same image for the model and its context: content and calibration."""
        digest = hashlib.sha1(np.ascontiguousarray(micrograph.pixels).tobytes())
        if micrograph.bar_pixels is not None:
            digest.update(np.ascontiguousarray(micrograph.bar_pixels).tobytes())
        return (digest.hexdigest(), micrograph.pixels.shape, micrograph.pixel_size_nm, micrograph.pixel_size_source)

    def _context_of(self, micrograph: Micrograph) -> Context:
        """``micrograph_context``, remembered for the last ``CONTEXT_CACHE`` images by content and calibration."""
        key = self._image_key(micrograph)
        with self._contexts_lock:
            if key in self._contexts:
                self._contexts.move_to_end(key)
                return self._contexts[key]
        context = micrograph_context(micrograph)
        with self._contexts_lock:
            self._contexts[key] = context
            while len(self._contexts) > CONTEXT_CACHE:
                self._contexts.popitem(last=False)
        return context

    def measure(self, image: ImageInput, pixel_size_nm: float | None = None, kinds: Sequence[str] = KINDS,
                particle_method: str = "auto") -> Measurements:
        """Classical measurements of ``image`` (nm where calibrated, else px); ``particle_method`` as in ``measure``."""
        micrograph = self.prepare(image, pixel_size_nm)
        if needs_bar(micrograph):
            read_instrument(micrograph)
        return measure(micrograph, kinds=tuple(kinds), particle_method=particle_method)

    # -- classification ---------------------------------------------------------

    def _labels(self, labels: Sequence[str] | None) -> list[str]:
        labels = [str(label) for label in (labels or self.labels)]
        if len(labels) < 2:
            raise AssistantError("classification needs at least two labels (none were given and the run lists none)")
        if len(set(labels)) != len(labels):
            raise AssistantError(f"duplicate labels in {labels}")
        return labels

    def classify(
        self,
        image: ImageInput,
        labels: Sequence[str] | None = None,
        support: str | Path | Mapping[str, Sequence[ImageInput]] | None = None,
        shots: int | None = None,
        mode: str = "prototype",
        method: str = "auto",
    ) -> Classification:
        """Rank ``labels`` for ``image``: zero-shot, or few-shot from ``support`` by ``mode``.

        ``support`` is an ImageFolder directory or ``{label: [images]}``; ``shots``
        caps the images used per class. Without ``labels`` the support set's
        classes (few-shot) or the run's trained classes (zero-shot) are used.
        Without support, ``method`` chooses head or LM scoring (``classify_pixels``).
        """
        start = time.perf_counter()
        micrograph = self.prepare(image)
        if support is None:
            result = self.classify_pixels(self.pixels([micrograph]), self._labels(labels), method)[0]
        elif mode == "prototype":
            result = self._prototype(micrograph, load_support(support, labels, shots))
        elif mode == "in_context":
            result = self._in_context(micrograph, load_support(support, labels, shots))
        else:
            raise AssistantError(f"unknown few-shot mode {mode!r} (one of {', '.join(MODES)})")
        result.latency_s = time.perf_counter() - start
        return result

    def classify_batch(self, images: Sequence[ImageInput], labels: Sequence[str] | None = None,
                       method: str = "auto") -> list[Classification]:
        """Zero-shot classification of many images with batched vision encoding and scoring (``classify_pixels``)."""
        start = time.perf_counter()
        micrographs = [self.prepare(im) for im in images]
        results = self.classify_pixels(self.pixels(micrographs), self._labels(labels), method)
        each = (time.perf_counter() - start) / max(len(results), 1)
        for r in results:
            r.latency_s = each
        return results

    def classify_method(self, labels: Sequence[str], method: str = "auto") -> str:
        """"head" or "lm": what ``classify_pixels`` uses for ``labels`` under ``method``.

        auto takes the head when the run has one that knows every label. A
        mixed set (some labels trained, some never seen) is LM-scored whole, so
        that all its probabilities come from one model on one scale.
        """
        if method not in METHODS:
            raise AssistantError(f"unknown classification method {method!r} (one of {', '.join(METHODS)})")
        covered = self.head is not None and set(labels) <= set(self.head.labels)
        if method == "head" and not covered:
            unknown = sorted(set(labels) - set(self.head.labels)) if self.head is not None else []
            why = f"it was not trained on {', '.join(unknown)}" if self.head is not None else "this run has no classification head"
            raise AssistantError(f"method 'head' cannot rank these labels: {why}; use method 'auto' or 'lm'")
        return "head" if covered and method != "lm" else "lm"

    def classify_pixels(self, pixels: torch.Tensor, labels: Sequence[str], method: str = "auto") -> list[Classification]:
        """Zero-shot classification of model inputs [B,1,S,S] (the batched path screening uses).

        ``method`` is auto, head or lm (``classify_method``); each result says which ran.
        """
        start = time.perf_counter()
        labels = list(labels)
        if self.classify_method(labels, method) == "head":
            with self.inference():
                probs = self.head.probs(head_features(self.model, pixels.to(self.device), self.head.features), labels)
            each = (time.perf_counter() - start) / max(len(probs), 1)
            return [_ranked(labels, p, "zero_shot", each, "head") for p in probs.float().cpu()]
        prompt = self._prompt([user_turn(classify_prompt(labels))])
        answers = [self.tokenizer.encode(f" {classify_answer(label)}") + [self.tokenizer.eos_id] for label in labels]
        with self.inference():
            embeds = self.model.encode_images(pixels.to(self.device))
            scores = self.model.score_continuations(embeds, prompt, answers)
        probs = F.softmax(scores, dim=-1)
        each = (time.perf_counter() - start) / max(len(probs), 1)
        return [_ranked(labels, p, "zero_shot", each, "lm") for p in probs]

    def _prototype(self, micrograph: Micrograph, support: dict[str, list[Micrograph]]) -> Classification:
        with self.inference():
            per_class = {label: self.model.few_shot_embedding(self.pixels(ms)) for label, ms in support.items()}
            labels, protos, centre = prototypes(per_class)
            probs = prototype_probs(self.model.few_shot_embedding(self.pixels([micrograph])), protos, centre)[0]
        return _ranked(labels, probs, "prototype", 0.0, "prototype")

    def _in_context(self, micrograph: Micrograph, support: dict[str, list[Micrograph]]) -> Classification:
        """Support images as earlier chat turns (interleaved across classes), then the query."""
        labels = list(support)
        question = classify_prompt(labels)
        answers = [self.tokenizer.encode(f" {classify_answer(label)}") + [self.tokenizer.eos_id] for label in labels]
        order = [(label, m) for k in range(max(len(v) for v in support.values())) for label in labels
                 if k < len(support[label]) for m in [support[label][k]]]
        limit = self.model.cfg.lm.max_len - max(len(a) for a in answers)
        while True:
            turns = []
            for label, _ in order:
                turns += [user_turn(question), {"from": "gpt", "value": classify_answer(label)}]
            prompt = self._prompt(turns + [user_turn(question)])
            if len(prompt) <= limit:
                break
            if len(order) <= len(labels):
                raise SupportError(
                    f"one support image per class does not fit the model's {self.model.cfg.lm.max_len}-token context; "
                    "use mode='prototype'"
                )
            order = order[: len(order) - 1]
        with self.inference():
            embeds = self.model.encode_images(self.pixels([m for _, m in order] + [micrograph]))
            embeds = embeds.reshape(1, -1, embeds.shape[-1])
            probs = F.softmax(self.model.score_continuations(embeds, prompt, answers)[0], dim=-1)
        return _ranked(labels, probs, "in_context", 0.0, "lm")
