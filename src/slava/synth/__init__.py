"""Synthetic SEM micrographs of ten nanomaterial categories with exact ground truth.

``generate(cls, seed)`` makes one image with its truth; ``write_dataset``
writes a balanced, split, reproducible set to disk.
"""

from slava.synth.dataset import write_dataset
from slava.synth.generate import generate
from slava.data.taxonomy import CLASS_NAMES, CLASSES
from slava.synth.params import SHIFTS, SynthError

__all__ = ["CLASSES", "CLASS_NAMES", "SHIFTS", "SynthError", "generate", "write_dataset"]
