"""Records → training examples: cached images, encoded conversations, padded batches.

Bad records (missing or unreadable image, empty answer, too long for
``max_len``) are skipped and counted, never raised: one broken file must not
cost a long run. The counts are logged once per build.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch

from slava.data.chat import IGNORE_INDEX, IMAGE_TOKEN, ChatFormatError, encode, split_human, user_turn
from slava.data.records import resolve_image
from slava.model.pixels import to_model_pixels

log = logging.getLogger("slava.train")


@dataclass
class Example:
    """One training sequence; ``image`` is a key into the ImageStore (None = text only)."""

    record_id: str
    image: str | None
    ids: list[int]
    labels: list[int]


@dataclass
class SkipReport:
    """Why records were left out, counted, with one example id per reason."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def add(self, reason: str, record_id: str) -> None:
        self.counts[reason] += 1
        self.examples.setdefault(reason, record_id)

    def log(self, what: str) -> None:
        """One warning with every count, when anything was skipped."""
        if self.counts:
            parts = ", ".join(f"{n} {r} (e.g. {self.examples[r]})" for r, n in sorted(self.counts.items()))
            log.warning("%s: skipped %d records: %s", what, sum(self.counts.values()), parts)


class ImageStore:
    """Micrographs decoded with ``slava.io`` (data bar cropped), resized once, kept in memory."""

    def __init__(self, image_size: int, cache: bool = True):
        self.image_size = image_size
        self.cache = cache
        self._images: dict[str, torch.Tensor] = {}
        self.errors: dict[str, str] = {}

    def _load(self, path: str) -> torch.Tensor:
        from slava.io import load_micrograph

        return to_model_pixels(load_micrograph(path).pixels, self.image_size)

    def preload(self, paths: Sequence[str], workers: int = 2) -> None:
        """Decode every path once (in ``workers`` threads); unreadable ones land in ``errors``."""
        todo = sorted({p for p in paths if p not in self._images and p not in self.errors})

        def one(path: str):
            if not Path(path).is_file():
                return path, None, "missing image"
            try:
                return path, self._load(path), None
            except Exception as exc:  # any decoder failure means "unreadable", never a crash
                return path, None, f"unreadable image ({type(exc).__name__}: {exc})"

        with ThreadPoolExecutor(max(1, workers)) as pool:
            for path, tensor, error in pool.map(one, todo):
                if error:
                    self.errors[path] = error
                elif self.cache:
                    self._images[path] = tensor

    def get(self, path: str) -> torch.Tensor:
        """The [1, S, S] tensor of a preloaded path."""
        if path in self._images:
            return self._images[path]
        return self._load(path)


def _strip_image(conversations: list[dict]) -> list[dict]:
    turns = [dict(t) for t in conversations]
    turns[0]["value"] = turns[0]["value"].replace(IMAGE_TOKEN, "").strip()
    return turns


def build_examples(
    records: Sequence[dict],
    root: Path,
    tokenizer,
    num_image_tokens: int,
    max_len: int,
    images: ImageStore | None,
    text_only: bool = False,
    tasks: Sequence[str] | None = None,
    label_text: bool = False,
    what: str = "examples",
) -> tuple[list[Example], SkipReport]:
    """Encode ``records`` with the chat template; returns the examples and what was skipped.

    ``text_only`` renders conversations without the image and trains on every
    token (language-model pretraining); ``label_text`` trains on every text token
    with the image kept; otherwise only answer tokens carry labels.
    """
    skipped = SkipReport()
    examples = []
    for rec in records:
        rid = str(rec.get("id"))
        if tasks is not None and rec.get("task") not in tasks:
            continue
        answers = [t.get("value", "") for t in rec["conversations"][1::2]]
        if not all(isinstance(a, str) and a.strip() for a in answers):
            skipped.add("empty answer", rid)
            continue
        image = None
        if not text_only:
            image = resolve_image(rec, root)
            if images is not None and image in images.errors:
                skipped.add(images.errors[image].split(" (")[0], rid)
                continue
        try:
            if text_only:
                ids, _ = encode(_strip_image(rec["conversations"]), tokenizer, 0)
                labels = list(ids)
            else:
                ids, labels = encode(rec["conversations"], tokenizer, num_image_tokens)
                if label_text:
                    labels = [IGNORE_INDEX if i == tokenizer.image_id else i for i in ids]
        except ChatFormatError:
            skipped.add("malformed conversation", rid)
            continue
        if len(ids) > max_len:
            skipped.add(f"longer than max_len {max_len}", rid)
            continue
        if not any(label != IGNORE_INDEX for label in labels[1:]):
            skipped.add("no answer tokens", rid)
            continue
        examples.append(Example(rid, image, ids, labels))
    skipped.log(what)
    return examples, skipped


def tag_records(records: Sequence[dict], tags: Mapping[str, str], root: Path) -> list[dict]:
    """``records`` with each image prompt carrying its image's tag line (``user_turn``'s ``tag``).

    ``tags`` maps resolved image paths to tag text. As at inference, only a
    first turn with a context line gets one: classification prompts carry
    neither, so the tag never answers them.
    """
    out = []
    for rec in records:
        turns = rec.get("conversations") or []
        tag = tags.get(resolve_image(rec, root)) if rec.get("image") and turns else None
        context, question = split_human(turns[0].get("value", "")) if tag else (None, "")
        if context is None:
            out.append(rec)
            continue
        out.append({**rec, "conversations": [user_turn(question, context, tag=tag), *turns[1:]]})
    return out


def split_records(records: Sequence[dict], val_fraction: float) -> tuple[list[dict], list[dict], int]:
    """(train, val, n_test_excluded) by ``meta.split``; without any "val", a hash of the image holds out a fraction.

    Hashing the image path keeps every record of one image on the same side.
    """
    splits = [(r.get("meta") or {}).get("split") for r in records]
    n_test = sum(s == "test" for s in splits)
    if "val" in splits:
        train = [r for r, s in zip(records, splits) if s not in ("val", "test")]
        val = [r for r, s in zip(records, splits) if s == "val"]
        return train, val, n_test
    train, val = [], []
    for rec, s in zip(records, splits):
        if s == "test":
            continue
        h = int.from_bytes(hashlib.sha256(str(rec["image"]).encode()).digest()[:8], "big") / 2**64
        (val if h < val_fraction else train).append(rec)
    return train, val, n_test


def collate(examples: Sequence[Example], pad_id: int) -> dict:
    """Right-padded text of a batch: input_ids, attention_mask, labels (-100 on padding).

    The trainer adds the images, as pixels or cached tower output, since which
    copy of an image (clean or degraded) an example sees depends on the epoch.
    """
    width = max(len(e.ids) for e in examples)
    n = len(examples)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, e in enumerate(examples):
        input_ids[i, : len(e.ids)] = torch.tensor(e.ids)
        labels[i, : len(e.labels)] = torch.tensor(e.labels)
        mask[i, : len(e.ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def target_tokens(example: Example) -> int:
    """Tokens the loss is taken over (labels shifted by one, as the LM predicts the next token)."""
    return sum(1 for label in example.labels[1:] if label != IGNORE_INDEX)
