"""What evaluation reads: images by split, their labels, ground truth and teacher references.

``--data`` is either a data set folder (a synthetic set or an ImageFolder
tree; references for the test images are then written by the analytic
teacher on the fly, covering every question family) or an instruction
records file (``.jsonl`` from ``slava teach``; the test split's records are
the references, and the ground truth that measurement records keep in
``meta.truth`` gives the counting truth).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slava.errors import SlavaError

COUNT_KEYS = {"particle_count": "particle_count", "mean_diameter_nm": "mean_diameter", "fibre_count": "fibre_count"}
"""Ground-truth quantity → the ``measure_kind`` of the question that asks for it."""
COUNT_CLASSES = {"particle_count": ("particles",), "mean_diameter_nm": ("particles",), "fibre_count": ("fibres", "nanowires")}
"""Classes whose ground truth for the quantity is what the question asks (objects elsewhere are not "particles")."""


class EvalDataError(SlavaError):
    """Evaluation data that cannot be used (no test split, no labels, unknown format)."""


@dataclass
class Reference:
    """One teacher question and answer about an image."""

    task: str
    family: str
    question: str
    answer: str


@dataclass
class EvalItem:
    """One image: absolute path, label, split, ground-truth quantities and reference answers."""

    image: str
    label: str | None
    split: str | None
    truth: dict = field(default_factory=dict)
    refs: list[Reference] = field(default_factory=list)


@dataclass
class EvalData:
    """Every image of the evaluation source; ``labels`` are the classes present."""

    items: list[EvalItem]
    source: str
    synth: dict | None = None
    """The synthetic set's ``summary.json`` when the source is one."""
    manifest: Any = None
    """The ``slava.data.manifest.Manifest`` of a folder source (None for records)."""

    def split(self, name: str) -> list[EvalItem]:
        """Items of one split, in a stable order."""
        return [it for it in self.items if it.split == name]

    @property
    def labels(self) -> list[str]:
        """Sorted labels of every item."""
        return sorted({it.label for it in self.items if it.label is not None})


def _question(turns: list[dict]) -> str:
    from slava.data.chat import question_of

    return question_of(turns[0]["value"])


def _truth_from_quantities(label: str | None, quantities: dict) -> dict:
    return {k: quantities[k] for k in COUNT_KEYS if label in COUNT_CLASSES[k] and isinstance(quantities.get(k), (int, float))}


def _from_records(path: Path) -> EvalData:
    from slava.data.records import read_records
    from slava.data.records import resolve_image

    records, _ = read_records(path)
    if not records:
        raise EvalDataError(f"{path}: no valid instruction records")
    items: dict[str, EvalItem] = {}
    for rec in records:
        meta = rec.get("meta") or {}
        image = resolve_image(rec, path.parent)
        item = items.setdefault(image, EvalItem(image, meta.get("class"), meta.get("split")))
        turns = rec["conversations"]
        family = meta.get("family") or rec["task"]
        item.refs.append(Reference(rec["task"], family, _question(turns), turns[1]["value"]))
        if rec["task"] == "measure" and isinstance(meta.get("truth"), dict):
            item.truth.update(_truth_from_quantities(item.label, meta["truth"]))
    return EvalData(sorted(items.values(), key=lambda it: it.image), str(path))


def _from_folder(path: Path) -> EvalData:
    from slava.data.manifest import read_manifest

    manifest = read_manifest(path)
    items = []
    for e in manifest.entries:
        quantities = e.meta.get("quantities") if isinstance(e.meta.get("quantities"), dict) else {}
        items.append(EvalItem(e.path, e.label, e.split, _truth_from_quantities(e.label, quantities)))
    summary = path / "summary.json"
    synth = json.loads(summary.read_text()) if summary.is_file() and (path / "ground_truth.jsonl").is_file() else None
    return EvalData(items, str(path), synth, manifest)


def load_eval_data(source: str | Path) -> EvalData:
    """Read a data set folder or a records file; refuses one without a labelled test split."""
    path = Path(source).expanduser()
    if not path.exists():
        raise EvalDataError(f"{path}: no such file or folder")
    data = _from_records(path.resolve()) if path.is_file() else _from_folder(path.resolve())
    if not any(it.label for it in data.split("test")):
        raise EvalDataError(f"{path}: no labelled images in the test split")
    return data


def add_teacher_references(data: EvalData, items: list[EvalItem], seed: int = 0) -> None:
    """Write analytic-teacher caption and VQA references (every family) for ``items`` that have none."""
    from slava.io import load_micrograph
    from slava.measure.context import micrograph_context
    from slava.teacher.analytic import VQA_FAMILIES, AnalyticTeacher

    if data.manifest is None:
        return
    by_path = {e.path: e for e in data.manifest.entries}
    teacher = AnalyticTeacher(tasks=("caption", "vqa"), per_image=len(VQA_FAMILIES), seed=seed, labels=data.labels or None)
    for item in items:
        if item.refs:
            continue
        micrograph = load_micrograph(item.image)
        context = micrograph_context(micrograph)
        for rec in teacher.records_for(by_path[item.image], micrograph, context.measurements, context):
            turns = rec["conversations"]
            item.refs.append(Reference(rec["task"], rec["meta"]["family"], _question(turns), turns[1]["value"]))
