"""Listing a data set: which images, their labels, splits and checksums.

Three layouts are read:

- an ImageFolder tree, ``<root>/<label>/**/<image>`` (images directly in
  ``<root>`` get no label);
- a synthetic set written by ``slava.synth``: ``ground_truth.jsonl`` (one line
  per image with a ``path`` relative to the set) and ``splits.json``; each
  entry's ``meta`` is that image's ground truth;
- a ``.jsonl`` manifest, one ``{"path", "label"?, "split"?, ...}`` per line,
  relative paths taken from the manifest's folder; other keys go to ``meta``.

Splits: an entry without one gets ``split_for(relpath)``, a hash of its
relative path: train 70 %, val 10 %, test 20 %. A file's split depends on its
own path only, so it never moves when files are added or removed, and every
stage that reads the same folder sees the same split; within each label the
proportions hold up to sampling noise (stratified in expectation).

Files that cannot be used (an image extension but a corrupt header, a missing
file named by a manifest, a bad manifest line) are listed in ``errors`` with
their cause; the rest of the set is kept.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from slava.data.records import scan_jsonl
from slava.errors import SlavaError
from slava.io import IMAGE_EXTENSIONS, MicrographError
from slava.io.readers import probe_image

SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)
GROUND_TRUTH = "ground_truth.jsonl"
SPLITS_FILE = "splits.json"


class ManifestError(SlavaError):
    """A data set source that cannot be listed at all (missing, empty, malformed)."""


class UnreadableFile(NamedTuple):
    """A file left out of a manifest, and why."""

    path: str
    cause: str


@dataclass
class ManifestEntry:
    """One image of a data set; ``path`` is absolute, ``relpath`` relative to the set's root."""

    path: str
    relpath: str
    label: str | None
    split: str | None
    sha256: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Manifest:
    """The usable images of a data set (sorted by ``relpath``) and the files left out."""

    entries: list[ManifestEntry]
    errors: list[UnreadableFile]
    root: str = ""

    def split(self, name: str) -> list[ManifestEntry]:
        """Entries of one split ("train", "val" or "test")."""
        return [e for e in self.entries if e.split == name]

    @property
    def labels(self) -> list[str]:
        """Sorted distinct labels (entries without a label are left out)."""
        return sorted({e.label for e in self.entries if e.label is not None})


def split_for(relpath: str) -> str:
    """Deterministic split of a file from its relative path (posix form): 70/10/20."""
    digest = hashlib.sha256(relpath.encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    bound = 0.0
    for name, fraction in zip(SPLITS, SPLIT_FRACTIONS):
        bound += fraction
        if u < bound:
            return name
    return SPLITS[-1]


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _checked(path: Path, relpath: str, label: str | None, split: str | None, meta: dict, errors: list) -> ManifestEntry | None:
    """The entry for ``path`` after a header check, or None with the cause added to ``errors``."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        errors.append(UnreadableFile(str(path), f"cannot be read ({exc.strerror or exc})"))
        return None
    try:
        probe_image(data, str(path))
    except MicrographError as exc:
        errors.append(UnreadableFile(str(path), exc.cause))
        return None
    return ManifestEntry(
        path=str(path),
        relpath=relpath,
        label=label,
        split=split or split_for(relpath),
        sha256=hashlib.sha256(data).hexdigest(),
        meta=meta,
    )


def _relpath(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _read_image_folder(root: Path) -> Manifest:
    entries, errors = [], []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and _is_image_name(p)):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        label = rel.parts[0] if len(rel.parts) > 1 else None
        entry = _checked(path, rel.as_posix(), label, None, {}, errors)
        if entry is not None:
            entries.append(entry)
    if not entries and not errors:
        raise ManifestError(f"{root}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)} files)")
    return Manifest(entries, errors, str(root))


def _json_lines(path: Path, errors: list) -> list[tuple[int, dict]]:
    try:
        scanned = list(scan_jsonl(path))
    except OSError as exc:
        raise ManifestError(f"{path}: cannot be read ({exc})") from None
    lines = []
    for number, obj, problem in scanned:
        if problem is None and (not isinstance(obj.get("path"), str) or not obj["path"]):
            problem = "line has no 'path' string"
        if problem:
            errors.append(UnreadableFile(f"{path}:{number}", problem))
        else:
            lines.append((number, obj))
    return lines


def _read_lines(lines: list[tuple[int, dict]], root: Path, label_key: str, splits: dict[str, str], keep_all: bool, errors: list) -> list[ManifestEntry]:
    entries = []
    for _, obj in lines:
        path = Path(obj["path"])
        path = (path if path.is_absolute() else root / path).resolve()
        if not path.is_file():
            errors.append(UnreadableFile(str(path), "no such file"))
            continue
        label = obj.get(label_key)
        split = obj.get("split") if obj.get("split") in SPLITS else splits.get(str(obj.get("id")))
        meta = obj if keep_all else {k: v for k, v in obj.items() if k not in ("path", "label", "split")}
        entry = _checked(path, _relpath(path, root), label if isinstance(label, str) else None, split, meta, errors)
        if entry is not None:
            entries.append(entry)
    return entries


def _read_synth(root: Path) -> Manifest:
    errors: list[UnreadableFile] = []
    splits: dict[str, str] = {}
    splits_path = root / SPLITS_FILE
    if splits_path.is_file():
        try:
            listed = json.loads(splits_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ManifestError(f"{splits_path}: not valid JSON ({exc})") from None
        if not isinstance(listed, dict):
            raise ManifestError(f"{splits_path}: expected {{\"train\": [ids], \"val\": [...], \"test\": [...]}}")
        for name in SPLITS:
            for image_id in listed.get(name) or []:
                splits[str(image_id)] = name
    entries = _read_lines(_json_lines(root / GROUND_TRUTH, errors), root, "class", splits, True, errors)
    if not entries and not errors:
        raise ManifestError(f"{root / GROUND_TRUTH}: lists no images")
    return Manifest(sorted(entries, key=lambda e: e.relpath), errors, str(root))


def _read_jsonl(path: Path) -> Manifest:
    errors: list[UnreadableFile] = []
    root = path.parent.resolve()
    entries = _read_lines(_json_lines(path, errors), root, "label", {}, False, errors)
    if not entries and not errors:
        raise ManifestError(f"{path}: lists no images")
    return Manifest(sorted(entries, key=lambda e: e.relpath), errors, str(root))


def read_manifest(source: str | Path) -> Manifest:
    """List the images of an ImageFolder tree, a synthetic set folder or a ``.jsonl`` manifest.

    Unusable files are reported in ``Manifest.errors``; a missing source or
    one with nothing in it raises ``ManifestError``.
    """
    path = Path(source).expanduser()
    if not path.exists():
        raise ManifestError(f"{path}: no such file or folder")
    path = path.resolve()
    if path.is_dir():
        if (path / GROUND_TRUTH).is_file():
            return _read_synth(path)
        return _read_image_folder(path)
    if path.suffix.lower() == ".jsonl":
        return _read_jsonl(path)
    raise ManifestError(f"{path}: expected a folder of images or a .jsonl manifest")
