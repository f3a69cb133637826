"""A run's classification head file: ``classifier.safetensors``, written by training, read by inference.

The file holds the head's tensors (``slava.model.class_head.ClassHead``), with
the label list and the head's form in the safetensors metadata, so the one
file says everything; ``train_summary.json`` repeats the labels and the
held-out score. Fitting lives in ``slava.train.class_head``.
"""

from __future__ import annotations

import json
from pathlib import Path

from slava.errors import SlavaError
from slava.model.class_head import ClassHead

HEAD_FILE = "classifier.safetensors"
"""The head's file in a run directory."""
HEAD_FORMAT = "1"


class HeadError(SlavaError):
    """A classification head file that cannot be read (corrupt, another format)."""


def save_head(head: ClassHead, path: str | Path) -> None:
    """Write ``head`` as one safetensors file (tensors + labels and form in its metadata), atomically."""
    from safetensors.torch import save_file

    from slava.data.atomic import write_atomic

    meta = {"format": HEAD_FORMAT, "labels": json.dumps(head.labels), "features": head.features,
            "normalize": json.dumps(head.normalize), "kind": head.kind, "tags": json.dumps(head.tags)}
    tensors = {k: v.contiguous() for k, v in head.tensors().items()}
    write_atomic(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def load_head(path: str | Path) -> ClassHead:
    """The head in ``path``; a file that is not a readable head of this format is a HeadError naming it."""
    from safetensors import safe_open

    path = Path(path)
    fix = f"retrain the run, or delete {path.name} to classify by LM scoring"
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        if meta.get("format") != HEAD_FORMAT:
            raise HeadError(f"{path}: classification head format {meta.get('format')!r}, expected {HEAD_FORMAT}; {fix}")
        labels = json.loads(meta["labels"])
        return ClassHead(labels, meta["features"], tensors["shift"], tensors["scale"], tensors["weight"],
                         tensors["bias"], normalize=bool(json.loads(meta["normalize"])), kind=meta.get("kind", "?"),
                         tags=bool(json.loads(meta.get("tags", "false"))))
    except HeadError:
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors, JSON and shape errors all mean the same: unusable file
        raise HeadError(f"{path}: not a readable classification head ({type(exc).__name__}: {exc}); {fix}") from exc
