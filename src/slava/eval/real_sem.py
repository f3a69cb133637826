"""Captions of real micrographs the student never trained on, checked as a reader would check them.

A real set is a folder holding ``truth.jsonl`` (one JSON object per image,
``image`` relative to the folder): the layout of ``shared/data/real-sem``.
From each set a few images spread over its file list are captioned. Each
caption is checked for what a materials scientist looks at first: does it
name the kind of object the set shows, does every number in it come from the
image's context line, as the quantity it is there (``Answer.invented`` is
empty; numbers the model put on another quantity were cut and are listed in
``Answer.misplaced``), is it free of role
markers and loops, and does it end a sentence.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from slava.errors import SlavaError
from slava.eval import metrics as M
from slava.teacher.prompts import CAPTION_PROMPT

OBJECT_WORDS: dict[str, tuple[str, ...]] = {
    "stem-nanoparticles": ("particle",),
    "nasa-superalloy": ("precipitate", "particle"),
    "deepsem-nanowires": ("nanowire", "wire"),
    "gift-fibres": ("fibre", "fiber"),
    "fei-lung-cells": ("cell",),
}
"""Words (as stems) of which a caption of each known set must use one: the objects its images show."""


class RealSetError(SlavaError):
    """A real-set folder is missing, empty or has an unreadable ``truth.jsonl``."""


def real_sets(root: str | Path) -> dict[str, list[Path]]:
    """Image paths of each set under ``root`` (a folder of sets, or one set), in ``truth.jsonl`` order."""
    root = Path(root)
    if not root.is_dir():
        raise RealSetError(f"{root}: no such folder")
    folders = [root] if (root / "truth.jsonl").is_file() else sorted(p for p in root.iterdir() if (p / "truth.jsonl").is_file())
    if not folders:
        raise RealSetError(f"{root}: no real set here (a set is a folder with truth.jsonl)")
    sets = {}
    for folder in folders:
        images = []
        for n, line in enumerate((folder / "truth.jsonl").read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                images.append(folder / json.loads(line)["image"])
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise RealSetError(f"{folder / 'truth.jsonl'} line {n}: not an object with an 'image' ({e})") from e
        if not images:
            raise RealSetError(f"{folder / 'truth.jsonl'}: lists no image")
        sets[folder.name] = images
    return sets


def spread(items: Sequence, n: int) -> list:
    """``n`` items evenly spaced over ``items`` (first and last included), so a set is not judged by its first files."""
    if n >= len(items):
        return list(items)
    if n == 1:
        return [items[0]]
    return [items[round(k * (len(items) - 1) / (n - 1))] for k in range(n)]


def names_object(text: str, words: Sequence[str]) -> bool:
    """Whether ``text`` uses one of ``words``, alone or ending a word, plural or not.

    "particle" matches "nanoparticles" and "particle-like"; "cell" matches
    "cells" but neither "cellulose" nor "excellent".
    """
    return any(re.search(rf"{re.escape(w)}(?:s|es)?\b", text, re.IGNORECASE) for w in words)


def _thumbnail(pixels: np.ndarray, path: Path, side: int = 200) -> Path:
    from PIL import Image

    im = Image.fromarray(np.clip(np.asarray(pixels, dtype=float) * 255, 0, 255).astype(np.uint8))
    im.thumbnail((side, side))
    im.save(path)
    return path


def real_captions(assistant, root: str | Path, out_dir: str | Path, per_set: int = 2, markers: Sequence[str] = ()) -> dict:
    """Caption ``per_set`` images of every real set under ``root``; thumbnails go to ``out_dir``.

    Returns the rows (set, image, caption, context, checks, thumbnail) and,
    over all of them, the number of invented numbers, role markers and loops
    (``metrics.hygiene``) and the fraction that name their set's object.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    chosen = [(name, path) for name, paths in real_sets(root).items() for path in spread(paths, per_set)]
    micrographs = [assistant.prepare(path) for _, path in chosen]
    answers = assistant.answer_many([(m, CAPTION_PROMPT) for m in micrographs])
    rows = []
    for k, ((name, path), micrograph, answer) in enumerate(zip(chosen, micrographs, answers)):
        words = OBJECT_WORDS.get(name)
        rows.append({
            "set": name, "image": str(path), "answer": answer.text, "context": answer.context,
            "invented": list(answer.invented), "misplaced": list(answer.misplaced),
            "names_object": None if words is None else names_object(answer.text, words),
            "object_words": list(words or ()), "ends_sentence": answer.text.rstrip().endswith((".", "!", "?")),
            "thumbnail": str(_thumbnail(micrograph.pixels, out_dir / f"{k:02d}-{name}.png")),
        })
    judged = [r["names_object"] for r in rows if r["names_object"] is not None]
    return {
        "root": str(root), "n": len(rows), "rows": rows,
        "names_object": float(np.mean(judged)) if judged else None,
        "ends_sentence": float(np.mean([r["ends_sentence"] for r in rows])),
        "hygiene": M.hygiene(rows, markers or assistant.markers),
    }
