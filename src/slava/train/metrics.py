"""The run's ``metrics.jsonl``: one durable line per step, cut back to the checkpoint on resume."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable

from slava.data.records import JsonlAppender, iter_json_lines
from slava.data.atomic import write_text_atomic


def truncate_after(path: Path, step: int) -> None:
    """Drop lines logged after global ``step`` (by a run killed before its next checkpoint)."""
    if not path.exists():
        return
    kept = [row for row in iter_json_lines(path) if row.get("step", 0) <= step]
    write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in kept))


def read_metrics(path: str | Path) -> list[dict]:
    """Every complete row of a metrics file."""
    return list(iter_json_lines(path))


def load_entropy(counts: Iterable[float]) -> float:
    """Entropy of an expert-load distribution, normalised to [0, 1] (1 = perfectly balanced)."""
    counts = [float(c) for c in counts]
    total = sum(counts)
    if total <= 0 or len(counts) < 2:
        return 0.0
    h = -sum(c / total * math.log(c / total) for c in counts if c > 0)
    return h / math.log(len(counts))


class MetricsLog:
    """Appends rows to ``metrics.jsonl`` (main process only; others get a no-op)."""

    def __init__(self, path: Path, enabled: bool):
        self._out = JsonlAppender(path) if enabled else None

    def write(self, row: dict) -> None:
        if self._out is not None:
            self._out.write(row)

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
