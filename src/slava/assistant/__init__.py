"""The inference API used by the CLI, the server, screening and evaluation."""

from __future__ import annotations

import os

from slava.assistant.assistant import MODES, Answer, Assistant, AssistantError, Classification, trained_labels
from slava.assistant.images import ImageInput, to_micrograph
from slava.model.generate import GenerationConfig

DEFAULT_RUN = "runs/smol-cpu"
"""Run directory used when neither ``--run`` nor ``SLAVA_RUN`` names one."""


def default_run() -> str:
    """The run directory to load: ``$SLAVA_RUN``, else ``runs/smol-cpu``."""
    return os.environ.get("SLAVA_RUN") or DEFAULT_RUN


__all__ = [
    "Answer", "Assistant", "AssistantError", "Classification", "DEFAULT_RUN", "GenerationConfig", "ImageInput", "MODES",
    "default_run", "to_micrograph", "trained_labels",
]
