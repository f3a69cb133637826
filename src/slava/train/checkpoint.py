"""Crash-safe checkpoints: write to a temporary directory, fsync, rename, then move a pointer.

A checkpoint directory holds
- ``weights.safetensors``: the trainable tensors of the current stage,
- ``state.pt``: optimizer, scheduler and RNG tensors (loads with ``weights_only=True``),
- ``meta.json``: stage index, steps, data order, python/numpy RNG states; written last.

The directory only gets its final name once complete, and ``latest`` (a one-line
file replaced atomically) names the newest. A crash or a full disk mid-save
leaves a ``.tmp-*`` directory that is ignored and cleaned up later; the
previous checkpoint stays intact.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from slava.data.atomic import fsync_path, write_atomic, write_text_atomic
from slava.errors import SlavaError

_NAME = re.compile(r"^ckpt-(\d{6})-step(\d+)$")


class CheckpointError(SlavaError):
    """A checkpoint could not be written or read."""


@dataclass
class Checkpoint:
    """A loaded checkpoint."""

    path: Path
    weights: dict[str, torch.Tensor]
    state: dict
    meta: dict


def save_tensors_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors file written beside its final name, fsynced, then renamed over it."""
    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    write_atomic(path, lambda tmp: save_file(cpu, str(tmp), metadata=metadata))


class CheckpointManager:
    """Numbered checkpoints under ``root``; keeps the newest ``keep``."""

    def __init__(self, root: str | Path, keep: int = 2):
        self.root = Path(root)
        self.keep = keep

    def complete(self) -> list[Path]:
        """Finished checkpoint directories, oldest first."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if _NAME.match(p.name) and (p / "meta.json").is_file()]
        return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))

    def latest(self) -> Path | None:
        """The checkpoint named by ``latest``, else the newest complete one, else None."""
        pointer = self.root / "latest"
        if pointer.is_file():
            target = self.root / pointer.read_text().strip()
            if (target / "meta.json").is_file():
                return target
        done = self.complete()
        return done[-1] if done else None

    def save(self, weights: dict[str, torch.Tensor], state: dict, meta: dict) -> Path:
        """Write one checkpoint atomically and prune old ones; raises CheckpointError on failure."""
        self.root.mkdir(parents=True, exist_ok=True)
        done = self.complete()
        seq = int(_NAME.match(done[-1].name).group(1)) + 1 if done else 1
        final = self.root / f"ckpt-{seq:06d}-step{meta['global_step']}"
        tmp = self.root / f".tmp-{final.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir()
            save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(tmp / "weights.safetensors"))
            torch.save(state, tmp / "state.pt")
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            for name in ("weights.safetensors", "state.pt", "meta.json"):
                fsync_path(tmp / name)
            fsync_path(tmp)
            os.replace(tmp, final)
            fsync_path(self.root)
            write_text_atomic(self.root / "latest", final.name + "\n")
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            previous = self.latest()
            kept = f"; the previous checkpoint {previous} is intact" if previous else ""
            raise CheckpointError(f"checkpoint not written ({exc.strerror or exc}){kept}") from exc
        self._prune(final)
        return final

    def _prune(self, newest: Path) -> None:
        for old in self.complete()[: -self.keep]:
            if old != newest:
                shutil.rmtree(old, ignore_errors=True)
        # A numbered directory without meta.json is one whose deletion a kill interrupted
        # (new ones only appear by rename, complete): finish deleting it.
        partial = [p for p in self.root.glob("ckpt-*") if not (p / "meta.json").is_file()]
        for stale in [*self.root.glob(".tmp-*"), *partial]:
            shutil.rmtree(stale, ignore_errors=True)

    def load(self, path: Path | None = None) -> Checkpoint | None:
        """Load ``path`` (default: the latest); None when there is none."""
        path = path or self.latest()
        if path is None:
            return None
        try:
            meta = json.loads((path / "meta.json").read_text())
            state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
            weights = load_file(str(path / "weights.safetensors"))
        except (OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: cannot load checkpoint: {exc}") from exc
        return Checkpoint(path, weights, state, meta)


def capture_rng(extra: dict[str, torch.Generator] | None = None) -> tuple[dict, dict]:
    """RNG states as (tensors for state.pt, JSON-able dict for meta.json)."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state()
    for name, gen in (extra or {}).items():
        tensors[f"gen.{name}"] = gen.get_state()
    version, state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    plain = {
        "python": [version, list(state), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    return tensors, plain


def restore_rng(tensors: dict, plain: dict, extra: dict[str, torch.Generator] | None = None) -> None:
    """Inverse of ``capture_rng``."""
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])
    for name, gen in (extra or {}).items():
        gen.set_state(tensors[f"gen.{name}"])
    version, state, gauss = plain["python"]
    random.setstate((version, tuple(state), gauss))
    kind, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
