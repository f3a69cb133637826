"""Listing data sets: ImageFolder trees, synthetic set folders, JSONL manifests."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from slava.data.manifest import ManifestError, read_manifest, split_for
from slava.errors import SlavaError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NEU = DATA / "neu-det" / "images"


def _png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32), dtype=np.uint8)).save(path)
    return path


def test_neu_image_folder():
    if not NEU.exists():
        pytest.skip("shared/data not present")
    manifest = read_manifest(NEU)
    assert manifest.errors == []
    assert len(manifest.entries) == 1800
    assert manifest.labels == ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]
    first = manifest.entries[0]
    assert Path(first.path).is_absolute() and first.relpath == f"{first.label}/{Path(first.path).name}"
    assert first.sha256 == hashlib.sha256(Path(first.path).read_bytes()).hexdigest()
    # Stratified in expectation: every class gets about 70/10/20.
    for label in manifest.labels:
        counts = Counter(e.split for e in manifest.entries if e.label == label)
        assert 180 <= counts["train"] <= 240 and 15 <= counts["val"] <= 50 and 40 <= counts["test"] <= 90, (label, counts)
    again = read_manifest(NEU)
    assert [(e.relpath, e.split) for e in again.entries] == [(e.relpath, e.split) for e in manifest.entries]


def test_corrupt_file_reported_rest_kept(tmp_path):
    for i, label in enumerate(["a", "a", "a", "b", "b", "b"]):
        _png(tmp_path / label / f"{i}.png", seed=i)
    (tmp_path / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "b" / "notes.txt").write_text("not an image, ignored by extension")
    (tmp_path / "a" / ".hidden.png").write_bytes(b"ignored")
    manifest = read_manifest(tmp_path)
    assert len(manifest.entries) == 6 and manifest.labels == ["a", "b"]
    assert [e.path for e in manifest.errors] == [str(tmp_path / "b" / "broken.png")]
    assert "corrupt image header" in manifest.errors[0].cause


def test_splits_depend_only_on_each_path(tmp_path):
    for i in range(20):
        _png(tmp_path / "x" / f"{i}.png", seed=i)
    before = {e.relpath: e.split for e in read_manifest(tmp_path).entries}
    _png(tmp_path / "x" / "new.png", seed=99)
    after = {e.relpath: e.split for e in read_manifest(tmp_path).entries}
    assert {k: after[k] for k in before} == before
    assert all(split == split_for(rel) for rel, split in after.items())
    assert Counter(split_for(f"c/{i}.png") for i in range(10_000))["train"] == pytest.approx(7000, abs=200)


def test_synth_folder_uses_ground_truth_and_splits(tmp_path):
    truths = []
    for i, cls in enumerate(["particles", "fibres", "particles"]):
        _png(tmp_path / "images" / f"{i:04d}.png", seed=i)
        truths.append({"id": f"{i:04d}", "path": f"images/{i:04d}.png", "class": cls, "pixel_size_nm": 2.0 + i})
    (tmp_path / "ground_truth.jsonl").write_text("".join(json.dumps(t) + "\n" for t in truths))
    (tmp_path / "splits.json").write_text(json.dumps({"train": ["0000", "0001"], "val": [], "test": ["0002"]}))
    manifest = read_manifest(tmp_path)
    assert [(e.relpath, e.label, e.split) for e in manifest.entries] == [
        ("images/0000.png", "particles", "train"),
        ("images/0001.png", "fibres", "train"),
        ("images/0002.png", "particles", "test"),
    ]
    assert manifest.entries[2].meta["pixel_size_nm"] == 4.0 and manifest.errors == []


def test_jsonl_manifest(tmp_path):
    _png(tmp_path / "imgs" / "one.png", seed=1)
    outside = _png(tmp_path.parent / f"{tmp_path.name}-outside.png", seed=2)
    lines = [
        json.dumps({"path": "imgs/one.png", "label": "ok", "split": "val", "operator": "ann"}),
        json.dumps({"path": str(outside)}),
        json.dumps({"path": "imgs/missing.png"}),
        "{broken json",
        json.dumps({"label": "no path"}),
    ]
    (tmp_path / "list.jsonl").write_text("\n".join(lines) + "\n")
    manifest = read_manifest(tmp_path / "list.jsonl")
    by_rel = {e.relpath: e for e in manifest.entries}
    assert set(by_rel) == {"imgs/one.png", outside.as_posix()}
    one = by_rel["imgs/one.png"]
    assert (one.label, one.split, one.meta) == ("ok", "val", {"operator": "ann"})
    assert by_rel[outside.as_posix()].split in ("train", "val", "test")
    causes = sorted(e.cause for e in manifest.errors)
    assert len(causes) == 3 and "no such file" in causes and any("not JSON" in c for c in causes)


def test_empty_or_missing_sources_raise(tmp_path):
    with pytest.raises(ManifestError, match="no images found"):
        read_manifest(tmp_path)
    (tmp_path / "readme.txt").write_text("only text here")
    with pytest.raises(ManifestError, match="no images found"):
        read_manifest(tmp_path)
    with pytest.raises(ManifestError, match="no such file"):
        read_manifest(tmp_path / "missing")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ManifestError, match="lists no images"):
        read_manifest(tmp_path / "empty.jsonl")
    assert issubclass(ManifestError, SlavaError)
