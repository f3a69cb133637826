"""Which class labels a training run's data exposed: written once by training, read by inference and evaluation.

The vocabulary lives under ``labels`` in the run's ``train_summary.json`` (the
one labels file of a run): ``meta_classes`` counts records labelled with each
class, ``class_names_in_answers`` counts answers that name one. The assistant
takes its default labels from it; the zero-shot evaluation refuses classes
the run has seen.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from slava.data.taxonomy import CLASS_NAMES

SUMMARY_FILE = "train_summary.json"
"""The run file that holds the labels (and the rest of the training summary)."""


def label_vocabulary(records: list[dict]) -> dict:
    """Class labels the training records exposed: ``meta.class`` values and class names found in answers."""
    meta_classes = Counter(str(c) for r in records if (c := (r.get("meta") or {}).get("class")) is not None)
    names = set(CLASS_NAMES) | set(CLASS_NAMES.values()) | set(meta_classes)
    patterns = {n: re.compile(r"\b" + re.escape(n.replace("_", " ")) + r"\b", re.I) for n in names}
    in_answers: Counter = Counter()
    for rec in records:
        text = " ".join(t.get("value", "") for t in rec["conversations"][1::2])
        for name, pat in patterns.items():
            if pat.search(text):
                in_answers[name] += 1
    return {"meta_classes": dict(sorted(meta_classes.items())), "class_names_in_answers": dict(sorted(in_answers.items()))}


def read_run_labels(run_dir: str | Path) -> dict | None:
    """The label vocabulary of a run directory, or None when it has no training summary."""
    path = Path(run_dir) / SUMMARY_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("labels") or {}
