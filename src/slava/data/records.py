"""Instruction records: LLaVA-format JSONL, its validator, and crash-safe appends.

A record is ``{"id", "image", "task", "conversations": [...], "meta": {...}}``
with ``image`` a path relative to the records file's folder (or absolute).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from slava.data.chat import IMAGE_TOKEN

TASKS = ("caption", "vqa", "classify", "measure")
FAMILIES = (
    "caption",
    "material",
    "morphology",
    "size",
    "surface",
    "composition",
    "boundaries",
    "context",
    "imaging",
    "function",
    "applications",
    "classification",
    "measurement",
)
MAX_ANSWER_CHARS = 4000


def validate_record(rec: object) -> list[str]:
    """Every problem with one record, as readable sentences; empty when valid."""
    if not isinstance(rec, dict):
        return ["record is not a JSON object"]
    problems = []
    for key, kind in (("id", str), ("image", str), ("task", str), ("conversations", list)):
        if not isinstance(rec.get(key), kind):
            problems.append(f"'{key}' missing or not a {kind.__name__}")
    if "meta" in rec and not isinstance(rec["meta"], dict):
        problems.append("'meta' is not an object")
    if isinstance(rec.get("task"), str) and rec["task"] not in TASKS:
        problems.append(f"unknown task {rec['task']!r} (known: {', '.join(TASKS)})")
    family = (rec.get("meta") or {}).get("family") if isinstance(rec.get("meta"), dict) else None
    if family is not None and family not in FAMILIES:
        problems.append(f"unknown question family {family!r}")
    turns = rec.get("conversations")
    if isinstance(turns, list):
        if len(turns) < 2 or len(turns) % 2:
            problems.append("conversations must hold human/gpt pairs")
        for i, turn in enumerate(turns):
            expected = "human" if i % 2 == 0 else "gpt"
            if not isinstance(turn, dict) or turn.get("from") != expected:
                problems.append(f"turn {i} must be from {expected!r}")
                continue
            value = turn.get("value")
            if not isinstance(value, str) or not value.strip():
                problems.append(f"turn {i} has an empty value")
            elif expected == "gpt" and len(value) > MAX_ANSWER_CHARS:
                problems.append(f"turn {i} answer longer than {MAX_ANSWER_CHARS} characters")
            elif expected == "gpt" and IMAGE_TOKEN in value:
                problems.append(f"turn {i} answer contains {IMAGE_TOKEN}")
        first = turns[0] if turns and isinstance(turns[0], dict) else {}
        if isinstance(first.get("value"), str) and not first["value"].startswith(IMAGE_TOKEN):
            problems.append(f"first human turn must start with {IMAGE_TOKEN}")
    return problems


@dataclass
class BadLine:
    """A line of a JSONL file that could not be used, and why."""

    line: int
    reason: str


def scan_jsonl(path: str | Path) -> Iterator[tuple[int, dict | None, str | None]]:
    """Every non-blank line of a JSONL file as ``(line number, object, problem)``: the one JSONL reader.

    ``object`` is None where ``problem`` says why: not JSON, not an object, or
    a partial last line (a killed writer), which is never parsed even if it
    happens to be valid JSON.
    """
    with open(path, "rb") as fh:
        data = fh.read()
    lines = data.split(b"\n")
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        if number == len(lines) and not data.endswith(b"\n"):
            yield number, None, "partial last line (writer was interrupted)"
            continue
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            yield number, None, f"not JSON: {exc}"
            continue
        yield (number, obj, None) if isinstance(obj, dict) else (number, None, "not a JSON object")


def read_records(path: str | Path, validate: bool = True) -> tuple[list[dict], list[BadLine]]:
    """All valid records of a JSONL file, and the lines that were not.

    Malformed JSON, invalid records and a partial last line (a killed writer)
    are reported, never raised, so one bad line never costs the rest.
    """
    records: list[dict] = []
    bad: list[BadLine] = []
    for number, rec, problem in scan_jsonl(path):
        problems = [problem] if problem else (validate_record(rec) if validate else [])
        if problems:
            bad.append(BadLine(number, "; ".join(problems)))
        else:
            records.append(rec)
    return records, bad


def iter_json_lines(path: str | Path) -> Iterator[dict]:
    """Complete JSON objects of a JSONL file (none if it does not exist), skipping blank, broken and partial lines."""
    if Path(path).exists():
        yield from (obj for _, obj, _ in scan_jsonl(path) if obj is not None)


class JsonlAppender:
    """Appends one JSON object per line, each flushed and fsynced before returning.

    On open, a partial last line left by a killed writer is cut off, so the file
    always ends on a complete record.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _truncate_partial_tail(self.path)
        self._fh = open(self.path, "ab")

    def write(self, obj: dict) -> None:
        """Append ``obj`` as one line, durable on return."""
        self._fh.write(json.dumps(obj, ensure_ascii=False).encode() + b"\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _truncate_partial_tail(path: Path) -> None:
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as fh:
        data = fh.read()
        if data.endswith(b"\n"):
            return
        fh.truncate(data.rfind(b"\n") + 1)


def resolve_image(record: dict, root: Path) -> str:
    """Absolute path of a record's image (relative paths are relative to the records file)."""
    path = Path(record["image"])
    return str(path if path.is_absolute() else (root / path).resolve())
